//! `cargo-farm`, run as `cargo farm build|check|up`; also a `RUSTC_WRAPPER` when
//! `CARGO_FARM_RECORD` is set.

use clap::Parser as _;
use frontend_cli::cli::{Cli, Command};
use frontend_cli::{command, wrapper};
use resolver::BuildMode;

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    if wrapper::is_wrapper_call(&args) {
        let err = wrapper::record_and_exec(&args);
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
    // `cargo farm ...` runs `cargo-farm farm ...`.
    if args.get(1).map(String::as_str) == Some("farm") {
        args.remove(1);
    }
    let cli = Cli::parse_from(args);
    init_logging();
    // Uploads, downloads and the embedded farm stream megabyte buffers.
    cas::process::keep_freed_memory();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Build(a) => command::build(a, BuildMode::Build).await,
            Command::Check(a) => command::build(a, BuildMode::Check).await,
            Command::Up(a) => command::up(a).await,
        }
    });
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            command::BUILD_FAILED
        }
    };
    std::process::exit(code);
}

/// Logs to stderr, `RUST_LOG` (default: warnings only, so build output stays clean).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
