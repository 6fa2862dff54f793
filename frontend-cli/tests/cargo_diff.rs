//! The resolver's rustc command lines and environments against cargo's own, recorded with
//! `cargo-farm` as `RUSTC_WRAPPER` (wrapper mode) on the example corpus. Paths and hashes
//! differ by design (exec-root paths, content-derived metadata, no incremental); everything
//! else (flags, their order, features, cfgs, check-cfgs, lints, build-script directives, the
//! `CARGO_*` variables) must be the same.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;

use common::*;
use frontend_cli::wrapper::{read_log, Invocation, RECORD_VAR};
use resolver::build_script_output::BuildScriptOutput;
use resolver::{BuildRequest, UnitKind};

/// Records cargo's rustc calls for a build of `dir`.
fn record(dir: &Path, args: &[&str]) -> Vec<Invocation> {
    let log = dir.join("rustc-calls.jsonl");
    let mut cmd = Command::new("cargo");
    // This test's own CARGO_* variables (CARGO_BIN_EXE_..., CARGO_PKG_...) must not leak.
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_") && k != "CARGO_HOME" {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .arg("build")
        .args(args)
        .current_dir(dir)
        .env("RUSTC_WRAPPER", env!("CARGO_BIN_EXE_cargo-farm"))
        .env(RECORD_VAR, &log)
        .env("CARGO_TARGET_DIR", dir.join("target-cargo"))
        .output()
        .unwrap();
    ok(&out, "cargo build with the recording wrapper");
    read_log(&log)
        .unwrap()
        .into_iter()
        .filter(|i| i.flag("--crate-name").is_some() && !i.args.iter().any(|a| a == "-"))
        .collect()
}

/// Replaces path prefixes and hashes with fixed tokens, so two command lines compare equal.
struct Normalizer {
    replacements: Vec<(String, String)>,
}

impl Normalizer {
    fn apply(&self, s: &str) -> String {
        let mut s = s.to_string();
        for (from, to) in &self.replacements {
            s = s.replace(from.as_str(), to);
        }
        s
    }

    /// The argument list with incidental differences removed.
    fn args(&self, args: &[String], crate_names: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        let mut it = args.iter().peekable();
        while let Some(a) = it.next() {
            if a.starts_with("--remap-path-prefix") {
                continue;
            }
            if a == "-C" {
                let Some(v) = it.next() else { break };
                if v.starts_with("incremental=") {
                    continue;
                }
                let v = if v.starts_with("metadata=") {
                    "metadata=H".to_string()
                } else if v.starts_with("extra-filename=") {
                    "extra-filename=-H".to_string()
                } else {
                    self.apply(v)
                };
                out.extend(["-C".to_string(), v]);
                continue;
            }
            if a == "--out-dir" {
                it.next();
                out.extend(["--out-dir".to_string(), "OUT".to_string()]);
                continue;
            }
            if a == "-L" {
                if let Some(v) = it.next() {
                    let v = if v.starts_with("dependency=") {
                        "dependency=DEPS".to_string()
                    } else {
                        self.apply(v)
                    };
                    out.extend(["-L".to_string(), v]);
                }
                continue;
            }
            if a == "--extern" {
                if let Some(v) = it.next() {
                    let v = match v.split_once('=') {
                        Some((name, path)) => {
                            let file = Path::new(path).file_name().unwrap().to_string_lossy();
                            let mut f = file.to_string();
                            for c in crate_names {
                                if let Some(rest) = f.strip_prefix(&format!("lib{c}-")) {
                                    let ext = rest.split_once('.').map(|x| x.1).unwrap_or("");
                                    f = format!("lib{c}-H.{ext}");
                                }
                            }
                            format!("{name}={f}")
                        }
                        None => v.clone(),
                    };
                    out.extend(["--extern".to_string(), v]);
                }
                continue;
            }
            out.push(self.apply(a));
        }
        out
    }
}

fn compare(example_name: &str, args: &[&str]) {
    let p = Project::new(example_name);
    let calls = record(&p.dir, args);
    assert!(calls.len() > 5, "recorded only {} rustc calls", calls.len());
    let mut request = BuildRequest {
        manifest_path: Some(p.path("Cargo.toml")),
        cwd: Some(p.dir.clone()),
        locked: true,
        ..BuildRequest::default()
    };
    request.release = args.contains(&"--release");
    let plan = resolver::resolve(&request).unwrap();

    // Path prefixes: cargo's package directories and OUT_DIRs against ours.
    let mut replacements = Vec::new();
    let mut scripts: HashMap<usize, BuildScriptOutput> = HashMap::new();
    let crate_names: Vec<String> = plan
        .units
        .iter()
        .map(|u| u.unit.target.crate_name())
        .collect();
    for u in &plan.units {
        let package = plan.packages.get(&u.unit.pkg_id).unwrap();
        let cargo_dir = package.manifest_dir.display().to_string();
        let rel_to_ws = package
            .manifest_dir
            .strip_prefix(&plan.packages.workspace_root)
            .map(|r| r.display().to_string())
            .unwrap_or(cargo_dir.clone());
        replacements.push((format!("{cargo_dir}/"), format!("PKG({})/", package.name)));
        if !package.exec_dir.is_empty() {
            replacements.push((
                format!("{}/", package.exec_dir),
                format!("PKG({})/", package.name),
            ));
        }
        if !rel_to_ws.is_empty() && package.is_local {
            replacements.push((format!("{rel_to_ws}/"), format!("PKG({})/", package.name)));
        }
        if u.kind == UnitKind::BuildScriptRun {
            let ours = format!("/exec/{}", u.out_dir(package));
            let theirs = calls
                .iter()
                .filter(|c| c.env.get("CARGO_PKG_NAME") == Some(&package.name))
                .find_map(|c| c.env.get("OUT_DIR").cloned())
                .unwrap_or_else(|| panic!("cargo ran no rustc with OUT_DIR for {}", package.name));
            let output_file = Path::new(&theirs).parent().unwrap().join("output");
            let text = std::fs::read_to_string(&output_file)
                .unwrap()
                .replace(&theirs, &ours);
            scripts.insert(
                u.index,
                BuildScriptOutput::parse(&text, &package.name).unwrap(),
            );
            replacements.push((theirs, format!("OUTDIR({})", package.name)));
            replacements.push((ours, format!("OUTDIR({})", package.name)));
        }
    }
    // Longest prefixes first, so a package inside another is replaced correctly.
    replacements.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
    let norm = Normalizer { replacements };

    let mut mismatches = Vec::new();
    let mut compared = 0;
    for &i in &plan.order {
        let u = plan.unit(i);
        if u.kind == UnitKind::BuildScriptRun {
            continue;
        }
        let spec = resolver::rustc::compile_action(&plan, i, &scripts).unwrap();
        let package = plan.packages.get(&u.unit.pkg_id).unwrap();
        let crate_name = if u.kind == UnitKind::BuildScriptCompile {
            "build_script_build".to_string()
        } else {
            u.unit.target.crate_name()
        };
        let features: Vec<String> = u
            .unit
            .features
            .iter()
            .map(|f| format!("feature=\"{f}\""))
            .collect();
        let ours = norm.args(&spec.args[1..], &crate_names);
        let candidates: Vec<&Invocation> = calls
            .iter()
            .filter(|c| {
                c.env.get("CARGO_PKG_NAME") == Some(&package.name)
                    && c.flag("--crate-name") == Some(crate_name.as_str())
                    && c.args.contains(&"--test".to_string())
                        == spec.args.contains(&"--test".to_string())
                    && feature_cfgs(&c.args) == features
            })
            .collect();
        let Some(theirs) = candidates
            .iter()
            .map(|c| (c, norm.args(&c.args, &crate_names)))
            .min_by_key(|(_, a)| usize::from(*a != ours))
        else {
            mismatches.push(format!(
                "{}: cargo made no matching rustc call",
                plan.describe(i)
            ));
            continue;
        };
        compared += 1;
        if theirs.1 != ours {
            mismatches.push(format!(
                "{}:\n  cargo: {}\n  ours:  {}",
                plan.describe(i),
                theirs.1.join(" "),
                ours.join(" ")
            ));
        }
        // The CARGO_* variables that do not name a path.
        let our_env: BTreeMap<&str, &str> = spec
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for (k, v) in &theirs.0.env {
            let pathy = matches!(
                k.as_str(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO"
                    | "CARGO_HOME"
                    | "CARGO_TARGET_DIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
            ) || k.starts_with("CARGO_BIN_EXE_")
                || k == "OUT_DIR"
                || k == "CARGO_TARGET_TMPDIR";
            if pathy {
                assert!(
                    our_env.contains_key(k.as_str())
                        || k == "CARGO"
                        || k == "CARGO_HOME"
                        || k == "CARGO_TARGET_DIR",
                    "{}: no {k}",
                    plan.describe(i)
                );
                continue;
            }
            if our_env.get(k.as_str()) != Some(&v.as_str()) {
                mismatches.push(format!(
                    "{}: {k}: cargo {v:?}, ours {:?}",
                    plan.describe(i),
                    our_env.get(k.as_str())
                ));
            }
        }
    }
    assert!(
        compared >= plan.units.len() / 2,
        "compared only {compared} units"
    );
    assert!(
        mismatches.is_empty(),
        "{} differences:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

fn feature_cfgs(args: &[String]) -> Vec<String> {
    args.windows(2)
        .filter(|w| w[0] == "--cfg" && w[1].starts_with("feature="))
        .map(|w| w[1].clone())
        .collect()
}

#[test]
fn workspace_command_lines_match_cargos() {
    compare("workspace", &["--locked"]);
}

#[test]
fn release_command_lines_match_cargos() {
    compare("workspace", &["--locked", "--release"]);
}

#[test]
fn crates_io_command_lines_match_cargos() {
    compare("crates-io", &["--locked"]);
}
