//! Running one command in a bubblewrap sandbox.
//!
//! Every action gets fresh user, mount, PID, network, IPC and UTS namespaces (`bwrap
//! --unshare-all`): no network but a private loopback, no capabilities, a read-only view of a
//! few host paths (by default `/usr`, Debian's merged-usr links `/bin`, `/lib`, `/lib64`, and
//! `/etc/alternatives`, through which `cc` resolves), its
//! input root bound read-write at [`SandboxConfig::exec_root`], a private `/tmp` inside the
//! action's directory, fresh `/proc` and a minimal `/dev`, a read-only root otherwise, and an
//! environment made only of the Command's variables.
//!
//! When the worker runs as root, `bwrap` runs as an unprivileged user of its own per slot
//! (`uid_base + slot`), so an action cannot change the read-only cache files its inputs are
//! hardlinked to, and `RLIMIT_NPROC` counts one action's processes only. Resource limits (CPU
//! time, address space, file size, processes) are set just before `bwrap` is executed and
//! inherited by everything in the sandbox.
//!
//! On timeout or cancellation the sandbox's PID-namespace init is killed, which makes the kernel
//! kill every process of the namespace; `bwrap` then exits and is reaped, so when [`Sandbox::run`]
//! returns nothing of the action is left running. `bwrap` itself dies with the worker
//! (`PR_SET_PDEATHSIG`), and the sandbox with `bwrap` (`--die-with-parent`).

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt as _;
use tokio_util::sync::CancellationToken;

/// Host paths visible read-only in every sandbox by default. Those that are relative symlinks
/// on the host (merged `/usr`) are recreated as symlinks. `/etc/alternatives` holds only
/// symlinks, but Debian's `cc`, `c++` and `ld` resolve through it.
pub const DEFAULT_RO_PATHS: &[&str] = &["/usr", "/bin", "/lib", "/lib64", "/etc/alternatives"];
/// Where the input root appears inside the sandbox.
pub const DEFAULT_EXEC_ROOT: &str = "/exec";
/// The user and group id actions see themselves as.
const SANDBOX_ID: &str = "1000";
/// How long a killed sandbox may take to disappear before its process group is killed too.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Resource limits set on each action (`None`: inherited from the worker).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `RLIMIT_CPU`, seconds of CPU time per process.
    pub cpu_seconds: Option<u64>,
    /// `RLIMIT_AS`, bytes of address space per process.
    pub memory_bytes: Option<u64>,
    /// `RLIMIT_FSIZE`, largest file a process may write.
    pub file_size_bytes: Option<u64>,
    /// `RLIMIT_NPROC`, processes and threads of the action's user.
    pub processes: Option<u64>,
    /// `RLIMIT_NOFILE`, open files per process.
    pub open_files: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_seconds: Some(3600),
            memory_bytes: Some(16 << 30),
            file_size_bytes: Some(16 << 30),
            processes: Some(1024),
            open_files: Some(16384),
        }
    }
}

/// How sandboxes are built.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// The bubblewrap binary.
    pub bwrap: PathBuf,
    /// Host paths mounted read-only at the same place.
    pub ro_paths: Vec<PathBuf>,
    /// Where the input root is mounted inside (absolute).
    pub exec_root: PathBuf,
    pub limits: Limits,
    /// First host uid/gid of the per-slot sandbox users; `None` runs `bwrap` as the worker's
    /// own user. Defaults to 61000 when the worker runs as root.
    pub uid_base: Option<u32>,
    /// An `env` binary visible in the sandbox, used to remove the `PWD` variable bubblewrap
    /// always sets, so the command sees the Action's environment only. Ignored if absent.
    pub env_helper: Option<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            bwrap: PathBuf::from("bwrap"),
            ro_paths: DEFAULT_RO_PATHS.iter().map(PathBuf::from).collect(),
            exec_root: PathBuf::from(DEFAULT_EXEC_ROOT),
            limits: Limits::default(),
            // SAFETY: geteuid has no preconditions and cannot fail.
            uid_base: (unsafe { libc::geteuid() } == 0).then_some(61000),
            env_helper: Some(PathBuf::from("/usr/bin/env")),
        }
    }
}

/// Why a sandbox could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot start {}: {source}", .bwrap.display())]
    Spawn {
        bwrap: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sandbox I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid command: {0}")]
    Invalid(String),
}

/// One command to run.
#[derive(Debug)]
pub struct Run<'a> {
    /// The action's input root on the host.
    pub root: &'a Path,
    /// A private, empty, writable host directory mounted at `/tmp`.
    pub tmp: &'a Path,
    /// Working directory relative to the input root ("" for the root).
    pub working_dir: &'a str,
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    pub stdout: std::fs::File,
    pub stderr: std::fs::File,
    pub timeout: Duration,
    /// The slot the action runs in (picks its user when running as root).
    pub slot: u32,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The command ran and exited with this code (`128 + signal` when killed by a signal;
    /// 127 when it could not be executed).
    Exited(i32),
    /// Killed at the timeout.
    TimedOut,
    /// Killed because the run was cancelled.
    Cancelled,
    /// The sandbox could not be set up; the message is bubblewrap's.
    SetupFailed(String),
}

/// Builds and runs sandboxes.
#[derive(Clone, Debug)]
pub struct Sandbox {
    config: SandboxConfig,
    /// The arguments every run shares (namespaces, read-only host paths, /proc, /dev).
    fixed_args: Vec<String>,
    /// `config.env_helper` if it exists and is inside a read-only path.
    env_helper: Option<String>,
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        // bwrap's outer process can exit before reaping the namespace's init, orphaning it as a
        // zombie; where PID 1 is no init (a container entry point) nobody ever reaps it. As
        // a subreaper we become its parent and reap it ourselves (see `reap_init`).
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER has no memory-safety preconditions.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) };
        if !config.exec_root.is_absolute() || config.exec_root == Path::new("/") {
            return Err(SandboxError::Invalid(format!(
                "the sandbox exec root {} must be an absolute path below /",
                config.exec_root.display()
            )));
        }
        let mut a: Vec<String> = [
            "--unshare-all",
            "--unshare-user",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--uid",
            SANDBOX_ID,
            "--gid",
            SANDBOX_ID,
            "--hostname",
            "farm-sandbox",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for p in &config.ro_paths {
            let shown = p.to_string_lossy().into_owned();
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = std::fs::read_link(p)?;
                    if target.is_relative() {
                        a.extend(["--symlink".into(), target.to_string_lossy().into(), shown]);
                    } else {
                        a.extend(["--ro-bind".into(), shown.clone(), shown]);
                    }
                }
                Ok(_) => a.extend(["--ro-bind".into(), shown.clone(), shown]),
                // Absent on this host (no /lib64 on aarch64, say): nothing to show.
                Err(e) => {
                    if !DEFAULT_RO_PATHS.iter().any(|d| Path::new(d) == p) {
                        tracing::warn!(path = %shown, error = %e, "read-only sandbox path not mounted");
                    }
                }
            }
        }
        a.extend(["--proc", "/proc", "--dev", "/dev"].map(String::from));
        let env_helper = config
            .env_helper
            .as_ref()
            .filter(|h| h.is_file() && config.ro_paths.iter().any(|p| h.starts_with(p)))
            .map(|h| h.to_string_lossy().into_owned());
        Ok(Sandbox {
            config,
            fixed_args: a,
            env_helper,
        })
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The host uid/gid an action in `slot` runs as, when it differs from the worker's.
    pub fn owner(&self, slot: u32) -> Option<(u32, u32)> {
        self.config
            .uid_base
            .map(|b| (b.saturating_add(slot), b.saturating_add(slot)))
    }

    /// Claims the per-slot sandbox users (`uid_base..uid_base + slots`) for this process and
    /// kills whatever still runs as them: leftovers of a previous worker that died while a
    /// sandbox was being set up (bubblewrap arms `--die-with-parent` only once set up). The
    /// claim is an exclusive lock on `/run/farm-worker/uid-BASE.lock`, held as long as the
    /// returned file is, so two workers on one host cannot share users. Nothing to do (`None`)
    /// when actions run as the worker's own user.
    pub fn claim_users(&self, slots: u32) -> Result<Option<std::fs::File>, SandboxError> {
        let Some(base) = self.config.uid_base else {
            return Ok(None);
        };
        let dir = Path::new("/run/farm-worker");
        std::fs::create_dir_all(dir)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("uid-{base}.lock")))?;
        // SAFETY: flock on an open fd has no memory-safety preconditions.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(SandboxError::Invalid(format!(
                "another farm-worker on this host runs actions as uids from {base}; give each \
                 worker its own --sandbox-uid-base"
            )));
        }
        let uids = base..base.saturating_add(slots.max(1));
        for pid in processes_of(&uids) {
            tracing::warn!(pid, "killing a sandbox process left by a previous worker");
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        Ok(Some(lock))
    }

    /// The full bubblewrap argument list for `run`.
    fn args(&self, run: &Run<'_>) -> Result<Vec<String>, SandboxError> {
        if run.args.is_empty() {
            return Err(SandboxError::Invalid("the command has no arguments".into()));
        }
        let exec_root = self.config.exec_root.to_string_lossy().into_owned();
        let mut a = self.fixed_args.clone();
        a.extend([
            "--bind".into(),
            run.root.to_string_lossy().into_owned(),
            exec_root.clone(),
            "--bind".into(),
            run.tmp.to_string_lossy().into_owned(),
            "/tmp".into(),
            "--remount-ro".into(),
            "/".into(),
            "--chdir".into(),
            if run.working_dir.is_empty() {
                exec_root
            } else {
                format!("{exec_root}/{}", run.working_dir)
            },
            "--clearenv".into(),
        ]);
        for (k, v) in run.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(SandboxError::Invalid(format!(
                    "environment variable {k:?} has an invalid name or value"
                )));
            }
            a.extend(["--setenv".into(), k.clone(), v.clone()]);
        }
        a.extend(["--json-status-fd".into(), "3".into(), "--".into()]);
        // bwrap sets PWD after changing directory; `env -u PWD` takes it out again (or puts
        // back the Action's own value). A program name with '=' would read as an assignment to
        // env, so such a command runs directly.
        if let Some(helper) = self
            .env_helper
            .as_ref()
            .filter(|_| !run.args[0].contains('='))
        {
            a.extend([helper.clone(), "-u".into(), "PWD".into(), "--".into()]);
            if let Some((_, pwd)) = run.env.iter().find(|(k, _)| k == "PWD") {
                a.push(format!("PWD={pwd}"));
            }
        }
        a.extend(run.args.iter().cloned());
        Ok(a)
    }

    /// Runs `run`, killing it at its timeout or when `cancel` fires. The caller reads stdout
    /// and stderr from the files it passed in.
    pub async fn run(
        &self,
        run: Run<'_>,
        cancel: &CancellationToken,
    ) -> Result<Outcome, SandboxError> {
        let args = self.args(&run)?;
        let stderr_probe = run.stderr.try_clone()?;
        let (status_read, status_write) = status_pipe()?;
        let mut cmd = tokio::process::Command::new(&self.config.bwrap);
        cmd.args(&args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::from(run.stdout))
            .stderr(Stdio::from(run.stderr))
            .kill_on_drop(true)
            .process_group(0);
        if let Some((uid, gid)) = self.owner(run.slot) {
            cmd.uid(uid).gid(gid);
        }
        let limits = rlimits(&self.config.limits);
        let status_fd = status_write.as_raw_fd();
        // SAFETY: getpid has no preconditions.
        let worker_pid = unsafe { libc::getpid() };
        // SAFETY: the closure only makes async-signal-safe calls (setrlimit, prctl, getppid,
        // dup2, close_range, fcntl) on data prepared before the fork, as `pre_exec` requires.
        unsafe {
            cmd.pre_exec(move || {
                for (resource, soft, hard) in &limits {
                    let l = libc::rlimit {
                        rlim_cur: *soft,
                        rlim_max: *hard,
                    };
                    if libc::setrlimit(*resource, &l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Die with the worker. Set after the uid change, which clears it.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != worker_pid {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                if libc::dup2(status_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Nothing the worker inherited may reach the sandbox: every fd above the
                // status pipe is closed on exec (std's own error pipe already is).
                let all = libc::syscall(
                    libc::SYS_close_range,
                    4 as libc::c_uint,
                    libc::c_uint::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
                if all != 0 {
                    for fd in 4..4096 {
                        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| SandboxError::Spawn {
            bwrap: self.config.bwrap.clone(),
            source,
        })?;
        drop(status_write);
        let bwrap_pid = child.id();
        let (pid_tx, mut pid_rx) = tokio::sync::watch::channel(None::<i32>);
        let status_reader = tokio::spawn(read_status(status_read, pid_tx));

        let deadline = tokio::time::sleep(run.timeout);
        let killed = tokio::select! {
            waited = child.wait() => {
                let status = waited?;
                let text = finish_reader(status_reader).await;
                let init = *pid_rx.borrow();
                reap_init(init).await;
                return Ok(classify(status, &text, &stderr_probe));
            }
            _ = deadline => Outcome::TimedOut,
            _ = cancel.cancelled() => Outcome::Cancelled,
        };
        // Kill the namespace's init: the kernel then kills everything in the namespace, and
        // bwrap exits once it is gone.
        let init_pid = *pid_rx.borrow_and_update();
        if let Some(pid) = init_pid {
            // SAFETY: kill has no memory-safety preconditions; `pid` is bwrap's unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let exited =
            init_pid.is_some() && tokio::time::timeout(KILL_GRACE, child.wait()).await.is_ok();
        if !exited {
            if let Some(pid) = bwrap_pid {
                // SAFETY: as above; the negative pid names bwrap's own process group.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            let _ = child.kill().await;
            // bwrap's death kills the namespace init (--die-with-parent); wait until it is
            // gone, which means the whole namespace is.
            let _ = tokio::time::timeout(KILL_GRACE, pid_rx.changed()).await;
            let init_pid = *pid_rx.borrow();
            if let Some(pid) = init_pid {
                wait_gone(pid).await;
            }
        }
        let _ = finish_reader(status_reader).await;
        let init = *pid_rx.borrow();
        reap_init(init).await;
        Ok(killed)
    }
}

/// Reaps the sandbox's namespace init once bwrap is gone: orphaned, it is our child (we are a
/// subreaper), and only we can collect it. Only that pid is waited for, never "any child", so
/// the runtime's own child handling is undisturbed.
async fn reap_init(init: Option<i32>) {
    let Some(pid) = init else { return };
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(500) {
        let mut status = 0;
        // SAFETY: waitpid on a specific pid with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) };
        // Reaped, or not (or no longer) our child: either way nothing is left to do.
        if r == pid || r < 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What bwrap's exit, its status JSON and (when the command never ran) its message on the
/// action's stderr say about the command.
fn classify(status: std::process::ExitStatus, json: &str, stderr: &std::fs::File) -> Outcome {
    if let Some(code) = json_number(json, "\"exit-code\"") {
        return Outcome::Exited(code as i32);
    }
    // The command never ran: bwrap wrote why to the action's stderr.
    let mut buf = vec![0u8; 4096];
    let n = std::os::unix::fs::FileExt::read_at(stderr, &mut buf, 0).unwrap_or(0);
    let message = String::from_utf8_lossy(&buf[..n]).trim().to_string();
    if message.starts_with("bwrap: execvp ") {
        // Not a sandbox failure: the program does not exist or is not executable.
        return Outcome::Exited(127);
    }
    let how = match status.code() {
        Some(code) => format!("exited with {code}"),
        None => "was killed".to_string(),
    };
    Outcome::SetupFailed(format!(
        "bubblewrap {how} before running the command: {message}"
    ))
}

/// The integer after `key:` in bwrap's JSON status lines.
fn json_number(text: &str, key: &str) -> Option<i64> {
    let at = text.find(key)? + key.len();
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Reads bwrap's JSON status stream, publishing the namespace init's pid as soon as it is
/// known; returns everything read.
async fn read_status(fd: OwnedFd, pid: tokio::sync::watch::Sender<Option<i32>>) -> String {
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return String::new();
    };
    let mut text = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                text.extend_from_slice(&buf[..n]);
                if pid.borrow().is_none() {
                    let s = String::from_utf8_lossy(&text);
                    if let Some(p) = json_number(&s, "\"child-pid\"") {
                        let _ = pid.send(i32::try_from(p).ok());
                    }
                }
            }
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// The status text once bwrap is gone (bounded: a stray holder of the pipe cannot stall us).
async fn finish_reader(reader: tokio::task::JoinHandle<String>) -> String {
    match tokio::time::timeout(KILL_GRACE, reader).await {
        Ok(Ok(text)) => text,
        _ => String::new(),
    }
}

/// Waits (bounded) until `pid` no longer exists or is a zombie: a dead PID-namespace init only
/// becomes a zombie after every process of its namespace is gone.
async fn wait_gone(pid: i32) {
    let start = Instant::now();
    while start.elapsed() < KILL_GRACE {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return,
            Ok(stat) => {
                let state = stat
                    .rsplit_once(')')
                    .and_then(|(_, r)| r.trim_start().chars().next());
                if matches!(state, Some('Z') | Some('X')) {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Pids of processes whose real uid is in `uids`.
fn processes_of(uids: &std::ops::Range<u32>) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            // A zombie runs nothing and cannot be killed; where PID 1 does not reap orphans
            // (some containers), exited sandboxes stay listed as zombies.
            let zombie = status
                .lines()
                .find_map(|l| l.strip_prefix("State:"))
                .is_some_and(|s| s.trim_start().starts_with('Z'));
            if zombie {
                return None;
            }
            let uid: u32 = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            uids.contains(&uid).then_some(pid)
        })
        .collect()
}

/// A close-on-exec pipe whose write end is at fd 10 or above (so it can be `dup2`ed to 3 in the
/// child without clobbering stdio).
fn status_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_DUPFD_CLOEXEC on an open fd returns a new fd we own, or -1.
    let high = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if high < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `high` is a freshly duplicated fd owned by nobody else.
    Ok((read, unsafe { OwnedFd::from_raw_fd(high) }))
}

#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

/// `(resource, soft, hard)` for each configured limit. CPU gets a 5 s hard margin so the
/// process first sees `SIGXCPU`.
fn rlimits(l: &Limits) -> Vec<(Resource, libc::rlim_t, libc::rlim_t)> {
    let mut out = Vec::new();
    let mut add = |r: Resource, v: Option<u64>, margin: u64| {
        if let Some(v) = v {
            out.push((
                r,
                v as libc::rlim_t,
                v.saturating_add(margin) as libc::rlim_t,
            ));
        }
    };
    add(libc::RLIMIT_CPU, l.cpu_seconds, 5);
    add(libc::RLIMIT_AS, l.memory_bytes, 0);
    add(libc::RLIMIT_FSIZE, l.file_size_bytes, 0);
    add(libc::RLIMIT_NPROC, l.processes, 0);
    add(libc::RLIMIT_NOFILE, l.open_files, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_status_numbers_are_found() {
        let s = "{ \"child-pid\": 8863, \"x\": 1 }\n{ \"exit-code\": 7 }\n";
        assert_eq!(json_number(s, "\"child-pid\""), Some(8863));
        assert_eq!(json_number(s, "\"exit-code\""), Some(7));
        assert_eq!(json_number("{}", "\"exit-code\""), None);
    }
}
