//! Dispatch benchmark: how fast the scheduler hands 100,000 queued actions to 1,000 workers,
//! and in how much memory.
//!
//! 1. **Core** (no gRPC): 100k operations are submitted with no worker connected, then 1,000
//!    in-process workers (4 slots each) connect and answer every lease at once through the
//!    scheduler's worker entry points. Dispatch rate = actions / time until the last result;
//!    peak RSS of the process is read from `/proc/self/status` (VmHWM) right after.
//! 2. **gRPC**: the same over loopback: 100k distinct Actions in the (memory) CAS are queued with
//!    real Execute calls, then 1,000 simulated workers on real `WorkerSessions` streams answer
//!    every lease; results are written to the action cache as in production.
//! 3. **Action-cache hits**: latency of Execute for a cached action over loopback (p50, p99).
//!
//! `cargo bench -p scheduler --bench dispatch [-- --actions N --workers N --slots N --no-grpc]`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bytes::Bytes;
use cas::service::{Storage, StorageOptions};
use cas::store::memory::MemoryStore;
use cas::Digest;
use prost::Message;
use scheduler::platform::Platform;
use scheduler::protocol::{self, scheduler_message, worker_message};
use scheduler::service::SchedulerServices;
use scheduler::state::memory::MemoryState;
#[cfg(feature = "redis")]
use scheduler::state::redis::RedisState;
use scheduler::state::SchedulerState;
use scheduler::{NewOperation, Scheduler, SchedulerConfig};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

struct Options {
    actions: usize,
    workers: usize,
    slots: u32,
    grpc: bool,
    /// Run the core part over a RedisState at this URL instead of memory.
    redis: Option<String>,
}

fn options() -> Options {
    let mut o = Options {
        actions: 100_000,
        workers: 1_000,
        slots: 4,
        grpc: true,
        redis: None,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let next = || args.get(i + 1).and_then(|v| v.parse::<usize>().ok());
        match args[i].as_str() {
            "--actions" => o.actions = next().unwrap_or(o.actions),
            "--workers" => o.workers = next().unwrap_or(o.workers),
            "--slots" => o.slots = next().map_or(o.slots, |v| v as u32),
            "--no-grpc" => o.grpc = false,
            "--redis" => o.redis = args.get(i + 1).cloned(),
            _ => {}
        }
        i += 1;
    }
    o
}

/// Peak resident memory of this process so far, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The two ISAs of the simulated fleet.
const ISAS: [&str; 2] = ["x86-64", "aarch64"];

/// Platforms of the simulated fleet: half x86-64, half aarch64, all Linux.
fn worker_platform(i: usize) -> Vec<protocol::Property> {
    let isa = ISAS[i % 2];
    vec![
        protocol::Property {
            name: "OSFamily".into(),
            value: "linux".into(),
        },
        protocol::Property {
            name: "ISA".into(),
            value: isa.into(),
        },
    ]
}

fn action_platform(i: usize) -> Platform {
    let isa = ISAS[i % 2];
    Platform::from_pairs([("OSFamily", "linux"), ("ISA", isa)])
}

/// A distinct Action (by salt) sharing one Command and an empty input root.
fn action(i: usize, command: &Digest) -> (Digest, Bytes) {
    let isa = ISAS[i % 2];
    let a = reapi::Action {
        command_digest: Some(command.to_proto()),
        input_root_digest: Some(Digest::EMPTY.to_proto()),
        salt: (i as u64).to_le_bytes().to_vec(),
        platform: Some(reapi::Platform {
            properties: vec![
                reapi::platform::Property {
                    name: "ISA".into(),
                    value: isa.into(),
                },
                reapi::platform::Property {
                    name: "OSFamily".into(),
                    value: "linux".into(),
                },
            ],
        }),
        ..Default::default()
    };
    let bytes = Bytes::from(a.encode_to_vec());
    (Digest::of(&bytes), bytes)
}

fn command() -> (Digest, Bytes) {
    let c = reapi::Command {
        arguments: vec!["/usr/bin/cc".into(), "-c".into(), "main.c".into()],
        output_paths: vec!["main.o".into()],
        ..Default::default()
    };
    let bytes = Bytes::from(c.encode_to_vec());
    (Digest::of(&bytes), bytes)
}

fn canned(worker: &str) -> reapi::ExecuteResponse {
    reapi::ExecuteResponse {
        result: Some(reapi::ActionResult {
            exit_code: 0,
            execution_metadata: Some(reapi::ExecutedActionMetadata {
                worker: worker.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn config() -> SchedulerConfig {
    SchedulerConfig {
        max_worker_slots: 1024,
        ..SchedulerConfig::default()
    }
}

/// The state of the core part: memory, or Redis with `--redis URL`.
async fn state(o: &Options) -> (Arc<dyn SchedulerState>, &'static str) {
    match &o.redis {
        #[cfg(feature = "redis")]
        Some(url) => {
            let prefix = format!("farm-dispatch-bench-{}:", uuid::Uuid::new_v4().simple());
            let state = RedisState::connect(url, prefix, Duration::from_secs(300))
                .await
                .expect("connect to Redis");
            (Arc::new(state), "redis")
        }
        #[cfg(not(feature = "redis"))]
        Some(_) => panic!("--redis needs the `redis` feature"),
        None => (Arc::new(MemoryState::new()), "memory"),
    }
}

/// Part 1: the scheduling core alone.
async fn core_bench(o: &Options) {
    let (state, kind) = state(o).await;
    let scheduler = Scheduler::new(config(), state);
    let (command_digest, command_bytes) = command();
    let start = Instant::now();
    // 64 concurrent submitters (with a durable state each waits for its record).
    let next = Arc::new(AtomicUsize::new(0));
    let submitters = (0..64).map(|_| {
        let scheduler = scheduler.clone();
        let next = next.clone();
        let command_bytes = command_bytes.clone();
        let total = o.actions;
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let (digest, bytes) = action(i, &command_digest);
                scheduler
                    .submit(NewOperation {
                        instance_name: String::new(),
                        action_digest: digest,
                        action: bytes,
                        command: command_bytes.clone(),
                        platform: action_platform(i),
                        priority: (i % 3) as i32,
                        do_not_cache: false,
                        request_metadata: Default::default(),
                        timeout: Duration::from_secs(60),
                    })
                    .await
                    .expect("submit");
            }
        })
    });
    for s in futures::future::join_all(submitters).await {
        s.expect("submitter");
    }
    let submitted = start.elapsed();
    println!(
        "core ({kind} state): queued {} actions in {:.3} s ({:.0} submits/s), {} queued",
        o.actions,
        submitted.as_secs_f64(),
        o.actions as f64 / submitted.as_secs_f64(),
        scheduler.stats().queued
    );

    let done = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(tokio::sync::Notify::new());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..o.workers {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let id = format!("sim-{w}");
        let hello = protocol::Hello {
            worker_id: id.clone(),
            platform: worker_platform(w),
            slots: o.slots,
            version: "bench".into(),
        };
        let connected = scheduler.connect(&hello, tx).expect("connect");
        let scheduler = scheduler.clone();
        let done = done.clone();
        let all_done = all_done.clone();
        let total = o.actions;
        tasks.push(tokio::spawn(async move {
            let _session = connected;
            let response = canned(&id);
            while let Some(msg) = rx.recv().await {
                if let Some(scheduler_message::Kind::Lease(lease)) = msg.kind {
                    scheduler.finish_lease(&id, &lease.lease_id, response.clone());
                    if done.fetch_add(1, Ordering::Relaxed) + 1 == total {
                        all_done.notify_one();
                    }
                }
            }
        }));
    }
    let connected = start.elapsed();
    all_done.notified().await;
    let elapsed = start.elapsed();
    let stats = scheduler.stats();
    println!(
        "core ({kind} state): {} workers x {} slots connected in {:.3} s; {} actions dispatched and finished \
         in {:.3} s = {:.0} actions/s; peak RSS {:.0} MiB",
        o.workers,
        o.slots,
        connected.as_secs_f64(),
        done.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        o.actions as f64 / elapsed.as_secs_f64(),
        peak_rss_mib()
    );
    assert_eq!(stats.queued, 0);
    assert_eq!(stats.executing, 0);
    if o.redis.is_some() {
        scheduler
            .flush_state(Duration::from_secs(600))
            .await
            .expect("flush the state");
        println!(
            "core ({kind} state): every change written to Redis {:.3} s after the workers \
             connected",
            start.elapsed().as_secs_f64()
        );
    }
    for t in tasks {
        t.abort();
    }
}

/// Serves `services` on a loopback port; returns its URL.
async fn serve(services: SchedulerServices) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut server = tonic::transport::Server::builder();
    let router = services.add_to(&mut server);
    tokio::spawn(async move { router.serve_with_incoming(incoming).await });
    format!("http://{addr}")
}

async fn connect(url: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("url")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connect")
}

/// Part 2: the same through gRPC.
async fn grpc_bench(o: &Options) {
    let spool = std::env::temp_dir().join(format!("farm-dispatch-bench-{}", std::process::id()));
    let storage = Storage::new(
        Arc::new(MemoryStore::new(4 << 30)),
        Arc::new(MemoryStore::new(1 << 30)),
        StorageOptions::new(spool),
    );
    let scheduler = Scheduler::new(config(), Arc::new(MemoryState::new()));
    let (command_digest, command_bytes) = command();
    storage
        .cas
        .put_bytes(&command_digest, command_bytes)
        .await
        .expect("put command");
    let mut digests = Vec::with_capacity(o.actions);
    for i in 0..o.actions {
        let (d, bytes) = action(i, &command_digest);
        storage.cas.put_bytes(&d, bytes).await.expect("put action");
        digests.push(d);
    }
    let url = serve(SchedulerServices::new(scheduler.clone(), storage.clone())).await;

    // Queue everything with real Execute calls (first update, then the client hangs up).
    let channels: Vec<_> = futures::future::join_all((0..8).map(|_| connect(&url))).await;
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let digests = Arc::new(digests);
    let callers = (0..256).map(|c| {
        let client = reapi::execution_client::ExecutionClient::new(channels[c % 8].clone());
        let next = next.clone();
        let digests = digests.clone();
        async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(d) = digests.get(i) else { return };
                let request = reapi::ExecuteRequest {
                    action_digest: Some(d.to_proto()),
                    ..Default::default()
                };
                let mut stream = client
                    .clone()
                    .execute(request)
                    .await
                    .expect("Execute")
                    .into_inner();
                stream.message().await.expect("first update");
            }
        }
    });
    futures::future::join_all(callers).await;
    let queued = start.elapsed();
    println!(
        "grpc: queued {} actions with Execute in {:.3} s ({:.0} Execute/s), {} queued",
        o.actions,
        queued.as_secs_f64(),
        o.actions as f64 / queued.as_secs_f64(),
        scheduler.stats().queued
    );

    // Workers on real sessions, 50 per connection.
    let done = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(tokio::sync::Notify::new());
    let worker_channels: Vec<_> =
        futures::future::join_all((0..o.workers.div_ceil(50)).map(|_| connect(&url))).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..o.workers {
        let (tx, rx) = mpsc::channel(1024);
        let id = format!("grpc-{w}");
        let hello = protocol::Hello {
            worker_id: id.clone(),
            platform: worker_platform(w),
            slots: o.slots,
            version: "bench".into(),
        };
        let msg = |kind| protocol::WorkerMessage { kind: Some(kind) };
        tx.send(msg(worker_message::Kind::Hello(hello)))
            .await
            .expect("hello");
        let mut client = protocol::worker_sessions_client::WorkerSessionsClient::new(
            worker_channels[w / 50].clone(),
        );
        let done = done.clone();
        let all_done = all_done.clone();
        let total = o.actions;
        tasks.push(tokio::spawn(async move {
            let mut inbound = client
                .open_session(ReceiverStream::new(rx))
                .await
                .expect("open session")
                .into_inner();
            let response = canned(&id).encode_to_vec();
            let mut last_keep_alive = Instant::now();
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(scheduler_message::Kind::Lease(lease)) = m.kind {
                    let result = protocol::LeaseResult {
                        lease_id: lease.lease_id,
                        execute_response: response.clone(),
                    };
                    if tx
                        .send(msg(worker_message::Kind::Result(result)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if done.fetch_add(1, Ordering::Relaxed) + 1 == total {
                        all_done.notify_one();
                    }
                }
                if last_keep_alive.elapsed() > Duration::from_secs(2) {
                    last_keep_alive = Instant::now();
                    let keep = protocol::KeepAlive::default();
                    let _ = tx.send(msg(worker_message::Kind::KeepAlive(keep))).await;
                }
            }
        }));
    }
    all_done.notified().await;
    // The last results are in flight; wait until the scheduler has them all.
    while scheduler.stats().executing > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed();
    println!(
        "grpc: {} workers on {} connections; {} actions dispatched and finished in {:.3} s = \
         {:.0} actions/s; peak RSS {:.0} MiB",
        o.workers,
        worker_channels.len(),
        o.actions,
        elapsed.as_secs_f64(),
        o.actions as f64 / elapsed.as_secs_f64(),
        peak_rss_mib()
    );

    // Part 3: Execute of an action-cache hit (the first action is cached now).
    let client = reapi::execution_client::ExecutionClient::new(connect(&url).await);
    let mut latencies = Vec::with_capacity(2000);
    for i in 0..2100 {
        let request = reapi::ExecuteRequest {
            action_digest: Some(digests[0].to_proto()),
            ..Default::default()
        };
        let t = Instant::now();
        let mut stream = client
            .clone()
            .execute(request)
            .await
            .expect("Execute")
            .into_inner();
        let mut cached = false;
        while let Some(op) = stream.message().await.expect("stream") {
            if let Some(r) = scheduler::operations::execute_response(&op) {
                cached = r.cached_result;
            }
        }
        if i >= 100 {
            latencies.push(t.elapsed());
        }
        assert!(cached, "the action is cached");
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "grpc: Execute of an action-cache hit over loopback: p50 {:.3} ms, p90 {:.3} ms, p99 \
         {:.3} ms ({} calls)",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.9).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.len()
    );
    for t in tasks {
        t.abort();
    }
}

fn main() {
    let o = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        core_bench(&o).await;
        if o.grpc {
            grpc_bench(&o).await;
        }
    });
}
