//! The periodic pass (silent workers, overdue leases, unsatisfiable actions, expired
//! operations) and resuming from the state store after a restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bytes::Bytes;
use cas::store::{BlobStore, ByteRange};
use cas::Digest;
use futures::StreamExt;
use prost::Message;
use tokio::sync::watch;

use super::dispatch::Loss;
use super::{Core, LeaseState, Op, OpState, Payload, Scheduler};
use crate::operations::{self, OpStatus};
use crate::platform::Platform;
use crate::state::{OperationRecord, RecordStage, StateChange, StateError};

/// How many Actions/Commands are read from the CAS at once while resuming.
const RESUME_CONCURRENCY: usize = 64;

/// What [`Scheduler::resume`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResumeStats {
    /// Operations back in the queue.
    pub queued: usize,
    /// Operations whose lease waits for its worker to reconnect.
    pub executing: usize,
    /// Operations that could not resume (Action or Command gone from the CAS) and failed.
    pub failed: usize,
}

impl Core {
    /// One housekeeping pass at `now`.
    pub(super) fn tick(&mut self, now: Instant) {
        self.reap_silent_workers(now);
        self.reap_overdue_leases(now);
        self.reap_unsatisfiable(now);
        self.expire_completed(now);
    }

    fn reap_silent_workers(&mut self, now: Instant) {
        let timeout = self.config.lease_timeout;
        let silent: Vec<_> = self
            .workers
            .values()
            .filter(|w| now.duration_since(w.last_seen) >= timeout)
            .map(|w| w.session)
            .collect();
        for session in silent {
            tracing::warn!(
                session,
                ?timeout,
                "worker silent for the lease timeout; requeueing its leases"
            );
            self.drop_worker(session, Loss::Silent, now);
        }
    }

    /// Leases past their timeout plus grace are cancelled and fail with DEADLINE_EXCEEDED;
    /// restored leases nobody reclaimed in time are requeued.
    fn reap_overdue_leases(&mut self, now: Instant) {
        let mut overdue = Vec::new();
        let mut unclaimed = Vec::new();
        for (id, name) in &self.leases {
            let Some(OpState::Executing(lease)) = self.ops.get(name).map(|op| &op.state) else {
                continue;
            };
            if now >= lease.deadline {
                overdue.push((name.clone(), lease.session, id.clone()));
            } else if lease.orphaned_until.is_some_and(|t| now >= t) {
                unclaimed.push((id.clone(), lease.worker_id.clone()));
            }
        }
        for (name, session, lease_id) in overdue {
            let Some(op) = self.ops.get(&name) else {
                continue;
            };
            let message = format!(
                "action {} exceeded its timeout of {:?} and its worker did not report within \
                 {:?} after it; the lease was cancelled",
                op.digest, op.timeout, self.config.timeout_grace
            );
            self.send_cancel(session, &lease_id);
            self.finish(
                &name,
                operations::failure(tonic::Code::DeadlineExceeded, message),
                "timed_out",
                now,
            );
        }
        for (lease_id, worker_id) in unclaimed {
            self.lose_all([lease_id], &worker_id, Loss::Restart, now);
        }
    }

    /// Queued actions no connected worker can run fail once they have waited
    /// `unsatisfiable_wait` (counted from when they queued or the last matching worker left,
    /// whichever is later).
    fn reap_unsatisfiable(&mut self, now: Instant) {
        let wait = self.config.unsatisfiable_wait;
        let mut doomed = Vec::new();
        for (_, key) in self.queues.iter() {
            let Some(since) = key.no_worker_since else {
                continue;
            };
            if key.workers > 0 || key.queue.is_empty() || now.duration_since(since) < wait {
                continue;
            }
            for name in key.queue.values() {
                if let Some(op) = self.ops.get(name) {
                    if now.duration_since(op.queued_at) >= wait {
                        doomed.push((name.clone(), key.platform.clone()));
                    }
                }
            }
        }
        if doomed.is_empty() {
            return;
        }
        let mut offers: Vec<String> = self.workers.values().map(|w| w.platform.label()).collect();
        offers.sort_unstable();
        offers.dedup();
        let offered = if offers.is_empty() {
            "no worker is connected".to_string()
        } else {
            let shown: Vec<&str> = offers.iter().take(8).map(String::as_str).collect();
            format!("connected workers offer [{}]", shown.join("; "))
        };
        for (name, platform) in doomed {
            let message = format!(
                "no connected worker offers the platform this action requires ({platform}) \
                 and none connected within {wait:?}; {offered}. Every property an action asks \
                 for must be offered by the worker with exactly that value"
            );
            self.finish(
                &name,
                operations::failure(tonic::Code::FailedPrecondition, message),
                "unsatisfiable",
                now,
            );
        }
    }

    /// Forgets finished operations older than the retention (cache hits sooner).
    fn expire_completed(&mut self, now: Instant) {
        let retention = self.config.completed_retention;
        let cached_retention = retention.min(super::CACHED_RETENTION);
        while let Some((at, _)) = self.cached.front() {
            if now.duration_since(*at) < cached_retention {
                break;
            }
            if let Some((_, name)) = self.cached.pop_front() {
                self.ops.remove(&name);
            }
        }
        while let Some((at, _)) = self.completed.front() {
            if now.duration_since(*at) < retention {
                break;
            }
            let Some((_, name)) = self.completed.pop_front() else {
                break;
            };
            if self.ops.get(&name).is_some_and(Op::is_done) {
                self.ops.remove(&name);
                self.journal.record(StateChange::Remove(name.to_string()));
            }
        }
    }

    /// Re-creates an operation from its record; `payload` is its Action/Command and platform,
    /// or why they could not be read.
    fn restore(
        &mut self,
        record: OperationRecord,
        payload: Result<(Payload, Platform), String>,
        now: Instant,
    ) -> Result<RecordStage, StateError> {
        let corrupt = |reason: String| StateError::Corrupt {
            key: record.name.clone(),
            reason,
        };
        let digest = Digest::parse(&record.action_hash, record.action_size)
            .map_err(|e| corrupt(e.to_string()))?;
        let name: Arc<str> = record.name.as_str().into();
        self.next_seq = self.next_seq.max(record.seq + 1);
        let (tx, _) = watch::channel(OpStatus::Queued);
        let mut op = Op {
            name: name.clone(),
            instance: record.instance_name.clone(),
            digest,
            key: None,
            rank: (record.priority, record.seq),
            do_not_cache: record.do_not_cache,
            timeout: Duration::from_millis(record.timeout_ms),
            payload: None,
            state: OpState::Queued,
            attempts: record.attempts,
            lost_workers: record.lost_workers.clone(),
            accepted_at: now,
            accepted_at_unix_ms: record.accepted_at_unix_ms,
            queued_at: now,
            completed_at_unix_ms: 0,
            tx,
        };
        let (payload, platform) = match payload {
            Ok(p) => p,
            Err(why) => {
                self.ops.insert(name.clone(), op);
                let message =
                    format!("operation {name} could not resume after a scheduler restart: {why}");
                self.finish(
                    &name,
                    operations::failure(tonic::Code::FailedPrecondition, message),
                    "failed",
                    now,
                );
                return Ok(RecordStage::Completed);
            }
        };
        op.payload = Some(payload);
        op.key = Some(self.intern(&platform, now));
        if !op.do_not_cache {
            self.inflight
                .insert((op.instance.clone(), op.digest), name.clone());
        }
        let stage = record.record_stage();
        if stage == RecordStage::Executing && !record.lease_id.is_empty() {
            let lease_id: Arc<str> = record.lease_id.as_str().into();
            let worker_id: Arc<str> = record.worker_id.as_str().into();
            op.state = OpState::Executing(LeaseState {
                id: lease_id.clone(),
                worker_id: worker_id.clone(),
                session: None,
                started: now,
                acked: true,
                missed: 0,
                deadline: now + op.timeout + self.config.timeout_grace,
                orphaned_until: Some(now + self.config.lease_timeout),
            });
            op.tx.send_replace(OpStatus::Executing);
            self.ops.insert(name.clone(), op);
            self.leases.insert(lease_id.clone(), name);
            self.orphans.entry(worker_id).or_default().push(lease_id);
            crate::metrics::EXECUTING.inc();
            Ok(RecordStage::Executing)
        } else {
            self.ops.insert(name.clone(), op);
            self.enqueue(name, now);
            Ok(RecordStage::Queued)
        }
    }
}

/// Reads an operation's Action and Command back from the CAS.
async fn load_payload(
    cas: &dyn BlobStore,
    record: &OperationRecord,
) -> Result<(Payload, Platform), String> {
    let digest = Digest::parse(&record.action_hash, record.action_size)
        .map_err(|e| format!("bad action digest in its record: {e}"))?;
    let action = read(cas, &digest, "Action").await?;
    let decoded =
        reapi::Action::decode(&action[..]).map_err(|e| format!("the Action is corrupt: {e}"))?;
    let command_digest = Digest::from_proto(decoded.command_digest.as_ref())
        .map_err(|e| format!("the Action's command digest is invalid: {e}"))?;
    let command = read(cas, &command_digest, "Command").await?;
    let decoded_command =
        reapi::Command::decode(&command[..]).map_err(|e| format!("the Command is corrupt: {e}"))?;
    let platform = Platform::of_action(&decoded, &decoded_command);
    // The client's request metadata is not persisted: a resumed operation carries none.
    Ok((
        Payload {
            action,
            command,
            request_metadata: Bytes::new(),
        },
        platform,
    ))
}

async fn read(cas: &dyn BlobStore, digest: &Digest, what: &str) -> Result<Bytes, String> {
    match cas.get_bytes(digest, ByteRange::ALL).await {
        Ok(data) => Ok(data),
        Err(e) if e.is_not_found() => Err(format!("its {what} {digest} is no longer in the CAS")),
        Err(e) => Err(format!("reading its {what} {digest} failed: {e}")),
    }
}

impl Scheduler {
    /// Picks up the unfinished operations the state store holds (after a restart): queued ones
    /// queue again in their order; executing ones keep their lease for `lease_timeout`, for
    /// their worker to reconnect and claim it, and are requeued otherwise. Their Action and
    /// Command are read back from `cas`; operations whose blobs are gone fail with
    /// FAILED_PRECONDITION. Call once, before serving.
    pub async fn resume(&self, cas: &dyn BlobStore) -> Result<ResumeStats, StateError> {
        let records = self.shared.state.load_unfinished().await?;
        let loaded: Vec<_> = futures::stream::iter(records)
            .map(|record| async move {
                let payload = load_payload(cas, &record).await;
                (record, payload)
            })
            .buffer_unordered(RESUME_CONCURRENCY)
            .collect()
            .await;
        let mut loaded = loaded;
        loaded.sort_by_key(|(r, _)| r.seq);
        let mut stats = ResumeStats::default();
        let mut core = self.shared.core.lock();
        let now = Instant::now();
        for (record, payload) in loaded {
            match core.restore(record, payload, now)? {
                RecordStage::Queued => stats.queued += 1,
                RecordStage::Executing => stats.executing += 1,
                _ => stats.failed += 1,
            }
        }
        tracing::info!(
            queued = stats.queued,
            executing = stats.executing,
            failed = stats.failed,
            state = self.shared.state.kind(),
            "resumed operations from the scheduler state"
        );
        Ok(stats)
    }
}
