//! [`SchedulerConfig`]: the scheduler's timings and limits (typed; the binary parses flags).

use std::time::Duration;

/// Timings and limits of one scheduler.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// How often workers must send a KeepAlive (told to them in `Welcome`).
    pub keep_alive_interval: Duration,
    /// A worker silent for this long loses its leases (they are requeued) and its session is
    /// closed; after a restart, leases whose holder has not reconnected within it are requeued.
    pub lease_timeout: Duration,
    /// How many times an action lost with its worker (stream dropped, silence, lease missing
    /// from a KeepAlive) is requeued before its operation fails with UNAVAILABLE.
    pub max_retries: u32,
    /// Cap on an Action's `timeout`, and the timeout of actions that set none.
    pub max_action_timeout: Duration,
    /// How long past its timeout a lease may stay unanswered before the scheduler cancels it
    /// and fails the operation with DEADLINE_EXCEEDED itself (the worker normally reports the
    /// timeout first; this is the backstop for a worker that keeps alive but never answers).
    pub timeout_grace: Duration,
    /// How long an action whose platform no connected worker offers stays queued before it
    /// fails with FAILED_PRECONDITION.
    pub unsatisfiable_wait: Duration,
    /// How long finished operations stay answerable by GetOperation / WaitExecution (cache
    /// hits: at most a minute). Finished operations are held in memory, so this bounds memory
    /// by throughput × retention.
    pub completed_retention: Duration,
    /// Period of the housekeeping pass (silent workers, timeouts, unsatisfiable actions,
    /// expired operations).
    pub tick_interval: Duration,
    /// Most slots one worker may advertise (larger `Hello.slots` are clamped).
    pub max_worker_slots: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            keep_alive_interval: Duration::from_secs(5),
            lease_timeout: Duration::from_secs(30),
            max_retries: 3,
            max_action_timeout: Duration::from_secs(60 * 60),
            timeout_grace: Duration::from_secs(60),
            unsatisfiable_wait: Duration::from_secs(60),
            completed_retention: Duration::from_secs(5 * 60),
            tick_interval: Duration::from_millis(500),
            max_worker_slots: 4096,
        }
    }
}

impl SchedulerConfig {
    /// The effective timeout of an action asking for `requested` (`None` or zero: the maximum).
    pub fn effective_timeout(&self, requested: Option<Duration>) -> Duration {
        match requested {
            Some(t) if !t.is_zero() => t.min(self.max_action_timeout),
            _ => self.max_action_timeout,
        }
    }

    /// How long after a lease is sent the worker may leave it out of its KeepAlives before the
    /// scheduler takes it as lost (the lease and the KeepAlive may cross on the wire).
    pub fn lease_ack_grace(&self) -> Duration {
        (self.keep_alive_interval * 2).max(Duration::from_millis(200))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_capped() {
        let c = SchedulerConfig {
            max_action_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        assert_eq!(c.effective_timeout(None), Duration::from_secs(10));
        assert_eq!(
            c.effective_timeout(Some(Duration::ZERO)),
            Duration::from_secs(10)
        );
        assert_eq!(
            c.effective_timeout(Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            c.effective_timeout(Some(Duration::from_secs(300))),
            Duration::from_secs(10)
        );
    }
}
