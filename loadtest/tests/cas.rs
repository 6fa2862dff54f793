//! farm-loadtest's storage scenarios against a real in-process farm: cas-small's client flow
//! and size mixes, cas-large's streamed writes and reads, exact `--requests`, a `--duration`
//! that ends in time, and errors counted by status against a closed port.

mod common;

use std::time::Duration;

use common::{closed_port, loadtest, memory_storage, start_farm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_small_runs_a_clients_flow_without_errors() {
    let farm = start_farm(memory_storage(64 << 20)).await;
    let run = loadtest(
        &farm.url,
        &[
            "cas-small",
            "--requests",
            "30",
            "--concurrency",
            "3",
            "--batch",
            "50",
            "--preload",
            "200",
            "--hit-ratio",
            "0.5",
            "--seed",
            "11",
        ],
    )
    .await;
    run.assert_clean();
    // Exactly the requests asked for, every one of them a success.
    assert_eq!(run.u64(&["requests"]), 30, "{}", run.stdout);
    assert_eq!(run.u64(&["ops"]), 30);
    let find = run.kind("find_missing");
    let update = run.kind("batch_update");
    let read = run.kind("batch_read");
    let (finds, updates, reads) = (
        find["ops"].as_u64().unwrap(),
        update["ops"].as_u64().unwrap(),
        read["ops"].as_u64().unwrap(),
    );
    assert_eq!(finds + updates + reads, 30);
    assert!(finds >= 9 && updates >= 8 && reads >= 8, "{}", run.stdout);
    // Each FindMissingBlobs asks for 50 digests, half of stored blobs: the fresh half is missing.
    assert_eq!(find["blobs"].as_u64(), Some(finds * 50));
    let ratio = run.json["find_hit_ratio"].as_f64().unwrap();
    assert!((ratio - 0.5).abs() < 1e-9, "hit ratio {ratio}");
    // What was found missing was uploaded (all but perhaps the last find's, out of requests).
    let missing = run.u64(&["counters", "find_missing"]);
    let uploaded = update["blobs"].as_u64().unwrap();
    assert!(
        uploaded <= missing && uploaded >= missing - 3 * 25,
        "{uploaded} of {missing}"
    );
    assert_eq!(update["bytes"].as_u64(), Some(uploaded * 4096));
    // Every read asked for 50 stored blobs and got them.
    assert_eq!(read["blobs"].as_u64(), Some(reads * 50));
    assert_eq!(read["bytes"].as_u64(), Some(reads * 50 * 4096));
    assert!(run.stdout.contains("batch_update") && run.stdout.contains("p99 ms"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_small_size_mix_verified_reads_and_single_operations() {
    let farm = start_farm(memory_storage(64 << 20)).await;
    let run = loadtest(
        &farm.url,
        &[
            "cas-small",
            "--sizes",
            "1KiB:50,4KiB:40,64KiB:10",
            "--verify",
            "--requests",
            "12",
            "--concurrency",
            "2",
            "--batch",
            "40",
            "--preload",
            "100",
        ],
    )
    .await;
    run.assert_clean();
    assert_eq!(run.u64(&["requests"]), 12);
    let read = run.kind("batch_read");
    let avg = read["bytes"].as_f64().unwrap() / read["blobs"].as_f64().unwrap();
    // The mix averages 0.5·1 + 0.4·4 + 0.1·64 = 8.5 KiB.
    assert!((2048.0..20480.0).contains(&avg), "average blob {avg} bytes");

    let uploads = loadtest(
        &farm.url,
        &[
            "cas-small",
            "--ops",
            "update",
            "--requests",
            "5",
            "--batch",
            "20",
        ],
    )
    .await;
    uploads.assert_clean();
    assert_eq!(uploads.kind("batch_update")["blobs"].as_u64(), Some(100));
    assert!(uploads.kind("find_missing").is_null());

    // find alone asks for digests of blobs that do not exist: all missing.
    let finds = loadtest(
        &farm.url,
        &[
            "cas-small",
            "--ops",
            "find",
            "--hit-ratio",
            "0",
            "--requests",
            "4",
            "--batch",
            "25",
        ],
    )
    .await;
    finds.assert_clean();
    assert_eq!(finds.u64(&["counters", "find_missing"]), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_large_streams_fresh_blobs_in_and_out() {
    let farm = start_farm(memory_storage(64 << 20)).await;
    let run = loadtest(
        &farm.url,
        &[
            "cas-large",
            "--blob-size",
            "3MiB",
            "--chunk-size",
            "256KiB",
            "--requests",
            "6",
            "--concurrency",
            "2",
            "--verify",
        ],
    )
    .await;
    run.assert_clean();
    assert_eq!(run.u64(&["requests"]), 6);
    let w = run.kind("bytestream_write");
    let r = run.kind("bytestream_read");
    let writes = w["ops"].as_u64().unwrap();
    let reads = r["ops"].as_u64().unwrap();
    assert_eq!(writes + reads, 6);
    assert!(writes >= 3, "{}", run.stdout);
    assert_eq!(w["bytes"].as_u64(), Some(writes * 3 * 1024 * 1024));
    assert_eq!(r["bytes"].as_u64(), Some(reads * 3 * 1024 * 1024));
    assert!(run.json["bytes_per_s"].as_f64().unwrap() > 0.0);

    // Read-only: preloaded blobs, read back and verified.
    let reads = loadtest(
        &farm.url,
        &[
            "cas-large",
            "--blob-size",
            "1MiB",
            "--ops",
            "read",
            "--preload",
            "2",
            "--requests",
            "4",
            "--verify",
        ],
    )
    .await;
    reads.assert_clean();
    assert_eq!(reads.kind("bytestream_read")["ops"].as_u64(), Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_stops_the_run_in_time() {
    let farm = start_farm(memory_storage(64 << 20)).await;
    let run = loadtest(
        &farm.url,
        &[
            "cas-small",
            "--duration",
            "1.5",
            "--concurrency",
            "4",
            "--batch",
            "20",
            "--preload",
            "100",
        ],
    )
    .await;
    run.assert_clean();
    let wall = run.json["wall_s"].as_f64().unwrap();
    assert!((1.4..4.0).contains(&wall), "measured for {wall} s");
    // Setup and start-up included, well under the 5 s grace of a hard stop.
    assert!(
        run.elapsed < Duration::from_secs(8),
        "ran {:?}",
        run.elapsed
    );
    assert!(run.u64(&["requests"]) >= 3, "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_counts_unavailable_by_name() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let run = loadtest(
        &url,
        &[
            "cas-small",
            "--ops",
            "find",
            "--hit-ratio",
            "0",
            "--requests",
            "7",
            "--timeout",
            "5",
        ],
    )
    .await;
    assert_eq!(
        run.json["errors"]["UNAVAILABLE"].as_u64(),
        Some(7),
        "{}",
        run.stdout
    );
    assert_eq!(run.u64(&["ops"]), 0);
    assert_eq!(run.u64(&["requests"]), 7);
    // Finished with errors: exit status 3, and the table names them.
    assert_eq!(run.code, 3);
    assert!(
        run.stdout.contains("errors: UNAVAILABLE 7"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_exit_2_and_failed_setup_exits_1() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_farm-loadtest"))
        .args(["--target", "127.0.0.1:1", "cas-small", "--hit-ratio", "2"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--hit-ratio"));
    // Preloading against a closed port cannot work: the run does not start.
    let url = format!("http://127.0.0.1:{}", closed_port());
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_farm-loadtest"))
        .args([
            "--target",
            &url,
            "cas-small",
            "--requests",
            "3",
            "--timeout",
            "5",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("UNAVAILABLE"), "{stderr}");
}
