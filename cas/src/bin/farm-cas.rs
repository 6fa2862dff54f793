//! `farm-cas`: the REAPI storage server (Capabilities, CAS, ActionCache, ByteStream) on one port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bytesize::ByteSize;
use cas::config::{self, StoreConfig};
use cas::service::{Storage, StorageOptions};
use cas::status_http::{self, Readiness};
use clap::Parser;
use serde::Deserialize;

/// REAPI v2 content-addressed storage and action cache.
#[derive(Parser, Debug)]
#[command(name = "farm-cas", version)]
struct Args {
    /// gRPC address to serve on, e.g. 127.0.0.1:8980 (overrides `listen` in --config).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Serve a filesystem store rooted here (blobs under ROOT/cas, action results under ROOT/ac).
    #[arg(long, conflicts_with = "config")]
    root: Option<PathBuf>,
    /// Byte budget of the --root store before least-recently-used blobs are evicted.
    #[arg(long, default_value = "10 GiB", requires = "root")]
    max_size: ByteSize,
    /// TOML file describing the store stack (see README.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

/// The `--config` file.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    cas: StoreConfig,
    action_cache: StoreConfig,
    /// Where uploads are spooled; defaults to the tmp/ folder of the first filesystem store.
    spool_dir: Option<PathBuf>,
    max_batch_total_bytes: Option<ByteSize>,
    #[serde(default = "yes")]
    completeness_check: bool,
}

fn yes() -> bool {
    true
}

#[tokio::main]
async fn main() -> Result<()> {
    cas::process::keep_freed_memory();
    cas::process::init_logging();
    let args = Args::parse();
    let file = match (&args.config, &args.root) {
        (Some(path), _) => read_config(path)?,
        (None, Some(root)) => FileConfig {
            listen: None,
            metrics_listen: None,
            cas: StoreConfig::Filesystem {
                root: root.join("cas"),
                max_bytes: args.max_size,
                verify_on_recovery: Some(true),
                direct_io: None,
            },
            action_cache: StoreConfig::Filesystem {
                root: root.join("ac"),
                max_bytes: ByteSize::b(args.max_size.as_u64() / 10 + 1),
                verify_on_recovery: Some(false),
                direct_io: None,
            },
            spool_dir: None,
            max_batch_total_bytes: None,
            completeness_check: true,
        },
        (None, None) => bail!("give either --root DIR (a filesystem store) or --config FILE"),
    };
    let listen = args
        .listen
        .or(file.listen)
        .context("no address to serve on: give --listen ADDR (or `listen` in --config)")?;

    // Two filesystem stores in one directory would index, evict and recover each other's
    // files: refuse before opening (and creating) anything.
    config::check_distinct_roots(&[("cas", &file.cas), ("action_cache", &file.action_cache)])
        .context("refusing the store configuration")?;
    let spool_dir = match (&file.spool_dir, file.cas.first_filesystem_root()) {
        (Some(dir), _) => dir.clone(),
        (None, Some(root)) => root.join("tmp"),
        (None, None) => {
            std::env::temp_dir().join(format!("farm-cas-uploads-{}", std::process::id()))
        }
    };
    let cas_store = config::build(&file.cas)
        .await
        .with_context(|| format!("opening the CAS store {:?}", file.cas))?;
    let ac_store = config::build_action_cache(&file.action_cache)
        .await
        .with_context(|| format!("opening the action-cache store {:?}", file.action_cache))?;
    let mut options = StorageOptions::new(spool_dir);
    if let Some(max) = file.max_batch_total_bytes {
        options.max_batch_total_bytes = max.as_u64();
    }
    options.completeness_check = file.completeness_check;
    options.direct_io = file.cas.spool_direct_io();
    let storage = Storage::new(cas_store, ac_store, options);

    let readiness = Readiness::default();
    if let Some(addr) = args.metrics_listen.or(file.metrics_listen) {
        let bound = status_http::serve(addr, readiness.clone())
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        tracing::info!(%bound, "serving /metrics, /healthz, /readyz");
    }

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let bound = listener.local_addr()?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut server = cas::process::grpc_server();
    let router = storage.add_to(&mut server);
    readiness.set_ready(true);
    tracing::info!(%bound, "farm-cas serving REAPI storage");
    router
        .serve_with_incoming_shutdown(incoming, cas::process::shutdown_signal())
        .await
        .context("gRPC server failed")?;
    tracing::info!("farm-cas stopped");
    Ok(())
}

fn read_config(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}
