//! The worker side of the farm's worker protocol (`farm.worker.v1.WorkerSessions`): one
//! long-lived bidirectional stream to the scheduler.
//!
//! A session sends `Hello` (worker id, platform, slots), waits for `Welcome`, then sends a
//! `KeepAlive` listing the leases still running at once and at the interval `Welcome` asks for.
//! Each `Lease` runs in its own task (the executor bounds how many run at once); its stages are
//! reported as `LeaseProgress` and its end as a `LeaseResult`. `CancelLease` kills the lease's
//! sandbox. A lease that cannot even be decoded is answered with an error status, never a crash.
//!
//! When the stream drops, leases keep running and their results wait for the next session,
//! which is opened again with exponential backoff (100 ms to `max_backoff`, jittered). A lease
//! leaves the keep-alive list only once its result has been handed to the stream, so the
//! scheduler never requeues a lease whose result is on its way.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2::ExecuteResponse;
use prost::Message as _;
use scheduler::protocol::worker_sessions_client::WorkerSessionsClient;
use scheduler::protocol::{
    scheduler_message, worker_message, Hello, KeepAlive, Lease, LeaseProgress, LeaseResult,
    Property, SchedulerMessage, WorkerMessage,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::Instrument as _;

use crate::executor::{rpc_status, Executor, Job, Stage};

/// Largest protocol message sent or accepted (a lease carries an Action and a Command).
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// How long the scheduler has to answer `Hello` with `Welcome`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep-alive interval when `Welcome` names none.
const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(10);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// A session that lasted this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(10);

/// Who this worker is and where its scheduler is.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The scheduler's URL (`http://host:port`).
    pub scheduler_url: String,
    /// Stable across reconnects of this process.
    pub worker_id: String,
    /// Advertised platform properties (see [`crate::platform::properties`]).
    pub platform: Vec<(String, String)>,
    /// Actions run at once (as the executor was configured).
    pub slots: u32,
    pub version: String,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect to the scheduler: {0}")]
    Connect(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the session stream failed: {0}")]
    Stream(#[from] Status),
    #[error("the session stream closed")]
    Closed,
}

/// The worker's protocol state, kept across sessions.
struct Worker {
    config: SessionConfig,
    executor: Arc<Executor>,
    /// Leases running (or finished with a result not yet handed to a stream).
    active: HashMap<String, CancellationToken>,
    outbox_tx: mpsc::UnboundedSender<WorkerMessage>,
    outbox_rx: mpsc::UnboundedReceiver<WorkerMessage>,
    /// Results a broken stream refused, sent first on the next session.
    unsent: VecDeque<WorkerMessage>,
}

/// Serves leases until `shutdown` fires, reconnecting whenever the session drops. On
/// shutdown every running lease is cancelled.
pub async fn run(config: SessionConfig, executor: Arc<Executor>, shutdown: CancellationToken) {
    let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();
    let mut worker = Worker {
        config,
        executor,
        active: HashMap::new(),
        outbox_tx,
        outbox_rx,
        unsent: VecDeque::new(),
    };
    let mut backoff = MIN_BACKOFF;
    loop {
        let started = Instant::now();
        let ended = tokio::select! {
            r = worker.session() => r,
            _ = shutdown.cancelled() => break,
        };
        match ended {
            Ok(()) => tracing::info!("the scheduler ended the session"),
            Err(e) => tracing::warn!(error = %e, "worker session lost"),
        }
        if started.elapsed() >= STABLE_SESSION {
            backoff = MIN_BACKOFF;
        }
        let delay = jitter(backoff);
        backoff = (backoff * 2).min(worker.config.max_backoff.max(MIN_BACKOFF));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    for token in worker.active.values() {
        token.cancel();
    }
}

/// `d` scaled by a pseudo-random factor in [0.5, 1.5), so restarted workers spread out.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d.mul_f64(0.5 + f64::from(nanos % 1000) / 1000.0)
}

fn message(kind: worker_message::Kind) -> WorkerMessage {
    WorkerMessage { kind: Some(kind) }
}

impl Worker {
    fn hello(&self) -> WorkerMessage {
        message(worker_message::Kind::Hello(Hello {
            worker_id: self.config.worker_id.clone(),
            platform: self
                .config
                .platform
                .iter()
                .map(|(name, value)| Property {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            slots: self.config.slots,
            version: self.config.version.clone(),
        }))
    }

    fn keep_alive(&self) -> WorkerMessage {
        let mut ids: Vec<String> = self.active.keys().cloned().collect();
        ids.sort();
        message(worker_message::Kind::KeepAlive(KeepAlive {
            active_lease_ids: ids,
        }))
    }

    /// One session, from connecting to the stream's end.
    async fn session(&mut self) -> Result<(), SessionError> {
        let channel = cas::store::grpc::endpoint(&self.config.scheduler_url)
            .map_err(|e| SessionError::Connect(e.to_string()))?
            .connect()
            .await
            .map_err(|e| SessionError::Connect(e.to_string()))?;
        let mut client = WorkerSessionsClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel::<WorkerMessage>(256);
        tx.send(self.hello())
            .await
            .map_err(|_| SessionError::Closed)?;
        let mut inbound = client
            .open_session(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = tokio::time::timeout(WELCOME_TIMEOUT, inbound.message())
            .await
            .map_err(|_| SessionError::Protocol("no Welcome from the scheduler".into()))??;
        let welcome = match first.and_then(|m| m.kind) {
            Some(scheduler_message::Kind::Welcome(w)) => w,
            other => {
                return Err(SessionError::Protocol(format!(
                    "expected Welcome, got {other:?}"
                )))
            }
        };
        let interval = match welcome.keep_alive_interval_ms {
            0 => DEFAULT_KEEP_ALIVE,
            ms => Duration::from_millis(u64::from(ms).max(50)),
        };
        tracing::info!(
            worker_id = %welcome.worker_id,
            keep_alive_ms = interval.as_millis() as u64,
            running = self.active.len(),
            "worker session open"
        );
        while let Some(m) = self.unsent.pop_front() {
            self.forward(&tx, m).await?;
        }
        tx.send(self.keep_alive())
            .await
            .map_err(|_| SessionError::Closed)?;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                out = self.outbox_rx.recv() => {
                    // `self` holds a sender, so the outbox never ends.
                    let Some(out) = out else { return Err(SessionError::Closed) };
                    self.forward(&tx, out).await?;
                }
                msg = inbound.message() => match msg? {
                    Some(m) => self.handle(m),
                    None => return Ok(()),
                },
                _ = ticker.tick() => {
                    tx.send(self.keep_alive()).await.map_err(|_| SessionError::Closed)?;
                }
            }
        }
    }

    /// Hands a message to the stream; a result leaves the active list once handed over, and
    /// is kept for the next session if the stream refuses it.
    async fn forward(
        &mut self,
        tx: &mpsc::Sender<WorkerMessage>,
        out: WorkerMessage,
    ) -> Result<(), SessionError> {
        let finished = match &out.kind {
            Some(worker_message::Kind::Result(r)) => Some(r.lease_id.clone()),
            _ => None,
        };
        match tx.send(out).await {
            Ok(()) => {
                if let Some(id) = finished {
                    self.active.remove(&id);
                }
                Ok(())
            }
            Err(mpsc::error::SendError(out)) => {
                if finished.is_some() {
                    self.unsent.push_back(out);
                }
                Err(SessionError::Closed)
            }
        }
    }

    fn handle(&mut self, msg: SchedulerMessage) {
        match msg.kind {
            Some(scheduler_message::Kind::Lease(lease)) => self.start(lease),
            Some(scheduler_message::Kind::Cancel(c)) => {
                if let Some(token) = self.active.get(&c.lease_id) {
                    tracing::info!(lease = %c.lease_id, "lease cancelled by the scheduler");
                    token.cancel();
                }
            }
            Some(scheduler_message::Kind::Welcome(_)) | None => {}
        }
    }

    /// Runs a lease in its own task; its result goes to the outbox whatever happens to it.
    fn start(&mut self, lease: Lease) {
        if self.active.contains_key(&lease.lease_id) {
            tracing::warn!(lease = %lease.lease_id, "duplicate lease ignored");
            return;
        }
        let token = CancellationToken::new();
        self.active.insert(lease.lease_id.clone(), token.clone());
        let executor = self.executor.clone();
        let outbox = self.outbox_tx.clone();
        tokio::spawn(async move {
            let id = lease.lease_id.clone();
            let runner = tokio::spawn(run_lease(executor, lease, token, outbox.clone()));
            let response = match runner.await {
                Ok(r) => r,
                Err(e) => {
                    error_response(Status::internal(format!("the action runner failed: {e}")))
                }
            };
            let _ = outbox.send(message(worker_message::Kind::Result(LeaseResult {
                lease_id: id,
                execute_response: response.encode_to_vec(),
            })));
        });
    }
}

/// Decodes and executes one lease.
async fn run_lease(
    executor: Arc<Executor>,
    lease: Lease,
    cancel: CancellationToken,
    outbox: mpsc::UnboundedSender<WorkerMessage>,
) -> ExecuteResponse {
    // The client's ids, so this action's log lines can be found from its build.
    let meta = scheduler::request_metadata::decode(&lease.request_metadata);
    let action = format!("{}/{}", lease.action_hash, lease.action_size);
    let span = scheduler::request_metadata::span("Lease", meta.as_ref(), &action);
    run_lease_in_span(executor, lease, cancel, outbox)
        .instrument(span)
        .await
}

async fn run_lease_in_span(
    executor: Arc<Executor>,
    lease: Lease,
    cancel: CancellationToken,
    outbox: mpsc::UnboundedSender<WorkerMessage>,
) -> ExecuteResponse {
    let job = match Job::decode(
        &lease.instance_name,
        &lease.action_hash,
        lease.action_size,
        &lease.action,
        &lease.command,
        lease.timeout_ms,
    ) {
        Ok(job) => job,
        Err(status) => {
            tracing::warn!(lease = %lease.lease_id, error = %status.message(), "bad lease");
            return error_response(status);
        }
    };
    let id = lease.lease_id;
    tracing::info!(lease = %id, "lease started");
    let progress = |stage: Stage| {
        let stage = match stage {
            Stage::FetchingInputs => scheduler::protocol::Stage::FetchingInputs,
            Stage::Executing => scheduler::protocol::Stage::Executing,
            Stage::UploadingOutputs => scheduler::protocol::Stage::UploadingOutputs,
        };
        let _ = outbox.send(message(worker_message::Kind::Progress(LeaseProgress {
            lease_id: id.clone(),
            stage: stage as i32,
        })));
    };
    let response = executor.execute(&job, &cancel, &progress).await;
    tracing::info!(
        lease = %id,
        code = response.status.as_ref().map_or(0, |s| s.code),
        exit_code = response.result.as_ref().map_or(0, |r| r.exit_code),
        "lease finished"
    );
    response
}

/// A response carrying only a status.
fn error_response(status: Status) -> ExecuteResponse {
    ExecuteResponse {
        status: Some(rpc_status(status)),
        ..Default::default()
    }
}
