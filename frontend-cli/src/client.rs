//! The REAPI client `cargo farm` speaks to a farm (remote or embedded): CAS through
//! [`GrpcStore`], the ActionCache, and Execution.

use anyhow::{bail, Context as _, Result};
use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::longrunning::Operation;
use bytes::Bytes;
use cas::store::grpc::{GrpcStore, GrpcStoreOptions};
use cas::store::BlobStore as _;
use cas::Digest;
use prost::Message as _;
use reapi::action_cache_client::ActionCacheClient;
use reapi::execution_client::ExecutionClient;
use tonic::transport::Channel;

/// A connection to one farm endpoint and instance.
#[derive(Clone, Debug)]
pub struct FarmClient {
    pub url: String,
    pub store: GrpcStore,
    instance: String,
    channel: Channel,
    /// This build's id in every request's `RequestMetadata`.
    pub invocation_id: String,
}

/// What a request is about, for its `RequestMetadata` (the farm logs these ids).
#[derive(Clone, Copy, Debug)]
pub struct ActionLabel<'a> {
    /// e.g. `serde v1.0.228 (lib)`.
    pub target: &'a str,
    /// `Rustc` or `CargoBuildScriptRun`.
    pub mnemonic: &'a str,
}

impl FarmClient {
    /// Connects to `url` (`grpc://`, `http://` or `host:port`).
    pub async fn connect(url: &str, instance: &str) -> Result<FarmClient> {
        let options = GrpcStoreOptions {
            instance_name: instance.to_string(),
            ..GrpcStoreOptions::default()
        };
        let store = GrpcStore::connect(url, options)
            .await
            .with_context(|| format!("connecting to the farm at {url}"))?;
        let channel = store.channel();
        Ok(FarmClient {
            url: url.to_string(),
            store,
            instance: instance.to_string(),
            channel,
            invocation_id: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// `message` as a request carrying REAPI `RequestMetadata` for `action`.
    fn request<T>(&self, message: T, action: &Digest, label: ActionLabel<'_>) -> tonic::Request<T> {
        let meta = reapi::RequestMetadata {
            tool_details: Some(reapi::ToolDetails {
                tool_name: "cargo-farm".into(),
                tool_version: env!("CARGO_PKG_VERSION").into(),
            }),
            action_id: action.hash_hex(),
            tool_invocation_id: self.invocation_id.clone(),
            correlated_invocations_id: String::new(),
            action_mnemonic: label.mnemonic.into(),
            target_id: label.target.into(),
            configuration_id: String::new(),
        };
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert_bin(
            scheduler::request_metadata::HEADER,
            tonic::metadata::MetadataValue::from_bytes(&meta.encode_to_vec()),
        );
        request
    }

    fn action_cache(&self) -> ActionCacheClient<Channel> {
        ActionCacheClient::new(self.channel.clone())
            .max_decoding_message_size(cas::store::grpc::MAX_MESSAGE_BYTES)
    }

    /// The cached result of `action`, or `None` (NOT_FOUND, which includes results whose
    /// outputs the farm no longer has).
    pub async fn cached_result(
        &self,
        action: &Digest,
        label: ActionLabel<'_>,
    ) -> Result<Option<reapi::ActionResult>> {
        let request = reapi::GetActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(action.to_proto()),
            inline_stdout: true,
            inline_stderr: true,
            ..Default::default()
        };
        let request = self.request(request, action, label);
        match self.action_cache().get_action_result(request).await {
            Ok(r) => Ok(Some(r.into_inner())),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(anyhow::anyhow!(
                "GetActionResult failed: {} ({:?})",
                s.message(),
                s.code()
            )),
        }
    }

    /// Records `result` for `action` in the farm's action cache.
    pub async fn store_result(
        &self,
        action: &Digest,
        result: &reapi::ActionResult,
        label: ActionLabel<'_>,
    ) -> Result<()> {
        let request = reapi::UpdateActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(action.to_proto()),
            action_result: Some(result.clone()),
            ..Default::default()
        };
        let request = self.request(request, action, label);
        self.action_cache()
            .update_action_result(request)
            .await
            .map_err(|s| {
                anyhow::anyhow!(
                    "UpdateActionResult failed: {} ({:?})",
                    s.message(),
                    s.code()
                )
            })?;
        Ok(())
    }

    /// Executes `action` (its Action, Command and inputs already uploaded) and waits for the
    /// final response.
    pub async fn execute(
        &self,
        action: &Digest,
        label: ActionLabel<'_>,
    ) -> Result<reapi::ExecuteResponse> {
        let mut client = ExecutionClient::new(self.channel.clone())
            .max_decoding_message_size(cas::store::grpc::MAX_MESSAGE_BYTES);
        let request = reapi::ExecuteRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(action.to_proto()),
            skip_cache_lookup: false,
            ..Default::default()
        };
        let request = self.request(request, action, label);
        let mut stream = client
            .execute(request)
            .await
            .map_err(|s| anyhow::anyhow!("Execute failed: {} ({:?})", s.message(), s.code()))?
            .into_inner();
        let mut last: Option<Operation> = None;
        loop {
            match stream.message().await {
                // Read to the stream's end even after `done`: dropping a stream early is a
                // reset, which a busy server's HTTP/2 flood protection may punish.
                Ok(Some(op)) => last = Some(op),
                Ok(None) => break,
                Err(s) => bail!(
                    "the Execute stream failed: {} ({:?})",
                    s.message(),
                    s.code()
                ),
            }
        }
        let Some(op) = last else {
            bail!("Execute ended without an operation");
        };
        if !op.done {
            bail!("Execute ended before operation {} was done", op.name);
        }
        if let Some(bazel_remote_apis::google::longrunning::operation::Result::Error(e)) =
            &op.result
        {
            bail!(
                "operation {} failed: {} (code {})",
                op.name,
                e.message,
                e.code
            );
        }
        scheduler::operations::execute_response(&op)
            .ok_or_else(|| anyhow::anyhow!("operation {} carries no ExecuteResponse", op.name))
    }

    /// Reads a small blob whole.
    pub async fn read_blob(&self, digest: &Digest) -> Result<Bytes> {
        self.store
            .get_bytes(digest, cas::ByteRange::ALL)
            .await
            .with_context(|| format!("reading blob {digest} from the farm"))
    }
}

/// stdout or stderr of a result: inline bytes, or the blob they name.
pub async fn result_text(
    client: &FarmClient,
    raw: &[u8],
    digest: Option<&reapi::Digest>,
) -> Result<Bytes> {
    if !raw.is_empty() {
        return Ok(Bytes::copy_from_slice(raw));
    }
    match digest {
        Some(d) if d.size_bytes > 0 => {
            let d = Digest::from_proto(Some(d)).context("a result names a malformed digest")?;
            client.read_blob(&d).await
        }
        _ => Ok(Bytes::new()),
    }
}
