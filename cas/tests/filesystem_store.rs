//! Behaviour of the filesystem blob store through its public API: ranged round trips, the abort
//! rule, concurrent writers, LRU eviction, restart persistence, verified-file hand-over and a
//! streamed 1 GiB+ blob.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cas::spool::Spool;
use cas::store::filesystem::FilesystemStore;
use cas::{BlobStore, ByteRange, ChunkStream, Digest, DigestHasher, StoreError};
use common::{chunked, peak_rss_bytes, random_bytes, stream_of};
use filetime::FileTime;
use futures::StreamExt;

const MIB: usize = 1 << 20;

/// Deterministic bytes that differ from position to position.
/// Every regular file below `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                todo.push(entry.path());
            } else {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

fn blob_files(root: &Path) -> Vec<PathBuf> {
    files_under(&root.join("blobs"))
}

fn tmp_files(root: &Path) -> Vec<PathBuf> {
    files_under(&root.join("tmp"))
}

async fn read(store: &FilesystemStore, d: &Digest, offset: u64, limit: Option<u64>) -> Bytes {
    store
        .get_bytes(d, ByteRange { offset, limit })
        .await
        .unwrap()
}

fn set_age(path: &Path, secs_ago: u64) {
    let t = SystemTime::now() - Duration::from_secs(secs_ago);
    filetime::set_file_mtime(path, FileTime::from_system_time(t)).unwrap();
}

fn mtime_age(path: &Path) -> Duration {
    let m = std::fs::metadata(path).unwrap().modified().unwrap();
    SystemTime::now().duration_since(m).unwrap_or_default()
}

#[tokio::test]
async fn filesystem_round_trip_with_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let store = FilesystemStore::open(dir.path().to_path_buf(), 1 << 30)
        .await
        .unwrap();
    assert_eq!(store.kind(), "filesystem");

    let big = Bytes::from(random_bytes(3 * MIB + 17, 1));
    let d = Digest::of(&big);
    store.put(&d, chunked(&big, 100_000)).await.unwrap();
    let key = d.key();
    assert_eq!(
        blob_files(dir.path()),
        vec![dir.path().join("blobs").join(&key[..2]).join(&key)]
    );
    assert_eq!(store.blob_path(&d), blob_files(dir.path())[0]);
    assert!(tmp_files(dir.path()).is_empty());

    let mut pieces = store.get(&d, ByteRange::ALL).await.unwrap();
    let mut whole = Vec::new();
    while let Some(piece) = pieces.next().await {
        let piece = piece.unwrap();
        assert!(piece.len() <= MIB, "streamed in bounded chunks");
        whole.extend_from_slice(&piece);
    }
    assert!(whole == big[..], "whole blob round trips");
    let len = big.len() as u64;
    assert_eq!(read(&store, &d, 1, Some(10)).await, big.slice(1..11));
    assert_eq!(read(&store, &d, 5, Some(0)).await, Bytes::new());
    assert_eq!(
        read(&store, &d, len - 3, Some(100)).await,
        big.slice(big.len() - 3..)
    );
    assert_eq!(read(&store, &d, len, None).await, Bytes::new());
    let mid = (MIB + 5) as u64;
    let across = read(&store, &d, mid, Some(2 * MIB as u64)).await;
    assert!(
        across == big.slice(MIB + 5..3 * MIB + 5),
        "range across chunks"
    );
    let past = ByteRange {
        offset: len + 1,
        limit: None,
    };
    assert!(matches!(
        store.get(&d, past).await,
        Err(StoreError::OutOfRange(_))
    ));

    let small = Bytes::from_static(b"hello world");
    let s = Digest::of(&small);
    store.put_bytes(&s, small.clone()).await.unwrap();
    assert_eq!(
        read(&store, &s, 6, None).await,
        Bytes::from_static(b"world")
    );
    assert!(matches!(
        store
            .get(
                &s,
                ByteRange {
                    offset: 12,
                    limit: Some(1)
                }
            )
            .await,
        Err(StoreError::OutOfRange(_))
    ));
    store.put_bytes(&Digest::EMPTY, Bytes::new()).await.unwrap();
    assert_eq!(read(&store, &Digest::EMPTY, 0, None).await, Bytes::new());
    assert_eq!(store.used_bytes(), len + small.len() as u64);

    // Values are opaque: an action-cache style entry under a derived key keeps its real length.
    let key = Digest::new([7; 32], 3);
    store
        .put_bytes(&key, Bytes::from_static(b"a longer value"))
        .await
        .unwrap();
    assert_eq!(
        read(&store, &key, 0, None).await,
        Bytes::from_static(b"a longer value")
    );
    store
        .put_bytes(&key, Bytes::from_static(b"short"))
        .await
        .unwrap();
    assert_eq!(
        read(&store, &key, 0, None).await,
        Bytes::from_static(b"short")
    );
    assert_eq!(
        store.used_bytes(),
        len + small.len() as u64 + 5,
        "replacement not double counted"
    );

    let absent = Digest::of(b"absent");
    assert!(matches!(
        store.get(&absent, ByteRange::ALL).await,
        Err(StoreError::NotFound(_))
    ));
    let missing = store
        .find_missing(&[absent, d, absent, s, key])
        .await
        .unwrap();
    assert_eq!(missing, vec![absent]);

    // A file deleted behind the store's back is forgotten, not served.
    std::fs::remove_file(store.blob_path(&s)).unwrap();
    assert!(matches!(
        store.get(&s, ByteRange::ALL).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.find_missing(&[s]).await.unwrap(), vec![s]);
    assert_eq!(store.used_bytes(), len + 5);
}

#[tokio::test]
async fn filesystem_an_error_in_the_input_leaves_nothing_visible() {
    let dir = tempfile::tempdir().unwrap();
    let store = FilesystemStore::open(dir.path().to_path_buf(), 1 << 30)
        .await
        .unwrap();
    let d = Digest::of(b"never stored");
    let input = stream_of(vec![
        Ok(Bytes::from_static(b"never ")),
        Err(StoreError::Cancelled("client went away".into())),
        Ok(Bytes::from_static(b"stored")),
    ]);
    let err = store.put(&d, input).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Cancelled(_)),
        "the stream's error is returned: {err}"
    );
    assert_eq!(store.find_missing(&[d]).await.unwrap(), vec![d]);
    assert!(blob_files(dir.path()).is_empty());
    assert!(tmp_files(dir.path()).is_empty());
    assert_eq!(store.used_bytes(), 0);

    // A put whose future is dropped mid-stream (a hung-up client) leaves nothing either.
    let first = futures::stream::iter(vec![Ok(Bytes::from_static(b"partial"))]);
    let input: ChunkStream = Box::pin(first.chain(futures::stream::pending()));
    let task = tokio::spawn({
        let store = store.clone();
        async move { store.put(&d, input).await }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while tmp_files(dir.path()).is_empty() {
        assert!(Instant::now() < deadline, "the upload never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(
        tmp_files(dir.path()).is_empty(),
        "temp file deleted on cancellation"
    );
    assert!(blob_files(dir.path()).is_empty());

    // A blob bigger than the whole budget is refused without a trace.
    let small = FilesystemStore::open(dir.path().join("small"), 10)
        .await
        .unwrap();
    let data = Bytes::from_static(b"eleven byte");
    let err = small
        .put(&Digest::of(&data), chunked(&data, 4))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ResourceExhausted(_)), "{err}");
    assert!(files_under(&dir.path().join("small")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filesystem_concurrent_writers_of_one_digest_leave_one_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = FilesystemStore::open(dir.path().to_path_buf(), 1 << 30)
        .await
        .unwrap();
    let data = Bytes::from(random_bytes(256 << 10, 2));
    let d = Digest::of(&data);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (store, data) = (store.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            let input = chunked(&data, 16 << 10).then(|chunk| async move {
                tokio::task::yield_now().await;
                chunk
            });
            store.put(&d, Box::pin(input)).await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(blob_files(dir.path()), vec![store.blob_path(&d)]);
    assert!(tmp_files(dir.path()).is_empty());
    assert_eq!(store.used_bytes(), data.len() as u64);
    assert_eq!(store.blob_count(), 1);
    assert!(read(&store, &d, 0, None).await == data);
    assert!(std::fs::read(store.blob_path(&d)).unwrap() == data[..]);
}

#[tokio::test]
async fn filesystem_evicts_least_recently_used_and_deletes_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = FilesystemStore::open(dir.path().to_path_buf(), 10_000)
        .await
        .unwrap();
    let blob = |seed| Bytes::from(random_bytes(4_000, seed));
    let (a, b, c, e) = (blob(10), blob(11), blob(12), blob(13));
    let (da, db, dc, de) = (
        Digest::of(&a),
        Digest::of(&b),
        Digest::of(&c),
        Digest::of(&e),
    );
    store.put_bytes(&da, a).await.unwrap();
    store.put_bytes(&db, b).await.unwrap();
    read(&store, &da, 0, Some(1)).await; // a is now more recent than b
    store.put_bytes(&dc, c).await.unwrap();
    assert!(!store.blob_path(&db).exists(), "evicted file deleted");
    assert_eq!(store.find_missing(&[da, db, dc]).await.unwrap(), vec![db]);
    assert_eq!(store.used_bytes(), 8_000);
    // find_missing touched a, then c: a is now the least recently used.
    store.put_bytes(&de, e).await.unwrap();
    assert_eq!(
        store.find_missing(&[da, db, dc, de]).await.unwrap(),
        vec![da, db]
    );
    assert_eq!(blob_files(dir.path()), {
        let mut v = vec![store.blob_path(&dc), store.blob_path(&de)];
        v.sort();
        v
    });
    assert_eq!(store.used_bytes(), 8_000);
    assert!(
        tmp_files(dir.path()).is_empty(),
        "evicted files are not left in tmp/"
    );
}

#[tokio::test]
async fn filesystem_restart_keeps_blobs_and_recency_and_cleans_junk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let blobs: Vec<Bytes> = (20..24)
        .map(|seed| Bytes::from(random_bytes(1_000, seed)))
        .collect();
    let ds: Vec<Digest> = blobs.iter().map(|b| Digest::of(b)).collect();
    let (a, b, c, d) = (ds[0], ds[1], ds[2], ds[3]);
    {
        let store = FilesystemStore::open(root.clone(), 1 << 20).await.unwrap();
        for (digest, data) in ds.iter().zip(&blobs).take(3) {
            store.put_bytes(digest, data.clone()).await.unwrap();
        }
        // Recency on disk: a oldest, then c, then b.
        set_age(&store.blob_path(&a), 3_000);
        set_age(&store.blob_path(&b), 1_000);
        set_age(&store.blob_path(&c), 2_000);
    }
    let shard = |d: &Digest| root.join("blobs").join(&d.key()[..2]);
    let junk = [
        root.join("tmp").join("put-leftover"),
        root.join("tmp").join("spool-leftover"),
        root.join("blobs").join("stray"),
        shard(&a).join(format!("{}-01000", a.hash_hex())),
        shard(&a).join("not-a-blob"),
        root.join("blobs")
            .join("00")
            .join(format!("ff{}-1", &a.hash_hex()[2..])),
    ];
    for path in &junk {
        std::fs::write(path, b"junk").unwrap();
    }

    // Room for two of the three blobs: the oldest goes at open.
    let store = FilesystemStore::open(root.clone(), 2_500).await.unwrap();
    for path in &junk {
        assert!(!path.exists(), "{} must be deleted", path.display());
    }
    assert_eq!(store.blob_count(), 2);
    assert_eq!(store.used_bytes(), 2_000);
    assert!(!store.blob_path(&a).exists());
    assert!(tmp_files(&root).is_empty());
    assert_eq!(read(&store, &b, 0, None).await, blobs[1]);
    assert!(
        mtime_age(&store.blob_path(&b)) < Duration::from_secs(30),
        "a read refreshes mtime"
    );

    // c is now the least recently used.
    store.put_bytes(&d, blobs[3].clone()).await.unwrap();
    assert!(!store.blob_path(&c).exists());
    assert_eq!(store.find_missing(&ds).await.unwrap(), vec![a, c]);
    drop(store);

    // A found find_missing entry refreshes the mtime too (in the background).
    set_age(&shard(&d).join(d.key()), 3_000);
    let store = FilesystemStore::open(root.clone(), 2_500).await.unwrap();
    assert_eq!(store.find_missing(&[d]).await.unwrap(), vec![]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while mtime_age(&store.blob_path(&d)) > Duration::from_secs(30) {
        assert!(
            Instant::now() < deadline,
            "find_missing never refreshed the mtime"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(read(&store, &d, 0, None).await, blobs[3]);
}

#[tokio::test]
async fn filesystem_verified_files_are_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let store = FilesystemStore::open(dir.path().to_path_buf(), 1 << 20)
        .await
        .unwrap();
    let data = Bytes::from(random_bytes(100_000, 30));
    let d = Digest::of(&data);

    let mut spool = Spool::create(&store.tmp_dir()).await.unwrap();
    spool.write(&data).await.unwrap();
    store
        .put_verified_file(spool.finish(&d).await.unwrap())
        .await
        .unwrap();
    assert_eq!(read(&store, &d, 0, None).await, data);
    assert!(
        tmp_files(dir.path()).is_empty(),
        "the spool file was renamed into place"
    );
    assert_eq!(store.used_bytes(), data.len() as u64);

    // From another filesystem (tmpfs) when there is one: copied, then the original deleted.
    let elsewhere = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let other = Bytes::from(random_bytes(1_000, 31));
    let od = Digest::of(&other);
    let mut spool = Spool::create(elsewhere.path()).await.unwrap();
    spool.write(&other).await.unwrap();
    store
        .put_verified_file(spool.finish(&od).await.unwrap())
        .await
        .unwrap();
    assert_eq!(read(&store, &od, 0, None).await, other);
    assert!(
        files_under(elsewhere.path()).is_empty(),
        "the original is gone"
    );
    assert!(tmp_files(dir.path()).is_empty());

    // Over the budget: refused, and the file is deleted.
    let tiny = FilesystemStore::open(dir.path().join("tiny"), 10)
        .await
        .unwrap();
    let mut spool = Spool::create(&tiny.tmp_dir()).await.unwrap();
    spool.write(&other).await.unwrap();
    let err = tiny
        .put_verified_file(spool.finish(&od).await.unwrap())
        .await;
    assert!(matches!(err, Err(StoreError::ResourceExhausted(_))));
    assert!(files_under(&dir.path().join("tiny")).is_empty());
}

#[tokio::test]
async fn filesystem_find_missing_answers_from_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = FilesystemStore::open(dir.path().to_path_buf(), 1 << 30)
        .await
        .unwrap();
    let all: Vec<Digest> = (0..10_000u32)
        .map(|i| Digest::of(&i.to_le_bytes()))
        .collect();
    let present: Vec<Digest> = all.iter().copied().step_by(2).collect();
    let writes = present.iter().enumerate().map(|(i, d)| {
        let store = store.clone();
        let data = Bytes::copy_from_slice(&(2 * i as u32).to_le_bytes());
        async move { store.put_bytes(d, data).await }
    });
    let results: Vec<_> = futures::stream::iter(writes)
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(results.iter().all(Result::is_ok));

    // The answer comes from the index alone: a file deleted behind the store's back still
    // counts as present (a later `get` finds out and forgets it).
    std::fs::remove_file(store.blob_path(&present[0])).unwrap();

    let mut best = Duration::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let missing = store.find_missing(&all).await.unwrap();
        best = best.min(start.elapsed());
        assert_eq!(
            missing,
            all.iter().copied().skip(1).step_by(2).collect::<Vec<_>>()
        );
    }
    // The store's code is unoptimised in the dev profile (and machines running tests are often
    // busy), so the bound there is loose; the optimised build takes about 0.2 ms.
    let bound = Duration::from_millis(if cfg!(debug_assertions) { 50 } else { 1 });
    eprintln!("find_missing of 10,000 digests: {best:?}");
    assert!(best < bound, "find_missing of 10,000 digests took {best:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_a_blob_over_a_gib_streams_both_ways() {
    const CHUNKS: u64 = 1024;
    const TAIL: usize = 12_345;
    let len = CHUNKS * MIB as u64 + TAIL as u64;
    let dir = tempfile::tempdir().unwrap();
    let store = FilesystemStore::open(dir.path().to_path_buf(), 2 << 30)
        .await
        .unwrap();

    // Chunk i is a base pattern stamped with i, so no two chunks are equal.
    let base = Bytes::from(random_bytes(MIB, 40));
    let make_chunk = {
        let base = base.clone();
        move |i: u64| {
            let size = if i < CHUNKS { MIB } else { TAIL };
            let mut chunk = base[..size].to_vec();
            chunk[..8].copy_from_slice(&i.to_le_bytes());
            Bytes::from(chunk)
        }
    };
    let written = Arc::new(parking_lot::Mutex::new(DigestHasher::new()));
    let input = futures::stream::iter(0..=CHUNKS).map({
        let written = Arc::clone(&written);
        move |i| {
            let chunk = make_chunk(i);
            written.lock().update(&chunk);
            Ok(chunk)
        }
    });
    // Stored under a made-up key: the store does not care what the content hashes to.
    let key = Digest::new([0x42; 32], len);
    let start = Instant::now();
    store.put(&key, Box::pin(input)).await.unwrap();
    let put_time = start.elapsed();
    let written = std::mem::take(&mut *written.lock()).finish();
    assert_eq!(written.size(), len);
    assert_eq!(std::fs::metadata(store.blob_path(&key)).unwrap().len(), len);
    assert_eq!(store.used_bytes(), len);

    let start = Instant::now();
    let mut output = store.get(&key, ByteRange::ALL).await.unwrap();
    let mut read_back = DigestHasher::new();
    while let Some(chunk) = output.next().await {
        read_back.update(&chunk.unwrap());
    }
    let get_time = start.elapsed();
    assert_eq!(
        read_back.finish(),
        written,
        "what was read is what was written"
    );
    eprintln!("1 GiB+ blob: put {put_time:?}, get {get_time:?} (both including SHA-256)");

    let tail = ByteRange {
        offset: len - 10,
        limit: None,
    };
    assert_eq!(
        store.get_bytes(&key, tail).await.unwrap(),
        base.slice(TAIL - 10..TAIL)
    );
    if let Some(peak) = peak_rss_bytes() {
        assert!(
            peak < 512 << 20,
            "peak memory {peak} bytes: the blob was buffered whole"
        );
    }
}
