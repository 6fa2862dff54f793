//! Crash safety of the filesystem store: after an unclean stop (no `clean` marker) the blobs
//! written since the last checkpoint are rehashed and corrupt ones deleted; a clean shutdown or
//! an old enough mtime skips the rehash; non-content-addressed stores are left alone.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cas::store::filesystem::{FilesystemOptions, FilesystemStore, CHECKPOINT_FILE, CLEAN_MARKER};
use cas::{BlobStore, ByteRange, Digest};
use common::random_bytes;
use filetime::FileTime;

fn set_age(path: &Path, secs_ago: u64) {
    let t = SystemTime::now() - Duration::from_secs(secs_ago);
    filetime::set_file_mtime(path, FileTime::from_system_time(t)).unwrap();
}

/// What a power cut leaves after a delayed allocation: the right length, zeros for content.
fn zero_fill(path: &Path) {
    let len = std::fs::metadata(path).unwrap().len();
    std::fs::write(path, vec![0u8; len as usize]).unwrap();
}

/// Waits for the clean marker of a dropped store (a checkpoint running at the time of the drop
/// finishes the shutdown a moment later).
async fn wait_for_clean_shutdown(root: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !root.join(CLEAN_MARKER).exists() {
        assert!(Instant::now() < deadline, "no clean marker after the drop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Simulates a crash of a store that was dropped: the clean marker never got written.
async fn forget_clean_shutdown(root: &Path) {
    wait_for_clean_shutdown(root).await;
    std::fs::remove_file(root.join(CLEAN_MARKER)).unwrap();
}

async fn put_all(store: &FilesystemStore, blobs: &[Bytes]) -> Vec<Digest> {
    let mut ds = Vec::new();
    for b in blobs {
        let d = Digest::of(b);
        store.put_bytes(&d, b.clone()).await.unwrap();
        ds.push(d);
    }
    ds
}

fn blobs(n: u64, len: usize) -> Vec<Bytes> {
    (0..n)
        .map(|s| Bytes::from(random_bytes(len, 100 + s)))
        .collect()
}

#[tokio::test]
async fn after_a_crash_corrupt_recent_blobs_are_deleted_and_good_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let data = blobs(5, 10_000);
    let store = FilesystemStore::open(root.clone(), 1 << 30).await.unwrap();
    let ds = put_all(&store, &data).await;
    let paths: Vec<_> = ds.iter().map(|d| store.blob_path(d)).collect();
    drop(store);
    forget_clean_shutdown(&root).await;

    // Truncated, empty, and right length with zeros (the case only a rehash can catch).
    std::fs::write(&paths[0], &data[0][..5_000]).unwrap();
    std::fs::write(&paths[1], b"").unwrap();
    zero_fill(&paths[2]);

    let store = FilesystemStore::open(root.clone(), 1 << 30).await.unwrap();
    assert_eq!(store.find_missing(&ds).await.unwrap(), ds[..3].to_vec());
    for p in &paths[..3] {
        assert!(!p.exists(), "{} must be deleted", p.display());
    }
    for (d, b) in ds.iter().zip(&data).skip(3) {
        assert_eq!(&store.get_bytes(d, ByteRange::default()).await.unwrap(), b);
    }
    assert_eq!(store.blob_count(), 2);
    assert!(!root.join(CLEAN_MARKER).exists(), "open removes the marker");

    // The deleted blobs can be stored again.
    store.put_bytes(&ds[2], data[2].clone()).await.unwrap();
    assert!(store.find_missing(&ds[2..3]).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_clean_shutdown_skips_the_rehash() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let data = blobs(2, 4_000);
    let store = FilesystemStore::open(root.clone(), 1 << 30).await.unwrap();
    let ds = put_all(&store, &data).await;
    let path = store.blob_path(&ds[0]);
    drop(store);
    assert!(
        root.join(CLEAN_MARKER).exists(),
        "dropping the last handle is a clean shutdown"
    );

    // Not something a clean shutdown can leave; here it proves nothing was rehashed.
    zero_fill(&path);
    let store = FilesystemStore::open(root.clone(), 1 << 30).await.unwrap();
    assert!(store.find_missing(&ds).await.unwrap().is_empty());
    assert!(path.exists());
    drop(store);

    // A length that contradicts the name is caught at every open, clean or not.
    std::fs::write(&path, b"short").unwrap();
    let store = FilesystemStore::open(root.clone(), 1 << 30).await.unwrap();
    assert_eq!(store.find_missing(&ds).await.unwrap(), vec![ds[0]]);
}

#[tokio::test]
async fn blobs_older_than_the_checkpoint_are_not_rehashed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let data = blobs(3, 4_000);
    let options = FilesystemOptions {
        checkpoint_interval: Duration::from_millis(100),
        ..FilesystemOptions::new(1 << 30)
    };
    let store = FilesystemStore::open_with(root.clone(), options.clone())
        .await
        .unwrap();
    let ds = put_all(&store, &data).await;
    let checkpoint = root.join(CHECKPOINT_FILE);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !checkpoint.exists() {
        assert!(Instant::now() < deadline, "no checkpoint after a write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = std::fs::read_to_string(&checkpoint).unwrap();
    assert!(text.starts_with("farm-fs-checkpoint-v1 "), "{text:?}");
    // Nothing written since: no more checkpoints (no needless syncfs).
    let written = std::fs::metadata(&checkpoint).unwrap().modified().unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        std::fs::metadata(&checkpoint).unwrap().modified().unwrap(),
        written
    );
    let paths: Vec<_> = ds.iter().map(|d| store.blob_path(d)).collect();
    drop(store);
    forget_clean_shutdown(&root).await;

    // ds[0]: corrupt but older than the checkpoint, so not looked at (the cost is bounded);
    // ds[1]: corrupt and recent, so rehashed and deleted; ds[2]: recent and fine.
    zero_fill(&paths[0]);
    set_age(&paths[0], 3_600);
    zero_fill(&paths[1]);
    let store = FilesystemStore::open_with(root.clone(), options.clone())
        .await
        .unwrap();
    assert_eq!(store.find_missing(&ds).await.unwrap(), vec![ds[1]]);
    assert!(paths[0].exists() && !paths[1].exists());
    drop(store);

    // Without any checkpoint, everything is suspect.
    forget_clean_shutdown(&root).await;
    std::fs::remove_file(&checkpoint).unwrap();
    let store = FilesystemStore::open_with(root.clone(), options.clone())
        .await
        .unwrap();
    assert_eq!(store.find_missing(&ds).await.unwrap(), vec![ds[0], ds[1]]);
    drop(store);

    // A checkpoint in the future (the clock went back) is not trusted either.
    forget_clean_shutdown(&root).await;
    std::fs::write(&checkpoint, "farm-fs-checkpoint-v1 99999999999\n").unwrap();
    zero_fill(&paths[2]);
    set_age(&paths[2], 3_600);
    let store = FilesystemStore::open_with(root.clone(), options)
        .await
        .unwrap();
    assert_eq!(store.blob_count(), 0);
}

#[tokio::test]
async fn a_store_of_other_values_keeps_them_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let options = FilesystemOptions {
        verify_on_recovery: false,
        ..FilesystemOptions::new(1 << 20)
    };
    // An action-cache entry: the key is not the digest of the value, nor is its size.
    let key = Digest::of(b"an action");
    let value = Bytes::from_static(b"an encoded ActionResult, of any length");
    let store = FilesystemStore::open_with(root.clone(), options.clone())
        .await
        .unwrap();
    store.put_bytes(&key, value.clone()).await.unwrap();
    drop(store);
    assert!(!root.join(CLEAN_MARKER).exists() && !root.join(CHECKPOINT_FILE).exists());

    let store = FilesystemStore::open_with(root.clone(), options)
        .await
        .unwrap();
    assert_eq!(
        store.get_bytes(&key, ByteRange::default()).await.unwrap(),
        value
    );
}

/// Recovery time after a crash for 1 GiB of recent blobs (4 MiB each), read cold from disk.
/// `cargo test --release -p cas --test filesystem_recovery -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "writes 1 GiB; a measurement"]
async fn recovery_time_for_one_gib_of_recent_blobs() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = dir.path().to_path_buf();
    let store = FilesystemStore::open(root.clone(), 4 << 30).await.unwrap();
    let blob_len = 4 << 20;
    let mut paths = Vec::new();
    for seed in 0..256 {
        let b = Bytes::from(random_bytes(blob_len, seed));
        let d = Digest::of(&b);
        store.put_bytes(&d, b).await.unwrap();
        paths.push(store.blob_path(&d));
    }
    drop(store); // syncs, so the pages below are clean and can be dropped
    forget_clean_shutdown(&root).await;
    for p in &paths {
        evict_from_page_cache(p);
    }
    let started = Instant::now();
    let store = FilesystemStore::open(root.clone(), 4 << 30).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(store.blob_count(), 256);
    let gib = store.used_bytes() as f64 / f64::from(1u32 << 30);
    eprintln!(
        "recovery of {gib:.2} GiB of recent blobs: {elapsed:?} ({:.0} MiB/s)",
        gib * 1024.0 / elapsed.as_secs_f64()
    );
}

fn evict_from_page_cache(path: &Path) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: the descriptor is owned by `file` and valid for the call.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
}
