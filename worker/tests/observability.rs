//! What operators see of a running farm: `farm-scheduler` and `farm-worker` processes serve
//! `/metrics` (parsed with a Prometheus text parser: the documented names exist and move when
//! an action runs), `/healthz` and `/readyz`; a client's REAPI `RequestMetadata` (its tool
//! invocation id) appears in both processes' logs for the action it ran; and every query of
//! the Grafana dashboard in `k8s/grafana/` names a metric these processes export.
//!
//! `farm-scheduler` is another package's binary: `cargo test --workspace` builds it; alone,
//! build it first with `cargo build -p scheduler --bin farm-scheduler`.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use cas::store::grpc::{GrpcStore, GrpcStoreOptions};
use common::process::Proc;
use prost::Message as _;
use reapi::execution_client::ExecutionClient;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scheduler_binary() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_farm-worker")).with_file_name("farm-scheduler");
    assert!(
        path.exists(),
        "{} is missing: cargo build -p scheduler",
        path.display()
    );
    path
}

/// `GET path` over plain HTTP/1.0: (status line, body).
async fn http_get(port: u16, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

fn scrape(body: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The sum of a counter's (or a histogram's count of) samples named `name` with `label`.
fn value(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            _ => 0.0,
        })
        .sum()
}

async fn wait_ready(port: u16) {
    let start = Instant::now();
    loop {
        if let Ok(Ok(mut s)) = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            let _ = s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await;
            let mut t = String::new();
            let _ = s.read_to_string(&mut t).await;
            if t.starts_with("HTTP/1.0 200") || t.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "port {port} never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_request_ids_follow_an_action_through_the_farm() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let (port, sched_metrics, worker_metrics) = (free_port(), free_port(), free_port());
    let url = format!("http://127.0.0.1:{port}");
    let scheduler = Proc::spawn(
        "farm-scheduler",
        &scheduler_binary(),
        &[
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--metrics-listen".into(),
            format!("127.0.0.1:{sched_metrics}"),
        ],
        dir.path().join("scheduler.log"),
    );
    wait_ready(sched_metrics).await;
    let worker = Proc::spawn(
        "farm-worker",
        Path::new(env!("CARGO_BIN_EXE_farm-worker")),
        &[
            "--scheduler".into(),
            url.clone(),
            "--work-dir".into(),
            dir.path().join("worker").display().to_string(),
            "--slots".into(),
            "1".into(),
            "--sandbox-uid-base".into(),
            "63700".into(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{worker_metrics}"),
        ],
        dir.path().join("worker.log"),
    );
    wait_ready(worker_metrics).await;
    for port in [sched_metrics, worker_metrics] {
        assert!(http_get(port, "/healthz").await.0.contains("200"));
    }
    let before = scrape(&http_get(worker_metrics, "/metrics").await.1);

    let store = GrpcStore::connect(&url, GrpcStoreOptions::default())
        .await
        .unwrap();
    let [command, action] = common::client::action_blobs(&["/bin/true"], "observability");
    let action_digest = action.0;
    store.batch_update(vec![command, action]).await.unwrap();
    let invocation = format!("invocation-{}", uuid::Uuid::new_v4());
    let meta = reapi::RequestMetadata {
        tool_invocation_id: invocation.clone(),
        target_id: "observability-target".into(),
        action_mnemonic: "TestAction".into(),
        ..Default::default()
    };
    let mut request = tonic::Request::new(reapi::ExecuteRequest {
        action_digest: Some(action_digest.to_proto()),
        ..Default::default()
    });
    request.metadata_mut().insert_bin(
        scheduler::request_metadata::HEADER,
        tonic::metadata::MetadataValue::from_bytes(&meta.encode_to_vec()),
    );
    let mut exec = ExecutionClient::new(store.channel());
    let mut stream = exec.execute(request).await.unwrap().into_inner();
    let mut done = false;
    while let Some(op) = tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .unwrap()
        .unwrap()
    {
        done |= op.done;
    }
    assert!(done);

    // The client's invocation id reaches both logs (give the writers a moment).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(scheduler.log().contains(&invocation) && worker.log().contains(&invocation)) {
        assert!(
            Instant::now() < deadline,
            "invocation id missing:\n--- scheduler\n{}\n--- worker\n{}",
            scheduler.log(),
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(worker.log().contains("lease finished"), "{}", worker.log());

    let sched = scrape(&http_get(sched_metrics, "/metrics").await.1);
    let after = scrape(&http_get(worker_metrics, "/metrics").await.1);
    assert!(value(&sched, "farm_scheduler_dispatched_total", None) >= 1.0);
    assert!(
        value(
            &sched,
            "farm_scheduler_operations_total",
            Some(("outcome", "ok"))
        ) >= 1.0
    );
    assert!(value(&sched, "farm_cas_requests_total", None) >= 1.0);
    let ok = |s: &prometheus_parse::Scrape| {
        value(s, "farm_worker_actions_total", Some(("outcome", "ok")))
    };
    assert_eq!(
        ok(&after),
        ok(&before) + 1.0,
        "the worker counted the action"
    );
    assert!(
        value(
            &after,
            "farm_worker_action_stage_seconds",
            Some(("stage", "execute"))
        ) >= 1.0
    );
    assert!(after.docs.contains_key("farm_worker_cache_bytes"));

    // Every query of the dashboard names metrics these processes export.
    let mut families: BTreeSet<String> = sched.docs.keys().cloned().collect();
    families.extend(after.docs.keys().cloned());
    let dashboard =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/grafana/cargo-farm-dashboard.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&dashboard).unwrap()).unwrap();
    let mut queried = 0;
    for panel in json["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in metric_names(expr) {
                let family = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(*f)))
                    .unwrap_or(&name)
                    .to_string();
                assert!(
                    families.contains(&family),
                    "{}: {name} is not exported",
                    panel["title"]
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 10, "the dashboard queries {queried} metrics");
}

/// The `farm_…` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("farm_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}
