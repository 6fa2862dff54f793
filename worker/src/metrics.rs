//! Prometheus metrics of the worker (`farm_worker_*`), in the process-wide registry
//! ([`cas::metrics::registry`]) that `farm-worker --metrics-listen` serves.

use std::sync::LazyLock;

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    ExecuteResponse, ExecutedActionMetadata,
};
use bazel_remote_apis::google::protobuf::Timestamp;
use prometheus::{
    register_histogram_vec_with_registry, register_int_counter_vec_with_registry,
    register_int_counter_with_registry, register_int_gauge_with_registry, HistogramVec, IntCounter,
    IntCounterVec, IntGauge,
};

use cas::metrics::registry;

/// Seconds, from 1 ms to 2 h: staging is milliseconds, actions run for hours.
fn buckets() -> Vec<f64> {
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
    ]
}

/// Finished actions by outcome: `ok`, `nonzero_exit`, or the status code name of a failure.
pub static ACTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec_with_registry!(
        "farm_worker_actions_total",
        "Actions this worker finished, by outcome",
        &["outcome"],
        registry()
    )
    .expect("metric registers once")
});

/// Time per stage of an action: `fetch_inputs`, `execute`, `upload_outputs`.
pub static STAGE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec_with_registry!(
        "farm_worker_action_stage_seconds",
        "Time actions spent staging inputs, executing and uploading outputs",
        &["stage"],
        buckets(),
        registry()
    )
    .expect("metric registers once")
});

/// Actions running now.
pub static RUNNING: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge_with_registry!(
        "farm_worker_running_actions",
        "Actions this worker is running",
        registry()
    )
    .expect("metric registers once")
});

/// Bytes held by the local blob cache.
pub static CACHE_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge_with_registry!(
        "farm_worker_cache_bytes",
        "Bytes of blobs in the worker's local cache",
        registry()
    )
    .expect("metric registers once")
});

/// Blobs fetched from the CAS into the local cache (misses).
pub static CACHE_FETCHES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter_with_registry!(
        "farm_worker_cache_fetches_total",
        "Input blobs fetched from the CAS because the local cache lacked them",
        registry()
    )
    .expect("metric registers once")
});

/// Blobs evicted from the local cache.
pub static CACHE_EVICTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter_with_registry!(
        "farm_worker_cache_evictions_total",
        "Blobs evicted from the worker's local cache",
        registry()
    )
    .expect("metric registers once")
});

/// Registers every metric, so `/metrics` lists them before the first action.
pub fn init() {
    for outcome in ["ok", "nonzero_exit"] {
        ACTIONS.with_label_values(&[outcome]);
    }
    for stage in ["fetch_inputs", "execute", "upload_outputs"] {
        STAGE_SECONDS.with_label_values(&[stage]);
    }
    LazyLock::force(&RUNNING);
    LazyLock::force(&CACHE_BYTES);
    LazyLock::force(&CACHE_FETCHES);
    LazyLock::force(&CACHE_EVICTIONS);
}

fn seconds(from: Option<&Timestamp>, to: Option<&Timestamp>) -> Option<f64> {
    let (a, b) = (from?, to?);
    let s = (b.seconds - a.seconds) as f64 + f64::from(b.nanos - a.nanos) / 1e9;
    (s >= 0.0).then_some(s)
}

/// Counts a finished action and its stage times.
pub fn record(response: &ExecuteResponse) {
    let code = response.status.as_ref().map_or(0, |s| s.code);
    let outcome = if code != 0 {
        cas::service::code_name(tonic::Code::from(code))
    } else if response.result.as_ref().is_some_and(|r| r.exit_code != 0) {
        "nonzero_exit"
    } else {
        "ok"
    };
    ACTIONS.with_label_values(&[outcome]).inc();
    let meta: Option<&ExecutedActionMetadata> = response
        .result
        .as_ref()
        .and_then(|r| r.execution_metadata.as_ref());
    if let Some(m) = meta {
        for (stage, from, to) in [
            (
                "fetch_inputs",
                &m.input_fetch_start_timestamp,
                &m.input_fetch_completed_timestamp,
            ),
            (
                "execute",
                &m.execution_start_timestamp,
                &m.execution_completed_timestamp,
            ),
            (
                "upload_outputs",
                &m.output_upload_start_timestamp,
                &m.output_upload_completed_timestamp,
            ),
        ] {
            if let Some(s) = seconds(from.as_ref(), to.as_ref()) {
                STAGE_SECONDS.with_label_values(&[stage]).observe(s);
            }
        }
    }
}
