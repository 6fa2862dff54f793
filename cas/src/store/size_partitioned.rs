//! Routes blobs by their digest's size: below a threshold to one store (say Redis), at or above
//! it to another (say S3). Each blob lives in exactly one of them.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{BlobStore, ByteRange, ChunkStream};
use crate::digest::Digest;
use crate::error::StoreError;

#[derive(Debug)]
pub struct SizePartitionedStore {
    threshold: u64,
    small: Arc<dyn BlobStore>,
    large: Arc<dyn BlobStore>,
}

impl SizePartitionedStore {
    /// Blobs whose digest size is `< threshold` go to `small`, the rest to `large`.
    pub fn new(threshold: u64, small: Arc<dyn BlobStore>, large: Arc<dyn BlobStore>) -> Self {
        SizePartitionedStore {
            threshold,
            small,
            large,
        }
    }

    fn route(&self, digest: &Digest) -> &Arc<dyn BlobStore> {
        if digest.size() < self.threshold {
            &self.small
        } else {
            &self.large
        }
    }
}

#[async_trait]
impl BlobStore for SizePartitionedStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError> {
        let (small, large): (Vec<Digest>, Vec<Digest>) =
            digests.iter().partition(|d| d.size() < self.threshold);
        let (small, large) = tokio::join!(
            async {
                match small.is_empty() {
                    true => Ok(Vec::new()),
                    false => self.small.find_missing(&small).await,
                }
            },
            async {
                match large.is_empty() {
                    true => Ok(Vec::new()),
                    false => self.large.find_missing(&large).await,
                }
            }
        );
        let missing: std::collections::HashSet<Digest> = small?.into_iter().chain(large?).collect();
        Ok(super::dedup_in_order(digests)
            .into_iter()
            .filter(|d| missing.contains(d))
            .collect())
    }

    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<ChunkStream, StoreError> {
        self.route(digest).get(digest, range).await
    }

    async fn put(&self, digest: &Digest, data: ChunkStream) -> Result<(), StoreError> {
        self.route(digest).put(digest, data).await
    }

    async fn put_bytes(&self, digest: &Digest, data: Bytes) -> Result<(), StoreError> {
        self.route(digest).put_bytes(digest, data).await
    }

    /// Each side's blobs in one `put_many` of that side, both at once.
    async fn put_many(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<(), StoreError>> {
        let mut part_of = Vec::with_capacity(blobs.len());
        let (mut small, mut large) = (Vec::new(), Vec::new());
        for (digest, data) in blobs {
            if digest.size() < self.threshold {
                part_of.push(0);
                small.push((digest, data));
            } else {
                part_of.push(1);
                large.push((digest, data));
            }
        }
        let (small, large) = tokio::join!(self.small.put_many(small), self.large.put_many(large));
        super::gather_in_order(&part_of, vec![small, large])
    }

    async fn put_verified_file(&self, file: crate::spool::VerifiedFile) -> Result<(), StoreError> {
        self.route(file.digest()).put_verified_file(file).await
    }

    fn kind(&self) -> &'static str {
        "size_partitioned"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn routes_by_size_and_merges_lookups_in_order() {
        let small = Arc::new(MemoryStore::new(1 << 20));
        let large = Arc::new(MemoryStore::new(1 << 20));
        let s = SizePartitionedStore::new(4, small.clone(), large.clone());
        let (a, b) = (Digest::of(b"abc"), Digest::of(b"abcd"));
        s.put_bytes(&a, Bytes::from_static(b"abc")).await.unwrap();
        s.put_bytes(&b, Bytes::from_static(b"abcd")).await.unwrap();
        assert!(small.find_missing(&[a]).await.unwrap().is_empty());
        assert_eq!(small.find_missing(&[b]).await.unwrap(), vec![b]);
        assert!(large.find_missing(&[b]).await.unwrap().is_empty());
        let (c, d) = (Digest::of(b"c"), Digest::of(b"dddddd"));
        assert_eq!(s.find_missing(&[d, a, c, b, d]).await.unwrap(), vec![d, c]);
        assert_eq!(&s.get_bytes(&b, ByteRange::ALL).await.unwrap()[..], b"abcd");
    }

    #[tokio::test]
    async fn a_batch_is_split_by_size_and_answered_in_order() {
        let small = Arc::new(MemoryStore::new(1 << 20));
        // Refuses anything over 8 bytes.
        let large = Arc::new(MemoryStore::new(8));
        let s = SizePartitionedStore::new(4, small.clone(), large.clone());
        let blobs: Vec<(Digest, Bytes)> = [&b"abcde"[..], b"ab", b"far too large", b"xyz"]
            .into_iter()
            .map(|b| (Digest::of(b), Bytes::copy_from_slice(b)))
            .collect();
        let results = s.put_many(blobs.clone()).await;
        let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
        assert_eq!(ok, vec![true, true, false, true]);
        let d: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
        assert!(large.find_missing(&[d[0]]).await.unwrap().is_empty());
        assert_eq!(small.find_missing(&[d[0]]).await.unwrap(), vec![d[0]]);
        assert!(small.find_missing(&[d[1], d[3]]).await.unwrap().is_empty());
        assert_eq!(s.find_missing(&d).await.unwrap(), vec![d[2]]);
    }
}
