//! ByteStream through a real tonic client and server on 127.0.0.1: round trips, ranges, zstd in
//! both directions, resumption, early returns, expiry, and a 1 GiB+ streamed blob. Refusals of bad
//! input are in `bytestream/refusals.rs`, the gRPC framing of Write in `bytestream/wire.rs`.

mod common;
#[path = "bytestream/refusals.rs"]
mod refusals;
#[path = "bytestream/support.rs"]
mod support;
#[path = "bytestream/wire.rs"]
mod wire;

use std::time::{Duration, Instant};

use bazel_remote_apis::google::bytestream::{ReadRequest, WriteRequest};
use cas::{Digest, DigestHasher};
use common::peak_rss_bytes;
use futures::StreamExt;
use support::*;
use tonic::Code;

#[tokio::test]
async fn round_trips_of_various_sizes() {
    let fx = Fixture::start().await;
    let sizes = [
        1,
        100,
        READ_CHUNK - 1,
        READ_CHUNK,
        READ_CHUNK + 1,
        3 * READ_CHUNK + 17,
        5 << 20,
    ];
    for (i, size) in sizes.into_iter().enumerate() {
        let data = random_bytes(size, i as u64);
        let d = Digest::of(&data);
        for chunk in [64 * 1024, 1 << 20] {
            let committed = fx.upload(&upload_name(&d), &data, chunk).await.unwrap();
            assert_eq!(committed, size as i64);
        }
        assert!(fx.storage.cas.find_missing(&[d]).await.unwrap().is_empty());
        assert_eq!(
            fx.read(&blob_name(&d), 0, 0).await.unwrap(),
            data,
            "size {size}"
        );
        let instance = format!("some/instance/{}", blob_name(&d));
        assert_eq!(fx.read(&instance, 0, 0).await.unwrap(), data);
    }
    assert_eq!(fx.spool_files(), 0, "no spool file is left behind");
    assert_eq!(fx.service.partial_uploads(), 0);
}

#[tokio::test]
async fn the_empty_blob_is_always_there() {
    let fx = Fixture::start().await;
    let e = Digest::EMPTY;
    assert_eq!(fx.read(&blob_name(&e), 0, 0).await.unwrap(), b"");
    assert_eq!(fx.upload(&upload_name(&e), b"", 1).await.unwrap(), 0);
    assert_eq!(fx.upload(&zstd_upload_name(&e), b"", 1).await.unwrap(), -1);
    let q = fx.query(&upload_name(&e)).await.unwrap();
    assert!(q.complete);
    let compressed = fx.read(&zstd_name(&e), 0, 0).await.unwrap();
    assert_eq!(zstd::decode_all(&compressed[..]).unwrap(), b"");
}

#[tokio::test]
async fn ranged_reads() {
    let fx = Fixture::start().await;
    let data = random_bytes(3 * READ_CHUNK + 5, 7);
    let d = Digest::of(&data);
    fx.upload(&upload_name(&d), &data, 1 << 20).await.unwrap();
    let name = blob_name(&d);
    let n = data.len() as i64;
    for (offset, limit) in [
        (0, 0),
        (0, 1),
        (10, 0),
        (10, 5),
        (READ_CHUNK as i64 - 1, READ_CHUNK as i64 + 2),
        (n - 1, 0),
        (n - 1, 100),
        (n, 0),
        (n, 10),
        (0, n + 1000),
    ] {
        let start = offset as usize;
        let end = if limit == 0 {
            data.len()
        } else {
            (start + limit as usize).min(data.len())
        };
        let got = fx.read(&name, offset, limit).await.unwrap();
        assert_eq!(got, &data[start..end], "offset {offset} limit {limit}");
    }
}

#[tokio::test]
async fn zstd_uploads_and_downloads() {
    let fx = Fixture::start().await;
    for (i, size) in [1usize, 1000, READ_CHUNK * 3 + 1, 6 << 20]
        .into_iter()
        .enumerate()
    {
        let data = if i % 2 == 0 {
            text_bytes(size, i as u64)
        } else {
            random_bytes(size, i as u64)
        };
        let d = Digest::of(&data);
        let compressed = zstd::encode_all(&data[..], 3).unwrap();
        let committed = fx
            .upload(&zstd_upload_name(&d), &compressed, 100_000)
            .await
            .unwrap();
        assert_eq!(
            committed,
            compressed.len() as i64,
            "committed = compressed bytes"
        );
        assert_eq!(fx.read(&blob_name(&d), 0, 0).await.unwrap(), data);

        // Compressed download: one zstd frame of the whole blob, or from an uncompressed offset.
        let got = fx.read(&zstd_name(&d), 0, 0).await.unwrap();
        assert_eq!(zstd::decode_all(&got[..]).unwrap(), data);
        let offset = size / 3;
        let got = fx.read(&zstd_name(&d), offset as i64, 0).await.unwrap();
        assert_eq!(zstd::decode_all(&got[..]).unwrap(), &data[offset..]);
        let identity = format!("compressed-blobs/identity/{}/{}", d.hash_hex(), d.size());
        assert_eq!(fx.read(&identity, 0, 0).await.unwrap(), data);

        // An existing blob: a compressed upload returns at once with -1.
        assert_eq!(
            fx.upload(&zstd_upload_name(&d), &compressed, 1 << 20)
                .await
                .unwrap(),
            -1
        );
    }
    // Text compresses: the compressed read of a large text blob is much smaller.
    let data = text_bytes(4 << 20, 99);
    let d = Digest::of(&data);
    fx.upload(&upload_name(&d), &data, 1 << 20).await.unwrap();
    let got = fx.read(&zstd_name(&d), 0, 0).await.unwrap();
    assert!(got.len() < data.len() / 4, "{} bytes", got.len());
    assert_eq!(zstd::decode_all(&got[..]).unwrap(), data);
    // identity uploads are plain uploads.
    let data = text_bytes(1000, 100);
    let d = Digest::of(&data);
    let name = format!(
        "uploads/u1/compressed-blobs/identity/{}/{}",
        d.hash_hex(),
        d.size()
    );
    assert_eq!(fx.upload(&name, &data, 300).await.unwrap(), 1000);
    assert_eq!(fx.spool_files(), 0);
}

#[tokio::test]
async fn zstd_upload_of_several_frames() {
    let fx = Fixture::start().await;
    let data = text_bytes(3 << 20, 5);
    let d = Digest::of(&data);
    let mut compressed = zstd::encode_all(&data[..1 << 20], 1).unwrap();
    compressed.extend(zstd::encode_all(&data[1 << 20..], 19).unwrap());
    let committed = fx
        .upload(&zstd_upload_name(&d), &compressed, 4096)
        .await
        .unwrap();
    assert_eq!(committed, compressed.len() as i64);
    assert_eq!(fx.read(&blob_name(&d), 0, 0).await.unwrap(), data);
}

#[tokio::test]
async fn resume_after_a_broken_stream() {
    let fx = Fixture::start().await;
    let data = random_bytes(4 << 20, 11);
    let d = Digest::of(&data);
    let name = upload_name(&d);
    let half = 2 << 20;

    // Send the first half, then kill the call without finish_write or a clean close.
    let (tx, call) = fx.open_write();
    for r in requests(&name, &data[..half], 1 << 20, 0, false) {
        tx.send(r).await.unwrap();
    }
    fx.wait_committed(&name, half as i64).await;
    call.abort();
    drop(tx);
    let _ = call.await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let q = fx.query(&name).await.unwrap();
    assert_eq!((q.committed_size, q.complete), (half as i64, false));
    fx.assert_absent(&d).await;
    assert_eq!(fx.service.partial_uploads(), 1);

    // A resume at any other offset is refused (and drops the upload).
    let other = format!("uploads/other/{}", blob_name(&d));
    fx.write(requests(&other, &data[..10], 10, 0, false))
        .await
        .unwrap();
    let err = fx
        .write(requests(&other, &data[20..30], 10, 20, false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("expected 10, got 20"), "{err:?}");

    // Resume from the committed size; later requests may omit the name.
    let committed = fx
        .write(requests(&name, &data[half..], 1 << 20, half as i64, true))
        .await
        .unwrap();
    assert_eq!(committed, data.len() as i64);
    assert_eq!(fx.read(&blob_name(&d), 0, 0).await.unwrap(), data);
    let q = fx.query(&name).await.unwrap();
    assert_eq!((q.committed_size, q.complete), (data.len() as i64, true));
    assert_eq!(fx.service.partial_uploads(), 0);
    assert_eq!(fx.spool_files(), 0);
}

/// A client that names a huge blob and sends a little must not reserve disk for all of it while
/// its upload waits to be resumed.
#[tokio::test]
async fn an_idle_upload_of_a_huge_blob_holds_disk_for_what_was_sent() {
    use std::os::unix::fs::MetadataExt;
    let fx = Fixture::start().await;
    let d = Digest::parse(&"ab".repeat(32), 1 << 40).unwrap();
    let name = upload_name(&d);
    let data = random_bytes((5 << 20) + 3, 21);
    let committed = fx
        .write(requests(&name, &data, 1 << 20, 0, false))
        .await
        .unwrap();
    assert_eq!(committed, data.len() as i64);
    let spools: Vec<_> = std::fs::read_dir(&fx.spool_dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap())
        .collect();
    assert_eq!(spools.len(), 1, "one partial upload");
    let on_disk = spools[0].blocks() * 512;
    assert!(
        on_disk < 128 << 20,
        "an idle 5 MiB upload of a 1 TiB blob holds {on_disk} bytes of disk"
    );
    assert_eq!(fx.query(&name).await.unwrap().committed_size, committed);
}

#[tokio::test]
async fn half_closed_stream_reports_progress_and_resumes() {
    let fx = Fixture::start().await;
    // Spooled through the page cache, and (at least 4 MiB) with direct I/O, split unaligned.
    for (size, split) in [(1 << 20, 300_000), ((5 << 20) + 3, (2 << 20) + 4097)] {
        let data = random_bytes(size, 12);
        let d = Digest::of(&data);
        let name = upload_name(&d);
        let committed = fx
            .write(requests(&name, &data[..split], 100_000, 0, false))
            .await
            .unwrap();
        assert_eq!(
            committed, split as i64,
            "a clean close answers with the committed size"
        );
        let q = fx.query(&name).await.unwrap();
        assert_eq!((q.committed_size, q.complete), (split as i64, false));
        fx.write(requests(&name, &data[split..], 100_000, split as i64, true))
            .await
            .unwrap();
        assert_eq!(fx.read(&blob_name(&d), 0, 0).await.unwrap(), data);
        assert_eq!(fx.read(&blob_name(&d), 5, 0).await.unwrap(), &data[5..]);
    }
    assert_eq!(fx.spool_files(), 0);
}

#[tokio::test]
async fn zstd_resume_continues_the_compressed_stream_or_restarts_it() {
    let fx = Fixture::start().await;
    let data = text_bytes(3 << 20, 13);
    let d = Digest::of(&data);

    // Bazel-style: QueryWriteStatus reports compressed bytes; the client continues its stream.
    let compressed = zstd::encode_all(&data[..], 3).unwrap();
    let name = zstd_upload_name(&d);
    let cut = compressed.len() / 2;
    let committed = fx
        .write(requests(&name, &compressed[..cut], 10_000, 0, false))
        .await
        .unwrap();
    assert_eq!(committed, cut as i64);
    assert_eq!(fx.query(&name).await.unwrap().committed_size, cut as i64);
    let committed = fx
        .write(requests(
            &name,
            &compressed[cut..],
            10_000,
            cut as i64,
            true,
        ))
        .await
        .unwrap();
    assert_eq!(committed, compressed.len() as i64);
    assert_eq!(fx.read(&blob_name(&d), 0, 0).await.unwrap(), data);

    // REAPI's literal rule: a new stream starts at an uncompressed offset with a new zstd stream.
    let data = text_bytes(2 << 20, 14);
    let d = Digest::of(&data);
    let name = zstd_upload_name(&d);
    let k = 700_000;
    let first = zstd::encode_all(&data[..k], 3).unwrap();
    fx.write(requests(&name, &first, 50_000, 0, false))
        .await
        .unwrap();
    let second = zstd::encode_all(&data[k..], 3).unwrap();
    let committed = fx
        .write(requests(&name, &second, 50_000, k as i64, true))
        .await
        .unwrap();
    assert_eq!(committed, (k + second.len()) as i64);
    assert_eq!(fx.read(&blob_name(&d), 0, 0).await.unwrap(), data);
    assert_eq!(fx.spool_files(), 0);
}

#[tokio::test]
async fn a_second_stream_for_a_busy_upload_is_aborted() {
    let fx = Fixture::start().await;
    let data = random_bytes(100_000, 15);
    let d = Digest::of(&data);
    let name = upload_name(&d);
    let (tx, call) = fx.open_write();
    tx.send(request(&name, 0, &data[..50_000], false))
        .await
        .unwrap();
    fx.wait_committed(&name, 50_000).await;

    let err = fx
        .write(requests(&name, &data[50_000..], 50_000, 50_000, true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert!(err.message().contains("already in progress"), "{err:?}");

    tx.send(request("", 50_000, &data[50_000..], true))
        .await
        .unwrap();
    assert_eq!(call.await.unwrap().unwrap(), 100_000);
    assert_eq!(fx.read(&blob_name(&d), 0, 0).await.unwrap(), data);
}

#[tokio::test]
async fn writing_an_existing_blob_returns_at_once() {
    let fx = Fixture::start().await;
    let data = random_bytes(2 << 20, 16);
    let d = Digest::of(&data);
    fx.upload(&upload_name(&d), &data, 1 << 20).await.unwrap();

    // The client sends one chunk and keeps its side open: the answer comes anyway.
    for (name, want) in [
        (upload_name(&d), d.size() as i64),
        (zstd_upload_name(&d), -1),
    ] {
        let (tx, call) = fx.open_write();
        tx.send(request(&name, 0, &data[..1000], false))
            .await
            .unwrap();
        let committed = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("answered before the client finished")
            .unwrap()
            .unwrap();
        assert_eq!(committed, want);
        drop(tx);
    }
    // A partial upload of a blob that arrives some other way is answered as complete.
    let other = random_bytes(10_000, 17);
    let od = Digest::of(&other);
    let name = upload_name(&od);
    fx.write(requests(&name, &other[..5000], 5000, 0, false))
        .await
        .unwrap();
    fx.upload(&upload_name(&od), &other, 5000).await.unwrap();
    let q = fx.query(&name).await.unwrap();
    assert_eq!((q.committed_size, q.complete), (10_000, true));
    assert_eq!(
        fx.write(requests(&name, &other[5000..], 5000, 5000, true))
            .await
            .unwrap(),
        10_000
    );
    assert_eq!(fx.service.partial_uploads(), 0);
    assert_eq!(fx.spool_files(), 0);
}

#[tokio::test]
async fn abandoned_partial_uploads_expire() {
    let fx = Fixture::start_with(Duration::from_millis(200), READ_CHUNK).await;
    let data = random_bytes(10_000, 18);
    let d = Digest::of(&data);
    let name = upload_name(&d);
    fx.write(requests(&name, &data[..4000], 4000, 0, false))
        .await
        .unwrap();
    assert_eq!(fx.query(&name).await.unwrap().committed_size, 4000);
    assert_eq!(fx.spool_files(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let err = fx.query(&name).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(
        fx.spool_files(),
        0,
        "the spool file of an expired upload is deleted"
    );
    // A late resume finds nothing to resume.
    let err = fx
        .write(requests(&name, &data[4000..], 4000, 4000, true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    fx.assert_absent(&d).await;
}

/// Deterministic content of chunk `i` of the big blob: a shared pattern stamped with `i`.
fn big_chunk(pattern: &[u8], i: u64) -> Vec<u8> {
    let mut chunk = pattern.to_vec();
    chunk[..8].copy_from_slice(&i.to_le_bytes());
    chunk
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_streamed_write_and_read() {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: u64 = 1024 + 3;
    let last = 12_345usize;
    let size = (CHUNKS - 1) * CHUNK as u64 + last as u64;
    let fx = Fixture::start_with(Duration::from_secs(3600), 1 << 20).await;
    let pattern = random_bytes(CHUNK, 19);
    let mut hasher = DigestHasher::new();
    for i in 0..CHUNKS {
        let chunk = big_chunk(&pattern, i);
        let n = if i + 1 == CHUNKS { last } else { CHUNK };
        hasher.update(&chunk[..n]);
    }
    let d = hasher.finish();
    assert_eq!(d.size(), size);
    let name = upload_name(&d);

    let start = Instant::now();
    let requests = futures::stream::iter(0..CHUNKS).map({
        let name = name.clone();
        let pattern = pattern.clone();
        move |i| {
            let mut data = big_chunk(&pattern, i);
            if i + 1 == CHUNKS {
                data.truncate(last);
            }
            WriteRequest {
                resource_name: if i == 0 { name.clone() } else { String::new() },
                write_offset: (i * CHUNK as u64) as i64,
                finish_write: i + 1 == CHUNKS,
                data,
            }
        }
    });
    let committed = fx.client().write(requests).await.unwrap().into_inner();
    assert_eq!(committed.committed_size, size as i64);
    let written = start.elapsed();

    let start = Instant::now();
    let request = ReadRequest {
        resource_name: blob_name(&d),
        read_offset: 0,
        read_limit: 0,
    };
    let mut stream = fx.client().read(request).await.unwrap().into_inner();
    let mut got = DigestHasher::new();
    while let Some(response) = stream.next().await {
        let data = response.unwrap().data;
        assert!(data.len() <= CHUNK);
        got.update(&data);
    }
    assert_eq!(got.finish(), d);
    eprintln!(
        "1 GiB+ blob: write {:.0} MB/s, read {:.0} MB/s",
        size as f64 / written.as_secs_f64() / 1e6,
        size as f64 / start.elapsed().as_secs_f64() / 1e6
    );
    // The blob never sat in memory whole on the server or the client.
    if let Some(peak) = peak_rss_bytes() {
        assert!(peak < 900 << 20, "peak RSS {} MiB", peak >> 20);
    }
}

/// Throughput of 256 MiB through ByteStream; run with
/// `cargo test --release -p cas --test bytestream -- --ignored --nocapture throughput`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark; run in release"]
async fn throughput_256mib() {
    const CHUNK: usize = 1 << 20;
    let fx = Fixture::start_with(Duration::from_secs(3600), CHUNK).await;
    for round in 0..3u64 {
        let data = bytes::Bytes::from(random_bytes(256 << 20, 1000 + round));
        let d = Digest::of(&data);
        let name = upload_name(&d);
        // Requests are built before the clock starts: this measures the service, not the
        // client's data preparation.
        let requests: Vec<WriteRequest> = (0..256usize)
            .map(|i| WriteRequest {
                resource_name: if i == 0 { name.clone() } else { String::new() },
                write_offset: (i * CHUNK) as i64,
                finish_write: i == 255,
                data: data[i * CHUNK..(i + 1) * CHUNK].to_vec(),
            })
            .collect();
        let cpu0 = cpu_secs();
        let start = Instant::now();
        let requests = futures::stream::iter(requests);
        fx.client().write(requests).await.unwrap();
        let write = start.elapsed();
        let write_cpu = cpu_secs().zip(cpu0).map_or(0.0, |(b, a)| b - a);
        let start = Instant::now();
        let request = ReadRequest {
            resource_name: blob_name(&d),
            read_offset: 0,
            read_limit: 0,
        };
        let mut stream = fx.client().read(request).await.unwrap().into_inner();
        let mut n = 0;
        while let Some(r) = stream.next().await {
            n += r.unwrap().data.len();
        }
        assert_eq!(n, data.len());
        let read = start.elapsed();
        let mb = data.len() as f64 / 1e6;
        eprintln!(
            "RESULT round {round}: 256 MiB write {:.0} MB/s ({:?}, {write_cpu:.2} CPU-s in the \
             process), read {:.0} MB/s ({:?})",
            mb / write.as_secs_f64(),
            write,
            mb / read.as_secs_f64(),
            read
        );
    }
}

/// CPU seconds (user + system) this process has used so far (Linux), if known.
fn cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}
