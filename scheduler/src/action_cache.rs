//! [`ResultCache`]: where the scheduler looks action results up before queueing and writes
//! successful results after execution — the embedded action-cache store, or a remote REAPI
//! ActionCache when the scheduler forwards to a `farm-cas` (`--cas URL`).
//!
//! With a remote cache the scheduler's own ActionCache service is [`ForwardingActionCache`],
//! a thin proxy, so clients of the scheduler's port and the scheduler itself see exactly the
//! results the remote holds.

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bytes::Bytes;
use cas::service::action_cache::{action_cache_key, missing_outputs};
use cas::service::Storage;
use cas::store::ByteRange;
use cas::Digest;
use prost::Message;
use reapi::action_cache_client::ActionCacheClient;
use reapi::action_cache_server::{ActionCache, ActionCacheServer};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::metrics::observe;

/// Largest ActionResult message accepted from a remote cache.
const MAX_RESULT_BYTES: usize = 64 << 20;

/// The action cache the scheduler reads and writes.
#[derive(Clone, Debug)]
pub enum ResultCache {
    /// The storage's own action-cache store, read and written like the ActionCache service
    /// does (same keys, same completeness check).
    Local(Storage),
    /// A remote REAPI ActionCache.
    Remote(ActionCacheClient<Channel>),
}

impl ResultCache {
    /// A cache forwarding to the REAPI server on `channel`.
    pub fn remote(channel: Channel) -> Self {
        ResultCache::Remote(
            ActionCacheClient::new(channel)
                .max_decoding_message_size(MAX_RESULT_BYTES)
                .max_encoding_message_size(MAX_RESULT_BYTES),
        )
    }

    /// A complete cached result for `action` in `instance`, or `None` (a miss, an incomplete
    /// entry, or a cache that cannot be read: executing is always a correct answer).
    pub async fn lookup(&self, instance: &str, action: &Digest) -> Option<reapi::ActionResult> {
        match self {
            ResultCache::Local(storage) => local_lookup(storage, instance, action).await,
            ResultCache::Remote(client) => {
                let request = reapi::GetActionResultRequest {
                    instance_name: instance.to_string(),
                    action_digest: Some(action.to_proto()),
                    digest_function: reapi::digest_function::Value::Sha256 as i32,
                    ..Default::default()
                };
                match client.clone().get_action_result(request).await {
                    Ok(r) => Some(r.into_inner()),
                    Err(s) if s.code() == Code::NotFound => None,
                    Err(s) => {
                        tracing::warn!(%action, error = %s, "remote action cache lookup failed; executing");
                        None
                    }
                }
            }
        }
    }

    /// Stores `result` for `action` in `instance`.
    pub async fn store(
        &self,
        instance: &str,
        action: &Digest,
        result: &reapi::ActionResult,
    ) -> Result<(), Status> {
        match self {
            ResultCache::Local(storage) => {
                let key = action_cache_key(instance, action);
                let data = Bytes::from(result.encode_to_vec());
                Ok(storage.action_cache.put_bytes(&key, data).await?)
            }
            ResultCache::Remote(client) => {
                let request = reapi::UpdateActionResultRequest {
                    instance_name: instance.to_string(),
                    action_digest: Some(action.to_proto()),
                    action_result: Some(result.clone()),
                    digest_function: reapi::digest_function::Value::Sha256 as i32,
                    ..Default::default()
                };
                client.clone().update_action_result(request).await?;
                Ok(())
            }
        }
    }
}

async fn local_lookup(
    storage: &Storage,
    instance: &str,
    action: &Digest,
) -> Option<reapi::ActionResult> {
    let key = action_cache_key(instance, action);
    let data = match storage.action_cache.get_bytes(&key, ByteRange::ALL).await {
        Ok(data) => data,
        Err(e) if e.is_not_found() => {
            cas::metrics::record_lookup("action_cache", false);
            return None;
        }
        Err(e) => {
            tracing::warn!(%action, error = %e, "action cache lookup failed; executing");
            return None;
        }
    };
    let Ok(result) = reapi::ActionResult::decode(data) else {
        tracing::warn!(%action, "undecodable action-cache entry; executing");
        return None;
    };
    if storage.options.completeness_check {
        match missing_outputs(&*storage.cas, &result).await {
            Ok(None) => {}
            Ok(Some(why)) => {
                tracing::debug!(%action, why, "cached result incomplete; executing");
                cas::metrics::record_lookup("action_cache", false);
                return None;
            }
            Err(e) => {
                tracing::warn!(%action, error = %e, "completeness check failed; executing");
                return None;
            }
        }
    }
    cas::metrics::record_lookup("action_cache", true);
    Some(result)
}

/// An ActionCache service that forwards every request to a remote REAPI ActionCache.
#[derive(Clone, Debug)]
pub struct ForwardingActionCache {
    client: ActionCacheClient<Channel>,
}

impl ForwardingActionCache {
    /// A proxy to the ActionCache of the REAPI server on `channel`.
    pub fn new(channel: Channel) -> Self {
        ForwardingActionCache {
            client: ActionCacheClient::new(channel)
                .max_decoding_message_size(MAX_RESULT_BYTES)
                .max_encoding_message_size(MAX_RESULT_BYTES),
        }
    }

    /// The tonic server of this service.
    pub fn into_server(self) -> ActionCacheServer<Self> {
        ActionCacheServer::new(self)
            .max_decoding_message_size(MAX_RESULT_BYTES)
            .max_encoding_message_size(MAX_RESULT_BYTES)
    }
}

#[tonic::async_trait]
impl ActionCache for ForwardingActionCache {
    async fn get_action_result(
        &self,
        request: Request<reapi::GetActionResultRequest>,
    ) -> Result<Response<reapi::ActionResult>, Status> {
        let req = request.into_inner();
        observe(
            "ActionCache.GetActionResult(forwarded)",
            self.client.clone().get_action_result(req),
        )
        .await
    }

    async fn update_action_result(
        &self,
        request: Request<reapi::UpdateActionResultRequest>,
    ) -> Result<Response<reapi::ActionResult>, Status> {
        let req = request.into_inner();
        observe(
            "ActionCache.UpdateActionResult(forwarded)",
            self.client.clone().update_action_result(req),
        )
        .await
    }
}
