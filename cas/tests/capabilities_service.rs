//! The Capabilities service through a real tonic client over 127.0.0.1.

mod common;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::build::bazel::semver::SemVer;
use cas::service::capabilities::capabilities;
use reapi::capabilities_client::CapabilitiesClient;
use reapi::{compressor, digest_function, symlink_absolute_path_strategy};

use common::{channel, memory_storage_with, options, start};

fn version(major: i32, minor: i32) -> Option<SemVer> {
    Some(SemVer {
        major,
        minor,
        patch: 0,
        prerelease: String::new(),
    })
}

#[tokio::test]
async fn advertises_the_cache_and_no_execution() {
    let mut opts = options();
    opts.max_batch_total_bytes = 3 * 1024 * 1024;
    let (storage, _) = memory_storage_with(1 << 20, opts);
    let server = start(storage).await;
    let mut client = CapabilitiesClient::new(channel(&server).await);

    for instance in ["", "some/instance"] {
        let caps = client
            .get_capabilities(reapi::GetCapabilitiesRequest {
                instance_name: instance.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(caps.execution_capabilities.is_none());
        assert_eq!(caps.low_api_version, version(2, 0));
        assert_eq!(caps.deprecated_api_version, version(2, 0));
        assert_eq!(caps.high_api_version, version(2, 3));
        let cache = caps.cache_capabilities.unwrap();
        assert_eq!(
            cache.digest_functions,
            vec![digest_function::Value::Sha256 as i32]
        );
        assert_eq!(
            cache.action_cache_update_capabilities,
            Some(reapi::ActionCacheUpdateCapabilities {
                update_enabled: true
            })
        );
        assert_eq!(cache.max_batch_total_size_bytes, 3 * 1024 * 1024);
        assert_eq!(
            cache.symlink_absolute_path_strategy,
            symlink_absolute_path_strategy::Value::Allowed as i32
        );
        assert_eq!(
            cache.supported_compressors,
            vec![compressor::Value::Zstd as i32]
        );
        assert_eq!(
            cache.supported_batch_update_compressors,
            vec![compressor::Value::Zstd as i32]
        );
        assert!(!cache.split_blob_support && !cache.splice_blob_support);
    }
}

#[test]
fn execution_capabilities_can_be_added_by_an_executing_process() {
    let (storage, _) = memory_storage_with(1 << 20, options());
    let exec = reapi::ExecutionCapabilities {
        digest_function: digest_function::Value::Sha256 as i32,
        exec_enabled: true,
        digest_functions: vec![digest_function::Value::Sha256 as i32],
        ..Default::default()
    };
    let caps = capabilities(&storage, Some(exec.clone()));
    assert_eq!(caps.execution_capabilities, Some(exec));
    assert!(caps.cache_capabilities.is_some());
    assert!(capabilities(&storage, None)
        .execution_capabilities
        .is_none());
}
