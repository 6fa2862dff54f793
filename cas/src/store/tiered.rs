//! A fast tier in front of a slow one (memory before S3, local disk before Redis, ...).
//!
//! Reads try the fast tier and fall back to the slow one; a whole-blob read from the slow tier
//! also populates the fast tier as it streams. Writes go to both tiers at once; the slow tier is
//! the authority (its failure fails the write, a fast-tier failure is only logged). A blob is
//! missing only when neither tier has it.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::fan_out::fan_out;
use super::{BlobStore, ByteRange, ChunkStream};
use crate::digest::Digest;
use crate::error::StoreError;

#[derive(Debug)]
pub struct TieredStore {
    fast: Arc<dyn BlobStore>,
    slow: Arc<dyn BlobStore>,
}

impl TieredStore {
    pub fn new(fast: Arc<dyn BlobStore>, slow: Arc<dyn BlobStore>) -> Self {
        TieredStore { fast, slow }
    }
}

#[async_trait]
impl BlobStore for TieredStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError> {
        let not_fast = self.fast.find_missing(digests).await?;
        if not_fast.is_empty() {
            return Ok(not_fast);
        }
        self.slow.find_missing(&not_fast).await
    }

    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<ChunkStream, StoreError> {
        match self.fast.get(digest, range).await {
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::warn!(%digest, error = %e, "fast tier read failed; using slow tier"),
            Ok(stream) => return Ok(stream),
        }
        let from_slow = self.slow.get(digest, range).await?;
        if !range.is_all() {
            return Ok(from_slow);
        }
        let (driver, mut outs) = fan_out(from_slow, 2);
        let (to_fast, to_caller) = match (outs.pop(), outs.pop()) {
            (Some(a), Some(b)) => (a, b),
            _ => {
                return Err(StoreError::Internal(
                    "fan_out returned too few streams".into(),
                ))
            }
        };
        let fast = self.fast.clone();
        let digest = *digest;
        tokio::spawn(async move {
            let (_, populated) = tokio::join!(driver, fast.put(&digest, to_fast));
            if let Err(e) = populated {
                tracing::debug!(%digest, error = %e, "fast tier not populated");
            }
        });
        Ok(to_caller)
    }

    async fn put(&self, digest: &Digest, data: ChunkStream) -> Result<(), StoreError> {
        let (driver, mut outs) = fan_out(data, 2);
        let (to_fast, to_slow) = match (outs.pop(), outs.pop()) {
            (Some(a), Some(b)) => (a, b),
            _ => {
                return Err(StoreError::Internal(
                    "fan_out returned too few streams".into(),
                ))
            }
        };
        let (_, slow, fast) = tokio::join!(
            driver,
            self.slow.put(digest, to_slow),
            self.fast.put(digest, to_fast)
        );
        if let Err(e) = fast {
            tracing::debug!(%digest, error = %e, "fast tier not written");
        }
        slow
    }

    async fn put_bytes(&self, digest: &Digest, data: Bytes) -> Result<(), StoreError> {
        let (slow, fast) = tokio::join!(
            self.slow.put_bytes(digest, data.clone()),
            self.fast.put_bytes(digest, data)
        );
        if let Err(e) = fast {
            tracing::debug!(%digest, error = %e, "fast tier not written");
        }
        slow
    }

    fn kind(&self) -> &'static str {
        "tiered"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn reads_fall_back_to_slow_and_populate_fast() {
        let fast = Arc::new(MemoryStore::new(1 << 20));
        let slow = Arc::new(MemoryStore::new(1 << 20));
        let t = TieredStore::new(fast.clone(), slow.clone());
        let d = Digest::of(b"only in slow");
        slow.put_bytes(&d, Bytes::from_static(b"only in slow"))
            .await
            .unwrap();
        assert!(t.find_missing(&[d]).await.unwrap().is_empty());
        let partial = ByteRange {
            offset: 5,
            limit: Some(2),
        };
        assert_eq!(&t.get_bytes(&d, partial).await.unwrap()[..], b"in");
        assert_eq!(
            fast.find_missing(&[d]).await.unwrap(),
            vec![d],
            "range reads don't populate"
        );
        assert_eq!(
            &t.get_bytes(&d, ByteRange::ALL).await.unwrap()[..],
            b"only in slow"
        );
        for _ in 0..100 {
            if fast.find_missing(&[d]).await.unwrap().is_empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("fast tier was not populated by a whole read");
    }

    #[tokio::test]
    async fn writes_reach_both_and_the_slow_tier_decides() {
        let fast = Arc::new(MemoryStore::new(4));
        let slow = Arc::new(MemoryStore::new(1 << 20));
        let t = TieredStore::new(fast.clone(), slow.clone());
        let small = Digest::of(b"abc");
        t.put(&small, crate::store::once(Bytes::from_static(b"abc")))
            .await
            .unwrap();
        assert!(fast.find_missing(&[small]).await.unwrap().is_empty());
        assert!(slow.find_missing(&[small]).await.unwrap().is_empty());
        // Too big for the fast tier: still stored, in the slow tier only.
        let big = Digest::of(b"bigger than four");
        t.put(
            &big,
            crate::store::once(Bytes::from_static(b"bigger than four")),
        )
        .await
        .unwrap();
        assert_eq!(fast.find_missing(&[big]).await.unwrap(), vec![big]);
        assert!(t.find_missing(&[big, small]).await.unwrap().is_empty());
    }
}
