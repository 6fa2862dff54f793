//! farm-loadtest's execution scenarios against a real farm: Execute answered from the action
//! cache (no worker needed), real `/bin/true` actions and a build graph on an in-process
//! sandboxed worker (bubblewrap, which scripts/test.sh installs).

mod common;

use common::{loadtest, memory_storage, start_farm, start_farm_with_worker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_cached_is_answered_from_the_action_cache() {
    let farm = start_farm(memory_storage(64 << 20)).await;
    let run = loadtest(
        &farm.url,
        &[
            "execute-cached",
            "--actions",
            "20",
            "--requests",
            "100",
            "--concurrency",
            "8",
        ],
    )
    .await;
    run.assert_clean();
    assert_eq!(run.kind("execute")["ops"].as_u64(), Some(100));
    assert_eq!(run.u64(&["counters", "cached"]), 100);
    assert_eq!(run.json["cached_ratio"].as_f64(), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_runs_real_actions_and_a_graph_on_a_worker() {
    let farm = start_farm_with_worker(2).await;
    let run = loadtest(
        &farm.url,
        &["execute", "--requests", "12", "--concurrency", "4"],
    )
    .await;
    run.assert_clean();
    assert_eq!(run.kind("execute")["ops"].as_u64(), Some(12));
    // Each ran: none was a cache hit.
    assert_eq!(run.u64(&["counters", "not_cached"]), 12);
    assert!(run.kind("upload_actions")["ops"].as_u64().unwrap() >= 1);

    let graph = loadtest(
        &farm.url,
        &[
            "graph",
            "--width",
            "3",
            "--depth",
            "3",
            "--fan-in",
            "2",
            "--action-ms",
            "100",
            "--concurrency",
            "8",
        ],
    )
    .await;
    graph.assert_clean();
    assert_eq!(graph.kind("execute")["ops"].as_u64(), Some(9));
    assert_eq!(graph.u64(&["graph_runs_complete"]), 1);
    assert_eq!(graph.json["ideal_critical_path_ms"].as_f64(), Some(300.0));
    let efficiency = graph.json["critical_path_efficiency"].as_f64().unwrap();
    let wall = graph.json["graph_wall_ms"].as_f64().unwrap();
    // Three levels of 100 ms sleeps cannot finish sooner than 300 ms.
    assert!(
        wall >= 300.0 && efficiency > 0.0 && efficiency <= 1.0,
        "{}",
        graph.stdout
    );
    assert!(graph.stdout.contains("critical-path efficiency"));
}
