//! Resuming after a restart over Redis: `RedisState` against a real Redis, and the real
//! `farm-scheduler` binary killed with SIGKILL and started again over the same Redis.
//!
//! These tests need `FARM_TEST_REDIS_URL` (set by `scripts/test.sh`, or
//! `source scripts/test-services.sh; start_redis`); they fail, never skip, without it.

#![cfg(feature = "redis")]

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bazel_remote_apis::google::longrunning as lro;
use common::*;
use scheduler::state::{OperationRecord, RecordStage, SchedulerState, StateChange};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn redis_url() -> String {
    std::env::var("FARM_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "FARM_TEST_REDIS_URL is not set: run the tests with scripts/test.sh, or \
             `source scripts/test-services.sh; start_redis` first"
        )
    })
}

fn unique_prefix() -> String {
    format!("farm-scheduler-test-{}:", uuid::Uuid::new_v4().simple())
}

async fn get_operation(client: &Client, name: &str) -> lro::Operation {
    client
        .ops
        .clone()
        .get_operation(lro::GetOperationRequest {
            name: name.to_string(),
        })
        .await
        .expect("GetOperation")
        .into_inner()
}

fn worker_of(
    response: &bazel_remote_apis::build::bazel::remote::execution::v2::ExecuteResponse,
) -> String {
    response
        .result
        .as_ref()
        .and_then(|r| r.execution_metadata.as_ref())
        .map(|m| m.worker.clone())
        .unwrap_or_default()
}

fn record(name: &str, seq: u64, stage: RecordStage) -> OperationRecord {
    OperationRecord {
        name: name.to_string(),
        action_hash: "ab".repeat(32),
        action_size: 10,
        seq,
        stage: stage as i32,
        lease_id: if stage == RecordStage::Executing {
            format!("lease-{seq}")
        } else {
            String::new()
        },
        worker_id: if stage == RecordStage::Executing {
            "w".into()
        } else {
            String::new()
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_state_keeps_queue_leases_and_finished_records() {
    let prefix = unique_prefix();
    let state = scheduler::state::redis::RedisState::connect(
        &redis_url(),
        prefix.clone(),
        Duration::from_secs(2),
    )
    .await
    .expect("connect to the test Redis");
    assert!(state.is_durable());
    state
        .apply(&[
            StateChange::Put(record("q1", 1, RecordStage::Queued)),
            StateChange::Put(record("q2", 2, RecordStage::Queued)),
            StateChange::Put(record("x", 3, RecordStage::Queued)),
            StateChange::Put(record("x", 3, RecordStage::Executing)),
            StateChange::Put(record("gone", 4, RecordStage::Queued)),
            StateChange::Remove("gone".into()),
            StateChange::Put(record("q2", 2, RecordStage::Completed)),
        ])
        .await
        .expect("apply");
    let mut unfinished = state.load_unfinished().await.expect("load");
    unfinished.sort_by_key(|r| r.seq);
    let names: Vec<(&str, RecordStage)> = unfinished
        .iter()
        .map(|r| (r.name.as_str(), r.record_stage()))
        .collect();
    assert_eq!(
        names,
        vec![("q1", RecordStage::Queued), ("x", RecordStage::Executing)]
    );
    assert_eq!(unfinished[1].lease_id, "lease-3");
    let done = state
        .get("q2")
        .await
        .expect("get")
        .expect("finished record kept");
    assert_eq!(done.record_stage(), RecordStage::Completed);
    assert!(state.get("gone").await.expect("get").is_none());

    // The raw layout: a queue sorted set, a lease hash, expiring finished records.
    let client = redis::Client::open(redis_url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let queue: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{prefix}queue"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("ZRANGE");
    assert_eq!(queue, vec!["q1".to_string()]);
    let lease: Option<String> = redis::cmd("HGET")
        .arg(format!("{prefix}leases"))
        .arg("x")
        .query_async(&mut conn)
        .await
        .expect("HGET");
    assert_eq!(lease.as_deref(), Some("lease-3"));
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{prefix}op:q2"))
        .query_async(&mut conn)
        .await
        .expect("TTL");
    assert!(
        (1..=2).contains(&ttl),
        "finished records expire (ttl {ttl})"
    );
}

/// A `farm-scheduler` child process, killed when dropped (its log printed if a test failed).
struct Process {
    child: Child,
    log: PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- farm-scheduler log {}:\n{log}", self.log.display());
        }
    }
}

/// A free port outside the kernel's ephemeral range (32768+), so in-process test servers
/// binding port 0 never take it while the binary restarts.
fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = 20_000 + (uuid::Uuid::new_v4().as_u128() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000");
}

/// How many times the log says the scheduler is serving.
fn serving_lines(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("farm-scheduler serving")
        .count()
}

/// Starts the binary and waits until it logs that it serves (on its own port).
async fn spawn_scheduler(args: &[String], log: &Path) -> Process {
    let before = serving_lines(log);
    let log_file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_farm-scheduler"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("spawn farm-scheduler");
    let mut process = Process {
        child,
        log: log.to_path_buf(),
    };
    bounded("farm-scheduler to serve", async {
        loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("farm-scheduler exited with {status}:\n{log}");
            }
            if serving_lines(log) > before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    process
}

async fn http_get(port: u16, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.expect("read");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_scheduler_killed_and_restarted_over_redis_loses_nothing() {
    let redis = redis_url();
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let metrics_port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--root",
        &tmp.path().join("store").display().to_string(),
        "--redis",
        &redis,
        "--redis-prefix",
        &unique_prefix(),
        "--metrics-listen",
        &format!("127.0.0.1:{metrics_port}"),
        "--keep-alive-interval",
        "100ms",
        "--lease-timeout",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let log = tmp.path().join("scheduler.log");
    let first_run = spawn_scheduler(&args, &log).await;
    let client = Client::connect(&url).await;

    // One operation finishes before the crash.
    let early = SimWorker::connect(&url, "early", &[], 1, Mode::AutoReply(Duration::ZERO)).await;
    let d = upload_action(&client, &ActionSpec::new("before the crash")).await;
    let (updates, _) = finish(client.execute(&d).await).await;
    let finished = updates[0].name.clone();
    early.drop_stream();

    // Two run on workers that hold them through the crash; two are queued.
    let holder = SimWorker::connect(&url, "holder", &[("pool", "holder")], 1, Mode::Hold).await;
    let holder2 = SimWorker::connect(&url, "holder2", &[("pool", "holder2")], 1, Mode::Hold).await;
    let mut names = Vec::new();
    for (tag, pool) in [
        ("c", "holder"),
        ("f", "holder2"),
        ("a", "fresh"),
        ("b", "fresh"),
    ] {
        let spec = ActionSpec::new(tag).platform(&[("pool", pool)]);
        let d = upload_action(&client, &spec).await;
        let mut s = client.execute(&d).await;
        names.push(first(&mut s).await.name);
    }
    holder.wait_leases(1).await;
    let held = holder2.wait_leases(1).await;
    let metrics = http_get(metrics_port, "/metrics").await;
    assert!(
        metrics.contains("farm_scheduler_queue_depth{platform=\"pool=fresh\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("farm_scheduler_workers{isa=\"none\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("farm_scheduler_action_duration_seconds_count"),
        "{metrics}"
    );
    assert!(
        metrics.contains("farm_scheduler_dispatched_total"),
        "{metrics}"
    );

    // kill -9, then the same command again.
    drop(first_run);
    holder.drop_stream();
    holder2.drop_stream();
    let _second_run = spawn_scheduler(&args, &log).await;
    let client = Client::connect(&url).await;
    assert!(get_operation(&client, &finished).await.done);
    let mut waits = Vec::new();
    for name in &names {
        let mut s = client
            .wait_execution(name)
            .await
            .expect("the operation survived the restart");
        let op = first(&mut s).await;
        assert!(!op.done, "{name} resumes unfinished");
        waits.push(s);
    }
    let f = waits.remove(1);
    let c = waits.remove(0);

    // holder2 reconnects still running its lease and finishes it.
    let holder2 = SimWorker::connect_holding(
        &url,
        "holder2",
        &[("pool", "holder2")],
        1,
        Mode::Hold,
        held.clone(),
    )
    .await;
    holder2.reply_ok(&held[0]).await;
    assert_eq!(worker_of(&finish(f).await.1), "holder2");

    // holder never comes back: after the lease timeout its action runs elsewhere.
    let fresh = SimWorker::connect(
        &url,
        "fresh",
        &[("pool", "fresh"), ("pool", "holder")],
        2,
        Mode::AutoReply(Duration::ZERO),
    )
    .await;
    for s in waits {
        assert_eq!(worker_of(&finish(s).await.1), "fresh");
    }
    assert_eq!(worker_of(&finish(c).await.1), "fresh");
    assert_eq!(fresh.leases().len(), 3);
}
