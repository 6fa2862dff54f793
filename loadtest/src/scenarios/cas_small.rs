//! `cas-small`: FindMissingBlobs, BatchUpdateBlobs and BatchReadBlobs of small blobs.
//!
//! With all three operations each task runs a client's flow: FindMissingBlobs of a batch of
//! digests, `--hit-ratio` of them for blobs known to be stored and the rest for fresh blobs;
//! BatchUpdateBlobs of the fresh blobs the server reported missing; BatchReadBlobs of a batch of
//! stored blobs. With a subset, each named operation runs on its own (update: every request
//! uploads a batch of fresh blobs; find without update asks for digests of blobs that do not
//! exist). Before the clock, `--preload` blobs are stored for reads and hits to find.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use cas::Digest;
use futures::StreamExt as _;
use parking_lot::RwLock;
use serde_json::Value;

use super::{measure, Context, Measured};
use crate::budget::Budget;
use crate::client::{self, Clients};
use crate::content::{self, Rng};
use crate::options::{CasSmallOps, SizeMix};
use crate::rpc::{self, SetupError};
use crate::stats::{Kind, Recorder};

pub const FIND: Kind = Kind::primary("find_missing");
pub const UPDATE: Kind = Kind::primary("batch_update");
pub const READ: Kind = Kind::primary("batch_read");

/// Batch limit assumed when the server does not say (REAPI's customary 4 MiB).
const DEFAULT_BATCH_BYTES: u64 = 4 << 20;
/// Most digests remembered for reads and hits.
const POOL_CAPACITY: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct Settings {
    pub sizes: SizeMix,
    pub batch: usize,
    pub hit_ratio: f64,
    pub ops: CasSmallOps,
    pub preload: u64,
}

/// Digests known to be stored, the most recent [`POOL_CAPACITY`] of them.
#[derive(Default)]
struct Stored {
    items: Vec<Digest>,
    next: usize,
}

impl Stored {
    fn push(&mut self, d: Digest) {
        if self.items.len() < POOL_CAPACITY {
            self.items.push(d);
        } else {
            self.items[self.next] = d;
            self.next = (self.next + 1) % POOL_CAPACITY;
        }
    }

    /// Up to `n` random digests whose sizes add up to at most `max_bytes`.
    fn pick(&self, rng: &mut Rng, n: usize, max_bytes: u64) -> Vec<Digest> {
        let mut out = Vec::with_capacity(n);
        let mut bytes = 0;
        if self.items.is_empty() {
            return out;
        }
        for _ in 0..n {
            let d = self.items[rng.below(self.items.len() as u64) as usize];
            if bytes + d.size() > max_bytes {
                break;
            }
            bytes += d.size();
            out.push(d);
        }
        out
    }
}

/// What the tasks share.
struct Shared {
    settings: Settings,
    seed: u64,
    instance: String,
    verify: bool,
    max_batch_bytes: u64,
    /// Next blob index (content is a function of seed and index).
    next_index: AtomicU64,
    stored: RwLock<Stored>,
}

impl Shared {
    /// Fresh blobs, up to `n` and at most `max_batch_bytes` in total.
    fn fresh_blobs(&self, n: usize) -> Vec<(Digest, Vec<u8>)> {
        let mut out = Vec::with_capacity(n);
        let mut bytes = 0;
        while out.len() < n {
            let i = self.next_index.fetch_add(1, Ordering::Relaxed);
            let (d, data) = content::small_blob(self.seed, i, &self.settings.sizes);
            if !out.is_empty() && bytes + d.size() > self.max_batch_bytes {
                break;
            }
            bytes += d.size();
            out.push((d, data));
        }
        out
    }

    fn absent_digests(&self, n: usize) -> Vec<Digest> {
        (0..n)
            .map(|_| {
                let i = self.next_index.fetch_add(1, Ordering::Relaxed);
                content::absent_digest(self.seed, i, &self.settings.sizes)
            })
            .collect()
    }

    fn remember(&self, digests: impl IntoIterator<Item = Digest>) {
        let mut stored = self.stored.write();
        for d in digests {
            stored.push(d);
        }
    }
}

pub async fn run(ctx: Arc<Context>, settings: Settings) -> Result<Measured, SetupError> {
    let config = &ctx.config;
    let first = ctx.pool.get(0);
    let mut notes = Vec::new();
    let max_batch_bytes = match client::max_batch_bytes(first, ctx.instance()).await {
        Ok(Some(n)) => n,
        Ok(None) => DEFAULT_BATCH_BYTES,
        Err(status) => {
            notes.push(format!(
                "GetCapabilities failed ({}): assuming batches of up to {DEFAULT_BATCH_BYTES} bytes",
                cas::service::code_name(status.code())
            ));
            DEFAULT_BATCH_BYTES
        }
    };
    if settings.sizes.max_size() > max_batch_bytes {
        return Err(SetupError::Other(format!(
            "blobs of {} bytes do not fit the server's batch limit of {max_batch_bytes} bytes; \
             use cas-large for them",
            settings.sizes.max_size()
        )));
    }
    let needs_stored = settings.ops.read || (settings.ops.find && settings.hit_ratio > 0.0);
    if settings.ops.read && settings.preload == 0 && !settings.ops.update {
        return Err(SetupError::Other(
            "reads without uploads need --preload above 0".into(),
        ));
    }
    let shared = Arc::new(Shared {
        seed: config.seed,
        instance: config.instance.clone(),
        verify: config.verify,
        max_batch_bytes,
        next_index: AtomicU64::new(0),
        stored: RwLock::new(Stored::default()),
        settings,
    });
    if needs_stored {
        preload(&ctx, &shared).await?;
    }
    let batch = shared.settings.batch;
    let mut measured = measure(&ctx, config.concurrency, |i, budget| {
        let clients = ctx.pool.get(i).clone();
        let shared = shared.clone();
        let rng = Rng::new(content::key(shared.seed, 1_000_000 + i as u64));
        task(clients, shared, budget, rng)
    })
    .await;
    let r = &measured.recorder;
    let asked = r.counters.get("find_digests").copied().unwrap_or(0);
    if asked > 0 {
        let missing = r.counters.get("find_missing").copied().unwrap_or(0);
        measured.extra.insert(
            "find_hit_ratio".into(),
            Value::from(1.0 - missing as f64 / asked as f64),
        );
    }
    measured
        .extra
        .insert("max_batch_bytes".into(), Value::from(max_batch_bytes));
    measured.extra.insert("batch".into(), Value::from(batch));
    measured.notes = notes;
    Ok(measured)
}

/// Stores `--preload` blobs before the clock, several batches in flight.
async fn preload(ctx: &Context, shared: &Arc<Shared>) -> Result<(), SetupError> {
    let total = shared.settings.preload;
    let batch = shared.settings.batch.max(1) as u64;
    let batches = total.div_ceil(batch);
    let results: Vec<Result<Vec<Digest>, SetupError>> = futures::stream::iter(0..batches)
        .map(|b| {
            let shared = shared.clone();
            let clients = ctx.pool.get(b as usize).clone();
            let timeout = ctx.config.timeout;
            async move {
                let n = batch.min(total - b * batch) as usize;
                let blobs = shared.fresh_blobs(n);
                let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
                rpc::upload_all(
                    &clients,
                    &shared.instance,
                    blobs,
                    shared.max_batch_bytes,
                    timeout,
                )
                .await?;
                Ok(digests)
            }
        })
        .buffer_unordered(ctx.config.concurrency.clamp(1, 8))
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
    mut rng: Rng,
) -> Recorder {
    let mut rec = Recorder::new();
    let s = &shared.settings;
    loop {
        if budget.is_stopped() {
            break;
        }
        if s.ops.find {
            if !find_then_upload(&clients, &shared, &budget, &mut rng, &mut rec).await {
                break;
            }
        } else if s.ops.update {
            let blobs = shared.fresh_blobs(s.batch);
            if !budget.take() {
                break;
            }
            upload(&clients, &shared, &budget, blobs, &mut rec).await;
        }
        if s.ops.read {
            let digests = shared
                .stored
                .read()
                .pick(&mut rng, s.batch, shared.max_batch_bytes);
            if digests.is_empty() {
                tokio::task::yield_now().await;
                continue;
            }
            if !budget.take() {
                break;
            }
            read(&clients, &shared, &budget, digests, &mut rec).await;
        }
    }
    rec
}

/// One FindMissingBlobs and, with uploads on, the BatchUpdateBlobs of what it found missing.
/// False when the budget is used up.
async fn find_then_upload(
    clients: &Clients,
    shared: &Shared,
    budget: &Budget,
    rng: &mut Rng,
    rec: &mut Recorder,
) -> bool {
    let s = &shared.settings;
    let want_hits = (s.hit_ratio * s.batch as f64).round() as usize;
    let hits = shared.stored.read().pick(rng, want_hits, u64::MAX);
    let fresh_n = s.batch - hits.len();
    let (fresh, fresh_digests): (Vec<(Digest, Vec<u8>)>, Vec<Digest>) = if s.ops.update {
        let blobs = shared.fresh_blobs(fresh_n);
        let digests = blobs.iter().map(|(d, _)| *d).collect();
        (blobs, digests)
    } else {
        (Vec::new(), shared.absent_digests(fresh_n))
    };
    let asked: Vec<reapi::Digest> = hits
        .iter()
        .chain(&fresh_digests)
        .map(Digest::to_proto)
        .collect();
    let n = asked.len() as u64;
    if !budget.take() {
        return false;
    }
    let request = reapi::FindMissingBlobsRequest {
        instance_name: shared.instance.clone(),
        blob_digests: asked,
        digest_function: reapi::digest_function::Value::Sha256 as i32,
    };
    let start = Instant::now();
    let outcome = budget
        .guard(clients.cas.clone().find_missing_blobs(request))
        .await;
    let Some(answer) = rec.settle_ok(FIND, start, outcome, |_| (n, 0)) else {
        return true;
    };
    let missing: HashSet<(String, i64)> = answer
        .into_inner()
        .missing_blob_digests
        .into_iter()
        .map(|d| (d.hash, d.size_bytes))
        .collect();
    rec.count("find_digests", n);
    rec.count("find_missing", missing.len() as u64);
    if !s.ops.update {
        return true;
    }
    let to_upload: Vec<(Digest, Vec<u8>)> = fresh
        .into_iter()
        .filter(|(d, _)| missing.contains(&(d.hash_hex(), d.size() as i64)))
        .collect();
    if to_upload.is_empty() {
        return true;
    }
    if !budget.take() {
        return false;
    }
    upload(clients, shared, budget, to_upload, rec).await;
    true
}

async fn upload(
    clients: &Clients,
    shared: &Shared,
    budget: &Budget,
    blobs: Vec<(Digest, Vec<u8>)>,
    rec: &mut Recorder,
) {
    let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    let start = Instant::now();
    let outcome = budget
        .guard(rpc::batch_update(clients, &shared.instance, blobs))
        .await;
    let Some(failed) = rec.settle(UPDATE, outcome) else {
        return;
    };
    let latency = start.elapsed();
    if failed.is_empty() {
        let bytes = digests.iter().map(Digest::size).sum();
        rec.ok(UPDATE, latency, digests.len() as u64, bytes);
        shared.remember(digests);
        return;
    }
    // Which blobs failed is not needed here: count them, keep none of this batch for reads.
    for code in &failed {
        rec.item_errors(code, 1);
    }
    let ok = digests.len() - failed.len();
    let avg = digests.iter().map(Digest::size).sum::<u64>() / digests.len().max(1) as u64;
    rec.ok(UPDATE, latency, ok as u64, ok as u64 * avg);
}

async fn read(
    clients: &Clients,
    shared: &Shared,
    budget: &Budget,
    digests: Vec<Digest>,
    rec: &mut Recorder,
) {
    let request = reapi::BatchReadBlobsRequest {
        instance_name: shared.instance.clone(),
        digests: digests.iter().map(Digest::to_proto).collect(),
        acceptable_compressors: Vec::new(),
        digest_function: reapi::digest_function::Value::Sha256 as i32,
    };
    let start = Instant::now();
    let outcome = budget
        .guard(clients.cas.clone().batch_read_blobs(request))
        .await;
    let Some(answer) = rec.settle(READ, outcome) else {
        return;
    };
    let latency = start.elapsed();
    let (mut blobs, mut bytes) = (0u64, 0u64);
    for r in answer.into_inner().responses {
        let code = rpc::status_name(r.status.as_ref());
        if code != "OK" {
            rec.item_errors(code, 1);
            continue;
        }
        let good = match Digest::from_proto(r.digest.as_ref()) {
            Ok(d) if shared.verify => Digest::of(&r.data) == d,
            Ok(d) => r.data.len() as u64 == d.size(),
            Err(_) => false,
        };
        if !good {
            rec.item_errors("DATA_LOSS", 1);
            continue;
        }
        blobs += 1;
        bytes += r.data.len() as u64;
    }
    rec.ok(READ, latency, blobs, bytes);
}
