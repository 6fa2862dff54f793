//! Integration tests of `RedisStore` against a real Redis server.
//!
//! Run them with a throwaway server: `scripts/test-services.sh cargo test -p cas --test
//! redis_store -- --nocapture`. Without `FARM_TEST_REDIS_URL` they fail on purpose.
#![cfg(feature = "redis")]

mod common;

use std::time::Instant;

use bytes::Bytes;
use cas::store::redis::{RedisStore, REDIS_MAX_VALUE_BYTES};
use cas::{BlobStore, ByteRange, Digest, StoreError};
use common::stream_of;

fn redis_url() -> String {
    std::env::var("FARM_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "FARM_TEST_REDIS_URL is not set: these tests need a Redis server. Run them via \
             scripts/test-services.sh, e.g. `scripts/test-services.sh cargo test -p cas --test \
             redis_store`, or `source scripts/test-services.sh && start_redis` first"
        )
    })
}

/// A store whose keys are unique to this call, so tests and runs never see each other's data.
async fn store(max_blob_bytes: u64) -> RedisStore {
    let prefix = format!("farm-test/{}/", uuid::Uuid::new_v4());
    RedisStore::connect(&redis_url(), prefix, max_blob_bytes)
        .await
        .expect("connect to the test Redis")
}

fn blob(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn range(offset: u64, limit: Option<u64>) -> ByteRange {
    ByteRange { offset, limit }
}

#[tokio::test]
async fn round_trip_ranges_and_not_found() {
    let s = store(1 << 20).await;
    assert_eq!(s.kind(), "redis");
    let data = blob(100_000, 7);
    let d = Digest::of(&data);
    // Several chunks in, one value out.
    let chunks = data
        .chunks(30_000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    s.put(&d, stream_of(chunks)).await.unwrap();
    assert_eq!(s.get_bytes(&d, ByteRange::ALL).await.unwrap(), data);
    let whole = cas::store::collect(s.get(&d, ByteRange::ALL).await.unwrap())
        .await
        .unwrap();
    assert_eq!(whole, data);

    let len = data.len() as u64;
    let cases = [
        (range(10, Some(20)), 10..30),
        (range(0, Some(1)), 0..1),
        (range(99_990, None), 99_990..100_000),
        (range(99_990, Some(1_000)), 99_990..100_000),
        (range(5, Some(u64::MAX)), 5..100_000),
        (range(len, None), 100_000..100_000),
        (range(len, Some(5)), 100_000..100_000),
        (range(50, Some(0)), 50..50),
        (range(len, Some(0)), 100_000..100_000),
    ];
    for (r, want) in cases {
        let got = s.get_bytes(&d, r).await.unwrap();
        assert_eq!(got, data.slice(want.clone()), "range {r:?}");
    }
    for r in [
        range(len + 1, None),
        range(len + 1, Some(0)),
        range(u64::MAX, Some(3)),
    ] {
        let err = s.get_bytes(&d, r).await.unwrap_err();
        assert!(
            matches!(err, StoreError::OutOfRange(_)),
            "range {r:?}: {err:?}"
        );
    }

    let absent = Digest::of(b"never stored");
    for r in [
        ByteRange::ALL,
        range(0, Some(0)),
        range(3, None),
        range(0, Some(2)),
    ] {
        let err = s.get_bytes(&absent, r).await.unwrap_err();
        assert!(
            matches!(err, StoreError::NotFound(d) if d == absent),
            "range {r:?}: {err:?}"
        );
        assert!(s.get(&absent, r).await.is_err());
    }

    // The empty blob exists once stored, and is distinguishable from a missing key.
    s.put_bytes(&Digest::EMPTY, Bytes::new()).await.unwrap();
    assert!(s
        .get_bytes(&Digest::EMPTY, ByteRange::ALL)
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .get_bytes(&Digest::EMPTY, range(0, Some(9)))
        .await
        .unwrap()
        .is_empty());
    let err = s
        .get_bytes(&Digest::EMPTY, range(1, None))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::OutOfRange(_)), "{err:?}");
    assert!(s.find_missing(&[Digest::EMPTY]).await.unwrap().is_empty());
}

#[tokio::test]
async fn values_are_opaque() {
    // Action-cache style: the value's length is not the digest's size.
    let s = store(1 << 20).await;
    let key = Digest::of(b"an action");
    let value = blob(300, 1);
    s.put_bytes(&key, value.clone()).await.unwrap();
    assert_eq!(s.get_bytes(&key, ByteRange::ALL).await.unwrap(), value);
    assert_eq!(
        s.get_bytes(&key, range(290, None)).await.unwrap(),
        value.slice(290..)
    );
    // Overwriting replaces the value.
    s.put_bytes(&key, Bytes::from_static(b"v2")).await.unwrap();
    assert_eq!(&s.get_bytes(&key, ByteRange::ALL).await.unwrap()[..], b"v2");
}

#[tokio::test]
async fn an_error_in_the_input_stream_stores_nothing() {
    let s = store(1 << 20).await;
    let data = blob(1000, 3);
    let d = Digest::of(&data);
    let items = vec![
        Ok(data.slice(..500)),
        Err(StoreError::Cancelled("client hung up".into())),
        Ok(data.slice(500..)),
    ];
    let err = s.put(&d, stream_of(items)).await.unwrap_err();
    assert!(matches!(err, StoreError::Cancelled(_)), "{err:?}");
    assert_eq!(s.find_missing(&[d]).await.unwrap(), vec![d]);
    assert!(s
        .get_bytes(&d, ByteRange::ALL)
        .await
        .unwrap_err()
        .is_not_found());
}

#[tokio::test]
async fn blobs_over_the_cap_are_refused() {
    let cap = 1024;
    let s = store(cap).await;
    assert_eq!(s.max_blob_bytes(), cap);

    // Up front, by the digest's size: the stream is never read.
    let big = blob(2048, 9);
    let d = Digest::of(&big);
    let poisoned = stream_of(vec![Err(StoreError::Internal("must not be read".into()))]);
    let err = s.put(&d, poisoned).await.unwrap_err();
    let StoreError::ResourceExhausted(msg) = &err else {
        panic!("expected ResourceExhausted, got {err:?}");
    };
    assert!(
        msg.contains(&d.to_string()) && msg.contains("2048") && msg.contains("1024"),
        "{msg}"
    );
    let err = s.put_bytes(&d, big.clone()).await.unwrap_err();
    assert!(matches!(err, StoreError::ResourceExhausted(_)), "{err:?}");

    // While streaming, when the value outgrows a digest that claimed to be small.
    let small_claim = Digest::new(*d.hash(), 10);
    let chunks = big
        .chunks(300)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let err = s.put(&small_claim, stream_of(chunks)).await.unwrap_err();
    let StoreError::ResourceExhausted(msg) = &err else {
        panic!("expected ResourceExhausted, got {err:?}");
    };
    assert!(
        msg.contains(&small_claim.to_string()) && msg.contains("1024"),
        "{msg}"
    );
    assert_eq!(
        s.find_missing(&[d, small_claim]).await.unwrap(),
        vec![d, small_claim]
    );

    // Exactly at the cap is fine.
    let edge = blob(1024, 2);
    s.put_bytes(&Digest::of(&edge), edge.clone()).await.unwrap();

    // Redis' own 512 MiB limit bounds any configured cap.
    let unbounded = store(u64::MAX).await;
    assert_eq!(unbounded.max_blob_bytes(), REDIS_MAX_VALUE_BYTES);
    let huge = Digest::new([1; 32], REDIS_MAX_VALUE_BYTES + 1);
    let err = unbounded.put_bytes(&huge, Bytes::new()).await.unwrap_err();
    assert!(matches!(err, StoreError::ResourceExhausted(_)), "{err:?}");
}

#[tokio::test]
async fn find_missing_of_ten_thousand_digests_is_one_fast_round_trip() {
    let s = store(1 << 20).await;
    let digests: Vec<Digest> = (0..10_000u32)
        .map(|i| Digest::of(format!("blob {i}").as_bytes()))
        .collect();
    let present: Vec<Digest> = digests.iter().copied().step_by(10).collect();
    futures::future::try_join_all(
        present
            .iter()
            .map(|d| s.put_bytes(d, Bytes::from(format!("{d}")))),
    )
    .await
    .unwrap();

    // Duplicates in the request come back once, in first-seen order.
    let mut request = digests.clone();
    request.extend_from_slice(&digests[..100]);
    let started = Instant::now();
    let missing = s.find_missing(&request).await.unwrap();
    let took = started.elapsed();
    println!(
        "redis find_missing: {} digests ({} unique, {} present) in {took:?}",
        request.len(),
        digests.len(),
        present.len()
    );
    let want: Vec<Digest> = digests
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 != 0)
        .map(|(_, d)| *d)
        .collect();
    assert_eq!(missing, want);
    assert!(
        took.as_secs() < 5,
        "find_missing of 10,000 digests took {took:?}"
    );
    assert!(s.find_missing(&[]).await.unwrap().is_empty());
}

/// Seconds since `key` was last used, by Redis' LRU clock.
async fn idle_secs(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("OBJECT")
        .arg("IDLETIME")
        .arg(key)
        .query_async(conn)
        .await
        .expect("OBJECT IDLETIME")
}

#[tokio::test]
async fn find_missing_refreshes_the_blobs_it_finds() {
    // Under an LRU maxmemory policy Redis evicts by last use: a blob reported present must
    // not stay the coldest key.
    let s = store(1 << 20).await;
    let d = Digest::of(b"kept warm");
    s.put_bytes(&d, Bytes::from_static(b"kept warm"))
        .await
        .unwrap();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while idle_secs(&mut conn, &s.key(&d)).await < 2 {
        assert!(Instant::now() < deadline, "the key never became idle");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(s.find_missing(&[d]).await.unwrap().is_empty());
    assert!(idle_secs(&mut conn, &s.key(&d)).await <= 1);
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let err = RedisStore::connect("redis://127.0.0.1:1", "x/".into(), 1024)
        .await
        .unwrap_err();
    let StoreError::Unavailable(msg) = &err else {
        panic!("expected Unavailable, got {err:?}");
    };
    assert!(msg.contains("127.0.0.1:1"), "{msg}");
}
