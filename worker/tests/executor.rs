//! Actions executed end to end through the executor against a real in-process CAS: staging
//! from the hardlinked cache, outputs of REAPI 2.0 and 2.1+ clients, stdout/stderr, exit codes,
//! the environment, missing inputs, timeouts and cancellation.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2::Command;
use cas::Digest;
use common::{bash, code, command, env, message, Farm};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// An input root with a data file, an executable script and a subdirectory.
fn inputs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), b"input data\n").unwrap();
    let tool = dir.path().join("tool.sh");
    std::fs::write(&tool, b"#!/bin/sh\necho tool ran\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/nested.txt"), b"nested\n").unwrap();
    std::os::unix::fs::symlink("../in.txt", dir.path().join("sub/link")).unwrap();
    dir
}

const SCRIPT: &str = "cat in.txt > out/a.txt && mkdir -p out/d/sub && echo x > out/d/sub/f \
    && cp tool.sh out/d/t.sh && ln -s a.txt out/link && ./tool.sh && echo err >&2; exit 3";

#[tokio::test]
async fn reapi_2_0_outputs_stdout_stderr_and_exit_code() {
    let farm = Farm::start().await;
    let dir = inputs();
    let root = farm.upload_dir(dir.path()).await;
    let mut cmd = bash(SCRIPT);
    #[allow(deprecated)]
    {
        cmd.output_files = vec!["out/a.txt".into(), "out/missing".into()];
        cmd.output_directories = vec!["out/d".into()];
    }
    let r = farm.exec(&cmd, Some(root), None).await;
    assert_eq!(code(&r), Code::Ok, "{}", message(&r));
    let result = r.result.unwrap();
    assert_eq!(result.exit_code, 3);
    assert_eq!(farm.stdout(&result).await, "tool ran\n");
    assert_eq!(farm.stderr(&result).await, "err\n");

    assert_eq!(
        result.output_files.len(),
        1,
        "the missing output is left out"
    );
    let a = &result.output_files[0];
    assert_eq!(a.path, "out/a.txt");
    assert_eq!(
        &farm.read(a.digest.as_ref().unwrap()).await[..],
        b"input data\n"
    );
    assert!(!a.is_executable);

    assert_eq!(result.output_directories.len(), 1);
    let d = &result.output_directories[0];
    assert_eq!(d.path, "out/d");
    let tree = farm.tree(d.tree_digest.as_ref().unwrap()).await;
    let root_dir = tree.root.unwrap();
    assert_eq!(root_dir.files.len(), 1);
    assert_eq!(root_dir.files[0].name, "t.sh");
    assert!(root_dir.files[0].is_executable);
    assert_eq!(root_dir.directories[0].name, "sub");
    assert_eq!(tree.children.len(), 1);
    assert_eq!(tree.children[0].files[0].name, "f");
    assert!(
        result.output_symlinks.is_empty(),
        "2.1 fields stay empty for 2.0 clients"
    );

    let meta = result.execution_metadata.unwrap();
    assert_eq!(meta.worker, "test-worker");
    let ts = |t: Option<bazel_remote_apis::google::protobuf::Timestamp>| {
        let t = t.expect("timestamp set");
        (t.seconds, t.nanos)
    };
    let order = [
        ts(meta.worker_start_timestamp),
        ts(meta.input_fetch_start_timestamp),
        ts(meta.input_fetch_completed_timestamp),
        ts(meta.execution_start_timestamp),
        ts(meta.execution_completed_timestamp),
        ts(meta.output_upload_start_timestamp),
        ts(meta.output_upload_completed_timestamp),
        ts(meta.worker_completed_timestamp),
    ];
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
}

#[tokio::test]
async fn reapi_2_1_output_paths_find_their_type() {
    let farm = Farm::start().await;
    let dir = inputs();
    let root = farm.upload_dir(dir.path()).await;
    let mut cmd = bash(SCRIPT);
    cmd.output_paths = vec![
        "out/a.txt".into(),
        "out/d".into(),
        "out/link".into(),
        "out/none".into(),
    ];
    let r = farm.exec(&cmd, Some(root), None).await;
    assert_eq!(code(&r), Code::Ok, "{}", message(&r));
    let result = r.result.unwrap();
    assert_eq!(result.exit_code, 3);
    let files: Vec<&str> = result
        .output_files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(files, ["out/a.txt"]);
    assert_eq!(result.output_directories[0].path, "out/d");
    assert_eq!(result.output_symlinks.len(), 1);
    assert_eq!(result.output_symlinks[0].path, "out/link");
    assert_eq!(result.output_symlinks[0].target, "a.txt");
    #[allow(deprecated)]
    {
        assert_eq!(
            result.output_file_symlinks.len(),
            1,
            "2.0 readers see it too"
        );
    }
}

#[tokio::test]
async fn working_directory_env_and_relative_outputs() {
    let farm = Farm::start().await;
    let dir = inputs();
    let root = farm.upload_dir(dir.path()).await;

    // Only the Action's environment reaches the command.
    let mut cmd = command(&["/usr/bin/env"]);
    cmd.environment_variables = vec![env("A", "1"), env("B", "two words")];
    let r = farm.exec(&cmd, Some(root), None).await;
    let result = r.result.unwrap();
    assert_eq!(farm.stdout(&result).await, "A=1\nB=two words\n");

    // Outputs are relative to the working directory; parents are created before the run.
    let mut cmd = bash("pwd && cat nested.txt link > gen/deep/o.txt");
    cmd.working_directory = "sub".into();
    cmd.output_paths = vec!["gen/deep/o.txt".into()];
    let r = farm.exec(&cmd, Some(root), None).await;
    assert_eq!(code(&r), Code::Ok, "{}", message(&r));
    let result = r.result.unwrap();
    assert_eq!(result.exit_code, 0, "{}", farm.stderr(&result).await);
    assert_eq!(farm.stdout(&result).await, "/exec/sub\n");
    assert_eq!(result.output_files[0].path, "gen/deep/o.txt");
    assert_eq!(
        &farm
            .read(result.output_files[0].digest.as_ref().unwrap())
            .await[..],
        b"nested\ninput data\n",
        "staged symlinks resolve inside the sandbox"
    );

    // A program that does not exist is exit code 127, not a worker failure.
    let r = farm.exec(&command(&["no-such-program"]), None, None).await;
    assert_eq!(code(&r), Code::Ok);
    let result = r.result.unwrap();
    assert_eq!(result.exit_code, 127);
    assert!(farm.stderr(&result).await.contains("no-such-program"));
}

#[tokio::test]
async fn inputs_are_hardlinked_from_the_cache_and_fetched_once() {
    let farm = Farm::start().await;
    let dir = inputs();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("big.bin"), &big).unwrap();
    let root = farm.upload_dir(dir.path()).await;
    let cmd = bash("stat -c '%h %a' in.txt tool.sh && sha256sum big.bin | cut -c1-64");
    let r1 = farm.exec(&cmd, Some(root), None).await;
    let fetched = farm.executor.cache().remote_fetches();
    let r2 = farm.exec(&cmd, Some(root), None).await;
    assert_eq!(
        farm.executor.cache().remote_fetches(),
        fetched,
        "the second run fetches nothing"
    );
    for r in [r1, r2] {
        let result = r.result.unwrap();
        let out = farm.stdout(&result).await;
        let lines: Vec<&str> = out.lines().collect();
        // Linked from the cache (2+ links), read-only, executable bit kept.
        let (links, mode) = lines[0].split_once(' ').unwrap();
        assert!(links.parse::<u32>().unwrap() >= 2, "{out}");
        assert_eq!(mode, "444");
        assert_eq!(lines[1].split_once(' ').unwrap().1, "555");
        assert_eq!(lines[2], Digest::of(&big).hash_hex());
    }
}

#[tokio::test]
async fn missing_inputs_are_a_precondition_failure_listing_them() {
    let farm = Farm::start().await;
    let dir = inputs();
    let tree = cas::merkle::build_tree(dir.path()).await.unwrap();
    // Upload the directories but not the file contents.
    for (_, d) in &tree.directories {
        let (digest, bytes) = cas::merkle::encode_directory(d);
        cas::store::BlobStore::put_bytes(&farm.store, &digest, bytes)
            .await
            .unwrap();
    }
    let r = farm
        .exec(&command(&["true"]), Some(tree.root_digest), None)
        .await;
    assert_eq!(code(&r), Code::FailedPrecondition, "{}", message(&r));
    let status = r.status.unwrap();
    assert_eq!(status.details.len(), 1);
    assert!(status.details[0]
        .type_url
        .ends_with("google.rpc.PreconditionFailure"));
    let text = String::from_utf8_lossy(&status.details[0].value).into_owned();
    let in_txt = Digest::of(b"input data\n");
    assert!(
        text.contains(&format!("blobs/{}/{}", in_txt.hash_hex(), in_txt.size())),
        "{text}"
    );
    assert!(text.contains("MISSING"));
    assert!(r.result.is_none());
}

#[tokio::test]
async fn bad_actions_are_refused_up_front() {
    let farm = Farm::start().await;
    let mut cmd = command(&["true"]);
    cmd.output_paths = vec!["../escape".into()];
    let r = farm.exec(&cmd, None, None).await;
    assert_eq!(code(&r), Code::InvalidArgument, "{}", message(&r));
    let r = farm.exec(&Command::default(), None, None).await;
    assert_eq!(code(&r), Code::InvalidArgument);
    let mut cmd = command(&["true"]);
    cmd.working_directory = "/etc".into();
    assert_eq!(
        code(&farm.exec(&cmd, None, None).await),
        Code::InvalidArgument
    );

    // A lease whose bytes do not match its digests never becomes a job.
    let cmd_bytes = command(&["true"]).encode_to_vec();
    let err = worker::Job::decode("", &"0".repeat(64), 3, b"abc", &cmd_bytes, 0).unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// Whether any process has `needle` in its command line.
fn running(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(needle))
            .unwrap_or(false)
    })
}

#[tokio::test]
async fn timeouts_kill_everything_and_keep_partial_output() {
    let farm = Farm::start().await;
    let script = "echo partial; sleep 1000.123 & sleep 1000.123; echo never";
    let start = Instant::now();
    let r = farm
        .exec(&bash(script), None, Some(Duration::from_secs(1)))
        .await;
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(code(&r), Code::DeadlineExceeded, "{}", message(&r));
    let result = r.result.unwrap();
    assert_eq!(result.exit_code, worker::executor::TIMEOUT_EXIT_CODE);
    assert_eq!(farm.stdout(&result).await, "partial\n");
    assert!(!running("1000.123"), "the sandboxed processes are gone");
    assert!(farm.sandbox_processes().is_empty());

    // The worker keeps serving.
    let r = farm.exec(&command(&["echo", "after"]), None, None).await;
    assert_eq!(farm.stdout(r.result.as_ref().unwrap()).await, "after\n");
}

#[tokio::test]
async fn cancellation_kills_the_sandbox() {
    let farm = Farm::start().await;
    let job = farm.job(&bash("sleep 1000.456"), None, None);
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.cancel();
    });
    let r = farm.executor.execute(&job, &cancel, &|_| {}).await;
    assert_eq!(code(&r), Code::Cancelled);
    assert!(!running("1000.456"));
}

#[tokio::test]
async fn slots_bound_concurrency_and_many_actions_run() {
    let farm = Farm::start().await;
    let start = Instant::now();
    let runs = (0..40).map(|i| {
        let farm = &farm;
        async move {
            let r = farm
                .exec(&command(&["echo", &i.to_string()]), None, None)
                .await;
            let result = r.result.unwrap();
            assert_eq!(farm.stdout(&result).await, format!("{i}\n"));
        }
    });
    futures::future::join_all(runs).await;
    eprintln!("40 trivial actions in {:?}", start.elapsed());
}
