//! The google.longrunning Operations service over the scheduler's operations.
//!
//! - `GetOperation`: the latest state of an operation (live, or finished and still retained).
//! - `ListOperations`: operations whose name starts with `name` (e.g. `main/operations`; empty
//!   lists all), in name order, paged by `page_token` (the last name of the previous page);
//!   `filter` may be empty, `done=true` or `done=false`.
//! - `CancelOperation`: dequeues the operation or cancels its lease; it finishes with
//!   CANCELLED in its ExecuteResponse (for every client merged into it).
//! - `WaitOperation`: waits until done or `timeout` (at most [`MAX_WAIT`]).
//! - `DeleteOperation`: accepted for known operations and otherwise a no-op (finished
//!   operations are forgotten after the retention anyway).

use std::time::Duration;

use bazel_remote_apis::google::longrunning as lro;
use bazel_remote_apis::google::protobuf::Empty;
use lro::operations_server::{Operations, OperationsServer};
use tonic::{Request, Response, Status};

use crate::metrics::observe;
use crate::operations::operation;
use crate::scheduling::{Scheduler, Subscription};

/// ListOperations page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest ListOperations page.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Longest WaitOperation wait (and the default one).
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The Operations service.
#[derive(Clone, Debug)]
pub struct OperationsService {
    scheduler: Scheduler,
}

impl OperationsService {
    /// The Operations service over `scheduler`'s operations.
    pub fn new(scheduler: Scheduler) -> Self {
        OperationsService { scheduler }
    }

    /// The tonic server of this service.
    pub fn into_server(self) -> OperationsServer<Self> {
        OperationsServer::new(self)
    }

    async fn find(&self, name: &str) -> Result<Subscription, Status> {
        self.scheduler
            .subscribe(name)
            .await?
            .ok_or_else(|| Status::not_found(format!("no operation named {name:?}")))
    }
}

/// The latest `Operation` of a subscription.
fn latest(sub: &Subscription) -> lro::Operation {
    operation(&sub.name, &sub.action_digest, &sub.updates.borrow())
}

/// Parses a ListOperations filter: empty, `done=true` or `done=false`.
fn parse_filter(filter: &str) -> Result<Option<bool>, Status> {
    match filter.replace(' ', "").as_str() {
        "" => Ok(None),
        "done=true" => Ok(Some(true)),
        "done=false" => Ok(Some(false)),
        other => Err(Status::invalid_argument(format!(
            "unsupported filter {other:?}; use \"\", \"done=true\" or \"done=false\""
        ))),
    }
}

#[tonic::async_trait]
impl Operations for OperationsService {
    async fn list_operations(
        &self,
        request: Request<lro::ListOperationsRequest>,
    ) -> Result<Response<lro::ListOperationsResponse>, Status> {
        let req = request.into_inner();
        observe("Operations.ListOperations", async {
            let done = parse_filter(&req.filter)?;
            let limit = match req.page_size {
                n if n < 0 => {
                    return Err(Status::invalid_argument(format!("negative page_size {n}")))
                }
                0 => DEFAULT_PAGE_SIZE,
                n => (n as usize).min(MAX_PAGE_SIZE),
            };
            let after = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
            let (operations, next) = self.scheduler.list(&req.name, done, after, limit);
            Ok(lro::ListOperationsResponse {
                operations,
                next_page_token: next.unwrap_or_default(),
                unreachable: Vec::new(),
            })
        })
        .await
        .map(Response::new)
    }

    async fn get_operation(
        &self,
        request: Request<lro::GetOperationRequest>,
    ) -> Result<Response<lro::Operation>, Status> {
        let name = request.into_inner().name;
        observe("Operations.GetOperation", async {
            Ok(latest(&self.find(&name).await?))
        })
        .await
        .map(Response::new)
    }

    async fn delete_operation(
        &self,
        request: Request<lro::DeleteOperationRequest>,
    ) -> Result<Response<Empty>, Status> {
        let name = request.into_inner().name;
        observe("Operations.DeleteOperation", async {
            self.find(&name).await?;
            Ok(Empty {})
        })
        .await
        .map(Response::new)
    }

    async fn cancel_operation(
        &self,
        request: Request<lro::CancelOperationRequest>,
    ) -> Result<Response<Empty>, Status> {
        let name = request.into_inner().name;
        observe("Operations.CancelOperation", async {
            if self.scheduler.cancel(&name) {
                Ok(Empty {})
            } else {
                Err(Status::not_found(format!("no operation named {name:?}")))
            }
        })
        .await
        .map(Response::new)
    }

    async fn wait_operation(
        &self,
        request: Request<lro::WaitOperationRequest>,
    ) -> Result<Response<lro::Operation>, Status> {
        let req = request.into_inner();
        observe("Operations.WaitOperation", async {
            let mut sub = self.find(&req.name).await?;
            let wait = match req.timeout {
                Some(t) if t.seconds > 0 || t.nanos > 0 => Duration::new(
                    t.seconds.max(0) as u64,
                    t.nanos.clamp(0, 999_999_999) as u32,
                )
                .min(MAX_WAIT),
                _ => MAX_WAIT,
            };
            let _ = tokio::time::timeout(wait, sub.updates.wait_for(|s| s.is_done())).await;
            Ok(latest(&sub))
        })
        .await
        .map(Response::new)
    }
}
