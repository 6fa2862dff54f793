//! The ByteStream service over the CAS: streamed, ranged, optionally zstd-compressed reads, and
//! resumable, verified, optionally zstd-compressed writes, with the resource names and rules
//! REAPI lays down (see [`resource`]).
//!
//! - `Read` streams `storage.cas.get(range)` in messages of at most
//!   [`StorageOptions::read_chunk_bytes`](super::StorageOptions); `compressed-blobs/zstd` reads
//!   are one zstd frame compressed on the fly, with `read_offset` counting uncompressed bytes.
//! - `Write` spools, hashes and (for zstd) decodes each request once; only a finished upload whose
//!   content hashes to its digest reaches the CAS. Broken streams leave a partial upload that
//!   `QueryWriteStatus` reports and a new `Write` resumes; abandoned ones expire after
//!   [`DEFAULT_UPLOAD_IDLE_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use crate::proto::bytestream::byte_stream_server::ByteStream;
use crate::proto::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, WriteRequest, WriteResponse,
};
use tonic::{Request, Response, Status, Streaming};

use super::resource::{self, Compressor};
use super::{observe, Storage};
use crate::error::StoreError;
use crate::metrics;
use crate::store::ByteRange;

mod read;
mod server;
mod uploads;
mod write;
mod write_request;
mod write_stream;

pub use read::{ReadStream, READ_ZSTD_LEVEL};
pub use server::ByteStreamGrpc;

/// Largest ByteStream message accepted or sent: 16 MiB of data plus room for the envelope.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024 + 64 * 1024;

/// Largest data chunk of a `Read` response, whatever the options say.
const MAX_READ_CHUNK_BYTES: usize = 16 * 1024 * 1024;

/// How long a partial upload may sit without a stream before it is dropped.
pub const DEFAULT_UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// The ByteStream service.
#[derive(Clone, Debug)]
pub struct ByteStreamService {
    inner: Arc<Inner>,
}

/// What the handlers share.
#[derive(Debug)]
struct Inner {
    storage: Storage,
    uploads: Arc<uploads::Registry>,
}

impl ByteStreamService {
    /// A service over `storage`'s CAS, spooling uploads into its `spool_dir`.
    pub fn new(storage: &Storage) -> Self {
        Self::with_upload_idle_timeout(storage, DEFAULT_UPLOAD_IDLE_TIMEOUT)
    }

    /// Like [`new`](Self::new), expiring abandoned partial uploads after `idle_timeout`.
    pub fn with_upload_idle_timeout(storage: &Storage, idle_timeout: Duration) -> Self {
        ByteStreamService {
            inner: Arc::new(Inner {
                storage: storage.clone(),
                uploads: Arc::new(uploads::Registry::new(
                    idle_timeout,
                    uploads::MAX_IDLE_UPLOADS,
                )),
            }),
        }
    }

    /// Partial uploads currently held (being written or waiting for a resume).
    pub fn partial_uploads(&self) -> usize {
        self.inner.uploads.len()
    }

    /// The gRPC server: messages up to [`MAX_MESSAGE_BYTES`], zstd gRPC compression accepted,
    /// `Write` data taken off the HTTP/2 body without a copy (see [`ByteStreamGrpc`]).
    pub fn into_server(self) -> ByteStreamGrpc {
        ByteStreamGrpc::new(self)
    }
}

/// The ByteStream server over `storage`, ready to add to a tonic router.
pub fn service(storage: &Storage) -> ByteStreamGrpc {
    ByteStreamService::new(storage).into_server()
}

#[tonic::async_trait]
impl ByteStream for ByteStreamService {
    type ReadStream = ReadStream;

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadStream>, Status> {
        let body = start_read(&self.inner, request.into_inner());
        observe("ByteStream.Read", body).await.map(Response::new)
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let requests = write_stream::WriteRequests::Tonic(request.into_inner());
        let body = write::write(&self.inner, requests);
        observe("ByteStream.Write", body).await.map(Response::new)
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        let body = write::query(&self.inner, request.into_inner());
        observe("ByteStream.QueryWriteStatus", body)
            .await
            .map(Response::new)
    }
}

/// Validates a `Read` and opens its response stream.
async fn start_read(inner: &Inner, request: ReadRequest) -> Result<ReadStream, Status> {
    let resource = resource::parse_read(&request.resource_name)?;
    let digest = resource.digest;
    let (offset, limit) = (request.read_offset, request.read_limit);
    if offset < 0 {
        return Err(Status::out_of_range(format!(
            "read_offset {offset} is negative"
        )));
    }
    if limit < 0 {
        return Err(Status::invalid_argument(format!(
            "read_limit {limit} is negative"
        )));
    }
    if resource.compressor.is_some() && limit != 0 {
        return Err(Status::invalid_argument(format!(
            "read_limit must be 0 for compressed-blobs reads, got {limit}"
        )));
    }
    let offset = offset as u64;
    if offset > digest.size() {
        return Err(Status::out_of_range(format!(
            "read_offset {offset} is past the end of blob {digest}"
        )));
    }
    let range = ByteRange {
        offset,
        limit: (limit > 0).then_some(limit as u64),
    };
    let (start, end) = range.clamp(digest.size())?;
    let stream = match inner.storage.cas.get(&digest, range).await {
        Ok(stream) => {
            metrics::record_lookup("cas", true);
            stream
        }
        Err(e @ StoreError::NotFound(_)) => {
            metrics::record_lookup("cas", false);
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    let max = inner
        .storage
        .options
        .read_chunk_bytes
        .clamp(1, MAX_READ_CHUNK_BYTES);
    match resource.compressor {
        None => Ok(read::plain(stream, max, end - start)),
        Some(Compressor::Zstd) => read::zstd(stream, max, end - start),
    }
}
