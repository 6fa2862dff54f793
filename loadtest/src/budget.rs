//! When a run stops: a count of requests handed out exactly once each, a deadline after which
//! no request starts, and a hard stop a grace period later that abandons requests still in
//! flight, so a run always ends by itself.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::options::StopAfter;

/// How long requests in flight at the deadline may still finish.
pub const GRACE: Duration = Duration::from_secs(5);

/// The stop conditions of one run.
#[derive(Debug)]
pub struct Budget {
    remaining: Option<AtomicU64>,
    deadline: Option<Instant>,
    /// Set at the deadline (or by [`Budget::stop`]): no new request starts.
    stopped: AtomicBool,
    /// Cancelled [`GRACE`] after the deadline: requests in flight are abandoned.
    hard: CancellationToken,
    /// Per-request timeout.
    timeout: Duration,
}

/// The end of one guarded request.
#[derive(Debug)]
pub enum Outcome<T> {
    Done(T),
    /// The request took longer than the per-request timeout.
    TimedOut,
    /// The run's hard stop came first.
    Abandoned,
}

impl Budget {
    /// A budget starting now; spawns the timer that enforces the deadline.
    pub fn start(stop: StopAfter, timeout: Duration) -> Arc<Self> {
        let budget = Arc::new(Budget {
            remaining: stop.requests.map(AtomicU64::new),
            deadline: stop.duration.map(|d| Instant::now() + d),
            stopped: AtomicBool::new(false),
            hard: CancellationToken::new(),
            timeout,
        });
        if let Some(d) = stop.duration {
            let weak = Arc::downgrade(&budget);
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                let Some(b) = weak.upgrade() else { return };
                b.stopped.store(true, Ordering::SeqCst);
                let hard = b.hard.clone();
                drop(b);
                tokio::time::sleep(GRACE).await;
                hard.cancel();
            });
        }
        budget
    }

    /// Claims one request; false once the count is used up or the deadline has passed.
    pub fn take(&self) -> bool {
        if self.is_stopped() {
            return false;
        }
        match &self.remaining {
            None => true,
            Some(n) => n
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                .is_ok(),
        }
    }

    /// Hands back a request claimed with [`Budget::take`] but never sent.
    pub fn give_back(&self) {
        if let Some(n) = &self.remaining {
            n.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// True once no new request may start.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Stops the run early (no new requests; those in flight finish).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// True when this run is bounded by a count that is now used up.
    pub fn requests_exhausted(&self) -> bool {
        self.remaining
            .as_ref()
            .is_some_and(|n| n.load(Ordering::SeqCst) == 0)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `fut` under the per-request timeout and the hard stop.
    pub async fn guard<T>(&self, fut: impl Future<Output = T>) -> Outcome<T> {
        self.guard_for(self.timeout, fut).await
    }

    /// [`Budget::guard`] with another timeout (setup steps that do many requests).
    pub async fn guard_for<T>(
        &self,
        timeout: Duration,
        fut: impl Future<Output = T>,
    ) -> Outcome<T> {
        tokio::select! {
            r = tokio::time::timeout(timeout, fut) => match r {
                Ok(v) => Outcome::Done(v),
                Err(_) => Outcome::TimedOut,
            },
            _ = self.hard.cancelled() => Outcome::Abandoned,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_handed_out_exactly_once() {
        let b = Budget::start(
            StopAfter {
                requests: Some(3),
                duration: None,
            },
            Duration::from_secs(1),
        );
        assert!(b.take() && b.take() && b.take());
        assert!(!b.take());
        assert!(b.requests_exhausted());
        b.give_back();
        assert!(b.take());
        assert!(!b.take());
    }

    #[tokio::test]
    async fn the_deadline_stops_new_requests() {
        let b = Budget::start(
            StopAfter {
                requests: None,
                duration: Some(Duration::from_millis(50)),
            },
            Duration::from_secs(1),
        );
        assert!(b.take());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(!b.take());
    }

    #[tokio::test]
    async fn slow_requests_time_out() {
        let b = Budget::start(
            StopAfter {
                requests: None,
                duration: None,
            },
            Duration::from_millis(20),
        );
        let r = b.guard(tokio::time::sleep(Duration::from_secs(5))).await;
        assert!(matches!(r, Outcome::TimedOut));
    }
}
