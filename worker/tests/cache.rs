//! The local blob cache against a real in-process CAS: deduplicated concurrent fetches, mode
//! variants, verification, LRU eviction and missing blobs.

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::sync::Arc;

use bytes::Bytes;
use cas::store::grpc::{GrpcStore, GrpcStoreOptions};
use cas::store::BlobStore;
use cas::Digest;
use worker::cache::{CacheError, Key, LocalCache};

async fn setup() -> (common::CasServer, GrpcStore, tempfile::TempDir) {
    let server = common::start_cas().await;
    let store = GrpcStore::connect(&server.url, GrpcStoreOptions::default())
        .await
        .unwrap();
    (server, store, tempfile::tempdir().unwrap())
}

fn key(data: &[u8], executable: bool) -> Key {
    Key {
        digest: Digest::of(data),
        executable,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_fetch_per_blob() {
    let (_server, store, dir) = setup().await;
    let small: Vec<Bytes> = (0..50).map(|i| Bytes::from(format!("blob {i}"))).collect();
    let large = Bytes::from(vec![7u8; 3 << 20]);
    let mut blobs: Vec<(Digest, Bytes)> =
        small.iter().map(|b| (Digest::of(b), b.clone())).collect();
    blobs.push((Digest::of(&large), large.clone()));
    store.batch_update(blobs.clone()).await.unwrap();

    let cache = LocalCache::open(dir.path(), 1 << 30).unwrap();
    let keys: Vec<Key> = blobs
        .iter()
        .map(|(d, _)| Key {
            digest: *d,
            executable: false,
        })
        .collect();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let cache = cache.clone();
            let store = store.clone();
            let keys = keys.clone();
            tokio::spawn(async move { cache.ensure(&store, &keys).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(cache.remote_fetches(), 51, "each blob fetched once");
    assert_eq!(cache.len(), 51);
    for (d, data) in &blobs {
        let k = Key {
            digest: *d,
            executable: false,
        };
        let p = cache.path(&k);
        assert_eq!(&std::fs::read(&p).unwrap()[..], &data[..]);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o444
        );
    }

    // The executable twin is a local copy, not another fetch, and has its own inode.
    let exec = key(&large, true);
    cache.ensure(&store, &[exec]).await.unwrap();
    assert_eq!(cache.remote_fetches(), 51);
    let m = std::fs::metadata(cache.path(&exec)).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o555);
    assert_ne!(
        m.ino(),
        std::fs::metadata(cache.path(&key(&large, false)))
            .unwrap()
            .ino()
    );

    // Links share the inode.
    let linked = dir.path().join("linked");
    cache.link(&exec, &linked).unwrap();
    assert_eq!(std::fs::metadata(&linked).unwrap().ino(), m.ino());
}

#[tokio::test]
async fn missing_blobs_are_all_reported() {
    let (_server, store, dir) = setup().await;
    let cache = LocalCache::open(dir.path(), 1 << 30).unwrap();
    let present = Bytes::from_static(b"present");
    store
        .put_bytes(&Digest::of(&present), present.clone())
        .await
        .unwrap();
    let big_missing = vec![1u8; 1 << 20];
    let keys = [
        key(b"absent one", false),
        key(&present, false),
        key(&big_missing, true),
    ];
    match cache.ensure(&store, &keys).await {
        Err(CacheError::Missing(mut d)) => {
            d.sort();
            let mut want = vec![Digest::of(b"absent one"), Digest::of(&big_missing)];
            want.sort();
            assert_eq!(d, want);
        }
        other => panic!("expected missing blobs, got {other:?}"),
    }
    assert!(cache.contains(&keys[1]), "what could be fetched was");
    assert!(!cache.contains(&keys[0]));
}

#[tokio::test]
async fn least_recently_used_blobs_are_evicted_beyond_the_budget() {
    let (_server, store, dir) = setup().await;
    let blobs: Vec<Bytes> = (0..4u8).map(|i| Bytes::from(vec![i; 100_000])).collect();
    store
        .batch_update(blobs.iter().map(|b| (Digest::of(b), b.clone())).collect())
        .await
        .unwrap();
    let cache: Arc<LocalCache> = LocalCache::open(dir.path(), 250_000).unwrap();
    for b in &blobs[..2] {
        cache.ensure(&store, &[key(b, false)]).await.unwrap();
    }
    // Touch the first so the second is the least recently used.
    cache
        .ensure(&store, &[key(&blobs[0], false)])
        .await
        .unwrap();
    cache
        .ensure(&store, &[key(&blobs[2], false)])
        .await
        .unwrap();
    assert!(cache.contains(&key(&blobs[0], false)));
    assert!(!cache.contains(&key(&blobs[1], false)));
    assert!(!cache.path(&key(&blobs[1], false)).exists());
    assert!(cache.used_bytes() <= 250_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_of_a_local_filesystem_store_are_hardlinked_not_fetched() {
    let (_server, store, dir) = setup().await;
    let local_root = tempfile::tempdir().unwrap();
    let local =
        cas::store::filesystem::FilesystemStore::open(local_root.path().to_path_buf(), 1 << 30)
            .await
            .unwrap();
    let here = Bytes::from_static(b"in the local store");
    let remote_only = Bytes::from_static(b"only in the remote CAS");
    local
        .put_bytes(&Digest::of(&here), here.clone())
        .await
        .unwrap();
    store
        .batch_update(vec![(Digest::of(&remote_only), remote_only.clone())])
        .await
        .unwrap();

    let cache = LocalCache::open(&dir.path().join("cache"), 1 << 30).unwrap();
    cache.set_local_source(Arc::new(local.clone()));
    let keys = [
        key(&here, false),
        key(&here, true),
        key(&remote_only, false),
    ];
    cache.ensure(&store, &keys).await.unwrap();
    assert_eq!(
        cache.remote_fetches(),
        1,
        "only the blob the local store lacks is fetched"
    );
    let cached = std::fs::metadata(cache.path(&keys[0])).unwrap();
    let stored = std::fs::metadata(local.blob_path(&Digest::of(&here))).unwrap();
    assert_eq!(cached.ino(), stored.ino(), "a hardlink, not a copy");
    assert_eq!(cached.permissions().mode() & 0o777, 0o444);
    // The executable twin needs its own inode (mode 0555).
    let exec = std::fs::metadata(cache.path(&keys[1])).unwrap();
    assert_ne!(exec.ino(), stored.ino());
    assert_eq!(exec.permissions().mode() & 0o777, 0o555);
    assert_eq!(std::fs::read(cache.path(&keys[1])).unwrap(), here);
}
