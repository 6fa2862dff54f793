//! Operations as clients see them: names, stages, and the `google.longrunning.Operation`
//! messages Execute, WaitExecution and the Operations service send.
//!
//! - Names are `{instance}/operations/{uuid}` (`operations/{uuid}` for the empty instance).
//! - `metadata` is always an `ExecuteOperationMetadata` with the stage (QUEUED, EXECUTING,
//!   COMPLETED), the action digest and the SHA256 digest function.
//! - A finished operation has `done = true` and its `response` is an `ExecuteResponse` packed as
//!   `Any` ([`EXECUTE_RESPONSE_TYPE_URL`]); failures to run the action (timeouts, lost workers,
//!   cancellation, no matching worker) are in `ExecuteResponse.status`, never in the Operation's
//!   `error`, as REAPI requires.

use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::longrunning::{operation, Operation};
use bazel_remote_apis::google::protobuf::Any;
use bazel_remote_apis::google::rpc;
use cas::Digest;
use prost::Message;

/// `Any.type_url` of the `ExecuteResponse` in a finished operation's `response`.
pub const EXECUTE_RESPONSE_TYPE_URL: &str =
    "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse";
/// `Any.type_url` of every operation's `metadata`.
pub const EXECUTE_METADATA_TYPE_URL: &str =
    "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteOperationMetadata";

/// The separator between an instance name and an operation's id.
const OPERATIONS_SEGMENT: &str = "operations/";

/// A fresh operation name in `instance`.
pub fn new_operation_name(instance: &str) -> String {
    let id = uuid::Uuid::new_v4();
    if instance.is_empty() {
        format!("{OPERATIONS_SEGMENT}{id}")
    } else {
        format!("{instance}/{OPERATIONS_SEGMENT}{id}")
    }
}

/// The instance name an operation name was made in, if it has our form.
pub fn instance_of(name: &str) -> Option<&str> {
    if name.starts_with(OPERATIONS_SEGMENT) {
        return Some("");
    }
    name.rsplit_once("/operations/")
        .map(|(instance, _)| instance)
}

/// Where an operation is, and its result once it has one.
#[derive(Clone, Debug, PartialEq)]
pub enum OpStatus {
    /// Waiting for a worker.
    Queued,
    /// Leased to a worker.
    Executing,
    /// Finished (successfully or not); the response is what clients receive.
    Completed(Arc<reapi::ExecuteResponse>),
}

impl OpStatus {
    /// Whether the operation has finished.
    pub fn is_done(&self) -> bool {
        matches!(self, OpStatus::Completed(_))
    }

    /// The REAPI stage of this status.
    pub fn stage(&self) -> reapi::execution_stage::Value {
        match self {
            OpStatus::Queued => reapi::execution_stage::Value::Queued,
            OpStatus::Executing => reapi::execution_stage::Value::Executing,
            OpStatus::Completed(_) => reapi::execution_stage::Value::Completed,
        }
    }
}

/// The `Operation` message for an operation named `name` running `action` in `status`.
pub fn operation(name: &str, action: &Digest, status: &OpStatus) -> Operation {
    let metadata = reapi::ExecuteOperationMetadata {
        stage: status.stage() as i32,
        action_digest: Some(action.to_proto()),
        digest_function: reapi::digest_function::Value::Sha256 as i32,
        ..Default::default()
    };
    let result = match status {
        OpStatus::Completed(response) => Some(operation::Result::Response(Any {
            type_url: EXECUTE_RESPONSE_TYPE_URL.to_string(),
            value: response.encode_to_vec(),
        })),
        _ => None,
    };
    Operation {
        name: name.to_string(),
        metadata: Some(Any {
            type_url: EXECUTE_METADATA_TYPE_URL.to_string(),
            value: metadata.encode_to_vec(),
        }),
        done: status.is_done(),
        result,
    }
}

/// The `ExecuteResponse` of a finished operation (`None` while it runs, or if the response is
/// not one).
pub fn execute_response(op: &Operation) -> Option<reapi::ExecuteResponse> {
    match &op.result {
        Some(operation::Result::Response(any)) if any.type_url == EXECUTE_RESPONSE_TYPE_URL => {
            reapi::ExecuteResponse::decode(&any.value[..]).ok()
        }
        _ => None,
    }
}

/// The `ExecuteOperationMetadata` of an operation, if it carries one.
pub fn execute_metadata(op: &Operation) -> Option<reapi::ExecuteOperationMetadata> {
    let any = op.metadata.as_ref()?;
    if any.type_url != EXECUTE_METADATA_TYPE_URL {
        return None;
    }
    reapi::ExecuteOperationMetadata::decode(&any.value[..]).ok()
}

/// A `google.rpc.Status` with `code` and `message` and no details.
pub fn rpc_status(code: tonic::Code, message: impl Into<String>) -> rpc::Status {
    rpc::Status {
        code: code as i32,
        message: message.into(),
        details: Vec::new(),
    }
}

/// An `ExecuteResponse` for an action that did not run to a result: no `ActionResult`, the
/// reason in `status` and `message`.
pub fn failure(code: tonic::Code, message: impl Into<String>) -> reapi::ExecuteResponse {
    let message = message.into();
    reapi::ExecuteResponse {
        status: Some(rpc_status(code, message.clone())),
        message,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_instance() {
        let n = new_operation_name("main");
        assert!(n.starts_with("main/operations/"), "{n}");
        assert_eq!(instance_of(&n), Some("main"));
        let n = new_operation_name("");
        assert!(n.starts_with("operations/"), "{n}");
        assert_eq!(instance_of(&n), Some(""));
        let n = new_operation_name("a/b");
        assert_eq!(instance_of(&n), Some("a/b"));
        assert_eq!(instance_of("bogus"), None);
    }

    #[test]
    fn finished_operations_carry_the_response() {
        let d = Digest::of(b"action");
        let q = operation("operations/x", &d, &OpStatus::Queued);
        assert!(!q.done && q.result.is_none());
        let meta = execute_metadata(&q).expect("metadata");
        assert_eq!(meta.stage, reapi::execution_stage::Value::Queued as i32);
        assert_eq!(meta.action_digest, Some(d.to_proto()));
        let resp = failure(tonic::Code::Cancelled, "cancelled");
        let c = operation(
            "operations/x",
            &d,
            &OpStatus::Completed(Arc::new(resp.clone())),
        );
        assert!(c.done);
        assert_eq!(execute_response(&c), Some(resp));
        let meta = execute_metadata(&c).expect("metadata");
        assert_eq!(meta.stage, reapi::execution_stage::Value::Completed as i32);
    }
}
