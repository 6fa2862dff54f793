//! `cargo farm build` of examples/workspace (proc-macro, build.rs generating code, a -sys crate
//! compiling C with `cc`, `links` metadata, features, lib + bins + example + tests) on an
//! embedded farm, against plain `cargo build` of the same tree.

mod common;

use common::*;

/// The programs of the example and the arguments they are run with.
const PROGRAMS: &[(&str, &[&str])] = &[
    ("app", &[]),
    ("other", &[]),
    ("other", &["cargo", "x y"]),
    ("examples/demo", &[]),
];

fn compare(p: &Project, home: &FarmHome, args: &[&str], profile_dir: &str) -> serde_json::Value {
    let summary = farm_build(home.path(), &p.dir, args);
    let mut cargo_args = vec!["build", "--locked"];
    cargo_args.extend_from_slice(args);
    ok(&cargo(&p.dir, &cargo_args), "cargo build");
    for (program, program_args) in PROGRAMS {
        if program.starts_with("examples/") && !args.contains(&"--examples") {
            continue;
        }
        let ours = run(
            &p.path(&format!("target/{profile_dir}/{program}")),
            program_args,
        );
        let theirs = run(
            &p.path(&format!("target-cargo/{profile_dir}/{program}")),
            program_args,
        );
        assert_eq!(ours, theirs, "{program} {program_args:?} with {args:?}");
        assert!(!ours.is_empty());
    }
    summary
}

#[test]
fn programs_behave_like_cargos_and_rebuilds_are_all_cache_hits() {
    let p = Project::new("workspace");
    let home = FarmHome::new();
    let cold = compare(&p, &home, &["--bins", "--examples"], "debug");
    assert_eq!(n(&cold, "failed"), 0);
    assert_eq!(
        n(&cold, "cache_hits") + n(&cold, "executed"),
        n(&cold, "actions")
    );
    assert!(n(&cold, "executed") > 10, "{cold}");
    assert_eq!(cold["farm"], "embedded");

    // target/ deleted: everything comes from the cache, and the programs still match.
    std::fs::remove_dir_all(p.path("target")).unwrap();
    let warm = compare(&p, &home, &["--bins", "--examples"], "debug");
    assert_eq!(n(&warm, "actions"), n(&cold, "actions"));
    assert_eq!(n(&warm, "cache_hits"), n(&warm, "actions"), "{warm}");

    // The same tree at another path shares every result.
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("somewhere/else");
    copy_tree(&p.dir, &copy);
    let moved = farm_build(home.path(), &copy, &["--bins", "--examples"]);
    assert_eq!(n(&moved, "cache_hits"), n(&moved, "actions"), "{moved}");
    let original = run(&p.path("target/debug/app"), &[]);
    assert_eq!(run(&copy.join("target/debug/app"), &[]), original);
}

#[test]
fn a_changed_source_reruns_only_what_depends_on_it() {
    let p = Project::new("workspace");
    let home = FarmHome::new();
    let first = farm_build(home.path(), &p.dir, &[]);
    assert_eq!(n(&first, "failed"), 0);

    // The main binary's own source: only that binary is rebuilt.
    let main = p.path("crates/app/src/main.rs");
    let source = std::fs::read_to_string(&main).unwrap();
    let changed = source.replace("app: the main binary", "app: the changed binary");
    assert_ne!(
        changed,
        source,
        "the test expects this string in {}",
        main.display()
    );
    std::fs::write(&main, changed).unwrap();
    let out = cargo_farm(
        home.path(),
        &p.dir,
        &["build", "-v", "--message-format", "json"],
    );
    ok(&out, "cargo farm build -v");
    let second = summary(&out);
    assert_eq!(n(&second, "executed"), 1, "{second}");
    // -v shows each action's command line: the one that ran, the others from the cache.
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("Ran `.cargo-farm/toolchain/bin/rustc --crate-name app --edition=2024 crates/app/src/main.rs"),
        "{stderr}"
    );
    assert!(stderr.matches("Cached `").count() >= 10, "{stderr}");
    assert!(run(&p.path("target/debug/app"), &[]).contains("app: the changed binary"));

    // A library everything uses: it and its dependents rerun, nothing unrelated does.
    let toggles = p.path("crates/toggles/src/lib.rs");
    let mut text = std::fs::read_to_string(&toggles).unwrap();
    text.push_str("\npub fn added_by_the_test() -> u32 { 7 }\n");
    std::fs::write(&toggles, text).unwrap();
    let third = farm_build(home.path(), &p.dir, &[]);
    let executed = n(&third, "executed");
    assert!(
        executed >= 2 && executed < n(&third, "actions") - 3,
        "{third}"
    );
    assert_eq!(n(&third, "failed"), 0);
}

#[test]
fn features_and_release_match_cargo() {
    let p = Project::new("workspace");
    let home = FarmHome::new();
    compare(&p, &home, &["--no-default-features"], "debug");
    compare(&p, &home, &["-p", "app", "--features", "extra"], "debug");
    let release = compare(&p, &home, &["--release"], "release");
    assert_eq!(n(&release, "failed"), 0);
    // A release binary is optimised: different bytes from the debug one.
    let debug = std::fs::read(p.path("target/debug/app")).unwrap();
    let optimised = std::fs::read(p.path("target/release/app")).unwrap();
    assert_ne!(debug, optimised);
}

#[test]
fn integration_tests_built_by_the_farm_pass() {
    let p = Project::new("workspace");
    let home = FarmHome::new();
    let out = cargo_farm(
        home.path(),
        &p.dir,
        &["build", "--tests", "--message-format", "json"],
    );
    ok(&out, "cargo farm build --tests");
    // Every test executable the farm placed runs and passes (tests/report.rs runs the app
    // binary through CARGO_BIN_EXE_app).
    let mut ran = 0;
    for line in text(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["reason"] == "compiler-artifact" && v["profile"]["test"] == true {
            if let Some(exe) = v["executable"].as_str() {
                let output = run(std::path::Path::new(exe), &[]);
                assert!(output.contains("test result: ok"), "{exe}: {output}");
                ran += 1;
            }
        }
    }
    assert!(
        ran >= 2,
        "expected unit and integration test executables, ran {ran}"
    );
}
