//! One action from lease to `ExecuteResponse`: stage the input root, run the command in the
//! sandbox, collect and upload outputs, stdout and stderr, and time every step in
//! `ExecutedActionMetadata`.
//!
//! Whatever goes wrong with one action becomes a status in its response, never an error of the
//! executor: `INVALID_ARGUMENT` for a malformed action, `FAILED_PRECONDITION` (with a
//! `PreconditionFailure`) for inputs missing from the CAS or refused outputs,
//! `DEADLINE_EXCEEDED` (with partial stdout/stderr) on timeout, `CANCELLED`, `INTERNAL` when the
//! sandbox cannot be set up, and the CAS's own code when it fails.

use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    Action, ActionResult, Command, ExecuteResponse, ExecutedActionMetadata,
};
use bazel_remote_apis::google::protobuf::Timestamp;
use bazel_remote_apis::google::rpc;
use cas::store::grpc::GrpcStore;
use cas::store::memory::MemoryStore;
use cas::store::tiered::TieredStore;
use cas::Digest;
use parking_lot::Mutex;
use prost::Message as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::cache::LocalCache;
use crate::outputs::{self, CollectOptions, Uploads};
use crate::paths::{self, RootPath};
use crate::sandbox::{Outcome, Run, Sandbox, SandboxConfig, SandboxError};
use crate::stage::{self, Owner, StageError};

/// Exit code reported for an action killed at its timeout (as a shell reports `SIGKILL`).
pub const TIMEOUT_EXIT_CODE: i32 = 128 + libc::SIGKILL;

/// Where an action is, for progress reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    FetchingInputs,
    Executing,
    UploadingOutputs,
}

/// How the executor works.
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// The worker's own directory: `cache/` and `actions/` live here (one filesystem, so inputs
    /// can be hardlinked).
    pub work_dir: PathBuf,
    /// Byte budget of the local blob cache.
    pub cache_bytes: u64,
    /// Actions run at once.
    pub slots: u32,
    pub sandbox: SandboxConfig,
    /// Timeout of actions whose lease names none, and the cap of every other.
    pub max_timeout: Duration,
    /// Largest input tree (files + directories + symlinks) staged.
    pub max_input_entries: u64,
    /// Report output symlinks pointing out of the input root instead of refusing them.
    pub allow_escaping_symlinks: bool,
    /// Put in `ExecutedActionMetadata.worker`.
    pub worker_name: String,
    /// A trusted store on this machine to take input blobs from before fetching them.
    pub local_blobs: Option<Arc<dyn crate::cache::LocalBlobs>>,
}

impl ExecutorConfig {
    /// Defaults: 10 GiB cache, one slot per CPU, 1 h timeout, default sandbox.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        ExecutorConfig {
            work_dir: work_dir.into(),
            cache_bytes: 10 << 30,
            slots: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            sandbox: SandboxConfig::default(),
            max_timeout: Duration::from_secs(3600),
            max_input_entries: 1_000_000,
            allow_escaping_symlinks: false,
            worker_name: crate::platform::worker_id(),
            local_blobs: None,
        }
    }
}

/// Why an executor could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("the sandbox does not work on this machine: {0}")]
    SelfTest(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExecutorError + '_ {
    move |source| ExecutorError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One action to run, decoded from a lease.
#[derive(Clone, Debug)]
pub struct Job {
    pub instance_name: String,
    pub action_digest: Digest,
    pub action: Action,
    pub command: Command,
    /// `None`: the executor's maximum.
    pub timeout: Option<Duration>,
}

impl Job {
    /// Decodes a lease's action and command, checking each against its digest.
    pub fn decode(
        instance_name: &str,
        action_hash: &str,
        action_size: i64,
        action: &[u8],
        command: &[u8],
        timeout_ms: u32,
    ) -> Result<Job, Status> {
        let bad = |m: String| Status::invalid_argument(m);
        let action_digest = Digest::parse(action_hash, action_size)
            .map_err(|e| bad(format!("bad action digest: {e}")))?;
        if Digest::of(action) != action_digest {
            return Err(bad(format!(
                "the action bytes do not hash to {action_digest}"
            )));
        }
        let action = Action::decode(action).map_err(|e| bad(format!("bad Action: {e}")))?;
        let command_digest = Digest::from_proto(action.command_digest.as_ref())
            .map_err(|e| bad(format!("bad command digest: {e}")))?;
        if Digest::of(command) != command_digest {
            return Err(bad(format!(
                "the command bytes do not hash to {command_digest}"
            )));
        }
        let command = Command::decode(command).map_err(|e| bad(format!("bad Command: {e}")))?;
        Ok(Job {
            instance_name: instance_name.to_string(),
            action_digest,
            action,
            command,
            timeout: (timeout_ms > 0).then(|| Duration::from_millis(u64::from(timeout_ms))),
        })
    }
}

/// Runs actions; share it as `Arc<Executor>`.
#[derive(Debug)]
pub struct Executor {
    config: ExecutorConfig,
    store: GrpcStore,
    cache: Arc<LocalCache>,
    /// `Directory` messages already fetched (small, immutable, read by every action).
    directories: Arc<MemoryStore>,
    sandbox: Sandbox,
    actions_dir: PathBuf,
    free_slots: Arc<Mutex<Vec<u32>>>,
    permits: Arc<Semaphore>,
    /// The claim on the sandbox users (see [`Sandbox::claim_users`]), held while we live.
    _users: Option<std::fs::File>,
}

/// A slot held by one action; given back on drop.
struct Slot {
    index: u32,
    free: Arc<Mutex<Vec<u32>>>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.free.lock().push(self.index);
    }
}

impl Executor {
    /// Prepares the work directory (clearing leftovers of a previous run), opens the cache and
    /// checks the sandbox configuration. Blobs move through `store`.
    pub async fn new(config: ExecutorConfig, store: GrpcStore) -> Result<Self, ExecutorError> {
        let work = config.work_dir.clone();
        let actions_dir = work.join("actions");
        std::fs::create_dir_all(&work).map_err(io_err(&work))?;
        // Sandbox users must be able to traverse (not list) the way to their action.
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o711))
            .map_err(io_err(&work))?;
        if actions_dir.exists() {
            remove_tree(&actions_dir).map_err(io_err(&actions_dir))?;
        }
        std::fs::create_dir(&actions_dir).map_err(io_err(&actions_dir))?;
        std::fs::set_permissions(&actions_dir, std::fs::Permissions::from_mode(0o711))
            .map_err(io_err(&actions_dir))?;
        let cache_dir = work.join("cache");
        let cache = LocalCache::open(&cache_dir, config.cache_bytes).map_err(io_err(&cache_dir))?;
        if let Some(local) = &config.local_blobs {
            cache.set_local_source(local.clone());
        }
        let sandbox = Sandbox::new(config.sandbox.clone())?;
        let slots = config.slots.max(1);
        let users = sandbox.claim_users(slots)?;
        Ok(Executor {
            store,
            cache,
            directories: Arc::new(MemoryStore::new(64 << 20)),
            sandbox,
            actions_dir,
            free_slots: Arc::new(Mutex::new((0..slots).rev().collect())),
            permits: Arc::new(Semaphore::new(slots as usize)),
            _users: users,
            config,
        })
    }

    pub fn config(&self) -> &ExecutorConfig {
        &self.config
    }

    pub fn cache(&self) -> &Arc<LocalCache> {
        &self.cache
    }

    /// Runs `true` in a sandbox, to fail early (and clearly) on a machine where bubblewrap,
    /// user namespaces or the work directory's permissions do not allow actions to run.
    pub async fn self_test(&self) -> Result<(), ExecutorError> {
        let slot = self.acquire_slot().await;
        let dir = ActionDir::create(&self.actions_dir, self.sandbox.owner(slot.index))
            .map_err(|e| ExecutorError::SelfTest(e.to_string()))?;
        let (stdout, stderr) = dir.std_files().map_err(io_err(&dir.path))?;
        let run = Run {
            root: &dir.root,
            tmp: &dir.tmp,
            working_dir: "",
            args: &["true".to_string()],
            env: &[],
            stdout,
            stderr,
            timeout: Duration::from_secs(30),
            slot: slot.index,
        };
        match self.sandbox.run(run, &CancellationToken::new()).await? {
            Outcome::Exited(0) => Ok(()),
            other => {
                let stderr = std::fs::read_to_string(dir.path.join("stderr")).unwrap_or_default();
                Err(ExecutorError::SelfTest(format!(
                    "`true` ended with {other:?}: {}",
                    stderr.trim()
                )))
            }
        }
    }

    async fn acquire_slot(&self) -> Slot {
        let permit = match self.permits.clone().acquire_owned().await {
            Ok(p) => p,
            // The semaphore is never closed.
            Err(_) => unreachable!("the slot semaphore is never closed"),
        };
        let index = self.free_slots.lock().pop().unwrap_or(0);
        Slot {
            index,
            free: self.free_slots.clone(),
            _permit: permit,
        }
    }

    /// Runs `job`, reporting its stages to `progress`; `cancel` kills it. Always answers.
    pub async fn execute(
        &self,
        job: &Job,
        cancel: &CancellationToken,
        progress: &(dyn Fn(Stage) + Send + Sync),
    ) -> ExecuteResponse {
        let mut meta = ExecutedActionMetadata {
            worker: self.config.worker_name.clone(),
            worker_start_timestamp: Some(now()),
            ..Default::default()
        };
        crate::metrics::RUNNING.inc();
        let (result, status) = self.run_job(job, cancel, progress, &mut meta).await;
        crate::metrics::RUNNING.dec();
        meta.worker_completed_timestamp = Some(now());
        let result = result.map(|mut r| {
            r.execution_metadata = Some(meta);
            r
        });
        let response = ExecuteResponse {
            result,
            cached_result: false,
            status: Some(rpc_status(status)),
            server_logs: Default::default(),
            message: String::new(),
        };
        crate::metrics::record(&response);
        response
    }

    async fn run_job(
        &self,
        job: &Job,
        cancel: &CancellationToken,
        progress: &(dyn Fn(Stage) + Send + Sync),
        meta: &mut ExecutedActionMetadata,
    ) -> (Option<ActionResult>, Status) {
        let cancelled = || (None, Status::cancelled("the lease was cancelled"));
        let checked = match check_command(&job.command) {
            Ok(c) => c,
            Err(m) => return (None, Status::invalid_argument(m)),
        };
        let slot = tokio::select! {
            s = self.acquire_slot() => s,
            _ = cancel.cancelled() => return cancelled(),
        };
        let owner = self.sandbox.owner(slot.index);
        let dir = match ActionDir::create(&self.actions_dir, owner) {
            Ok(d) => d,
            Err(e) => {
                return (
                    None,
                    Status::internal(format!("creating the action directory: {e}")),
                )
            }
        };

        meta.input_fetch_start_timestamp = Some(now());
        progress(Stage::FetchingInputs);
        let staged = tokio::select! {
            r = self.stage(job, &dir.root, &checked, owner) => r,
            _ = cancel.cancelled() => return cancelled(),
        };
        if let Err(e) = staged {
            return (None, e.to_status());
        }
        meta.input_fetch_completed_timestamp = Some(now());

        let (stdout, stderr) = match dir.std_files() {
            Ok(f) => f,
            Err(e) => {
                return (
                    None,
                    Status::internal(format!("creating stdout/stderr: {e}")),
                )
            }
        };
        let timeout = job
            .timeout
            .unwrap_or(self.config.max_timeout)
            .min(self.config.max_timeout);
        let run = Run {
            root: &dir.root,
            tmp: &dir.tmp,
            working_dir: &job.command.working_directory,
            args: &job.command.arguments,
            env: &checked.env,
            stdout,
            stderr,
            timeout,
            slot: slot.index,
        };
        progress(Stage::Executing);
        meta.execution_start_timestamp = Some(now());
        let outcome = self.sandbox.run(run, cancel).await;
        meta.execution_completed_timestamp = Some(now());
        let (exit_code, mut status) = match outcome {
            Ok(Outcome::Exited(code)) => (code, Status::ok("")),
            Ok(Outcome::TimedOut) => (
                TIMEOUT_EXIT_CODE,
                Status::deadline_exceeded(format!("the action timed out after {timeout:?}")),
            ),
            Ok(Outcome::Cancelled) => return cancelled(),
            Ok(Outcome::SetupFailed(m)) => return (None, Status::internal(m)),
            Err(SandboxError::Invalid(m)) => return (None, Status::invalid_argument(m)),
            Err(e) => return (None, Status::internal(e.to_string())),
        };
        drop(slot);

        progress(Stage::UploadingOutputs);
        meta.output_upload_start_timestamp = Some(now());
        let timed_out = status.code() == tonic::Code::DeadlineExceeded;
        let collected = self.collect(job, &dir, &checked, !timed_out).await;
        let (mut result, uploads) = match collected {
            Ok(c) => c,
            Err(e) => return (None, Status::internal(e)),
        };
        result.exit_code = exit_code;
        let (result, uploads) = match (result, uploads) {
            (r, Ok(u)) => (r, u),
            (r, Err((refusal, std_only))) => {
                status = refusal;
                (r, std_only)
            }
        };
        let store = self.store.with_instance_name(&job.instance_name);
        if let Err(e) = uploads.upload(&store).await {
            let s = Status::from(e);
            return (
                None,
                Status::new(s.code(), format!("uploading outputs: {}", s.message())),
            );
        }
        meta.output_upload_completed_timestamp = Some(now());
        (Some(result), status)
    }

    /// Stages the input root and creates the working directory and the outputs' parents.
    async fn stage(
        &self,
        job: &Job,
        root: &Path,
        checked: &Checked,
        owner: Owner,
    ) -> Result<(), StageError> {
        let store = self.store.with_instance_name(&job.instance_name);
        let dirs = TieredStore::new(self.directories.clone(), Arc::new(store.clone()));
        let root_digest = match job.action.input_root_digest.as_ref() {
            None => Digest::EMPTY,
            Some(d) => Digest::from_proto(Some(d))
                .map_err(|e| StageError::Invalid(format!("bad input root digest: {e}")))?,
        };
        stage::stage(
            &dirs,
            &self.cache,
            &store,
            &root_digest,
            root,
            owner,
            self.config.max_input_entries,
        )
        .await?;
        let root = root.to_path_buf();
        let mut needed = vec![checked.working_dir.clone()];
        needed.extend(
            checked
                .outputs
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| p[..p.len() - 1].to_vec()),
        );
        tokio::task::spawn_blocking(move || {
            needed
                .iter()
                .try_for_each(|p| stage::create_dirs_within(&root, p, owner))
        })
        .await
        .map_err(|e| StageError::Fetch(format!("staging task failed: {e}")))?
    }

    /// Hashes stdout and stderr and (if `outputs`) the declared outputs. The inner `Err`
    /// carries a refusal status and the uploads of stdout/stderr alone.
    #[allow(clippy::type_complexity)]
    async fn collect(
        &self,
        job: &Job,
        dir: &ActionDir,
        checked: &Checked,
        outputs: bool,
    ) -> Result<(ActionResult, Result<Uploads, (Status, Uploads)>), String> {
        let command = job.command.clone();
        let root = dir.root.clone();
        let std_paths = (dir.path.join("stdout"), dir.path.join("stderr"));
        let working_dir = checked.working_dir.clone();
        let options = CollectOptions {
            allow_escaping_symlinks: self.config.allow_escaping_symlinks,
        };
        tokio::task::spawn_blocking(move || {
            let mut std_uploads = Uploads::default();
            let mut digest_of = |p: &PathBuf| -> Result<Digest, String> {
                let (d, _) = outputs::hash_file(p).map_err(|e| format!("{}: {e}", p.display()))?;
                std_uploads.add_file(d, p.clone());
                Ok(d)
            };
            let stdout = digest_of(&std_paths.0)?;
            let stderr = digest_of(&std_paths.1)?;
            let mut uploads = Uploads::default();
            let collected = if outputs {
                outputs::collect(&root, &command, &working_dir, options, &mut uploads)
            } else {
                Ok(ActionResult::default())
            };
            let (mut result, uploads) = match collected {
                Ok(r) => {
                    uploads.add_file(stdout, std_paths.0.clone());
                    uploads.add_file(stderr, std_paths.1.clone());
                    (r, Ok(uploads))
                }
                Err(e) => (ActionResult::default(), Err((e.to_status(), std_uploads))),
            };
            result.stdout_digest = Some(stdout.to_proto());
            result.stderr_digest = Some(stderr.to_proto());
            Ok((result, uploads))
        })
        .await
        .map_err(|e| format!("output collection failed: {e}"))?
    }
}

/// What [`check_command`] derived from a Command.
struct Checked {
    working_dir: RootPath,
    env: Vec<(String, String)>,
    /// Every declared output, relative to the input root.
    outputs: Vec<RootPath>,
}

/// Refuses Commands that cannot run: no arguments, a working directory or output leaving the
/// input root.
fn check_command(command: &Command) -> Result<Checked, String> {
    if command.arguments.is_empty() || command.arguments[0].is_empty() {
        return Err("the command has no program to run".into());
    }
    let working_dir = paths::normalize(&[], &command.working_directory)
        .map_err(|e| format!("working directory: {e}"))?;
    #[allow(deprecated)]
    let listed: Vec<&String> = if command.output_paths.is_empty() {
        command
            .output_files
            .iter()
            .chain(&command.output_directories)
            .collect()
    } else {
        command.output_paths.iter().collect()
    };
    let outputs = listed
        .into_iter()
        .map(|p| paths::normalize(&working_dir, p).map_err(|e| format!("output {p:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let env = command
        .environment_variables
        .iter()
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect();
    Ok(Checked {
        working_dir,
        env,
        outputs,
    })
}

/// An action's directory: `root/` (the input root), `tmp/`, `stdout`, `stderr`. Removed in
/// the background when dropped.
struct ActionDir {
    path: PathBuf,
    root: PathBuf,
    tmp: PathBuf,
}

impl ActionDir {
    fn create(actions: &Path, owner: Owner) -> Result<ActionDir, StageError> {
        let path = actions.join(uuid::Uuid::new_v4().to_string());
        std::fs::create_dir(&path).map_err(|source| StageError::Io {
            path: path.clone(),
            source,
        })?;
        let dir = ActionDir {
            root: path.join("root"),
            tmp: path.join("tmp"),
            path,
        };
        stage::create_root(&dir.root, owner)?;
        stage::create_root(&dir.tmp, owner)?;
        Ok(dir)
    }

    /// Creates the stdout and stderr files (readable later through their paths).
    fn std_files(&self) -> std::io::Result<(std::fs::File, std::fs::File)> {
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(self.path.join(name))
        };
        Ok((open("stdout")?, open("stderr")?))
    }
}

impl Drop for ActionDir {
    fn drop(&mut self) {
        let path = std::mem::take(&mut self.path);
        let remove = move || {
            if let Err(e) = remove_tree(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an action directory");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => drop(h.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

/// Removes a directory tree, first making directories writable if an action locked them.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            unlock(path);
            std::fs::remove_dir_all(path)
        }
    }
}

/// Gives the owner full access to every directory under `path` (never following symlinks).
fn unlock(path: &Path) {
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700));
        if let Ok(entries) = std::fs::read_dir(&p) {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
}

/// The current time as a protobuf `Timestamp`.
pub fn now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A `google.rpc.Status` from a tonic status, keeping the details a status built by
/// `Status::with_details` carries (the `PreconditionFailure` of missing inputs).
pub fn rpc_status(status: Status) -> rpc::Status {
    if !status.details().is_empty() {
        if let Ok(s) = rpc::Status::decode(status.details()) {
            return s;
        }
    }
    rpc::Status {
        code: status.code() as i32,
        message: status.message().to_string(),
        details: Vec::new(),
    }
}
