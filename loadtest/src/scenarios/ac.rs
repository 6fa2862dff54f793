//! `ac`: GetActionResult and UpdateActionResult, weighted by `--ops get:W,update:W`.
//!
//! Keys are synthetic action digests derived from seed and index (the action cache does not
//! need the Action itself). Updates write a small result under a fresh key; a get asks, with
//! probability `--hit-ratio`, for a key written before (preloaded or written earlier in the
//! run; `NOT_FOUND` then is an error: the cache lost it) and otherwise for a key never
//! written (`NOT_FOUND` is the expected answer, counted as a miss).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use cas::Digest;
use futures::StreamExt as _;
use parking_lot::RwLock;
use prost::Message as _;
use serde_json::Value;
use tonic::Code;

use super::{measure, Context, Measured};
use crate::actions::cached_result;
use crate::budget::{Budget, Outcome};
use crate::client::Clients;
use crate::content::{self, Rng};
use crate::options::AcOps;
use crate::rpc::{self, SetupError};
use crate::stats::{Kind, Recorder};

pub const GET: Kind = Kind::primary("get_action_result");
pub const UPDATE: Kind = Kind::primary("update_action_result");

/// Most written keys remembered for hits.
const KEEP: usize = 1 << 20;

struct Shared {
    seed: u64,
    instance: String,
    hit_ratio: f64,
    ops: AcOps,
    next_index: AtomicU64,
    next_miss: AtomicU64,
    written: RwLock<Vec<u64>>,
}

impl Shared {
    fn key(&self, index: u64) -> Digest {
        let mut hash = [0u8; 32];
        content::fill(&mut hash, content::key(self.seed ^ 0xAC, index));
        Digest::new(hash, 142)
    }

    fn miss_key(&self) -> Digest {
        let i = self.next_miss.fetch_add(1, Ordering::Relaxed);
        let mut hash = [0u8; 32];
        content::fill(&mut hash, content::key(self.seed ^ 0x3155, i));
        Digest::new(hash, 142)
    }

    fn result(&self, index: u64) -> reapi::ActionResult {
        let mut stdout = vec![0u8; 64];
        content::fill(&mut stdout, content::key(self.seed ^ 0x57D0, index));
        cached_result(stdout)
    }

    fn remember(&self, index: u64) {
        let mut w = self.written.write();
        if w.len() < KEEP {
            w.push(index);
        } else {
            let slot = (index as usize) % KEEP;
            w[slot] = index;
        }
    }
}

pub async fn run(
    ctx: Arc<Context>,
    hit_ratio: f64,
    ops: AcOps,
    preload: u64,
) -> Result<Measured, SetupError> {
    let shared = Arc::new(Shared {
        seed: ctx.config.seed,
        instance: ctx.config.instance.clone(),
        hit_ratio,
        ops,
        next_index: AtomicU64::new(0),
        next_miss: AtomicU64::new(0),
        written: RwLock::new(Vec::new()),
    });
    if ops.get > 0 && hit_ratio > 0.0 && preload == 0 && ops.update == 0 {
        return Err(SetupError::Other(
            "hits without updates need --preload above 0".into(),
        ));
    }
    let results: Vec<Result<u64, SetupError>> = futures::stream::iter(0..preload)
        .map(|_| {
            let shared = shared.clone();
            let clients = ctx.pool.get(0).clone();
            let timeout = ctx.config.timeout;
            async move {
                let i = shared.next_index.fetch_add(1, Ordering::Relaxed);
                rpc::setup(
                    "preloading action results (UpdateActionResult)",
                    timeout,
                    rpc::update_action_result(
                        &clients,
                        &shared.instance,
                        &shared.key(i),
                        shared.result(i),
                    ),
                )
                .await?;
                Ok(i)
            }
        })
        .buffer_unordered(ctx.config.concurrency.clamp(1, 32))
        .collect()
        .await;
    for r in results {
        shared.remember(r?);
    }
    let mut measured = measure(&ctx, ctx.config.concurrency, |i, budget| {
        let clients = ctx.pool.get(i).clone();
        let shared = shared.clone();
        let rng = Rng::new(content::key(shared.seed, 3_000_000 + i as u64));
        task(clients, shared, budget, rng)
    })
    .await;
    let c = &measured.recorder.counters;
    let hits = c.get("get_hits").copied().unwrap_or(0);
    let misses = c.get("get_misses").copied().unwrap_or(0);
    if hits + misses > 0 {
        measured.extra.insert(
            "get_hit_ratio".into(),
            Value::from(hits as f64 / (hits + misses) as f64),
        );
    }
    Ok(measured)
}

async fn task(
    clients: Clients,
    shared: Arc<Shared>,
    budget: Arc<Budget>,
    mut rng: Rng,
) -> Recorder {
    let mut rec = Recorder::new();
    let total = u64::from(shared.ops.get) + u64::from(shared.ops.update);
    while budget.take() {
        if rng.below(total) < u64::from(shared.ops.get) {
            get(&clients, &shared, &budget, &mut rng, &mut rec).await;
        } else {
            update(&clients, &shared, &budget, &mut rec).await;
        }
    }
    rec
}

async fn update(clients: &Clients, shared: &Shared, budget: &Budget, rec: &mut Recorder) {
    let i = shared.next_index.fetch_add(1, Ordering::Relaxed);
    let result = shared.result(i);
    let bytes = result.encoded_len() as u64;
    let start = Instant::now();
    let outcome = budget
        .guard(rpc::update_action_result(
            clients,
            &shared.instance,
            &shared.key(i),
            result,
        ))
        .await;
    if rec
        .settle_ok(UPDATE, start, outcome, |_| (1, bytes))
        .is_some()
    {
        shared.remember(i);
    }
}

async fn get(
    clients: &Clients,
    shared: &Shared,
    budget: &Budget,
    rng: &mut Rng,
    rec: &mut Recorder,
) {
    let known = if rng.chance(shared.hit_ratio) {
        let w = shared.written.read();
        (!w.is_empty()).then(|| w[rng.below(w.len() as u64) as usize])
    } else {
        None
    };
    let key = known.map_or_else(|| shared.miss_key(), |i| shared.key(i));
    let request = reapi::GetActionResultRequest {
        instance_name: shared.instance.clone(),
        action_digest: Some(key.to_proto()),
        inline_stdout: false,
        inline_stderr: false,
        inline_output_files: Vec::new(),
        digest_function: reapi::digest_function::Value::Sha256 as i32,
    };
    let start = Instant::now();
    let outcome = budget
        .guard(clients.ac.clone().get_action_result(request))
        .await;
    match outcome {
        // A miss asked for: the expected answer.
        Outcome::Done(Err(s)) if s.code() == Code::NotFound && known.is_none() => {
            rec.ok(GET, start.elapsed(), 0, 0);
            rec.count("get_misses", 1);
        }
        outcome => {
            let got = rec.settle_ok(GET, start, outcome, |r| {
                (1, r.get_ref().encoded_len() as u64)
            });
            if got.is_some() {
                rec.count("get_hits", 1);
            }
        }
    }
}
