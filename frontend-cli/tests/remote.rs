//! A shared farm: `cargo farm up` serves REAPI from one process; `cargo farm build --remote`
//! executes there from another checkout with its own farm home, and `--remote-cache` executes
//! in a local sandbox while reading and writing the same farm's cache.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A `cargo farm up` process on a free loopback port, stopped (SIGTERM) on drop.
struct Up {
    child: Child,
    url: String,
    _home: FarmHome,
}

impl Up {
    fn start() -> Up {
        let home = FarmHome::new();
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_cargo-farm"))
            .args(["farm", "up", "--listen", &format!("127.0.0.1:{port}")])
            .env("CARGO_FARM_HOME", home.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "cargo farm up did not listen in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Up {
            child,
            url: format!("grpc://127.0.0.1:{port}"),
            _home: home,
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn builds_share_one_farm_by_remote_execution_and_by_remote_cache() {
    let farm = Up::start();
    let p = Project::new("workspace");
    let client_home = FarmHome::new();

    let remote = farm_build(client_home.path(), &p.dir, &["--remote", &farm.url]);
    assert_eq!(remote["farm"], "remote");
    assert_eq!(n(&remote, "failed"), 0);
    assert!(n(&remote, "executed") > 0, "{remote}");
    let expected = run(&p.path("target/debug/app"), &[]);

    // Another machine (own checkout path, own home) sharing only the cache: all hits.
    let q = Project::new("workspace");
    let other_home = FarmHome::new();
    let cached = farm_build(other_home.path(), &q.dir, &["--remote-cache", &farm.url]);
    assert_eq!(cached["farm"], "remote-cache");
    assert_eq!(n(&cached, "cache_hits"), n(&cached, "actions"), "{cached}");
    assert_eq!(run(&q.path("target/debug/app"), &[]), expected);

    // A change built locally with --remote-cache is stored for everyone: the remote build of
    // the same change is a cache hit throughout.
    let main = "crates/app/src/main.rs";
    let changed = std::fs::read_to_string(q.path(main))
        .unwrap()
        .replace("app: the main binary", "app: built locally");
    std::fs::write(q.path(main), &changed).unwrap();
    let local = farm_build(other_home.path(), &q.dir, &["--remote-cache", &farm.url]);
    assert_eq!(n(&local, "executed"), 1, "{local}");
    std::fs::write(p.path(main), &changed).unwrap();
    let shared = farm_build(client_home.path(), &p.dir, &["--remote", &farm.url]);
    assert_eq!(n(&shared, "cache_hits"), n(&shared, "actions"), "{shared}");
    assert!(run(&p.path("target/debug/app"), &[]).contains("app: built locally"));

    // The farm can come from cargo-farm.toml instead of a flag.
    std::fs::write(
        p.path("cargo-farm.toml"),
        format!("[farm]\nremote = \"{}\"\n", farm.url),
    )
    .unwrap();
    let configured = farm_build(client_home.path(), &p.dir, &[]);
    assert_eq!(configured["farm"], "remote", "{configured}");
    assert_eq!(n(&configured, "cache_hits"), n(&configured, "actions"));
}

#[test]
fn an_unreachable_farm_is_named() {
    let p = Project::new("workspace");
    let home = FarmHome::new();
    let port = free_port();
    let url = format!("grpc://127.0.0.1:{port}");
    let out = cargo_farm(home.path(), &p.dir, &["build", "--remote", &url]);
    assert_eq!(out.status.code(), Some(101));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&url), "{stderr}");
}
