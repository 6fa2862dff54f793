//! The scheduling core: operations, queues, workers and leases behind one lock, and the
//! [`Scheduler`] handle the gRPC services share.
//!
//! Everything here is synchronous and in memory, so dispatch costs microseconds; the durable
//! record of each change goes to the [`SchedulerState`] through the [`Journal`]. Submodules
//! split the core by concern: `workers` (sessions, leases, results), `dispatch` (matching
//! queued work to free slots) and `housekeeping` (the periodic pass and resuming after a
//! restart).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::longrunning::Operation;
use bytes::Bytes;
use cas::Digest;
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::SchedulerConfig;
use crate::metrics;
use crate::operations::{self, OpStatus};
use crate::platform::Platform;
use crate::protocol::SchedulerMessage;
use crate::queue::{KeyId, Queues, Rank, SessionId};
use crate::state::{
    Journal, OperationRecord, RecordStage, SchedulerState, StateChange, StateError,
};

mod dispatch;
mod housekeeping;
mod workers;

pub use housekeeping::ResumeStats;
pub use workers::{ConnectError, Connected, LeaseContext};

/// Longest time an operation answered from the action cache stays answerable by
/// GetOperation (shorter than executed ones: its only update already said everything).
pub const CACHED_RETENTION: Duration = Duration::from_secs(60);

/// How long Execute waits for a durable state store to record a new operation.
const DURABILITY_WAIT: Duration = Duration::from_secs(10);

/// An action Execute wants run: everything the scheduler needs to queue and lease it.
#[derive(Clone, Debug)]
pub struct NewOperation {
    pub instance_name: String,
    pub action_digest: Digest,
    /// The encoded Action and Command, sent with the lease.
    pub action: Bytes,
    pub command: Bytes,
    /// The platform the action requires.
    pub platform: Platform,
    /// `ExecutionPolicy.priority`: lower runs sooner.
    pub priority: i32,
    /// `Action.do_not_cache`: never merged with another Execute, never written to the cache.
    pub do_not_cache: bool,
    /// Effective timeout (already capped).
    pub timeout: Duration,
    /// The client's encoded `RequestMetadata` (empty if none), passed on with the lease.
    pub request_metadata: Bytes,
}

/// A view of one operation's progress: its name, action, and a receiver of its status that
/// changes as it is queued, leased and finished.
#[derive(Debug)]
pub struct Subscription {
    pub name: Arc<str>,
    pub action_digest: Digest,
    pub updates: watch::Receiver<OpStatus>,
    /// Whether this Execute joined an identical in-flight operation.
    pub merged: bool,
}

/// Counts of what the scheduler holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub queued: usize,
    pub executing: usize,
    /// Finished operations still answerable.
    pub completed: usize,
    pub workers: usize,
    pub free_slots: u64,
}

/// The Action and Command bytes of a queued or executing operation (dropped once done).
#[derive(Debug)]
struct Payload {
    action: Bytes,
    command: Bytes,
    /// Encoded `RequestMetadata` of the Execute that created the operation (not persisted).
    request_metadata: Bytes,
}

/// The lease of an executing operation.
#[derive(Debug)]
struct LeaseState {
    id: Arc<str>,
    worker_id: Arc<str>,
    /// The session holding it; `None` after a restart until its worker reconnects.
    session: Option<SessionId>,
    started: Instant,
    /// Whether the worker has confirmed it (listed it in a KeepAlive, reported progress).
    acked: bool,
    /// Consecutive KeepAlives that did not list it (once it counts as confirmed).
    missed: u8,
    /// When the scheduler gives up waiting for a result (timeout + grace).
    deadline: Instant,
    /// For a lease restored after a restart: when it is requeued if nobody adopted it.
    orphaned_until: Option<Instant>,
}

#[derive(Debug)]
enum OpState {
    Queued,
    Executing(LeaseState),
    Completed(Arc<reapi::ExecuteResponse>),
}

/// One operation.
#[derive(Debug)]
struct Op {
    name: Arc<str>,
    instance: String,
    digest: Digest,
    /// Its platform key (`None` for cache hits, which never queue).
    key: Option<KeyId>,
    rank: Rank,
    do_not_cache: bool,
    timeout: Duration,
    payload: Option<Payload>,
    state: OpState,
    /// Leases lost with their worker, and which workers lost them.
    attempts: u32,
    lost_workers: Vec<String>,
    accepted_at: Instant,
    accepted_at_unix_ms: i64,
    /// When it last entered the queue.
    queued_at: Instant,
    completed_at_unix_ms: i64,
    tx: watch::Sender<OpStatus>,
}

impl Op {
    fn status(&self) -> OpStatus {
        match &self.state {
            OpState::Queued => OpStatus::Queued,
            OpState::Executing(_) => OpStatus::Executing,
            OpState::Completed(r) => OpStatus::Completed(r.clone()),
        }
    }

    fn is_done(&self) -> bool {
        matches!(self.state, OpState::Completed(_))
    }

    fn subscription(&self, merged: bool) -> Subscription {
        Subscription {
            name: self.name.clone(),
            action_digest: self.digest,
            updates: self.tx.subscribe(),
            merged,
        }
    }

    /// The durable form of this operation now.
    fn record(&self) -> OperationRecord {
        let mut r = OperationRecord {
            name: self.name.to_string(),
            instance_name: self.instance.clone(),
            action_hash: self.digest.hash_hex(),
            action_size: self.digest.size() as i64,
            priority: self.rank.0,
            seq: self.rank.1,
            do_not_cache: self.do_not_cache,
            attempts: self.attempts,
            lost_workers: self.lost_workers.clone(),
            accepted_at_unix_ms: self.accepted_at_unix_ms,
            completed_at_unix_ms: self.completed_at_unix_ms,
            timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            ..Default::default()
        };
        match &self.state {
            OpState::Queued => r.stage = RecordStage::Queued as i32,
            OpState::Executing(l) => {
                r.stage = RecordStage::Executing as i32;
                r.lease_id = l.id.to_string();
                r.worker_id = l.worker_id.to_string();
            }
            OpState::Completed(resp) => {
                r.stage = RecordStage::Completed as i32;
                r.execute_response = resp.encode_to_vec();
            }
        }
        r
    }
}

/// A connected worker session.
#[derive(Debug)]
struct Worker {
    session: SessionId,
    worker_id: Arc<str>,
    platform: Platform,
    /// Label of `farm_scheduler_workers`.
    isa: String,
    slots: u32,
    leases: HashSet<Arc<str>>,
    /// Keys this worker satisfies.
    compatible: Vec<KeyId>,
    tx: mpsc::UnboundedSender<SchedulerMessage>,
    last_seen: Instant,
    /// Dropped with the worker, which tells the session's reader that the session is over.
    _closed: oneshot::Sender<()>,
}

impl Worker {
    fn free(&self) -> u32 {
        self.slots.saturating_sub(self.leases.len() as u32)
    }

    fn busy(&self) -> u32 {
        self.leases.len() as u32
    }
}

/// The state behind the lock.
#[derive(Debug)]
pub(crate) struct Core {
    config: SchedulerConfig,
    journal: Arc<Journal>,
    ops: HashMap<Arc<str>, Op>,
    /// In-flight cacheable operations by (instance, action digest), for merging.
    inflight: HashMap<(String, Digest), Arc<str>>,
    /// Lease id → operation name.
    leases: HashMap<Arc<str>, Arc<str>>,
    /// Restored leases waiting for their worker: worker id → lease ids.
    orphans: HashMap<Arc<str>, Vec<Arc<str>>>,
    queues: Queues,
    workers: HashMap<SessionId, Worker>,
    sessions_by_worker: HashMap<Arc<str>, SessionId>,
    /// Finished operations in order of completion, for retention.
    completed: VecDeque<(Instant, Arc<str>)>,
    /// Operations answered from the action cache, in order, for their shorter retention.
    cached: VecDeque<(Instant, Arc<str>)>,
    next_seq: u64,
    next_session: SessionId,
    next_lease: u64,
    /// Random per process, so lease ids of different runs never collide.
    boot: String,
}

/// Milliseconds since the Unix epoch now.
fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Core {
    fn new(config: SchedulerConfig, journal: Arc<Journal>) -> Self {
        let boot = uuid::Uuid::new_v4().simple().to_string();
        Core {
            config,
            journal,
            ops: HashMap::new(),
            inflight: HashMap::new(),
            leases: HashMap::new(),
            orphans: HashMap::new(),
            queues: Queues::default(),
            workers: HashMap::new(),
            sessions_by_worker: HashMap::new(),
            completed: VecDeque::new(),
            cached: VecDeque::new(),
            next_seq: 1,
            next_session: 1,
            next_lease: 1,
            boot: boot[..12].to_string(),
        }
    }

    /// Writes an operation's current record to the journal; returns the change's number.
    fn persist(&self, name: &str) -> u64 {
        match self.ops.get(name) {
            Some(op) => self.journal.record(StateChange::Put(op.record())),
            None => 0,
        }
    }

    /// Sets an operation's state, persists it and tells its watchers.
    fn set_state(&mut self, name: &str, state: OpState) -> u64 {
        let Some(op) = self.ops.get_mut(name) else {
            return 0;
        };
        op.state = state;
        let status = op.status();
        op.tx.send_replace(status);
        self.persist(name)
    }

    fn join(&self, instance: &str, digest: &Digest) -> Option<Subscription> {
        let name = self.inflight.get(&(instance.to_string(), *digest))?;
        let op = self.ops.get(name).filter(|op| !op.is_done())?;
        metrics::MERGED.inc();
        Some(op.subscription(true))
    }

    /// Queues a new operation (or joins an identical in-flight one); returns it and the
    /// journal number of its record.
    fn submit(&mut self, new: NewOperation, now: Instant) -> (Subscription, u64) {
        if !new.do_not_cache {
            if let Some(sub) = self.join(&new.instance_name, &new.action_digest) {
                return (sub, 0);
            }
        }
        let name: Arc<str> = operations::new_operation_name(&new.instance_name).into();
        let key = self.intern(&new.platform, now);
        let seq = self.next_seq;
        self.next_seq += 1;
        let (tx, _) = watch::channel(OpStatus::Queued);
        let op = Op {
            name: name.clone(),
            instance: new.instance_name,
            digest: new.action_digest,
            key: Some(key),
            rank: (new.priority, seq),
            do_not_cache: new.do_not_cache,
            timeout: new.timeout,
            payload: Some(Payload {
                action: new.action,
                command: new.command,
                request_metadata: new.request_metadata,
            }),
            state: OpState::Queued,
            attempts: 0,
            lost_workers: Vec::new(),
            accepted_at: now,
            accepted_at_unix_ms: unix_ms(),
            queued_at: now,
            completed_at_unix_ms: 0,
            tx,
        };
        if !op.do_not_cache {
            self.inflight
                .insert((op.instance.clone(), op.digest), name.clone());
        }
        let sub = op.subscription(false);
        self.ops.insert(name.clone(), op);
        let n = self.persist(&name);
        self.enqueue(name, now);
        (sub, n)
    }

    /// Records a finished operation answered from the action cache.
    fn complete_cached(
        &mut self,
        instance: &str,
        digest: Digest,
        response: reapi::ExecuteResponse,
        now: Instant,
    ) -> Subscription {
        let name: Arc<str> = operations::new_operation_name(instance).into();
        let response = Arc::new(response);
        let (tx, _) = watch::channel(OpStatus::Completed(response.clone()));
        let op = Op {
            name: name.clone(),
            instance: instance.to_string(),
            digest,
            key: None,
            rank: (0, 0),
            do_not_cache: false,
            timeout: Duration::ZERO,
            payload: None,
            state: OpState::Completed(response),
            attempts: 0,
            lost_workers: Vec::new(),
            accepted_at: now,
            accepted_at_unix_ms: unix_ms(),
            queued_at: now,
            completed_at_unix_ms: unix_ms(),
            tx,
        };
        let sub = op.subscription(false);
        // Not journaled: a cache hit is answered in its first update, so nobody needs it to
        // survive a restart, and the hit path stays free of state writes.
        self.ops.insert(name.clone(), op);
        self.cached.push_back((now, name));
        metrics::record_outcome("cached");
        sub
    }

    /// Finishes an operation with `response` (releasing its lease or queue entry); a no-op
    /// for finished or unknown operations.
    fn finish(
        &mut self,
        name: &str,
        mut response: reapi::ExecuteResponse,
        outcome: &str,
        now: Instant,
    ) {
        let Some(op) = self.ops.get(name) else {
            return;
        };
        let rank = op.rank;
        let key = op.key;
        let mut freed = None;
        match &op.state {
            OpState::Completed(_) => return,
            OpState::Queued => {
                if let Some(key) = key {
                    self.queues.key_mut(key).remove(rank);
                }
            }
            OpState::Executing(lease) => {
                let id = lease.id.clone();
                freed = self.release(&id);
            }
        }
        let Some(op) = self.ops.get_mut(name) else {
            return;
        };
        if !op.do_not_cache {
            let k = (op.instance.clone(), op.digest);
            if self.inflight.get(&k).is_some_and(|n| **n == *name) {
                self.inflight.remove(&k);
            }
        }
        if let Some(meta) = response
            .result
            .as_mut()
            .and_then(|r| r.execution_metadata.as_mut())
        {
            if meta.queued_timestamp.is_none() {
                meta.queued_timestamp = Some(timestamp(op.accepted_at_unix_ms));
            }
        }
        op.payload = None;
        op.completed_at_unix_ms = unix_ms();
        metrics::ACTION_SECONDS.observe(now.duration_since(op.accepted_at).as_secs_f64());
        metrics::record_outcome(outcome);
        let name = op.name.clone();
        self.set_state(&name, OpState::Completed(Arc::new(response)));
        self.completed.push_back((now, name));
        if let Some(session) = freed {
            self.fill(session, now);
        }
    }

    fn cancel(&mut self, name: &str, now: Instant) -> bool {
        let Some(op) = self.ops.get(name) else {
            return false;
        };
        if let OpState::Executing(lease) = &op.state {
            self.send_cancel(lease.session, &lease.id);
        }
        self.finish(
            name,
            operations::failure(
                tonic::Code::Cancelled,
                format!("operation {name} was cancelled by CancelOperation"),
            ),
            "cancelled",
            now,
        );
        true
    }

    fn subscribe(&self, name: &str) -> Option<Subscription> {
        self.ops.get(name).map(|op| op.subscription(false))
    }

    fn list(
        &self,
        prefix: &str,
        done: Option<bool>,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<Operation>, Option<String>) {
        let mut names: Vec<&Arc<str>> = self
            .ops
            .iter()
            .filter(|(n, op)| {
                n.starts_with(prefix)
                    && after.is_none_or(|a| &***n > a)
                    && done.is_none_or(|d| op.is_done() == d)
            })
            .map(|(n, _)| n)
            .collect();
        names.sort_unstable();
        let more = names.len() > limit;
        names.truncate(limit);
        let page = names
            .iter()
            .filter_map(|n| self.ops.get(*n))
            .map(|op| operations::operation(&op.name, &op.digest, &op.status()))
            .collect();
        let next = if more {
            names.last().map(|n| n.to_string())
        } else {
            None
        };
        (page, next)
    }

    fn stats(&self) -> Stats {
        let executing = self.leases.len();
        let queued = self.queues.depth();
        Stats {
            queued,
            executing,
            completed: self.completed.len() + self.cached.len(),
            workers: self.workers.len(),
            free_slots: self.workers.values().map(|w| u64::from(w.free())).sum(),
        }
    }
}

/// A `google.protobuf.Timestamp` from Unix milliseconds.
fn timestamp(unix_ms: i64) -> bazel_remote_apis::google::protobuf::Timestamp {
    bazel_remote_apis::google::protobuf::Timestamp {
        seconds: unix_ms.div_euclid(1000),
        nanos: (unix_ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// What the services share: the core behind its lock, the journal and the state store.
#[derive(Debug)]
struct Shared {
    core: Mutex<Core>,
    journal: Arc<Journal>,
    state: Arc<dyn SchedulerState>,
    config: SchedulerConfig,
}

/// The scheduler: a cheap handle on the shared core. Dropping the last handle stops its
/// background tasks.
#[derive(Clone, Debug)]
pub struct Scheduler {
    shared: Arc<Shared>,
}

impl Scheduler {
    /// A scheduler recording its operations in `state`; starts the journal writer and the
    /// housekeeping ticker (needs a Tokio runtime). Call [`Scheduler::resume`] before serving
    /// to pick up what `state` holds.
    pub fn new(config: SchedulerConfig, state: Arc<dyn SchedulerState>) -> Self {
        metrics::init();
        let journal = Arc::new(Journal::spawn(state.clone()));
        let shared = Arc::new(Shared {
            core: Mutex::new(Core::new(config.clone(), journal.clone())),
            journal,
            state,
            config,
        });
        spawn_ticker(Arc::downgrade(&shared));
        Scheduler { shared }
    }

    /// The timings and limits this scheduler runs with.
    pub fn config(&self) -> &SchedulerConfig {
        &self.shared.config
    }

    /// The state store behind this scheduler.
    pub fn state(&self) -> &Arc<dyn SchedulerState> {
        &self.shared.state
    }

    /// The in-flight operation running the same action in the same instance, if any (never a
    /// `do_not_cache` one: those are not indexed).
    pub fn join(&self, instance: &str, digest: &Digest) -> Option<Subscription> {
        self.shared.core.lock().join(instance, digest)
    }

    /// Queues `new` (or merges it into an identical in-flight operation) and, when the state
    /// is durable, waits until the new operation is recorded.
    pub async fn submit(&self, new: NewOperation) -> Result<Subscription, StateError> {
        let (sub, n) = self.shared.core.lock().submit(new, Instant::now());
        if n > 0 {
            self.shared.journal.wait_flushed(n, DURABILITY_WAIT).await?;
        }
        Ok(sub)
    }

    /// Records an operation answered from the action cache (finished at once).
    pub fn complete_cached(
        &self,
        instance: &str,
        digest: Digest,
        response: reapi::ExecuteResponse,
    ) -> Subscription {
        self.shared
            .core
            .lock()
            .complete_cached(instance, digest, response, Instant::now())
    }

    /// The operation named `name`: a live one, or a finished one the state store still holds
    /// (after a restart). `None` if unknown.
    pub async fn subscribe(&self, name: &str) -> Result<Option<Subscription>, StateError> {
        if let Some(sub) = self.shared.core.lock().subscribe(name) {
            return Ok(Some(sub));
        }
        let Some(record) = self.shared.state.get(name).await? else {
            return Ok(None);
        };
        if record.record_stage() != RecordStage::Completed {
            return Ok(None);
        }
        let digest = Digest::parse(&record.action_hash, record.action_size).map_err(|e| {
            StateError::Corrupt {
                key: name.to_string(),
                reason: e.to_string(),
            }
        })?;
        let response =
            reapi::ExecuteResponse::decode(&record.execute_response[..]).map_err(|e| {
                StateError::Corrupt {
                    key: name.to_string(),
                    reason: e.to_string(),
                }
            })?;
        let (_tx, updates) = watch::channel(OpStatus::Completed(Arc::new(response)));
        Ok(Some(Subscription {
            name: name.into(),
            action_digest: digest,
            updates,
            merged: false,
        }))
    }

    /// Cancels an operation: dequeued, or its lease cancelled on the worker; it finishes with
    /// CANCELLED (for every client merged into it). Finished operations are left alone.
    /// Returns whether the operation is known.
    pub fn cancel(&self, name: &str) -> bool {
        self.shared.core.lock().cancel(name, Instant::now())
    }

    /// Operations whose name starts with `prefix`, in name order, after `after`, at most
    /// `limit`, optionally only finished (`Some(true)`) or unfinished ones; with the name to
    /// continue after if there are more.
    pub fn list(
        &self,
        prefix: &str,
        done: Option<bool>,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<Operation>, Option<String>) {
        self.shared.core.lock().list(prefix, done, after, limit)
    }

    /// What the scheduler holds now.
    pub fn stats(&self) -> Stats {
        self.shared.core.lock().stats()
    }

    /// Waits until every change so far is written to a durable state store (at shutdown, or
    /// to measure); fails after `limit`.
    pub async fn flush_state(&self, limit: Duration) -> Result<(), StateError> {
        self.shared.journal.flush(limit).await
    }

    /// Runs the housekeeping pass now (the ticker also runs it every `tick_interval`).
    pub fn tick(&self) {
        self.shared.core.lock().tick(Instant::now());
    }
}

/// Runs housekeeping every `tick_interval` while the scheduler lives.
fn spawn_ticker(shared: Weak<Shared>) {
    let Some(period) = shared.upgrade().map(|s| s.config.tick_interval) else {
        return;
    };
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period.max(Duration::from_millis(1)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            shared.core.lock().tick(Instant::now());
        }
    });
}
