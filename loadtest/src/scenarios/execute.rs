//! `execute-cached` and `execute`.
//!
//! - `execute-cached`: before the clock, `--actions` distinct actions are uploaded and their
//!   results written with UpdateActionResult; the load is Execute calls cycling through them,
//!   each of which the farm should answer from the action cache (`cached_result = true`;
//!   answers that are not are counted as `not_cached`).
//! - `execute`: every Execute is of a new `/bin/true` action (its own salt) with
//!   `skip_cache_lookup`, so it really runs on a worker. Each task uploads its actions a batch
//!   at a time (the `upload_actions` row, left out of the totals), as a client uploads before
//!   it executes. A non-zero exit code counts as `EXIT_NONZERO`.
//!
//! An ExecuteResponse whose status is not OK counts under that status's code name.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use cas::Digest;
use futures::StreamExt as _;
use serde_json::Value;

use super::{measure, Context, Measured};
use crate::actions::{self, cached_result, Blob};
use crate::budget::{Budget, Outcome};
use crate::client::Clients;
use crate::rpc::{self, SetupError};
use crate::stats::{Kind, Recorder};

pub const EXECUTE: Kind = Kind::primary("execute");
pub const UPLOAD: Kind = Kind::auxiliary("upload_actions");

/// Actions a task of `execute` uploads per BatchUpdateBlobs.
const UPLOAD_BATCH: usize = 32;
/// Setup uploads go in batches of at most this many bytes.
const SETUP_BATCH_BYTES: u64 = 2 << 20;

fn true_command() -> Blob {
    actions::command(&["/bin/true".to_string()], &[])
}

/// Records the end of one Execute; true when it succeeded.
fn record_response(
    rec: &mut Recorder,
    start: Instant,
    outcome: Outcome<Result<reapi::ExecuteResponse, tonic::Status>>,
) -> Option<reapi::ExecuteResponse> {
    let latency = start.elapsed();
    let response = rec.settle(EXECUTE, outcome)?;
    let code = rpc::status_name(response.status.as_ref());
    if code != "OK" {
        let message = response.status.as_ref().map_or("", |s| s.message.as_str());
        rec.failed_with(EXECUTE, code, message);
        return None;
    }
    if response.result.as_ref().is_some_and(|r| r.exit_code != 0) {
        rec.failed(EXECUTE, "EXIT_NONZERO");
        return None;
    }
    rec.ok(EXECUTE, latency, 1, 0);
    rec.count(
        if response.cached_result {
            "cached"
        } else {
            "not_cached"
        },
        1,
    );
    Some(response)
}

fn cached_ratio(measured: &mut Measured) {
    let c = &measured.recorder.counters;
    let cached = c.get("cached").copied().unwrap_or(0);
    let total = cached + c.get("not_cached").copied().unwrap_or(0);
    if total > 0 {
        measured.extra.insert(
            "cached_ratio".into(),
            Value::from(cached as f64 / total as f64),
        );
    }
}

pub async fn run_cached(ctx: Arc<Context>, n: u64) -> Result<Measured, SetupError> {
    let config = &ctx.config;
    let clients = ctx.pool.get(0).clone();
    let command = true_command();
    let actions: Vec<Blob> = (0..n)
        .map(|i| {
            actions::action(
                &command.digest,
                &Digest::EMPTY,
                &format!("farm-loadtest execute-cached {} {i}", config.seed),
                &config.platform,
            )
        })
        .collect();
    let mut blobs = vec![command.pair()];
    blobs.extend(actions.iter().map(Blob::pair));
    rpc::upload_all(
        &clients,
        &config.instance,
        blobs,
        SETUP_BATCH_BYTES,
        config.timeout,
    )
    .await?;
    let seeded: Vec<Result<_, SetupError>> = futures::stream::iter(actions.iter())
        .map(|a| {
            let clients = clients.clone();
            async move {
                rpc::setup(
                    "seeding results (UpdateActionResult)",
                    config.timeout,
                    rpc::update_action_result(
                        &clients,
                        &config.instance,
                        &a.digest,
                        cached_result(b"cached by farm-loadtest\n".to_vec()),
                    ),
                )
                .await
            }
        })
        .buffer_unordered(config.concurrency.clamp(1, 32))
        .collect()
        .await;
    for r in seeded {
        r?;
    }
    let digests: Arc<Vec<Digest>> = Arc::new(actions.iter().map(|a| a.digest).collect());
    let next = Arc::new(AtomicU64::new(0));
    let mut measured = measure(&ctx, config.concurrency, |i, budget| {
        let clients = ctx.pool.get(i).clone();
        let digests = digests.clone();
        let next = next.clone();
        let instance = ctx.config.instance.clone();
        async move {
            let mut rec = Recorder::new();
            while budget.take() {
                let k = next.fetch_add(1, Ordering::Relaxed) % digests.len() as u64;
                let start = Instant::now();
                let outcome = budget
                    .guard(rpc::execute(
                        &clients,
                        &instance,
                        &digests[k as usize],
                        false,
                    ))
                    .await;
                record_response(&mut rec, start, outcome);
            }
            rec
        }
    })
    .await;
    cached_ratio(&mut measured);
    Ok(measured)
}

pub async fn run_uncached(ctx: Arc<Context>) -> Result<Measured, SetupError> {
    let config = &ctx.config;
    let command = true_command();
    rpc::upload_all(
        ctx.pool.get(0),
        &config.instance,
        vec![command.pair()],
        SETUP_BATCH_BYTES,
        config.timeout,
    )
    .await?;
    let command = Arc::new(command.digest);
    let mut measured = measure(&ctx, config.concurrency, |i, budget| {
        let clients = ctx.pool.get(i).clone();
        let command = command.clone();
        let ctx = ctx.clone();
        async move { uncached_task(&ctx, clients, &command, i, budget).await }
    })
    .await;
    cached_ratio(&mut measured);
    Ok(measured)
}

async fn uncached_task(
    ctx: &Context,
    clients: Clients,
    command: &Digest,
    task: usize,
    budget: Arc<Budget>,
) -> Recorder {
    let config = &ctx.config;
    let mut rec = Recorder::new();
    let mut queue: Vec<Digest> = Vec::new();
    let mut made = 0u64;
    while budget.take() {
        if queue.is_empty() {
            let batch: Vec<Blob> = (0..UPLOAD_BATCH)
                .map(|k| {
                    actions::action(
                        command,
                        &Digest::EMPTY,
                        &format!(
                            "farm-loadtest execute {} {task} {}",
                            config.seed,
                            made + k as u64
                        ),
                        &config.platform,
                    )
                })
                .collect();
            made += UPLOAD_BATCH as u64;
            let bytes: u64 = batch.iter().map(|b| b.data.len() as u64).sum();
            let start = Instant::now();
            let outcome = budget
                .guard(rpc::batch_update(
                    &clients,
                    &config.instance,
                    batch.iter().map(Blob::pair).collect(),
                ))
                .await;
            // A failed upload fails this request's Execute, which cannot be sent.
            match outcome {
                Outcome::Done(Ok(failed)) if failed.is_empty() => {
                    rec.ok(UPLOAD, start.elapsed(), batch.len() as u64, bytes);
                    queue.extend(batch.iter().rev().map(|b| b.digest));
                }
                Outcome::Done(Ok(failed)) => {
                    rec.failed(EXECUTE, failed[0]);
                    continue;
                }
                other => {
                    let _ = rec.settle(EXECUTE, other);
                    continue;
                }
            }
        }
        let Some(action) = queue.pop() else { continue };
        let start = Instant::now();
        let outcome = budget
            .guard(rpc::execute(&clients, &config.instance, &action, true))
            .await;
        record_response(&mut rec, start, outcome);
    }
    rec
}
