//! Cross-architecture routing through real processes: a `farm-scheduler`, an x86-64 `farm-worker`
//! (this test's own build) and an aarch64 build of `farm-worker` run under `qemu-aarch64-static`
//! (through the aarch64 sysroot's dynamic loader), neither told its ISA (no `--platform`): each
//! detects and advertises it.
//!
//! What it proves:
//! - The aarch64 binary is aarch64 code (ELF `e_machine` 183) and, run under qemu-user, detects
//!   and advertises `ISA=aarch64`, `OSFamily=linux`; the native one advertises `ISA=x86-64`.
//! - Actions requiring `ISA=aarch64` run only on the aarch64 worker (`ExecutedActionMetadata.worker`),
//!   and `ISA=x86-64` ones only on the x86-64 worker, while both are idle and connected; actions
//!   naming no ISA run on either. An ISA no worker offers fails with a status, it never waits
//!   forever.
//! - The aarch64 actions produce aarch64 results: their command is a static aarch64 program in the
//!   input root (compiled here with `aarch64-linux-gnu-gcc -static`), which the aarch64 worker's
//!   sandbox executes and which writes the machine it runs on (`uname`) to its output file:
//!   `aarch64`. On an x86-64 host the kernel runs that program through binfmt_misc's
//!   qemu-aarch64 handler (registered with the `F` flag, so it works inside the sandbox's
//!   namespaces; `scripts/test.sh` registers it); on an aarch64 host it runs natively.
//!
//! What it does not prove: that an x86-64 worker *cannot* run aarch64 code. binfmt_misc is
//! machine-wide, so the x86-64 worker could have run the program too; the routing, not an
//! inability, keeps it there. And the aarch64 worker's sandbox is the host's x86-64 bubblewrap
//! and its host tools (`/bin/sh` would report `x86_64`), as an aarch64 worker on this machine
//! cannot have any other.
//!
//! Needs `FARM_TEST_AARCH64_WORKER` (the aarch64 `farm-worker`; `scripts/test.sh` builds it and
//! sets it), `qemu-aarch64-static` (or `FARM_TEST_QEMU_AARCH64`), the aarch64 sysroot
//! `/usr/aarch64-linux-gnu` (or `FARM_TEST_AARCH64_SYSROOT`) and `aarch64-linux-gnu-gcc` (or
//! `FARM_TEST_AARCH64_CC`); it fails, never skips, without them. `farm-scheduler` is another
//! package's binary: `cargo test --workspace` builds it.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::longrunning::Operation;
use bytes::Bytes;
use cas::store::grpc::{GrpcStore, GrpcStoreOptions};
use cas::store::{BlobStore, ByteRange};
use cas::Digest;
use common::process::Proc;
use prost::Message as _;
use reapi::execution_client::ExecutionClient;
use tonic::transport::Channel;

/// `e_machine` of AArch64 ELF files.
const EM_AARCH64: u16 = 183;
/// `e_machine` of x86-64 ELF files.
const EM_X86_64: u16 = 62;

const X86_WORKER: &str = "worker-x86-64";
const ARM_WORKER: &str = "worker-aarch64";

/// The program every aarch64 action runs: writes the machine it runs on to `argv[1]` and stdout.
const ARCH_C: &str = r#"
#include <stdio.h>
#include <sys/utsname.h>
#ifndef __aarch64__
#error "build this for aarch64"
#endif
int main(int argc, char **argv) {
    struct utsname u;
    if (argc != 2 || uname(&u) != 0) return 2;
    FILE *f = fopen(argv[1], "w");
    if (!f || fprintf(f, "%s\n", u.machine) < 0 || fclose(f) != 0) return 3;
    printf("%s\n", u.machine);
    return 0;
}
"#;

/// The `e_machine` of an ELF file, or `None` if it is not a 64-bit little-endian ELF file.
fn elf_machine(path: &Path) -> Option<u16> {
    let b = std::fs::read(path).ok()?;
    (b.len() >= 20 && b[..4] == *b"\x7fELF" && b[4] == 2 && b[5] == 1)
        .then(|| u16::from_le_bytes([b[18], b[19]]))
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn aarch64_worker() -> PathBuf {
    let path = std::env::var_os("FARM_TEST_AARCH64_WORKER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "FARM_TEST_AARCH64_WORKER is not set: it names an aarch64 build of farm-worker. \
             scripts/test.sh builds one and sets it; by hand: `cargo build -p worker --bin \
             farm-worker --target aarch64-unknown-linux-gnu` (needs `rustup target add \
             aarch64-unknown-linux-gnu` and `apt-get install gcc-aarch64-linux-gnu \
             libc6-dev-arm64-cross qemu-user-static`), then \
             FARM_TEST_AARCH64_WORKER=target/aarch64-unknown-linux-gnu/debug/farm-worker"
            )
        });
    // Relative to the workspace root, where scripts/test.sh and cargo run (tests run in
    // worker/).
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    assert!(
        path.exists(),
        "FARM_TEST_AARCH64_WORKER={} does not exist",
        path.display()
    );
    assert_eq!(
        elf_machine(&path),
        Some(EM_AARCH64),
        "FARM_TEST_AARCH64_WORKER={} is not an aarch64 ELF file",
        path.display()
    );
    path
}

fn scheduler_binary() -> PathBuf {
    let worker = PathBuf::from(env!("CARGO_BIN_EXE_farm-worker"));
    let path = worker.with_file_name("farm-scheduler");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p scheduler --bin farm-scheduler` (cargo test \
         --workspace builds it)",
        path.display()
    );
    path
}

/// Compiles [`ARCH_C`] statically for aarch64 into `dir` and checks that the host can execute
/// it (binfmt_misc's qemu-aarch64 handler on a non-aarch64 host).
fn build_arch_program(dir: &Path) -> PathBuf {
    let cc = env_or("FARM_TEST_AARCH64_CC", "aarch64-linux-gnu-gcc");
    let src = dir.join("arch.c");
    let bin = dir.join("arch");
    std::fs::write(&src, ARCH_C).unwrap();
    let out = Process::new(&cc)
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {cc}: {e} (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross)"
            )
        });
    assert!(
        out.status.success(),
        "{cc} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        elf_machine(&bin),
        Some(EM_AARCH64),
        "{cc} built no aarch64 ELF"
    );
    let probe = dir.join("probe.txt");
    let run = Process::new(&bin).arg(&probe).stdin(Stdio::null()).output();
    let ok = run.as_ref().is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "this host cannot execute aarch64 programs ({run:?}): register binfmt_misc's \
         qemu-aarch64 handler with the F flag (scripts/test.sh does: see \
         scripts/aarch64-worker.sh)"
    );
    assert_eq!(std::fs::read_to_string(&probe).unwrap(), "aarch64\n");
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Connects once the scheduler listens.
async fn wait_for(url: &str) -> GrpcStore {
    let start = Instant::now();
    loop {
        if let Ok(store) = GrpcStore::connect(url, GrpcStoreOptions::default()).await {
            if store.find_missing(&[Digest::EMPTY]).await.is_ok() {
                return store;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the scheduler never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until a worker's log says its session with the scheduler is open.
async fn wait_for_session(p: &mut Proc, within: Duration) {
    let start = Instant::now();
    while !p.log().contains("worker session open") {
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!("{} exited ({status}) before connecting", p.name);
        }
        assert!(
            start.elapsed() < within,
            "{} did not connect within {within:?}",
            p.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn bounded<T>(what: &str, secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs}s waiting for {what}"))
}

struct Client {
    store: GrpcStore,
    exec: ExecutionClient<Channel>,
}

impl Client {
    /// Uploads an action running `args` over `input_root` (already uploaded), requiring
    /// `platform`, with output file `arch.txt`; returns its digest.
    async fn action(
        &self,
        args: &[&str],
        platform: &[(&str, &str)],
        input_root: Digest,
        salt: &str,
    ) -> Digest {
        let command = reapi::Command {
            arguments: args.iter().map(|s| s.to_string()).collect(),
            environment_variables: vec![reapi::command::EnvironmentVariable {
                name: "PATH".into(),
                value: "/usr/bin:/bin".into(),
            }],
            output_paths: vec!["arch.txt".into()],
            ..Default::default()
        };
        let mut properties: Vec<reapi::platform::Property> = platform
            .iter()
            .map(|(n, v)| reapi::platform::Property {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect();
        properties.sort_by(|a, b| a.name.cmp(&b.name));
        let command_bytes = Bytes::from(command.encode_to_vec());
        let command_digest = Digest::of(&command_bytes);
        let action = reapi::Action {
            command_digest: Some(command_digest.to_proto()),
            input_root_digest: Some(input_root.to_proto()),
            salt: salt.as_bytes().to_vec(),
            platform: Some(reapi::Platform { properties }),
            ..Default::default()
        };
        let action_bytes = Bytes::from(action.encode_to_vec());
        let action_digest = Digest::of(&action_bytes);
        self.store
            .batch_update(vec![
                (command_digest, command_bytes),
                (action_digest, action_bytes),
            ])
            .await
            .unwrap();
        action_digest
    }

    /// Executes an uploaded action (skipping the cache) and waits for its response.
    async fn execute(&self, action: Digest) -> reapi::ExecuteResponse {
        let request = reapi::ExecuteRequest {
            action_digest: Some(action.to_proto()),
            skip_cache_lookup: true,
            ..Default::default()
        };
        let mut stream = self
            .exec
            .clone()
            .execute(request)
            .await
            .expect("Execute accepted")
            .into_inner();
        let mut last: Option<Operation> = None;
        while let Some(op) = stream.message().await.expect("operation stream") {
            last = Some(op);
        }
        let last = last.expect("an operation update");
        assert!(last.done, "the stream ended before the operation was done");
        scheduler::operations::execute_response(&last).expect("an ExecuteResponse")
    }

    /// The content of output file `arch.txt`.
    async fn arch_txt(&self, r: &reapi::ExecuteResponse) -> String {
        let result = r.result.as_ref().expect("a result");
        let file = result
            .output_files
            .iter()
            .find(|f| f.path == "arch.txt")
            .unwrap_or_else(|| panic!("no output arch.txt in {result:?}"));
        let d = Digest::from_proto(file.digest.as_ref()).unwrap();
        let b = self.store.get_bytes(&d, ByteRange::ALL).await.unwrap();
        String::from_utf8_lossy(&b).into_owned()
    }
}

fn worker_of(r: &reapi::ExecuteResponse) -> String {
    r.result
        .as_ref()
        .and_then(|r| r.execution_metadata.as_ref())
        .map(|m| m.worker.clone())
        .unwrap_or_default()
}

fn code(r: &reapi::ExecuteResponse) -> tonic::Code {
    tonic::Code::from(r.status.as_ref().map_or(0, |s| s.code))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isa_aarch64_actions_run_only_on_the_aarch64_worker_under_qemu() {
    let started = Instant::now();
    let arm_binary = aarch64_worker();
    let qemu = env_or("FARM_TEST_QEMU_AARCH64", "qemu-aarch64-static");
    let sysroot = env_or("FARM_TEST_AARCH64_SYSROOT", "/usr/aarch64-linux-gnu");
    assert_eq!(
        elf_machine(Path::new(env!("CARGO_BIN_EXE_farm-worker"))),
        Some(EM_X86_64),
        "this test expects an x86-64 host (on an aarch64 host, swap the roles)"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let arch_program = build_arch_program(dir.path());

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _scheduler = Proc::spawn(
        "farm-scheduler",
        &scheduler_binary(),
        &[
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--keep-alive-interval".into(),
            "500ms".into(),
            // Generous: qemu makes the aarch64 worker slow, and it must not be declared dead.
            "--lease-timeout".into(),
            "30s".into(),
            // Only the riscv64 action waits for a worker; both real ones are connected by then.
            "--unsatisfiable-wait".into(),
            "3s".into(),
        ],
        dir.path().join("scheduler.log"),
    );
    let store = wait_for(&url).await;
    let client = Client {
        exec: ExecutionClient::new(store.channel()),
        store,
    };

    let worker_args = |id: &str, uid_base: u32| -> Vec<String> {
        vec![
            "--scheduler".into(),
            url.clone(),
            "--work-dir".into(),
            dir.path().join(id).display().to_string(),
            "--slots".into(),
            "2".into(),
            "--worker-id".into(),
            id.into(),
            "--sandbox-uid-base".into(),
            uid_base.to_string(),
            "--cache-size".into(),
            "64MiB".into(),
        ]
    };
    let mut x86 = Proc::spawn(
        X86_WORKER,
        Path::new(env!("CARGO_BIN_EXE_farm-worker")),
        &worker_args(X86_WORKER, 63400),
        dir.path().join("x86.log"),
    );
    // Not `qemu -L SYSROOT`: that makes qemu prefer SYSROOT/PATH for every path the worker
    // touches (its /lib, /bin sandbox mounts among them). The sysroot's dynamic loader, run
    // explicitly, loads the worker and its aarch64 libraries without changing any other path.
    let loader = format!("{sysroot}/lib/ld-linux-aarch64.so.1");
    assert!(
        Path::new(&loader).exists(),
        "{loader} is missing (apt-get install libc6-dev-arm64-cross)"
    );
    let mut qemu_args = vec![
        loader,
        "--library-path".into(),
        format!("{sysroot}/lib"),
        arm_binary.display().to_string(),
    ];
    qemu_args.extend(worker_args(ARM_WORKER, 63500));
    let mut arm = Proc::spawn(
        ARM_WORKER,
        Path::new(&qemu),
        &qemu_args,
        dir.path().join("aarch64.log"),
    );
    wait_for_session(&mut x86, Duration::from_secs(60)).await;
    wait_for_session(&mut arm, Duration::from_secs(180)).await;
    let connected = started.elapsed();
    // Each detected its own ISA: neither was given --platform.
    assert!(
        arm.log().contains(r#"("ISA", "aarch64")"#)
            && arm.log().contains(r#"("OSFamily", "linux")"#),
        "the aarch64 worker did not advertise ISA=aarch64, OSFamily=linux"
    );
    assert!(
        x86.log().contains(r#"("ISA", "x86-64")"#),
        "the x86-64 worker did not advertise ISA=x86-64"
    );

    // The input root of the aarch64 actions: the aarch64 program, executable.
    let program = Bytes::from(std::fs::read(&arch_program).unwrap());
    let program_digest = Digest::of(&program);
    let root = reapi::Directory {
        files: vec![reapi::FileNode {
            name: "arch".into(),
            digest: Some(program_digest.to_proto()),
            is_executable: true,
            ..Default::default()
        }],
        ..Default::default()
    };
    let root_bytes = Bytes::from(root.encode_to_vec());
    let root_digest = Digest::of(&root_bytes);
    client
        .store
        .batch_update(vec![(program_digest, program), (root_digest, root_bytes)])
        .await
        .unwrap();

    let linux = ("OSFamily", "linux");
    let uname = ["/bin/sh", "-c", "uname -m > arch.txt"];
    let mut actions = Vec::new();
    for i in 0..3 {
        let salt = format!("arm-{i}");
        let d = client
            .action(
                &["./arch", "arch.txt"],
                &[linux, ("ISA", "aarch64")],
                root_digest,
                &salt,
            )
            .await;
        actions.push(("aarch64", d));
        let salt = format!("x86-{i}");
        let d = client
            .action(&uname, &[linux, ("ISA", "x86-64")], Digest::EMPTY, &salt)
            .await;
        actions.push(("x86-64", d));
        let salt = format!("any-{i}");
        let d = client.action(&uname, &[linux], Digest::EMPTY, &salt).await;
        actions.push(("any", d));
    }
    let unsatisfiable = client
        .action(&uname, &[linux, ("ISA", "riscv64")], Digest::EMPTY, "riscv")
        .await;

    // All at once, so both workers are free to take any of them and only routing decides.
    let run = futures::future::join_all(actions.iter().map(|(isa, d)| {
        let client = &client;
        async move { (*isa, client.execute(*d).await) }
    }));
    let (responses, riscv) = bounded(
        "the actions",
        600,
        futures::future::join(run, client.execute(unsatisfiable)),
    )
    .await;
    let ran = started.elapsed();

    let mut any_workers = Vec::new();
    for (isa, r) in &responses {
        assert_eq!(code(r), tonic::Code::Ok, "{isa}: {:?}", r.status);
        let result = r.result.as_ref().unwrap();
        assert_eq!(result.exit_code, 0, "{isa}: {result:?}");
        let worker = worker_of(r);
        let arch = client.arch_txt(r).await;
        match *isa {
            "aarch64" => {
                assert_eq!(worker, ARM_WORKER, "an ISA=aarch64 action ran elsewhere");
                assert_eq!(arch, "aarch64\n", "the aarch64 program's output");
            }
            "x86-64" => {
                assert_eq!(worker, X86_WORKER, "an ISA=x86-64 action ran elsewhere");
                assert_eq!(arch, "x86_64\n");
            }
            _ => {
                assert!(
                    worker == X86_WORKER || worker == ARM_WORKER,
                    "unknown worker {worker:?}"
                );
                any_workers.push(worker);
            }
        }
    }
    assert_eq!(
        code(&riscv),
        tonic::Code::FailedPrecondition,
        "ISA=riscv64: {riscv:?}"
    );
    assert!(worker_of(&riscv).is_empty(), "ISA=riscv64 ran: {riscv:?}");
    eprintln!(
        "cross-arch: workers connected after {connected:?}, {} actions done after {ran:?}; \
         actions without ISA ran on {any_workers:?}; ISA=riscv64: {:?}",
        responses.len(),
        riscv.status
    );
}
