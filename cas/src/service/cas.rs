//! The REAPI ContentAddressableStorage service: FindMissingBlobs, BatchUpdateBlobs,
//! BatchReadBlobs and GetTree over [`Storage::cas`].
//!
//! Every digest is parsed strictly (SHA-256, lowercase hex, non-negative size); only the SHA-256
//! digest function (or UNKNOWN, meaning "infer") is accepted. Uploads go through the verifying
//! store, so a blob whose content does not match its digest is never stored. Batches are
//! limited by [`StorageOptions::max_batch_total_bytes`], and the gRPC message limits are set
//! above it so that an oversized batch reaches this code and gets a clear INVALID_ARGUMENT
//! instead of a transport error. The blob-splitting RPCs (SplitBlob, GetChunkMapping,
//! SpliceBlob, RegisterChunkMapping) are not advertised and answer UNIMPLEMENTED.

use std::collections::HashSet;
use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::rpc::Status as RpcStatus;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use reapi::content_addressable_storage_server::{
    ContentAddressableStorage, ContentAddressableStorageServer,
};
use reapi::{batch_read_blobs_response, batch_update_blobs_response, compressor, digest_function};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use super::{observe, Storage, StorageOptions};
use crate::digest::Digest;
use crate::metrics;
use crate::store::{BlobStore, ByteRange};

mod get_tree;

pub use get_tree::{
    TreeWalks, DEFAULT_TREE_PAGE_SIZE, KEEP_WALKS_FOR, MAX_KEPT_DIRECTORIES, MAX_TREE_PAGE_SIZE,
};

/// Room for protobuf framing on top of a batch's blob bytes in one gRPC message.
pub const MESSAGE_OVERHEAD_BYTES: usize = 1024 * 1024;
/// gRPC message limit used when no batch limit is configured (`max_batch_total_bytes == 0`).
pub const UNLIMITED_BATCH_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Blobs smaller than this are never compressed in BatchReadBlobs (framing would eat the gain).
const MIN_COMPRESS_BYTES: usize = 128;
/// zstd level used when compressing BatchReadBlobs answers: fast, still a good ratio.
const READ_COMPRESSION_LEVEL: i32 = 1;
/// Store operations in flight per worker task of one batch.
const MAX_IN_FLIGHT_PER_TASK: usize = 512;
/// A batch is split over several tasks (cores) only when it has more blobs than this per task.
const MIN_BLOBS_PER_TASK: usize = 64;

/// The largest gRPC message the storage services accept or send: the batch limit, doubled so
/// that per-blob framing of a batch of many tiny blobs still fits, plus a fixed overhead.
pub fn max_message_bytes(options: &StorageOptions) -> usize {
    if options.max_batch_total_bytes == 0 {
        return UNLIMITED_BATCH_MESSAGE_BYTES;
    }
    usize::try_from(options.max_batch_total_bytes)
        .unwrap_or(usize::MAX)
        .saturating_mul(2)
        .saturating_add(MESSAGE_OVERHEAD_BYTES)
}

/// Refuses every digest function but SHA-256 (and UNKNOWN, which means "infer from the hash
/// length": ours are all SHA-256).
pub(crate) fn check_digest_function(value: i32) -> Result<(), Status> {
    match digest_function::Value::try_from(value) {
        Ok(digest_function::Value::Unknown | digest_function::Value::Sha256) => Ok(()),
        Ok(other) => Err(Status::invalid_argument(format!(
            "digest function {} is not supported; this server only uses SHA256",
            other.as_str_name()
        ))),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown digest function {value}; this server only uses SHA256"
        ))),
    }
}

/// A printable form of a digest message as the client sent it (hash truncated).
pub(crate) fn show_proto_digest(d: &reapi::Digest) -> String {
    let hash: String = d.hash.chars().take(80).collect();
    format!("{hash}/{}", d.size_bytes)
}

/// Parses a digest field strictly; `what` names the field in the INVALID_ARGUMENT message.
pub(crate) fn parse_digest(d: Option<&reapi::Digest>, what: &str) -> Result<Digest, Status> {
    Digest::from_proto(d).map_err(|e| match d {
        Some(d) => {
            Status::invalid_argument(format!("invalid {what} {}: {e}", show_proto_digest(d)))
        }
        None => Status::invalid_argument(format!("missing {what}")),
    })
}

/// A google.rpc.Status carrying `status`'s code and message (for per-blob results).
pub(crate) fn rpc_status(status: &Status) -> RpcStatus {
    RpcStatus {
        code: status.code() as i32,
        message: status.message().to_string(),
        details: Vec::new(),
    }
}

/// The OK google.rpc.Status.
fn rpc_ok() -> RpcStatus {
    RpcStatus::default()
}

/// The logical size a batch entry claims, for the batch limit: its digest's size if that parses
/// as a non-negative number, and at least the bytes actually sent.
fn claimed_size(digest: Option<&reapi::Digest>, data_len: usize) -> u64 {
    let declared = digest.map_or(0, |d| u64::try_from(d.size_bytes).unwrap_or(0));
    declared.max(data_len as u64)
}

/// Refuses a batch whose blobs total more than the configured limit (0 = no limit).
fn check_batch_total(options: &StorageOptions, total: u64, verb: &str) -> Result<(), Status> {
    let limit = options.max_batch_total_bytes;
    if limit != 0 && total > limit {
        return Err(Status::invalid_argument(format!(
            "batch would {verb} {total} bytes of blobs, more than the server limit of {limit} \
             bytes (max_batch_total_size_bytes); split the batch or use ByteStream"
        )));
    }
    Ok(())
}

/// Runs `f` over `items` keeping their order: on this task for small batches, otherwise spread
/// over one spawned task per core (hashing and (de)compression are CPU work), each with a
/// bounded number of store operations in flight.
async fn map_parallel<T, R, F, Fut>(items: Vec<T>, f: F) -> Result<Vec<R>, Status>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
{
    map_parts_parallel(items, move |part: Vec<T>| {
        futures::stream::iter(part)
            .map(f.clone())
            .buffered(MAX_IN_FLIGHT_PER_TASK)
            .collect::<Vec<R>>()
    })
    .await
}

/// Runs `f` over `items` split into parts, keeping their order: one part on this task for
/// small batches, otherwise one part per core, each on a spawned task (hashing and
/// decompression are CPU work).
async fn map_parts_parallel<T, R, F, Fut>(items: Vec<T>, f: F) -> Result<Vec<R>, Status>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Vec<T>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Vec<R>> + Send + 'static,
{
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores == 1 || items.len() <= MIN_BLOBS_PER_TASK {
        return Ok(f(items).await);
    }
    let per_task = items.len().div_ceil(cores).max(MIN_BLOBS_PER_TASK);
    let total = items.len();
    let mut items = items.into_iter();
    let mut tasks = Vec::with_capacity(cores);
    loop {
        let part: Vec<T> = items.by_ref().take(per_task).collect();
        if part.is_empty() {
            break;
        }
        tasks.push(tokio::spawn(f.clone()(part)));
    }
    let mut out = Vec::with_capacity(total);
    for task in tasks {
        let part = task
            .await
            .map_err(|e| Status::internal(format!("batch worker task failed: {e}")))?;
        out.extend(part);
    }
    Ok(out)
}

/// Decompresses a zstd upload of a blob that must be exactly `expected` bytes, never producing
/// (or allocating for) more than `expected + 1` bytes.
fn zstd_decompress(data: &[u8], expected: u64) -> Result<Vec<u8>, String> {
    const MAX_PREALLOC: u64 = 16 * 1024 * 1024;
    let mut decoder =
        zstd::stream::read::Decoder::with_buffer(data).map_err(|e| format!("zstd: {e}"))?;
    let cap = usize::try_from(expected.min(MAX_PREALLOC)).unwrap_or(0);
    let mut out = Vec::with_capacity(cap);
    (&mut decoder)
        .take(expected.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| format!("zstd data does not decompress: {e}"))?;
    if out.len() as u64 != expected {
        let got = if out.len() as u64 > expected {
            format!("more than {expected}")
        } else {
            out.len().to_string()
        };
        return Err(format!(
            "zstd data decompresses to {got} bytes, but the digest says {expected}"
        ));
    }
    Ok(out)
}

/// Checks one BatchUpdateBlobs entry and decompresses its data: the digest and the bytes to
/// store, and how many bytes it took on the wire.
fn prepare_update(
    req: reapi::batch_update_blobs_request::Request,
) -> Result<(Digest, Bytes, u64), Status> {
    let digest = parse_digest(req.digest.as_ref(), "blob digest")?;
    let wire_len = req.data.len() as u64;
    let data: Bytes =
        match compressor::Value::try_from(req.compressor) {
            Ok(compressor::Value::Identity) => Bytes::from(req.data),
            Ok(compressor::Value::Zstd) => zstd_decompress(&req.data, digest.size())
                .map(Bytes::from)
                .map_err(|e| Status::invalid_argument(format!("blob {digest}: {e}")))?,
            Ok(other) => {
                return Err(Status::invalid_argument(format!(
                    "blob {digest}: compressor {} is not supported for batch uploads \
                 (supported: IDENTITY, ZSTD)",
                    other.as_str_name()
                )))
            }
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "blob {digest}: unknown compressor {}",
                    req.compressor
                )))
            }
        };
    if data.len() as u64 != digest.size() {
        return Err(Status::invalid_argument(format!(
            "blob {digest}: {} bytes of data sent, but the digest says {}",
            data.len(),
            digest.size()
        )));
    }
    Ok((digest, data, wire_len))
}

/// Stores one part of a BatchUpdateBlobs with one `put_many` call; returns each entry's
/// response and the wire bytes it stored, in order.
async fn update_part(
    cas: Arc<dyn BlobStore>,
    requests: Vec<reapi::batch_update_blobs_request::Request>,
) -> Vec<(batch_update_blobs_response::Response, u64)> {
    let mut out = Vec::with_capacity(requests.len());
    let mut blobs = Vec::with_capacity(requests.len());
    let mut stored_at = Vec::with_capacity(requests.len());
    for req in requests {
        let echo = req.digest.clone();
        match prepare_update(req) {
            Ok((digest, data, wire_len)) => {
                stored_at.push((out.len(), wire_len));
                blobs.push((digest, data));
                out.push((update_response(echo, rpc_ok()), 0));
            }
            Err(status) => out.push((update_response(echo, rpc_status(&status)), 0)),
        }
    }
    let results = cas.put_many(blobs).await;
    let mut results = results.into_iter();
    for (slot, wire_len) in stored_at {
        let entry = &mut out[slot];
        match results.next() {
            Some(Ok(())) => entry.1 = wire_len,
            Some(Err(e)) => entry.0.status = Some(rpc_status(&Status::from(e))),
            None => {
                let s = Status::internal("the store answered fewer results than blobs");
                entry.0.status = Some(rpc_status(&s));
            }
        }
    }
    out
}

fn update_response(
    digest: Option<reapi::Digest>,
    status: RpcStatus,
) -> batch_update_blobs_response::Response {
    batch_update_blobs_response::Response {
        digest,
        status: Some(status),
    }
}

/// Outcome of reading one blob: its response, bytes sent, and whether it was a hit (`None` when
/// the digest was not even valid).
type ReadOutcome = (batch_read_blobs_response::Response, u64, Option<bool>);

/// Reads one BatchReadBlobs entry, zstd-compressing it when allowed and worthwhile.
async fn read_one(cas: Arc<dyn BlobStore>, proto: reapi::Digest, zstd_ok: bool) -> ReadOutcome {
    let mut response = batch_read_blobs_response::Response {
        digest: Some(proto.clone()),
        ..Default::default()
    };
    let digest = match parse_digest(Some(&proto), "blob digest") {
        Ok(d) => d,
        Err(s) => {
            response.status = Some(rpc_status(&s));
            return (response, 0, None);
        }
    };
    let data = match cas.get_bytes(&digest, ByteRange::ALL).await {
        Ok(data) => data,
        Err(e) => {
            let hit = if e.is_not_found() { Some(false) } else { None };
            response.status = Some(rpc_status(&Status::from(e)));
            return (response, 0, hit);
        }
    };
    if data.len() as u64 != digest.size() {
        let s = Status::data_loss(format!(
            "stored blob {digest} has {} bytes, not the {} its digest says",
            data.len(),
            digest.size()
        ));
        response.status = Some(rpc_status(&s));
        return (response, 0, Some(true));
    }
    response.data = data.into();
    if zstd_ok && response.data.len() >= MIN_COMPRESS_BYTES {
        if let Ok(compressed) = zstd::bulk::compress(&response.data, READ_COMPRESSION_LEVEL) {
            if compressed.len() < response.data.len() {
                response.data = compressed;
                response.compressor = compressor::Value::Zstd as i32;
            }
        }
    }
    response.status = Some(rpc_ok());
    let sent = response.data.len() as u64;
    (response, sent, Some(true))
}

/// The ContentAddressableStorage service over one [`Storage`].
#[derive(Clone, Debug)]
pub struct CasService {
    storage: Storage,
    /// GetTree walks kept so that a page token resumes where its page stopped.
    walks: Arc<TreeWalks>,
}

impl CasService {
    pub fn new(storage: Storage) -> Self {
        CasService {
            storage,
            walks: Arc::new(TreeWalks::default()),
        }
    }

    async fn find_missing_blobs(
        &self,
        req: reapi::FindMissingBlobsRequest,
    ) -> Result<reapi::FindMissingBlobsResponse, Status> {
        check_digest_function(req.digest_function)?;
        let digests = req
            .blob_digests
            .iter()
            .map(|d| parse_digest(Some(d), "blob digest"))
            .collect::<Result<Vec<_>, _>>()?;
        let missing = self.storage.cas.find_missing(&digests).await?;
        let missing_set: HashSet<&Digest> = missing.iter().collect();
        for d in &digests {
            metrics::record_lookup("cas", !missing_set.contains(d));
        }
        Ok(reapi::FindMissingBlobsResponse {
            missing_blob_digests: missing.iter().map(Digest::to_proto).collect(),
        })
    }

    async fn batch_update_blobs(
        &self,
        req: reapi::BatchUpdateBlobsRequest,
    ) -> Result<reapi::BatchUpdateBlobsResponse, Status> {
        check_digest_function(req.digest_function)?;
        let total = req
            .requests
            .iter()
            .map(|r| claimed_size(r.digest.as_ref(), r.data.len()))
            .fold(0u64, u64::saturating_add);
        check_batch_total(&self.storage.options, total, "upload")?;
        let cas = self.storage.cas.clone();
        let results =
            map_parts_parallel(req.requests, move |part| update_part(cas.clone(), part)).await?;
        let written: u64 = results.iter().map(|(_, n)| n).sum();
        metrics::BYTES
            .with_label_values(&["written"])
            .inc_by(written);
        Ok(reapi::BatchUpdateBlobsResponse {
            responses: results.into_iter().map(|(r, _)| r).collect(),
        })
    }

    async fn batch_read_blobs(
        &self,
        req: reapi::BatchReadBlobsRequest,
    ) -> Result<reapi::BatchReadBlobsResponse, Status> {
        check_digest_function(req.digest_function)?;
        let total = req
            .digests
            .iter()
            .map(|d| claimed_size(Some(d), 0))
            .fold(0u64, u64::saturating_add);
        check_batch_total(&self.storage.options, total, "read")?;
        let zstd_ok = req
            .acceptable_compressors
            .contains(&(compressor::Value::Zstd as i32));
        let cas = self.storage.cas.clone();
        let results = map_parallel(req.digests, move |d| read_one(cas.clone(), d, zstd_ok)).await?;
        let mut sent = 0;
        let mut responses = Vec::with_capacity(results.len());
        for (response, n, hit) in results {
            sent += n;
            if let Some(hit) = hit {
                metrics::record_lookup("cas", hit);
            }
            responses.push(response);
        }
        metrics::BYTES.with_label_values(&["read"]).inc_by(sent);
        Ok(reapi::BatchReadBlobsResponse { responses })
    }
}

/// A boxed stream of responses, as the streaming RPCs return.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn unimplemented(method: &str) -> Status {
    Status::unimplemented(format!(
        "{method} is not supported by this server (split_blob_support / splice_blob_support \
         are not advertised)"
    ))
}

#[tonic::async_trait]
impl ContentAddressableStorage for CasService {
    async fn find_missing_blobs(
        &self,
        request: Request<reapi::FindMissingBlobsRequest>,
    ) -> Result<Response<reapi::FindMissingBlobsResponse>, Status> {
        observe(
            "ContentAddressableStorage.FindMissingBlobs",
            CasService::find_missing_blobs(self, request.into_inner()),
        )
        .await
        .map(Response::new)
    }

    async fn batch_update_blobs(
        &self,
        request: Request<reapi::BatchUpdateBlobsRequest>,
    ) -> Result<Response<reapi::BatchUpdateBlobsResponse>, Status> {
        observe(
            "ContentAddressableStorage.BatchUpdateBlobs",
            CasService::batch_update_blobs(self, request.into_inner()),
        )
        .await
        .map(Response::new)
    }

    async fn batch_read_blobs(
        &self,
        request: Request<reapi::BatchReadBlobsRequest>,
    ) -> Result<Response<reapi::BatchReadBlobsResponse>, Status> {
        observe(
            "ContentAddressableStorage.BatchReadBlobs",
            CasService::batch_read_blobs(self, request.into_inner()),
        )
        .await
        .map(Response::new)
    }

    type GetTreeStream = ResponseStream<reapi::GetTreeResponse>;

    async fn get_tree(
        &self,
        request: Request<reapi::GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        let max_directory_bytes = max_message_bytes(&self.storage.options);
        observe(
            "ContentAddressableStorage.GetTree",
            get_tree::get_tree(
                self.storage.cas.clone(),
                self.walks.clone(),
                request.into_inner(),
                max_directory_bytes,
            ),
        )
        .await
        .map(Response::new)
    }

    async fn split_blob(
        &self,
        _request: Request<reapi::SplitBlobRequest>,
    ) -> Result<Response<reapi::SplitBlobResponse>, Status> {
        observe("ContentAddressableStorage.SplitBlob", async {
            Err(unimplemented("SplitBlob"))
        })
        .await
    }

    type GetChunkMappingStream = ResponseStream<reapi::GetChunkMappingResponse>;

    async fn get_chunk_mapping(
        &self,
        _request: Request<reapi::GetChunkMappingRequest>,
    ) -> Result<Response<Self::GetChunkMappingStream>, Status> {
        observe("ContentAddressableStorage.GetChunkMapping", async {
            Err(unimplemented("GetChunkMapping"))
        })
        .await
    }

    async fn splice_blob(
        &self,
        _request: Request<reapi::SpliceBlobRequest>,
    ) -> Result<Response<reapi::SpliceBlobResponse>, Status> {
        observe("ContentAddressableStorage.SpliceBlob", async {
            Err(unimplemented("SpliceBlob"))
        })
        .await
    }

    async fn register_chunk_mapping(
        &self,
        _request: Request<tonic::Streaming<reapi::RegisterChunkMappingRequest>>,
    ) -> Result<Response<reapi::RegisterChunkMappingResponse>, Status> {
        observe("ContentAddressableStorage.RegisterChunkMapping", async {
            Err(unimplemented("RegisterChunkMapping"))
        })
        .await
    }
}

/// The ContentAddressableStorage service, with message limits sized for
/// [`StorageOptions::max_batch_total_bytes`] and zstd-compressed gRPC requests accepted.
pub fn service(storage: &Storage) -> ContentAddressableStorageServer<CasService> {
    let limit = max_message_bytes(&storage.options);
    ContentAddressableStorageServer::new(CasService::new(storage.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit)
        .accept_compressed(CompressionEncoding::Zstd)
}
