//! End-to-end benchmark client of a running farm (`farm-scheduler` + `farm-worker`s), driven
//! by `scripts/bench-exec.sh`, which starts the processes. Two figures of issue 3:
//!
//! - `throughput`: trivial actions (`/bin/true`, each with a fresh salt so nothing hits the
//!   action cache or merges with another) executed with `--concurrency` Execute calls in
//!   flight, after a warm-up. Every Command and Action is uploaded before the clock starts: the
//!   figure is for execution, not CAS uploads. Prints actions/s, client latency p50/p99 and a
//!   median breakdown of where a worker spends an action (from `ExecutedActionMetadata`).
//! - `cache_hit`: one action executed for real (populating the action cache), then `--actions`
//!   sequential Executes of it, each a cache hit; latency p50/p90/p99.
//!
//! Output: `RESULT name value unit` lines.
//!
//! `cargo bench -p worker --bench e2e_throughput -- URL (throughput|cache_hit)
//! [--actions N] [--concurrency N] [--warmup N]`

#[path = "../tests/common/client.rs"]
mod client;

use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::protobuf::Timestamp;
use cas::store::grpc::{GrpcStore, GrpcStoreOptions};
use cas::Digest;
use futures::StreamExt as _;
use reapi::execution_client::ExecutionClient;
use tonic::transport::Channel;

struct Options {
    url: String,
    mode: String,
    actions: usize,
    concurrency: usize,
    warmup: usize,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` adds `--bench`; positional arguments are the URL and the mode.
    let mut positional = Vec::new();
    let mut o = Options {
        url: String::new(),
        mode: String::new(),
        actions: 0,
        concurrency: 48,
        warmup: 0,
    };
    let mut i = 0;
    while i < args.len() {
        let value = || {
            args.get(i + 1)
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("{} needs a number", args[i]))
        };
        match args[i].as_str() {
            "--actions" => o.actions = value(),
            "--concurrency" => o.concurrency = value(),
            "--warmup" => o.warmup = value(),
            "--bench" => {
                i += 1;
                continue;
            }
            a => {
                positional.push(a.to_string());
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    let [url, mode] = <[String; 2]>::try_from(positional).unwrap_or_else(|p| {
        panic!("usage: e2e_throughput URL (throughput|cache_hit) [--actions N] ...; got {p:?}")
    });
    o.url = url;
    o.mode = mode;
    if o.actions == 0 {
        o.actions = 2000;
    }
    if o.warmup == 0 {
        o.warmup = if o.mode == "cache_hit" { 100 } else { 64 };
    }
    o
}

/// The `p`-quantile of sorted `xs`.
fn quantile(xs: &[Duration], p: f64) -> Duration {
    xs[((xs.len() as f64 * p) as usize).min(xs.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A timestamp as seconds since the epoch.
fn secs(t: &Option<Timestamp>) -> f64 {
    t.as_ref()
        .map_or(f64::NAN, |t| t.seconds as f64 + t.nanos as f64 * 1e-9)
}

async fn connect(url: &str) -> GrpcStore {
    GrpcStore::connect(url, GrpcStoreOptions::default())
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// Median of the seconds `f` gives for each response, in ms.
fn median_ms(
    rs: &[reapi::ExecuteResponse],
    f: impl Fn(&reapi::ExecutedActionMetadata) -> f64,
) -> f64 {
    let mut xs: Vec<f64> = rs
        .iter()
        .filter_map(|r| r.result.as_ref()?.execution_metadata.as_ref())
        .map(f)
        .filter(|x| x.is_finite())
        .collect();
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2] * 1e3
}

/// Executes `digests` with `concurrency` calls in flight, spread over `execs`; the latency and
/// response of each.
async fn run(
    execs: &[ExecutionClient<Channel>],
    digests: &[Digest],
    concurrency: usize,
) -> Vec<(Duration, reapi::ExecuteResponse)> {
    futures::stream::iter(digests.iter().enumerate())
        .map(|(i, d)| {
            let exec = execs[i % execs.len()].clone();
            async move {
                let t = Instant::now();
                let r = client::execute(exec, d, false).await;
                (t.elapsed(), r)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

async fn throughput(o: &Options) {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let store = connect(&o.url).await;
    // A few connections, so the Execute streams are not all on one HTTP/2 connection.
    let mut execs = Vec::new();
    for _ in 0..4 {
        execs.push(ExecutionClient::new(connect(&o.url).await.channel()));
    }
    let total = o.warmup + o.actions;
    let mut actions = Vec::with_capacity(total);
    let mut batch = Vec::new();
    for i in 0..total {
        let [command, action] = client::action_blobs(&["/bin/true"], &format!("{nonce}-{i}"));
        if batch.is_empty() {
            batch.push(command);
        }
        actions.push(action.0);
        batch.push(action);
        if batch.len() >= 500 || i + 1 == total {
            store
                .batch_update(std::mem::take(&mut batch))
                .await
                .expect("upload actions");
        }
    }

    run(&execs, &actions[..o.warmup], o.concurrency).await;
    let start = Instant::now();
    let done = run(&execs, &actions[o.warmup..], o.concurrency).await;
    let elapsed = start.elapsed();

    let mut latencies: Vec<Duration> = done.iter().map(|(t, _)| *t).collect();
    let responses: Vec<reapi::ExecuteResponse> = done.into_iter().map(|(_, r)| r).collect();
    for r in &responses {
        assert_eq!(client::code(r), tonic::Code::Ok, "{:?}", r.status);
        let result = r.result.as_ref().expect("a result");
        assert_eq!(result.exit_code, 0);
        assert!(!r.cached_result, "a fresh action was a cache hit");
    }
    let mut workers: Vec<&str> = responses
        .iter()
        .filter_map(|r| {
            Some(
                r.result
                    .as_ref()?
                    .execution_metadata
                    .as_ref()?
                    .worker
                    .as_str(),
            )
        })
        .collect();
    workers.sort_unstable();
    workers.dedup();
    latencies.sort();
    println!(
        "{} trivial actions in {:.3} s, {} in flight, on workers {:?}",
        responses.len(),
        elapsed.as_secs_f64(),
        o.concurrency,
        workers
    );
    println!(
        "RESULT e2e_trivial_actions_per_s {:.0} actions/s",
        responses.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "RESULT e2e_trivial_latency_p50 {:.2} ms",
        ms(quantile(&latencies, 0.5))
    );
    println!(
        "RESULT e2e_trivial_latency_p99 {:.2} ms",
        ms(quantile(&latencies, 0.99))
    );
    // Where a worker spends one action (medians): the sandbox run is bubblewrap + /bin/true.
    type Field = fn(&reapi::ExecutedActionMetadata) -> &Option<Timestamp>;
    let span = |a: Field, b: Field| median_ms(&responses, move |m| secs(b(m)) - secs(a(m)));
    println!(
        "RESULT worker_median_queued_to_worker_start {:.2} ms",
        span(|m| &m.queued_timestamp, |m| &m.worker_start_timestamp)
    );
    println!(
        "RESULT worker_median_input_fetch {:.2} ms",
        span(
            |m| &m.input_fetch_start_timestamp,
            |m| &m.input_fetch_completed_timestamp
        )
    );
    println!(
        "RESULT worker_median_sandbox_run {:.2} ms",
        span(
            |m| &m.execution_start_timestamp,
            |m| &m.execution_completed_timestamp
        )
    );
    println!(
        "RESULT worker_median_output_upload {:.2} ms",
        span(
            |m| &m.output_upload_start_timestamp,
            |m| &m.output_upload_completed_timestamp
        )
    );
    println!(
        "RESULT worker_median_total {:.2} ms",
        span(
            |m| &m.worker_start_timestamp,
            |m| &m.worker_completed_timestamp
        )
    );
}

async fn cache_hit(o: &Options) {
    let store = connect(&o.url).await;
    let exec = ExecutionClient::new(store.channel());
    let salt = format!("cache-hit-{}", uuid::Uuid::new_v4().simple());
    let digest = client::upload_action(&store, &["/bin/true"], &salt).await;
    // One real execution puts the result in the action cache.
    let first = client::execute(exec.clone(), &digest, false).await;
    assert_eq!(client::code(&first), tonic::Code::Ok, "{:?}", first.status);
    assert!(!first.cached_result, "the fresh action was already cached");
    let mut latencies = Vec::with_capacity(o.actions);
    for i in 0..o.warmup + o.actions {
        let t = Instant::now();
        let r = client::execute(exec.clone(), &digest, false).await;
        let elapsed = t.elapsed();
        assert!(
            r.cached_result,
            "Execute {i} of the cached action was not a cache hit"
        );
        if i >= o.warmup {
            latencies.push(elapsed);
        }
    }
    latencies.sort();
    println!(
        "{} sequential Executes of a cached action (after {} warm-up calls)",
        latencies.len(),
        o.warmup
    );
    for (name, p) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        println!(
            "RESULT cache_hit_execute_{name} {:.3} ms",
            ms(quantile(&latencies, p))
        );
    }
    println!(
        "RESULT cache_hit_execute_max {:.3} ms",
        ms(*latencies.last().expect("latencies"))
    );
}

fn main() {
    let o = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        match o.mode.as_str() {
            "throughput" => throughput(&o).await,
            "cache_hit" => cache_hit(&o).await,
            m => panic!("unknown mode {m:?}: throughput or cache_hit"),
        }
    });
}
