//! The ActionCache service through a real tonic client over 127.0.0.1.

mod common;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bytes::Bytes;
use cas::digest::Digest;
use cas::service::action_cache::{action_cache_key, INLINE_BUDGET_BYTES};
use prost::Message;
use reapi::action_cache_client::ActionCacheClient;
use reapi::batch_update_blobs_request::Request as UpdateRequest;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use reapi::digest_function;
use tonic::transport::Channel;
use tonic::Code;

use common::{channel, memory_storage, memory_storage_with, options, start, CLIENT_MESSAGE_BYTES};

struct Clients {
    ac: ActionCacheClient<Channel>,
    cas: ContentAddressableStorageClient<Channel>,
}

async fn clients(server: &common::TestServer) -> Clients {
    let ch = channel(server).await;
    Clients {
        ac: ActionCacheClient::new(ch.clone())
            .max_decoding_message_size(CLIENT_MESSAGE_BYTES)
            .max_encoding_message_size(CLIENT_MESSAGE_BYTES),
        cas: ContentAddressableStorageClient::new(ch)
            .max_decoding_message_size(CLIENT_MESSAGE_BYTES)
            .max_encoding_message_size(CLIENT_MESSAGE_BYTES),
    }
}

fn pd(data: &[u8]) -> reapi::Digest {
    Digest::of(data).to_proto()
}

impl Clients {
    async fn upload(&mut self, blobs: &[&[u8]]) {
        let r = self
            .cas
            .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
                requests: blobs
                    .iter()
                    .map(|b| UpdateRequest {
                        digest: Some(pd(b)),
                        data: b.to_vec(),
                        compressor: 0,
                    })
                    .collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for response in r.responses {
            assert_eq!(response.status.unwrap().code, 0);
        }
    }

    async fn missing(&mut self, digests: Vec<reapi::Digest>) -> Vec<reapi::Digest> {
        self.cas
            .find_missing_blobs(reapi::FindMissingBlobsRequest {
                blob_digests: digests,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .missing_blob_digests
    }

    async fn update(
        &mut self,
        instance: &str,
        action: &reapi::Digest,
        result: reapi::ActionResult,
    ) -> Result<reapi::ActionResult, tonic::Status> {
        self.ac
            .update_action_result(reapi::UpdateActionResultRequest {
                instance_name: instance.into(),
                action_digest: Some(action.clone()),
                action_result: Some(result),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn get(
        &mut self,
        instance: &str,
        action: &reapi::Digest,
    ) -> Result<reapi::ActionResult, tonic::Status> {
        self.get_with(reapi::GetActionResultRequest {
            instance_name: instance.into(),
            action_digest: Some(action.clone()),
            ..Default::default()
        })
        .await
    }

    async fn get_with(
        &mut self,
        req: reapi::GetActionResultRequest,
    ) -> Result<reapi::ActionResult, tonic::Status> {
        self.ac.get_action_result(req).await.map(|r| r.into_inner())
    }

    /// The server still answers well-formed requests.
    async fn assert_alive(&mut self) {
        let err = self
            .get("", &pd(b"alive? no such action"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
}

fn output_file(path: &str, data: &[u8]) -> reapi::OutputFile {
    reapi::OutputFile {
        path: path.into(),
        digest: Some(pd(data)),
        ..Default::default()
    }
}

fn result_with(files: &[(&str, &[u8])], stdout: &[u8]) -> reapi::ActionResult {
    reapi::ActionResult {
        output_files: files.iter().map(|(p, d)| output_file(p, d)).collect(),
        stdout_digest: Some(pd(stdout)),
        exit_code: 0,
        execution_metadata: Some(reapi::ExecutedActionMetadata {
            worker: "test-worker".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn action_cache_keys_partition_by_instance() {
    let action = Digest::of(b"action");
    let a = action_cache_key("a", &action);
    assert_eq!(a, action_cache_key("a", &action));
    assert_ne!(a, action_cache_key("b", &action));
    assert_ne!(a, action_cache_key("", &action));
    assert_ne!(a, action);
    assert_eq!(a.size(), action.size());
}

#[tokio::test]
async fn update_then_get_round_trips_and_instances_are_partitioned() {
    let server = start(memory_storage()).await;
    let mut c = clients(&server).await;
    c.upload(&[b"out-1", b"stdout text"]).await;
    let action = pd(b"the action");
    let result = result_with(&[("bin/out", b"out-1")], b"stdout text");
    let stored = c.update("a", &action, result.clone()).await.unwrap();
    assert_eq!(stored, result);

    assert_eq!(c.get("a", &action).await.unwrap(), result);
    let err = c.get("b", &action).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = c.get("", &action).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Overwrite in "b" does not touch "a".
    let other = reapi::ActionResult {
        exit_code: 3,
        ..result.clone()
    };
    c.update("b", &action, other.clone()).await.unwrap();
    assert_eq!(c.get("b", &action).await.unwrap(), other);
    assert_eq!(c.get("a", &action).await.unwrap(), result);
}

#[tokio::test]
async fn bad_requests_are_invalid_arguments_and_the_server_keeps_serving() {
    let server = start(memory_storage()).await;
    let mut c = clients(&server).await;
    let action = pd(b"action");
    let bad = reapi::Digest {
        hash: "ABC".into(),
        size_bytes: 3,
    };

    let err = c.get("", &bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    c.assert_alive().await;
    let err = c
        .get_with(reapi::GetActionResultRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .get_with(reapi::GetActionResultRequest {
            action_digest: Some(action.clone()),
            digest_function: digest_function::Value::Sha1 as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    c.assert_alive().await;

    let err = c.update("", &bad, result_with(&[], b"")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err =
        c.ac.update_action_result(reapi::UpdateActionResultRequest {
            action_digest: Some(action.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let mut r = result_with(&[("f", b"f")], b"");
    r.output_files[0].digest = Some(bad.clone());
    let err = c.update("", &action, r).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("\"f\""), "names the output: {err:?}");

    let mut r = result_with(&[("f", b"f")], b"");
    r.output_files[0].digest = None;
    let err = c.update("", &action, r).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let mut r = result_with(&[], b"");
    r.stderr_digest = Some(bad.clone());
    let err = c.update("", &action, r).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let mut r = result_with(&[], b"");
    r.output_directories.push(reapi::OutputDirectory {
        path: "dir".into(),
        tree_digest: None,
        ..Default::default()
    });
    let err = c.update("", &action, r).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Inline contents that do not match their digest.
    let mut r = result_with(&[("f", b"f")], b"");
    r.output_files[0].contents = b"not f".to_vec();
    let err = c.update("", &action, r).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut r = result_with(&[], b"declared");
    r.stdout_raw = b"actual".to_vec();
    let err = c.update("", &action, r).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Nothing of the refused updates was stored.
    let err = c.get("", &action).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    c.assert_alive().await;
}

#[tokio::test]
async fn evicted_outputs_make_a_result_a_miss() {
    // A CAS of 64 KiB: uploading 128 KiB of other blobs evicts everything older.
    let (storage, _) = memory_storage_with(64 * 1024, options());
    let server = start(storage).await;
    let mut c = clients(&server).await;
    c.upload(&[b"output", b"log"]).await;
    let action = pd(b"action");
    c.update("", &action, result_with(&[("out", b"output")], b"log"))
        .await
        .unwrap();
    assert!(c.get("", &action).await.is_ok());

    let filler: Vec<Vec<u8>> = (0..32u8).map(|i| vec![i; 4096]).collect();
    let refs: Vec<&[u8]> = filler.iter().map(|v| v.as_slice()).collect();
    c.upload(&refs).await;
    assert_eq!(c.missing(vec![pd(b"output")]).await.len(), 1);

    let err = c.get("", &action).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("evicted"), "{err:?}");

    // Re-uploading the outputs makes the result whole again.
    c.upload(&[b"output", b"log"]).await;
    assert!(c.get("", &action).await.is_ok());
}

#[tokio::test]
async fn completeness_check_can_be_turned_off() {
    let mut opts = options();
    opts.completeness_check = false;
    let (storage, _) = memory_storage_with(1 << 20, opts);
    let server = start(storage).await;
    let mut c = clients(&server).await;
    let action = pd(b"action");
    let result = result_with(&[("out", b"never uploaded")], b"");
    c.update("", &action, result.clone()).await.unwrap();
    assert_eq!(c.get("", &action).await.unwrap(), result);
}

fn tree_output(path: &str, tree: &reapi::Tree) -> reapi::OutputDirectory {
    reapi::OutputDirectory {
        path: path.into(),
        tree_digest: Some(pd(&tree.encode_to_vec())),
        ..Default::default()
    }
}

#[tokio::test]
async fn output_directory_trees_are_checked_file_by_file() {
    let server = start(memory_storage()).await;
    let mut c = clients(&server).await;
    let child = reapi::Directory {
        files: vec![reapi::FileNode {
            name: "deep".into(),
            digest: Some(pd(b"deep file")),
            ..Default::default()
        }],
        ..Default::default()
    };
    let tree = reapi::Tree {
        root: Some(reapi::Directory {
            files: vec![reapi::FileNode {
                name: "top".into(),
                digest: Some(pd(b"top file")),
                ..Default::default()
            }],
            directories: vec![reapi::DirectoryNode {
                name: "sub".into(),
                digest: Some(pd(&child.encode_to_vec())),
            }],
            ..Default::default()
        }),
        children: vec![child],
    };
    let tree_bytes = tree.encode_to_vec();
    let action = pd(b"dir action");
    let mut result = result_with(&[], b"");
    result
        .output_directories
        .push(tree_output("out/dir", &tree));
    c.update("", &action, result.clone()).await.unwrap();

    // Tree blob itself missing.
    let err = c.get("", &action).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // Tree present, but it lists a file that is not.
    c.upload(&[&tree_bytes, b"top file"]).await;
    let err = c.get("", &action).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("evicted"), "{err:?}");
    // Everything present.
    c.upload(&[b"deep file"]).await;
    assert_eq!(c.get("", &action).await.unwrap(), result);

    // A "Tree" blob that does not decode is incomplete too.
    let junk = vec![0xffu8; 8];
    c.upload(&[&junk]).await;
    let mut corrupt = result_with(&[], b"");
    corrupt.output_directories.push(reapi::OutputDirectory {
        path: "d".into(),
        tree_digest: Some(pd(&junk)),
        ..Default::default()
    });
    let action2 = pd(b"corrupt tree action");
    c.update("", &action2, corrupt).await.unwrap();
    let err = c.get("", &action2).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    c.assert_alive().await;
}

#[tokio::test]
async fn inline_contents_move_to_the_cas_and_come_back_on_request() {
    let server = start(memory_storage()).await;
    let mut c = clients(&server).await;
    let action = pd(b"inline action");
    let mut result = result_with(&[("a.txt", b"file a"), ("b.txt", b"file b")], b"");
    result.stdout_digest = None;
    result.stdout_raw = b"some stdout".to_vec();
    result.stderr_raw = b"some stderr".to_vec();
    result.output_files[0].contents = b"file a".to_vec();
    result.output_files[1].contents = b"file b".to_vec();
    result.output_files[1].digest = None;

    let stored = c.update("", &action, result).await.unwrap();
    assert!(stored.stdout_raw.is_empty() && stored.stderr_raw.is_empty());
    assert_eq!(stored.stdout_digest, Some(pd(b"some stdout")));
    assert_eq!(stored.stderr_digest, Some(pd(b"some stderr")));
    assert!(stored.output_files.iter().all(|f| f.contents.is_empty()));
    assert_eq!(stored.output_files[1].digest, Some(pd(b"file b")));
    let missing = c
        .missing(vec![
            pd(b"some stdout"),
            pd(b"some stderr"),
            pd(b"file a"),
            pd(b"file b"),
        ])
        .await;
    assert!(
        missing.is_empty(),
        "inline contents were stored: {missing:?}"
    );

    assert_eq!(c.get("", &action).await.unwrap(), stored);
    let inlined = c
        .get_with(reapi::GetActionResultRequest {
            action_digest: Some(action.clone()),
            inline_stdout: true,
            inline_output_files: vec!["b.txt".into(), "no/such/file".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(inlined.stdout_raw, b"some stdout");
    assert!(inlined.stderr_raw.is_empty(), "stderr was not asked for");
    assert!(inlined.output_files[0].contents.is_empty());
    assert_eq!(inlined.output_files[1].contents, b"file b");
    assert_eq!(inlined.output_files[1].digest, Some(pd(b"file b")));
}

#[tokio::test]
async fn inlining_stays_within_its_budget() {
    let server = start(memory_storage()).await;
    let mut c = clients(&server).await;
    let big = vec![b'x'; INLINE_BUDGET_BYTES as usize + 1];
    c.upload(&[&big, b"small"]).await;
    let action = pd(b"big stdout");
    c.update("", &action, result_with(&[("small", b"small")], &big))
        .await
        .unwrap();
    let r = c
        .get_with(reapi::GetActionResultRequest {
            action_digest: Some(action),
            inline_stdout: true,
            inline_output_files: vec!["small".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(r.stdout_raw.is_empty(), "over the budget: not inlined");
    assert_eq!(r.output_files[0].contents, b"small");
}

#[tokio::test]
async fn undecodable_entries_are_misses() {
    let storage = memory_storage();
    let action = Digest::of(b"garbled");
    storage
        .action_cache
        .put_bytes(
            &action_cache_key("", &action),
            Bytes::from_static(b"\xff\xff\xff not an ActionResult"),
        )
        .await
        .unwrap();
    let server = start(storage).await;
    let mut c = clients(&server).await;
    let err = c.get("", &action.to_proto()).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    c.assert_alive().await;
}
