//! Fixtures of the farm-loadtest tests: a real farm in-process on 127.0.0.1:0 (the scheduler's
//! services over memory stores: Capabilities, CAS, ByteStream, ActionCache, Execution,
//! Operations, worker protocol), optionally a sandboxed worker connected to it, a storage-only
//! server behind TLS and a bearer-token check, and a runner for the real `farm-loadtest` binary
//! that parses the JSON object on its last line.

#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use cas::service::{Storage, StorageOptions};
use cas::store::grpc::{GrpcStore, GrpcStoreOptions};
use cas::store::memory::MemoryStore;
use parking_lot::Mutex;
use prost::Message as _;
use scheduler::service::SchedulerServices;
use scheduler::state::memory::MemoryState;
use scheduler::{Scheduler, SchedulerConfig};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use worker::executor::{Executor, ExecutorConfig, ExecutorError};
use worker::session::{self, SessionConfig};

/// A server on a loopback port; stops when dropped.
pub struct Farm {
    pub url: String,
    pub port: u16,
    pub storage: Storage,
    shutdown: Option<oneshot::Sender<()>>,
    /// Request metadata headers seen by the token check (storage-only servers).
    pub seen_metadata: Arc<Mutex<Vec<reapi::RequestMetadata>>>,
    _worker: Option<Worker>,
}

impl Drop for Farm {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Memory stores: a 1 GiB CAS and an action cache of `ac_bytes`.
pub fn memory_storage(ac_bytes: u64) -> Storage {
    let spool = std::env::temp_dir().join(format!("loadtest-test-spool-{}", std::process::id()));
    Storage::new(
        Arc::new(MemoryStore::new(1 << 30)),
        Arc::new(MemoryStore::new(ac_bytes)),
        StorageOptions::new(spool),
    )
}

/// Every scheduler service over `storage`, no worker.
pub async fn start_farm(storage: Storage) -> Farm {
    let config = SchedulerConfig {
        keep_alive_interval: Duration::from_millis(200),
        tick_interval: Duration::from_millis(50),
        unsatisfiable_wait: Duration::from_secs(20),
        ..SchedulerConfig::default()
    };
    let scheduler = Scheduler::new(config, Arc::new(MemoryState::new()));
    let services = SchedulerServices::new(scheduler, storage.clone());
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    let (tx, rx) = oneshot::channel::<()>();
    let mut builder = Server::builder();
    let router = services.add_to(&mut builder);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(async move {
        let _ = router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            })
            .await;
    });
    Farm {
        url: format!("http://{addr}"),
        port: addr.port(),
        storage,
        shutdown: Some(tx),
        seen_metadata: Arc::default(),
        _worker: None,
    }
}

/// A farm with a 64 MiB action cache and a worker of `slots` sandboxed slots.
pub async fn start_farm_with_worker(slots: u32) -> Farm {
    let mut farm = start_farm(memory_storage(64 << 20)).await;
    farm._worker = Some(Worker::start(&farm.url, slots).await);
    farm
}

/// A worker in-process: an Executor (bubblewrap sandboxes) and the worker-protocol session.
pub struct Worker {
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Worker {
    pub async fn start(url: &str, slots: u32) -> Worker {
        let dir = tempfile::tempdir().expect("temp dir");
        // Sandbox users must be able to reach the work directory.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .expect("chmod work dir");
        let root = worker::SandboxConfig::default().uid_base.is_some();
        let mut executor = None;
        let mut last = String::new();
        // Sandbox uids away from the other crates' tests (61000-64xxx); a block another
        // worker holds is refused, so try the next.
        for block in 0..16u32 {
            let store = GrpcStore::connect(url, GrpcStoreOptions::default())
                .await
                .expect("CAS client");
            let mut config = ExecutorConfig::new(dir.path().join("work"));
            config.slots = slots;
            config.cache_bytes = 256 << 20;
            config.max_timeout = Duration::from_secs(60);
            config.sandbox.uid_base = root.then_some(65000 + block * 16);
            config.worker_name = "loadtest-test-worker".into();
            match Executor::new(config, store).await {
                Ok(e) => {
                    executor = Some(e);
                    break;
                }
                Err(ExecutorError::Sandbox(e)) if root => last = e.to_string(),
                Err(e) => panic!("worker setup: {e}"),
            }
        }
        let executor = executor.unwrap_or_else(|| panic!("no free sandbox uids: {last}"));
        executor.self_test().await.expect(
            "the bubblewrap sandbox works (scripts/test.sh installs bubblewrap; it needs user \
             namespaces)",
        );
        let stop = CancellationToken::new();
        let config = SessionConfig {
            scheduler_url: url.to_string(),
            worker_id: format!("loadtest-worker-{}", uuid::Uuid::new_v4().simple()),
            platform: worker::platform::properties(&[]),
            slots,
            version: "test".into(),
            max_backoff: Duration::from_secs(1),
        };
        tokio::spawn(session::run(config, Arc::new(executor), stop.clone()));
        Worker { stop, _dir: dir }
    }
}

/// Storage services only, behind TLS (`cert`/`key` PEM) and a bearer-token check that records
/// every call's REAPI RequestMetadata.
pub async fn start_secure_storage(cert: &[u8], key: &[u8], token: &str) -> Farm {
    let storage = memory_storage(64 << 20);
    let seen: Arc<Mutex<Vec<reapi::RequestMetadata>>> = Arc::default();
    let expected = format!("Bearer {token}");
    let seen_in = seen.clone();
    let check = move |req: tonic::Request<()>| -> Result<tonic::Request<()>, tonic::Status> {
        let md = req.metadata();
        if let Some(v) = md.get_bin("build.bazel.remote.execution.v2.requestmetadata-bin") {
            if let Ok(bytes) = v.to_bytes() {
                if let Ok(m) = reapi::RequestMetadata::decode(bytes) {
                    seen_in.lock().push(m);
                }
            }
        }
        match md.get("authorization").and_then(|v| v.to_str().ok()) {
            Some(v) if v == expected => Ok(req),
            _ => Err(tonic::Status::unauthenticated(
                "bad or missing bearer token",
            )),
        }
    };
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    let (tx, rx) = oneshot::channel::<()>();
    loadtest::client::install_crypto_provider();
    let router = Server::builder()
        .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
        .expect("server TLS config")
        .add_service(InterceptedService::new(
            cas::service::capabilities::service(&storage),
            check.clone(),
        ))
        .add_service(InterceptedService::new(
            cas::service::cas::service(&storage),
            check.clone(),
        ))
        .add_service(InterceptedService::new(
            cas::service::action_cache::service(&storage),
            check.clone(),
        ))
        .add_service(InterceptedService::new(
            cas::service::bytestream::service(&storage),
            check,
        ));
    tokio::spawn(async move {
        let _ = router
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = rx.await;
            })
            .await;
    });
    Farm {
        url: format!("https://{addr}"),
        port: addr.port(),
        storage,
        shutdown: Some(tx),
        seen_metadata: seen,
        _worker: None,
    }
}

/// A CA and a server certificate for `localhost` signed by it, made with `openssl`:
/// (ca.pem, server cert PEM, server key PEM).
pub fn make_certificates(dir: &Path) -> (std::path::PathBuf, Vec<u8>, Vec<u8>) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=loadtest test CA",
    ];
    ca.extend_from_slice(&ec);
    ca.extend_from_slice(&["-keyout", "ca.key", "-out", "ca.pem"]);
    run(&ca);
    let mut csr = vec!["req", "-new", "-subj", "/CN=localhost"];
    csr.extend_from_slice(&ec);
    csr.extend_from_slice(&["-keyout", "server.key", "-out", "server.csr"]);
    run(&csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost\n\
         extendedKeyUsage=serverAuth\n",
    )
    .expect("write ext.cnf");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
    let read = |f: &str| std::fs::read(dir.join(f)).expect("read PEM");
    (dir.join("ca.pem"), read("server.pem"), read("server.key"))
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One run of the real binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The JSON object on the last line of stdout.
    pub json: Value,
    pub elapsed: Duration,
}

impl Run {
    pub fn errors(&self) -> u64 {
        self.json["errors"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
    }

    pub fn kind(&self, name: &str) -> &Value {
        &self.json["kinds"][name]
    }

    pub fn u64(&self, path: &[&str]) -> u64 {
        let mut v = &self.json;
        for p in path {
            v = &v[*p];
        }
        v.as_u64()
            .unwrap_or_else(|| panic!("{path:?} is not a number in {}", self.json))
    }

    /// Asserts a clean run: exit 0, no errors, nothing abandoned.
    pub fn assert_clean(&self) {
        assert_eq!(
            self.errors(),
            0,
            "errors in\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        assert_eq!(self.code, 0, "exit status; stderr:\n{}", self.stderr);
        assert_eq!(self.u64(&["abandoned"]), 0);
    }
}

/// Runs `farm-loadtest --target URL ARGS... --json`; checks the JSON line's required fields.
pub async fn loadtest(url: &str, args: &[&str]) -> Run {
    let start = Instant::now();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_farm-loadtest"))
        .arg("--target")
        .arg(url)
        .args(args)
        .arg("--json")
        // Two generator threads whatever the machine: runs stay comparable and light.
        .args(["--threads", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("farm-loadtest starts");
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("farm-loadtest finishes within 120 s")
        .expect("farm-loadtest output");
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // Shown when a test fails.
    eprintln!("farm-loadtest {}:\n{stdout}{stderr}", args.join(" "));
    let last = stdout.lines().last().unwrap_or_default();
    let json: Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!("the last line is not JSON ({e}):\n{stdout}\nstderr:\n{stderr}")
    });
    for field in ["ops_per_s", "bytes_per_s"] {
        assert!(json[field].is_number(), "{field} missing in {json}");
    }
    for q in ["p50", "p90", "p99", "max"] {
        assert!(
            json["latency_ms"][q].is_number(),
            "latency_ms.{q} missing in {json}"
        );
    }
    assert!(json["errors"].is_object(), "errors missing in {json}");
    assert!(
        json["generator_cpu"]["cores"].is_number(),
        "generator_cpu missing in {json}"
    );
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout,
        stderr,
        json,
        elapsed,
    }
}
