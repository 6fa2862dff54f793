//! Multipart uploads for [`S3Store`]: the input is cut into parts of an exact size, a few parts
//! are sent at once, and any failure (or cancellation) aborts the upload so nothing lingers.
//!
//! S3 only makes a multipart object visible on CompleteMultipartUpload, so an aborted upload
//! leaves no object behind; aborting also frees the parts already stored.

use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::abort_multipart_upload::AbortMultipartUploadError;
use aws_sdk_s3::operation::upload_part::UploadPartError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::task::JoinSet;

use super::{map_sdk_error, S3Store, MAX_PARTS};
use crate::digest::Digest;
use crate::error::StoreError;
use crate::store::ChunkStream;

/// Parts of one multipart upload being sent at once. With the part being filled from the input,
/// one upload holds at most `(PARTS_IN_FLIGHT + 1) * part_size` bytes in memory.
const PARTS_IN_FLIGHT: usize = 3;

/// The most memory reserved up front for a part.
const INITIAL_PART_CAPACITY: usize = 16 * 1024 * 1024;

/// Part uploads still running.
type PartTasks = JoinSet<Result<CompletedPart, StoreError>>;

impl S3Store {
    /// Sends a blob larger than one part as a multipart upload; `first` is its first part and
    /// `reader` holds the rest.
    pub(super) async fn put_multipart(
        &self,
        digest: &Digest,
        first: Bytes,
        reader: &mut PartReader,
        part_size: usize,
    ) -> Result<(), StoreError> {
        let key = self.key(digest);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| self.map_err("CreateMultipartUpload", digest, e))?;
        let upload_id = created.upload_id().ok_or_else(|| {
            StoreError::Internal(format!(
                "S3 CreateMultipartUpload of blob {digest} in {} returned no upload id",
                self.location
            ))
        })?;
        let upload = Upload {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key,
            upload_id: upload_id.to_string(),
        };
        // Aborts the upload if this future is dropped before it finishes (a cancelled request).
        let mut guard = AbortOnDrop(Some(upload.clone()));

        let mut tasks = PartTasks::new();
        let outcome = match self
            .send_parts(digest, &upload, &mut tasks, first, reader, part_size)
            .await
        {
            Ok(parts) => {
                let parts = CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build();
                self.client
                    .complete_multipart_upload()
                    .bucket(&upload.bucket)
                    .key(&upload.key)
                    .upload_id(&upload.upload_id)
                    .multipart_upload(parts)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| self.map_err("CompleteMultipartUpload", digest, e))
            }
            Err(e) => {
                // Stop the parts still in flight, and wait for them, before aborting: a part
                // that lands after the abort could otherwise linger.
                tasks.shutdown().await;
                Err(e)
            }
        };
        if outcome.is_err() {
            if let Err(abort) = upload.abort().await {
                tracing::warn!(%digest, error = %DisplayErrorContext(&abort),
                    "could not abort a failed S3 multipart upload");
            }
        }
        guard.0 = None;
        outcome
    }

    /// Reads the input part by part and uploads the parts, a few at a time; returns them in
    /// order for CompleteMultipartUpload.
    async fn send_parts(
        &self,
        digest: &Digest,
        upload: &Upload,
        tasks: &mut PartTasks,
        first: Bytes,
        reader: &mut PartReader,
        part_size: usize,
    ) -> Result<Vec<CompletedPart>, StoreError> {
        let mut done = Vec::new();
        let mut next = Some(first);
        let mut number: i32 = 0;
        loop {
            let part = match next.take() {
                Some(part) => part,
                None => reader.read_part(part_size).await?,
            };
            if part.is_empty() {
                break;
            }
            number += 1;
            if number as u64 > MAX_PARTS {
                return Err(StoreError::ResourceExhausted(format!(
                    "blob {digest} needs more than S3's {MAX_PARTS} parts of {part_size} bytes; \
                     raise the S3 store's part size"
                )));
            }
            while tasks.len() >= PARTS_IN_FLIGHT {
                done.push(self.join_part(digest, tasks).await?);
            }
            let upload = upload.clone();
            let ctx = format!(
                "S3 UploadPart {number} of blob {digest} in {}",
                self.location
            );
            // Spawned, so parts keep moving while the next one is read from the input.
            tasks.spawn(async move {
                upload
                    .send_part(number, part)
                    .await
                    .map_err(|e| map_sdk_error("UploadPart", ctx, None, e))
            });
        }
        while !tasks.is_empty() {
            done.push(self.join_part(digest, tasks).await?);
        }
        done.sort_by_key(|p| p.part_number());
        Ok(done)
    }

    /// Waits for one part upload to finish.
    async fn join_part(
        &self,
        digest: &Digest,
        tasks: &mut PartTasks,
    ) -> Result<CompletedPart, StoreError> {
        match tasks.join_next().await {
            Some(Ok(Ok(part))) => Ok(part),
            Some(Ok(Err(e))) => Err(self.diagnose_upload_failure(e).await),
            Some(Err(e)) => Err(StoreError::Internal(format!(
                "uploading a part of blob {digest} to {} panicked or was cancelled: {e}",
                self.location
            ))),
            None => Err(StoreError::Internal("no part upload to wait for".into())),
        }
    }
}

/// One multipart upload: what a part upload needs, cheap to clone into its task.
#[derive(Clone)]
struct Upload {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
}

impl Upload {
    async fn send_part(
        &self,
        number: i32,
        data: Bytes,
    ) -> Result<CompletedPart, SdkError<UploadPartError>> {
        let len = data.len() as i64;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .content_length(len)
            .body(ByteStream::from(data))
            .send()
            .await?;
        Ok(CompletedPart::builder()
            .set_e_tag(out.e_tag().map(str::to_string))
            .part_number(number)
            .build())
    }

    async fn abort(&self) -> Result<(), SdkError<AbortMultipartUploadError>> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await
            .map(|_| ())
    }
}

/// Aborts the upload from a background task if dropped while still holding it.
struct AbortOnDrop(Option<Upload>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(upload) = self.0.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if let Err(e) = upload.abort().await {
                tracing::warn!(key = %upload.key, error = %DisplayErrorContext(&e),
                    "could not abort a cancelled S3 multipart upload");
            }
        });
    }
}

/// Cuts a chunk stream into parts of an exact size.
pub(super) struct PartReader {
    stream: ChunkStream,
    /// Bytes read from the stream but not yet handed out.
    pending: Bytes,
    /// The stream has ended (and must not be polled again).
    ended: bool,
}

impl PartReader {
    pub(super) fn new(stream: ChunkStream) -> Self {
        PartReader {
            stream,
            pending: Bytes::new(),
            ended: false,
        }
    }

    /// The next `size` bytes, or fewer if the stream ends first (empty at the end).
    pub(super) async fn read_part(&mut self, size: usize) -> Result<Bytes, StoreError> {
        if self.pending.len() >= size {
            return Ok(self.pending.split_to(size));
        }
        // Grown as data arrives, so a stream much shorter than its claimed size costs little.
        let mut buf = BytesMut::with_capacity(size.min(INITIAL_PART_CAPACITY));
        buf.extend_from_slice(&std::mem::take(&mut self.pending));
        while buf.len() < size && !self.ended {
            let Some(chunk) = self.stream.next().await else {
                self.ended = true;
                break;
            };
            let mut chunk = chunk?;
            let room = size - buf.len();
            if chunk.len() > room {
                self.pending = chunk.split_off(room);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    /// Whether the stream has no more bytes (reads ahead one chunk to know).
    pub(super) async fn at_end(&mut self) -> Result<bool, StoreError> {
        while self.pending.is_empty() {
            if self.ended {
                return Ok(true);
            }
            match self.stream.next().await {
                None => self.ended = true,
                Some(chunk) => self.pending = chunk?,
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::s3::tests::chunks;

    #[tokio::test]
    async fn part_reader_cuts_exact_parts() {
        let mut r = PartReader::new(chunks(&[b"abc", b"defgh", b"", b"ij"]));
        assert_eq!(&r.read_part(4).await.unwrap()[..], b"abcd");
        assert!(!r.at_end().await.unwrap());
        assert_eq!(&r.read_part(4).await.unwrap()[..], b"efgh");
        assert!(!r.at_end().await.unwrap());
        assert_eq!(&r.read_part(4).await.unwrap()[..], b"ij");
        assert!(r.at_end().await.unwrap());
        assert!(r.read_part(4).await.unwrap().is_empty());
        assert!(r.at_end().await.unwrap());
    }

    #[tokio::test]
    async fn part_reader_passes_on_errors() {
        let items = vec![
            Ok(Bytes::from_static(b"abc")),
            Err(StoreError::Cancelled("gone".into())),
        ];
        let mut r = PartReader::new(Box::pin(futures::stream::iter(items)));
        assert!(matches!(
            r.read_part(4).await,
            Err(StoreError::Cancelled(_))
        ));
    }
}
