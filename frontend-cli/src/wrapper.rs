//! `RUSTC_WRAPPER` mode: with `CARGO_FARM_RECORD=FILE` set, cargo calls `cargo-farm RUSTC
//! ARGS...`; we append one JSON line (rustc, args, cwd and the `CARGO_*`/`OUT_DIR` environment)
//! to FILE and exec the real rustc. Tests diff cargo's invocations against the resolver's.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The variable naming the log file.
pub const RECORD_VAR: &str = "CARGO_FARM_RECORD";

/// One rustc invocation cargo made.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Invocation {
    pub rustc: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
}

impl Invocation {
    /// The value after `flag` (e.g. `--crate-name`).
    pub fn flag(&self, flag: &str) -> Option<&str> {
        let i = self.args.iter().position(|a| a == flag)?;
        self.args.get(i + 1).map(String::as_str)
    }
}

/// Whether this process was started as a rustc wrapper.
pub fn is_wrapper_call(args: &[String]) -> bool {
    std::env::var_os(RECORD_VAR).is_some() && args.get(1).is_some_and(|a| a != "farm")
}

/// Records the call and replaces this process with rustc; returns only on failure.
pub fn record_and_exec(args: &[String]) -> anyhow::Error {
    let Some(rustc) = args.get(1) else {
        return anyhow::anyhow!("wrapper mode needs the rustc path as its first argument");
    };
    let rest = args[2..].to_vec();
    if let Some(log) = std::env::var_os(RECORD_VAR) {
        let env = std::env::vars()
            .filter(|(k, _)| k.starts_with("CARGO_") || k == "OUT_DIR")
            .filter(|(k, _)| k != RECORD_VAR && k != "CARGO_MAKEFLAGS")
            .collect();
        let inv = Invocation {
            rustc: rustc.clone(),
            args: rest.clone(),
            cwd: std::env::current_dir().unwrap_or_default(),
            env,
        };
        if let Err(e) = append(Path::new(&log), &inv) {
            return anyhow::anyhow!(
                "recording a rustc call to {}: {e}",
                Path::new(&log).display()
            );
        }
    }
    let err = std::process::Command::new(rustc).args(&rest).exec();
    anyhow::anyhow!("cannot run {rustc}: {err}")
}

fn append(log: &Path, inv: &Invocation) -> std::io::Result<()> {
    let mut line = serde_json::to_string(inv).map_err(std::io::Error::other)?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    // One write per line: appends of one write do not interleave.
    f.write_all(line.as_bytes())
}

/// Reads a log written in wrapper mode.
pub fn read_log(log: &Path) -> std::io::Result<Vec<Invocation>> {
    let text = std::fs::read_to_string(log)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
        .collect()
}
