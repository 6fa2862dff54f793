//! The load generator's own CPU use (`getrusage(RUSAGE_SELF)`: user + system time of every
//! thread) and the whole machine's (`/proc/stat`), over the measured window, so a report can
//! say when the generator rather than the target was the bottleneck.

use std::time::{Duration, Instant};

/// Above this fraction of the cores the generator may use, its figures are suspect.
pub const SATURATION: f64 = 0.9;
/// Windows shorter than this are too short to judge (thread start-up dominates them).
const MIN_WINDOW: Duration = Duration::from_millis(250);

/// CPU counters at one instant.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    at: Instant,
    /// User + system CPU time of this process.
    process: Duration,
    /// Busy and total jiffies of the machine, if `/proc/stat` is readable.
    machine: Option<(u64, u64)>,
}

/// CPU use between two samples.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Usage {
    /// Cores' worth of CPU the generator used (user + system over wall time).
    pub cores: f64,
    /// Cores the generator may use (its threads, at most the usable cores).
    pub cores_allowed: usize,
    /// `cores / cores_allowed`.
    pub fraction: f64,
    /// `fraction` above [`SATURATION`] over a window long enough to tell.
    pub saturated: bool,
    /// Fraction of the whole machine busy meanwhile (all processes), if known.
    pub machine_busy: Option<f64>,
}

impl Sample {
    pub fn now() -> Self {
        Sample {
            at: Instant::now(),
            process: cas::process::process_cpu_time(),
            machine: cas::process::machine_jiffies(),
        }
    }

    /// Use from `self` to `later`, with `cores_allowed` cores for the generator.
    pub fn until(&self, later: &Sample, cores_allowed: usize) -> Usage {
        let window = later.at.duration_since(self.at);
        let wall = window.as_secs_f64().max(1e-9);
        let cpu = later.process.saturating_sub(self.process).as_secs_f64();
        let cores = cpu / wall;
        let allowed = cores_allowed.max(1);
        let fraction = cores / allowed as f64;
        let machine_busy = match (self.machine, later.machine) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some((b1.saturating_sub(b0)) as f64 / (t1 - t0) as f64)
            }
            _ => None,
        };
        Usage {
            cores,
            cores_allowed: allowed,
            fraction,
            saturated: fraction > SATURATION && window >= MIN_WINDOW,
            machine_busy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_work_shows_up_as_process_cpu() {
        let start = Sample::now();
        let t = Instant::now();
        let mut x = 1u64;
        while t.elapsed() < Duration::from_millis(200) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let u = start.until(&Sample::now(), 1);
        // Loose: other processes may share the cores.
        assert!(u.cores > 0.05, "{u:?}");
    }
}
