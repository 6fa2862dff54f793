//! `cas-large`: ByteStream Write and Read of large blobs, streamed in chunks.
//!
//! Every write is of a fresh blob (its content a function of seed and index), so a server's
//! "already stored" shortcut never flatters the figure. The digest must be known before the
//! write starts, so each task hashes its next blob (generating it chunk by chunk on a blocking
//! thread) while the current one uploads; the first blob of each task is hashed before the
//! clock. Writes regenerate the chunks as they are sent: no blob is ever whole in memory.
//! Reads fetch a blob written earlier in the run (or preloaded, for read-only runs).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cas::proto::bytestream::{ReadRequest, WriteRequest};
use cas::{Digest, DigestHasher};
use futures::StreamExt as _;
use parking_lot::RwLock;
use tokio::task::JoinHandle;

use super::{measure, Context, Measured};
use crate::budget::Budget;
use crate::client::Clients;
use crate::content::{self, LargeBlob, Rng};
use crate::options::CasLargeOps;
use crate::rpc::SetupError;
use crate::stats::{Kind, Recorder};

pub const WRITE: Kind = Kind::primary("bytestream_write");
pub const READ: Kind = Kind::primary("bytestream_read");

/// Digests of written blobs kept for reads.
const KEEP: usize = 1024;

#[derive(Clone, Debug)]
pub struct Settings {
    pub blob_size: u64,
    pub chunk_size: usize,
    pub ops: CasLargeOps,
    pub preload: u64,
}

struct Shared {
    settings: Settings,
    seed: u64,
    instance: String,
    verify: bool,
    next_index: AtomicU64,
    written: RwLock<Vec<Digest>>,
}

impl Shared {
    fn next_blob(&self) -> LargeBlob {
        let i = self.next_index.fetch_add(1, Ordering::Relaxed);
        LargeBlob::new(
            self.seed,
            i,
            self.settings.blob_size,
            self.settings.chunk_size,
        )
    }

    /// The next blob and its digest, hashed on a blocking thread.
    fn hash_next(self: &Arc<Self>) -> JoinHandle<(LargeBlob, Digest)> {
        let blob = self.next_blob();
        tokio::task::spawn_blocking(move || (blob, blob.digest()))
    }

    fn remember(&self, d: Digest) {
        let mut w = self.written.write();
        if w.len() >= KEEP {
            w.remove(0);
        }
        w.push(d);
    }

    fn prefix(&self) -> String {
        if self.instance.is_empty() {
            String::new()
        } else {
            format!("{}/", self.instance)
        }
    }
}

pub async fn run(ctx: Arc<Context>, settings: Settings) -> Result<Measured, SetupError> {
    let config = &ctx.config;
    let shared = Arc::new(Shared {
        seed: config.seed,
        instance: config.instance.clone(),
        verify: config.verify,
        next_index: AtomicU64::new(0),
        written: RwLock::new(Vec::new()),
        settings,
    });
    let ops = shared.settings.ops;
    if ops.read && !ops.write {
        preload(&ctx, &shared).await?;
    }
    // Each task's first blob is hashed before the clock.
    let mut first = Vec::new();
    if ops.write {
        for _ in 0..config.concurrency {
            first.push(shared.hash_next());
        }
    }
    let mut ready = Vec::new();
    for h in first {
        ready.push(
            h.await
                .map_err(|e| SetupError::Other(format!("hashing a blob: {e}")))?,
        );
    }
    let ready = Arc::new(parking_lot::Mutex::new(ready));
    let measured = measure(&ctx, config.concurrency, |i, budget| {
        let clients = ctx.pool.get(i).clone();
        let shared = shared.clone();
        let first = ready.lock().pop();
        let rng = Rng::new(content::key(shared.seed, 2_000_000 + i as u64));
        task(clients, shared, budget, first, rng)
    })
    .await;
    Ok(measured)
}

/// Writes `--preload` blobs before the clock, for read-only runs.
async fn preload(ctx: &Context, shared: &Arc<Shared>) -> Result<(), SetupError> {
    let n = shared.settings.preload.max(1);
    let results: Vec<Result<Digest, SetupError>> = futures::stream::iter(0..n)
        .map(|i| {
            let clients = ctx.pool.get(i as usize).clone();
            let shared = shared.clone();
            let timeout = ctx.config.timeout;
            async move {
                let (blob, digest) = shared
                    .hash_next()
                    .await
                    .map_err(|e| SetupError::Other(format!("hashing a blob: {e}")))?;
                crate::rpc::setup(
                    "preloading blobs (ByteStream Write)",
                    timeout,
                    write(&clients, &shared, blob, digest),
                )
                .await?;
                Ok(digest)
            }
        })
        .buffer_unordered(ctx.config.concurrency.clamp(1, 4))
        .collect()
        .await;
    for r in results {
        shared.remember(r?);
    }
    Ok(())
}

async fn task(
    clients: Clients,
    shared: Arc<Shared>,
    budget: Arc<Budget>,
    mut next: Option<(LargeBlob, Digest)>,
    mut rng: Rng,
) -> Recorder {
    let mut rec = Recorder::new();
    let ops = shared.settings.ops;
    loop {
        if budget.is_stopped() {
            break;
        }
        if ops.write {
            let (blob, digest) = match next.take() {
                Some(b) => b,
                None => match shared.hash_next().await {
                    Ok(b) => b,
                    Err(_) => {
                        rec.failed(WRITE, "INTERNAL");
                        break;
                    }
                },
            };
            if !budget.take() {
                break;
            }
            // Hash the following blob while this one uploads.
            let following = shared.hash_next();
            let start = Instant::now();
            let outcome = budget.guard(write(&clients, &shared, blob, digest)).await;
            let size = digest.size();
            match rec.settle(WRITE, outcome) {
                Some(committed) if committed == size as i64 => {
                    rec.ok(WRITE, start.elapsed(), 1, size);
                    shared.remember(digest);
                }
                Some(_) => rec.failed(WRITE, "DATA_LOSS"),
                None => {}
            }
            next = following.await.ok();
        }
        if ops.read {
            let digest = {
                let w = shared.written.read();
                if w.is_empty() {
                    None
                } else {
                    Some(w[rng.below(w.len() as u64) as usize])
                }
            };
            let Some(digest) = digest else {
                tokio::task::yield_now().await;
                continue;
            };
            if !budget.take() {
                break;
            }
            let start = Instant::now();
            let outcome = budget.guard(read(&clients, &shared, digest)).await;
            match rec.settle(READ, outcome) {
                Some(true) => rec.ok(READ, start.elapsed(), 1, digest.size()),
                Some(false) => rec.failed(READ, "DATA_LOSS"),
                None => {}
            }
        }
    }
    rec
}

/// Streams `blob` under `digest`; the committed size the server answered.
async fn write(
    clients: &Clients,
    shared: &Shared,
    blob: LargeBlob,
    digest: Digest,
) -> Result<i64, tonic::Status> {
    let resource = format!(
        "{}uploads/{}/blobs/{}/{}",
        shared.prefix(),
        uuid::Uuid::new_v4(),
        digest.hash_hex(),
        digest.size()
    );
    let n = blob.chunks();
    let chunk = blob.chunk as u64;
    let requests = futures::stream::iter(0..n).map(move |k| WriteRequest {
        resource_name: if k == 0 {
            resource.clone()
        } else {
            String::new()
        },
        write_offset: (k * chunk) as i64,
        finish_write: k + 1 == n,
        data: blob.chunk_at(k),
    });
    let response = clients.bytestream.clone().write(requests).await?;
    Ok(response.into_inner().committed_size)
}

/// Reads `digest` whole; true when its length (and with `--verify`, its hash) matched.
async fn read(clients: &Clients, shared: &Shared, digest: Digest) -> Result<bool, tonic::Status> {
    let request = ReadRequest {
        resource_name: format!(
            "{}blobs/{}/{}",
            shared.prefix(),
            digest.hash_hex(),
            digest.size()
        ),
        read_offset: 0,
        read_limit: 0,
    };
    let mut stream = clients.bytestream.clone().read(request).await?.into_inner();
    let mut hasher = shared.verify.then(DigestHasher::new);
    let mut n = 0u64;
    while let Some(msg) = stream.message().await? {
        n += msg.data.len() as u64;
        if let Some(h) = hasher.as_mut() {
            h.update(&msg.data);
        }
    }
    Ok(match hasher {
        Some(h) => h.finish() == digest,
        None => n == digest.size(),
    })
}
