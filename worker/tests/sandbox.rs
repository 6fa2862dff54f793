//! Sandbox escapes and hostile commands, through the executor: network connections, writes
//! outside the action's directory, reads of host files, tampering with cached inputs, outputs
//! escaping the input root, fork bombs, disk fill and memory hogs. Every attempt fails with a
//! recorded status and exit code, and the worker keeps serving.

mod common;

use std::time::Duration;

use common::{bash, code, command, message, Farm};
use tonic::Code;

/// Runs `script` and returns (exit code, stdout, stderr) of a run the worker completed.
async fn run(farm: &Farm, script: &str) -> (i32, String, String) {
    let r = farm.exec(&bash(script), None, None).await;
    assert_eq!(code(&r), Code::Ok, "{}", message(&r));
    let result = r.result.unwrap();
    (
        result.exit_code,
        farm.stdout(&result).await,
        farm.stderr(&result).await,
    )
}

#[tokio::test]
async fn no_network_even_to_the_hosts_loopback() {
    let farm = Farm::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected; \
         exec 4<>/dev/tcp/1.1.1.1/80 && echo connected-outside; \
         exec 5<>/dev/udp/8.8.8.8/53 && echo >&5 && echo sent-udp; exit 9"
    );
    let (exit, out, err) = run(&farm, &script).await;
    assert_eq!(exit, 9);
    assert!(
        !out.contains("connected") && !out.contains("sent-udp"),
        "{out}"
    );
    assert!(
        err.contains("Connection refused") || err.contains("unreachable"),
        "{err}"
    );
    let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "nothing reached the host's listener");
}

#[tokio::test]
async fn the_host_is_read_only_and_mostly_invisible() {
    let farm = Farm::start().await;
    // A secret outside the allowed paths.
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("secret.txt");
    std::fs::write(&secret, "top secret").unwrap();
    let work = farm.work_dir.display().to_string();
    let script = format!(
        "cat {secret} /etc/shadow /etc/hostname /root/.bashrc; \
         echo x > /usr/pwned; echo x > /pwned; mkdir /etc/pwned; \
         echo x > {work}/pwned; echo x > {work}/cache/pwned; \
         ls {work}; ls /proc/1/root/; echo done",
        secret = secret.display()
    );
    let (_, out, err) = run(&farm, &script).await;
    assert!(!out.contains("top secret"), "{out}");
    assert_eq!(out.trim_end().lines().last(), Some("done"), "{out}");
    assert!(err.contains("Read-only file system"), "{err}");
    for p in ["/usr/pwned", "/pwned", "/etc/pwned"] {
        assert!(!std::path::Path::new(p).exists(), "{p} was created");
    }
    assert!(!farm.work_dir.join("pwned").exists());
    assert!(!farm.work_dir.join("cache/pwned").exists());

    // The only writable places are the action's own input root and /tmp, gone afterwards.
    let (exit, _, err) = run(&farm, "echo a > here && echo b > /tmp/t && cat here /tmp/t").await;
    assert_eq!(exit, 0, "{err}");
    let (exit, _, _) = run(&farm, "test -e /tmp/t").await;
    assert_ne!(exit, 0, "/tmp is private to each action");
}

#[tokio::test]
async fn cached_inputs_cannot_be_changed_by_an_action() {
    let farm = Farm::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), b"original\n").unwrap();
    let root = farm.upload_dir(dir.path()).await;
    let tamper = bash(
        "chmod u+w in.txt; echo evil >> in.txt; truncate -s0 in.txt; \
         ln in.txt /tmp/l 2>/dev/null; rm -f in.txt; echo new > in.txt; cat in.txt",
    );
    let r = farm.exec(&tamper, Some(root), None).await;
    let result = r.result.unwrap();
    assert_eq!(
        farm.stdout(&result).await,
        "new\n",
        "its own copy is its to replace"
    );
    let r = farm
        .exec(&command(&["cat", "in.txt"]), Some(root), None)
        .await;
    let result = r.result.unwrap();
    assert_eq!(
        farm.stdout(&result).await,
        "original\n",
        "the cached file is intact"
    );
}

#[tokio::test]
async fn outputs_escaping_the_root_are_refused() {
    let farm = Farm::start().await;
    let cases = [
        // The output's parent replaced by a symlink to the host.
        ("rm -r out && ln -s /etc out", vec!["out/passwd"]),
        // A symlink output pointing at a host file.
        ("ln -s /etc/passwd leak", vec!["leak"]),
        // A symlink out through `..`.
        ("ln -s ../../../../etc/passwd leak", vec!["leak"]),
        // A symlink inside an output directory.
        ("mkdir -p d && ln -s /etc d/etc", vec!["d"]),
        // `sub/up` is the root, so `sub/up/..` leaves it.
        (
            "mkdir sub && ln -s .. sub/up && ln -s sub/up/.. out2",
            vec!["out2"],
        ),
    ];
    for (script, outputs) in cases {
        let mut cmd = bash(script);
        cmd.output_paths = outputs.iter().map(|s| s.to_string()).collect();
        let r = farm.exec(&cmd, None, None).await;
        assert_eq!(
            code(&r),
            Code::FailedPrecondition,
            "{script}: {}",
            message(&r)
        );
        assert!(message(&r).contains("input root"), "{}", message(&r));
        let result = r.result.expect("exit code and logs are still reported");
        assert!(result.output_files.is_empty() && result.output_symlinks.is_empty());
    }
    // Symlinks that stay inside are reported as they are.
    let mut cmd = bash("mkdir -p d/e && echo x > d/f && ln -s ../f d/e/up && ln -s d/f ok");
    cmd.output_paths = vec!["d".into(), "ok".into()];
    let r = farm.exec(&cmd, None, None).await;
    assert_eq!(code(&r), Code::Ok, "{}", message(&r));
    assert_eq!(r.result.unwrap().output_symlinks[0].target, "d/f");
}

#[tokio::test]
async fn fork_bombs_are_contained_and_the_worker_goes_on() {
    let farm = Farm::start_with(|c| c.sandbox.limits.processes = Some(64)).await;
    // The classic bomb: contained, recorded, gone.
    let r = farm
        .exec(
            &bash(":(){ :|:& };:; wait"),
            None,
            Some(Duration::from_secs(5)),
        )
        .await;
    assert!(
        matches!(code(&r), Code::Ok | Code::DeadlineExceeded),
        "{}",
        message(&r)
    );
    // Recorded either way (it may die out before reaching the cap on a slow machine).
    assert!(r.result.is_some(), "a recorded result");
    assert!(
        farm.sandbox_processes().is_empty(),
        "nothing of it survives"
    );

    // A bomb that keeps its processes alive is capped, then killed at the timeout.
    let hold = bash("for i in $(seq 500); do sleep 100.789 & done; wait");
    let r = farm.exec(&hold, None, Some(Duration::from_secs(3))).await;
    assert_eq!(code(&r), Code::DeadlineExceeded, "{}", message(&r));
    let err = farm.stderr(r.result.as_ref().unwrap()).await;
    assert!(err.contains("Resource temporarily unavailable"), "{err}");
    assert!(
        farm.sandbox_processes().is_empty(),
        "nothing of it survives"
    );

    let (exit, out, _) = run(&farm, "echo still serving").await;
    assert_eq!((exit, out.as_str()), (0, "still serving\n"));
}

#[tokio::test]
async fn disk_fill_and_memory_hogs_hit_their_limits() {
    let farm = Farm::start_with(|c| {
        c.sandbox.limits.file_size_bytes = Some(16 << 20);
        c.sandbox.limits.memory_bytes = Some(512 << 20);
    })
    .await;
    let (exit, _, _) = run(&farm, "head -c 100000000 /dev/zero > big").await;
    assert_eq!(
        exit,
        128 + libc::SIGXFSZ,
        "killed by SIGXFSZ at the file size limit"
    );
    let (exit, _, err) = run(&farm, "perl -e '$x = \"a\" x (1 << 30); print length $x'").await;
    assert_ne!(exit, 0);
    assert!(err.contains("Out of memory"), "{err}");
    let (exit, _, _) = run(&farm, "true").await;
    assert_eq!(exit, 0);
}

#[tokio::test]
async fn nothing_the_worker_inherited_reaches_the_sandbox() {
    let farm = Farm::start().await;
    // An fd the worker process holds without close-on-exec (as a careless parent may pass).
    let f = std::fs::File::open("/proc/self/status").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: clearing FD_CLOEXEC on an fd we own.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    let (_, out, _) = run(&farm, "ls /proc/self/fd | sort -n | tr '\\n' ' '").await;
    // bash's stdin/stdout/stderr, and the directory `ls` reads.
    assert_eq!(out, "0 1 2 3 ", "fd {fd} must not be inherited");
    drop(f);
}

#[tokio::test]
async fn sandbox_users_are_claimed_and_leftovers_killed() {
    let base = 64000;
    // A process left running as a sandbox user by a worker that died.
    let mut leftover = std::process::Command::new("sleep");
    std::os::unix::process::CommandExt::uid(&mut leftover, base + 1);
    let mut leftover = leftover.arg("1000.999").spawn().unwrap();
    let farm = Farm::start_with(|c| c.sandbox.uid_base = Some(base)).await;
    let status = leftover.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );

    // A second worker on the same users is refused.
    let dir = tempfile::tempdir().unwrap();
    let mut config = worker::ExecutorConfig::new(dir.path().join("w"));
    config.sandbox.uid_base = Some(base);
    let err = worker::Executor::new(config, farm.store.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--sandbox-uid-base"), "{err}");
}
