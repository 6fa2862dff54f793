//! Execute end to end over gRPC: running on simulated workers, caching, merging, the
//! action-cache hit path, missing inputs, reattaching, Operations and Capabilities.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::longrunning as lro;
use common::*;
use reapi::capabilities_client::CapabilitiesClient;
use reapi::execution_stage::Value as Stage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_runs_on_a_worker_caches_and_then_hits() {
    let farm = start_farm(test_config()).await;
    let client = Client::connect(&farm.url).await;
    let worker = SimWorker::connect(&farm.url, "w1", &[], 2, Mode::AutoReply(Duration::ZERO)).await;
    assert_eq!(worker.welcome().lease_timeout_ms, 1500);
    let action = upload_action(&client, &ActionSpec::new("hello")).await;

    let (updates, response) = finish(client.execute(&action).await).await;
    assert!(
        matches!(stage(&updates[0]), Stage::Queued | Stage::Executing),
        "an idle worker takes it at once, so the first update may already be EXECUTING"
    );
    assert!(
        updates[0].name.starts_with("operations/"),
        "{}",
        updates[0].name
    );
    assert_eq!(code(&response), tonic::Code::Ok);
    assert!(!response.cached_result);
    let result = response.result.expect("an ActionResult");
    assert_eq!(result.exit_code, 0);
    assert_eq!(
        result
            .execution_metadata
            .as_ref()
            .map(|m| m.worker.as_str()),
        Some("w1")
    );
    assert!(
        result
            .execution_metadata
            .as_ref()
            .and_then(|m| m.queued_timestamp.as_ref())
            .is_some(),
        "the scheduler stamps the queued time"
    );
    let lease = &worker.leases()[0];
    assert_eq!(lease.action_hash, action.hash_hex());
    assert_eq!(lease.action_size, action.size() as i64);
    assert_eq!(
        lease.timeout_ms, 60_000,
        "no Action.timeout: the server maximum"
    );

    // The result is in the action cache, for clients and for the next Execute.
    let cached = client
        .ac
        .clone()
        .get_action_result(reapi::GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await
        .expect("GetActionResult after execution")
        .into_inner();
    assert_eq!(cached.exit_code, 0);
    let (updates, response) = finish(client.execute(&action).await).await;
    assert_eq!(updates.len(), 1, "a cache hit is done in its first update");
    assert!(response.cached_result);
    assert_eq!(worker.leases().len(), 1, "no lease for a cache hit");

    // skip_cache_lookup runs it again.
    let stream = client
        .execute_with(&action, "", true, 0)
        .await
        .expect("Execute");
    let (_, response) = finish(stream).await;
    assert!(!response.cached_result);
    assert_eq!(worker.leases().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_executes_each_run_once() {
    let farm = start_farm(test_config()).await;
    let client = Client::connect(&farm.url).await;
    let mut workers = Vec::new();
    for i in 0..4 {
        let id = format!("w{i}");
        workers.push(
            SimWorker::connect(
                &farm.url,
                &id,
                &[],
                4,
                Mode::AutoReply(Duration::from_millis(2)),
            )
            .await,
        );
    }
    let mut digests = Vec::new();
    for i in 0..200 {
        digests.push(upload_action(&client, &ActionSpec::new(&format!("job {i}"))).await);
    }
    let runs = digests.iter().map(|d| {
        let client = client.clone();
        let d = *d;
        async move { finish(client.execute(&d).await).await.1 }
    });
    let responses = bounded("200 executions", futures::future::join_all(runs)).await;
    for r in &responses {
        assert_eq!(code(r), tonic::Code::Ok);
        assert_eq!(r.result.as_ref().map(|r| r.exit_code), Some(0));
    }
    let mut per_action: HashMap<String, usize> = HashMap::new();
    for w in &workers {
        for l in w.leases() {
            *per_action.entry(l.action_hash).or_default() += 1;
        }
    }
    assert_eq!(per_action.len(), 200);
    assert!(
        per_action.values().all(|&n| n == 1),
        "every action ran exactly once"
    );
    let busy = workers.iter().filter(|w| !w.leases().is_empty()).count();
    assert!(busy >= 2, "work spread over the workers ({busy} busy)");
    eventually("all slots free again", || {
        farm.scheduler.stats().free_slots == 16
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_executes_merge_but_do_not_cache_ones_never_do() {
    let farm = start_farm(test_config()).await;
    let client = Client::connect(&farm.url).await;
    let worker = SimWorker::connect(&farm.url, "w1", &[], 8, Mode::Hold).await;
    let action = upload_action(&client, &ActionSpec::new("merged")).await;

    let mut streams = Vec::new();
    for _ in 0..10 {
        streams.push(client.execute(&action).await);
    }
    let mut names = HashSet::new();
    for s in &mut streams {
        names.insert(first(s).await.name);
    }
    assert_eq!(names.len(), 1, "ten identical Executes share one operation");
    let leases = worker.wait_leases(1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        worker.leases().len(),
        1,
        "one lease for ten identical Executes"
    );
    worker.reply_ok(&leases[0]).await;
    for s in streams {
        let (_, r) = finish(s).await;
        assert_eq!(r.result.map(|r| r.exit_code), Some(0));
    }

    let nocache = upload_action(&client, &ActionSpec::new("volatile").do_not_cache()).await;
    let mut streams = Vec::new();
    let mut names = HashSet::new();
    for _ in 0..3 {
        let mut s = client.execute(&nocache).await;
        names.insert(first(&mut s).await.name);
        streams.push(s);
    }
    assert_eq!(names.len(), 3, "do_not_cache actions are never merged");
    let leases = worker.wait_leases(4).await;
    for l in &leases[1..] {
        worker.reply_ok(l).await;
    }
    for s in streams {
        assert_eq!(code(&finish(s).await.1), tonic::Code::Ok);
    }
    // ... and never cached.
    let lookup = client
        .ac
        .clone()
        .get_action_result(reapi::GetActionResultRequest {
            action_digest: Some(nocache.to_proto()),
            ..Default::default()
        })
        .await;
    assert_eq!(
        lookup.expect_err("not cached").code(),
        tonic::Code::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_cache_hits_need_no_worker() {
    let farm = start_farm(test_config()).await;
    let client = Client::connect(&farm.url).await;
    let action = upload_action(&client, &ActionSpec::new("precomputed")).await;
    let result = reapi::ActionResult {
        exit_code: 0,
        stdout_raw: b"from the cache".to_vec(),
        ..Default::default()
    };
    client
        .ac
        .clone()
        .update_action_result(reapi::UpdateActionResultRequest {
            instance_name: "main".into(),
            action_digest: Some(action.to_proto()),
            action_result: Some(result),
            ..Default::default()
        })
        .await
        .expect("UpdateActionResult");
    let stream = client
        .execute_with(&action, "main", false, 0)
        .await
        .expect("Execute");
    let (updates, response) = finish(stream).await;
    assert!(updates[0].name.starts_with("main/operations/"));
    assert!(response.cached_result);
    assert_eq!(stage(&updates[0]), Stage::Completed);
    // The cache is per instance: another instance misses and queues (no worker: stays queued).
    let mut other = client
        .execute_with(&action, "other", false, 0)
        .await
        .expect("Execute");
    let op = first(&mut other).await;
    assert!(!op.done);
    assert_eq!(stage(&op), Stage::Queued);
    assert_eq!(farm.scheduler.stats().queued, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_inputs_fail_with_a_precondition_failure_listing_each_digest() {
    let farm = start_farm(test_config()).await;
    let client = Client::connect(&farm.url).await;

    // The Action itself is missing.
    let built = build_action(&ActionSpec::new("absent"));
    let status = client
        .execute_with(&built.digest, "", false, 0)
        .await
        .expect_err("missing Action");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    let subjects: Vec<String> = precondition_failure(&status)
        .violations
        .into_iter()
        .map(|v| {
            assert_eq!(v.r#type, "MISSING");
            v.subject
        })
        .collect();
    assert_eq!(
        subjects,
        vec![format!(
            "blobs/{}/{}",
            built.digest.hash_hex(),
            built.digest.size()
        )]
    );

    // The Action is there, but its Command and two input files are not.
    let mut spec = ActionSpec::new("partial");
    spec.files.push(("second.txt".into(), b"second".to_vec()));
    let built = build_action(&spec);
    let keep: Vec<_> = built
        .blobs
        .iter()
        .filter(|(d, _)| *d == built.digest || *d == built.input_root)
        .cloned()
        .collect();
    client.upload(&keep).await;
    let status = client
        .execute_with(&built.digest, "", false, 0)
        .await
        .expect_err("missing inputs");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let listed: HashSet<String> = precondition_failure(&status)
        .violations
        .into_iter()
        .map(|v| v.subject)
        .collect();
    let mut expected: HashSet<String> = built
        .files
        .iter()
        .map(|d| format!("blobs/{}/{}", d.hash_hex(), d.size()))
        .collect();
    expected.insert(format!(
        "blobs/{}/{}",
        built.command.hash_hex(),
        built.command.size()
    ));
    assert_eq!(listed, expected, "each missing digest listed once");
    assert!(status.message().contains("missing"), "{}", status.message());

    // A missing input root directory is listed too.
    let built = build_action(&ActionSpec::new("no root"));
    let keep: Vec<_> = built
        .blobs
        .iter()
        .filter(|(d, _)| *d == built.digest || *d == built.command)
        .cloned()
        .collect();
    client.upload(&keep).await;
    let status = client
        .execute_with(&built.digest, "", false, 0)
        .await
        .expect_err("missing input root");
    let listed: Vec<String> = precondition_failure(&status)
        .violations
        .into_iter()
        .map(|v| v.subject)
        .collect();
    assert_eq!(
        listed,
        vec![format!(
            "blobs/{}/{}",
            built.input_root.hash_hex(),
            built.input_root.size()
        )]
    );

    // Bad digests are INVALID_ARGUMENT.
    let status = client
        .exec
        .clone()
        .execute(reapi::ExecuteRequest {
            action_digest: Some(reapi::Digest {
                hash: "nothex".into(),
                size_bytes: 3,
            }),
            ..Default::default()
        })
        .await
        .expect_err("bad digest");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(farm.scheduler.stats().queued, 0, "nothing was queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_execution_reattaches_and_operations_answer() {
    let farm = start_farm(test_config()).await;
    let client = Client::connect(&farm.url).await;
    let action = upload_action(&client, &ActionSpec::new("reattach")).await;
    let mut stream = client
        .execute_with(&action, "main", false, 0)
        .await
        .expect("Execute");
    let name = first(&mut stream).await.name;
    drop(stream); // the client goes away; the operation stays queued

    let op = client
        .ops
        .clone()
        .get_operation(lro::GetOperationRequest { name: name.clone() })
        .await
        .expect("GetOperation")
        .into_inner();
    assert!(!op.done);
    assert_eq!(stage(&op), Stage::Queued);
    let listed = client
        .ops
        .clone()
        .list_operations(lro::ListOperationsRequest {
            name: "main/operations".into(),
            filter: "done=false".into(),
            ..Default::default()
        })
        .await
        .expect("ListOperations")
        .into_inner();
    assert_eq!(
        listed
            .operations
            .iter()
            .map(|o| &o.name)
            .collect::<Vec<_>>(),
        vec![&name]
    );

    let waiting = client.wait_execution(&name).await.expect("WaitExecution");
    let worker =
        SimWorker::connect(&farm.url, "late", &[], 1, Mode::AutoReply(Duration::ZERO)).await;
    let (updates, response) = finish(waiting).await;
    assert_eq!(updates.last().map(|o| o.name.as_str()), Some(name.as_str()));
    assert_eq!(code(&response), tonic::Code::Ok);
    assert_eq!(worker.leases().len(), 1);

    // Finished operations keep answering.
    let (updates, _) = finish(client.wait_execution(&name).await.expect("WaitExecution")).await;
    assert_eq!(updates.len(), 1);
    let op = client
        .ops
        .clone()
        .wait_operation(lro::WaitOperationRequest {
            name: name.clone(),
            timeout: None,
        })
        .await
        .expect("WaitOperation")
        .into_inner();
    assert!(op.done);
    let status = client
        .wait_execution("main/operations/unknown")
        .await
        .expect_err("unknown name");
    assert_eq!(status.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_then_fifo() {
    let farm = start_farm(test_config()).await;
    let client = Client::connect(&farm.url).await;
    let mut names = Vec::new();
    // Queue with no worker: low priority first, then two high-priority ones.
    for (tag, priority) in [("a", 5), ("b", 5), ("c", -1), ("d", 0), ("e", -1)] {
        let d = upload_action(&client, &ActionSpec::new(tag)).await;
        let mut s = client
            .execute_with(&d, "", false, priority)
            .await
            .expect("Execute");
        first(&mut s).await;
        names.push((tag, d));
    }
    let worker = SimWorker::connect(&farm.url, "w", &[], 1, Mode::AutoReply(Duration::ZERO)).await;
    let leases = worker.wait_leases(5).await;
    let order: Vec<&str> = leases
        .iter()
        .map(|l| {
            names
                .iter()
                .find(|(_, d)| d.hash_hex() == l.action_hash)
                .map(|(t, _)| *t)
                .expect("known action")
        })
        .collect();
    assert_eq!(order, vec!["c", "e", "d", "a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_advertise_execution() {
    let farm = start_farm(test_config()).await;
    let caps = CapabilitiesClient::new(channel(&farm.url).await)
        .get_capabilities(reapi::GetCapabilitiesRequest::default())
        .await
        .expect("GetCapabilities")
        .into_inner();
    let exec = caps.execution_capabilities.expect("execution capabilities");
    assert!(exec.exec_enabled);
    let sha256 = reapi::digest_function::Value::Sha256 as i32;
    assert_eq!(exec.digest_function, sha256);
    assert_eq!(exec.digest_functions, vec![sha256]);
    assert!(caps.cache_capabilities.is_some());
}
