//! Real crates.io dependencies (serde with derive, syn/quote in a proc-macro of our own, regex,
//! clap, tokio) built by `cargo farm`, and the supply-chain check: a downloaded `.crate` that
//! no longer matches Cargo.lock is refused before any of it is used.

mod common;

use std::path::Path;

use common::*;

#[test]
fn crates_io_dependencies_build_and_behave_like_cargos() {
    let p = Project::new("crates-io");
    let home = FarmHome::new();
    let cold = farm_build(home.path(), &p.dir, &["--locked"]);
    assert_eq!(n(&cold, "failed"), 0);
    ok(&cargo(&p.dir, &["build", "--locked"]), "cargo build");
    let ours = run(&p.path("target/debug/crates-io-demo"), &[]);
    assert_eq!(ours, run(&p.path("target-cargo/debug/crates-io-demo"), &[]));
    assert!(ours.contains("json: {"), "{ours}");
    for args in [&["--limit", "3"][..], &["--name", "x y"][..]] {
        let theirs = std::process::Command::new(p.path("target-cargo/debug/crates-io-demo"))
            .args(args)
            .output()
            .unwrap();
        let ours = std::process::Command::new(p.path("target/debug/crates-io-demo"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(ours.status.code(), theirs.status.code(), "{args:?}");
        assert_eq!(ours.stdout, theirs.stdout, "{args:?}");
        assert_eq!(ours.stderr, theirs.stderr, "{args:?}");
    }
    std::fs::remove_dir_all(p.path("target")).unwrap();
    let warm = farm_build(home.path(), &p.dir, &["--locked"]);
    assert_eq!(n(&warm, "cache_hits"), n(&warm, "actions"), "{warm}");
}

/// Copies the parts of `$CARGO_HOME/registry` the workspace example needs into `dest`.
fn private_cargo_home(dest: &Path, crates: &[&str]) {
    let real = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap()).join(".cargo"));
    let registry = real.join("registry");
    copy_tree(&registry.join("index"), &dest.join("registry/index"));
    for kind in ["cache", "src"] {
        for index in std::fs::read_dir(registry.join(kind)).unwrap() {
            let index = index.unwrap();
            for entry in std::fs::read_dir(index.path()).unwrap() {
                let entry = entry.unwrap();
                let name = entry.file_name().to_string_lossy().into_owned();
                if !crates.iter().any(|c| name.starts_with(&format!("{c}-"))) {
                    continue;
                }
                let to = dest
                    .join("registry")
                    .join(kind)
                    .join(index.file_name())
                    .join(&name);
                if entry.file_type().unwrap().is_dir() {
                    copy_tree(&entry.path(), &to);
                } else {
                    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                    std::fs::copy(entry.path(), &to).unwrap();
                }
            }
        }
    }
}

#[test]
fn a_crate_archive_that_does_not_match_cargo_lock_is_refused() {
    let p = Project::new("workspace");
    let home = FarmHome::new();
    let cargo_home = tempfile::tempdir().unwrap();
    private_cargo_home(cargo_home.path(), &["cc", "shlex", "find-msvc-tools"]);
    let tampered = std::fs::read_dir(cargo_home.path().join("registry/cache"))
        .unwrap()
        .flat_map(|i| std::fs::read_dir(i.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("shlex-")
        })
        .expect("shlex in the registry cache");
    let mut bytes = std::fs::read(&tampered).unwrap();
    bytes.extend_from_slice(b"tampered");
    std::fs::write(&tampered, bytes).unwrap();

    let env = [("CARGO_HOME", cargo_home.path())];
    let out = cargo_farm_env(home.path(), &p.dir, &["build", "--offline"], &env);
    assert_eq!(out.status.code(), Some(101), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("shlex"), "{stderr}");
    assert!(stderr.to_lowercase().contains("checksum"), "{stderr}");
    // Nothing was built from it: no artifact of the workspace exists.
    assert!(!p.path("target/debug/app").exists());
}

#[test]
fn vendored_crates_are_verified_file_by_file() {
    let p = Project::new("workspace");
    let home = FarmHome::new();
    let vendor = std::process::Command::new("cargo")
        .args(["vendor", "--locked", "--offline", "vendor"])
        .current_dir(&p.dir)
        .output()
        .unwrap();
    ok(&vendor, "cargo vendor");
    std::fs::create_dir_all(p.path(".cargo")).unwrap();
    std::fs::write(
        p.path(".cargo/config.toml"),
        "[source.crates-io]\nreplace-with = \"vendored-sources\"\n\
         [source.vendored-sources]\ndirectory = \"vendor\"\n",
    )
    .unwrap();
    let built = farm_build(home.path(), &p.dir, &["--offline"]);
    assert_eq!(n(&built, "failed"), 0);
    assert!(run(&p.path("target/debug/app"), &[]).contains("native:"));

    // An edited vendored file no longer matches .cargo-checksum.json: refused, in a fresh farm
    // home so nothing comes from the cache.
    let lib = p.path("vendor/shlex/src/lib.rs");
    let mut text = std::fs::read_to_string(&lib).unwrap();
    text.push_str("\n// edited\n");
    std::fs::write(&lib, text).unwrap();
    let fresh = FarmHome::new();
    let out = cargo_farm(fresh.path(), &p.dir, &["build", "--offline"]);
    assert_eq!(out.status.code(), Some(101));
    let stderr = common::text(&out.stderr);
    assert!(
        stderr.contains("shlex") && stderr.contains("src/lib.rs"),
        "{stderr}"
    );
}
