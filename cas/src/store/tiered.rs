//! A fast tier in front of a slow one (memory before S3, local disk before Redis, ...).
//!
//! Reads try the fast tier and fall back to the slow one; a whole-blob read from the slow tier
//! also populates the fast tier as it streams. Writes go to both tiers at once; the slow tier is
//! the authority (its failure fails the write, a fast-tier failure is only logged), so the fast
//! tier only commits a write once the slow tier has: otherwise a blob the slow tier refused would
//! still be reported present (from the fast tier) and a retry would never reach the slow tier.
//! A blob is missing only when neither tier has it.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::oneshot;

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
        // Like reads and writes, lookups survive a broken fast tier: the slow one answers.
        let not_fast = match self.fast.find_missing(digests).await {
            Ok(not_fast) if not_fast.is_empty() => return Ok(not_fast),
            Ok(not_fast) => not_fast,
            Err(e) => {
                tracing::warn!(error = %e, "fast tier lookup failed; asking the slow tier");
                super::dedup_in_order(digests)
            }
        };
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
        let (slow_stored, verdict) = oneshot::channel();
        let slow = async {
            let result = self.slow.put(digest, to_slow).await;
            let _ = slow_stored.send(result.is_ok());
            result
        };
        let (_, slow, fast) = tokio::join!(
            driver,
            slow,
            self.fast.put(digest, after_slow_commits(to_fast, verdict))
        );
        if let Err(e) = fast {
            tracing::debug!(%digest, error = %e, "fast tier not written");
        }
        slow
    }

    async fn put_bytes(&self, digest: &Digest, data: Bytes) -> Result<(), StoreError> {
        // The slow tier first: the fast one must not hold what the slow one refused.
        self.slow.put_bytes(digest, data.clone()).await?;
        if let Err(e) = self.fast.put_bytes(digest, data).await {
            tracing::debug!(%digest, error = %e, "fast tier not written");
        }
        Ok(())
    }

    /// The whole batch to the slow tier in one `put_many`, then what it stored to the fast one.
    async fn put_many(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<(), StoreError>> {
        let results = self.slow.put_many(blobs.clone()).await;
        let stored: Vec<(Digest, Bytes)> = blobs
            .into_iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|(blob, _)| blob)
            .collect();
        let digests: Vec<Digest> = stored.iter().map(|(d, _)| *d).collect();
        for (digest, result) in digests.iter().zip(self.fast.put_many(stored).await) {
            if let Err(e) = result {
                tracing::debug!(%digest, error = %e, "fast tier not written");
            }
        }
        results
    }

    fn kind(&self) -> &'static str {
        "tiered"
    }
}

/// Passes `data` through, but ends it cleanly only once `verdict` says the slow tier stored the
/// blob; otherwise it ends with an error, so (by the store contract) the fast tier keeps nothing.
fn after_slow_commits(data: ChunkStream, verdict: oneshot::Receiver<bool>) -> ChunkStream {
    let end = futures::stream::once(async move {
        match verdict.await {
            Ok(true) => None,
            _ => Some(Err(StoreError::Cancelled(
                "the slow tier did not store the blob, so the fast tier must not either".into(),
            ))),
        }
    });
    Box::pin(data.chain(end.filter_map(futures::future::ready)))
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

    /// A store whose backend is down.
    #[derive(Debug)]
    struct Down;

    #[async_trait]
    impl BlobStore for Down {
        async fn find_missing(&self, _: &[Digest]) -> Result<Vec<Digest>, StoreError> {
            Err(StoreError::Unavailable("down".into()))
        }
        async fn get(&self, _: &Digest, _: ByteRange) -> Result<ChunkStream, StoreError> {
            Err(StoreError::Unavailable("down".into()))
        }
        async fn put(&self, _: &Digest, _: ChunkStream) -> Result<(), StoreError> {
            Err(StoreError::Unavailable("down".into()))
        }
        fn kind(&self) -> &'static str {
            "down"
        }
    }

    #[tokio::test]
    async fn a_broken_fast_tier_does_not_break_the_store() {
        let slow = Arc::new(MemoryStore::new(1 << 20));
        let t = TieredStore::new(Arc::new(Down), slow.clone());
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        t.put_bytes(&a, Bytes::from_static(b"a")).await.unwrap();
        assert_eq!(t.find_missing(&[a, b, b]).await.unwrap(), vec![b]);
        assert_eq!(&t.get_bytes(&a, ByteRange::ALL).await.unwrap()[..], b"a");
    }

    #[tokio::test]
    async fn what_the_slow_tier_refuses_is_not_kept_by_the_fast_tier() {
        let fast = Arc::new(MemoryStore::new(1 << 20));
        let slow = Arc::new(MemoryStore::new(4));
        let t = TieredStore::new(fast.clone(), slow.clone());
        let data = Bytes::from_static(b"too big for the slow tier");
        let d = Digest::of(&data);
        assert!(t.put(&d, crate::store::once(data.clone())).await.is_err());
        assert!(t.put_bytes(&d, data).await.is_err());
        assert_eq!(fast.find_missing(&[d]).await.unwrap(), vec![d]);
        assert_eq!(
            t.find_missing(&[d]).await.unwrap(),
            vec![d],
            "a failed write must not be reported present"
        );
    }

    #[tokio::test]
    async fn a_batch_reaches_both_tiers_and_the_slow_tier_decides() {
        let fast = Arc::new(MemoryStore::new(1 << 20));
        let slow = Arc::new(MemoryStore::new(8));
        let t = TieredStore::new(fast.clone(), slow.clone());
        let blobs: Vec<(Digest, Bytes)> = [&b"abc"[..], b"too big for the slow tier", b"xy"]
            .into_iter()
            .map(|b| (Digest::of(b), Bytes::copy_from_slice(b)))
            .collect();
        let d: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
        let ok: Vec<bool> = t.put_many(blobs).await.iter().map(Result::is_ok).collect();
        assert_eq!(ok, vec![true, false, true]);
        assert!(slow.find_missing(&[d[0], d[2]]).await.unwrap().is_empty());
        assert_eq!(fast.find_missing(&d).await.unwrap(), vec![d[1]]);
        // A broken fast tier fails nothing.
        let t = TieredStore::new(Arc::new(Down), slow);
        let blob = (Digest::of(b"q"), Bytes::from_static(b"q"));
        assert!(t.put_many(vec![blob]).await[0].is_ok());
    }
}
