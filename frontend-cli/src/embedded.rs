//! The embedded farm: a filesystem CAS and action cache under the farm home, a scheduler and
//! sandboxed local workers, all in this process and serving REAPI on a loopback port. `cargo
//! farm build` with nothing configured uses one for the build's duration; `cargo farm up` keeps
//! one serving for a team.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use cas::service::{Storage, StorageOptions};
use cas::store::filesystem::{FilesystemOptions, FilesystemStore};
use cas::store::grpc::{GrpcStore, GrpcStoreOptions};
use scheduler::service::SchedulerServices;
use scheduler::state::memory::MemoryState;
use scheduler::{Scheduler, SchedulerConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use worker::executor::{Executor, ExecutorConfig};
use worker::sandbox::SandboxConfig;
use worker::session::{self, SessionConfig};

/// How to run the embedded farm.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// `$CARGO_FARM_HOME`: `cas/`, `ac/`, `worker-N/`, `tmp/` live here.
    pub home: PathBuf,
    /// Where to serve (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Local workers and slots per worker.
    pub workers: u32,
    pub slots: u32,
    /// Byte budget of the CAS (the action cache gets a tenth).
    pub max_bytes: u64,
    /// The bubblewrap binary.
    pub bwrap: PathBuf,
}

/// A running embedded farm.
pub struct EmbeddedFarm {
    url: String,
    workers_stop: CancellationToken,
    server_stop: CancellationToken,
    workers: Vec<JoinHandle<()>>,
    server: JoinHandle<Result<()>>,
    _lock: std::fs::File,
}

impl EmbeddedFarm {
    /// Starts the farm; fails clearly when the sandbox cannot work on this machine.
    pub async fn start(options: EmbeddedOptions) -> Result<EmbeddedFarm> {
        let home = &options.home;
        std::fs::create_dir_all(home)
            .with_context(|| format!("creating the farm home {}", home.display()))?;
        let lock = lock_home(home)?;
        check_bwrap(&options.bwrap)?;

        // The compilers that read this CAS's blobs next run on the same machine (the worker
        // hardlinks them), so large blobs stay in the page cache: no direct I/O here.
        let cas_options = FilesystemOptions {
            direct_io: false,
            ..FilesystemOptions::new(options.max_bytes)
        };
        let cas = FilesystemStore::open_with(home.join("cas"), cas_options)
            .await
            .with_context(|| format!("opening the CAS under {}", home.display()))?;
        let ac_options = FilesystemOptions {
            verify_on_recovery: false,
            ..FilesystemOptions::new(options.max_bytes / 10 + 1)
        };
        let ac = FilesystemStore::open_with(home.join("ac"), ac_options)
            .await
            .with_context(|| format!("opening the action cache under {}", home.display()))?;
        let local_blobs: Arc<dyn worker::cache::LocalBlobs> = Arc::new(cas.clone());
        let storage = Storage::new(
            Arc::new(cas),
            Arc::new(ac),
            StorageOptions {
                direct_io: false,
                ..StorageOptions::new(home.join("tmp"))
            },
        );
        let config = SchedulerConfig {
            // Local workers never go silent for long; fail fast if one dies.
            unsatisfiable_wait: Duration::from_secs(10),
            tick_interval: Duration::from_millis(200),
            ..SchedulerConfig::default()
        };
        let scheduler = Scheduler::new(config, Arc::new(MemoryState::new()));
        let services = SchedulerServices::new(scheduler, storage);

        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .with_context(|| format!("binding {}", options.listen))?;
        let bound = listener.local_addr()?;
        let url = format!("http://{bound}");
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let server_stop = CancellationToken::new();
        let stop = server_stop.clone();
        let mut builder = cas::process::grpc_server();
        let router = services.add_to(&mut builder);
        let server = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
                .context("the embedded farm's gRPC server failed")
        });

        let workers_stop = CancellationToken::new();
        let mut workers = Vec::new();
        for n in 0..options.workers.max(1) {
            let executor = start_executor(&options, &url, n, local_blobs.clone()).await?;
            let session = SessionConfig {
                scheduler_url: url.clone(),
                worker_id: format!("embedded-{}-{n}", std::process::id()),
                platform: worker::platform::properties(&[]),
                slots: options.slots.max(1),
                version: env!("CARGO_PKG_VERSION").to_string(),
                max_backoff: Duration::from_millis(200),
            };
            let stop = workers_stop.clone();
            workers.push(tokio::spawn(session::run(
                session,
                Arc::new(executor),
                stop,
            )));
        }
        tracing::debug!(%url, "embedded farm serving");
        Ok(EmbeddedFarm {
            url,
            workers_stop,
            server_stop,
            workers,
            server,
            _lock: lock,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the workers (cancelling what they run), then the server.
    pub async fn stop(self) -> Result<()> {
        self.workers_stop.cancel();
        for w in self.workers {
            let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
        }
        self.server_stop.cancel();
        match tokio::time::timeout(Duration::from_secs(10), self.server).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => bail!("the embedded farm's server task failed: {e}"),
            Err(_) => {
                tracing::warn!("the embedded farm's server did not stop within 10 s");
                Ok(())
            }
        }
    }
}

/// First sandbox uid of embedded workers (farm-worker's default is 61000); each worker takes
/// the first free block of [`UID_BLOCK`] uids from here.
const EMBEDDED_UID_BASE: u32 = 62000;
const UID_BLOCK: u32 = 256;

async fn start_executor(
    options: &EmbeddedOptions,
    url: &str,
    n: u32,
    local_blobs: Arc<dyn worker::cache::LocalBlobs>,
) -> Result<Executor> {
    let work_dir = crate::worker_dir::worker_dir(&options.home, &format!("worker-{n}"))?;
    let root = SandboxConfig::default().uid_base.is_some();
    let mut last_error = None;
    for block in 0..64 {
        let store = GrpcStore::connect_lazy(url, GrpcStoreOptions::default())
            .with_context(|| format!("the embedded CAS at {url}"))?;
        let mut config = ExecutorConfig::new(&work_dir);
        config.slots = options.slots.max(1);
        config.cache_bytes = options.max_bytes;
        config.sandbox = SandboxConfig {
            bwrap: options.bwrap.clone(),
            uid_base: root.then_some(EMBEDDED_UID_BASE + block * UID_BLOCK),
            ..SandboxConfig::default()
        };
        config.worker_name = format!("embedded-{n}");
        // The CAS beside it: inputs are hardlinked from it rather than copied over gRPC.
        config.local_blobs = Some(local_blobs.clone());
        match Executor::new(config, store).await {
            Ok(executor) => {
                executor.self_test().await.context(
                    "the sandbox does not work on this machine (cargo farm runs every action \
                     in a bubblewrap sandbox; it needs user namespaces)",
                )?;
                return Ok(executor);
            }
            // Those uids belong to another worker on this host: try the next block.
            Err(worker::executor::ExecutorError::Sandbox(e)) if root => last_error = Some(e),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("preparing the worker directory {}", work_dir.display())
                })
            }
        }
    }
    Err(anyhow::anyhow!(
        "no free block of sandbox uids for an embedded worker: {}",
        last_error.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// One process at a time owns a farm home; a second waits, as cargo does for its build lock.
fn lock_home(home: &Path) -> Result<std::fs::File> {
    let path = home.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            eprintln!(
                "    Blocking waiting for file lock on the farm home {}",
                home.display()
            );
            file.lock()
                .with_context(|| format!("locking {}", path.display()))?;
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
    Ok(file)
}

/// A clear message when bubblewrap is missing, instead of a failed self-test.
fn check_bwrap(bwrap: &Path) -> Result<()> {
    let found = if bwrap.components().count() > 1 {
        bwrap.is_file()
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(bwrap).is_file()))
            .unwrap_or(false)
    };
    if !found {
        bail!(
            "`{}` was not found: the embedded farm runs every action in a bubblewrap sandbox. \
             Install it (Debian/Ubuntu: `apt-get install bubblewrap`), or build on a farm with \
             --remote URL",
            bwrap.display()
        );
    }
    Ok(())
}
