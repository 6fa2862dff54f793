//! The filesystem store's fast paths: large uploads spooled and read with direct I/O (any
//! chunking, any range, resumed uploads), and batches of small blobs written by a few blocking
//! calls.

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use cas::direct_io::{ALIGN, BLOCK, MIN_DIRECT_BYTES};
use cas::spool::Spool;
use cas::store::filesystem::{FilesystemOptions, FilesystemStore};
use cas::{BlobStore, ByteRange, Digest, StoreError};
use common::random_bytes;

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

async fn read(store: &FilesystemStore, d: &Digest, offset: u64, limit: Option<u64>) -> Bytes {
    store
        .get_bytes(d, ByteRange { offset, limit })
        .await
        .unwrap_or_else(|e| panic!("read {offset}+{limit:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blobs_spool_and_read_with_direct_io_in_any_chunking_and_range() {
    let dir = tempfile::tempdir().unwrap();
    let store = FilesystemStore::open(dir.path().to_path_buf(), 1 << 30)
        .await
        .unwrap();
    let len = 4 * BLOCK + 12_345;
    let data = Bytes::from(random_bytes(len, 77));
    let d = Digest::of(&data);

    let mut spool = Spool::create_for(&store.tmp_dir(), len as u64, true)
        .await
        .unwrap();
    // ext4 and xfs do direct I/O; a filesystem that refuses it gets a buffered spool.
    println!("direct spool: {}", spool.is_direct());
    // Chunks that straddle blocks and alignment, with the upload parked (as between two
    // streams of a resumed upload) at unaligned offsets.
    let cuts = [
        1,
        ALIGN - 1,
        ALIGN + 1,
        BLOCK - 3,
        BLOCK + 7,
        3 * BLOCK + 5,
        3 * BLOCK + 6,
        len,
    ];
    let mut at = 0;
    for (i, cut) in cuts.into_iter().enumerate() {
        spool.write_owned(data.slice(at..cut)).await.unwrap();
        at = cut;
        if i % 2 == 1 {
            spool.park().await.unwrap();
        }
    }
    assert_eq!(spool.len(), len as u64);
    store
        .put_verified_file(spool.finish(&d).await.unwrap())
        .await
        .unwrap();
    let blob = store.blob_path(&d);
    assert_eq!(std::fs::metadata(&blob).unwrap().len(), len as u64);
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        data,
        "the file holds exactly the blob"
    );

    let big = MIN_DIRECT_BYTES as usize;
    for (offset, limit) in [
        (0, None),
        (0, Some(big)),
        (1, Some(big + 1)),
        (ALIGN - 1, Some(2 * BLOCK + 3)),
        (BLOCK + 5, None),
        (len - big - 1, None),
        (len - big, Some(big)),
        (3, Some(1000)),
        (len - 10, Some(100)),
    ] {
        let got = read(&store, &d, offset as u64, limit.map(|l| l as u64)).await;
        let end = limit.map_or(len, |l| (offset + l).min(len));
        assert!(got[..] == data[offset..end], "range {offset}+{limit:?}");
    }

    // The same file read by a store that does no direct I/O.
    drop(store);
    let plain = FilesystemStore::open_with(
        dir.path().to_path_buf(),
        FilesystemOptions {
            direct_io: false,
            ..FilesystemOptions::new(1 << 30)
        },
    )
    .await
    .unwrap();
    assert_eq!(read(&plain, &d, 0, None).await, data);
    assert!(read(&plain, &d, 17, Some(big as u64)).await[..] == data[17..17 + big]);
}

#[tokio::test]
async fn a_direct_spool_refuses_content_that_does_not_match_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(MIN_DIRECT_BYTES as usize + 99, 3);
    let mut spool = Spool::create_for(dir.path(), data.len() as u64, true)
        .await
        .unwrap();
    spool.write(&data).await.unwrap();
    let mut other = data.clone();
    other[12] ^= 1;
    let err = spool.finish(&Digest::of(&other)).await.err().unwrap();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
    assert!(files_under(dir.path()).is_empty(), "nothing left behind");

    // A small upload is spooled through the page cache whatever `direct` says.
    let spool = Spool::create_for(dir.path(), 1000, true).await.unwrap();
    assert!(!spool.is_direct());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_small_blobs_store_each_and_answer_each() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let store = FilesystemStore::open(root.clone(), 64 << 20).await.unwrap();
    let mut blobs: Vec<(Digest, Bytes)> = (0..700)
        .map(|i| {
            let data = Bytes::from(random_bytes(4096 + i % 7, i as u64));
            (Digest::of(&data), data)
        })
        .collect();
    // A duplicate, and one blob over the store's whole budget.
    blobs.push(blobs[3].clone());
    let huge = Bytes::from(vec![1u8; (64 << 20) + 1]);
    blobs.push((Digest::of(&huge), huge));
    let results = store.put_many(blobs.clone()).await;
    assert_eq!(results.len(), blobs.len());
    for (i, r) in results.iter().enumerate().take(701) {
        assert!(r.is_ok(), "blob {i}: {r:?}");
    }
    assert!(
        matches!(results[701], Err(StoreError::ResourceExhausted(_))),
        "{:?}",
        results[701]
    );
    let stored: Vec<Digest> = blobs[..700].iter().map(|(d, _)| *d).collect();
    assert!(store.find_missing(&stored).await.unwrap().is_empty());
    for (d, data) in &blobs[..700] {
        assert_eq!(&read(&store, d, 0, None).await, data);
    }
    assert_eq!(store.blob_count(), 700);
    let leftovers: Vec<_> = files_under(&root)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/.put-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // After a restart: all there, and a crash's leftover temp file in a shard is gone.
    let leftover = store.blob_path(&stored[0]).with_file_name(".put-1-2");
    std::fs::write(&leftover, b"half a blob").unwrap();
    drop(store);
    let store = FilesystemStore::open(root.clone(), 64 << 20).await.unwrap();
    assert!(store.find_missing(&stored).await.unwrap().is_empty());
    assert!(!leftover.exists());
    assert_eq!(store.blob_count(), 700);
}
