//! What a user sees when a build goes wrong: rustc's own errors and cargo's exit status, a
//! build script that reaches outside its sandbox named with the path it could not reach (and
//! fixed by an override), and bad flags refused by name.

mod common;

use std::path::Path;

use common::*;

#[test]
fn a_failing_compile_shows_rustcs_error_and_exits_101() {
    let p = Project::new("workspace");
    let home = FarmHome::new();
    let lib = p.path("crates/toggles/src/lib.rs");
    let mut text = std::fs::read_to_string(&lib).unwrap();
    text.push_str("\npub fn broken() -> u32 { \"not a number\" }\n");
    std::fs::write(&lib, text).unwrap();
    let out = cargo_farm(home.path(), &p.dir, &["build"]);
    assert_eq!(
        out.status.code(),
        Some(101),
        "{}",
        common::text(&out.stderr)
    );
    let stderr = common::text(&out.stderr);
    assert!(
        stderr.contains("error[E0308]: mismatched types"),
        "{stderr}"
    );
    assert!(stderr.contains("crates/toggles/src/lib.rs"), "{stderr}");
    assert!(
        stderr.contains("error: could not compile `toggles` (lib) due to 1 previous error"),
        "{stderr}"
    );
    // The same error again from a second build: failures are never cached.
    let again = cargo_farm(home.path(), &p.dir, &["build", "--message-format", "json"]);
    assert_eq!(again.status.code(), Some(101));
    let s = summary(&again);
    assert!(n(&s, "failed") >= 1, "{s}");
    assert!(common::text(&again.stdout).contains("\"reason\":\"compiler-message\""));
}

/// A one-package workspace whose build script reads `secret` (an absolute host path) unless
/// `SECRET_DIR` points elsewhere.
fn reaching_project(root: &Path, secret: &Path) {
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(
        root.join("Cargo.toml"),
        "[package]\nname = \"reacher\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(
        root.join("src/main.rs"),
        "fn main() { println!(\"{}\", env!(\"SECRET\")); }\n",
    )
    .unwrap();
    std::fs::write(
        root.join("build.rs"),
        format!(
            "fn main() {{\n    let dir = std::env::var(\"SECRET_DIR\").unwrap_or_else(|_| {:?}.to_string());\n    \
             let path = format!(\"{{dir}}/secret.txt\");\n    \
             let s = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!(\"cannot read {{path}}: {{e}}\"));\n    \
             println!(\"cargo::rustc-env=SECRET={{}}\", s.trim());\n}}\n",
            secret.display()
        ),
    )
    .unwrap();
    let lock = std::process::Command::new("cargo")
        .args(["generate-lockfile", "--offline"])
        .current_dir(root)
        .output()
        .unwrap();
    ok(&lock, "cargo generate-lockfile");
}

#[test]
fn a_build_script_reaching_outside_its_sandbox_is_named_and_an_override_fixes_it() {
    // Outside /tmp (sandboxes have their own): under the target directory.
    let secrets = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::write(secrets.path().join("secret.txt"), "forty-two\n").unwrap();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("reacher");
    reaching_project(&root, secrets.path());
    let home = FarmHome::new();

    let out = cargo_farm(home.path(), &root, &["build"]);
    assert_eq!(out.status.code(), Some(101));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("failed to run custom build command for `reacher v0.1.0`"),
        "{stderr}"
    );
    let secret = secrets.path().join("secret.txt").display().to_string();
    assert!(
        stderr.contains(&format!(
            "referred to {secret}, which exists on this machine"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("[overrides.reacher]"), "{stderr}");

    std::fs::write(
        root.join("cargo-farm.toml"),
        format!(
            "[overrides.reacher]\ninputs = [{dir:?}]\nenv = {{ SECRET_DIR = \"{{input:{dir}}}\" }}\n",
            dir = secrets.path().display().to_string()
        ),
    )
    .unwrap();
    let fixed = farm_build(home.path(), &root, &[]);
    assert_eq!(n(&fixed, "failed"), 0);
    assert_eq!(
        run(&root.join("target/debug/reacher"), &[]).trim(),
        "forty-two"
    );
}

#[test]
fn bad_input_is_refused_by_name() {
    let p = Project::new("workspace");
    let home = FarmHome::new();
    let out = cargo_farm(home.path(), &p.dir, &["build", "-p", "no-such-package"]);
    assert_ne!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("no-such-package"), "{stderr}");

    let out = cargo_farm(
        home.path(),
        &p.dir,
        &["build", "--target", "no-such-triple"],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("no-such-triple"),
        "{}",
        text(&out.stderr)
    );

    std::fs::write(p.path("cargo-farm.toml"), "[overrides.app]\nbogus = 1\n").unwrap();
    let out = cargo_farm(home.path(), &p.dir, &["build"]);
    assert_ne!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cargo-farm.toml") && stderr.contains("bogus"),
        "{stderr}"
    );
}

#[test]
fn warnings_show_as_cargo_shows_them_also_from_the_cache() {
    let p = Project::new("workspace");
    let home = FarmHome::new();
    let lib = p.path("crates/app/src/lib.rs");
    let mut source = std::fs::read_to_string(&lib).unwrap();
    source.push_str("\npub fn warned() { let unused_here = 1; }\n");
    std::fs::write(&lib, source).unwrap();
    for round in ["executed", "cached"] {
        let out = cargo_farm(home.path(), &p.dir, &["build"]);
        ok(&out, "cargo farm build");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("warning: unused variable: `unused_here`"),
            "{round}: {stderr}"
        );
        assert!(
            stderr.contains("warning: `app` (lib) generated 1 warning"),
            "{round}: {stderr}"
        );
        assert!(!stderr.contains("warning emitted"), "{round}: {stderr}");
    }
}
