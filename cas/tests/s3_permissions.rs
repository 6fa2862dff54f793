//! S3 credentials without `s3:ListBucket`: S3 then answers 403 instead of 404 for a key that
//! does not exist, and the error a client sees must say so, not look like an outage.
//!
//! The server here is a stand-in for S3 behind such a policy, holding no object: every
//! HeadObject answers 403 with no body (as S3 does: HEAD answers carry no error code), every
//! GetObject 403 with the error code it was given. It needs no S3 service.
#![cfg(feature = "s3")]

mod common;

use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use cas::proto::bytestream::{byte_stream_client::ByteStreamClient, ReadRequest};
use cas::service::Storage;
use cas::store::memory::MemoryStore;
use cas::store::s3::{S3Options, S3Store};
use cas::{BlobStore, ByteRange, Digest, StoreError};
use reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;

/// Serves the stand-in on a loopback port; returns its endpoint URL.
async fn fake_s3(get_error_code: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve(conn, get_error_code));
        }
    });
    format!("http://{addr}")
}

/// Answers the requests of one keep-alive connection.
async fn serve(conn: TcpStream, get_error_code: &'static str) {
    let mut conn = BufReader::new(conn);
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            match conn.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => head.push(line),
            }
        }
        let method = head
            .first()
            .and_then(|l| l.split(' ').next())
            .unwrap_or("")
            .to_string();
        let body_len: usize = head
            .iter()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0; body_len];
        if conn.read_exact(&mut body).await.is_err() {
            return;
        }
        let response = match method.as_str() {
            "HEAD" => {
                "HTTP/1.1 403 Forbidden\r\nx-amz-request-id: fake\r\ncontent-length: 0\r\n\r\n"
                    .to_string()
            }
            "GET" => {
                let xml = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{get_error_code}\
                     </Code><Message>Access Denied</Message><RequestId>fake</RequestId></Error>"
                );
                format!(
                    "HTTP/1.1 403 Forbidden\r\ncontent-type: application/xml\r\n\
                     x-amz-request-id: fake\r\ncontent-length: {}\r\n\r\n{xml}",
                    xml.len()
                )
            }
            _ => "HTTP/1.1 200 OK\r\netag: \"fake\"\r\ncontent-length: 0\r\n\r\n".to_string(),
        };
        if conn.get_mut().write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn store(endpoint: String) -> S3Store {
    S3Store::new(S3Options {
        bucket: "farm-no-list".into(),
        endpoint: Some(endpoint),
        access_key_id: Some("AKIDEXAMPLE".into()),
        secret_access_key: Some("secret".into()),
        ..S3Options::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn lookups_without_list_bucket_say_which_permission_is_missing() {
    let s3 = store(fake_s3("AccessDenied").await).await;
    let d = Digest::of(b"a blob nobody uploaded");
    for err in [
        s3.find_missing(&[d]).await.unwrap_err(),
        s3.get_bytes(&d, ByteRange::ALL).await.unwrap_err(),
        s3.get_bytes(
            &d,
            ByteRange {
                offset: 0,
                limit: Some(0),
            },
        )
        .await
        .unwrap_err(),
    ] {
        println!("{err}");
        let StoreError::FailedPrecondition(msg) = &err else {
            panic!("expected FailedPrecondition, got {err:?}");
        };
        assert!(
            msg.contains("s3:ListBucket") && msg.contains("403 instead of 404"),
            "{msg}"
        );
    }
    // HeadObject's own answer names the bucket to fix.
    let err = s3.find_missing(&[d]).await.unwrap_err().to_string();
    assert!(err.contains("arn:aws:s3:::farm-no-list"), "{err}");
}

#[tokio::test]
async fn refused_credentials_are_still_told_apart() {
    let s3 = store(fake_s3("SignatureDoesNotMatch").await).await;
    let err = s3.find_missing(&[Digest::of(b"x")]).await.unwrap_err();
    let StoreError::Unavailable(msg) = &err else {
        panic!("expected Unavailable, got {err:?}");
    };
    assert!(
        msg.contains("credentials") && msg.contains("SignatureDoesNotMatch"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_clients_see_failed_precondition_naming_list_bucket() {
    let s3 = Arc::new(store(fake_s3("AccessDenied").await).await);
    let ac = Arc::new(MemoryStore::new(1 << 20));
    let server = common::start(Storage::new(s3, ac, common::options())).await;
    let channel = common::channel(&server).await;
    let mut cas = ContentAddressableStorageClient::new(channel.clone());
    let d = Digest::of(b"a blob nobody uploaded");

    let err = cas
        .find_missing_blobs(reapi::FindMissingBlobsRequest {
            blob_digests: vec![d.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("s3:ListBucket"), "{err:?}");

    let read = cas
        .batch_read_blobs(reapi::BatchReadBlobsRequest {
            digests: vec![d.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let status = read.responses[0].status.clone().unwrap_or_default();
    assert_eq!(status.code, Code::FailedPrecondition as i32, "{status:?}");
    assert!(status.message.contains("s3:ListBucket"), "{status:?}");

    let mut bytestream = ByteStreamClient::new(channel);
    let err = match bytestream
        .read(ReadRequest {
            resource_name: format!("blobs/{}/{}", d.hash_hex(), d.size()),
            read_offset: 0,
            read_limit: 0,
        })
        .await
    {
        Err(status) => status,
        Ok(response) => {
            let mut stream = response.into_inner();
            match stream.message().await {
                Err(status) => status,
                Ok(m) => panic!("read of a refused blob gave {m:?}"),
            }
        }
    };
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("s3:ListBucket"), "{err:?}");
}
