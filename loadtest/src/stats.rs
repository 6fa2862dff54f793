//! What a run measured: per kind of request, counts, blobs, bytes and an HDR latency histogram;
//! errors by gRPC status code name; scenario counters. Each load task owns a [`Recorder`]
//! (no shared state on the hot path); they are merged when the run ends.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::budget::Outcome;

/// A kind of request. Primary kinds are what the scenario measures; the others (uploads an
/// Execute needs, for example) are shown but left out of the totals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    pub name: &'static str,
    pub primary: bool,
}

impl Kind {
    pub const fn primary(name: &'static str) -> Self {
        Kind {
            name,
            primary: true,
        }
    }

    pub const fn auxiliary(name: &'static str) -> Self {
        Kind {
            name,
            primary: false,
        }
    }
}

/// Latency histogram in microseconds, 1 µs to 1 h, 3 significant digits.
fn histogram() -> Histogram<u64> {
    // Valid constant bounds: cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"))
}

/// Counts of one kind of request.
#[derive(Clone, Debug)]
pub struct KindStats {
    pub primary: bool,
    /// Requests that succeeded.
    pub ops: u64,
    /// Blobs moved by them (batch requests carry many).
    pub blobs: u64,
    /// Payload bytes moved by them.
    pub bytes: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Latency of successful requests, µs.
    pub latency_us: Histogram<u64>,
}

impl KindStats {
    fn new(primary: bool) -> Self {
        KindStats {
            primary,
            ops: 0,
            blobs: 0,
            bytes: 0,
            failed: 0,
            latency_us: histogram(),
        }
    }

    fn merge(&mut self, o: &KindStats) {
        self.ops += o.ops;
        self.blobs += o.blobs;
        self.bytes += o.bytes;
        self.failed += o.failed;
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency_us.add(&o.latency_us);
    }
}

/// The measurements of one task, or of a whole run after [`Recorder::merge`].
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    pub kinds: BTreeMap<&'static str, KindStats>,
    /// Failed requests and failed blobs inside batch requests, by status code name.
    pub errors: BTreeMap<String, u64>,
    /// Requests in flight at the hard stop.
    pub abandoned: u64,
    /// Scenario counters (hits, misses, cache answers, ...).
    pub counters: BTreeMap<&'static str, u64>,
    /// The first message seen for each error code.
    pub error_examples: BTreeMap<String, String>,
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    fn kind(&mut self, kind: Kind) -> &mut KindStats {
        self.kinds
            .entry(kind.name)
            .or_insert_with(|| KindStats::new(kind.primary))
    }

    /// A successful request.
    pub fn ok(&mut self, kind: Kind, latency: Duration, blobs: u64, bytes: u64) {
        let k = self.kind(kind);
        k.ops += 1;
        k.blobs += blobs;
        k.bytes += bytes;
        k.latency_us.saturating_record(
            u64::try_from(latency.as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
        );
    }

    /// A failed request, by status code name.
    pub fn failed(&mut self, kind: Kind, code: &str) {
        self.kind(kind).failed += 1;
        *self.errors.entry(code.to_string()).or_default() += 1;
    }

    /// [`Recorder::failed`], keeping `message` if it is the first of its code.
    pub fn failed_with(&mut self, kind: Kind, code: &str, message: &str) {
        self.failed(kind, code);
        if !self.error_examples.contains_key(code) {
            let short: String = message.chars().take(300).collect();
            self.error_examples.insert(code.to_string(), short);
        }
    }

    /// Failures inside a request that itself succeeded (one per blob of a batch).
    pub fn item_errors(&mut self, code: &str, n: u64) {
        if n > 0 {
            *self.errors.entry(code.to_string()).or_default() += n;
        }
    }

    pub fn count(&mut self, counter: &'static str, n: u64) {
        *self.counters.entry(counter).or_default() += n;
    }

    /// The value of a guarded gRPC call, recording its failure (by status code, timeouts as
    /// `DEADLINE_EXCEEDED`) or abandonment otherwise.
    pub fn settle<T>(
        &mut self,
        kind: Kind,
        outcome: Outcome<Result<T, tonic::Status>>,
    ) -> Option<T> {
        match outcome {
            Outcome::Done(Ok(v)) => Some(v),
            Outcome::Done(Err(status)) => {
                self.failed_with(
                    kind,
                    cas::service::code_name(status.code()),
                    status.message(),
                );
                None
            }
            Outcome::TimedOut => {
                self.failed(kind, "DEADLINE_EXCEEDED");
                None
            }
            Outcome::Abandoned => {
                self.abandoned += 1;
                None
            }
        }
    }

    /// [`Recorder::settle`] and, on success, [`Recorder::ok`] with `blobs` and `bytes` computed
    /// from the answer.
    pub fn settle_ok<T>(
        &mut self,
        kind: Kind,
        start: Instant,
        outcome: Outcome<Result<T, tonic::Status>>,
        size: impl FnOnce(&T) -> (u64, u64),
    ) -> Option<T> {
        let latency = start.elapsed();
        let v = self.settle(kind, outcome)?;
        let (blobs, bytes) = size(&v);
        self.ok(kind, latency, blobs, bytes);
        Some(v)
    }

    pub fn merge(&mut self, o: &Recorder) {
        for (name, k) in &o.kinds {
            self.kinds
                .entry(name)
                .or_insert_with(|| KindStats::new(k.primary))
                .merge(k);
        }
        for (code, n) in &o.errors {
            *self.errors.entry(code.clone()).or_default() += n;
        }
        for (c, n) in &o.counters {
            *self.counters.entry(c).or_default() += n;
        }
        for (code, m) in &o.error_examples {
            self.error_examples
                .entry(code.clone())
                .or_insert_with(|| m.clone());
        }
        self.abandoned += o.abandoned;
    }

    /// Every primary kind together.
    pub fn total(&self) -> KindStats {
        let mut t = KindStats::new(true);
        for k in self.kinds.values().filter(|k| k.primary) {
            t.merge(k);
        }
        t
    }

    /// Requests of the primary kinds sent (succeeded, failed or abandoned).
    pub fn requests(&self) -> u64 {
        let t = self.total();
        t.ops + t.failed + self.abandoned
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Latency quantiles of a histogram in milliseconds (zeros when it is empty).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Quantiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Quantiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Quantiles {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Kind = Kind::primary("a");
    const B: Kind = Kind::auxiliary("b");

    #[test]
    fn merges_and_totals_primary_kinds_only() {
        let mut r1 = Recorder::new();
        r1.ok(A, Duration::from_millis(1), 10, 100);
        r1.ok(B, Duration::from_millis(50), 1, 1000);
        r1.failed(A, "NOT_FOUND");
        let mut r2 = Recorder::new();
        r2.ok(A, Duration::from_millis(3), 10, 100);
        r2.item_errors("NOT_FOUND", 2);
        r2.count("hits", 4);
        r1.merge(&r2);
        let t = r1.total();
        assert_eq!((t.ops, t.blobs, t.bytes, t.failed), (2, 20, 200, 1));
        assert_eq!(r1.errors["NOT_FOUND"], 3);
        assert_eq!(r1.counters["hits"], 4);
        assert_eq!(r1.requests(), 3);
        let q = Quantiles::of(&t.latency_us);
        assert!(
            (q.p50 - 1.0).abs() < 0.01 && (q.max - 3.0).abs() < 0.01,
            "{q:?}"
        );
    }

    #[test]
    fn settle_names_the_status() {
        let mut r = Recorder::new();
        let v: Option<()> = r.settle(A, Outcome::Done(Err(tonic::Status::unavailable("down"))));
        assert!(v.is_none());
        let _: Option<()> = r.settle(A, Outcome::TimedOut);
        let _: Option<()> = r.settle(A, Outcome::Abandoned);
        assert_eq!(r.errors["UNAVAILABLE"], 1);
        assert_eq!(r.errors["DEADLINE_EXCEEDED"], 1);
        assert_eq!(r.abandoned, 1);
    }
}
