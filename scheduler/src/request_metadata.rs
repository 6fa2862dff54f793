//! REAPI `RequestMetadata`: the binary header clients attach to every call
//! (`build.bazel.remote.execution.v2.requestmetadata-bin`) naming the tool, its invocation and
//! the action. The scheduler logs Execute calls in a span carrying these ids and hands the
//! metadata to the worker with the lease, so one build can be followed across client,
//! scheduler and worker logs.

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use prost::Message as _;
use tonic::metadata::MetadataMap;

/// The gRPC metadata key (binary) of `RequestMetadata`.
pub const HEADER: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";

/// The `RequestMetadata` a request carries, if any (a malformed one is ignored: it is only
/// informational).
pub fn from_headers(headers: &MetadataMap) -> Option<reapi::RequestMetadata> {
    let value = headers.get_bin(HEADER)?;
    let bytes = value.to_bytes().ok()?;
    reapi::RequestMetadata::decode(&bytes[..]).ok()
}

/// Decodes metadata passed along encoded (empty: none).
pub fn decode(bytes: &[u8]) -> Option<reapi::RequestMetadata> {
    if bytes.is_empty() {
        return None;
    }
    reapi::RequestMetadata::decode(bytes).ok()
}

/// A span for work done on behalf of `meta` (fields empty when there is none).
pub fn span(
    name: &'static str,
    meta: Option<&reapi::RequestMetadata>,
    action: &str,
) -> tracing::Span {
    let m = meta.cloned().unwrap_or_default();
    let tool = m
        .tool_details
        .as_ref()
        .map(|t| format!("{} {}", t.tool_name, t.tool_version))
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        op = name,
        action = %action,
        tool = %tool,
        invocation = %m.tool_invocation_id,
        correlated = %m.correlated_invocations_id,
        target = %m.target_id,
        mnemonic = %m.action_mnemonic,
    )
}
