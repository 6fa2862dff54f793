//! Matching queued operations to free worker slots, and taking leases back.

use std::sync::Arc;
use std::time::Instant;

use super::{Core, LeaseState, OpState};
use crate::metrics;
use crate::operations;
use crate::platform::Platform;
use crate::protocol::{self, scheduler_message};
use crate::queue::{KeyId, SessionId};

/// Why a lease was taken back from its worker before it finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Loss {
    /// The worker's stream ended or broke.
    Disconnected,
    /// The worker sent nothing for the lease timeout.
    Silent,
    /// The worker's KeepAlive no longer lists the lease.
    Unlisted,
    /// Restored after a restart and not reclaimed by its worker in time (not the action's
    /// fault, so not counted against its retries).
    Restart,
}

impl Loss {
    fn label(self) -> &'static str {
        match self {
            Loss::Disconnected => "disconnected",
            Loss::Silent => "silent",
            Loss::Unlisted => "unlisted",
            Loss::Restart => "restart",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Loss::Disconnected => "its stream dropped",
            Loss::Silent => "it stopped sending keep-alives",
            Loss::Unlisted => "it stopped listing the lease",
            Loss::Restart => "it did not reconnect after a scheduler restart",
        }
    }
}

impl Core {
    /// The key of `platform`, matched against every connected worker when it is new.
    pub(super) fn intern(&mut self, platform: &Platform, now: Instant) -> KeyId {
        let (key, created) = self.queues.intern(platform, now);
        if created {
            for w in self.workers.values_mut() {
                if platform.is_satisfied_by(&w.platform) {
                    w.compatible.push(key);
                    let k = self.queues.key_mut(key);
                    k.worker_joined();
                    k.set_free(w.session, 0, w.free());
                }
            }
        }
        key
    }

    /// Puts a queued operation where it belongs: straight to the idle compatible worker with
    /// the most free slots, or into its key's queue.
    pub(super) fn enqueue(&mut self, name: Arc<str>, now: Instant) {
        let Some(op) = self.ops.get(&name) else {
            return;
        };
        let Some(key) = op.key else {
            return;
        };
        let rank = op.rank;
        match self.queues.key(key).best_idle() {
            Some(session) => self.assign(session, name, now),
            None => self.queues.key_mut(key).push(rank, name),
        }
    }

    /// Gives a worker queued work until its slots are full or nothing it can run is queued.
    pub(super) fn fill(&mut self, session: SessionId, now: Instant) {
        loop {
            let Some(w) = self.workers.get(&session) else {
                return;
            };
            if w.free() == 0 {
                return;
            }
            let Some((key, rank)) = self.queues.best_head(&w.compatible) else {
                return;
            };
            let Some(name) = self.queues.key_mut(key).remove(rank) else {
                return;
            };
            self.assign(session, name, now);
        }
    }

    /// A fresh lease id.
    fn new_lease_id(&mut self) -> Arc<str> {
        let n = self.next_lease;
        self.next_lease += 1;
        format!("{}-{n}", self.boot).into()
    }

    /// Records a worker's slot change in every compatible key's idle set and the slot gauges.
    pub(super) fn slots_changed(&mut self, session: SessionId, old: (u32, u32)) {
        let Some(w) = self.workers.get(&session) else {
            return;
        };
        let (free, busy) = (w.free(), w.busy());
        if free != old.0 {
            for &k in &w.compatible {
                self.queues.key_mut(k).set_free(session, old.0, free);
            }
        }
        metrics::SLOTS
            .with_label_values(&["free"])
            .add(i64::from(free) - i64::from(old.0));
        metrics::SLOTS
            .with_label_values(&["busy"])
            .add(i64::from(busy) - i64::from(old.1));
    }

    /// Leases operation `name` (queued, and out of its queue) to worker `session`.
    fn assign(&mut self, session: SessionId, name: Arc<str>, now: Instant) {
        let lease_id = self.new_lease_id();
        let Some(w) = self.workers.get_mut(&session) else {
            return;
        };
        let old = (w.free(), w.busy());
        w.leases.insert(lease_id.clone());
        let worker_id = w.worker_id.clone();
        let tx = w.tx.clone();
        self.slots_changed(session, old);
        let Some(op) = self.ops.get(&name) else {
            return;
        };
        let timeout = op.timeout;
        if let Some(payload) = &op.payload {
            let lease = protocol::Lease {
                lease_id: lease_id.to_string(),
                instance_name: op.instance.clone(),
                action_hash: op.digest.hash_hex(),
                action_size: op.digest.size() as i64,
                action: payload.action.to_vec(),
                command: payload.command.to_vec(),
                timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
                request_metadata: payload.request_metadata.to_vec(),
            };
            let msg = protocol::SchedulerMessage {
                kind: Some(scheduler_message::Kind::Lease(lease)),
            };
            // A closed channel means the session is ending; its leases are requeued then.
            let _ = tx.send(msg);
        }
        metrics::QUEUE_WAIT_SECONDS.observe(now.duration_since(op.queued_at).as_secs_f64());
        metrics::DISPATCHED.inc();
        metrics::EXECUTING.inc();
        self.leases.insert(lease_id.clone(), name.clone());
        let deadline = now + timeout + self.config.timeout_grace;
        self.set_state(
            &name,
            OpState::Executing(LeaseState {
                id: lease_id,
                worker_id,
                session: Some(session),
                started: now,
                acked: false,
                missed: 0,
                deadline,
                orphaned_until: None,
            }),
        );
    }

    /// Detaches lease `lease_id` from its worker (freeing the slot) and from the lease index.
    /// The operation stays `Executing` until the caller sets its next state. Returns the
    /// session whose slot was freed, if it is still connected.
    pub(super) fn release(&mut self, lease_id: &str) -> Option<SessionId> {
        let name = self.leases.remove(lease_id)?;
        metrics::EXECUTING.dec();
        let op = self.ops.get(&name)?;
        let OpState::Executing(lease) = &op.state else {
            return None;
        };
        let Some(session) = lease.session else {
            if let Some(list) = self.orphans.get_mut(&lease.worker_id) {
                list.retain(|l| **l != *lease_id);
            }
            return None;
        };
        let w = self.workers.get_mut(&session)?;
        let old = (w.free(), w.busy());
        w.leases.remove(lease_id);
        self.slots_changed(session, old);
        Some(session)
    }

    /// Tells a worker to stop working on a lease.
    pub(super) fn send_cancel(&self, session: Option<SessionId>, lease_id: &str) {
        let Some(w) = session.and_then(|s| self.workers.get(&s)) else {
            return;
        };
        let msg = protocol::SchedulerMessage {
            kind: Some(scheduler_message::Kind::Cancel(protocol::CancelLease {
                lease_id: lease_id.to_string(),
            })),
        };
        let _ = w.tx.send(msg);
    }

    /// Takes back the lease of operation `name` (already released) after its worker lost it:
    /// requeues the operation, or fails it once its retries are exhausted.
    pub(super) fn lose(&mut self, name: &str, worker_id: &str, loss: Loss, now: Instant) {
        let max_retries = self.config.max_retries;
        let Some(op) = self.ops.get_mut(name) else {
            return;
        };
        if !matches!(op.state, OpState::Executing(_)) {
            return;
        }
        if loss != Loss::Restart {
            op.attempts += 1;
            op.lost_workers.push(worker_id.to_string());
        }
        tracing::info!(operation = name, action = %op.digest, worker = worker_id,
            attempts = op.attempts, reason = loss.label(), "lease lost with its worker");
        if op.attempts > max_retries {
            let message = format!(
                "action {} was lost {} times with its worker ({}), the last time because {}; \
                 giving up after {max_retries} retries",
                op.digest,
                op.attempts,
                op.lost_workers.join(", "),
                loss.describe(),
            );
            self.finish(
                name,
                operations::failure(tonic::Code::Unavailable, message),
                "lost",
                now,
            );
            return;
        }
        op.queued_at = now;
        let name = op.name.clone();
        metrics::REQUEUED.with_label_values(&[loss.label()]).inc();
        self.set_state(&name, OpState::Queued);
        self.enqueue(name, now);
    }

    /// Releases and loses every lease in `lease_ids` (held by `worker_id`).
    pub(super) fn lose_all(
        &mut self,
        lease_ids: impl IntoIterator<Item = Arc<str>>,
        worker_id: &str,
        loss: Loss,
        now: Instant,
    ) {
        for lease_id in lease_ids {
            let Some(name) = self.leases.get(&lease_id).cloned() else {
                continue;
            };
            self.release(&lease_id);
            self.lose(&name, worker_id, loss, now);
        }
    }
}
