//! The verifying decorator: every write is hashed as it streams through and refused with
//! `InvalidArgument` if its SHA-256 or size differs from the digest it was sent under. The inner
//! store sees the refusal as an error item at the end of its input stream, so (by the store
//! contract) nothing becomes visible.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::{BlobStore, ByteRange, ChunkStream};
use crate::digest::{Digest, DigestHasher};
use crate::error::StoreError;
use crate::spool::{mismatch, VerifiedFile};

#[derive(Debug)]
pub struct VerifyingStore {
    inner: Arc<dyn BlobStore>,
}

impl VerifyingStore {
    pub fn new(inner: Arc<dyn BlobStore>) -> Self {
        VerifyingStore { inner }
    }
}

/// Wraps `data` so that it ends with an error instead of its last chunk's end if what passed
/// through does not hash to `expected`, and fails early once it grows past the expected size.
pub fn verified_stream(expected: Digest, data: ChunkStream) -> ChunkStream {
    let state = (data, DigestHasher::new(), false);
    Box::pin(futures::stream::unfold(
        state,
        move |(mut data, mut hasher, done)| async move {
            if done {
                return None;
            }
            match data.next().await {
                Some(Ok(chunk)) => {
                    hasher.update(&chunk);
                    if hasher.len() > expected.size() {
                        let err = StoreError::InvalidArgument(format!(
                            "content of blob {expected} is longer than its digest's size ({}+ bytes)",
                            hasher.len()
                        ));
                        return Some((Err(err), (data, hasher, true)));
                    }
                    Some((Ok(chunk), (data, hasher, false)))
                }
                Some(Err(e)) => Some((Err(e), (data, hasher, true))),
                None => {
                    let actual = hasher.clone().finish();
                    if actual == expected {
                        None
                    } else {
                        Some((Err(mismatch(&expected, &actual)), (data, hasher, true)))
                    }
                }
            }
        },
    ))
}

#[async_trait]
impl BlobStore for VerifyingStore {
    /// The empty blob is always present (REAPI clients may skip uploading it).
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError> {
        let mut missing = self.inner.find_missing(digests).await?;
        missing.retain(|d| *d != Digest::EMPTY);
        Ok(missing)
    }

    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<ChunkStream, StoreError> {
        if *digest == Digest::EMPTY {
            range.clamp(0)?;
            return Ok(super::once(Bytes::new()));
        }
        self.inner.get(digest, range).await
    }

    async fn put(&self, digest: &Digest, data: ChunkStream) -> Result<(), StoreError> {
        if *digest == Digest::EMPTY {
            // The empty blob always exists; nothing to store, but the content must be empty.
            let rest = super::collect_capped(data, 0, |n| {
                StoreError::InvalidArgument(format!("content of the empty blob has {n} bytes"))
            })
            .await?;
            debug_assert!(rest.is_empty());
            return Ok(());
        }
        self.inner.put(digest, verified_stream(*digest, data)).await
    }

    async fn put_bytes(&self, digest: &Digest, data: Bytes) -> Result<(), StoreError> {
        let actual = Digest::of(&data);
        if actual != *digest {
            return Err(mismatch(digest, &actual));
        }
        if actual == Digest::EMPTY {
            return Ok(());
        }
        self.inner.put_bytes(digest, data).await
    }

    /// Hashes every blob, answers mismatches (and the empty blob) here and passes the rest to
    /// the inner store's `put_many` in one call.
    async fn put_many(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<(), StoreError>> {
        // Part 0: answered here; part 1: passed on.
        let mut part_of = Vec::with_capacity(blobs.len());
        let mut answered = Vec::new();
        let mut forward = Vec::with_capacity(blobs.len());
        for (digest, data) in blobs {
            let actual = Digest::of(&data);
            if actual != digest {
                part_of.push(0);
                answered.push(Err(mismatch(&digest, &actual)));
            } else if actual == Digest::EMPTY {
                part_of.push(0);
                answered.push(Ok(()));
            } else {
                part_of.push(1);
                forward.push((digest, data));
            }
        }
        let stored = self.inner.put_many(forward).await;
        super::gather_in_order(&part_of, vec![answered, stored])
    }

    /// Already verified by construction: passed through without hashing again.
    async fn put_verified_file(&self, file: VerifiedFile) -> Result<(), StoreError> {
        if *file.digest() == Digest::EMPTY {
            return Ok(());
        }
        self.inner.put_verified_file(file).await
    }

    fn kind(&self) -> &'static str {
        "verifying"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn chunks(parts: &[&'static [u8]]) -> ChunkStream {
        let v: Vec<Result<Bytes, StoreError>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures::stream::iter(v))
    }

    #[tokio::test]
    async fn refuses_mismatches_and_keeps_nothing() {
        let inner = Arc::new(MemoryStore::new(1 << 20));
        let v = VerifyingStore::new(inner.clone());
        let d = Digest::of(b"hello world");
        let err = v.put(&d, chunks(&[b"hello ", b"wurld"])).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
        let err = v
            .put(&d, chunks(&[b"hello ", b"world", b"!"]))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
        let err = v
            .put_bytes(&d, Bytes::from_static(b"hello"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
        assert_eq!(inner.find_missing(&[d]).await.unwrap(), vec![d]);
        v.put(&d, chunks(&[b"hello ", b"world"])).await.unwrap();
        assert!(inner.find_missing(&[d]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn empty_blob_needs_no_storage_but_must_be_empty() {
        let inner = Arc::new(MemoryStore::new(1 << 20));
        let v = VerifyingStore::new(inner);
        v.put(&Digest::EMPTY, chunks(&[])).await.unwrap();
        assert!(v.put(&Digest::EMPTY, chunks(&[b"x"])).await.is_err());
        assert!(v.find_missing(&[Digest::EMPTY]).await.unwrap().is_empty());
        assert!(v
            .get_bytes(&Digest::EMPTY, ByteRange::ALL)
            .await
            .unwrap()
            .is_empty());
    }
}
