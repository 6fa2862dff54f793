//! Thin REAPI calls shared by the scenarios: batch uploads with their per-blob statuses, a
//! setup upload that must fully succeed, action-cache writes and Execute followed to its end.

use std::future::Future;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::longrunning::{operation, Operation};
use cas::Digest;
use tonic::Code;

use crate::client::Clients;

/// Why a run could not be set up (before the clock starts). Failures during the measured
/// part are counted, never errors.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{what}: {code}: {message}")]
    Rpc {
        what: String,
        code: &'static str,
        message: String,
    },
    #[error("{what}: no answer within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("{0}")]
    Other(String),
}

/// Runs a setup call with a timeout, naming it in errors.
pub async fn setup<T>(
    what: &str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, SetupError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(s)) => Err(SetupError::Rpc {
            what: what.to_string(),
            code: cas::service::code_name(s.code()),
            message: s.message().to_string(),
        }),
        Err(_) => Err(SetupError::Timeout {
            what: what.to_string(),
            timeout,
        }),
    }
}

/// The code name of a `google.rpc.Status` (absent = OK).
pub fn status_name(status: Option<&bazel_remote_apis::google::rpc::Status>) -> &'static str {
    cas::service::code_name(Code::from_i32(status.map_or(0, |s| s.code)))
}

/// Per-blob failures of a batch answer, as code names.
pub type BlobFailures = Vec<&'static str>;

/// One BatchUpdateBlobs of `blobs`; the failed blobs' status code names.
pub async fn batch_update(
    clients: &Clients,
    instance: &str,
    blobs: Vec<(Digest, Vec<u8>)>,
) -> Result<BlobFailures, tonic::Status> {
    let request = reapi::BatchUpdateBlobsRequest {
        instance_name: instance.to_string(),
        requests: blobs
            .into_iter()
            .map(|(d, data)| reapi::batch_update_blobs_request::Request {
                digest: Some(d.to_proto()),
                data,
                compressor: reapi::compressor::Value::Identity as i32,
            })
            .collect(),
        digest_function: reapi::digest_function::Value::Sha256 as i32,
    };
    let response = clients
        .cas
        .clone()
        .batch_update_blobs(request)
        .await?
        .into_inner();
    Ok(response
        .responses
        .iter()
        .map(|r| status_name(r.status.as_ref()))
        .filter(|c| *c != "OK")
        .collect())
}

/// Uploads `blobs` in batches of at most `max_batch_bytes`, every blob of which must succeed.
pub async fn upload_all(
    clients: &Clients,
    instance: &str,
    blobs: Vec<(Digest, Vec<u8>)>,
    max_batch_bytes: u64,
    timeout: Duration,
) -> Result<(), SetupError> {
    let mut batch = Vec::new();
    let mut bytes = 0u64;
    let mut batches = Vec::new();
    for (d, data) in blobs {
        if !batch.is_empty() && bytes + d.size() > max_batch_bytes {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += d.size();
        batch.push((d, data));
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    for batch in batches {
        let n = batch.len();
        let failed = setup(
            "uploading setup blobs (BatchUpdateBlobs)",
            timeout,
            batch_update(clients, instance, batch),
        )
        .await?;
        if let Some(code) = failed.first() {
            return Err(SetupError::Other(format!(
                "uploading setup blobs: {} of {n} blobs failed, the first with {code}",
                failed.len()
            )));
        }
    }
    Ok(())
}

/// UpdateActionResult of `result` under `action`.
pub async fn update_action_result(
    clients: &Clients,
    instance: &str,
    action: &Digest,
    result: reapi::ActionResult,
) -> Result<reapi::ActionResult, tonic::Status> {
    clients
        .ac
        .clone()
        .update_action_result(reapi::UpdateActionResultRequest {
            instance_name: instance.to_string(),
            action_digest: Some(action.to_proto()),
            action_result: Some(result),
            results_cache_policy: None,
            digest_function: reapi::digest_function::Value::Sha256 as i32,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// How long to wait for the end of an operation stream after its `done` update.
const STREAM_END_WAIT: Duration = Duration::from_secs(1);

/// Executes `action` and follows its operation stream to the end: the final ExecuteResponse,
/// or the failure as a status (the call's own, an operation error, or a stream that ended
/// before the operation was done, as `UNAVAILABLE`).
pub async fn execute(
    clients: &Clients,
    instance: &str,
    action: &Digest,
    skip_cache_lookup: bool,
) -> Result<reapi::ExecuteResponse, tonic::Status> {
    let request = reapi::ExecuteRequest {
        instance_name: instance.to_string(),
        skip_cache_lookup,
        action_digest: Some(action.to_proto()),
        digest_function: reapi::digest_function::Value::Sha256 as i32,
        ..Default::default()
    };
    let mut stream = clients.exec.clone().execute(request).await?.into_inner();
    let mut last: Option<Operation> = None;
    while let Some(op) = stream.message().await? {
        let done = op.done;
        last = Some(op);
        if done {
            // Read on to the end of the stream (the server ends it after `done`): dropping it
            // early resets the HTTP/2 stream, and servers guarding against rapid resets answer
            // a flood of those with ENHANCE_YOUR_CALM (RESOURCE_EXHAUSTED) for everyone.
            let _ = tokio::time::timeout(STREAM_END_WAIT, stream.message()).await;
            break;
        }
    }
    let Some(op) = last.filter(|op| op.done) else {
        return Err(tonic::Status::unavailable(
            "the operation stream ended before the operation was done",
        ));
    };
    if let Some(operation::Result::Error(e)) = &op.result {
        return Err(tonic::Status::new(
            Code::from_i32(e.code),
            e.message.clone(),
        ));
    }
    scheduler::operations::execute_response(&op)
        .ok_or_else(|| tonic::Status::internal("a finished operation without an ExecuteResponse"))
}
