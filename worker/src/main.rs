//! `farm-worker`: leases actions from a farm scheduler and runs each in a bubblewrap sandbox.
//!
//! ```text
//! farm-worker --scheduler URL [--cas URL] --work-dir DIR [--platform KEY=VALUE]... [--slots N]
//!             [--metrics-listen ADDR]
//! ```
//!
//! The CAS defaults to the scheduler's URL (the scheduler port serves the CAS too). Log level
//! from `RUST_LOG` (default `info`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytesize::ByteSize;
use cas::store::grpc::{GrpcStore, GrpcStoreOptions};
use clap::Parser;
use tokio_util::sync::CancellationToken;
use worker::executor::{Executor, ExecutorConfig};
use worker::platform;
use worker::sandbox::{Limits, SandboxConfig, DEFAULT_RO_PATHS};
use worker::session::{self, SessionConfig};

#[derive(Parser, Debug)]
#[command(
    name = "farm-worker",
    version,
    about = "Runs REAPI actions leased by a farm scheduler in sandboxes"
)]
struct Args {
    /// The scheduler (worker protocol), e.g. http://127.0.0.1:8980.
    #[arg(long, env = "FARM_SCHEDULER")]
    scheduler: String,
    /// The CAS; defaults to the scheduler's URL.
    #[arg(long, env = "FARM_CAS")]
    cas: Option<String>,
    /// The worker's own directory (local blob cache and action directories; one filesystem).
    #[arg(long)]
    work_dir: PathBuf,
    /// An extra platform property to advertise (OSFamily and ISA are detected; these may
    /// override them).
    #[arg(long = "platform", value_name = "KEY=VALUE", value_parser = platform::parse_property)]
    platform: Vec<(String, String)>,
    /// Actions run at once (default: the number of CPUs).
    #[arg(long)]
    slots: Option<u32>,
    /// Byte budget of the local blob cache.
    #[arg(long, default_value = "10GiB")]
    cache_size: ByteSize,
    /// Another host path visible read-only in the sandbox, besides /usr, /bin, /lib, /lib64,
    /// /etc/alternatives
    /// (a Rust toolchain, say).
    #[arg(long = "ro-path", value_name = "PATH")]
    ro_paths: Vec<PathBuf>,
    /// Timeout of actions that name none, and the cap of every timeout, in seconds.
    #[arg(long, default_value_t = 3600)]
    max_timeout_secs: u64,
    /// RLIMIT_AS of each action process.
    #[arg(long, default_value = "16GiB")]
    limit_memory: ByteSize,
    /// RLIMIT_FSIZE: largest file an action may write.
    #[arg(long, default_value = "16GiB")]
    limit_file_size: ByteSize,
    /// RLIMIT_CPU of each action process, in seconds.
    #[arg(long, default_value_t = 3600)]
    limit_cpu_secs: u64,
    /// RLIMIT_NPROC: processes and threads of one action.
    #[arg(long, default_value_t = 1024)]
    limit_processes: u64,
    /// First host uid of the per-slot sandbox users (default 61000 when run as root; without
    /// root, actions run as the worker's user).
    #[arg(long)]
    sandbox_uid_base: Option<u32>,
    /// The bubblewrap binary.
    #[arg(long, default_value = "bwrap")]
    bwrap: PathBuf,
    /// The worker id (default: hostname-pid-starttime).
    #[arg(long)]
    worker_id: Option<String>,
    /// Serve Prometheus /metrics, /healthz and /readyz (ready once the sandbox self-test
    /// passed) on this address.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cas::process::init_logging();
    cas::process::keep_freed_memory();
    let args = Args::parse();
    let cas_url = args.cas.clone().unwrap_or_else(|| args.scheduler.clone());
    let store = GrpcStore::connect_lazy(&cas_url, GrpcStoreOptions::default())
        .with_context(|| format!("CAS endpoint {cas_url}"))?;
    let worker_id = args.worker_id.clone().unwrap_or_else(platform::worker_id);

    let mut sandbox = SandboxConfig {
        bwrap: args.bwrap.clone(),
        limits: Limits {
            cpu_seconds: Some(args.limit_cpu_secs),
            memory_bytes: Some(args.limit_memory.as_u64()),
            file_size_bytes: Some(args.limit_file_size.as_u64()),
            processes: Some(args.limit_processes),
            ..Limits::default()
        },
        ..SandboxConfig::default()
    };
    sandbox.ro_paths = DEFAULT_RO_PATHS.iter().map(PathBuf::from).collect();
    sandbox.ro_paths.extend(args.ro_paths.iter().cloned());
    if args.sandbox_uid_base.is_some() {
        sandbox.uid_base = args.sandbox_uid_base;
    }
    let mut config = ExecutorConfig::new(&args.work_dir);
    config.cache_bytes = args.cache_size.as_u64();
    if let Some(slots) = args.slots {
        config.slots = slots.max(1);
    }
    config.sandbox = sandbox;
    config.max_timeout = Duration::from_secs(args.max_timeout_secs.max(1));
    config.worker_name = worker_id.clone();
    let slots = config.slots;

    let readiness = cas::status_http::Readiness::default();
    if let Some(addr) = args.metrics_listen {
        worker::metrics::init();
        let bound = cas::status_http::serve(addr, readiness.clone())
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        tracing::info!(%bound, "serving /metrics, /healthz, /readyz");
    }
    let executor = Executor::new(config, store)
        .await
        .with_context(|| format!("preparing the work directory {}", args.work_dir.display()))?;
    executor
        .self_test()
        .await
        .context("sandbox self-test (is bubblewrap installed and are user namespaces enabled?)")?;
    readiness.set_ready(true);
    let platform = platform::properties(&args.platform);
    tracing::info!(%worker_id, slots, ?platform, scheduler = %args.scheduler, cas = %cas_url, "farm-worker starting");

    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        on_signal.cancel();
    });
    let session = SessionConfig {
        scheduler_url: args.scheduler.clone(),
        worker_id,
        platform,
        slots,
        version: env!("CARGO_PKG_VERSION").to_string(),
        max_backoff: Duration::from_secs(5),
    };
    session::run(session, Arc::new(executor), shutdown).await;
    Ok(())
}

/// SIGINT or SIGTERM.
async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
