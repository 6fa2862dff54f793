//! Shared helpers of the scheduler integration tests: a real scheduler server on 127.0.0.1,
//! REAPI clients, actions built and uploaded over gRPC, and simulated workers written against
//! the `scheduler::protocol` client that answer leases with canned ExecuteResponses.

#![allow(dead_code)]

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::longrunning::operations_client::OperationsClient;
use bazel_remote_apis::google::longrunning::Operation;
use bytes::Bytes;
use cas::service::{Storage, StorageOptions};
use cas::store::memory::MemoryStore;
use cas::Digest;
use parking_lot::Mutex;
use prost::Message;
use reapi::action_cache_client::ActionCacheClient;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use reapi::execution_client::ExecutionClient;
use scheduler::protocol::scheduler_message::Kind as SKind;
use scheduler::protocol::worker_message::Kind as WKind;
use scheduler::protocol::worker_sessions_client::WorkerSessionsClient;
use scheduler::protocol::{self, Lease, WorkerMessage};
use scheduler::service::SchedulerServices;
use scheduler::state::memory::MemoryState;
use scheduler::state::SchedulerState;
use scheduler::{Scheduler, SchedulerConfig};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::Streaming;

/// Upper bound of any single wait in these tests; generous for a busy 2-core machine.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Runs `f` or panics after [`LIMIT`], naming `what`.
pub async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(LIMIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {LIMIT:?} waiting for {what}"),
    }
}

/// Fast timings for tests.
pub fn test_config() -> SchedulerConfig {
    SchedulerConfig {
        keep_alive_interval: Duration::from_millis(100),
        lease_timeout: Duration::from_millis(1500),
        max_retries: 3,
        max_action_timeout: Duration::from_secs(60),
        timeout_grace: Duration::from_millis(300),
        unsatisfiable_wait: Duration::from_secs(30),
        completed_retention: Duration::from_secs(60),
        tick_interval: Duration::from_millis(25),
        max_worker_slots: 64,
    }
}

/// A scheduler serving every service on an ephemeral loopback port; stops when dropped.
pub struct Farm {
    pub url: String,
    pub scheduler: Scheduler,
    pub storage: Storage,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Drop for Farm {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

/// A storage over two memory stores.
pub fn memory_storage() -> Storage {
    let spool = std::env::temp_dir().join(format!("farm-scheduler-test-{}", std::process::id()));
    Storage::new(
        Arc::new(MemoryStore::new(1 << 30)),
        Arc::new(MemoryStore::new(1 << 28)),
        StorageOptions::new(spool),
    )
}

/// A farm with in-memory state and storage.
pub async fn start_farm(config: SchedulerConfig) -> Farm {
    start_farm_with(config, Arc::new(MemoryState::new()), memory_storage()).await
}

/// A farm over `state` and `storage` (resuming what `state` holds).
pub async fn start_farm_with(
    config: SchedulerConfig,
    state: Arc<dyn SchedulerState>,
    storage: Storage,
) -> Farm {
    let scheduler = Scheduler::new(config, state);
    scheduler
        .resume(&*storage.cas)
        .await
        .expect("resume scheduler state");
    let services = SchedulerServices::new(scheduler.clone(), storage.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let mut builder = Server::builder();
    let router = services.add_to(&mut builder);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let task = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            })
            .await
            .expect("test server runs");
    });
    Farm {
        url: format!("http://{addr}"),
        scheduler,
        storage,
        shutdown: Some(tx),
        task,
    }
}

/// A new connection to `url`.
pub async fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_string())
        .expect("valid url")
        .connect()
        .await
        .expect("connect to the scheduler")
}

/// REAPI clients on one connection.
#[derive(Clone)]
pub struct Client {
    pub exec: ExecutionClient<Channel>,
    pub ops: OperationsClient<Channel>,
    pub cas: ContentAddressableStorageClient<Channel>,
    pub ac: ActionCacheClient<Channel>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let ch = channel(url).await;
        Client {
            exec: ExecutionClient::new(ch.clone()),
            ops: OperationsClient::new(ch.clone()),
            cas: ContentAddressableStorageClient::new(ch.clone()),
            ac: ActionCacheClient::new(ch),
        }
    }

    /// Uploads blobs with BatchUpdateBlobs.
    pub async fn upload(&self, blobs: &[(Digest, Bytes)]) {
        let request = reapi::BatchUpdateBlobsRequest {
            requests: blobs
                .iter()
                .map(|(d, data)| reapi::batch_update_blobs_request::Request {
                    digest: Some(d.to_proto()),
                    data: data.to_vec(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let resp = self
            .cas
            .clone()
            .batch_update_blobs(request)
            .await
            .expect("BatchUpdateBlobs")
            .into_inner();
        for r in resp.responses {
            let code = r.status.map_or(0, |s| s.code);
            assert_eq!(code, 0, "upload of {:?} failed", r.digest);
        }
    }

    /// Starts Execute for `action`.
    pub async fn execute_with(
        &self,
        action: &Digest,
        instance: &str,
        skip_cache_lookup: bool,
        priority: i32,
    ) -> Result<Streaming<Operation>, tonic::Status> {
        let request = reapi::ExecuteRequest {
            instance_name: instance.to_string(),
            skip_cache_lookup,
            action_digest: Some(action.to_proto()),
            execution_policy: Some(reapi::ExecutionPolicy { priority }),
            ..Default::default()
        };
        self.exec
            .clone()
            .execute(request)
            .await
            .map(|r| r.into_inner())
    }

    pub async fn execute(&self, action: &Digest) -> Streaming<Operation> {
        self.execute_with(action, "", false, 0)
            .await
            .expect("Execute accepted")
    }

    /// WaitExecution on `name`.
    pub async fn wait_execution(&self, name: &str) -> Result<Streaming<Operation>, tonic::Status> {
        self.exec
            .clone()
            .wait_execution(reapi::WaitExecutionRequest {
                name: name.to_string(),
            })
            .await
            .map(|r| r.into_inner())
    }
}

/// Reads the first update of an operation stream.
pub async fn first(stream: &mut Streaming<Operation>) -> Operation {
    bounded("the first operation update", stream.message())
        .await
        .expect("operation stream")
        .expect("at least one update")
}

/// Reads a stream to its end; returns every update and the final ExecuteResponse.
pub async fn finish(mut stream: Streaming<Operation>) -> (Vec<Operation>, reapi::ExecuteResponse) {
    let mut updates = Vec::new();
    bounded("the operation to finish", async {
        while let Some(op) = stream.message().await.expect("operation stream") {
            updates.push(op);
        }
    })
    .await;
    let last = updates.last().expect("at least one update");
    assert!(last.done, "the stream ended before the operation was done");
    let response = scheduler::operations::execute_response(last).expect("an ExecuteResponse");
    (updates, response)
}

/// The stage of an operation update.
pub fn stage(op: &Operation) -> reapi::execution_stage::Value {
    let meta = scheduler::operations::execute_metadata(op).expect("ExecuteOperationMetadata");
    reapi::execution_stage::Value::try_from(meta.stage).expect("known stage")
}

/// The status code of an ExecuteResponse.
pub fn code(response: &reapi::ExecuteResponse) -> tonic::Code {
    tonic::Code::from(response.status.as_ref().map_or(0, |s| s.code))
}

/// What to build an action from.
#[derive(Clone, Debug, Default)]
pub struct ActionSpec {
    pub args: Vec<String>,
    pub platform: Vec<(String, String)>,
    pub do_not_cache: bool,
    pub timeout: Option<Duration>,
    /// Input files at the root of the input tree.
    pub files: Vec<(String, Vec<u8>)>,
}

impl ActionSpec {
    pub fn new(tag: &str) -> Self {
        ActionSpec {
            args: vec!["/bin/echo".into(), tag.into()],
            files: vec![("input.txt".into(), format!("input of {tag}").into_bytes())],
            ..Default::default()
        }
    }

    pub fn platform(mut self, pairs: &[(&str, &str)]) -> Self {
        self.platform = pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        self
    }

    pub fn do_not_cache(mut self) -> Self {
        self.do_not_cache = true;
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
}

/// An action and every blob it needs.
pub struct BuiltAction {
    pub digest: Digest,
    pub command: Digest,
    pub input_root: Digest,
    pub files: Vec<Digest>,
    /// Action, Command, root Directory and files.
    pub blobs: Vec<(Digest, Bytes)>,
}

pub fn build_action(spec: &ActionSpec) -> BuiltAction {
    let mut blobs = Vec::new();
    let command = reapi::Command {
        arguments: spec.args.clone(),
        ..Default::default()
    };
    let command_bytes = Bytes::from(command.encode_to_vec());
    let command_digest = Digest::of(&command_bytes);
    blobs.push((command_digest, command_bytes));
    let mut files = Vec::new();
    let mut nodes = Vec::new();
    let mut sorted = spec.files.clone();
    sorted.sort();
    for (name, content) in &sorted {
        let d = Digest::of(content);
        files.push(d);
        blobs.push((d, Bytes::from(content.clone())));
        nodes.push(reapi::FileNode {
            name: name.clone(),
            digest: Some(d.to_proto()),
            ..Default::default()
        });
    }
    let root = reapi::Directory {
        files: nodes,
        ..Default::default()
    };
    let root_bytes = Bytes::from(root.encode_to_vec());
    let root_digest = Digest::of(&root_bytes);
    blobs.push((root_digest, root_bytes));
    let platform = (!spec.platform.is_empty()).then(|| reapi::Platform {
        properties: spec
            .platform
            .iter()
            .map(|(n, v)| reapi::platform::Property {
                name: n.clone(),
                value: v.clone(),
            })
            .collect(),
    });
    let action = reapi::Action {
        command_digest: Some(command_digest.to_proto()),
        input_root_digest: Some(root_digest.to_proto()),
        do_not_cache: spec.do_not_cache,
        timeout: spec
            .timeout
            .map(|t| bazel_remote_apis::google::protobuf::Duration {
                seconds: t.as_secs() as i64,
                nanos: t.subsec_nanos() as i32,
            }),
        platform,
        ..Default::default()
    };
    let action_bytes = Bytes::from(action.encode_to_vec());
    let digest = Digest::of(&action_bytes);
    blobs.push((digest, action_bytes));
    BuiltAction {
        digest,
        command: command_digest,
        input_root: root_digest,
        files,
        blobs,
    }
}

/// Builds and uploads an action; returns its digest.
pub async fn upload_action(client: &Client, spec: &ActionSpec) -> Digest {
    let built = build_action(spec);
    client.upload(&built.blobs).await;
    built.digest
}

/// The canned successful response a simulated worker sends.
pub fn canned_response(worker: &str, lease: &Lease) -> reapi::ExecuteResponse {
    reapi::ExecuteResponse {
        result: Some(reapi::ActionResult {
            exit_code: 0,
            stdout_raw: format!("ran {} on {worker}", lease.action_hash).into_bytes(),
            execution_metadata: Some(reapi::ExecutedActionMetadata {
                worker: worker.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// How a simulated worker answers leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// With the canned response after this delay.
    AutoReply(Duration),
    /// Never by itself (the test replies), while listing the lease in keep-alives.
    Hold,
}

#[derive(Default)]
struct SimShared {
    leases: Mutex<Vec<Lease>>,
    active: Mutex<HashSet<String>>,
    cancels: Mutex<Vec<String>>,
    welcome: Mutex<Option<protocol::Welcome>>,
    ended: AtomicBool,
    changed: Notify,
}

/// A simulated worker on its own connection and session.
pub struct SimWorker {
    pub id: String,
    tx: mpsc::Sender<WorkerMessage>,
    shared: Arc<SimShared>,
    reader: JoinHandle<()>,
    keepalive: JoinHandle<()>,
}

fn msg(kind: WKind) -> WorkerMessage {
    WorkerMessage { kind: Some(kind) }
}

impl SimWorker {
    /// Connects, says Hello and waits for Welcome.
    pub async fn connect(
        url: &str,
        id: &str,
        platform: &[(&str, &str)],
        slots: u32,
        mode: Mode,
    ) -> SimWorker {
        Self::connect_holding(url, id, platform, slots, mode, Vec::new()).await
    }

    /// Like [`SimWorker::connect`], for a worker process that reconnects while still running
    /// `held` (listed in its keep-alives from the first one on).
    pub async fn connect_holding(
        url: &str,
        id: &str,
        platform: &[(&str, &str)],
        slots: u32,
        mode: Mode,
        held: Vec<Lease>,
    ) -> SimWorker {
        let (tx, rx) = mpsc::channel(1024);
        let hello = protocol::Hello {
            worker_id: id.to_string(),
            platform: platform
                .iter()
                .map(|(n, v)| protocol::Property {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            slots,
            version: "sim".into(),
        };
        tx.send(msg(WKind::Hello(hello)))
            .await
            .expect("queue Hello");
        let mut client = WorkerSessionsClient::new(channel(url).await);
        let inbound = bounded("OpenSession", client.open_session(ReceiverStream::new(rx)))
            .await
            .expect("OpenSession accepted")
            .into_inner();
        let shared = Arc::new(SimShared::default());
        for lease in held {
            shared.active.lock().insert(lease.lease_id.clone());
            shared.leases.lock().push(lease);
        }
        let reader = tokio::spawn(read_loop(
            inbound,
            shared.clone(),
            tx.clone(),
            id.to_string(),
            mode,
        ));
        let keepalive = tokio::spawn(keepalive_loop(shared.clone(), tx.clone()));
        let worker = SimWorker {
            id: id.to_string(),
            tx,
            shared,
            reader,
            keepalive,
        };
        bounded("Welcome", async {
            loop {
                let notified = worker.shared.changed.notified();
                if worker.shared.welcome.lock().is_some() {
                    break;
                }
                notified.await;
            }
        })
        .await;
        worker
    }

    pub fn welcome(&self) -> protocol::Welcome {
        self.shared.welcome.lock().clone().expect("welcomed")
    }

    /// Every lease received so far.
    pub fn leases(&self) -> Vec<Lease> {
        self.shared.leases.lock().clone()
    }

    /// Waits until at least `n` leases have arrived.
    pub async fn wait_leases(&self, n: usize) -> Vec<Lease> {
        bounded(&format!("{n} lease(s) at worker {}", self.id), async {
            loop {
                let notified = self.shared.changed.notified();
                let leases = self.leases();
                if leases.len() >= n {
                    return leases;
                }
                notified.await;
            }
        })
        .await
    }

    /// Waits until `lease_id` is cancelled by the scheduler.
    pub async fn wait_cancel(&self, lease_id: &str) {
        bounded(&format!("CancelLease {lease_id}"), async {
            loop {
                let notified = self.shared.changed.notified();
                if self.shared.cancels.lock().iter().any(|c| c == lease_id) {
                    return;
                }
                notified.await;
            }
        })
        .await
    }

    /// Waits until the scheduler ends this session.
    pub async fn wait_ended(&self) {
        bounded(&format!("the end of {}'s session", self.id), async {
            loop {
                let notified = self.shared.changed.notified();
                if self.shared.ended.load(Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        })
        .await
    }

    /// Sends `response` for `lease_id`.
    /// (The result goes on the stream before the lease leaves the keep-alive list, as a
    /// worker must do it.)
    pub async fn reply(&self, lease_id: &str, response: &reapi::ExecuteResponse) {
        let result = protocol::LeaseResult {
            lease_id: lease_id.to_string(),
            execute_response: response.encode_to_vec(),
        };
        self.tx
            .send(msg(WKind::Result(result)))
            .await
            .expect("send result");
        self.shared.active.lock().remove(lease_id);
    }

    /// Sends the canned successful response for `lease`.
    pub async fn reply_ok(&self, lease: &Lease) {
        self.reply(&lease.lease_id, &canned_response(&self.id, lease))
            .await;
    }

    /// Stops listing `lease_id` in keep-alives (as if the action runner lost it).
    pub fn forget(&self, lease_id: &str) {
        self.shared.active.lock().remove(lease_id);
    }

    /// Stops keep-alives (the stream stays open and silent).
    pub fn go_silent(&self) {
        self.keepalive.abort();
    }

    /// Drops the session stream (as a crashed worker would).
    pub fn drop_stream(self) {
        self.reader.abort();
        self.keepalive.abort();
        drop(self.tx);
    }
}

async fn read_loop(
    mut inbound: Streaming<protocol::SchedulerMessage>,
    shared: Arc<SimShared>,
    tx: mpsc::Sender<WorkerMessage>,
    id: String,
    mode: Mode,
) {
    while let Ok(Some(m)) = inbound.message().await {
        match m.kind {
            Some(SKind::Welcome(w)) => *shared.welcome.lock() = Some(w),
            Some(SKind::Lease(lease)) => {
                shared.active.lock().insert(lease.lease_id.clone());
                shared.leases.lock().push(lease.clone());
                if let Mode::AutoReply(delay) = mode {
                    let tx = tx.clone();
                    let id = id.clone();
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let result = protocol::LeaseResult {
                            lease_id: lease.lease_id.clone(),
                            execute_response: canned_response(&id, &lease).encode_to_vec(),
                        };
                        let _ = tx.send(msg(WKind::Result(result))).await;
                        shared.active.lock().remove(&lease.lease_id);
                    });
                }
            }
            Some(SKind::Cancel(c)) => {
                shared.active.lock().remove(&c.lease_id);
                shared.cancels.lock().push(c.lease_id);
            }
            None => {}
        }
        shared.changed.notify_waiters();
    }
    shared.ended.store(true, Ordering::SeqCst);
    shared.changed.notify_waiters();
}

async fn keepalive_loop(shared: Arc<SimShared>, tx: mpsc::Sender<WorkerMessage>) {
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    loop {
        interval.tick().await;
        let active: Vec<String> = shared.active.lock().iter().cloned().collect();
        let keep = protocol::KeepAlive {
            active_lease_ids: active,
        };
        if tx.send(msg(WKind::KeepAlive(keep))).await.is_err() {
            return;
        }
    }
}

/// `google.rpc.PreconditionFailure` (not among the generated types).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PreconditionFailure {
    #[prost(message, repeated, tag = "1")]
    pub violations: Vec<Violation>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Violation {
    #[prost(string, tag = "1")]
    pub r#type: String,
    #[prost(string, tag = "2")]
    pub subject: String,
    #[prost(string, tag = "3")]
    pub description: String,
}

/// The PreconditionFailure in a gRPC status's details.
pub fn precondition_failure(status: &tonic::Status) -> PreconditionFailure {
    let rpc = bazel_remote_apis::google::rpc::Status::decode(status.details())
        .expect("status details are a google.rpc.Status");
    let any = rpc
        .details
        .iter()
        .find(|a| a.type_url == "type.googleapis.com/google.rpc.PreconditionFailure")
        .expect("a PreconditionFailure detail");
    PreconditionFailure::decode(&any.value[..]).expect("decodable PreconditionFailure")
}

/// Polls `cond` every 10 ms until it holds (panics after [`LIMIT`]).
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > LIMIT {
            panic!("timed out after {LIMIT:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
