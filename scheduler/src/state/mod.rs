//! Where the scheduler keeps the durable record of its operations, behind [`SchedulerState`].
//!
//! The scheduling core (queues, leases, workers) lives in memory for speed; every change of an
//! operation (queued, leased, requeued, finished, forgotten) is also written, in order, as an
//! [`OperationRecord`] to a [`SchedulerState`] by one background [`Journal`] task that batches
//! them. On start the scheduler reads the unfinished records back and resumes: queued
//! operations stay queued in their order, executing ones wait for their worker to reconnect
//! (or are requeued after the lease timeout), and finished ones keep answering
//! GetOperation / WaitExecution until their retention ends.
//!
//! Implementations: [`memory::MemoryState`] (the default; gone with the process) and, with the
//! `redis` feature, [`redis::RedisState`] (survives restarts). One scheduler process owns a
//! state (a Redis key prefix) at a time.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

/// Why the state store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The backend (Redis) could not be reached or refused the request.
    #[error("scheduler state store unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be decoded.
    #[error("corrupt scheduler state record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// A configuration problem (bad URL, ...).
    #[error("invalid scheduler state configuration: {0}")]
    InvalidConfig(String),
}

impl From<StateError> for tonic::Status {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Unavailable(_) => tonic::Status::unavailable(e.to_string()),
            StateError::Corrupt { .. } => tonic::Status::data_loss(e.to_string()),
            StateError::InvalidConfig(_) => tonic::Status::internal(e.to_string()),
        }
    }
}

/// The stage of a stored operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum RecordStage {
    Unspecified = 0,
    Queued = 1,
    Executing = 2,
    Completed = 3,
}

/// The durable form of one operation (prost-encoded in stores that need bytes). The Action and
/// Command are not stored: they are in the CAS under the action digest.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OperationRecord {
    /// `{instance}/operations/{uuid}`.
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub instance_name: String,
    /// The action digest: lowercase hex SHA-256 and size.
    #[prost(string, tag = "3")]
    pub action_hash: String,
    #[prost(int64, tag = "4")]
    pub action_size: i64,
    /// `ExecutionPolicy.priority` (lower runs sooner).
    #[prost(int32, tag = "5")]
    pub priority: i32,
    /// Arrival order (FIFO among equal priorities).
    #[prost(uint64, tag = "6")]
    pub seq: u64,
    #[prost(bool, tag = "7")]
    pub do_not_cache: bool,
    #[prost(enumeration = "RecordStage", tag = "8")]
    pub stage: i32,
    /// While executing: the lease and the worker holding it.
    #[prost(string, tag = "9")]
    pub lease_id: String,
    #[prost(string, tag = "10")]
    pub worker_id: String,
    /// Leases lost with their worker so far.
    #[prost(uint32, tag = "11")]
    pub attempts: u32,
    /// The workers that lost it, in order.
    #[prost(string, repeated, tag = "12")]
    pub lost_workers: Vec<String>,
    /// Once completed: the encoded ExecuteResponse.
    #[prost(bytes = "vec", tag = "13")]
    pub execute_response: Vec<u8>,
    /// When Execute accepted it (Unix milliseconds).
    #[prost(int64, tag = "14")]
    pub accepted_at_unix_ms: i64,
    /// When it finished (Unix milliseconds), once completed.
    #[prost(int64, tag = "15")]
    pub completed_at_unix_ms: i64,
    /// Effective timeout in milliseconds.
    #[prost(uint64, tag = "16")]
    pub timeout_ms: u64,
}

impl OperationRecord {
    /// The stage, unknown values read as `Unspecified`.
    pub fn record_stage(&self) -> RecordStage {
        RecordStage::try_from(self.stage).unwrap_or(RecordStage::Unspecified)
    }
}

/// One change to apply to the state, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum StateChange {
    /// Create or replace an operation's record.
    Put(OperationRecord),
    /// Forget an operation (its retention ended).
    Remove(String),
}

/// The durable record of the scheduler's operations.
#[async_trait]
pub trait SchedulerState: Send + Sync + Debug + 'static {
    /// Every queued or executing operation, in no particular order.
    async fn load_unfinished(&self) -> Result<Vec<OperationRecord>, StateError>;

    /// One operation by name, finished ones included until they are removed or expire.
    async fn get(&self, name: &str) -> Result<Option<OperationRecord>, StateError>;

    /// Applies `changes` in order (atomically where the backend allows).
    async fn apply(&self, changes: &[StateChange]) -> Result<(), StateError>;

    /// Whether records survive a restart of this process; when they do, Execute answers only
    /// once the new operation is written.
    fn is_durable(&self) -> bool;

    /// A short name for logs ("memory", "redis").
    fn kind(&self) -> &'static str;
}

/// Most changes applied in one `apply` call.
const MAX_BATCH: usize = 4096;

/// The ordered, batching writer in front of a [`SchedulerState`]: changes are recorded
/// synchronously (under the scheduler's lock, so their order is the scheduler's) and applied
/// by one background task; callers that need durability wait for their change's number.
#[derive(Debug)]
pub struct Journal {
    tx: mpsc::UnboundedSender<(u64, StateChange)>,
    next: AtomicU64,
    flushed: watch::Receiver<u64>,
    durable: bool,
}

impl Journal {
    /// Starts the writer task over `state` (needs a Tokio runtime).
    pub fn spawn(state: Arc<dyn SchedulerState>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (flushed_tx, flushed) = watch::channel(0);
        let durable = state.is_durable();
        tokio::spawn(write_loop(state, rx, flushed_tx));
        Journal {
            tx,
            next: AtomicU64::new(1),
            flushed,
            durable,
        }
    }

    /// Queues `change`; returns its number for [`Journal::wait_flushed`].
    pub fn record(&self, change: StateChange) -> u64 {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if self.tx.send((n, change)).is_err() {
            tracing::error!("scheduler state writer has stopped; a change was not recorded");
        }
        n
    }

    /// Waits until every change recorded so far is applied (if the state is durable); fails
    /// after `limit`.
    pub async fn flush(&self, limit: Duration) -> Result<(), StateError> {
        let last = self.next.load(Ordering::Relaxed).saturating_sub(1);
        self.wait_flushed(last, limit).await
    }

    /// Waits until change `n` (and every earlier one) is applied, if the state is durable;
    /// fails after `limit`.
    pub async fn wait_flushed(&self, n: u64, limit: Duration) -> Result<(), StateError> {
        if !self.durable {
            return Ok(());
        }
        let mut flushed = self.flushed.clone();
        let outcome = tokio::time::timeout(limit, flushed.wait_for(|&done| done >= n))
            .await
            .map(|r| r.map(|_| ()));
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StateError::Unavailable(
                "the state writer stopped before the operation was recorded".into(),
            )),
            Err(_) => Err(StateError::Unavailable(format!(
                "the operation was not recorded within {limit:?}; it stays queued and is \
                 recorded once the state store answers"
            ))),
        }
    }
}

/// Applies changes in batches, retrying a failed batch (with back-off) until it succeeds so
/// nothing is lost or reordered while the store is briefly unavailable.
async fn write_loop(
    state: Arc<dyn SchedulerState>,
    mut rx: mpsc::UnboundedReceiver<(u64, StateChange)>,
    flushed: watch::Sender<u64>,
) {
    let mut received = Vec::with_capacity(MAX_BATCH);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        received.clear();
        if rx.recv_many(&mut received, MAX_BATCH).await == 0 {
            return;
        }
        let last = received.last().map(|(n, _)| *n).unwrap_or(0);
        batch.clear();
        batch.extend(received.drain(..).map(|(_, change)| change));
        let mut backoff = Duration::from_millis(50);
        loop {
            match state.apply(&batch).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, changes = batch.len(), kind = state.kind(),
                        "writing scheduler state failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        flushed.send_replace(last);
    }
}
