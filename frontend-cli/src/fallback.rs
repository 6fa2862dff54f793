//! The fallback for builds with a unit cargo-farm cannot model (a codegen backend, `-Z
//! build-std`, a build script replaced in cargo config, a crate root outside its package):
//! cargo itself runs the build, with `cargo-farm` as its `RUSTC_WRAPPER` in recording mode, and
//! the output says which unit forced it and why. Nothing runs on the farm or in a sandbox.

use anyhow::{Context as _, Result};
use resolver::{BuildRequest, ResolveError};
use serde_json::json;

use crate::cli::{farm_home, BuildArgs, MessageFormat};

/// Runs `cargo build|check` for `request`; returns cargo's exit status.
pub async fn build_with_cargo(
    args: &BuildArgs,
    request: &BuildRequest,
    why: &ResolveError,
) -> Result<i32> {
    eprintln!(
        "warning: cargo farm {why}\n         building with cargo instead (cargo-farm as \
         RUSTC_WRAPPER, recording its rustc calls): nothing is sandboxed, distributed or cached"
    );
    let home = farm_home(args.farm.farm_home.as_ref());
    std::fs::create_dir_all(&home)
        .with_context(|| format!("creating the farm home {}", home.display()))?;
    let log = home.join("fallback-rustc-calls.jsonl");
    let _ = std::fs::remove_file(&log);
    let exe = std::env::current_exe().context("locating the cargo-farm executable")?;
    let mut cargo_args = request.build_args();
    let json = args.message_format == MessageFormat::Json;
    if json {
        cargo_args.push("--message-format".into());
        cargo_args.push("json".into());
    }
    if let Some(j) = args.jobs {
        cargo_args.push("-j".into());
        cargo_args.push(j.to_string());
    }
    let started = std::time::Instant::now();
    let status =
        tokio::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(&cargo_args)
            .env("RUSTC_WRAPPER", &exe)
            .env(crate::wrapper::RECORD_VAR, &log)
            .status()
            .await
            .context("running cargo")?;
    let calls = crate::wrapper::read_log(&log).map(|c| c.len()).unwrap_or(0);
    if json {
        println!(
            "{}",
            json!({
                "reason": "farm-summary",
                "actions": 0,
                "cache_hits": 0,
                "executed": 0,
                "failed": u64::from(!status.success()),
                "fallback": "cargo",
                "fallback_reason": why.to_string(),
                "rustc_calls_recorded": calls,
                "seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            })
        );
    }
    Ok(status.code().unwrap_or(crate::command::BUILD_FAILED))
}
