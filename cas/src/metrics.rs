//! Prometheus metrics of the storage layer, under the farm-wide `farm_` naming scheme.
//!
//! Metrics live in one process-wide registry ([`registry`]) that binaries serve on `/metrics`.

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec_with_registry, register_int_counter_vec_with_registry, HistogramVec,
    IntCounterVec, Registry,
};

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// The registry every farm metric is registered in.
pub fn registry() -> &'static Registry {
    &REGISTRY
}

/// gRPC requests handled, by service method and status code.
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec_with_registry!(
        "farm_cas_requests_total",
        "REAPI storage requests handled, by method and gRPC status code",
        &["method", "code"],
        registry()
    )
    .expect("metric registers once")
});

/// Latency of gRPC requests, by method.
pub static REQUEST_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec_with_registry!(
        "farm_cas_request_duration_seconds",
        "Latency of REAPI storage requests, by method",
        &["method"],
        vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0, 30.0, 60.0
        ],
        registry()
    )
    .expect("metric registers once")
});

/// Blob bytes moved, by direction ("read" / "written").
pub static BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec_with_registry!(
        "farm_cas_bytes_total",
        "Blob bytes read from or written to the CAS over the wire",
        &["direction"],
        registry()
    )
    .expect("metric registers once")
});

/// Cache lookups by kind ("cas" / "action_cache") and result ("hit" / "miss").
pub static LOOKUPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec_with_registry!(
        "farm_cas_lookups_total",
        "Blob and action-result lookups, by cache and result",
        &["cache", "result"],
        registry()
    )
    .expect("metric registers once")
});

static EVICTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec_with_registry!(
        "farm_cas_evictions_total",
        "Blobs evicted to stay under a store's byte budget, by store kind",
        &["store"],
        registry()
    )
    .expect("metric registers once")
});

static EVICTED_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec_with_registry!(
        "farm_cas_evicted_bytes_total",
        "Bytes evicted to stay under a store's byte budget, by store kind",
        &["store"],
        registry()
    )
    .expect("metric registers once")
});

/// Counts one eviction of `bytes` from a store of kind `store`.
pub fn record_eviction(store: &str, bytes: u64) {
    EVICTIONS.with_label_values(&[store]).inc();
    EVICTED_BYTES.with_label_values(&[store]).inc_by(bytes);
}

/// Counts a lookup hit or miss.
pub fn record_lookup(cache: &str, hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    LOOKUPS.with_label_values(&[cache, result]).inc();
}

/// Makes every metric exist (at zero, with its known label values) so scrapes show the full
/// documented set before traffic arrives; Prometheus' encoder omits label-less vectors.
pub fn init() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REQUEST_SECONDS);
    for direction in ["read", "written"] {
        BYTES.with_label_values(&[direction]);
    }
    for cache in ["cas", "action_cache"] {
        for result in ["hit", "miss"] {
            LOOKUPS.with_label_values(&[cache, result]);
        }
    }
    for store in ["memory", "filesystem"] {
        EVICTIONS.with_label_values(&[store]);
        EVICTED_BYTES.with_label_values(&[store]);
    }
}

/// The text exposition of every registered metric.
pub fn render() -> String {
    let families = registry().gather();
    prometheus::TextEncoder::new()
        .encode_to_string(&families)
        .unwrap_or_else(|e| format!("# error encoding metrics: {e}\n"))
}
