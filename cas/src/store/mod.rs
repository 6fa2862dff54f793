//! The one blob-store interface, and its implementations.
//!
//! Every backend (memory, filesystem, Redis, S3) and every policy (tiered, size-partitioned,
//! verifying) implements [`BlobStore`]; policies wrap other stores, so a whole storage stack is a
//! tree of decorators built from a [`StoreConfig`](crate::config::StoreConfig).
//!
//! Contract every implementation keeps:
//! - `put` makes nothing visible unless its input stream ends without an error: a stream that
//!   yields `Err` (a verifier's refusal, a client hang-up) aborts the write and leaves no trace.
//! - Values are opaque: a store never assumes a value's length equals `digest.size()` (the action
//!   cache stores results under derived keys). Only the verifying decorator checks content.
//! - `get` of an absent key is `StoreError::NotFound`; a range starting past the end is
//!   `StoreError::OutOfRange`.

use std::fmt::Debug;
use std::path::PathBuf;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

use crate::digest::Digest;
use crate::error::StoreError;
use crate::spool::VerifiedFile;

pub mod fan_out;
pub mod filesystem;
pub mod grpc;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "s3")]
pub mod s3;
pub mod size_partitioned;
pub mod tiered;
pub mod verifying;

/// A stream of blob chunks. An `Err` item aborts whatever consumes it.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send + 'static>>;

/// A byte range of a blob: `limit: None` reads to the end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: u64,
    pub limit: Option<u64>,
}

impl ByteRange {
    pub const ALL: ByteRange = ByteRange {
        offset: 0,
        limit: None,
    };

    pub fn is_all(&self) -> bool {
        self.offset == 0 && self.limit.is_none()
    }

    /// Clamps this range to a blob of `len` bytes: `[start, end)`, or `OutOfRange` if the
    /// range starts past the end.
    pub fn clamp(&self, len: u64) -> Result<(u64, u64), StoreError> {
        if self.offset > len {
            return Err(StoreError::OutOfRange(format!(
                "read offset {} is past the end of a {len}-byte blob",
                self.offset
            )));
        }
        let end = match self.limit {
            Some(l) => self.offset.saturating_add(l).min(len),
            None => len,
        };
        Ok((self.offset, end))
    }
}

/// One async interface over every place blobs live.
#[async_trait]
pub trait BlobStore: Send + Sync + Debug + 'static {
    /// Those of `digests` this store does not hold, in input order, each once.
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError>;

    /// Streams `range` of the blob stored under `digest`.
    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<ChunkStream, StoreError>;

    /// Stores the bytes of `data` under `digest`; see the module docs for the abort rule.
    async fn put(&self, digest: &Digest, data: ChunkStream) -> Result<(), StoreError>;

    /// Stores a local file whose content was verified against `file.digest()`. Stores on the
    /// same filesystem take the file over by renaming it; the default streams it through `put`.
    async fn put_verified_file(&self, file: VerifiedFile) -> Result<(), StoreError> {
        let digest = *file.digest();
        let stream = file.into_stream().await?;
        self.put(&digest, stream).await
    }

    /// Reads a whole range into memory. Callers bound `range` (or know the blob is small).
    async fn get_bytes(&self, digest: &Digest, range: ByteRange) -> Result<Bytes, StoreError> {
        collect(self.get(digest, range).await?).await
    }

    /// Stores an in-memory blob.
    async fn put_bytes(&self, digest: &Digest, data: Bytes) -> Result<(), StoreError> {
        self.put(digest, once(data)).await
    }

    /// Stores many in-memory blobs (a BatchUpdateBlobs); one result per blob, in order. The
    /// default stores them with [`BlobStore::put_bytes`], [`PUT_MANY_IN_FLIGHT`] at a time;
    /// stores with a fixed cost per call (the filesystem store's hops to blocking threads)
    /// batch the work instead.
    async fn put_many(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<(), StoreError>> {
        futures::stream::iter(blobs)
            .map(|(digest, data)| async move { self.put_bytes(&digest, data).await })
            .buffered(PUT_MANY_IN_FLIGHT)
            .collect()
            .await
    }

    /// A short name for logs and metrics labels ("memory", "filesystem", ...).
    fn kind(&self) -> &'static str;
}

/// Blobs of one [`BlobStore::put_many`] stored concurrently by the default implementation.
pub const PUT_MANY_IN_FLIGHT: usize = 64;

/// Puts the results of a batch that was split into parts back in the batch's order: blob `i`
/// went to part `part_of[i]`, and `parts[p]` holds part `p`'s results in the order it was
/// given its blobs. A part that answered fewer results than blobs fills the gap with an error.
pub(crate) fn gather_in_order(
    part_of: &[usize],
    parts: Vec<Vec<Result<(), StoreError>>>,
) -> Vec<Result<(), StoreError>> {
    let mut parts: Vec<_> = parts.into_iter().map(Vec::into_iter).collect();
    part_of
        .iter()
        .map(|&p| {
            parts
                .get_mut(p)
                .and_then(Iterator::next)
                .unwrap_or_else(|| {
                    Err(StoreError::Internal(
                        "the store answered fewer results than blobs it was given".into(),
                    ))
                })
        })
        .collect()
}

/// A stream of one chunk.
pub fn once(data: Bytes) -> ChunkStream {
    Box::pin(futures::stream::once(async move { Ok(data) }))
}

/// Collects a chunk stream into one buffer, failing on the first error.
pub async fn collect(mut stream: ChunkStream) -> Result<Bytes, StoreError> {
    let first = match stream.next().await {
        None => return Ok(Bytes::new()),
        Some(chunk) => chunk?,
    };
    let Some(second) = stream.next().await else {
        return Ok(first);
    };
    let mut buf = BytesMut::from(&first[..]);
    buf.extend_from_slice(&second?);
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
    }
    Ok(buf.freeze())
}

/// Collects a chunk stream, refusing it as soon as it grows past `cap` bytes.
pub async fn collect_capped(
    mut stream: ChunkStream,
    cap: u64,
    what: impl Fn(u64) -> StoreError,
) -> Result<Bytes, StoreError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if buf.len() as u64 + chunk.len() as u64 > cap {
            return Err(what(buf.len() as u64 + chunk.len() as u64));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Removes duplicates while keeping the first occurrence's order.
pub fn dedup_in_order(digests: &[Digest]) -> Vec<Digest> {
    let mut seen = std::collections::HashSet::with_capacity(digests.len());
    digests
        .iter()
        .copied()
        .filter(|d| seen.insert(*d))
        .collect()
}

/// Where a store keeps its files, when it has any (used to place spool files on the same
/// filesystem so a verified upload becomes a rename).
pub type StoreRoot = Option<PathBuf>;
