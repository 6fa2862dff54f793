//! Helpers of the `cargo farm` end-to-end tests: copies of the example corpus in temporary
//! directories, the real `cargo-farm` binary on an embedded farm of its own, plain cargo
//! beside it, and the summary `--message-format json` prints last.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The repository's `examples/NAME`.
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// Copies a directory tree (without any `target/`) to `dest`.
pub fn copy_tree(from: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "target" {
            continue;
        }
        let to = dest.join(&name);
        let ty = entry.file_type().unwrap();
        if ty.is_dir() {
            copy_tree(&entry.path(), &to);
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &to).unwrap();
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}

/// A copy of an example in a fresh temporary directory, with its dependencies fetched.
pub struct Project {
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Project {
    pub fn new(example_name: &str) -> Project {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(example_name);
        copy_tree(&example(example_name), &dir);
        let fetch = Command::new("cargo")
            .args(["fetch", "--locked", "--manifest-path"])
            .arg(dir.join("Cargo.toml"))
            .output()
            .unwrap();
        assert!(
            fetch.status.success(),
            "cargo fetch failed: {}",
            String::from_utf8_lossy(&fetch.stderr)
        );
        Project { dir, _tmp: tmp }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

/// A farm home of its own (an embedded farm per test).
pub struct FarmHome {
    pub dir: tempfile::TempDir,
}

impl FarmHome {
    pub fn new() -> FarmHome {
        FarmHome {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// `cargo-farm farm ARGS` in `cwd` with `CARGO_FARM_HOME=home`.
pub fn cargo_farm(home: &Path, cwd: &Path, args: &[&str]) -> Output {
    cargo_farm_env(home, cwd, args, &[])
}

/// [`cargo_farm`] with extra environment variables.
pub fn cargo_farm_env(home: &Path, cwd: &Path, args: &[&str], env: &[(&str, &Path)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cargo-farm"))
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .arg("farm")
        .args(args)
        .current_dir(cwd)
        .env("CARGO_FARM_HOME", home)
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_FARM_REMOTE")
        .env_remove("CARGO_FARM_REMOTE_CACHE")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap()
}

/// Plain `cargo ARGS` in `cwd`, with its own target directory `target-cargo/`.
pub fn cargo(cwd: &Path, args: &[&str]) -> Output {
    Command::new("cargo")
        .args(args)
        .current_dir(cwd)
        .env("CARGO_TARGET_DIR", cwd.join("target-cargo"))
        .env_remove("RUSTC_WRAPPER")
        .output()
        .unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts success, showing both streams otherwise.
pub fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The `farm-summary` object: the last stdout line of a `--message-format json` build.
pub fn summary(out: &Output) -> Value {
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "last line is not JSON ({e}): {last:?}\n{}",
            text(&out.stderr)
        )
    });
    assert_eq!(v["reason"], "farm-summary", "{v}");
    v
}

/// A `cargo farm build` with JSON messages that must succeed; returns its summary.
pub fn farm_build(home: &Path, cwd: &Path, args: &[&str]) -> Value {
    let mut all = vec!["build", "--message-format", "json"];
    all.extend_from_slice(args);
    let out = cargo_farm(home, cwd, &all);
    ok(&out, &format!("cargo farm {}", all.join(" ")));
    summary(&out)
}

/// Runs a built program, returning its stdout (it must succeed).
pub fn run(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    ok(&out, &program.display().to_string());
    text(&out.stdout)
}

pub fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("summary has no {key}: {v}"))
}

/// A loopback port nothing listens on (just now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
