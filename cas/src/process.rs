//! Process plumbing every farm binary shares at its edge: logs to stderr, the shutdown signal,
//! the gRPC server builder tuned for bulk blob traffic, and the CPU counters load generators
//! and benchmarks report beside their figures.

use std::time::Duration;

/// Logs to stderr at the level in `RUST_LOG` (default `info`), coloured only on a terminal.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Asks the allocator to keep memory the process frees for its next allocations instead of
/// handing it back to the kernel at once (glibc trims the top of its heaps beyond 128 KiB–
/// 64 MiB, and serves allocations over its mmap threshold with fresh mappings).
///
/// A storage server allocates and frees megabyte buffers all the time (gRPC messages, blob
/// chunks). Memory handed back and faulted in again costs a page fault per 4 KiB, and on a
/// virtual machine whose free memory returns to the hypervisor each of those goes through the
/// host: on the VM BENCHMARKS.md was measured on, the gRPC decode copy into such pages was a
/// large part of a 256 MiB upload's time. The cost is that the resident size stays at the
/// high-water mark of what was in use at once.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; it is called before any other
        // thread of ours allocates concurrently (at start-up) and is thread-safe anyway.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
        }
    }
}

/// A tonic server with large HTTP/2 windows, so one stream can fill a fast link and batches of
/// megabytes are not throttled by the 64 KiB default, and keep-alives that notice dead peers.
pub fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .initial_stream_window_size(Some(16 << 20))
        .initial_connection_window_size(Some(64 << 20))
        .max_frame_size(Some((1 << 24) - 1))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// User + system CPU time of this process so far (every thread; `getrusage(RUSAGE_SELF)`), or
/// zero if the kernel refuses to say.
pub fn process_cpu_time() -> Duration {
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

/// The whole machine's (busy, total) CPU jiffies so far, from the `cpu` line of `/proc/stat`
/// (`None` where it is not readable): the busy share between two readings is
/// `Δbusy / Δtotal`, idle and iowait counting as not busy.
pub fn machine_jiffies() -> Option<(u64, u64)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_busy_excludes_idle_and_iowait() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(parse_proc_stat(stat), Some((150, 1000)));
        assert_eq!(parse_proc_stat("nothing"), None);
    }
}
