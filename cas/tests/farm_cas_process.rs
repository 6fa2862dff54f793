//! `farm-cas` as a real process: flags, config files, restart persistence, metrics, concurrency.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::bytestream::{self as bs, byte_stream_client::ByteStreamClient};
use cas::Digest;
use reapi::action_cache_client::ActionCacheClient;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running farm-cas, killed on drop.
struct FarmCas {
    child: Child,
    grpc: String,
    metrics: Option<String>,
}

impl Drop for FarmCas {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts farm-cas with `args` plus `--listen 127.0.0.1:0`, and reads the bound addresses from
/// its log.
fn start(args: &[&str]) -> FarmCas {
    let mut child = Command::new(env!("CARGO_BIN_EXE_farm-cas"))
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("farm-cas starts");
    let out = child.stderr.take().expect("stderr piped");
    let mut lines = BufReader::new(out).lines();
    let (mut grpc, mut metrics) = (None, None);
    let wants_metrics = args.contains(&"--metrics-listen");
    while grpc.is_none() || (wants_metrics && metrics.is_none()) {
        let line = lines
            .next()
            .expect("farm-cas exited before serving")
            .expect("log line");
        let bound = line
            .split("bound=")
            .nth(1)
            .map(|s| s.split_whitespace().next().unwrap_or("").to_string());
        if line.contains("serving REAPI storage") {
            grpc = bound.map(|b| format!("http://{b}"));
        } else if line.contains("/metrics") {
            metrics = bound;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    FarmCas {
        child,
        grpc: grpc.expect("gRPC address logged"),
        metrics,
    }
}

async fn write_blob(url: &str, data: &[u8]) -> Digest {
    let digest = Digest::of(data);
    let mut client = ByteStreamClient::connect(url.to_string()).await.unwrap();
    let req = bs::WriteRequest {
        resource_name: format!(
            "main/uploads/{}/blobs/{}/{}",
            uuid::Uuid::new_v4(),
            digest.hash_hex(),
            digest.size()
        ),
        write_offset: 0,
        finish_write: true,
        data: data.to_vec(),
    };
    let resp = client
        .write(futures::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.committed_size, data.len() as i64);
    digest
}

async fn missing(url: &str, digests: &[Digest]) -> Vec<String> {
    let mut client = ContentAddressableStorageClient::connect(url.to_string())
        .await
        .unwrap();
    client
        .find_missing_blobs(reapi::FindMissingBlobsRequest {
            instance_name: "main".into(),
            blob_digests: digests.iter().map(Digest::to_proto).collect(),
            digest_function: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests
        .into_iter()
        .map(|d| d.hash)
        .collect()
}

async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    let code = body[9..12].parse().unwrap();
    let body = body.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_and_results_survive_restarts_graceful_and_killed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let mut server = start(&["--root", root]);
    let blob = write_blob(&server.grpc, b"persisted output").await;
    let action = Digest::of(b"an action");
    let result = reapi::ActionResult {
        output_files: vec![reapi::OutputFile {
            path: "out.o".into(),
            digest: Some(blob.to_proto()),
            ..Default::default()
        }],
        exit_code: 0,
        ..Default::default()
    };
    let mut ac = ActionCacheClient::connect(server.grpc.clone())
        .await
        .unwrap();
    ac.update_action_result(reapi::UpdateActionResultRequest {
        instance_name: "main".into(),
        action_digest: Some(action.to_proto()),
        action_result: Some(result.clone()),
        ..Default::default()
    })
    .await
    .unwrap();

    // Graceful stop, then restart on the same root.
    sigterm(&server.child);
    let status = server.child.wait().unwrap();
    assert!(status.success(), "SIGTERM is a clean shutdown: {status}");
    assert!(
        dir.path().join("cas").join("clean").exists(),
        "a clean shutdown syncs the CAS and marks it clean (no rehash at the next start)"
    );
    server = start(&["--root", root]);
    assert!(missing(&server.grpc, &[blob]).await.is_empty());

    // Hard kill, then restart: still there, and the action result too.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let server = start(&["--root", root]);
    assert!(missing(&server.grpc, &[blob]).await.is_empty());
    let mut ac = ActionCacheClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let got = ac
        .get_action_result(reapi::GetActionResultRequest {
            instance_name: "main".into(),
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.output_files, result.output_files);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_writers_of_one_digest() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&["--root", dir.path().to_str().unwrap()]);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let url = server.grpc.clone();
            let data = data.clone();
            tokio::spawn(async move { write_blob(&url, &data).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Digest::of(&data));
    }
    let stored: Vec<_> = walk(&dir.path().join("cas"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(&Digest::of(&data).hash_hex()))
        .collect();
    assert_eq!(stored.len(), 1, "one blob file: {stored:?}");
    assert_eq!(std::fs::read(&stored[0]).unwrap(), data);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_exist_and_move_with_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&[
        "--root",
        dir.path().to_str().unwrap(),
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let addr = server.metrics.clone().unwrap();
    assert_eq!(http_get(&addr, "/healthz").await.0, 200);
    assert_eq!(http_get(&addr, "/readyz").await.0, 200);
    let scrape = |body: String| {
        prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap()
    };
    let before = scrape(http_get(&addr, "/metrics").await.1);
    let names: Vec<&str> = before.samples.iter().map(|s| s.metric.as_str()).collect();
    for family in ["farm_cas_bytes_total", "farm_cas_lookups_total"] {
        // Counter vectors appear once a label set is used; the families are declared regardless.
        assert!(
            before.docs.contains_key(family),
            "{family} declared: {names:?}"
        );
    }
    let d = write_blob(&server.grpc, b"metrics please").await;
    assert!(
        missing(&server.grpc, &[d, Digest::of(b"absent")])
            .await
            .len()
            == 1
    );
    let after = scrape(http_get(&addr, "/metrics").await.1);
    let value = |s: &prometheus_parse::Scrape, name: &str, label: (&str, &str)| -> f64 {
        s.samples
            .iter()
            .filter(|x| x.metric == name && x.labels.get(label.0) == Some(label.1))
            .map(|x| match x.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert!(value(&after, "farm_cas_bytes_total", ("direction", "written")) >= 14.0);
    assert!(value(&after, "farm_cas_lookups_total", ("result", "hit")) >= 1.0);
    assert!(value(&after, "farm_cas_lookups_total", ("result", "miss")) >= 1.0);
    assert!(
        after
            .samples
            .iter()
            .any(|x| x.metric.starts_with("farm_cas_request_duration_seconds")),
        "latency histogram present"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_composes_a_stack_with_redis() {
    let redis = std::env::var("FARM_TEST_REDIS_URL")
        .expect("FARM_TEST_REDIS_URL unset: run the tests through ./scripts/test.sh");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("farm.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[cas]
kind = "size_partitioned"
threshold = "1 KiB"
small = {{ kind = "redis", url = "{redis}", key_prefix = "cfgtest-{id}:" }}
large = {{ kind = "tiered", fast = {{ kind = "memory", max_bytes = "64 MiB" }}, slow = {{ kind = "filesystem", root = "{root}/cas", max_bytes = "1 GiB" }} }}
[action_cache]
kind = "redis"
url = "{redis}"
key_prefix = "cfgtest-ac-{id}:"
"#,
            id = uuid::Uuid::new_v4(),
            root = dir.path().display()
        ),
    )
    .unwrap();
    let server = start(&["--config", cfg.to_str().unwrap()]);
    let small = write_blob(&server.grpc, b"small blob").await;
    let big_data = vec![7u8; 100_000];
    let big = write_blob(&server.grpc, &big_data).await;
    assert!(missing(&server.grpc, &[small, big]).await.is_empty());
    assert!(walk(&dir.path().join("cas"))
        .iter()
        .any(|p| p.to_string_lossy().contains(&big.hash_hex())));
}

#[test]
fn bad_invocations_name_the_problem() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_farm-cas"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} must fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(&["--listen", "127.0.0.1:0"]);
    assert!(err.contains("--root") && err.contains("--config"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[cas]\nkind = \"floppy\"\n[action_cache]\nkind = \"memory\"\nmax_bytes = 1\n",
    )
    .unwrap();
    let err = run(&["--listen", "127.0.0.1:0", "--config", cfg.to_str().unwrap()]);
    assert!(err.contains("floppy") && err.contains("bad.toml"), "{err}");
    let err = run(&["--root", "/tmp/x", "--listen", "not-an-address"]);
    assert!(err.contains("not-an-address"), "{err}");
    let err = run(&["--root", dir.path().to_str().unwrap()]);
    assert!(err.contains("--listen"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_files_whose_filesystem_stores_share_a_directory_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    std::fs::create_dir(dir.path().join("real")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
    let fs = |root: &str| {
        format!("{{ kind = \"filesystem\", root = \"{root}\", max_bytes = \"64 MiB\" }}")
    };
    let config = |cas: String, ac: String| format!("cas = {cas}\naction_cache = {ac}\n");
    let refused = [
        // One root for the CAS and the action cache.
        (
            config(fs(&format!("{d}/x")), fs(&format!("{d}/x"))),
            ["`cas`", "`action_cache`"],
        ),
        // The action cache inside the CAS's directory.
        (
            config(fs(&format!("{d}/x")), fs(&format!("{d}/x/ac"))),
            ["`cas`", "`action_cache`"],
        ),
        // The same directory spelled through a symlink and through `..`.
        (
            config(
                fs(&format!("{d}/link/cas")),
                fs(&format!("{d}/real/new/../cas")),
            ),
            ["`cas`", "`action_cache`"],
        ),
        // Two tiers of one stack in one directory.
        (
            config(
                format!(
                    "{{ kind = \"tiered\", fast = {}, slow = {} }}",
                    fs(&format!("{d}/t")),
                    fs(&format!("{d}/t"))
                ),
                "{ kind = \"memory\", max_bytes = \"1 MiB\" }".into(),
            ),
            ["`cas.fast`", "`cas.slow`"],
        ),
    ];
    for (i, (text, names)) in refused.iter().enumerate() {
        let cfg = dir.path().join(format!("shared-{i}.toml"));
        std::fs::write(&cfg, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_farm-cas"))
            .args(["--listen", "127.0.0.1:0", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text} must be refused");
        assert!(err.contains("share a directory"), "{err}");
        for name in names {
            assert!(err.contains(name), "{name} not named: {err}");
        }
        // Both roots, as written in the file.
        let roots: Vec<&str> = text
            .split("root = \"")
            .skip(1)
            .map(|r| &r[..r.find('"').unwrap()])
            .collect();
        for root in roots {
            assert!(err.contains(root), "{root} not named: {err}");
        }
    }
    assert!(
        !dir.path().join("x").exists(),
        "a refused config creates nothing"
    );
    assert!(
        !dir.path().join("t").exists(),
        "a refused config creates nothing"
    );

    // Sibling roots (one name a prefix of the other's) are fine.
    let cfg = dir.path().join("fine.toml");
    std::fs::write(
        &cfg,
        config(fs(&format!("{d}/cas")), fs(&format!("{d}/cas-ac"))),
    )
    .unwrap();
    let server = start(&["--config", cfg.to_str().unwrap()]);
    let blob = write_blob(&server.grpc, b"stored next to its action cache").await;
    assert!(missing(&server.grpc, &[blob]).await.is_empty());
}
