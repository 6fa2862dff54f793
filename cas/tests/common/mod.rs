//! Shared helpers of the integration tests: in-memory storage stacks and a real tonic server on
//! 127.0.0.1 reached through real tonic clients, test data, chunk streams and memory use.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use cas::service::{Storage, StorageOptions};
use cas::store::memory::MemoryStore;
use cas::{ChunkStream, StoreError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Endpoint, Server};

/// Largest message the test clients send or accept (well above any server limit under test).
pub const CLIENT_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// HTTP/2 flow-control windows of the test server and clients (the 64 KiB default throttles
/// multi-megabyte batches on loopback).
pub const WINDOW_BYTES: u32 = 8 * 1024 * 1024;

/// A storage server running on an ephemeral loopback port; shuts down when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`, for `Endpoint::from_shared`.
    pub url: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

/// Serves `storage.add_to(..)` on 127.0.0.1:0.
pub async fn start(storage: Storage) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = oneshot::channel::<()>();
    let mut builder = Server::builder()
        .initial_stream_window_size(WINDOW_BYTES)
        .initial_connection_window_size(WINDOW_BYTES);
    let router = storage.add_to(&mut builder);
    let task = tokio::spawn(async move {
        let incoming = TcpListenerStream::new(listener);
        router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            })
            .await
            .expect("test server runs");
    });
    TestServer {
        addr,
        url: format!("http://{addr}"),
        shutdown: Some(tx),
        task,
    }
}

/// A connected channel to `server`.
pub async fn channel(server: &TestServer) -> Channel {
    Endpoint::from_shared(server.url.clone())
        .expect("valid url")
        .initial_stream_window_size(WINDOW_BYTES)
        .initial_connection_window_size(WINDOW_BYTES)
        .connect()
        .await
        .expect("connect to test server")
}

/// Options for tests: a per-process spool directory under the system temp dir, defaults
/// otherwise.
pub fn options() -> StorageOptions {
    let spool = std::env::temp_dir().join(format!("farm-cas-test-spool-{}", std::process::id()));
    StorageOptions::new(spool)
}

/// A storage over two memory stores (the CAS one of `cas_budget` bytes), and the raw CAS
/// memory store (beneath the verifying decorator) for inspection.
pub fn memory_storage_with(
    cas_budget: u64,
    options: StorageOptions,
) -> (Storage, Arc<MemoryStore>) {
    let cas_store = Arc::new(MemoryStore::new(cas_budget));
    let ac_store = Arc::new(MemoryStore::new(64 * 1024 * 1024));
    (
        Storage::new(cas_store.clone(), ac_store, options),
        cas_store,
    )
}

/// A storage over memory stores with a 256 MiB CAS and default options.
pub fn memory_storage() -> Storage {
    memory_storage_with(256 * 1024 * 1024, options()).0
}

/// Deterministic incompressible bytes (xorshift64), different for each `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A chunk stream yielding `items`.
pub fn stream_of(items: Vec<Result<Bytes, StoreError>>) -> ChunkStream {
    Box::pin(futures::stream::iter(items))
}

/// `data` in chunks of `chunk` bytes.
pub fn chunked(data: &Bytes, chunk: usize) -> ChunkStream {
    let parts: Vec<_> = (0..data.len())
        .step_by(chunk.max(1))
        .map(|i| Ok(data.slice(i..(i + chunk).min(data.len()))))
        .collect();
    stream_of(parts)
}

/// This process's peak resident memory (`VmHWM`) in bytes, if /proc tells.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
