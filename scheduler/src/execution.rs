//! The REAPI Execution service: Execute and WaitExecution.
//!
//! Execute checks the action cache (unless `skip_cache_lookup`), joins an identical in-flight
//! operation (same instance and action digest, never `do_not_cache`), checks that the Action,
//! Command and every input blob are in the CAS (`FAILED_PRECONDITION` with a
//! `PreconditionFailure` otherwise), queues the action, and streams the operation's updates
//! (QUEUED, EXECUTING, COMPLETED) until it is done. WaitExecution streams the same updates of
//! an operation by name, e.g. after the client's Execute stream broke or the scheduler
//! restarted.

use std::pin::Pin;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::longrunning::Operation;
use bytes::Bytes;
use cas::service::Storage;
use cas::Digest;
use futures::{Stream, StreamExt as _};
use prost::Message as _;
use reapi::execution_server::{Execution, ExecutionServer};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::action_cache::ResultCache;
use crate::inputs;
use crate::metrics::observe;
use crate::operations;
use crate::request_metadata;
use crate::scheduling::{NewOperation, Scheduler, Subscription};

/// A stream of operation updates, ending with the finished operation.
pub type OperationStream = Pin<Box<dyn Stream<Item = Result<Operation, Status>> + Send>>;

/// The Execution service over a scheduler and the storage it shares with the CAS services.
#[derive(Clone, Debug)]
pub struct ExecutionService {
    scheduler: Scheduler,
    storage: Storage,
    results: ResultCache,
}

/// Refuses every digest function but SHA-256 (UNKNOWN means "infer": ours are all SHA-256).
pub fn check_digest_function(value: i32) -> Result<(), Status> {
    use reapi::digest_function::Value;
    match Value::try_from(value) {
        Ok(Value::Unknown | Value::Sha256) => Ok(()),
        Ok(other) => Err(Status::invalid_argument(format!(
            "digest function {} is not supported; this server only uses SHA256",
            other.as_str_name()
        ))),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown digest function {value}; this server only uses SHA256"
        ))),
    }
}

/// Streams `sub`'s updates: its current state at once, then every change, ending after the
/// update with `done = true`. Rapid changes coalesce (a client may not see EXECUTING for an
/// action that finishes at once); the final state is always sent.
pub fn operation_stream(sub: Subscription) -> OperationStream {
    let Subscription {
        name,
        action_digest,
        updates,
        ..
    } = sub;
    Box::pin(futures::stream::unfold(
        (updates, true, false),
        move |(mut rx, first, finished)| {
            let name = name.clone();
            async move {
                if finished {
                    return None;
                }
                if !first && rx.changed().await.is_err() {
                    return None;
                }
                let status = rx.borrow_and_update().clone();
                let done = status.is_done();
                let op = operations::operation(&name, &action_digest, &status);
                Some((Ok(op), (rx, false, done)))
            }
        },
    ))
}

/// `stream`, logging the operation's outcome in `span` when its last update passes.
fn logged(stream: OperationStream, span: tracing::Span) -> OperationStream {
    Box::pin(stream.inspect(move |item| {
        let Ok(op) = item else { return };
        if !op.done {
            return;
        }
        let response = operations::execute_response(op);
        let code = response
            .as_ref()
            .and_then(|r| r.status.as_ref())
            .map_or(0, |s| s.code);
        let exit_code = response
            .as_ref()
            .and_then(|r| r.result.as_ref())
            .map(|r| r.exit_code);
        let cached = response.as_ref().is_some_and(|r| r.cached_result);
        span.in_scope(
            || tracing::info!(operation = %op.name, code, ?exit_code, cached, "operation finished"),
        );
    }))
}

impl ExecutionService {
    /// A service queueing on `scheduler`, loading Actions from `storage`'s CAS and looking
    /// results up in `results`.
    pub fn new(scheduler: Scheduler, storage: Storage, results: ResultCache) -> Self {
        ExecutionService {
            scheduler,
            storage,
            results,
        }
    }

    /// The tonic server of this service.
    pub fn into_server(self) -> ExecutionServer<Self> {
        ExecutionServer::new(self)
    }

    /// Everything Execute does before streaming: the operation to stream.
    async fn start(
        &self,
        req: reapi::ExecuteRequest,
        request_metadata: Bytes,
    ) -> Result<Subscription, Status> {
        check_digest_function(req.digest_function)?;
        let digest = Digest::from_proto(req.action_digest.as_ref())
            .map_err(|e| Status::invalid_argument(format!("action_digest: {e}")))?;
        let instance = req.instance_name;
        if !req.skip_cache_lookup {
            if let Some(result) = self.results.lookup(&instance, &digest).await {
                let response = reapi::ExecuteResponse {
                    result: Some(result),
                    cached_result: true,
                    ..Default::default()
                };
                return Ok(self.scheduler.complete_cached(&instance, digest, response));
            }
        }
        if let Some(sub) = self.scheduler.join(&instance, &digest) {
            return Ok(sub);
        }
        let loaded = inputs::load_action(&*self.storage.cas, &digest).await?;
        let timeout = self.scheduler.config().effective_timeout(loaded.timeout);
        let new = NewOperation {
            instance_name: instance,
            action_digest: digest,
            action: loaded.action_bytes,
            command: loaded.command_bytes,
            platform: loaded.platform,
            priority: req.execution_policy.map_or(0, |p| p.priority),
            do_not_cache: loaded.action.do_not_cache,
            timeout,
            request_metadata,
        };
        Ok(self.scheduler.submit(new).await?)
    }
}

#[tonic::async_trait]
impl Execution for ExecutionService {
    type ExecuteStream = OperationStream;

    async fn execute(
        &self,
        request: Request<reapi::ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let meta = request_metadata::from_headers(request.metadata());
        let req = request.into_inner();
        let action = req
            .action_digest
            .as_ref()
            .map(|d| format!("{}/{}", d.hash, d.size_bytes))
            .unwrap_or_default();
        let span = request_metadata::span("Execute", meta.as_ref(), &action);
        let encoded = meta
            .map(|m| Bytes::from(m.encode_to_vec()))
            .unwrap_or_default();
        let started = observe("Execution.Execute", self.start(req, encoded))
            .instrument(span.clone())
            .await;
        let sub = match started {
            Ok(sub) => sub,
            Err(status) => {
                span.in_scope(|| tracing::info!(code = ?status.code(), message = status.message(), "Execute refused"));
                return Err(status);
            }
        };
        span.in_scope(
            || tracing::info!(operation = %sub.name, merged = sub.merged, "Execute accepted"),
        );
        Ok(Response::new(logged(operation_stream(sub), span)))
    }

    type WaitExecutionStream = OperationStream;

    async fn wait_execution(
        &self,
        request: Request<reapi::WaitExecutionRequest>,
    ) -> Result<Response<Self::WaitExecutionStream>, Status> {
        let name = request.into_inner().name;
        let sub = observe("Execution.WaitExecution", async {
            self.scheduler
                .subscribe(&name)
                .await?
                .ok_or_else(|| Status::not_found(format!("no operation named {name:?}")))
        })
        .await?;
        Ok(Response::new(operation_stream(sub)))
    }
}
