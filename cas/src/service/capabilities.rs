//! The REAPI Capabilities service: what this endpoint's CAS and action cache support.
//!
//! The storage process only answers with cache capabilities; a process that also executes
//! (the scheduler) builds the same answer with [`capabilities`] and its own
//! [`reapi::ExecutionCapabilities`], and serves it with [`CapabilitiesService::new`].

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::build::bazel::semver::SemVer;
use reapi::capabilities_server::{Capabilities, CapabilitiesServer};
use reapi::{compressor, digest_function, symlink_absolute_path_strategy};

use super::{observe, Storage};

/// Oldest REAPI version a client may speak (Bazel 4 and later ask for 2.0).
pub const LOW_API_VERSION: (i32, i32) = (2, 0);
/// Newest REAPI version whose semantics this server implements.
pub const HIGH_API_VERSION: (i32, i32) = (2, 3);

fn semver((major, minor): (i32, i32)) -> SemVer {
    SemVer {
        major,
        minor,
        patch: 0,
        prerelease: String::new(),
    }
}

/// The cache half of the capabilities: SHA-256 only, updatable action cache, the configured
/// batch limit, absolute symlinks allowed, zstd for ByteStream and batch uploads.
pub fn cache_capabilities(storage: &Storage) -> reapi::CacheCapabilities {
    reapi::CacheCapabilities {
        digest_functions: vec![digest_function::Value::Sha256 as i32],
        action_cache_update_capabilities: Some(reapi::ActionCacheUpdateCapabilities {
            update_enabled: true,
        }),
        max_batch_total_size_bytes: i64::try_from(storage.options.max_batch_total_bytes)
            .unwrap_or(i64::MAX),
        symlink_absolute_path_strategy: symlink_absolute_path_strategy::Value::Allowed as i32,
        supported_compressors: vec![compressor::Value::Zstd as i32],
        supported_batch_update_compressors: vec![compressor::Value::Zstd as i32],
        ..Default::default()
    }
}

/// The full GetCapabilities answer: cache capabilities of `storage`, plus `exec` when the serving
/// process also executes actions (`None` for a storage-only endpoint).
pub fn capabilities(
    storage: &Storage,
    exec: Option<reapi::ExecutionCapabilities>,
) -> reapi::ServerCapabilities {
    reapi::ServerCapabilities {
        cache_capabilities: Some(cache_capabilities(storage)),
        execution_capabilities: exec,
        deprecated_api_version: Some(semver(LOW_API_VERSION)),
        low_api_version: Some(semver(LOW_API_VERSION)),
        high_api_version: Some(semver(HIGH_API_VERSION)),
    }
}

/// The Capabilities service: answers every instance name with one fixed
/// [`reapi::ServerCapabilities`].
#[derive(Clone, Debug)]
pub struct CapabilitiesService {
    answer: reapi::ServerCapabilities,
}

impl CapabilitiesService {
    /// A service answering with `capabilities(storage, exec)`.
    pub fn new(storage: &Storage, exec: Option<reapi::ExecutionCapabilities>) -> Self {
        CapabilitiesService {
            answer: capabilities(storage, exec),
        }
    }
}

#[tonic::async_trait]
impl Capabilities for CapabilitiesService {
    async fn get_capabilities(
        &self,
        _request: tonic::Request<reapi::GetCapabilitiesRequest>,
    ) -> Result<tonic::Response<reapi::ServerCapabilities>, tonic::Status> {
        observe("Capabilities.GetCapabilities", async {
            Ok(tonic::Response::new(self.answer.clone()))
        })
        .await
    }
}

/// The Capabilities service of a storage-only endpoint (no execution capabilities).
pub fn service(storage: &Storage) -> CapabilitiesServer<CapabilitiesService> {
    CapabilitiesServer::new(CapabilitiesService::new(storage, None))
}
