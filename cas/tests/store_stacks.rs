//! 1 GiB+ blobs streamed through the memory store and through composed stacks (tiered,
//! size-partitioned, verifying) via the BlobStore interface, checked by streaming hash.

use std::sync::Arc;

use bytes::Bytes;
use cas::store::filesystem::FilesystemStore;
use cas::store::memory::MemoryStore;
use cas::store::size_partitioned::SizePartitionedStore;
use cas::store::tiered::TieredStore;
use cas::store::verifying::VerifyingStore;
use cas::{BlobStore, ByteRange, ChunkStream, Digest, DigestHasher};
use futures::StreamExt;

const CHUNK: usize = 1 << 20;
const SIZE: u64 = (1 << 30) + 4097;

fn chunk(i: u64) -> Bytes {
    let len = (SIZE - i * CHUNK as u64).min(CHUNK as u64) as usize;
    let mut v = vec![(i % 251) as u8; len];
    v[..8.min(len)].copy_from_slice(&i.to_le_bytes()[..8.min(len)]);
    Bytes::from(v)
}

fn chunk_count() -> u64 {
    SIZE.div_ceil(CHUNK as u64)
}

fn generated() -> ChunkStream {
    Box::pin(futures::stream::iter(0..chunk_count()).map(|i| Ok(chunk(i))))
}

fn digest_of_generated() -> Digest {
    let mut h = DigestHasher::new();
    for i in 0..chunk_count() {
        h.update(&chunk(i));
    }
    h.finish()
}

async fn read_digest(store: &dyn BlobStore, d: &Digest) -> Digest {
    let mut s = store.get(d, ByteRange::ALL).await.unwrap();
    let mut h = DigestHasher::new();
    while let Some(c) = s.next().await {
        h.update(&c.unwrap());
    }
    h.finish()
}

async fn round_trip(store: Arc<dyn BlobStore>) {
    let d = digest_of_generated();
    store.put(&d, generated()).await.unwrap();
    assert!(store.find_missing(&[d]).await.unwrap().is_empty());
    assert_eq!(read_digest(store.as_ref(), &d).await, d);
    let tail = ByteRange {
        offset: SIZE - 10,
        limit: None,
    };
    assert_eq!(store.get_bytes(&d, tail).await.unwrap().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_streams_a_1gib_blob() {
    round_trip(Arc::new(MemoryStore::new(2 << 30))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_tiered_stack_streams_a_1gib_blob_past_a_small_fast_tier() {
    let dir = tempfile::tempdir().unwrap();
    let slow = FilesystemStore::open(dir.path().join("slow"), 4 << 30)
        .await
        .unwrap();
    let fast = Arc::new(MemoryStore::new(64 << 20));
    let tiered = Arc::new(TieredStore::new(fast.clone(), Arc::new(slow)));
    round_trip(Arc::new(VerifyingStore::new(tiered))).await;
    assert_eq!(
        fast.used_bytes(),
        0,
        "too big for the fast tier: never cached there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_partitioned_stack_sends_a_1gib_blob_to_the_large_side() {
    let dir = tempfile::tempdir().unwrap();
    let large = Arc::new(
        FilesystemStore::open(dir.path().join("large"), 4 << 30)
            .await
            .unwrap(),
    );
    let small = Arc::new(MemoryStore::new(1 << 20));
    let stack = Arc::new(SizePartitionedStore::new(
        64 << 10,
        small.clone(),
        large.clone(),
    ));
    round_trip(stack).await;
    assert_eq!(small.used_bytes(), 0);
    assert_eq!(large.blob_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_1gib_stream_leaves_nothing_in_a_verified_stack() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(
        FilesystemStore::open(dir.path().join("fs"), 4 << 30)
            .await
            .unwrap(),
    );
    let stack = VerifyingStore::new(fs.clone());
    let d = digest_of_generated();
    // Same length, one byte different in the last chunk.
    let corrupt: ChunkStream = Box::pin(futures::stream::iter(0..chunk_count()).map(|i| {
        let mut c = chunk(i).to_vec();
        if i == chunk_count() - 1 {
            c[0] ^= 1;
        }
        Ok(Bytes::from(c))
    }));
    let err = stack.put(&d, corrupt).await.unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    assert_eq!(fs.blob_count(), 0);
    assert_eq!(fs.used_bytes(), 0);
}
