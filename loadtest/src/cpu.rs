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

fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct we pass; a zeroed rusage is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer has no other preconditions.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// (busy, total) jiffies from the `cpu` line of `/proc/stat`.
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_proc_stat(&stat)
}

fn parse_proc_stat(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

impl Sample {
    pub fn now() -> Self {
        Sample {
            at: Instant::now(),
            process: process_cpu(),
            machine: machine_jiffies(),
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
    fn proc_stat_busy_excludes_idle_and_iowait() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(parse_proc_stat(stat), Some((150, 1000)));
        assert_eq!(parse_proc_stat("nothing"), None);
    }

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
