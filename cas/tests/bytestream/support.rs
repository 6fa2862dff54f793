//! Fixture of the ByteStream tests: a real tonic server on 127.0.0.1 serving only the ByteStream
//! service over a temp-dir filesystem store, a real tonic client, and request helpers.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use bazel_remote_apis::google::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, WriteRequest,
};
use cas::service::bytestream::{ByteStreamService, DEFAULT_UPLOAD_IDLE_TIMEOUT};
use cas::service::{Storage, StorageOptions};
use cas::store::filesystem::FilesystemStore;
use cas::store::memory::MemoryStore;
use cas::Digest;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Status};

pub use super::common::random_bytes;

/// Read chunk size the fixture configures (small, so re-chunking is exercised).
pub const READ_CHUNK: usize = 256 * 1024;

/// A running server plus a connected client; everything is torn down on drop.
pub struct Fixture {
    pub client: ByteStreamClient<Channel>,
    /// Where the server listens (for clients below tonic, e.g. raw HTTP/2).
    pub addr: std::net::SocketAddr,
    pub storage: Storage,
    pub service: ByteStreamService,
    pub store: FilesystemStore,
    pub spool_dir: std::path::PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

impl Fixture {
    pub async fn start() -> Fixture {
        Self::start_with(DEFAULT_UPLOAD_IDLE_TIMEOUT, READ_CHUNK).await
    }

    pub async fn start_with(idle_timeout: Duration, read_chunk: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = FilesystemStore::open(dir.path().join("cas"), 8 << 30)
            .await
            .unwrap();
        let spool_dir = store.tmp_dir();
        let mut options = StorageOptions::new(spool_dir.clone());
        options.read_chunk_bytes = read_chunk;
        let storage = Storage::new(
            Arc::new(store.clone()),
            Arc::new(MemoryStore::new(1 << 20)),
            options,
        );
        let service = ByteStreamService::with_upload_idle_timeout(&storage, idle_timeout);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let router = Server::builder()
            .initial_stream_window_size(Some(16 << 20))
            .initial_connection_window_size(Some(64 << 20))
            .tcp_nodelay(true)
            .add_service(service.clone().into_server());
        let task = tokio::spawn(async move {
            let incoming = TcpListenerStream::new(listener);
            let stop = async {
                let _ = rx.await;
            };
            router
                .serve_with_incoming_shutdown(incoming, stop)
                .await
                .unwrap();
        });
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .initial_stream_window_size(Some(16 << 20))
            .initial_connection_window_size(Some(64 << 20))
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap();
        let client = ByteStreamClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        Fixture {
            client,
            addr,
            storage,
            service,
            store,
            spool_dir,
            shutdown: Some(tx),
            task,
            _dir: dir,
        }
    }

    /// A fresh client on the same connection.
    pub fn client(&self) -> ByteStreamClient<Channel> {
        self.client.clone()
    }

    /// Writes `requests` as one stream; the committed size or the error.
    pub async fn write(&self, requests: Vec<WriteRequest>) -> Result<i64, Status> {
        let response = self.client().write(tokio_stream::iter(requests)).await?;
        Ok(response.into_inner().committed_size)
    }

    /// Uploads `data` under `name` in `chunk`-byte requests, starting at `offset`, finishing.
    pub async fn upload(&self, name: &str, data: &[u8], chunk: usize) -> Result<i64, Status> {
        self.write(requests(name, data, chunk, 0, true)).await
    }

    /// Reads `name` from `offset` (up to `limit`, 0 = all): the bytes, or the error. Checks that
    /// no response exceeds the configured chunk size.
    pub async fn read(&self, name: &str, offset: i64, limit: i64) -> Result<Vec<u8>, Status> {
        let request = ReadRequest {
            resource_name: name.to_string(),
            read_offset: offset,
            read_limit: limit,
        };
        let mut stream = self.client().read(request).await?.into_inner();
        let mut out = Vec::new();
        while let Some(response) = stream.next().await {
            let data = response?.data;
            assert!(
                data.len() <= READ_CHUNK.max(1),
                "response of {} bytes",
                data.len()
            );
            out.extend_from_slice(&data);
        }
        Ok(out)
    }

    pub async fn query(&self, name: &str) -> Result<QueryWriteStatusResponse, Status> {
        let request = QueryWriteStatusRequest {
            resource_name: name.to_string(),
        };
        Ok(self
            .client()
            .query_write_status(request)
            .await?
            .into_inner())
    }

    /// Asserts `digest` is not visible: not in the CAS, and a Read is NOT_FOUND.
    pub async fn assert_absent(&self, digest: &Digest) {
        let missing = self.storage.cas.find_missing(&[*digest]).await.unwrap();
        assert_eq!(missing, vec![*digest], "{digest} should not be in the CAS");
        let err = self.read(&blob_name(digest), 0, 0).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }

    /// Asserts the server still serves: a fresh blob round-trips.
    pub async fn assert_serving(&self) {
        let data = format!("still serving {}", uuid::Uuid::new_v4()).into_bytes();
        let d = Digest::of(&data);
        let committed = self.upload(&upload_name(&d), &data, 7).await.unwrap();
        assert_eq!(committed, data.len() as i64);
        assert_eq!(self.read(&blob_name(&d), 0, 0).await.unwrap(), data);
    }

    /// Files in the spool directory (partial uploads, or leftovers of refused ones).
    pub fn spool_files(&self) -> usize {
        std::fs::read_dir(&self.spool_dir)
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Starts a Write whose requests the caller feeds through the returned sender.
    pub fn open_write(&self) -> (mpsc::Sender<WriteRequest>, JoinHandle<Result<i64, Status>>) {
        let (tx, rx) = mpsc::channel(4);
        let mut client = self.client();
        let call = tokio::spawn(async move {
            let response = client.write(ReceiverStream::new(rx)).await?;
            Ok(response.into_inner().committed_size)
        });
        (tx, call)
    }

    /// Polls QueryWriteStatus until `name`'s committed size is `want` (or fails after 5 s).
    pub async fn wait_committed(&self, name: &str, want: i64) {
        for _ in 0..500 {
            if let Ok(r) = self.query(name).await {
                if r.committed_size == want {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{name} never reached committed size {want}");
    }
}

/// `blobs/{hash}/{size}`.
pub fn blob_name(d: &Digest) -> String {
    format!("blobs/{}/{}", d.hash_hex(), d.size())
}

/// `compressed-blobs/zstd/{hash}/{size}`.
pub fn zstd_name(d: &Digest) -> String {
    format!("compressed-blobs/zstd/{}/{}", d.hash_hex(), d.size())
}

/// A fresh `uploads/{uuid}/blobs/{hash}/{size}`.
pub fn upload_name(d: &Digest) -> String {
    format!("uploads/{}/{}", uuid::Uuid::new_v4(), blob_name(d))
}

/// A fresh `uploads/{uuid}/compressed-blobs/zstd/{hash}/{size}`.
pub fn zstd_upload_name(d: &Digest) -> String {
    format!("uploads/{}/{}", uuid::Uuid::new_v4(), zstd_name(d))
}

/// The requests uploading `data` in `chunk`-byte pieces from `offset`; the resource name on the
/// first only; `finish_write` on the last if `finish`. Empty data is one (empty) request.
pub fn requests(
    name: &str,
    data: &[u8],
    chunk: usize,
    offset: i64,
    finish: bool,
) -> Vec<WriteRequest> {
    let mut out: Vec<WriteRequest> = Vec::new();
    let mut at = offset;
    let pieces: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(chunk).collect()
    };
    let n = pieces.len();
    for (i, piece) in pieces.into_iter().enumerate() {
        out.push(WriteRequest {
            resource_name: if i == 0 {
                name.to_string()
            } else {
                String::new()
            },
            write_offset: at,
            finish_write: finish && i + 1 == n,
            data: piece.to_vec(),
        });
        at += piece.len() as i64;
    }
    out
}

/// One request.
pub fn request(name: &str, offset: i64, data: &[u8], finish: bool) -> WriteRequest {
    WriteRequest {
        resource_name: name.to_string(),
        write_offset: offset,
        finish_write: finish,
        data: data.to_vec(),
    }
}

/// Compressible bytes: text-like lines, distinct per `seed`.
pub fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("line {i} of blob {seed}: lorem ipsum dolor\n").as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}
