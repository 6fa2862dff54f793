//! Storage throughput against a running `farm-cas` (started by `scripts/bench-cas.sh`).
//!
//! `cargo bench -p cas --bench grpc_throughput -- URL` prints one `RESULT name value unit` line per
//! figure. Every blob written has fresh content, so the server's "already have it" shortcut never
//! flatters a write figure.

use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use cas::proto::bytestream::{self as bs, byte_stream_client::ByteStreamClient};
use cas::{Digest, DigestHasher};
use futures::StreamExt;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::transport::{Channel, Endpoint};

const CHUNK: usize = 1 << 20;

fn result(name: &str, value: f64, unit: &str) {
    println!("RESULT {name} {value:.1} {unit}");
}

async fn connect(url: &str) -> Channel {
    Endpoint::from_shared(url.to_string())
        .expect("valid URL")
        .initial_stream_window_size(Some(16 << 20))
        .initial_connection_window_size(Some(64 << 20))
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("farm-cas reachable")
}

/// Deterministic pseudo-random bytes (xorshift), distinct per `seed`.
fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for word in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        word.copy_from_slice(&b[..word.len()]);
    }
}

/// Writes `chunks()` (yielding `size` bytes in total) under `digest`; returns seconds taken.
async fn write_blob(
    client: &mut ByteStreamClient<Channel>,
    digest: Digest,
    chunks: impl Iterator<Item = Vec<u8>> + Send + 'static,
) -> f64 {
    let name = format!(
        "bench/uploads/{}/blobs/{}/{}",
        uuid::Uuid::new_v4(),
        digest.hash_hex(),
        digest.size()
    );
    let mut offset = 0i64;
    let mut first = true;
    let size = digest.size() as i64;
    let requests = chunks.map(move |data| {
        let req = bs::WriteRequest {
            resource_name: if first { name.clone() } else { String::new() },
            write_offset: offset,
            finish_write: offset + data.len() as i64 == size,
            data: data.into(),
        };
        first = false;
        offset += req.data.len() as i64;
        req
    });
    let start = Instant::now();
    let resp = client
        .write(futures::stream::iter(requests))
        .await
        .expect("write succeeds")
        .into_inner();
    assert_eq!(resp.committed_size, size);
    start.elapsed().as_secs_f64()
}

/// Reads the whole blob, checking its length; returns seconds taken.
async fn read_blob(client: &mut ByteStreamClient<Channel>, digest: Digest) -> f64 {
    let start = Instant::now();
    let mut stream = client
        .read(bs::ReadRequest {
            resource_name: format!("bench/blobs/{}/{}", digest.hash_hex(), digest.size()),
            read_offset: 0,
            read_limit: 0,
        })
        .await
        .expect("read starts")
        .into_inner();
    let mut n = 0u64;
    while let Some(msg) = stream.next().await {
        n += msg.expect("read chunk").data.len() as u64;
    }
    assert_eq!(n, digest.size());
    start.elapsed().as_secs_f64()
}

/// Rounds of the 256 MiB write and read: the VM's run-to-run spread is ±10%, so the median of
/// five (with the extremes printed beside it) says more than one of three.
const BYTESTREAM_ROUNDS: u64 = 5;

async fn bytestream_256mib(url: &str) {
    let mut client = ByteStreamClient::new(connect(url).await);
    let size = 256 << 20;
    let mut write_rates = Vec::new();
    let mut read_rates = Vec::new();
    let mut machine_cores = Vec::new();
    let mut client_cores = Vec::new();
    for round in 0..BYTESTREAM_ROUNDS {
        let mut buf = vec![0u8; size];
        fill(&mut buf, 1000 + round);
        let digest = Digest::of(&buf);
        let chunks: Vec<Vec<u8>> = buf.chunks(CHUNK).map(<[u8]>::to_vec).collect();
        drop(buf);
        let before = CpuReading::now();
        let secs = write_blob(&mut client, digest, chunks.into_iter()).await;
        let (machine, own) = before.cores_since(secs);
        write_rates.push(size as f64 / secs / 1e6);
        machine_cores.extend(machine);
        client_cores.push(own);
        let secs = read_blob(&mut client, digest).await;
        read_rates.push(size as f64 / secs / 1e6);
    }
    for (what, mut rates) in [("write", write_rates), ("read", read_rates)] {
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        result(&format!("bytestream_{what}_256mib_median"), median, "MB/s");
        result(&format!("bytestream_{what}_256mib_min"), rates[0], "MB/s");
        result(
            &format!("bytestream_{what}_256mib_max"),
            rates[rates.len() - 1],
            "MB/s",
        );
    }
    // How busy the machine was while it wrote: whether the server (with this client beside it)
    // had used up the cores, or waited on something else.
    for (what, mut cores) in [("machine_busy", machine_cores), ("client", client_cores)] {
        if cores.is_empty() {
            continue;
        }
        cores.sort_by(f64::total_cmp);
        let median = cores[cores.len() / 2];
        println!("RESULT bytestream_write_256mib_{what}_cores_median {median:.2} cores");
    }
}

/// CPU counters at one instant: the machine's jiffies and this process's CPU time.
struct CpuReading {
    machine: Option<(u64, u64)>,
    own: Duration,
}

impl CpuReading {
    fn now() -> Self {
        CpuReading {
            machine: cas::process::machine_jiffies(),
            own: cas::process::process_cpu_time(),
        }
    }

    /// Cores' worth of CPU the whole machine (if `/proc/stat` says) and this process used
    /// over the `secs` since this reading.
    fn cores_since(&self, secs: f64) -> (Option<f64>, f64) {
        let now = CpuReading::now();
        // The CPUs /proc/stat counts (all of the machine's, whatever this process may use).
        let cores = std::fs::read_to_string("/proc/stat").map_or(1, |stat| {
            stat.lines()
                .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
                .count()
                .max(1)
        }) as f64;
        let machine = match (self.machine, now.machine) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some(cores * b1.saturating_sub(b0) as f64 / (t1 - t0) as f64)
            }
            _ => None,
        };
        let own = now.own.saturating_sub(self.own).as_secs_f64() / secs.max(1e-9);
        (machine, own)
    }
}

async fn find_missing_10k(url: &str) {
    let mut client = ContentAddressableStorageClient::new(connect(url).await);
    let digests: Vec<reapi::Digest> = (0..10_000u32)
        .map(|i| Digest::of(&i.to_le_bytes()).to_proto())
        .collect();
    // Make half of them present so both paths are exercised.
    let present: Vec<_> = (0..5_000u32).map(|i| i.to_le_bytes().to_vec()).collect();
    for batch in present.chunks(1000) {
        let requests = batch
            .iter()
            .map(|b| reapi::batch_update_blobs_request::Request {
                digest: Some(Digest::of(b).to_proto()),
                data: b.clone(),
                compressor: 0,
            })
            .collect();
        client
            .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
                requests,
                ..Default::default()
            })
            .await
            .expect("batch update");
    }
    let mut times = Vec::new();
    for _ in 0..30 {
        let start = Instant::now();
        let resp = client
            .find_missing_blobs(reapi::FindMissingBlobsRequest {
                blob_digests: digests.clone(),
                ..Default::default()
            })
            .await
            .expect("find missing")
            .into_inner();
        times.push(start.elapsed());
        assert_eq!(resp.missing_blob_digests.len(), 5_000);
    }
    times.sort();
    result("find_missing_10k_p50", times[15].as_secs_f64() * 1e3, "ms");
    result("find_missing_10k_max", times[29].as_secs_f64() * 1e3, "ms");
}

async fn batch_update_4kib(url: &str) {
    let channel = connect(url).await;
    let per_batch = 900usize;
    let batches = 80usize;
    let concurrency = 4usize;
    let mut prepared = Vec::with_capacity(batches);
    for b in 0..batches {
        let requests: Vec<_> = (0..per_batch)
            .map(|i| {
                let mut blob = vec![0u8; 4096];
                fill(&mut blob, (b * per_batch + i) as u64 + 7_000_000);
                reapi::batch_update_blobs_request::Request {
                    digest: Some(Digest::of(&blob).to_proto()),
                    data: blob,
                    compressor: 0,
                }
            })
            .collect();
        prepared.push(reapi::BatchUpdateBlobsRequest {
            requests,
            ..Default::default()
        });
    }
    let start = Instant::now();
    futures::stream::iter(prepared)
        .map(|req| {
            let mut client = ContentAddressableStorageClient::new(channel.clone());
            async move {
                let resp = client
                    .batch_update_blobs(req)
                    .await
                    .expect("batch update")
                    .into_inner();
                assert!(resp
                    .responses
                    .iter()
                    .all(|r| r.status.as_ref().is_none_or(|s| s.code == 0)));
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    let secs = start.elapsed().as_secs_f64();
    result(
        "batch_update_4kib",
        (batches * per_batch) as f64 / secs,
        "blobs/s",
    );
}

/// Streams a 2 GiB blob in and out without holding it; the script samples server RSS meanwhile.
async fn stream_2gib(url: &str) {
    let mut client = ByteStreamClient::new(connect(url).await);
    let total: u64 = 2 << 30;
    let mut block = vec![0u8; CHUNK];
    fill(&mut block, 99);
    let n = (total / CHUNK as u64) as usize;
    let mut hasher = DigestHasher::new();
    for i in 0..n {
        let mut c = block.to_vec();
        c[..8].copy_from_slice(&(i as u64).to_le_bytes());
        hasher.update(&c);
    }
    let digest = hasher.finish();
    let chunks = (0..n).map(move |i| {
        let mut c = block.to_vec();
        c[..8].copy_from_slice(&(i as u64).to_le_bytes());
        c
    });
    println!("MARK stream_2gib_start");
    let w = write_blob(&mut client, digest, chunks).await;
    let r = read_blob(&mut client, digest).await;
    println!("MARK stream_2gib_end");
    result("bytestream_write_2gib", total as f64 / w / 1e6, "MB/s");
    result("bytestream_read_2gib", total as f64 / r / 1e6, "MB/s");
}

/// The machine's loopback TCP limit for one stream, without gRPC: 2 GiB written in 1 MiB
/// chunks by one task and read by another, median of 3. Needs no server (the URL is ignored).
/// `scripts/bench-cas.sh` runs it in a process of its own, so the 6 GiB it moves through this
/// process's sockets and allocator are not part of the uploads it measures next.
async fn loopback_tcp() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let total: usize = 2 << 30;
    let mut rates = Vec::new();
    for _ in 0..3 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let reader = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; CHUNK];
            let mut n = 0;
            while n < total {
                match sock.read(&mut buf).await.expect("read") {
                    0 => break,
                    k => n += k,
                }
            }
            n
        });
        let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
        sock.set_nodelay(true).expect("nodelay");
        let mut block = vec![0u8; CHUNK];
        fill(&mut block, 7);
        let start = Instant::now();
        for _ in 0..total / CHUNK {
            sock.write_all(&block).await.expect("write");
        }
        sock.shutdown().await.expect("shutdown");
        let got = reader.await.expect("reader task");
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(got, total);
        rates.push(total as f64 / secs / 1e6);
    }
    rates.sort_by(f64::total_cmp);
    result("loopback_tcp_one_stream_median", rates[1], "MB/s");
}

#[tokio::main]
async fn main() {
    // The load generator shares the machine with the server; like every farm binary it keeps
    // freed memory, so each upload's fresh encode buffers are not page-faulted in again (on
    // this VM that cost the client ~0.4 core-seconds per 1.5 GiB; BENCHMARKS.md has both).
    cas::process::keep_freed_memory();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let Some(url) = args.first() else {
        eprintln!("usage: cargo bench -p cas --bench grpc_throughput -- URL [SCENARIO...]");
        std::process::exit(2);
    };
    let all = [
        "loopback",
        "bytestream",
        "find_missing",
        "batch_update",
        "stream_2gib",
    ];
    let picked: Vec<&str> = if args.len() > 1 {
        args[1..].iter().map(String::as_str).collect()
    } else {
        all.to_vec()
    };
    for s in picked {
        match s {
            "loopback" => loopback_tcp().await,
            "bytestream" => bytestream_256mib(url).await,
            "find_missing" => find_missing_10k(url).await,
            "batch_update" => batch_update_4kib(url).await,
            "stream_2gib" => stream_2gib(url).await,
            other => {
                eprintln!("unknown scenario {other}; known: {all:?}");
                std::process::exit(2);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
