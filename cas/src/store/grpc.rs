//! [`GrpcStore`]: a [`BlobStore`] over a remote REAPI endpoint (a `farm-cas`, the scheduler's
//! port, or any other REAPI v2 server).
//!
//! - `find_missing` → `FindMissingBlobs`, split into requests of at most
//!   [`FIND_MISSING_BATCH`] digests that run a few at a time.
//! - `get` → ByteStream `Read` with `read_offset` / `read_limit`; the first response is awaited
//!   before `get` returns, so `NOT_FOUND` and `OUT_OF_RANGE` surface as
//!   [`StoreError::NotFound`] / [`StoreError::OutOfRange`] from `get` itself.
//! - `put` → `BatchUpdateBlobs` for blobs under [`GrpcStoreOptions::batch_threshold`] (1 MiB),
//!   otherwise a streamed ByteStream `Write` to `{instance}/uploads/{uuid}/blobs/{hash}/{size}`
//!   in chunks of [`WRITE_CHUNK_BYTES`]. An `Err` item in the input stream cancels the RPC before
//!   `finish_write`, so the server commits nothing (the store contract's abort rule).
//! - `put_verified_file` keeps the trait's default, which streams the file through `put`.
//!
//! The digest is trusted to describe the content (this is a CAS client); the server verifies.
//! Besides the trait, [`GrpcStore::batch_read`] and [`GrpcStore::batch_update`] move many small
//! blobs per round trip.

use std::collections::HashSet;
use std::time::Duration;

use crate::proto::bytestream::byte_stream_client::ByteStreamClient;
use crate::proto::bytestream::{ReadRequest, ReadResponse, WriteRequest};
use async_trait::async_trait;
use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use super::{collect_capped, dedup_in_order, BlobStore, ByteRange, ChunkStream};
use crate::digest::Digest;
use crate::error::StoreError;

/// How many digests one `FindMissingBlobs` request carries at most.
pub const FIND_MISSING_BATCH: usize = 10_000;
/// How many `FindMissingBlobs` requests of one call are in flight at once.
const FIND_MISSING_CONCURRENCY: usize = 4;
/// Size of the data chunks of a ByteStream `Write`.
pub const WRITE_CHUNK_BYTES: usize = 1 << 20;
/// Largest gRPC message sent or accepted (a batch of the server's limit plus framing, or a
/// ByteStream chunk of up to 16 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// HTTP/2 flow-control windows: large, so one stream can fill a fast link.
pub const STREAM_WINDOW_BYTES: u32 = 16 << 20;
pub const CONNECTION_WINDOW_BYTES: u32 = 64 << 20;

/// Tunables of a [`GrpcStore`].
#[derive(Clone, Debug)]
pub struct GrpcStoreOptions {
    /// REAPI instance name put in every request and resource name ("" for none).
    pub instance_name: String,
    /// Blobs smaller than this are uploaded with `BatchUpdateBlobs`, larger ones streamed.
    pub batch_threshold: u64,
    /// Most blob bytes in one batch request (the server's `max_batch_total_size_bytes`).
    pub max_batch_bytes: u64,
}

impl Default for GrpcStoreOptions {
    fn default() -> Self {
        GrpcStoreOptions {
            instance_name: String::new(),
            batch_threshold: 1 << 20,
            max_batch_bytes: 4 << 20,
        }
    }
}

/// A blob store on a remote REAPI server. Cheap to clone: clones share one HTTP/2 connection.
#[derive(Clone, Debug)]
pub struct GrpcStore {
    channel: Channel,
    options: GrpcStoreOptions,
}

/// Accepts `http://host:port`, `grpc://host:port` (Bazel's spelling) or a bare `host:port`.
fn normalize_url(url: &str) -> Result<String, StoreError> {
    if let Some(rest) = url.strip_prefix("grpc://") {
        return Ok(format!("http://{rest}"));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(url.to_string());
    }
    if url.contains("://") {
        return Err(StoreError::InvalidArgument(format!(
            "unsupported URL scheme in {url:?}: use http://, grpc:// or host:port"
        )));
    }
    Ok(format!("http://{url}"))
}

/// A tonic endpoint for `url` tuned for bulk transfers: 16 MiB stream / 64 MiB connection
/// windows, `TCP_NODELAY`, HTTP/2 keep-alives and a connect timeout. Also used by the worker
/// for its scheduler connection.
pub fn endpoint(url: &str) -> Result<Endpoint, StoreError> {
    let url = normalize_url(url)?;
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| StoreError::InvalidArgument(format!("bad endpoint URL {url:?}: {e}")))?;
    Ok(endpoint
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

impl GrpcStore {
    /// Connects to `url` now, failing with [`StoreError::Unavailable`] if it cannot.
    pub async fn connect(url: &str, options: GrpcStoreOptions) -> Result<Self, StoreError> {
        let channel = endpoint(url)?
            .connect()
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot connect to {url}: {e}")))?;
        Ok(Self::from_channel(channel, options))
    }

    /// A store for `url` that connects on first use (and reconnects after failures).
    pub fn connect_lazy(url: &str, options: GrpcStoreOptions) -> Result<Self, StoreError> {
        Ok(Self::from_channel(endpoint(url)?.connect_lazy(), options))
    }

    /// A store over an existing channel.
    pub fn from_channel(channel: Channel, options: GrpcStoreOptions) -> Self {
        GrpcStore { channel, options }
    }

    /// The same connection, addressing another instance name.
    pub fn with_instance_name(&self, instance_name: impl Into<String>) -> Self {
        let mut store = self.clone();
        store.options.instance_name = instance_name.into();
        store
    }

    pub fn instance_name(&self) -> &str {
        &self.options.instance_name
    }

    pub fn options(&self) -> &GrpcStoreOptions {
        &self.options
    }

    /// The underlying channel (for other REAPI clients on the same connection).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    fn cas(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn bytestream(&self) -> ByteStreamClient<Channel> {
        ByteStreamClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// `{instance}/` or nothing.
    fn prefix(&self) -> String {
        if self.options.instance_name.is_empty() {
            String::new()
        } else {
            format!("{}/", self.options.instance_name)
        }
    }

    fn read_resource(&self, digest: &Digest) -> String {
        format!(
            "{}blobs/{}/{}",
            self.prefix(),
            digest.hash_hex(),
            digest.size()
        )
    }

    fn write_resource(&self, digest: &Digest) -> String {
        format!(
            "{}uploads/{}/blobs/{}/{}",
            self.prefix(),
            uuid::Uuid::new_v4(),
            digest.hash_hex(),
            digest.size()
        )
    }

    /// Reads many small blobs with `BatchReadBlobs`, in requests of at most
    /// [`GrpcStoreOptions::max_batch_bytes`] of blobs. Each digest gets its own result (in
    /// input order, duplicates removed): the bytes, [`StoreError::NotFound`], or another
    /// per-blob error. Blobs larger than the batch limit get [`StoreError::InvalidArgument`];
    /// read those with [`BlobStore::get`]. The outer error is a failed RPC.
    pub async fn batch_read(
        &self,
        digests: &[Digest],
    ) -> Result<Vec<(Digest, Result<Bytes, StoreError>)>, StoreError> {
        let mut out = Vec::with_capacity(digests.len());
        let mut batch: Vec<Digest> = Vec::new();
        let mut batch_bytes = 0u64;
        let mut batches = Vec::new();
        for d in dedup_in_order(digests) {
            if d.size() > self.options.max_batch_bytes {
                out.push((
                    d,
                    Err(StoreError::InvalidArgument(format!(
                        "blob {d} is larger than the batch limit of {} bytes",
                        self.options.max_batch_bytes
                    ))),
                ));
                continue;
            }
            if d == Digest::EMPTY {
                out.push((d, Ok(Bytes::new())));
                continue;
            }
            if !batch.is_empty() && batch_bytes + d.size() > self.options.max_batch_bytes {
                batches.push(std::mem::take(&mut batch));
                batch_bytes = 0;
            }
            batch_bytes += d.size();
            batch.push(d);
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        let answers: Vec<Vec<(Digest, Result<Bytes, StoreError>)>> = futures::stream::iter(batches)
            .map(|batch| self.batch_read_one(batch))
            .buffered(FIND_MISSING_CONCURRENCY)
            .try_collect()
            .await?;
        out.extend(answers.into_iter().flatten());
        Ok(out)
    }

    async fn batch_read_one(
        &self,
        batch: Vec<Digest>,
    ) -> Result<Vec<(Digest, Result<Bytes, StoreError>)>, StoreError> {
        let request = reapi::BatchReadBlobsRequest {
            instance_name: self.options.instance_name.clone(),
            digests: batch.iter().map(Digest::to_proto).collect(),
            acceptable_compressors: Vec::new(),
            digest_function: reapi::digest_function::Value::Sha256 as i32,
        };
        let response = self
            .cas()
            .batch_read_blobs(request)
            .await
            .map_err(|s| status_error(s, None))?
            .into_inner();
        let wanted: HashSet<Digest> = batch.iter().copied().collect();
        let mut out = Vec::with_capacity(batch.len());
        let mut answered = HashSet::with_capacity(batch.len());
        for r in response.responses {
            let d = Digest::from_proto(r.digest.as_ref()).map_err(|e| {
                StoreError::Internal(format!("BatchReadBlobs answered with a bad digest: {e}"))
            })?;
            if !wanted.contains(&d) || !answered.insert(d) {
                continue;
            }
            out.push((
                d,
                rpc_status_result(r.status.as_ref(), &d).map(|()| r.data.into()),
            ));
        }
        for d in batch {
            if !answered.contains(&d) {
                out.push((
                    d,
                    Err(StoreError::Internal(format!(
                        "BatchReadBlobs did not answer for {d}"
                    ))),
                ));
            }
        }
        Ok(out)
    }

    /// Uploads many small blobs with `BatchUpdateBlobs`, in requests of at most
    /// [`GrpcStoreOptions::max_batch_bytes`]; fails on the first blob the server refuses.
    /// Blobs larger than the batch limit are streamed with `put` instead.
    pub async fn batch_update(&self, blobs: Vec<(Digest, Bytes)>) -> Result<(), StoreError> {
        let mut batches: Vec<Vec<(Digest, Bytes)>> = Vec::new();
        let mut batch = Vec::new();
        let mut batch_bytes = 0u64;
        let mut large = Vec::new();
        for (d, data) in blobs {
            let len = data.len() as u64;
            if len > self.options.max_batch_bytes {
                large.push((d, data));
                continue;
            }
            if !batch.is_empty() && batch_bytes + len > self.options.max_batch_bytes {
                batches.push(std::mem::take(&mut batch));
                batch_bytes = 0;
            }
            batch_bytes += len;
            batch.push((d, data));
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        futures::stream::iter(batches)
            .map(|b| self.batch_update_one(b))
            .buffer_unordered(FIND_MISSING_CONCURRENCY)
            .try_collect::<()>()
            .await?;
        for (d, data) in large {
            self.write_stream(&d, super::once(data)).await?;
        }
        Ok(())
    }

    async fn batch_update_one(&self, batch: Vec<(Digest, Bytes)>) -> Result<(), StoreError> {
        let request = reapi::BatchUpdateBlobsRequest {
            instance_name: self.options.instance_name.clone(),
            requests: batch
                .iter()
                .map(|(d, data)| reapi::batch_update_blobs_request::Request {
                    digest: Some(d.to_proto()),
                    data: data.to_vec(),
                    compressor: reapi::compressor::Value::Identity as i32,
                })
                .collect(),
            digest_function: reapi::digest_function::Value::Sha256 as i32,
        };
        let response = self
            .cas()
            .batch_update_blobs(request)
            .await
            .map_err(|s| status_error(s, None))?
            .into_inner();
        let mut answered = HashSet::with_capacity(batch.len());
        for r in &response.responses {
            let d = Digest::from_proto(r.digest.as_ref()).map_err(|e| {
                StoreError::Internal(format!("BatchUpdateBlobs answered with a bad digest: {e}"))
            })?;
            rpc_status_result(r.status.as_ref(), &d)?;
            answered.insert(d);
        }
        if let Some((d, _)) = batch.iter().find(|(d, _)| !answered.contains(d)) {
            return Err(StoreError::Internal(format!(
                "BatchUpdateBlobs did not answer for {d}"
            )));
        }
        Ok(())
    }

    /// Streams `data` with a ByteStream `Write`, cancelling the RPC (so nothing is committed)
    /// if `data` fails or does not hold exactly `digest.size()` bytes.
    async fn write_stream(&self, digest: &Digest, mut data: ChunkStream) -> Result<(), StoreError> {
        let size = digest.size();
        let resource = self.write_resource(digest);
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(4);
        let mut client = self.bytestream();
        let call = async move { client.write(ReceiverStream::new(rx)).await };
        let feed = async move {
            let mut offset = 0u64;
            let mut resource_name = Some(resource);
            while let Some(chunk) = data.next().await {
                let chunk = chunk?;
                let mut start = 0;
                while start < chunk.len() {
                    let piece = chunk.slice(start..chunk.len().min(start + WRITE_CHUNK_BYTES));
                    start += piece.len();
                    let end = offset + piece.len() as u64;
                    if end > size {
                        return Err(StoreError::InvalidArgument(format!(
                            "upload of {digest} has more than its {size} bytes"
                        )));
                    }
                    let request = WriteRequest {
                        resource_name: resource_name.take().unwrap_or_default(),
                        write_offset: offset as i64,
                        finish_write: false,
                        data: piece,
                    };
                    offset = end;
                    if tx.send(request).await.is_err() {
                        // The server answered early (the blob exists, or a refusal): the call's
                        // result says which.
                        return Ok(());
                    }
                }
            }
            if offset != size {
                return Err(StoreError::InvalidArgument(format!(
                    "upload of {digest} ended after {offset} of its {size} bytes"
                )));
            }
            let last = WriteRequest {
                resource_name: resource_name.take().unwrap_or_default(),
                write_offset: offset as i64,
                finish_write: true,
                data: Bytes::new(),
            };
            let _ = tx.send(last).await;
            Ok(())
        };
        tokio::pin!(call);
        tokio::pin!(feed);
        // A feed error returns here and drops `call`, which resets the HTTP/2 stream.
        let result = tokio::select! {
            fed = &mut feed => {
                fed?;
                call.await
            }
            answer = &mut call => answer,
        };
        let response = result
            .map_err(|s| status_error(s, Some(digest)))?
            .into_inner();
        if response.committed_size != size as i64 && response.committed_size != -1 {
            return Err(StoreError::Internal(format!(
                "ByteStream Write of {digest} committed {} bytes, expected {size}",
                response.committed_size
            )));
        }
        Ok(())
    }

    /// The first response of a ByteStream `Read`, so errors surface from `get`.
    async fn start_read(
        &self,
        digest: &Digest,
        offset: u64,
        limit: u64,
    ) -> Result<(Option<Bytes>, tonic::Streaming<ReadResponse>), StoreError> {
        let request = ReadRequest {
            resource_name: self.read_resource(digest),
            read_offset: i64::try_from(offset).map_err(|_| {
                StoreError::OutOfRange(format!("read offset {offset} is too large"))
            })?,
            read_limit: i64::try_from(limit).unwrap_or(i64::MAX),
        };
        let mut stream = self
            .bytestream()
            .read(request)
            .await
            .map_err(|s| status_error(s, Some(digest)))?
            .into_inner();
        let first = stream
            .message()
            .await
            .map_err(|s| status_error(s, Some(digest)))?
            .map(|r| r.data);
        Ok((first, stream))
    }
}

#[async_trait]
impl BlobStore for GrpcStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError> {
        let unique = dedup_in_order(digests);
        let requests: Vec<reapi::FindMissingBlobsRequest> = unique
            .chunks(FIND_MISSING_BATCH)
            .map(|batch| reapi::FindMissingBlobsRequest {
                instance_name: self.options.instance_name.clone(),
                blob_digests: batch.iter().map(Digest::to_proto).collect(),
                digest_function: reapi::digest_function::Value::Sha256 as i32,
            })
            .collect();
        let answers: Vec<reapi::FindMissingBlobsResponse> = futures::stream::iter(requests)
            .map(|request| {
                let mut client = self.cas();
                async move {
                    client
                        .find_missing_blobs(request)
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(|s| status_error(s, None))
                }
            })
            .buffered(FIND_MISSING_CONCURRENCY)
            .try_collect()
            .await?;
        let mut missing = HashSet::new();
        for answer in answers {
            for d in answer.missing_blob_digests {
                let d = Digest::from_proto(Some(&d)).map_err(|e| {
                    StoreError::Internal(format!(
                        "FindMissingBlobs answered with a bad digest: {e}"
                    ))
                })?;
                missing.insert(d);
            }
        }
        Ok(unique.into_iter().filter(|d| missing.contains(d)).collect())
    }

    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<ChunkStream, StoreError> {
        if *digest == Digest::EMPTY {
            // Always present in REAPI; servers need not store it.
            range.clamp(0)?;
            return Ok(Box::pin(futures::stream::empty()));
        }
        if range.limit == Some(0) {
            // ByteStream's read_limit 0 means "no limit": probe one byte so a missing blob or
            // a bad offset still fails, then answer nothing.
            self.start_read(digest, range.offset, 1).await?;
            return Ok(Box::pin(futures::stream::empty()));
        }
        let (first, rest) = self
            .start_read(digest, range.offset, range.limit.unwrap_or(0))
            .await?;
        let Some(first) = first else {
            return Ok(Box::pin(futures::stream::empty()));
        };
        let digest = *digest;
        let rest = rest.map(move |r| {
            r.map(|m| m.data)
                .map_err(|s| status_error(s, Some(&digest)))
        });
        Ok(Box::pin(
            futures::stream::once(async move { Ok(first) }).chain(rest),
        ))
    }

    async fn put(&self, digest: &Digest, data: ChunkStream) -> Result<(), StoreError> {
        if digest.size() >= self.options.batch_threshold {
            return self.write_stream(digest, data).await;
        }
        let bytes = collect_capped(data, digest.size(), |n| {
            StoreError::InvalidArgument(format!(
                "upload of {digest} has at least {n} bytes, more than its size"
            ))
        })
        .await?;
        if *digest == Digest::EMPTY {
            return Ok(());
        }
        self.batch_update_one(vec![(*digest, bytes)]).await
    }

    fn kind(&self) -> &'static str {
        "grpc"
    }
}

/// Maps a per-blob `google.rpc.Status` of a batch answer (absent = OK).
fn rpc_status_result(
    status: Option<&bazel_remote_apis::google::rpc::Status>,
    digest: &Digest,
) -> Result<(), StoreError> {
    let Some(status) = status else { return Ok(()) };
    let code = Code::from_i32(status.code);
    if code == Code::Ok {
        return Ok(());
    }
    Err(code_error(code, &status.message, Some(digest)))
}

/// Maps a gRPC status to the store error of the same meaning. `NOT_FOUND` becomes
/// [`StoreError::NotFound`] when the request was about one blob.
pub fn status_error(status: tonic::Status, digest: Option<&Digest>) -> StoreError {
    code_error(status.code(), status.message(), digest)
}

fn code_error(code: Code, message: &str, digest: Option<&Digest>) -> StoreError {
    let described = || format!("{}: {message}", crate::service::code_name(code));
    match code {
        Code::NotFound => match digest {
            Some(d) => StoreError::NotFound(*d),
            None => StoreError::Internal(described()),
        },
        Code::InvalidArgument => StoreError::InvalidArgument(message.to_string()),
        Code::OutOfRange => StoreError::OutOfRange(message.to_string()),
        Code::ResourceExhausted => StoreError::ResourceExhausted(message.to_string()),
        Code::FailedPrecondition => StoreError::FailedPrecondition(message.to_string()),
        Code::Cancelled => StoreError::Cancelled(message.to_string()),
        // Transient: the caller may retry.
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Unknown => {
            StoreError::Unavailable(described())
        }
        Code::Ok
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::Unimplemented
        | Code::Internal
        | Code::DataLoss => StoreError::Internal(described()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalized() {
        assert_eq!(normalize_url("grpc://h:1").unwrap(), "http://h:1");
        assert_eq!(normalize_url("http://h:1").unwrap(), "http://h:1");
        assert_eq!(normalize_url("h:1").unwrap(), "http://h:1");
        assert!(normalize_url("ftp://h:1").is_err());
    }

    #[test]
    fn statuses_map_to_store_errors() {
        let d = Digest::of(b"x");
        assert!(status_error(tonic::Status::not_found("no"), Some(&d)).is_not_found());
        assert!(matches!(
            status_error(tonic::Status::out_of_range("past"), Some(&d)),
            StoreError::OutOfRange(_)
        ));
        assert!(matches!(
            status_error(tonic::Status::unavailable("down"), None),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            status_error(tonic::Status::permission_denied("no"), None),
            StoreError::Internal(m) if m.contains("PERMISSION_DENIED")
        ));
    }
}
