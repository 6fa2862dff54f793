//! A REAPI client of a running farm (`farm-scheduler` serving the CAS and Execution on one
//! address): uploads a command-only action and runs it with Execute. Shared by the end-to-end
//! test (`tests/farm_e2e.rs`) and the throughput benchmark (`benches/e2e_throughput.rs`), so
//! both submit actions the same way.

#![allow(dead_code)]

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::longrunning::Operation;
use bytes::Bytes;
use cas::store::grpc::GrpcStore;
use cas::Digest;
use prost::Message as _;
use reapi::execution_client::ExecutionClient;
use tonic::transport::Channel;

/// The Command and Action of `args` with an empty input root, `PATH=/usr/bin:/bin` and
/// `OSFamily=linux`, `salt` making the action distinct; returns (digest, bytes) of each.
pub fn action_blobs(args: &[&str], salt: &str) -> [(Digest, Bytes); 2] {
    let command = reapi::Command {
        arguments: args.iter().map(|s| s.to_string()).collect(),
        environment_variables: vec![reapi::command::EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        ..Default::default()
    };
    let command_bytes = Bytes::from(command.encode_to_vec());
    let command_digest = Digest::of(&command_bytes);
    let action = reapi::Action {
        command_digest: Some(command_digest.to_proto()),
        input_root_digest: Some(Digest::EMPTY.to_proto()),
        salt: salt.as_bytes().to_vec(),
        platform: Some(reapi::Platform {
            properties: vec![reapi::platform::Property {
                name: "OSFamily".into(),
                value: "linux".into(),
            }],
        }),
        ..Default::default()
    };
    let action_bytes = Bytes::from(action.encode_to_vec());
    [
        (command_digest, command_bytes),
        (Digest::of(&action_bytes), action_bytes),
    ]
}

/// Uploads the Command and Action of `args` (see [`action_blobs`]) and returns the action's
/// digest.
pub async fn upload_action(store: &GrpcStore, args: &[&str], salt: &str) -> Digest {
    let [command, action] = action_blobs(args, salt);
    let digest = action.0;
    store
        .batch_update(vec![command, action])
        .await
        .expect("upload the command and action");
    digest
}

/// Executes an uploaded action and waits for its final `ExecuteResponse`; `skip_cache_lookup`
/// makes it run even if the action cache has it.
pub async fn execute(
    mut exec: ExecutionClient<Channel>,
    action: &Digest,
    skip_cache_lookup: bool,
) -> reapi::ExecuteResponse {
    let request = reapi::ExecuteRequest {
        action_digest: Some(action.to_proto()),
        skip_cache_lookup,
        ..Default::default()
    };
    let mut stream = exec
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

/// The status code of an `ExecuteResponse`.
pub fn code(r: &reapi::ExecuteResponse) -> tonic::Code {
    tonic::Code::from(r.status.as_ref().map_or(0, |s| s.code))
}
