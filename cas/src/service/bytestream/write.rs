//! `ByteStream.Write` and `QueryWriteStatus`: resumable, verified uploads into the CAS.
//!
//! A Write spools its data (decoding zstd on the way for `compressed-blobs` uploads) while it is
//! hashed; on `finish_write` the spool is verified against the digest and handed to the CAS as a
//! [`VerifiedFile`](crate::spool::VerifiedFile), which a filesystem store takes over by renaming.
//! Nothing becomes visible before that, and any refusal (bad offset, overlong, truncated, wrong
//! content) drops the partial upload. A stream that ends or breaks without `finish_write` leaves
//! the upload for a later Write to resume at its committed size.

use crate::proto::bytestream::{QueryWriteStatusRequest, QueryWriteStatusResponse, WriteResponse};
use bytes::Bytes;
use tokio::sync::mpsc;
use tonic::Status;

use super::uploads::{Checkout, PartialUpload};
use super::write_request::WriteChunk;
use super::write_stream::WriteRequests;
use super::Inner;
use crate::digest::Digest;
use crate::metrics;
use crate::service::resource::{self, WriteResource};
use crate::spool::Spool;

/// Requests' data buffered between the RPC and the upload task.
const WRITE_QUEUE_DEPTH: usize = 4;

/// The upload task takes whatever requests have queued up, up to this many bytes, in one go
/// (one hop to the blocking pool for all of them).
const APPEND_BATCH_BYTES: usize = 4 << 20;

/// How a stream ended without an error.
enum Ended {
    /// The client sent `finish_write`.
    Finished,
    /// The client closed its side without `finish_write`.
    HalfClosed,
    /// The upload task stopped taking data (it refused some).
    WriterStopped,
}

/// Why a stream failed.
enum Failure {
    /// The client broke the protocol or sent bad data: the upload is dropped.
    Refused(Status),
    /// The stream itself broke: the upload is kept for a resume.
    Broken(Status),
}

/// Runs one `Write` stream.
pub(super) async fn write(
    inner: &Inner,
    mut stream: WriteRequests,
) -> Result<WriteResponse, Status> {
    let Some(mut first) = stream.message().await? else {
        return Err(Status::invalid_argument(
            "the Write stream ended before its first request",
        ));
    };
    if first.resource_name.is_empty() {
        return Err(Status::invalid_argument(
            "the first WriteRequest of a stream must carry the resource name",
        ));
    }
    let name = std::mem::take(&mut first.resource_name);
    let resource = resource::parse_write(&name)?;
    let digest = resource.digest;
    let compressed = resource.compressor.is_some();

    // Already there (or the empty blob): answer at once, ignoring whatever else the client sends.
    if is_present(inner, &digest).await? {
        inner.uploads.discard_idle(&name);
        let committed_size = if compressed { -1 } else { digest.size() as i64 };
        return Ok(WriteResponse { committed_size });
    }

    let mut checkout = inner.uploads.checkout(&name)?;
    if checkout.upload().is_none() {
        let options = &inner.storage.options;
        let spool = Spool::create_for(&options.spool_dir, digest.size(), options.direct_io).await?;
        checkout.install(PartialUpload::new(spool, compressed)?);
    }
    if let Err(status) = checkout.resume(first.write_offset) {
        checkout.discard();
        return Err(status);
    }

    // Hashing and spooling run in their own task, so the next request is decoded meanwhile.
    let (tx, rx) = mpsc::channel(WRITE_QUEUE_DEPTH);
    let writer = tokio::spawn(append_all(checkout, rx, digest));
    let ended = pump(&name, first, &mut stream, &tx).await;
    drop(tx);
    let mut checkout = match writer.await {
        Ok(Ok(checkout)) => checkout,
        Ok(Err(status)) => return Err(status),
        Err(e) => return Err(Status::internal(format!("upload task failed: {e}"))),
    };
    match ended {
        Ok(Ended::Finished) => finish(inner, checkout, &resource).await,
        Ok(Ended::HalfClosed) => {
            // Kept (as idle) when `checkout` drops, for a later resume.
            checkout.park().await?;
            Ok(WriteResponse {
                committed_size: checkout.committed(),
            })
        }
        Ok(Ended::WriterStopped) => Err(Status::internal("upload task stopped early")),
        Err(Failure::Broken(status)) => {
            checkout.park().await?;
            Err(status)
        }
        Err(Failure::Refused(status)) => {
            checkout.discard();
            Err(status)
        }
    }
}

/// Appends every chunk received to the upload. On a refusal the upload is dropped; when the
/// channel closes the checkout is handed back (or, if the RPC is gone, put back for a resume as
/// it drops).
async fn append_all(
    mut checkout: Checkout,
    mut chunks: mpsc::Receiver<Vec<Bytes>>,
    digest: Digest,
) -> Result<Checkout, Status> {
    while let Some(mut batch) = chunks.recv().await {
        let mut bytes: usize = batch.iter().map(Bytes::len).sum();
        while bytes < APPEND_BATCH_BYTES {
            match chunks.try_recv() {
                Ok(more) => {
                    bytes += more.iter().map(Bytes::len).sum::<usize>();
                    batch.extend(more);
                }
                Err(_) => break,
            }
        }
        if let Err(status) = checkout.append(batch, &digest).await {
            checkout.discard();
            return Err(status);
        }
    }
    Ok(checkout)
}

/// Checks the stream's requests and forwards their data to the upload task until
/// `finish_write`, the end of the stream, or an error.
async fn pump(
    name: &str,
    first: WriteChunk,
    stream: &mut WriteRequests,
    chunks: &mpsc::Sender<Vec<Bytes>>,
) -> Result<Ended, Failure> {
    let written = metrics::BYTES.with_label_values(&["written"]);
    let mut next_offset = first.write_offset;
    let mut request = first;
    loop {
        if request.write_offset != next_offset {
            return Err(Failure::Refused(Status::invalid_argument(format!(
                "write_offset of a later request must continue the stream: expected \
                 {next_offset}, got {}",
                request.write_offset
            ))));
        }
        if !request.resource_name.is_empty() && request.resource_name != name {
            return Err(Failure::Refused(Status::invalid_argument(format!(
                "resource name {:?} of a later request differs from {name:?} of the first",
                request.resource_name
            ))));
        }
        let len = request.data_len();
        if len > 0 {
            if chunks.send(request.data).await.is_err() {
                // The upload task refused the data; its error is the answer.
                return Ok(Ended::WriterStopped);
            }
            next_offset += len as i64;
            written.inc_by(len as u64);
        }
        if request.finish_write {
            return Ok(Ended::Finished);
        }
        request = match stream.message().await {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(Ended::HalfClosed),
            Err(status) => return Err(Failure::Broken(status)),
        };
    }
}

/// Verifies the finished upload and stores it.
async fn finish(
    inner: &Inner,
    mut checkout: Checkout,
    resource: &WriteResource,
) -> Result<WriteResponse, Status> {
    let Some(upload) = checkout.take() else {
        return Err(Status::internal("the upload vanished"));
    };
    // The name is free again as soon as the upload is out of the registry.
    drop(checkout);
    let committed = upload.committed();
    let file = upload.finish(&resource.digest).await?;
    inner.storage.cas.put_verified_file(file).await?;
    let committed_size = if resource.compressor.is_some() {
        committed
    } else {
        resource.digest.size() as i64
    };
    Ok(WriteResponse { committed_size })
}

/// Answers `QueryWriteStatus`: complete if the blob is in the CAS, else the partial upload's
/// committed size, else `NOT_FOUND`.
pub(super) async fn query(
    inner: &Inner,
    request: QueryWriteStatusRequest,
) -> Result<QueryWriteStatusResponse, Status> {
    let name = request.resource_name;
    let resource = resource::parse_write(&name)?;
    if is_present(inner, &resource.digest).await? {
        return Ok(QueryWriteStatusResponse {
            committed_size: resource.digest.size() as i64,
            complete: true,
        });
    }
    match inner.uploads.progress(&name) {
        Some(committed_size) => Ok(QueryWriteStatusResponse {
            committed_size,
            complete: false,
        }),
        None => Err(Status::not_found(format!(
            "no upload {name:?} in progress and blob {} is not in the CAS",
            resource.digest
        ))),
    }
}

/// Whether the CAS holds `digest` (the empty blob always counts as held).
async fn is_present(inner: &Inner, digest: &Digest) -> Result<bool, Status> {
    let missing = inner.storage.cas.find_missing(&[*digest]).await?;
    Ok(missing.is_empty())
}
