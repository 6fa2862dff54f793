//! Integration tests of `S3Store` against a real S3-compatible server (s3s-fs on loopback).
//!
//! Run them with a throwaway server: `scripts/test-services.sh cargo test -p cas --test
//! s3_store -- --nocapture`. Without the `FARM_TEST_S3_*` variables they fail on purpose.
#![cfg(feature = "s3")]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aws_sdk_s3::error::ProvideErrorMetadata;
use bytes::{Bytes, BytesMut};
use cas::store::s3::{S3Options, S3Store, MIN_PART_SIZE};
use cas::{BlobStore, ByteRange, ChunkStream, Digest, DigestHasher, StoreError};
use common::{chunked, peak_rss_bytes, stream_of};
use futures::StreamExt;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need an S3 server. Run them via \
             scripts/test-services.sh, e.g. `scripts/test-services.sh cargo test -p cas --test \
             s3_store`, or `source scripts/test-services.sh && start_s3` first"
        )
    })
}

/// Options for the test server, with a key prefix unique to this call.
fn options() -> S3Options {
    S3Options {
        bucket: env("FARM_TEST_S3_BUCKET"),
        prefix: format!("farm-test/{}/", uuid::Uuid::new_v4()),
        endpoint: Some(env("FARM_TEST_S3_ENDPOINT")),
        access_key_id: Some(env("FARM_TEST_S3_ACCESS_KEY")),
        secret_access_key: Some(env("FARM_TEST_S3_SECRET_KEY")),
        force_path_style: true,
        ..S3Options::default()
    }
}

async fn store_with(opts: S3Options) -> S3Store {
    let s = S3Store::new(opts).await.expect("build the S3 store");
    // The launcher creates the bucket; creating it again covers other servers (errors such as
    // "already owned by you" are expected and ignored).
    let _ = s.client().create_bucket().bucket(s.bucket()).send().await;
    s
}

async fn store() -> S3Store {
    store_with(options()).await
}

fn blob(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8)
        .collect()
}

fn range(offset: u64, limit: Option<u64>) -> ByteRange {
    ByteRange { offset, limit }
}

async fn read(s: &S3Store, d: &Digest, r: ByteRange) -> Result<Bytes, StoreError> {
    cas::store::collect(s.get(d, r).await?).await
}

/// Held by every test that makes multipart uploads, so that counting the server's unfinished
/// uploads is not confused by another test's upload in flight.
static MULTIPART: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Unfinished-upload files in s3s-fs's data directory (`FARM_TEST_S3_ROOT`), if known.
fn upload_files() -> BTreeSet<String> {
    let Ok(root) = std::env::var("FARM_TEST_S3_ROOT") else {
        return BTreeSet::new();
    };
    std::fs::read_dir(root)
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|name| name.starts_with(".upload"))
                .collect()
        })
        .unwrap_or_default()
}

/// How many unfinished multipart uploads of `key` the server holds (compared with `before`,
/// the upload files seen when the test started, on servers that cannot list uploads).
async fn uploads_left(s: &S3Store, key: &str, before: &BTreeSet<String>) -> usize {
    let listed = s
        .client()
        .list_multipart_uploads()
        .bucket(s.bucket())
        .prefix(key)
        .send()
        .await;
    match listed {
        Ok(out) => out.uploads().len(),
        Err(e) if e.code() == Some("NotImplemented") => {
            // s3s-fs: each upload is `.upload-ID.json` plus `.upload_id-ID.part-N` files.
            env("FARM_TEST_S3_ROOT");
            upload_files().difference(before).count()
        }
        Err(e) => panic!("ListMultipartUploads: {e:?}"),
    }
}

#[tokio::test]
async fn round_trip_ranges_and_not_found() {
    let s = store_with(S3Options {
        part_size_bytes: MIN_PART_SIZE,
        ..options()
    })
    .await;
    assert_eq!(s.kind(), "s3");
    let _serial = MULTIPART.lock().await;
    let before = upload_files();
    // One small blob (single PutObject) and one of 2.4 parts (multipart), sent in odd chunks.
    for (len, chunk) in [
        (100_000usize, 30_001usize),
        (12 * 1024 * 1024 + 7, 1_000_003),
    ] {
        let data = blob(len, 5);
        let d = Digest::of(&data);
        s.put(&d, chunked(&data, chunk)).await.unwrap();
        assert_eq!(
            read(&s, &d, ByteRange::ALL).await.unwrap(),
            data,
            "len {len}"
        );

        let n = len as u64;
        let cases = [
            (range(10, Some(20)), 10..30),
            (range(0, Some(1)), 0..1),
            (range(n - 10, None), len - 10..len),
            (range(n - 10, Some(1_000)), len - 10..len),
            (range(5, Some(u64::MAX)), 5..len),
            (range(n, None), len..len),
            (range(n, Some(5)), len..len),
            (range(50, Some(0)), 50..50),
            (range(n, Some(0)), len..len),
        ];
        for (r, want) in cases {
            let got = read(&s, &d, r).await.unwrap();
            assert_eq!(got, data.slice(want.clone()), "len {len}, range {r:?}");
        }
        for r in [
            range(n + 1, None),
            range(n + 1, Some(0)),
            range(u64::MAX - 1, Some(1)),
        ] {
            let err = read(&s, &d, r).await.unwrap_err();
            assert!(
                matches!(err, StoreError::OutOfRange(_)),
                "range {r:?}: {err:?}"
            );
        }
        assert!(s.find_missing(&[d]).await.unwrap().is_empty());
        assert_eq!(uploads_left(&s, &s.key(&d), &before).await, 0);
    }

    let absent = Digest::of(b"never stored");
    for r in [
        ByteRange::ALL,
        range(0, Some(0)),
        range(3, None),
        range(0, Some(2)),
    ] {
        let err = read(&s, &absent, r).await.unwrap_err();
        assert!(
            matches!(err, StoreError::NotFound(d) if d == absent),
            "range {r:?}: {err:?}"
        );
    }

    // The empty blob: S3 answers 416 to any range of it, yet reading nothing at offset 0 is fine.
    s.put(&Digest::EMPTY, stream_of(vec![])).await.unwrap();
    assert!(read(&s, &Digest::EMPTY, ByteRange::ALL)
        .await
        .unwrap()
        .is_empty());
    assert!(read(&s, &Digest::EMPTY, range(0, Some(9)))
        .await
        .unwrap()
        .is_empty());
    let err = read(&s, &Digest::EMPTY, range(1, None)).await.unwrap_err();
    assert!(matches!(err, StoreError::OutOfRange(_)), "{err:?}");
    assert!(s.find_missing(&[Digest::EMPTY]).await.unwrap().is_empty());

    // Values are opaque: a value whose length is not the digest's size.
    let key = Digest::of(b"an action");
    s.put_bytes(&key, Bytes::from_static(b"a result"))
        .await
        .unwrap();
    assert_eq!(
        &read(&s, &key, range(2, None)).await.unwrap()[..],
        b"result"
    );
}

#[tokio::test]
async fn an_error_in_the_input_stream_stores_nothing() {
    let s = store_with(S3Options {
        part_size_bytes: MIN_PART_SIZE,
        ..options()
    })
    .await;
    let _serial = MULTIPART.lock().await;
    let before = upload_files();
    let hang_up = || Err(StoreError::Cancelled("client hung up".into()));

    // Within the first part: nothing was sent yet.
    let data = blob(1000, 3);
    let d = Digest::of(&data);
    let err = s
        .put(
            &d,
            stream_of(vec![
                Ok(data.slice(..500)),
                hang_up(),
                Ok(data.slice(500..)),
            ]),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Cancelled(_)), "{err:?}");
    assert_eq!(s.find_missing(&[d]).await.unwrap(), vec![d]);

    // After three parts of a multipart upload went out: the upload is aborted.
    let part = blob(MIN_PART_SIZE as usize, 4);
    let d = Digest::new([7; 32], 10 * MIN_PART_SIZE);
    let mut items: Vec<Result<Bytes, StoreError>> = (0..3).map(|_| Ok(part.clone())).collect();
    items.push(Ok(part.slice(..1000)));
    items.push(hang_up());
    let err = s.put(&d, stream_of(items)).await.unwrap_err();
    assert!(matches!(err, StoreError::Cancelled(_)), "{err:?}");
    assert_eq!(s.find_missing(&[d]).await.unwrap(), vec![d]);
    assert!(read(&s, &d, ByteRange::ALL)
        .await
        .unwrap_err()
        .is_not_found());
    assert_eq!(
        uploads_left(&s, &s.key(&d), &before).await,
        0,
        "the upload was aborted"
    );
}

#[tokio::test]
async fn find_missing_of_ten_thousand_digests() {
    let s = store().await;
    let digests: Vec<Digest> = (0..10_000u32)
        .map(|i| Digest::of(format!("blob {i}").as_bytes()))
        .collect();
    let present: Vec<Digest> = digests.iter().copied().step_by(100).collect();
    futures::stream::iter(present.iter())
        .map(|d| s.put_bytes(d, Bytes::from(format!("{d}"))))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()
        .unwrap();

    let mut request = digests.clone();
    request.extend_from_slice(&digests[..100]);
    let started = Instant::now();
    let missing = s.find_missing(&request).await.unwrap();
    let took = started.elapsed();
    println!(
        "s3 find_missing: {} digests ({} unique, {} present) in {took:?} with {} HeadObjects in \
         flight",
        request.len(),
        digests.len(),
        present.len(),
        cas::store::s3::DEFAULT_MAX_CONCURRENCY
    );
    let want: Vec<Digest> = digests
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 100 != 0)
        .map(|(_, d)| *d)
        .collect();
    assert_eq!(missing, want);
    assert!(
        took.as_secs() < 60,
        "find_missing of 10,000 digests took {took:?}"
    );
}

/// Deterministic pseudo-random content, produced one chunk at a time.
struct Generator {
    state: u64,
    left: u64,
}

impl Generator {
    const CHUNK: usize = 1 << 20;

    fn new(len: u64) -> Self {
        Generator {
            state: 0x9e37_79b9_7f4a_7c15,
            left: len,
        }
    }

    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.left == 0 {
            return None;
        }
        let n = (Self::CHUNK as u64).min(self.left) as usize;
        self.left -= n as u64;
        let mut buf = BytesMut::with_capacity(n + 8);
        for _ in 0..n.div_ceil(8) {
            // xorshift64*
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            buf.extend_from_slice(&self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        buf.truncate(n);
        Some(buf.freeze())
    }

    fn stream(len: u64) -> ChunkStream {
        Box::pin(futures::stream::unfold(
            Generator::new(len),
            |mut g| async move {
                let chunk = g.next_chunk()?;
                Some((Ok(chunk), g))
            },
        ))
    }
}

#[tokio::test]
async fn multipart_round_trip_of_more_than_a_gibibyte_streams() {
    let s = store().await;
    let len: u64 = (1 << 30) + 12_345;
    let _serial = MULTIPART.lock().await;
    let before = upload_files();

    let started = Instant::now();
    let mut hasher = DigestHasher::new();
    let mut g = Generator::new(len);
    while let Some(chunk) = g.next_chunk() {
        hasher.update(&chunk);
    }
    let d = hasher.finish();
    println!("s3 1 GiB: generated and hashed in {:?}", started.elapsed());

    let started = Instant::now();
    s.put(&d, Generator::stream(len)).await.unwrap();
    let up = started.elapsed();

    let started = Instant::now();
    let mut body = s.get(&d, ByteRange::ALL).await.unwrap();
    let mut hasher = DigestHasher::new();
    let mut chunks = 0u64;
    while let Some(chunk) = body.next().await {
        hasher.update(&chunk.unwrap());
        chunks += 1;
    }
    let down = started.elapsed();
    assert_eq!(
        hasher.finish(),
        d,
        "the blob read back hashes to its digest"
    );
    assert!(
        chunks > 1,
        "the body is streamed, not delivered in one piece"
    );

    // A range across a part boundary (16 MiB) matches the generator's bytes there.
    let at = 16 * 1024 * 1024 - 100;
    let got = read(&s, &d, range(at, Some(200))).await.unwrap();
    let mut g = Generator::new(len);
    let mut skipped = 0u64;
    let mut want = BytesMut::new();
    while let Some(chunk) = g.next_chunk() {
        let (from, to) = (skipped, skipped + chunk.len() as u64);
        skipped = to;
        let lo = at.max(from);
        let hi = (at + 200).min(to);
        if lo < hi {
            want.extend_from_slice(&chunk[(lo - from) as usize..(hi - from) as usize]);
        }
        if to >= at + 200 {
            break;
        }
    }
    assert_eq!(got, want.freeze());

    let mib = len as f64 / (1024.0 * 1024.0);
    let rss = peak_rss_bytes().map(|b| b >> 20);
    println!(
        "s3 1 GiB: up {up:?} ({:.0} MiB/s), down {down:?} ({:.0} MiB/s) in {chunks} chunks, \
         peak RSS {rss:?} MiB",
        mib / up.as_secs_f64(),
        mib / down.as_secs_f64()
    );
    if let Some(rss) = rss {
        assert!(rss < 768, "peak RSS {rss} MiB: the blob was held in memory");
    }
    assert_eq!(uploads_left(&s, &s.key(&d), &before).await, 0);
}

#[tokio::test]
async fn a_wrong_secret_key_fails_clearly_and_promptly() {
    let s = store_with(S3Options {
        secret_access_key: Some("not-the-secret".into()),
        ..options()
    })
    .await;
    let d = Digest::of(b"hello");
    let limit = Duration::from_secs(60);

    let err = tokio::time::timeout(limit, s.find_missing(&[d]))
        .await
        .expect("find_missing with a wrong key must not hang")
        .unwrap_err();
    println!("wrong secret, find_missing: {err}");
    let StoreError::Unavailable(msg) = &err else {
        panic!("expected Unavailable, got {err:?}");
    };
    assert!(msg.contains("credentials"), "{msg}");

    for data in [Bytes::from_static(b"hello"), blob(6 * 1024 * 1024, 1)] {
        let d = Digest::of(&data);
        let err = tokio::time::timeout(limit, s.put_bytes(&d, data))
            .await
            .expect("put with a wrong key must not hang")
            .unwrap_err();
        println!("wrong secret, put: {err}");
        let StoreError::Unavailable(msg) = &err else {
            panic!("expected Unavailable, got {err:?}");
        };
        assert!(msg.contains("credentials"), "{msg}");
    }
    let err = tokio::time::timeout(limit, read(&s, &d, ByteRange::ALL))
        .await
        .expect("get with a wrong key must not hang")
        .unwrap_err();
    println!("wrong secret, get: {err}");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_unavailable() {
    let s = S3Store::new(S3Options {
        endpoint: Some("http://127.0.0.1:1".into()),
        ..options()
    })
    .await
    .unwrap();
    let started = Instant::now();
    let err = s.find_missing(&[Digest::of(b"x")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
}
