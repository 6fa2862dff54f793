//! An in-memory store bounded by bytes, evicting the least recently used blobs.

use async_trait::async_trait;
use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;

use super::{collect_capped, dedup_in_order, BlobStore, ByteRange, ChunkStream};
use crate::digest::Digest;
use crate::error::StoreError;
use crate::metrics;

#[derive(Debug)]
pub struct MemoryStore {
    max_bytes: u64,
    inner: Mutex<Lru>,
}

#[derive(Debug)]
struct Lru {
    blobs: LruCache<Digest, Bytes>,
    bytes: u64,
}

impl MemoryStore {
    pub fn new(max_bytes: u64) -> Self {
        MemoryStore {
            max_bytes,
            inner: Mutex::new(Lru {
                blobs: LruCache::unbounded(),
                bytes: 0,
            }),
        }
    }

    /// Bytes currently held.
    pub fn used_bytes(&self) -> u64 {
        self.inner.lock().bytes
    }

    fn insert(&self, digest: Digest, data: Bytes) {
        let mut lru = self.inner.lock();
        let len = data.len() as u64;
        if let Some(old) = lru.blobs.put(digest, data) {
            lru.bytes -= old.len() as u64;
        }
        lru.bytes += len;
        while lru.bytes > self.max_bytes {
            let Some((_, evicted)) = lru.blobs.pop_lru() else {
                break;
            };
            lru.bytes -= evicted.len() as u64;
            metrics::record_eviction("memory", evicted.len() as u64);
        }
    }
}

#[async_trait]
impl BlobStore for MemoryStore {
    /// A lookup counts as a use (REAPI asks FindMissingBlobs to extend lifetimes), so a blob
    /// just reported present is not the next one evicted.
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError> {
        let mut lru = self.inner.lock();
        Ok(dedup_in_order(digests)
            .into_iter()
            .filter(|d| lru.blobs.get(d).is_none())
            .collect())
    }

    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<ChunkStream, StoreError> {
        let data = self.get_bytes(digest, range).await?;
        Ok(super::once(data))
    }

    async fn get_bytes(&self, digest: &Digest, range: ByteRange) -> Result<Bytes, StoreError> {
        let data = self
            .inner
            .lock()
            .blobs
            .get(digest)
            .cloned()
            .ok_or(StoreError::NotFound(*digest))?;
        let (start, end) = range.clamp(data.len() as u64)?;
        Ok(data.slice(start as usize..end as usize))
    }

    async fn put(&self, digest: &Digest, data: ChunkStream) -> Result<(), StoreError> {
        let max = self.max_bytes;
        let data = collect_capped(data, max, |n| {
            StoreError::ResourceExhausted(format!(
                "blob {digest} ({n}+ bytes) is larger than the memory store's budget of {max} bytes"
            ))
        })
        .await?;
        self.insert(*digest, data);
        Ok(())
    }

    async fn put_bytes(&self, digest: &Digest, data: Bytes) -> Result<(), StoreError> {
        if data.len() as u64 > self.max_bytes {
            return Err(StoreError::ResourceExhausted(format!(
                "blob {digest} ({} bytes) is larger than the memory store's budget of {} bytes",
                data.len(),
                self.max_bytes
            )));
        }
        self.insert(*digest, data);
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn evicts_least_recently_used_under_budget() {
        let s = MemoryStore::new(10);
        let (a, b, c) = (
            Digest::of(b"aaaa"),
            Digest::of(b"bbbb"),
            Digest::of(b"cccc"),
        );
        s.put_bytes(&a, Bytes::from_static(b"aaaa")).await.unwrap();
        s.put_bytes(&b, Bytes::from_static(b"bbbb")).await.unwrap();
        s.get_bytes(&a, ByteRange::ALL).await.unwrap(); // a is now more recent than b
        s.put_bytes(&c, Bytes::from_static(b"cccc")).await.unwrap();
        assert_eq!(s.find_missing(&[a, b, c]).await.unwrap(), vec![b]);
        assert_eq!(s.used_bytes(), 8);
        let r = ByteRange {
            offset: 1,
            limit: Some(2),
        };
        assert_eq!(&s.get_bytes(&a, r).await.unwrap()[..], b"aa");
        let past = ByteRange {
            offset: 5,
            limit: None,
        };
        assert!(matches!(
            s.get_bytes(&a, past).await,
            Err(StoreError::OutOfRange(_))
        ));
        assert!(s.put_bytes(&a, Bytes::from(vec![0; 11])).await.is_err());
    }

    #[tokio::test]
    async fn a_lookup_counts_as_a_use() {
        let s = MemoryStore::new(8);
        let (a, b, c) = (
            Digest::of(b"aaaa"),
            Digest::of(b"bbbb"),
            Digest::of(b"cccc"),
        );
        s.put_bytes(&a, Bytes::from_static(b"aaaa")).await.unwrap();
        s.put_bytes(&b, Bytes::from_static(b"bbbb")).await.unwrap();
        assert!(s.find_missing(&[a]).await.unwrap().is_empty());
        s.put_bytes(&c, Bytes::from_static(b"cccc")).await.unwrap();
        assert_eq!(s.find_missing(&[a, b, c]).await.unwrap(), vec![b]);
    }
}
