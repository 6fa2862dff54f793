//! A build cargo-farm cannot model (here: cargo config replaces a `links` build script) falls
//! back to cargo itself, with cargo-farm recording cargo's rustc calls, and says which unit
//! forced that and why.

mod common;

use common::*;

#[test]
fn a_build_script_overridden_in_cargo_config_falls_back_to_cargo() {
    let p = Project::new("workspace");
    let home = FarmHome::new();
    // A prebuilt libnative.a, as a user of a links override would have: cargo's own build.
    ok(
        &cargo(&p.dir, &["build", "--locked", "-p", "native-sys"]),
        "cargo build -p native-sys",
    );
    let lib_dir = std::fs::read_dir(p.path("target-cargo/debug/build"))
        .unwrap()
        .map(|e| e.unwrap().path().join("out"))
        .find(|out| out.join("libnative.a").is_file())
        .expect("cargo built libnative.a");
    let host = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .unwrap();
    let host = text(&host.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .unwrap();
    std::fs::create_dir_all(p.path(".cargo")).unwrap();
    std::fs::write(
        p.path(".cargo/config.toml"),
        format!(
            "[target.{host}.native]\nrustc-link-lib = [\"static=native\"]\n\
             rustc-link-search = [{:?}]\nversion = \"1.2.3\"\n",
            lib_dir.display().to_string()
        ),
    )
    .unwrap();

    let out = cargo_farm(home.path(), &p.dir, &["build", "--message-format", "json"]);
    ok(&out, "cargo farm build (fallback)");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot model native-sys v0.1.0")
            && stderr.contains(&format!("target.{host}.native")),
        "{stderr}"
    );
    let s = summary(&out);
    assert_eq!(s["fallback"], "cargo", "{s}");
    assert!(n(&s, "rustc_calls_recorded") > 5, "{s}");
    assert!(run(&p.path("target/debug/app"), &[]).contains("DEP_NATIVE_VERSION=1.2.3"));
}
