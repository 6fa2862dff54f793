//! `GrpcStore` against a real in-process farm storage server (CAS, ByteStream, Capabilities,
//! ActionCache over tonic on 127.0.0.1): small and 100 MiB round trips, ranges, NOT_FOUND,
//! bulk `find_missing`, and aborted uploads leaving no trace.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use cas::store::grpc::{GrpcStore, GrpcStoreOptions};
use cas::store::memory::MemoryStore;
use cas::store::{collect, BlobStore, ByteRange, ChunkStream};
use cas::{Digest, DigestHasher, StoreError};
use common::{random_bytes, TestServer};
use futures::StreamExt;

/// The farm's storage services on 127.0.0.1 over a 1 GiB memory CAS, and that raw store.
async fn start() -> (TestServer, Arc<MemoryStore>) {
    let (storage, store) = common::memory_storage_with(1 << 30, common::options());
    (common::start(storage).await, store)
}

async fn client(server: &TestServer) -> GrpcStore {
    GrpcStore::connect(&server.url, GrpcStoreOptions::default())
        .await
        .unwrap()
}

/// A stream of `chunks` chunks of `chunk` bytes each (chunk `i` is `random_bytes(chunk, i)`), and its
/// digest; generated on the fly, never whole in memory.
fn big_stream(chunks: u64, chunk: usize) -> (Digest, impl Fn() -> ChunkStream) {
    let mut h = DigestHasher::new();
    for i in 0..chunks {
        h.update(&random_bytes(chunk, i));
    }
    let digest = h.finish();
    let make = move || -> ChunkStream {
        Box::pin(
            futures::stream::iter(0..chunks).map(move |i| Ok(Bytes::from(random_bytes(chunk, i)))),
        )
    };
    (digest, make)
}

#[tokio::test]
async fn small_blobs_round_trip_with_ranges_and_not_found() {
    let (server, raw) = start().await;
    let store = client(&server).await;
    let data = Bytes::from(random_bytes(10_000, 1));
    let d = Digest::of(&data);

    let err = store.get(&d, ByteRange::ALL).await.err().unwrap();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(store.find_missing(&[d, d]).await.unwrap(), vec![d]);

    store.put_bytes(&d, data.clone()).await.unwrap();
    assert!(raw.find_missing(&[d]).await.unwrap().is_empty());
    assert!(store.find_missing(&[d]).await.unwrap().is_empty());
    assert_eq!(store.get_bytes(&d, ByteRange::ALL).await.unwrap(), data);

    let range = |offset, limit| ByteRange { offset, limit };
    assert_eq!(
        store.get_bytes(&d, range(100, Some(50))).await.unwrap(),
        data.slice(100..150)
    );
    assert_eq!(
        store.get_bytes(&d, range(9_990, None)).await.unwrap(),
        data.slice(9_990..)
    );
    assert_eq!(
        store
            .get_bytes(&d, range(9_990, Some(1_000)))
            .await
            .unwrap(),
        data.slice(9_990..)
    );
    assert!(store
        .get_bytes(&d, range(10_000, None))
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .get_bytes(&d, range(5, Some(0)))
        .await
        .unwrap()
        .is_empty());
    let err = store.get(&d, range(10_001, None)).await.err().unwrap();
    assert!(matches!(err, StoreError::OutOfRange(_)), "{err}");
    let err = store
        .get(&Digest::of(b"nope"), range(0, Some(0)))
        .await
        .err()
        .unwrap();
    assert!(err.is_not_found(), "{err}");

    // The empty blob is always there.
    store.put_bytes(&Digest::EMPTY, Bytes::new()).await.unwrap();
    assert!(store
        .get_bytes(&Digest::EMPTY, ByteRange::ALL)
        .await
        .unwrap()
        .is_empty());

    // The server verifies: wrong content is refused and not stored.
    let wrong = Digest::of(b"something else");
    let err = store
        .put_bytes(&wrong, Bytes::from_static(b"something elsE"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
    assert_eq!(store.find_missing(&[wrong]).await.unwrap(), vec![wrong]);

    // Instance names reach the server (whose CAS is shared across instances).
    let other = store.with_instance_name("main/instance");
    assert_eq!(other.get_bytes(&d, ByteRange::ALL).await.unwrap(), data);
}

#[tokio::test]
async fn hundred_mebibytes_stream_both_ways_and_read_in_ranges() {
    let (server, _store) = start().await;
    let store = client(&server).await;
    let chunk = 1 << 20;
    let (d, make) = big_stream(100, chunk);
    assert_eq!(d.size(), 100 << 20);

    store.put(&d, make()).await.unwrap();
    assert!(store.find_missing(&[d]).await.unwrap().is_empty());

    let mut stream = store.get(&d, ByteRange::ALL).await.unwrap();
    let mut h = DigestHasher::new();
    let mut chunks = 0;
    while let Some(c) = stream.next().await {
        h.update(&c.unwrap());
        chunks += 1;
    }
    assert_eq!(h.finish(), d);
    assert!(chunks > 1, "the read streams in several messages");

    // A range across a chunk boundary, and the tail.
    let offset = (7 * chunk - 10) as u64;
    let got = store
        .get_bytes(
            &d,
            ByteRange {
                offset,
                limit: Some(20),
            },
        )
        .await
        .unwrap();
    let mut want = random_bytes(chunk, 6)[chunk - 10..].to_vec();
    want.extend_from_slice(&random_bytes(chunk, 7)[..10]);
    assert_eq!(&got[..], &want[..]);
    let tail = store
        .get_bytes(
            &d,
            ByteRange {
                offset: d.size() - 3,
                limit: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(&tail[..], &random_bytes(chunk, 99)[chunk - 3..]);
}

#[tokio::test]
async fn aborted_uploads_leave_nothing() {
    let (server, _store) = start().await;
    let store = client(&server).await;
    for (chunks, chunk) in [(4u64, 1000usize), (8, 1 << 20)] {
        let (d, _) = big_stream(chunks, chunk);
        let failing: ChunkStream = Box::pin(futures::stream::iter(0..chunks).map(move |i| {
            if i == chunks - 1 {
                Err(StoreError::Cancelled("client hung up".into()))
            } else {
                Ok(Bytes::from(random_bytes(chunk, i)))
            }
        }));
        let err = store.put(&d, failing).await.unwrap_err();
        assert!(matches!(err, StoreError::Cancelled(_)), "{err}");
        assert_eq!(store.find_missing(&[d]).await.unwrap(), vec![d]);

        // Too short a stream is refused before finish_write.
        let (d, make) = big_stream(chunks, chunk);
        let short: ChunkStream = Box::pin(make().take(chunks as usize - 1));
        let err = store.put(&d, short).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
        assert_eq!(store.find_missing(&[d]).await.unwrap(), vec![d]);
    }
}

#[tokio::test]
async fn find_missing_of_twenty_thousand_digests_and_batches() {
    let (server, _store) = start().await;
    let store = client(&server).await;
    let blobs: Vec<(Digest, Bytes)> = (0..20_000u32)
        .map(|i| {
            let b = Bytes::from(format!("blob number {i}"));
            (Digest::of(&b), b)
        })
        .collect();
    let present: Vec<(Digest, Bytes)> = blobs.iter().step_by(7).cloned().collect();
    store.batch_update(present.clone()).await.unwrap();

    let mut query: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    query.push(blobs[1].0); // a duplicate is answered once
    let missing = store.find_missing(&query).await.unwrap();
    let want: Vec<Digest> = blobs
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 7 != 0)
        .map(|(_, (d, _))| *d)
        .collect();
    assert_eq!(missing, want, "every missing digest, in input order, once");

    let asked = [present[0].0, blobs[1].0, present[1].0];
    let read = store.batch_read(&asked).await.unwrap();
    assert_eq!(read.len(), 3);
    for (d, r) in read {
        match present.iter().find(|(p, _)| *p == d) {
            Some((_, data)) => assert_eq!(r.unwrap(), *data),
            None => assert!(r.unwrap_err().is_not_found()),
        }
    }
}

#[tokio::test]
async fn verified_files_stream_from_disk() {
    let (server, _store) = start().await;
    let store = client(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(3 << 20, 5);
    let d = Digest::of(&data);
    let mut spool = cas::spool::Spool::create(dir.path()).await.unwrap();
    spool.write(&data).await.unwrap();
    let file = spool.finish(&d).await.unwrap();
    store.put_verified_file(file).await.unwrap();
    let got = collect(store.get(&d, ByteRange::ALL).await.unwrap())
        .await
        .unwrap();
    assert_eq!(&got[..], &data[..]);
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = GrpcStore::connect(&url, GrpcStoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    let lazy = GrpcStore::connect_lazy(&url, GrpcStoreOptions::default()).unwrap();
    let err = lazy.find_missing(&[Digest::of(b"x")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
}
