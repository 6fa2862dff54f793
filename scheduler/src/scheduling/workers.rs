//! Worker sessions in the core: connecting, keep-alives, results and disconnection.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use cas::Digest;
use tokio::sync::{mpsc, oneshot};

use super::dispatch::Loss;
use super::{Core, OpState, Scheduler, Worker};
use crate::metrics;
use crate::platform::Platform;
use crate::protocol::{self, scheduler_message, SchedulerMessage};
use crate::queue::SessionId;

/// How many consecutive KeepAlives must leave a confirmed lease out before it counts as lost.
pub const UNLISTED_STRIKES: u8 = 2;

/// Why a worker's Hello was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("Hello.worker_id is empty; a worker must name itself")]
    NoWorkerId,
    #[error("Hello.slots is 0; a worker must offer at least one slot")]
    NoSlots,
}

/// A registered session.
#[derive(Debug)]
pub struct Connected {
    pub session: SessionId,
    /// Resolves (with an error) when the scheduler ends the session: the worker went silent,
    /// or reconnected on another stream. The session's reader stops then.
    pub closed: oneshot::Receiver<()>,
}

/// What the result handler needs to know about a lease it got a result for.
#[derive(Clone, Debug)]
pub struct LeaseContext {
    pub operation: Arc<str>,
    pub instance_name: String,
    pub action_digest: Digest,
    pub do_not_cache: bool,
}

/// The `farm_scheduler_workers` label of a worker's platform: its ISA values, or `none`.
fn isa_label(platform: &Platform) -> String {
    let isas: Vec<&str> = platform.values("ISA").collect();
    if isas.is_empty() {
        "none".to_string()
    } else {
        isas.join("+")
    }
}

impl Core {
    /// Registers a worker session; its earlier session (same worker id) is closed and its
    /// leases, and leases restored for it after a restart, move to the new one.
    fn connect(
        &mut self,
        hello: &protocol::Hello,
        tx: mpsc::UnboundedSender<SchedulerMessage>,
        now: Instant,
    ) -> Result<Connected, ConnectError> {
        if hello.worker_id.is_empty() {
            return Err(ConnectError::NoWorkerId);
        }
        if hello.slots == 0 {
            return Err(ConnectError::NoSlots);
        }
        let worker_id: Arc<str> = hello.worker_id.as_str().into();
        let session = self.next_session;
        self.next_session += 1;
        let mut adopted: Vec<Arc<str>> = Vec::new();
        if let Some(old) = self.sessions_by_worker.get(&worker_id).copied() {
            if let Some(w) = self.detach(old, now) {
                tracing::info!(worker = %worker_id, old, session, "worker reconnected; its leases move to the new session");
                adopted.extend(w.leases);
            }
        }
        adopted.extend(self.orphans.remove(&worker_id).unwrap_or_default());
        let platform = Platform::from_protocol(&hello.platform);
        let compatible = self.queues.compatible_with(&platform);
        let welcome = SchedulerMessage {
            kind: Some(scheduler_message::Kind::Welcome(protocol::Welcome {
                worker_id: hello.worker_id.clone(),
                keep_alive_interval_ms: millis(self.config.keep_alive_interval),
                lease_timeout_ms: millis(self.config.lease_timeout),
            })),
        };
        let _ = tx.send(welcome);
        let mut leases = HashSet::new();
        for id in adopted {
            let Some(op) = self.leases.get(&id).and_then(|n| self.ops.get_mut(n)) else {
                continue;
            };
            if let OpState::Executing(lease) = &mut op.state {
                lease.session = Some(session);
                lease.orphaned_until = None;
                lease.acked = true;
                lease.missed = 0;
                leases.insert(id);
            }
        }
        let isa = isa_label(&platform);
        let (closed_tx, closed) = oneshot::channel();
        tracing::info!(worker = %worker_id, session, platform = %platform, slots = hello.slots,
            version = hello.version, adopted = leases.len(), "worker connected");
        let worker = Worker {
            session,
            worker_id: worker_id.clone(),
            platform,
            isa: isa.clone(),
            slots: hello.slots.min(self.config.max_worker_slots),
            leases,
            compatible,
            tx,
            last_seen: now,
            _closed: closed_tx,
        };
        for &k in &worker.compatible {
            self.queues.key_mut(k).worker_joined();
        }
        self.workers.insert(session, worker);
        self.sessions_by_worker.insert(worker_id, session);
        metrics::WORKERS.with_label_values(&[&isa]).inc();
        self.slots_changed(session, (0, 0));
        self.fill(session, now);
        Ok(Connected { session, closed })
    }

    /// Removes a session from the registry and every key (closing its stream by dropping the
    /// sender); its leases are left for the caller.
    pub(super) fn detach(&mut self, session: SessionId, now: Instant) -> Option<Worker> {
        let w = self.workers.get(&session)?;
        let old = (w.free(), w.busy());
        // Report the slots as gone before removing the worker.
        metrics::SLOTS
            .with_label_values(&["free"])
            .sub(i64::from(old.0));
        metrics::SLOTS
            .with_label_values(&["busy"])
            .sub(i64::from(old.1));
        let w = self.workers.remove(&session)?;
        for &k in &w.compatible {
            let key = self.queues.key_mut(k);
            key.set_free(session, old.0, 0);
            key.worker_left(now);
        }
        if self.sessions_by_worker.get(&w.worker_id) == Some(&session) {
            self.sessions_by_worker.remove(&w.worker_id);
        }
        metrics::WORKERS.with_label_values(&[&w.isa]).dec();
        Some(w)
    }

    /// Ends a session and takes its leases back.
    pub(super) fn drop_worker(&mut self, session: SessionId, loss: Loss, now: Instant) {
        let Some(w) = self.detach(session, now) else {
            return;
        };
        tracing::info!(worker = %w.worker_id, session, leases = w.leases.len(), reason = ?loss,
            "worker session ended");
        let worker_id = w.worker_id.clone();
        self.lose_all(w.leases, &worker_id, loss, now);
    }

    /// A KeepAlive: the session is alive; leases it has not listed in [`UNLISTED_STRIKES`]
    /// consecutive KeepAlives (once confirmed, or past the ack grace) are lost.
    fn keep_alive(&mut self, session: SessionId, active: &[String], now: Instant) {
        let grace = self.config.lease_ack_grace();
        let Some(w) = self.workers.get_mut(&session) else {
            return;
        };
        w.last_seen = now;
        let listed: HashSet<&str> = active.iter().map(String::as_str).collect();
        let mut lost = Vec::new();
        for id in &w.leases {
            let Some(op) = self.leases.get(id).and_then(|n| self.ops.get_mut(n)) else {
                continue;
            };
            let OpState::Executing(lease) = &mut op.state else {
                continue;
            };
            if listed.contains(&**id) {
                lease.acked = true;
                lease.missed = 0;
            } else if lease.acked || now.duration_since(lease.started) >= grace {
                // Two strikes: a KeepAlive may be sent between a worker dropping a lease from
                // its list and its LeaseResult reaching the stream.
                lease.missed += 1;
                if lease.missed >= UNLISTED_STRIKES {
                    lost.push(id.clone());
                }
            }
        }
        if !lost.is_empty() {
            let worker_id = w.worker_id.clone();
            self.lose_all(lost, &worker_id, Loss::Unlisted, now);
            self.fill(session, now);
        }
    }

    /// Any message from a session proves it alive; progress also confirms its lease.
    fn touch(&mut self, session: SessionId, lease_id: Option<&str>, now: Instant) {
        let Some(w) = self.workers.get_mut(&session) else {
            return;
        };
        w.last_seen = now;
        let Some(id) = lease_id else { return };
        if !w.leases.contains(id) {
            return;
        }
        if let Some(op) = self.leases.get(id).and_then(|n| self.ops.get_mut(n)) {
            if let OpState::Executing(lease) = &mut op.state {
                lease.acked = true;
                lease.missed = 0;
            }
        }
    }

    /// The operation behind a lease, if `worker_id` holds it now.
    fn lease_context(&self, worker_id: &str, lease_id: &str) -> Option<LeaseContext> {
        let name = self.leases.get(lease_id)?;
        let op = self.ops.get(name)?;
        let OpState::Executing(lease) = &op.state else {
            return None;
        };
        if *lease.worker_id != *worker_id {
            return None;
        }
        Some(LeaseContext {
            operation: op.name.clone(),
            instance_name: op.instance.clone(),
            action_digest: op.digest,
            do_not_cache: op.do_not_cache,
        })
    }

    /// A result for `lease_id` from `worker_id`: finishes the operation if the lease is still
    /// held by that worker; otherwise the result is stale and dropped (returns false).
    fn finish_lease(
        &mut self,
        worker_id: &str,
        lease_id: &str,
        mut response: reapi::ExecuteResponse,
        now: Instant,
    ) -> bool {
        let Some(ctx) = self.lease_context(worker_id, lease_id) else {
            metrics::STALE_RESULTS.inc();
            tracing::info!(
                worker = worker_id,
                lease = lease_id,
                "dropping a result for a lease no longer held"
            );
            return false;
        };
        let code = response.status.as_ref().map_or(0, |s| s.code);
        let outcome = match (code, &response.result) {
            (0, Some(r)) if r.exit_code == 0 => "ok",
            (0, Some(_)) => "nonzero_exit",
            (c, _) if c == tonic::Code::DeadlineExceeded as i32 => "timed_out",
            _ => "failed",
        };
        if let Some(meta) = response
            .result
            .as_mut()
            .and_then(|r| r.execution_metadata.as_mut())
        {
            if meta.worker.is_empty() {
                meta.worker = worker_id.to_string();
            }
        }
        self.finish(&ctx.operation, response, outcome, now);
        true
    }
}

fn millis(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// The worker protocol's entry points (used by the `WorkerSessions` service, and directly by
/// in-process workers such as the dispatch benchmark).
impl Scheduler {
    /// Registers a worker that sent `hello`; messages for it (Welcome first, then leases and
    /// cancellations) go to `tx`, whose sender the scheduler drops when it ends the session.
    /// The session ends when [`Scheduler::disconnect`] is called, when it goes silent for the
    /// lease timeout, or when the same worker id connects again.
    pub fn connect(
        &self,
        hello: &protocol::Hello,
        tx: mpsc::UnboundedSender<SchedulerMessage>,
    ) -> Result<Connected, ConnectError> {
        self.shared.core.lock().connect(hello, tx, Instant::now())
    }

    /// A KeepAlive from `session` listing the leases it still works on.
    pub fn keep_alive(&self, session: SessionId, active_lease_ids: &[String]) {
        self.shared
            .core
            .lock()
            .keep_alive(session, active_lease_ids, Instant::now());
    }

    /// Progress on a lease (confirms the lease and the session).
    pub fn progress(&self, session: SessionId, lease_id: &str) {
        self.shared
            .core
            .lock()
            .touch(session, Some(lease_id), Instant::now());
    }

    /// Marks a session as alive without other effect.
    pub fn touch(&self, session: SessionId) {
        self.shared.core.lock().touch(session, None, Instant::now());
    }

    /// The operation behind `lease_id` if `worker_id` holds it (`None`: a stale lease).
    pub fn lease_context(&self, worker_id: &str, lease_id: &str) -> Option<LeaseContext> {
        self.shared.core.lock().lease_context(worker_id, lease_id)
    }

    /// Delivers a worker's result; false if the lease was no longer held (result dropped).
    pub fn finish_lease(
        &self,
        worker_id: &str,
        lease_id: &str,
        response: reapi::ExecuteResponse,
    ) -> bool {
        self.shared
            .core
            .lock()
            .finish_lease(worker_id, lease_id, response, Instant::now())
    }

    /// A session's stream ended: its leases are requeued now.
    pub fn disconnect(&self, session: SessionId) {
        self.shared
            .core
            .lock()
            .drop_worker(session, Loss::Disconnected, Instant::now());
    }
}
