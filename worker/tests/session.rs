//! The worker-protocol client against a scripted in-process scheduler: hello and platform,
//! keep-alives, a lease that cannot be decoded, a good lease with its progress, a cancelled
//! lease, and a dropped stream whose running lease reports on the next session.

mod common;

use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use cas::Digest;
use common::{bash, Farm};
use prost::Message as _;
use scheduler::protocol::worker_sessions_server::{WorkerSessions, WorkerSessionsServer};
use scheduler::protocol::{
    scheduler_message, worker_message, CancelLease, Lease, LeaseResult, SchedulerMessage, Welcome,
    WorkerMessage,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use worker::session::{self, SessionConfig};

/// One session as the test sees it.
struct Session {
    inbound: Streaming<WorkerMessage>,
    outbound: mpsc::Sender<Result<SchedulerMessage, Status>>,
}

/// A scheduler that hands every opened session to the test.
struct Scripted {
    sessions: mpsc::Sender<Session>,
}

#[tonic::async_trait]
impl WorkerSessions for Scripted {
    type OpenSessionStream = ReceiverStream<Result<SchedulerMessage, Status>>;

    async fn open_session(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::OpenSessionStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let session = Session {
            inbound: request.into_inner(),
            outbound: tx,
        };
        self.sessions
            .send(session)
            .await
            .map_err(|_| Status::unavailable("test over"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

impl Session {
    async fn next(&mut self) -> worker_message::Kind {
        bounded("a worker message", self.inbound.message())
            .await
            .expect("worker stream")
            .expect("worker stream open")
            .kind
            .expect("a message kind")
    }

    /// The next message that is not a keep-alive or progress report.
    async fn next_result(&mut self) -> LeaseResult {
        loop {
            if let worker_message::Kind::Result(r) = self.next().await {
                return r;
            }
        }
    }

    async fn send(&self, kind: scheduler_message::Kind) {
        self.outbound
            .send(Ok(SchedulerMessage { kind: Some(kind) }))
            .await
            .unwrap();
    }

    async fn welcome(&mut self) -> scheduler::protocol::Hello {
        let worker_message::Kind::Hello(hello) = self.next().await else {
            panic!("the first message is Hello");
        };
        self.send(scheduler_message::Kind::Welcome(Welcome {
            worker_id: hello.worker_id.clone(),
            keep_alive_interval_ms: 100,
            lease_timeout_ms: 1000,
        }))
        .await;
        hello
    }
}

/// A lease running `command` on an empty input root.
fn lease(id: &str, command: &reapi::Command) -> Lease {
    let command_bytes = command.encode_to_vec();
    let action = reapi::Action {
        command_digest: Some(Digest::of(&command_bytes).to_proto()),
        input_root_digest: Some(Digest::EMPTY.to_proto()),
        ..Default::default()
    };
    let action_bytes = action.encode_to_vec();
    let d = Digest::of(&action_bytes);
    Lease {
        lease_id: id.into(),
        instance_name: String::new(),
        action_hash: d.hash_hex(),
        action_size: d.size() as i64,
        action: action_bytes,
        command: command_bytes,
        timeout_ms: 0,
        request_metadata: Vec::new(),
    }
}

fn response(r: &LeaseResult) -> reapi::ExecuteResponse {
    reapi::ExecuteResponse::decode(&r.execute_response[..]).unwrap()
}

fn code(r: &reapi::ExecuteResponse) -> tonic::Code {
    tonic::Code::from(r.status.as_ref().map_or(0, |s| s.code))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_progress_cancels_and_reconnects() {
    let farm = Farm::start().await;
    let (sessions_tx, mut sessions) = mpsc::channel(4);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkerSessionsServer::new(Scripted {
                sessions: sessions_tx,
            }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let shutdown = CancellationToken::new();
    let config = SessionConfig {
        scheduler_url: url,
        worker_id: "w-1".into(),
        platform: worker::platform::properties(&[("pool".into(), "test".into())]),
        slots: 2,
        version: "test".into(),
        max_backoff: Duration::from_millis(200),
    };
    let client = tokio::spawn(session::run(
        config,
        farm.executor.clone(),
        shutdown.clone(),
    ));

    let mut s = bounded("a session", sessions.recv()).await.unwrap();
    let hello = s.welcome().await;
    assert_eq!(hello.worker_id, "w-1");
    assert_eq!(hello.slots, 2);
    let props: Vec<(String, String)> = hello
        .platform
        .iter()
        .map(|p| (p.name.clone(), p.value.clone()))
        .collect();
    assert!(props.contains(&("OSFamily".into(), "linux".into())));
    assert!(props.contains(&("ISA".into(), worker::platform::isa().into())));
    assert!(props.contains(&("pool".into(), "test".into())));
    let worker_message::Kind::KeepAlive(ka) = s.next().await else {
        panic!("a keep-alive follows Welcome");
    };
    assert!(ka.active_lease_ids.is_empty());

    // A lease whose bytes are garbage is answered, not fatal.
    let mut bad = lease("bad", &bash("true"));
    bad.action = b"not an action".to_vec();
    s.send(scheduler_message::Kind::Lease(bad)).await;
    let r = s.next_result().await;
    assert_eq!(r.lease_id, "bad");
    assert_eq!(code(&response(&r)), tonic::Code::InvalidArgument);

    // A good lease reports its stages, then its result.
    s.send(scheduler_message::Kind::Lease(lease(
        "good",
        &bash("echo hi"),
    )))
    .await;
    let mut stages = Vec::new();
    let r = loop {
        match s.next().await {
            worker_message::Kind::Progress(p) => stages.push(p.stage),
            worker_message::Kind::Result(r) => break r,
            _ => {}
        }
    };
    assert_eq!(
        stages,
        [1, 2, 3],
        "fetching inputs, executing, uploading outputs"
    );
    let resp = response(&r);
    assert_eq!(code(&resp), tonic::Code::Ok);
    assert_eq!(farm.stdout(resp.result.as_ref().unwrap()).await, "hi\n");

    // CancelLease kills it.
    s.send(scheduler_message::Kind::Lease(lease(
        "long",
        &bash("sleep 1000.777"),
    )))
    .await;
    loop {
        if let worker_message::Kind::KeepAlive(ka) = s.next().await {
            if ka.active_lease_ids == ["long"] && !farm.sandbox_processes().is_empty() {
                break;
            }
        }
    }
    s.send(scheduler_message::Kind::Cancel(CancelLease {
        lease_id: "long".into(),
    }))
    .await;
    let r = s.next_result().await;
    assert_eq!(r.lease_id, "long");
    assert_eq!(code(&response(&r)), tonic::Code::Cancelled);
    assert!(farm.sandbox_processes().is_empty());

    // A running lease survives a dropped stream and reports on the next session.
    s.send(scheduler_message::Kind::Lease(lease(
        "across",
        &bash("sleep 1; echo late"),
    )))
    .await;
    loop {
        if let worker_message::Kind::Progress(p) = s.next().await {
            if p.lease_id == "across" && p.stage == 2 {
                break;
            }
        }
    }
    drop(s);
    let mut s = bounded("a new session", sessions.recv()).await.unwrap();
    assert_eq!(s.welcome().await.worker_id, "w-1", "the same worker id");
    let worker_message::Kind::KeepAlive(ka) = s.next().await else {
        panic!("a keep-alive follows Welcome");
    };
    assert_eq!(ka.active_lease_ids, ["across"], "it still runs the lease");
    let r = s.next_result().await;
    assert_eq!(r.lease_id, "across");
    let resp = response(&r);
    assert_eq!(code(&resp), tonic::Code::Ok);
    assert_eq!(farm.stdout(resp.result.as_ref().unwrap()).await, "late\n");
    loop {
        if let worker_message::Kind::KeepAlive(ka) = s.next().await {
            assert!(
                ka.active_lease_ids.is_empty(),
                "reported leases are no longer active"
            );
            break;
        }
    }

    shutdown.cancel();
    bounded("the client to stop", client).await.unwrap();
}
