//! Prometheus metrics of the scheduler (`farm_scheduler_*`), registered in the process-wide
//! registry [`cas::metrics::registry`] so one `/metrics` endpoint serves storage and scheduling.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Instant;

use prometheus::{
    register_histogram_vec_with_registry, register_histogram_with_registry,
    register_int_counter_vec_with_registry, register_int_counter_with_registry,
    register_int_gauge_vec_with_registry, register_int_gauge_with_registry, Histogram,
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

use cas::metrics::registry;

/// Latency buckets from 100 µs to 2 h: RPCs are sub-millisecond, actions run for hours.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
    ]
}

/// Actions waiting for a worker, by platform requirement set (`ISA=x86-64,OSFamily=linux`).
pub static QUEUE_DEPTH: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec_with_registry!(
        "farm_scheduler_queue_depth",
        "Actions queued for a worker, by the platform properties they require",
        &["platform"],
        registry()
    )
    .expect("metric registers once")
});

/// Connected workers, by the ISA they offer (`none` when they offer no ISA property).
pub static WORKERS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec_with_registry!(
        "farm_scheduler_workers",
        "Connected workers, by offered ISA",
        &["isa"],
        registry()
    )
    .expect("metric registers once")
});

/// Execution slots of connected workers, by state (`free` / `busy`).
pub static SLOTS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec_with_registry!(
        "farm_scheduler_slots",
        "Execution slots of connected workers, by state",
        &["state"],
        registry()
    )
    .expect("metric registers once")
});

/// Operations being executed by a worker now.
pub static EXECUTING: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge_with_registry!(
        "farm_scheduler_executing",
        "Operations leased to a worker",
        registry()
    )
    .expect("metric registers once")
});

/// Leases sent to workers.
pub static DISPATCHED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter_with_registry!(
        "farm_scheduler_dispatched_total",
        "Actions leased to workers",
        registry()
    )
    .expect("metric registers once")
});

/// Finished operations by outcome: `cached`, `ok` (exit code 0), `nonzero_exit`, `failed`,
/// `cancelled`, `timed_out`, `lost` (retries exhausted), `unsatisfiable`.
pub static OPERATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec_with_registry!(
        "farm_scheduler_operations_total",
        "Finished operations, by outcome",
        &["outcome"],
        registry()
    )
    .expect("metric registers once")
});

/// Execute calls answered by joining an identical in-flight operation.
pub static MERGED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter_with_registry!(
        "farm_scheduler_merged_total",
        "Execute requests merged into an identical in-flight operation",
        registry()
    )
    .expect("metric registers once")
});

/// Actions put back in the queue, by reason (`disconnected`, `silent`, `unlisted`,
/// `restart`).
pub static REQUEUED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec_with_registry!(
        "farm_scheduler_requeued_total",
        "Actions requeued after losing their worker, by reason",
        &["reason"],
        registry()
    )
    .expect("metric registers once")
});

/// Worker results dropped because their lease was no longer held.
pub static STALE_RESULTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter_with_registry!(
        "farm_scheduler_stale_results_total",
        "Results dropped because their lease had been requeued, cancelled or timed out",
        registry()
    )
    .expect("metric registers once")
});

/// Time from Execute accepting an action to its operation finishing (executed actions only).
pub static ACTION_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram_with_registry!(
        "farm_scheduler_action_duration_seconds",
        "Time from Execute accepting an action to its result (queueing plus execution)",
        latency_buckets(),
        registry()
    )
    .expect("metric registers once")
});

/// Time actions wait in the queue before their (first) lease.
pub static QUEUE_WAIT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram_with_registry!(
        "farm_scheduler_queue_wait_seconds",
        "Time from queueing an action to leasing it to a worker",
        latency_buckets(),
        registry()
    )
    .expect("metric registers once")
});

/// gRPC requests handled by the scheduler's own services, by method and status code.
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec_with_registry!(
        "farm_scheduler_requests_total",
        "Execution, Operations and worker-session requests, by method and gRPC status code",
        &["method", "code"],
        registry()
    )
    .expect("metric registers once")
});

/// Latency of the scheduler's own RPCs (for streams: until the first answer), by method.
pub static REQUEST_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec_with_registry!(
        "farm_scheduler_request_duration_seconds",
        "Latency of scheduler RPCs (streaming ones: until the stream is returned), by method",
        &["method"],
        latency_buckets(),
        registry()
    )
    .expect("metric registers once")
});

/// Counts one finished operation.
pub fn record_outcome(outcome: &str) {
    OPERATIONS.with_label_values(&[outcome]).inc();
}

/// Runs one RPC body, recording its status code and latency under `method`.
pub async fn observe<T>(
    method: &'static str,
    body: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    let start = Instant::now();
    let result = body.await;
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    REQUEST_SECONDS
        .with_label_values(&[method])
        .observe(start.elapsed().as_secs_f64());
    REQUESTS
        .with_label_values(&[method, cas::service::code_name(code)])
        .inc();
    result
}

/// Makes every scheduler metric exist (at zero) so scrapes show the full set before traffic.
pub fn init() {
    cas::metrics::init();
    LazyLock::force(&QUEUE_DEPTH);
    LazyLock::force(&WORKERS);
    SLOTS.with_label_values(&["free"]);
    SLOTS.with_label_values(&["busy"]);
    LazyLock::force(&EXECUTING);
    LazyLock::force(&DISPATCHED);
    LazyLock::force(&OPERATIONS);
    LazyLock::force(&MERGED);
    LazyLock::force(&REQUEUED);
    LazyLock::force(&STALE_RESULTS);
    LazyLock::force(&ACTION_SECONDS);
    LazyLock::force(&QUEUE_WAIT_SECONDS);
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REQUEST_SECONDS);
}
