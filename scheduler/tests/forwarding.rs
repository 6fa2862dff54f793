//! `--cas URL` mode: the scheduler forwards CAS and action cache to a separate storage server
//! (an in-process farm-cas here) and writes results there.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use cas::store::grpc::{GrpcStore, GrpcStoreOptions};
use cas::store::memory::MemoryStore;
use common::*;
use reapi::action_cache_client::ActionCacheClient;
use scheduler::service::SchedulerServices;
use scheduler::state::memory::MemoryState;
use scheduler::Scheduler;
use tokio::net::TcpListener;

/// Serves a storage-only endpoint (like `farm-cas`) on a loopback port; returns its URL.
async fn serve_storage(storage: cas::service::Storage) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    let router = storage.add_to(&mut builder);
    tokio::spawn(async move { router.serve_with_incoming(incoming).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarding_scheduler_reads_and_writes_the_remote_storage() {
    let remote = memory_storage();
    let remote_url = serve_storage(remote.clone()).await;

    let store = GrpcStore::connect(&remote_url, GrpcStoreOptions::default())
        .await
        .expect("connect to the storage server");
    let channel = store.channel();
    let storage = cas::service::Storage::new(
        Arc::new(store),
        Arc::new(MemoryStore::new(0)),
        cas::service::StorageOptions::new(std::env::temp_dir().join("farm-forwarding-test")),
    );
    let scheduler = Scheduler::new(test_config(), Arc::new(MemoryState::new()));
    let services = SchedulerServices::forwarding(scheduler, storage, channel);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    let router = services.add_to(&mut builder);
    tokio::spawn(async move { router.serve_with_incoming(incoming).await });
    let url = format!("http://{addr}");

    // Uploads through the scheduler land in the storage server.
    let client = Client::connect(&url).await;
    let built = build_action(&ActionSpec::new("forwarded"));
    client.upload(&built.blobs).await;
    let missing = remote
        .cas
        .find_missing(&built.blobs.iter().map(|(d, _)| *d).collect::<Vec<_>>())
        .await
        .expect("find_missing");
    assert!(missing.is_empty(), "blobs forwarded to the storage server");

    let _w = SimWorker::connect(&url, "w", &[], 1, Mode::AutoReply(Duration::ZERO)).await;
    let (_, response) = finish(client.execute(&built.digest).await).await;
    assert_eq!(code(&response), tonic::Code::Ok);
    assert!(!response.cached_result);

    // The result was written to the storage server's action cache...
    let direct = ActionCacheClient::new(common::channel(&remote_url).await)
        .get_action_result(reapi::GetActionResultRequest {
            action_digest: Some(built.digest.to_proto()),
            ..Default::default()
        })
        .await
        .expect("result in the remote action cache")
        .into_inner();
    assert_eq!(direct.exit_code, 0);
    // ... and the scheduler's own ActionCache service and Execute read it from there.
    client
        .ac
        .clone()
        .get_action_result(reapi::GetActionResultRequest {
            action_digest: Some(built.digest.to_proto()),
            ..Default::default()
        })
        .await
        .expect("forwarded GetActionResult");
    let (_, response) = finish(client.execute(&built.digest).await).await;
    assert!(response.cached_result);

    // Missing inputs are checked against the remote CAS too.
    let absent = build_action(&ActionSpec::new("never uploaded"));
    let status = client
        .execute_with(&absent.digest, "", false, 0)
        .await
        .expect_err("missing Action");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(precondition_failure(&status).violations.len(), 1);
}
