//! farm-loadtest's `ac` scenario: hits and misses on a healthy action cache, and lost results
//! counted as NOT_FOUND on one too small to keep them.

mod common;

use common::{loadtest, memory_storage, start_farm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_and_updates_without_errors() {
    let farm = start_farm(memory_storage(64 << 20)).await;
    let run = loadtest(
        &farm.url,
        &[
            "ac",
            "--requests",
            "300",
            "--preload",
            "50",
            "--concurrency",
            "4",
            "--hit-ratio",
            "0.5",
        ],
    )
    .await;
    run.assert_clean();
    assert_eq!(run.u64(&["requests"]), 300);
    let gets = run.kind("get_action_result")["ops"].as_u64().unwrap();
    let updates = run.kind("update_action_result")["ops"].as_u64().unwrap();
    assert_eq!(gets + updates, 300);
    assert!(gets > 60 && updates > 60, "{}", run.stdout);
    let hits = run.u64(&["counters", "get_hits"]);
    let misses = run.u64(&["counters", "get_misses"]);
    assert_eq!(hits + misses, gets);
    assert!(hits > 0 && misses > 0, "{}", run.stdout);

    // Weighted: updates only.
    let w = loadtest(
        &farm.url,
        &[
            "ac",
            "--ops",
            "get:0,update:1",
            "--requests",
            "20",
            "--preload",
            "0",
        ],
    )
    .await;
    w.assert_clean();
    assert_eq!(w.kind("update_action_result")["ops"].as_u64(), Some(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_action_cache_shows_not_found_errors() {
    // Room for a handful of results: most of the 200 preloaded ones are evicted.
    let farm = start_farm(memory_storage(2048)).await;
    let run = loadtest(
        &farm.url,
        &[
            "ac",
            "--ops",
            "get",
            "--hit-ratio",
            "1",
            "--preload",
            "200",
            "--requests",
            "40",
        ],
    )
    .await;
    let not_found = run.json["errors"]["NOT_FOUND"].as_u64().unwrap_or(0);
    assert!(not_found >= 20, "{}", run.stdout);
    assert_eq!(run.u64(&["requests"]), 40);
    assert_eq!(run.code, 3);
    assert!(run.stdout.contains("NOT_FOUND"));
}
