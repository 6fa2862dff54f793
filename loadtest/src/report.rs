//! The report of a run: a human table (throughput and latency per kind of request, errors by
//! status, the generator's CPU) and the one-line JSON object that ends `--json` output.

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use crate::cpu::SATURATION;
use crate::options::Config;
use crate::scenarios::Measured;
use crate::stats::{KindStats, Quantiles};

fn per_second(n: u64, secs: f64) -> f64 {
    n as f64 / secs.max(1e-9)
}

fn mb(bytes_per_s: f64) -> f64 {
    bytes_per_s / 1e6
}

/// One line of the table.
fn row(out: &mut String, name: &str, k: &KindStats, secs: f64) {
    let q = Quantiles::of(&k.latency_us);
    let _ = writeln!(
        out,
        "{name:<22} {:>9} {:>10.1} {:>11.1} {:>9.2} {:>8.3} {:>8.3} {:>8.3} {:>9.3} {:>7}",
        k.ops,
        per_second(k.ops, secs),
        per_second(k.blobs, secs),
        mb(per_second(k.bytes, secs)),
        q.p50,
        q.p90,
        q.p99,
        q.max,
        k.failed
    );
}

/// The generator's CPU warning, if it saturated.
pub fn saturation_warning(m: &Measured) -> Option<String> {
    let c = &m.cpu;
    c.saturated.then(|| {
        format!(
            "warning: the load generator used {:.0}% of the {} core(s) it may use (above {:.0}%): \
             these figures may measure farm-loadtest, not the target; give it more cores \
             (--threads) or run it on another machine",
            c.fraction * 100.0,
            c.cores_allowed,
            SATURATION * 100.0
        )
    })
}

/// The human report.
pub fn table(config: &Config, m: &Measured) -> String {
    let secs = m.wall.as_secs_f64();
    let r = &m.recorder;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "farm-loadtest {} against {} (instance {:?}, {} in flight, {} connection(s), {} thread(s), seed {})",
        config.scenario.name(),
        config.target,
        config.instance,
        config.concurrency,
        config.connections,
        config.threads,
        config.seed
    );
    let _ = writeln!(
        out,
        "{} requests in {:.2} s, {} errors{}",
        r.requests(),
        secs,
        r.error_count(),
        if r.abandoned > 0 {
            format!(", {} abandoned at the hard stop", r.abandoned)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "\n{:<22} {:>9} {:>10} {:>11} {:>9} {:>8} {:>8} {:>8} {:>9} {:>7}",
        "kind", "ok", "ops/s", "blobs/s", "MB/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "failed"
    );
    for (name, k) in &r.kinds {
        let label = if k.primary {
            name.to_string()
        } else {
            format!("({name})")
        };
        row(&mut out, &label, k, secs);
    }
    row(&mut out, "total", &r.total(), secs);
    if r.errors.is_empty() {
        let _ = writeln!(out, "\nerrors: none");
    } else {
        let list: Vec<String> = r.errors.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let _ = writeln!(out, "\nerrors: {}", list.join(", "));
        for (code, message) in &r.error_examples {
            let _ = writeln!(out, "  first {code}: {message}");
        }
    }
    if !r.counters.is_empty() {
        let list: Vec<String> = r.counters.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let _ = writeln!(out, "counters: {}", list.join(", "));
    }
    for note in &m.notes {
        let _ = writeln!(out, "{note}");
    }
    let c = &m.cpu;
    let _ = writeln!(
        out,
        "generator CPU: {:.2} cores of {} ({:.0}%){}",
        c.cores,
        c.cores_allowed,
        c.fraction * 100.0,
        c.machine_busy
            .map(|b| format!("; whole machine {:.0}% busy", b * 100.0))
            .unwrap_or_default()
    );
    if let Some(w) = saturation_warning(m) {
        let _ = writeln!(out, "{w}");
    }
    out
}

/// The JSON object: the fields issue 5 names, then the rest.
pub fn json(config: &Config, m: &Measured) -> Value {
    let secs = m.wall.as_secs_f64();
    let r = &m.recorder;
    let total = r.total();
    let mut kinds = Map::new();
    for (name, k) in &r.kinds {
        kinds.insert(
            name.to_string(),
            json!({
                "primary": k.primary,
                "ops": k.ops,
                "failed": k.failed,
                "ops_per_s": per_second(k.ops, secs),
                "blobs": k.blobs,
                "blobs_per_s": per_second(k.blobs, secs),
                "bytes": k.bytes,
                "bytes_per_s": per_second(k.bytes, secs),
                "latency_ms": Quantiles::of(&k.latency_us),
            }),
        );
    }
    let mut v = json!({
        "ops_per_s": per_second(total.ops, secs),
        "bytes_per_s": per_second(total.bytes, secs),
        "latency_ms": Quantiles::of(&total.latency_us),
        "errors": r.errors,
        "error_examples": r.error_examples,
        "scenario": config.scenario.name(),
        "target": config.target,
        "instance": config.instance,
        "seed": config.seed,
        "concurrency": config.concurrency,
        "connections": config.connections,
        "threads": config.threads,
        "requests": r.requests(),
        "ops": total.ops,
        "blobs": total.blobs,
        "blobs_per_s": per_second(total.blobs, secs),
        "bytes": total.bytes,
        "wall_s": secs,
        "abandoned": r.abandoned,
        "kinds": kinds,
        "counters": r.counters,
        "generator_cpu": m.cpu,
    });
    if let Value::Object(map) = &mut v {
        for (k, x) in &m.extra {
            map.insert(k.clone(), x.clone());
        }
    }
    v
}
