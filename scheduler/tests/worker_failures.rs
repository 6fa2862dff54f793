//! Workers that drop, go silent, forget leases, answer late or never: requeues, bounded
//! retries, stale results, cancellation and timeouts.

mod common;

use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::longrunning as lro;
use common::*;
use reapi::execution_stage::Value as Stage;

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

fn worker_of(response: &reapi::ExecuteResponse) -> String {
    response
        .result
        .as_ref()
        .and_then(|r| r.execution_metadata.as_ref())
        .map(|m| m.worker.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_requeues_to_another_worker() {
    let farm = start_farm(test_config()).await;
    let client = Client::connect(&farm.url).await;
    let a = SimWorker::connect(&farm.url, "a", &[], 1, Mode::Hold).await;
    let action = upload_action(&client, &ActionSpec::new("crashy")).await;
    let stream = client.execute(&action).await;
    let first_lease = a.wait_leases(1).await.remove(0);
    let b = SimWorker::connect(&farm.url, "b", &[], 1, Mode::AutoReply(Duration::ZERO)).await;
    a.drop_stream();
    let (_, response) = finish(stream).await;
    assert_eq!(code(&response), tonic::Code::Ok);
    assert_eq!(worker_of(&response), "b");
    let second = b.leases();
    assert_eq!(second.len(), 1);
    assert_ne!(second[0].lease_id, first_lease.lease_id, "a new lease");
    assert_eq!(farm.scheduler.stats().workers, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_loses_its_lease_and_its_session() {
    let config = scheduler::SchedulerConfig {
        lease_timeout: Duration::from_millis(600),
        ..test_config()
    };
    let farm = start_farm(config).await;
    let client = Client::connect(&farm.url).await;
    let a = SimWorker::connect(&farm.url, "a", &[], 1, Mode::Hold).await;
    let action = upload_action(&client, &ActionSpec::new("hangs")).await;
    let stream = client.execute(&action).await;
    a.wait_leases(1).await;
    let b = SimWorker::connect(&farm.url, "b", &[], 1, Mode::AutoReply(Duration::ZERO)).await;
    // b keeps alive and stays idle while a holds the action.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(b.leases().is_empty(), "no requeue while a keeps alive");
    a.go_silent();
    let (_, response) = finish(stream).await;
    assert_eq!(worker_of(&response), "b");
    a.wait_ended().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_missing_from_keep_alives_is_requeued() {
    let farm = start_farm(test_config()).await;
    let client = Client::connect(&farm.url).await;
    let a = SimWorker::connect(&farm.url, "a", &[], 1, Mode::Hold).await;
    let action = upload_action(&client, &ActionSpec::new("forgotten")).await;
    let stream = client.execute(&action).await;
    let lease = a.wait_leases(1).await.remove(0);
    // Listed in a keep-alive or two first, then forgotten by the (simulated) action runner.
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.forget(&lease.lease_id);
    let leases = a.wait_leases(2).await;
    assert_ne!(leases[1].lease_id, lease.lease_id);
    a.reply_ok(&leases[1]).await;
    assert_eq!(code(&finish(stream).await.1), tonic::Code::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_bounded_then_the_operation_fails_clearly() {
    let config = scheduler::SchedulerConfig {
        max_retries: 2,
        ..test_config()
    };
    let farm = start_farm(config).await;
    let client = Client::connect(&farm.url).await;
    let action = upload_action(&client, &ActionSpec::new("cursed")).await;
    let stream = client.execute(&action).await;
    for i in 0..3 {
        let w = SimWorker::connect(&farm.url, &format!("victim-{i}"), &[], 1, Mode::Hold).await;
        w.wait_leases(1).await;
        w.drop_stream();
    }
    let (_, response) = finish(stream).await;
    assert_eq!(code(&response), tonic::Code::Unavailable);
    let message = &response.status.as_ref().expect("status").message;
    for needle in [
        action.to_string().as_str(),
        "victim-0, victim-1, victim-2",
        "giving up after 2 retries",
        "stream dropped",
    ] {
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
    assert!(response.result.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_on_a_stale_lease_is_dropped() {
    let config = scheduler::SchedulerConfig {
        lease_timeout: Duration::from_millis(500),
        ..test_config()
    };
    let farm = start_farm(config).await;
    let client = Client::connect(&farm.url).await;
    let a = SimWorker::connect(&farm.url, "a", &[], 1, Mode::Hold).await;
    let action = upload_action(&client, &ActionSpec::new("stale")).await;
    let mut stream = client.execute(&action).await;
    let name = first(&mut stream).await.name;
    let old = a.wait_leases(1).await.remove(0);
    let b = SimWorker::connect(&farm.url, "b", &[], 1, Mode::Hold).await;
    a.go_silent();
    let new = b.wait_leases(1).await.remove(0);
    a.wait_ended().await;

    // a comes back and reports the old lease: the scheduler no longer holds it for a.
    let a2 = SimWorker::connect(&farm.url, "a", &[], 1, Mode::Hold).await;
    a2.reply_ok(&old).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let op = get_operation(&client, &name).await;
    assert!(!op.done, "the stale result was dropped");
    assert_eq!(stage(&op), Stage::Executing);

    b.reply_ok(&new).await;
    let (_, response) = finish(stream).await;
    assert_eq!(worker_of(&response), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_of_queued_and_executing_operations() {
    let farm = start_farm(test_config()).await;
    let client = Client::connect(&farm.url).await;

    // Queued (no worker yet).
    let queued = upload_action(&client, &ActionSpec::new("never runs")).await;
    let mut stream = client.execute(&queued).await;
    let name = first(&mut stream).await.name;
    client
        .ops
        .clone()
        .cancel_operation(lro::CancelOperationRequest { name })
        .await
        .expect("CancelOperation");
    let (_, response) = finish(stream).await;
    assert_eq!(code(&response), tonic::Code::Cancelled);

    // Executing: the worker is told, and its late result is dropped.
    let w = SimWorker::connect(&farm.url, "w", &[], 1, Mode::Hold).await;
    let running = upload_action(&client, &ActionSpec::new("long")).await;
    let mut stream = client.execute(&running).await;
    let name = first(&mut stream).await.name;
    let lease = w.wait_leases(1).await.remove(0);
    assert!(w.leases().len() == 1 && !stream_done(&client, &name).await);
    client
        .ops
        .clone()
        .cancel_operation(lro::CancelOperationRequest { name: name.clone() })
        .await
        .expect("CancelOperation");
    w.wait_cancel(&lease.lease_id).await;
    let (_, response) = finish(stream).await;
    assert_eq!(code(&response), tonic::Code::Cancelled);
    w.reply_ok(&lease).await;
    // The freed slot takes the next action.
    let next = upload_action(&client, &ActionSpec::new("next")).await;
    let stream = client.execute(&next).await;
    let leases = w.wait_leases(2).await;
    w.reply_ok(&leases[1]).await;
    assert_eq!(code(&finish(stream).await.1), tonic::Code::Ok);
    let op = get_operation(&client, &name).await;
    let response = scheduler::operations::execute_response(&op).expect("response");
    assert_eq!(code(&response), tonic::Code::Cancelled, "still cancelled");
    let status = client
        .ops
        .clone()
        .cancel_operation(lro::CancelOperationRequest {
            name: "operations/nope".into(),
        })
        .await
        .expect_err("unknown operation");
    assert_eq!(status.code(), tonic::Code::NotFound);
}

async fn stream_done(client: &Client, name: &str) -> bool {
    get_operation(client, name).await.done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_are_capped_enforced_and_reported() {
    let config = scheduler::SchedulerConfig {
        max_action_timeout: Duration::from_secs(2),
        timeout_grace: Duration::from_millis(300),
        ..test_config()
    };
    let farm = start_farm(config).await;
    let client = Client::connect(&farm.url).await;
    let w = SimWorker::connect(&farm.url, "w", &[], 4, Mode::Hold).await;

    // A worker that never answers: the scheduler cancels after timeout + grace.
    let short = ActionSpec::new("sleepy").timeout(Duration::from_millis(200));
    let stream = client.execute(&upload_action(&client, &short).await).await;
    let lease = w.wait_leases(1).await.remove(0);
    assert_eq!(lease.timeout_ms, 200);
    let started = std::time::Instant::now();
    let (_, response) = finish(stream).await;
    assert_eq!(code(&response), tonic::Code::DeadlineExceeded);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    w.wait_cancel(&lease.lease_id).await;

    // Action.timeout above the server maximum is capped.
    let long = ActionSpec::new("patient").timeout(Duration::from_secs(3600));
    let stream = client.execute(&upload_action(&client, &long).await).await;
    let lease = w.wait_leases(2).await.remove(1);
    assert_eq!(lease.timeout_ms, 2000);

    // A worker-reported timeout passes through, and is not cached.
    let mut timed_out = canned_response("w", &lease);
    timed_out.status = Some(scheduler::operations::rpc_status(
        tonic::Code::DeadlineExceeded,
        "killed after 2s",
    ));
    w.reply(&lease.lease_id, &timed_out).await;
    let (_, response) = finish(stream).await;
    assert_eq!(code(&response), tonic::Code::DeadlineExceeded);
    let digest = reapi::Digest {
        hash: lease.action_hash.clone(),
        size_bytes: lease.action_size,
    };
    let lookup = client
        .ac
        .clone()
        .get_action_result(reapi::GetActionResultRequest {
            action_digest: Some(digest),
            ..Default::default()
        })
        .await;
    assert_eq!(
        lookup.expect_err("not cached").code(),
        tonic::Code::NotFound
    );

    // A non-zero exit is a normal result, delivered but not cached.
    let failing = ActionSpec::new("exit 1");
    let d = upload_action(&client, &failing).await;
    let stream = client.execute(&d).await;
    let lease = w.wait_leases(3).await.remove(2);
    let mut exit1 = canned_response("w", &lease);
    if let Some(r) = exit1.result.as_mut() {
        r.exit_code = 1;
    }
    w.reply(&lease.lease_id, &exit1).await;
    let (_, response) = finish(stream).await;
    assert_eq!(code(&response), tonic::Code::Ok);
    assert_eq!(response.result.map(|r| r.exit_code), Some(1));
    let lookup = client
        .ac
        .clone()
        .get_action_result(reapi::GetActionResultRequest {
            action_digest: Some(d.to_proto()),
            ..Default::default()
        })
        .await;
    assert_eq!(
        lookup.expect_err("not cached").code(),
        tonic::Code::NotFound
    );
}
