//! `farm-scheduler`: REAPI Execution and Operations plus the storage services (embedded or
//! forwarded to a `farm-cas`) and the worker protocol, all on one port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytesize::ByteSize;
use cas::service::{Storage, StorageOptions};
use cas::status_http::{self, Readiness};
use cas::store::filesystem::{FilesystemOptions, FilesystemStore};
use cas::store::grpc::{GrpcStore, GrpcStoreOptions};
use cas::store::memory::MemoryStore;
use cas::store::BlobStore;
use clap::Parser;
use scheduler::service::SchedulerServices;
use scheduler::state::memory::MemoryState;
use scheduler::state::SchedulerState;
use scheduler::{Scheduler, SchedulerConfig};

/// REAPI remote-execution scheduler.
#[derive(Parser, Debug)]
#[command(name = "farm-scheduler", version)]
struct Args {
    /// gRPC address to serve on, e.g. 127.0.0.1:8981 (clients and workers both use it).
    #[arg(long)]
    listen: SocketAddr,
    /// Forward CAS and action cache to this REAPI server (a farm-cas), e.g.
    /// grpc://127.0.0.1:8980.
    #[arg(long, conflicts_with = "root")]
    cas: Option<String>,
    /// Embed a filesystem store rooted here (blobs under ROOT/cas, action results under
    /// ROOT/ac). Without --cas or --root the store is in memory.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Byte budget of the embedded store before least-recently-used blobs are evicted
    /// (default 10 GiB with --root, 2 GiB in memory).
    #[arg(long, conflicts_with = "cas")]
    max_size: Option<ByteSize>,
    /// Keep scheduler state in Redis (redis://host:port[/db]) so a restart loses no queued or
    /// running operation.
    #[arg(long)]
    redis: Option<String>,
    /// Prefix of the scheduler's Redis keys.
    #[arg(long, default_value = "farm-scheduler:", requires = "redis")]
    redis_prefix: String,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Workers must send a keep-alive this often (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    keep_alive_interval: Duration,
    /// Leases of a worker silent this long are requeued.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    lease_timeout: Duration,
    /// Requeues of an action lost with its worker before it fails.
    #[arg(long, default_value_t = 3)]
    max_retries: u32,
    /// Cap on Action.timeout (and the timeout of actions without one).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    max_action_timeout: Duration,
    /// How long past its timeout an unanswered lease is cancelled by the scheduler.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout_grace: Duration,
    /// How long an action no connected worker can run waits before it fails.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    unsatisfiable_wait: Duration,
    /// How long finished operations stay answerable by GetOperation / WaitExecution.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    completed_retention: Duration,
}

/// Parses `500ms`, `30s`, `5m`, `1h` or a plain number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 30s, 5m or 1h"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

#[tokio::main]
async fn main() -> Result<()> {
    cas::process::init_logging();
    let args = Args::parse();
    let config = SchedulerConfig {
        keep_alive_interval: args.keep_alive_interval,
        lease_timeout: args.lease_timeout,
        max_retries: args.max_retries,
        max_action_timeout: args.max_action_timeout,
        timeout_grace: args.timeout_grace,
        unsatisfiable_wait: args.unsatisfiable_wait,
        completed_retention: args.completed_retention,
        tick_interval: (args.keep_alive_interval / 2)
            .clamp(Duration::from_millis(20), Duration::from_millis(500)),
        ..SchedulerConfig::default()
    };
    if config.lease_timeout <= config.keep_alive_interval {
        bail!("--lease-timeout must be longer than --keep-alive-interval");
    }

    let state = open_state(&args, &config).await?;
    let scheduler = Scheduler::new(config, state);
    let services = open_storage(&args, scheduler.clone()).await?;
    let resumed = scheduler
        .resume(&*services.storage.cas)
        .await
        .context("resuming operations from the scheduler state")?;
    tracing::info!(?resumed, "scheduler state loaded");

    let readiness = Readiness::default();
    if let Some(addr) = args.metrics_listen {
        let bound = status_http::serve(addr, readiness.clone())
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        tracing::info!(%bound, "serving /metrics, /healthz, /readyz");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let bound = listener.local_addr()?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut server = cas::process::grpc_server();
    let router = services.add_to(&mut server);
    readiness.set_ready(true);
    tracing::info!(%bound, "farm-scheduler serving REAPI execution, storage and worker sessions");
    router
        .serve_with_incoming_shutdown(incoming, cas::process::shutdown_signal())
        .await
        .context("gRPC server failed")?;
    if let Err(e) = scheduler.flush_state(Duration::from_secs(10)).await {
        tracing::warn!(error = %e, "stopping with scheduler state changes not yet written");
    }
    tracing::info!("farm-scheduler stopped");
    Ok(())
}

async fn open_state(args: &Args, config: &SchedulerConfig) -> Result<Arc<dyn SchedulerState>> {
    match &args.redis {
        #[cfg(feature = "redis")]
        Some(url) => {
            let state = scheduler::state::redis::RedisState::connect(
                url,
                args.redis_prefix.clone(),
                config.completed_retention,
            )
            .await
            .context("opening the Redis scheduler state")?;
            Ok(Arc::new(state))
        }
        #[cfg(not(feature = "redis"))]
        Some(_) => {
            let _ = config;
            bail!("--redis needs farm-scheduler built with the `redis` feature")
        }
        None => Ok(Arc::new(MemoryState::new())),
    }
}

/// The storage behind the port: forwarded to `--cas`, a filesystem store under `--root`, or
/// memory.
async fn open_storage(args: &Args, scheduler: Scheduler) -> Result<SchedulerServices> {
    let spool = |root: Option<&PathBuf>| match root {
        Some(root) => root.join("tmp"),
        None => std::env::temp_dir().join(format!("farm-scheduler-uploads-{}", std::process::id())),
    };
    if let Some(url) = &args.cas {
        let store = GrpcStore::connect(url, GrpcStoreOptions::default())
            .await
            .with_context(|| format!("connecting to the CAS at {url}"))?;
        let channel = store.channel();
        let cas: Arc<dyn BlobStore> = Arc::new(store);
        // The forwarded action cache never touches this store; an empty one fills the slot.
        let unused_ac: Arc<dyn BlobStore> = Arc::new(MemoryStore::new(0));
        let storage = Storage::new(cas, unused_ac, StorageOptions::new(spool(None)));
        tracing::info!(url, "forwarding CAS and action cache");
        return Ok(SchedulerServices::forwarding(scheduler, storage, channel));
    }
    let (cas, ac): (Arc<dyn BlobStore>, Arc<dyn BlobStore>) = match &args.root {
        Some(root) => {
            let max = args.max_size.unwrap_or(ByteSize::gib(10)).as_u64();
            let cas = FilesystemStore::open(root.join("cas"), max)
                .await
                .with_context(|| {
                    format!("opening the filesystem store under {}", root.display())
                })?;
            // Action results are not content-addressed: nothing to verify after a crash.
            let ac_options = FilesystemOptions {
                verify_on_recovery: false,
                ..FilesystemOptions::new(max / 10 + 1)
            };
            let ac = FilesystemStore::open_with(root.join("ac"), ac_options)
                .await
                .with_context(|| format!("opening the action cache under {}", root.display()))?;
            (Arc::new(cas), Arc::new(ac))
        }
        None => {
            let max = args.max_size.unwrap_or(ByteSize::gib(2)).as_u64();
            tracing::warn!("no --root or --cas: blobs and action results live in memory only");
            (
                Arc::new(MemoryStore::new(max)),
                Arc::new(MemoryStore::new(max / 10 + 1)),
            )
        }
    };
    let storage = Storage::new(cas, ac, StorageOptions::new(spool(args.root.as_ref())));
    Ok(SchedulerServices::new(scheduler, storage))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("x").is_err());
    }
}
