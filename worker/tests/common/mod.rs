//! Fixture of the worker tests: a real in-process farm storage server on 127.0.0.1 (CAS,
//! ByteStream, ActionCache, Capabilities over tonic), a `GrpcStore` client, and an `Executor`
//! with its own work directory and sandbox users, plus helpers to build and run actions.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    command::EnvironmentVariable, Action, ActionResult, Command, ExecuteResponse, Tree,
};
use bytes::Bytes;
use cas::service::{Storage, StorageOptions};
use cas::store::grpc::{GrpcStore, GrpcStoreOptions};
use cas::store::memory::MemoryStore;
use cas::store::{BlobStore, ByteRange};
use cas::Digest;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use worker::executor::{Executor, ExecutorConfig, Job};
use worker::sandbox::Limits;

pub mod client;
pub mod process;

/// A storage server on an ephemeral loopback port; stops when dropped.
pub struct CasServer {
    pub url: String,
    pub storage: Storage,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for CasServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Serves every storage service over memory stores.
pub async fn start_cas() -> CasServer {
    let spool = std::env::temp_dir().join(format!("worker-test-spool-{}", std::process::id()));
    let storage = Storage::new(
        Arc::new(MemoryStore::new(1 << 30)),
        Arc::new(MemoryStore::new(64 << 20)),
        StorageOptions::new(spool),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let router = Server::builder()
        .add_service(cas::service::capabilities::service(&storage))
        .add_service(cas::service::cas::service(&storage))
        .add_service(cas::service::action_cache::service(&storage))
        .add_service(cas::service::bytestream::service(&storage));
    tokio::spawn(async move {
        let _ = router
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = rx.await;
            })
            .await;
    });
    CasServer {
        url: format!("http://{addr}"),
        storage,
        shutdown: Some(tx),
    }
}

/// Sandbox users of one fixture: distinct per fixture so concurrent tests never share a uid.
static NEXT_UID_BASE: AtomicU32 = AtomicU32::new(62000);

/// A CAS server, a client, and an executor.
pub struct Farm {
    pub cas: CasServer,
    pub store: GrpcStore,
    pub executor: Arc<Executor>,
    pub work_dir: PathBuf,
    pub uid_base: u32,
    pub slots: u32,
    _dir: tempfile::TempDir,
}

/// Limits small enough for tests to hit quickly.
pub fn test_limits() -> Limits {
    Limits {
        cpu_seconds: Some(60),
        memory_bytes: Some(2 << 30),
        file_size_bytes: Some(256 << 20),
        processes: Some(256),
        open_files: Some(4096),
    }
}

impl Farm {
    pub async fn start() -> Farm {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut ExecutorConfig)) -> Farm {
        let cas = start_cas().await;
        let store = GrpcStore::connect(&cas.url, GrpcStoreOptions::default())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Sandbox users must be able to reach the work directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let work_dir = dir.path().join("work");
        let uid_base = NEXT_UID_BASE.fetch_add(16, Ordering::Relaxed);
        let mut config = ExecutorConfig::new(&work_dir);
        config.slots = 2;
        config.cache_bytes = 256 << 20;
        config.max_timeout = Duration::from_secs(60);
        config.sandbox.limits = test_limits();
        config.sandbox.uid_base = Some(uid_base);
        config.worker_name = "test-worker".into();
        tune(&mut config);
        let slots = config.slots;
        let executor = Executor::new(config, store.clone()).await.unwrap();
        executor.self_test().await.unwrap();
        Farm {
            cas,
            store,
            executor: Arc::new(executor),
            work_dir,
            uid_base,
            slots,
            _dir: dir,
        }
    }

    /// Uploads a local folder as an input root.
    pub async fn upload_dir(&self, dir: &Path) -> Digest {
        cas::merkle::upload_directory(&self.store, dir)
            .await
            .unwrap()
            .root_digest
    }

    /// A job running `command` on `input_root` (empty when `None`).
    pub fn job(
        &self,
        command: &Command,
        input_root: Option<Digest>,
        timeout: Option<Duration>,
    ) -> Job {
        let command_bytes = command.encode_to_vec();
        let action = Action {
            command_digest: Some(Digest::of(&command_bytes).to_proto()),
            input_root_digest: Some(input_root.unwrap_or(Digest::EMPTY).to_proto()),
            ..Default::default()
        };
        let action_bytes = action.encode_to_vec();
        let d = Digest::of(&action_bytes);
        Job::decode(
            "",
            &d.hash_hex(),
            d.size() as i64,
            &action_bytes,
            &command_bytes,
            timeout.map_or(0, |t| t.as_millis() as u32),
        )
        .unwrap()
    }

    pub async fn run(&self, job: &Job) -> ExecuteResponse {
        self.executor
            .execute(job, &CancellationToken::new(), &|_| {})
            .await
    }

    /// Runs `command` on `input_root` and returns the response.
    pub async fn exec(
        &self,
        command: &Command,
        input_root: Option<Digest>,
        timeout: Option<Duration>,
    ) -> ExecuteResponse {
        let job = self.job(command, input_root, timeout);
        self.run(&job).await
    }

    pub async fn read(
        &self,
        digest: &bazel_remote_apis::build::bazel::remote::execution::v2::Digest,
    ) -> Bytes {
        let d = Digest::from_proto(Some(digest)).unwrap();
        self.store.get_bytes(&d, ByteRange::ALL).await.unwrap()
    }

    pub async fn stdout(&self, r: &ActionResult) -> String {
        String::from_utf8_lossy(&self.read(r.stdout_digest.as_ref().unwrap()).await).into_owned()
    }

    pub async fn stderr(&self, r: &ActionResult) -> String {
        String::from_utf8_lossy(&self.read(r.stderr_digest.as_ref().unwrap()).await).into_owned()
    }

    pub async fn tree(
        &self,
        digest: &bazel_remote_apis::build::bazel::remote::execution::v2::Digest,
    ) -> Tree {
        Tree::decode(self.read(digest).await).unwrap()
    }

    /// Pids of processes running as one of this farm's sandbox users.
    pub fn sandbox_processes(&self) -> Vec<u32> {
        let uids: Vec<u32> = (self.uid_base..self.uid_base + self.slots).collect();
        processes_of(&uids)
    }
}

/// Pids of live (non-zombie) processes whose real uid is in `uids`.
pub fn processes_of(uids: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse::<u32>().ok());
        let zombie = status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'));
        if uid.is_some_and(|u| uids.contains(&u)) && !zombie {
            out.push(pid);
        }
    }
    out
}

/// A Command with a fixed PATH.
pub fn command(args: &[&str]) -> Command {
    Command {
        arguments: args.iter().map(|s| s.to_string()).collect(),
        environment_variables: vec![env("PATH", "/usr/bin:/bin")],
        ..Default::default()
    }
}

/// `bash -c script`.
pub fn bash(script: &str) -> Command {
    command(&["bash", "-c", script])
}

pub fn env(name: &str, value: &str) -> EnvironmentVariable {
    EnvironmentVariable {
        name: name.into(),
        value: value.into(),
    }
}

/// The response's status code (OK when absent).
pub fn code(r: &ExecuteResponse) -> tonic::Code {
    tonic::Code::from_i32(r.status.as_ref().map_or(0, |s| s.code))
}

/// The response's status message.
pub fn message(r: &ExecuteResponse) -> String {
    r.status
        .as_ref()
        .map(|s| s.message.clone())
        .unwrap_or_default()
}
