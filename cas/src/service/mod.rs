//! The REAPI v2 storage services over tonic: Capabilities, ContentAddressableStorage,
//! ActionCache and ByteStream, all on one port.
//!
//! Invariant: every CAS write reaching a store through these services passes a
//! [`VerifyingStore`]; [`Storage::new`] adds it, so no configuration can turn it off.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::metrics;
use crate::store::verifying::VerifyingStore;
use crate::store::BlobStore;

pub mod action_cache;
pub mod bytestream;
pub mod capabilities;
pub mod cas;
pub mod resource;

/// Limits and tunables of the storage services (typed; binaries parse them from flags/files).
#[derive(Clone, Debug)]
pub struct StorageOptions {
    /// Where ByteStream uploads are spooled while they arrive; on the filesystem store's own
    /// filesystem, so a finished upload becomes a rename.
    pub spool_dir: PathBuf,
    /// Largest total of blob bytes in one BatchUpdateBlobs / BatchReadBlobs (advertised in
    /// Capabilities).
    pub max_batch_total_bytes: u64,
    /// Size of each ByteStream Read response chunk.
    pub read_chunk_bytes: usize,
    /// Answer NOT_FOUND for action results whose outputs are no longer all in the CAS.
    pub completeness_check: bool,
    /// Spool large ByteStream uploads with direct I/O (see [`crate::direct_io`]); where the
    /// filesystem does not support it they are written through the page cache anyway.
    pub direct_io: bool,
}

impl StorageOptions {
    pub fn new(spool_dir: PathBuf) -> Self {
        StorageOptions {
            spool_dir,
            max_batch_total_bytes: 4 * 1024 * 1024,
            read_chunk_bytes: 1024 * 1024,
            completeness_check: true,
            direct_io: true,
        }
    }
}

/// The stores and options behind the storage services; cheap to clone.
#[derive(Clone, Debug)]
pub struct Storage {
    /// The CAS stack, always topped by a verifying decorator.
    pub cas: Arc<dyn BlobStore>,
    /// The action-cache stack (values are encoded ActionResults under derived keys).
    pub action_cache: Arc<dyn BlobStore>,
    pub options: Arc<StorageOptions>,
}

impl Storage {
    pub fn new(
        cas: Arc<dyn BlobStore>,
        action_cache: Arc<dyn BlobStore>,
        options: StorageOptions,
    ) -> Self {
        Storage {
            cas: Arc::new(VerifyingStore::new(cas)),
            action_cache,
            options: Arc::new(options),
        }
    }

    /// Adds every storage service (Capabilities, ContentAddressableStorage, ActionCache,
    /// ByteStream) to `server`; the caller may add more services to the returned router and
    /// serve it. Multi-megabyte batches want HTTP/2 windows larger than the 64 KiB default
    /// (`initial_stream_window_size` / `initial_connection_window_size` on `server`).
    pub fn add_to(
        &self,
        server: &mut tonic::transport::Server,
    ) -> tonic::transport::server::Router {
        server
            .add_service(capabilities::service(self))
            .add_service(cas::service(self))
            .add_service(action_cache::service(self))
            .add_service(bytestream::service(self))
    }
}

/// Runs one RPC body, recording its count by status code and its latency under `method`.
pub async fn observe<T>(
    method: &'static str,
    body: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    let start = Instant::now();
    let result = body.await;
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    metrics::REQUEST_SECONDS
        .with_label_values(&[method])
        .observe(start.elapsed().as_secs_f64());
    metrics::REQUESTS
        .with_label_values(&[method, code_name(code)])
        .inc();
    result
}

/// The canonical upper-case name of a gRPC status code (as in grpc's docs: `NOT_FOUND`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
