//! The `WorkerSessions` service: the scheduler's side of the worker protocol
//! (`proto/farm/worker/v1/worker.proto`).
//!
//! A session starts with the worker's `Hello` (answered with `Welcome`), then leases flow out
//! and keep-alives, progress and results flow in on one bidirectional stream. The session ends
//! when either side closes the stream (its leases are requeued at once), when the worker is
//! silent for the lease timeout (requeued too), or when the same worker id opens a new session
//! (the leases move to the new one). A result on a lease the scheduler no longer holds for
//! that worker is dropped. A successful result (exit code 0, OK status, not `do_not_cache`) is
//! written to the action cache before its operation completes, so a client that sees the
//! operation finish always finds the result cached.

use std::pin::Pin;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::action_cache::ResultCache;
use crate::metrics::{self, observe};
use crate::operations;
use crate::protocol::worker_message::Kind;
use crate::protocol::worker_sessions_server::{WorkerSessions, WorkerSessionsServer};
use crate::protocol::{LeaseResult, SchedulerMessage, WorkerMessage};
use crate::queue::SessionId;
use crate::scheduling::{LeaseContext, Scheduler};

/// Largest worker-protocol message (a LeaseResult carries an ExecuteResponse, which may inline
/// stdout/stderr; a Lease carries a Command).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The stream of scheduler messages one session receives.
pub type SessionStream = Pin<Box<dyn Stream<Item = Result<SchedulerMessage, Status>> + Send>>;

/// The worker-session service.
#[derive(Clone, Debug)]
pub struct WorkerService {
    scheduler: Scheduler,
    results: ResultCache,
}

impl WorkerService {
    /// A service leasing `scheduler`'s work and writing successful results to `results`.
    pub fn new(scheduler: Scheduler, results: ResultCache) -> Self {
        WorkerService { scheduler, results }
    }

    /// The tonic server of this service.
    pub fn into_server(self) -> WorkerSessionsServer<Self> {
        WorkerSessionsServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Reads the Hello, registers the session and starts its reader.
    async fn open(&self, mut inbound: Streaming<WorkerMessage>) -> Result<SessionStream, Status> {
        let wait = self.scheduler.config().lease_timeout;
        let first = tokio::time::timeout(wait, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded(format!("no Hello within {wait:?}")))??;
        let hello = match first {
            Some(WorkerMessage {
                kind: Some(Kind::Hello(hello)),
            }) => hello,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message of a worker session must be Hello",
                ))
            }
            None => {
                return Err(Status::cancelled(
                    "the worker closed its stream before Hello",
                ))
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let connected = self
            .scheduler
            .connect(&hello, tx)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let reader = SessionReader {
            scheduler: self.scheduler.clone(),
            results: self.results.clone(),
            session: connected.session,
            worker_id: hello.worker_id,
        };
        tokio::spawn(reader.run(inbound, connected.closed));
        Ok(Box::pin(UnboundedReceiverStream::new(rx).map(Ok)))
    }
}

#[tonic::async_trait]
impl WorkerSessions for WorkerService {
    type OpenSessionStream = SessionStream;

    async fn open_session(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::OpenSessionStream>, Status> {
        observe(
            "WorkerSessions.OpenSession",
            self.open(request.into_inner()),
        )
        .await
        .map(Response::new)
    }
}

/// Reads one session's messages until the stream or the session ends.
struct SessionReader {
    scheduler: Scheduler,
    results: ResultCache,
    session: SessionId,
    worker_id: String,
}

impl SessionReader {
    async fn run(
        self,
        mut inbound: Streaming<WorkerMessage>,
        mut closed: tokio::sync::oneshot::Receiver<()>,
    ) {
        loop {
            let message = tokio::select! {
                m = inbound.message() => m,
                _ = &mut closed => {
                    tracing::debug!(session = self.session, "session ended by the scheduler");
                    return;
                }
            };
            match message {
                Ok(Some(WorkerMessage { kind: Some(kind) })) => self.handle(kind).await,
                Ok(Some(WorkerMessage { kind: None })) => self.scheduler.touch(self.session),
                Ok(None) => break,
                Err(status) => {
                    tracing::info!(session = self.session, worker = self.worker_id,
                        error = %status, "worker stream broke");
                    break;
                }
            }
        }
        self.scheduler.disconnect(self.session);
    }

    async fn handle(&self, kind: Kind) {
        match kind {
            Kind::Hello(_) => {
                tracing::warn!(
                    worker = self.worker_id,
                    "ignoring a second Hello on one session"
                );
                self.scheduler.touch(self.session);
            }
            Kind::KeepAlive(k) => self.scheduler.keep_alive(self.session, &k.active_lease_ids),
            Kind::Progress(p) => self.scheduler.progress(self.session, &p.lease_id),
            Kind::Result(r) => self.result(r).await,
        }
    }

    async fn result(&self, result: LeaseResult) {
        self.scheduler.touch(self.session);
        let Some(ctx) = self
            .scheduler
            .lease_context(&self.worker_id, &result.lease_id)
        else {
            metrics::STALE_RESULTS.inc();
            tracing::info!(
                worker = self.worker_id,
                lease = result.lease_id,
                "dropping a result for a lease no longer held (requeued, cancelled or timed out)"
            );
            return;
        };
        let response = match reapi::ExecuteResponse::decode(&result.execute_response[..]) {
            Ok(r) => r,
            Err(e) => operations::failure(
                tonic::Code::Internal,
                format!(
                    "worker {} sent an undecodable ExecuteResponse for action {}: {e}",
                    self.worker_id, ctx.action_digest
                ),
            ),
        };
        if let Some(action_result) = cacheable(&ctx, &response) {
            write_action_cache(&self.results, &ctx, action_result).await;
        }
        self.scheduler
            .finish_lease(&self.worker_id, &result.lease_id, response);
    }
}

/// The ActionResult to cache, if this response may be cached: OK status, exit code 0, not a
/// cached result itself, and the action not `do_not_cache`.
fn cacheable<'a>(
    ctx: &LeaseContext,
    response: &'a reapi::ExecuteResponse,
) -> Option<&'a reapi::ActionResult> {
    let ok = response.status.as_ref().is_none_or(|s| s.code == 0);
    let result = response.result.as_ref()?;
    (ok && !ctx.do_not_cache && !response.cached_result && result.exit_code == 0).then_some(result)
}

/// How long writing one action-cache entry may take before the result is delivered uncached.
const CACHE_WRITE_LIMIT: Duration = Duration::from_secs(30);

/// Stores `result` in the action cache; failures are logged (the client still gets its
/// result, it is just not cached).
async fn write_action_cache(
    results: &ResultCache,
    ctx: &LeaseContext,
    result: &reapi::ActionResult,
) {
    let write = results.store(&ctx.instance_name, &ctx.action_digest, result);
    match tokio::time::timeout(CACHE_WRITE_LIMIT, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(action = %ctx.action_digest, error = %e, "writing the action cache failed")
        }
        Err(_) => tracing::warn!(action = %ctx.action_digest, "writing the action cache timed out"),
    }
}
