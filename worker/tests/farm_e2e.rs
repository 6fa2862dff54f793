//! End to end through real processes: a `farm-scheduler` (serving Execution, the CAS and the
//! worker protocol on one port) and two `farm-worker`s, driven by a REAPI client over gRPC.
//! Many actions spread over both workers; a worker killed with SIGKILL in the middle of an
//! action loses it to the other, which completes it; and the throughput of trivial actions.
//!
//! `farm-scheduler` is another package's binary: `cargo test --workspace` builds it; alone,
//! build it first with `cargo build -p scheduler --bin farm-scheduler`.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use cas::store::grpc::{GrpcStore, GrpcStoreOptions};
use cas::store::{BlobStore, ByteRange};
use cas::Digest;
use client::code;
use common::process::Proc;
use common::{client, processes_of};
use futures::StreamExt as _;
use reapi::execution_client::ExecutionClient;
use tonic::transport::Channel;

fn scheduler_binary() -> PathBuf {
    let worker = PathBuf::from(env!("CARGO_BIN_EXE_farm-worker"));
    let path = worker.with_file_name("farm-scheduler");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p scheduler --bin farm-scheduler` (cargo test \
         --workspace builds it)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A scheduler, two workers, and clients.
struct Farm {
    /// Kept for its `Drop`, which kills the scheduler.
    _scheduler: Proc,
    workers: Vec<(String, Proc, u32)>,
    url: String,
    store: GrpcStore,
    exec: ExecutionClient<Channel>,
    dir: tempfile::TempDir,
}

impl Farm {
    async fn start(slots: u32, uid_bases: [u32; 2]) -> Farm {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let scheduler = Proc::spawn(
            "farm-scheduler",
            &scheduler_binary(),
            &[
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--keep-alive-interval".into(),
                "200ms".into(),
                "--lease-timeout".into(),
                "2s".into(),
            ],
            dir.path().join("scheduler.log"),
        );
        let store = wait_for(&url).await;
        let mut farm = Farm {
            _scheduler: scheduler,
            workers: Vec::new(),
            exec: ExecutionClient::new(store.channel()),
            store,
            url,
            dir,
        };
        for (i, base) in uid_bases.into_iter().enumerate() {
            farm.add_worker(&format!("worker-{i}"), slots, base);
        }
        farm
    }

    fn add_worker(&mut self, id: &str, slots: u32, uid_base: u32) {
        let work = self.dir.path().join(id);
        let p = Proc::spawn(
            id,
            Path::new(env!("CARGO_BIN_EXE_farm-worker")),
            &[
                "--scheduler".into(),
                self.url.clone(),
                "--work-dir".into(),
                work.display().to_string(),
                "--slots".into(),
                slots.to_string(),
                "--worker-id".into(),
                id.into(),
                "--sandbox-uid-base".into(),
                uid_base.to_string(),
                "--cache-size".into(),
                "256MiB".into(),
            ],
            self.dir.path().join(format!("{id}.log")),
        );
        self.workers.push((id.to_string(), p, uid_base));
    }

    /// Uploads the Command and Action of `args` (salted so every action is distinct) and
    /// returns the action's digest.
    async fn action(&self, args: &[&str], salt: &str) -> Digest {
        client::upload_action(&self.store, args, salt).await
    }

    /// Executes an uploaded action and waits for its response.
    async fn execute(&self, action: &Digest) -> reapi::ExecuteResponse {
        Farm::execute_with(self.exec.clone(), action).await
    }

    async fn stdout(&self, r: &reapi::ExecuteResponse) -> String {
        let d = r.result.as_ref().unwrap().stdout_digest.as_ref().unwrap();
        let d = Digest::from_proto(Some(d)).unwrap();
        let b = self.store.get_bytes(&d, ByteRange::ALL).await.unwrap();
        String::from_utf8_lossy(&b).into_owned()
    }
}

/// Connects once the scheduler listens.
async fn wait_for(url: &str) -> GrpcStore {
    let start = Instant::now();
    loop {
        if let Ok(store) = GrpcStore::connect(url, GrpcStoreOptions::default()).await {
            if store.find_missing(&[Digest::EMPTY]).await.is_ok() {
                return store;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the scheduler never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn worker_of(r: &reapi::ExecuteResponse) -> String {
    r.result
        .as_ref()
        .and_then(|r| r.execution_metadata.as_ref())
        .map(|m| m.worker.clone())
        .unwrap_or_default()
}

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_actions_spread_over_two_workers_and_a_killed_worker_loses_its_action() {
    let mut farm = Farm::start(2, [63000, 63100]).await;

    // Many Execute calls at once: every one answered correctly, by both workers.
    let runs = (0..60).map(|i| {
        let farm = &farm;
        async move {
            let d = farm.action(&["echo", &format!("action {i}")], "many").await;
            let r = farm.execute(&d).await;
            assert_eq!(code(&r), tonic::Code::Ok, "{:?}", r.status);
            assert_eq!(farm.stdout(&r).await, format!("action {i}\n"));
            worker_of(&r)
        }
    });
    let workers = bounded("60 actions", futures::future::join_all(runs)).await;
    for (id, _, _) in &farm.workers {
        assert!(workers.contains(id), "{id} ran nothing: {workers:?}");
    }

    // kill -9 of the worker running a `sleep 2`: the action completes on the other one.
    let d = farm
        .action(&["bash", "-c", "sleep 2; echo survived"], "kill")
        .await;
    let exec = {
        let exec = farm.exec.clone();
        let store = farm.store.clone();
        tokio::spawn(async move {
            let f = Farm::execute_with(exec, &d).await;
            (f, store)
        })
    };
    // Find the worker whose sandbox users run it, once the command itself runs.
    let victim = bounded("the action to start", async {
        loop {
            if let Some(i) = farm.workers.iter().position(|(_, _, base)| {
                processes_of(&[*base, *base + 1]).iter().any(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim() == "sleep")
                })
            }) {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (victim_id, proc, base) = &mut farm.workers[victim];
    proc.kill9();
    let victim_id = victim_id.clone();
    let base = *base;
    let (r, store) = bounded("the requeued action", exec).await.unwrap();
    assert_eq!(code(&r), tonic::Code::Ok, "{:?}", r.status);
    assert_eq!(r.result.as_ref().unwrap().exit_code, 0);
    let survivor = worker_of(&r);
    assert_ne!(survivor, victim_id, "it completed on the other worker");
    let out = Digest::from_proto(r.result.as_ref().unwrap().stdout_digest.as_ref()).unwrap();
    assert_eq!(
        &store.get_bytes(&out, ByteRange::ALL).await.unwrap()[..],
        b"survived\n"
    );
    // The dead worker's sandbox died with it.
    let start = Instant::now();
    while !processes_of(&[base, base + 1]).is_empty() {
        if start.elapsed() > Duration::from_secs(10) {
            let left: Vec<String> = processes_of(&[base, base + 1])
                .iter()
                .map(|p| {
                    let stat =
                        std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                    let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                    format!(
                        "{stat} :: {}",
                        String::from_utf8_lossy(&cmd).replace('\0', " ")
                    )
                })
                .collect();
            panic!("the killed worker's sandbox is still there: {left:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trivial_actions_per_second_with_two_workers() {
    let farm = Farm::start(4, [63200, 63300]).await;
    let concurrency = 32;
    let total = 600;
    // Upload first: the figure is for execution, not for uploads.
    let mut actions = Vec::new();
    for i in 0..total {
        actions.push(farm.action(&["true"], &format!("perf-{i}")).await);
    }
    // Warm up both workers.
    for d in &actions[..8] {
        farm.execute(d).await;
    }
    let start = Instant::now();
    let done = futures::stream::iter(&actions[8..])
        .map(|d| farm.execute(d))
        .buffer_unordered(concurrency);
    let responses: Vec<reapi::ExecuteResponse> = bounded("the perf run", done.collect()).await;
    let elapsed = start.elapsed();
    for r in &responses {
        assert_eq!(code(r), tonic::Code::Ok, "{:?}", r.status);
        assert_eq!(r.result.as_ref().unwrap().exit_code, 0);
    }
    let rate = responses.len() as f64 / elapsed.as_secs_f64();
    eprintln!(
        "{} trivial actions end to end in {elapsed:?}: {rate:.0} actions/s (2 workers x 4 slots)",
        responses.len()
    );
    let min: f64 = std::env::var("FARM_E2E_MIN_ACTIONS_PER_SEC")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 40.0 } else { 200.0 });
    assert!(rate >= min, "{rate:.0} actions/s is below {min}");
}

impl Farm {
    /// Executes an uploaded action (skipping the cache) and waits for its response.
    async fn execute_with(
        exec: ExecutionClient<Channel>,
        action: &Digest,
    ) -> reapi::ExecuteResponse {
        client::execute(exec, action, true).await
    }
}
