//! Platform matching over gRPC: exact pairs, several values per name, custom keys, and an
//! unsatisfiable action failing after the configured wait instead of hanging.

mod common;

use std::time::{Duration, Instant};

use common::*;

const X86: &[(&str, &str)] = &[("OSFamily", "linux"), ("ISA", "x86-64")];
const ARM: &[(&str, &str)] = &[
    ("OSFamily", "linux"),
    ("ISA", "aarch64"),
    ("ISA", "armv8.2-a"),
    ("pool", "big"),
];

/// Runs `spec` and returns the id of the worker that ran it.
async fn runs_on(client: &Client, spec: ActionSpec) -> String {
    let d = upload_action(client, &spec).await;
    let (_, response) = finish(client.execute(&d).await).await;
    assert_eq!(code(&response), tonic::Code::Ok, "{:?}", response.status);
    response
        .result
        .and_then(|r| r.execution_metadata)
        .map(|m| m.worker)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_required_property_must_be_offered_exactly() {
    let farm = start_farm(test_config()).await;
    let client = Client::connect(&farm.url).await;
    let _x86 = SimWorker::connect(&farm.url, "x86", X86, 2, Mode::AutoReply(Duration::ZERO)).await;
    let _arm = SimWorker::connect(&farm.url, "arm", ARM, 2, Mode::AutoReply(Duration::ZERO)).await;

    let on = |tag: &str, props: &[(&str, &str)]| ActionSpec::new(tag).platform(props);
    assert_eq!(
        runs_on(&client, on("a", &[("ISA", "aarch64")])).await,
        "arm"
    );
    assert_eq!(
        runs_on(
            &client,
            on("b", &[("ISA", "armv8.2-a"), ("ISA", "aarch64")])
        )
        .await,
        "arm"
    );
    assert_eq!(
        runs_on(
            &client,
            on("c", &[("ISA", "x86-64"), ("OSFamily", "linux")])
        )
        .await,
        "x86"
    );
    assert_eq!(runs_on(&client, on("d", &[("pool", "big")])).await, "arm");
    let any = runs_on(&client, on("e", &[("OSFamily", "linux")])).await;
    assert!(any == "x86" || any == "arm");
    let any = runs_on(&client, ActionSpec::new("f")).await;
    assert!(any == "x86" || any == "arm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsatisfiable_action_fails_after_the_wait() {
    let config = scheduler::SchedulerConfig {
        unsatisfiable_wait: Duration::from_millis(500),
        ..test_config()
    };
    let farm = start_farm(config).await;
    let client = Client::connect(&farm.url).await;
    let _x86 = SimWorker::connect(&farm.url, "x86", X86, 1, Mode::AutoReply(Duration::ZERO)).await;

    for (tag, props) in [
        ("windows", &[("OSFamily", "windows")][..]),
        ("case", &[("OSFamily", "Linux")][..]),
        ("extra key", &[("OSFamily", "linux"), ("gpu", "a100")][..]),
    ] {
        let d = upload_action(&client, &ActionSpec::new(tag).platform(props)).await;
        let started = Instant::now();
        let (_, response) = finish(client.execute(&d).await).await;
        let waited = started.elapsed();
        assert_eq!(code(&response), tonic::Code::FailedPrecondition, "{tag}");
        assert!(
            waited >= Duration::from_millis(450),
            "{tag}: failed after only {waited:?}"
        );
        let message = &response.status.as_ref().expect("status").message;
        let wanted = props
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>();
        for w in &wanted {
            assert!(message.contains(w.as_str()), "{w} not in {message}");
        }
        assert!(
            message.contains("ISA=x86-64,OSFamily=linux"),
            "offers listed: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_worker_arriving_within_the_wait_runs_the_action() {
    let config = scheduler::SchedulerConfig {
        unsatisfiable_wait: Duration::from_secs(3),
        ..test_config()
    };
    let farm = start_farm(config).await;
    let client = Client::connect(&farm.url).await;
    let _x86 = SimWorker::connect(&farm.url, "x86", X86, 1, Mode::AutoReply(Duration::ZERO)).await;
    let d = upload_action(
        &client,
        &ActionSpec::new("needs arm").platform(&[("ISA", "aarch64")]),
    )
    .await;
    let mut stream = client.execute(&d).await;
    first(&mut stream).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _arm = SimWorker::connect(&farm.url, "arm", ARM, 1, Mode::AutoReply(Duration::ZERO)).await;
    let (_, response) = finish(stream).await;
    assert_eq!(code(&response), tonic::Code::Ok);
}
