//! farm-loadtest against a storage server behind TLS and a bearer-token check: the CA and
//! server name options, the token on every call, the REAPI RequestMetadata it sends, and a
//! wrong token counted as UNAUTHENTICATED.

mod common;

use common::{loadtest, make_certificates, start_secure_storage};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_bearer_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(dir.path());
    let farm = start_secure_storage(&cert, &key, "s3cret").await;
    let ca = ca.display().to_string();
    let url = format!("https://127.0.0.1:{}", farm.port);
    let tls = ["--ca-cert", ca.as_str(), "--tls-domain", "localhost"];

    let mut args = tls.to_vec();
    args.extend([
        "--token",
        "s3cret",
        "cas-small",
        "--requests",
        "9",
        "--batch",
        "10",
        "--preload",
        "30",
    ]);
    let run = loadtest(&url, &args).await;
    run.assert_clean();
    assert_eq!(run.u64(&["ops"]), 9);
    let seen = farm.seen_metadata.lock().clone();
    assert!(!seen.is_empty());
    let tool = seen[0].tool_details.clone().unwrap_or_default();
    assert_eq!(tool.tool_name, "farm-loadtest");
    assert!(!seen[0].tool_invocation_id.is_empty());
    // One invocation id for the whole run.
    assert!(seen
        .iter()
        .all(|m| m.tool_invocation_id == seen[0].tool_invocation_id));

    let mut args = tls.to_vec();
    args.extend([
        "--token",
        "wrong",
        "cas-small",
        "--ops",
        "find",
        "--hit-ratio",
        "0",
        "--requests",
        "4",
    ]);
    let denied = loadtest(&url, &args).await;
    assert_eq!(
        denied.json["errors"]["UNAUTHENTICATED"].as_u64(),
        Some(4),
        "{}",
        denied.stdout
    );

    // Without the CA, the server's certificate is not trusted: every call fails.
    let untrusted = loadtest(
        &url,
        &[
            "--tls-domain",
            "localhost",
            "--token",
            "s3cret",
            "cas-small",
            "--ops",
            "find",
            "--hit-ratio",
            "0",
            "--requests",
            "3",
            "--timeout",
            "5",
        ],
    )
    .await;
    assert_eq!(untrusted.u64(&["ops"]), 0);
    assert_eq!(untrusted.errors(), 3, "{}", untrusted.stdout);
}
