//! Resuming after a restart, in process: a new scheduler over the `MemoryState` and storage
//! of a previous one picks up its queued and finished operations.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bazel_remote_apis::google::longrunning as lro;
use common::*;
use scheduler::state::memory::MemoryState;

async fn get_operation(client: &Client, name: &str) -> lro::Operation {
    client
        .ops
        .clone()
        .get_operation(lro::GetOperationRequest {
            name: name.to_string(),
        })
        .await
        .expect("GetOperation")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_scheduler_over_the_same_memory_state_resumes_queued_work() {
    let state = Arc::new(MemoryState::new());
    let storage = memory_storage();
    let (done_name, queued) = {
        let farm = start_farm_with(test_config(), state.clone(), storage.clone()).await;
        let client = Client::connect(&farm.url).await;
        let w = SimWorker::connect(&farm.url, "w", &[], 1, Mode::AutoReply(Duration::ZERO)).await;
        let d = upload_action(&client, &ActionSpec::new("finished before")).await;
        let (updates, _) = finish(client.execute(&d).await).await;
        w.drop_stream();
        eventually("the worker is gone", || farm.scheduler.stats().workers == 0).await;
        let mut queued = Vec::new();
        for (tag, priority) in [("late", 2), ("early", 1)] {
            let d = upload_action(&client, &ActionSpec::new(tag)).await;
            let mut s = client
                .execute_with(&d, "", false, priority)
                .await
                .expect("Execute");
            queued.push((tag, d, first(&mut s).await.name));
        }
        (updates[0].name.clone(), queued)
    };
    eventually("the journal flushed", || state.len() == 3).await;

    let farm = start_farm_with(test_config(), state.clone(), storage).await;
    assert_eq!(farm.scheduler.stats().queued, 2);
    let client = Client::connect(&farm.url).await;
    let op = get_operation(&client, &done_name).await;
    assert!(op.done, "finished operations answer after the restart");
    let mut waits = Vec::new();
    for (_, _, name) in &queued {
        waits.push(client.wait_execution(name).await.expect("WaitExecution"));
    }
    let w = SimWorker::connect(&farm.url, "w2", &[], 1, Mode::AutoReply(Duration::ZERO)).await;
    for s in waits {
        assert_eq!(code(&finish(s).await.1), tonic::Code::Ok);
    }
    let order: Vec<String> = w.leases().into_iter().map(|l| l.action_hash).collect();
    assert_eq!(
        order,
        vec![queued[1].1.hash_hex(), queued[0].1.hash_hex()],
        "priority kept"
    );
}
