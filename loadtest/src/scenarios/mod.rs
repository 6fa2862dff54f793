//! The scenarios and the measuring frame they share: setup before the clock, then load tasks
//! that each own a [`Recorder`], started together under one [`Budget`], with the generator's
//! CPU sampled around exactly that window.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::budget::Budget;
use crate::client::Pool;
use crate::cpu::{Sample, Usage};
use crate::options::{Config, ScenarioConfig};
use crate::rpc::SetupError;
use crate::stats::{Kind, Recorder};

pub mod ac;
pub mod cas_large;
pub mod cas_small;
pub mod execute;
pub mod graph;

/// What every scenario gets.
pub struct Context {
    pub config: Config,
    pub pool: Pool,
}

impl Context {
    pub fn instance(&self) -> &str {
        &self.config.instance
    }
}

/// The result of a run.
#[derive(Debug)]
pub struct Measured {
    pub recorder: Recorder,
    /// From the first request to the last answer.
    pub wall: Duration,
    pub cpu: Usage,
    /// Scenario figures for the JSON object (hit ratios, critical-path efficiency, ...).
    pub extra: Map<String, Value>,
    /// Scenario lines for the human report.
    pub notes: Vec<String>,
}

/// Runs `tasks` load tasks made by `task(i, budget)` until the budget stops them; merges
/// their recorders and measures wall time and the generator's CPU over that window.
pub async fn measure<F, Fut>(ctx: &Context, tasks: usize, task: F) -> Measured
where
    F: Fn(usize, Arc<Budget>) -> Fut,
    Fut: Future<Output = Recorder> + Send + 'static,
{
    let budget = Budget::start(ctx.config.stop, ctx.config.timeout);
    let cpu_start = Sample::now();
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks.max(1))
        .map(|i| tokio::spawn(task(i, budget.clone())))
        .collect();
    let mut recorder = Recorder::new();
    for h in handles {
        match h.await {
            Ok(r) => recorder.merge(&r),
            // A task that panicked lost its counts; say so rather than hide it.
            Err(_) => recorder.failed(Kind::auxiliary("load task"), "INTERNAL"),
        }
    }
    let wall = start.elapsed();
    let cpu = cpu_start.until(&Sample::now(), generator_cores(&ctx.config));
    Measured {
        recorder,
        wall,
        cpu,
        extra: Map::new(),
        notes: Vec::new(),
    }
}

/// Cores the generator may use: its runtime threads, at most the usable cores.
pub fn generator_cores(config: &Config) -> usize {
    config.threads.min(crate::options::usable_cores()).max(1)
}

/// Runs the configured scenario.
pub async fn run(ctx: Arc<Context>) -> Result<Measured, SetupError> {
    match ctx.config.settings.clone() {
        ScenarioConfig::CasSmall {
            sizes,
            batch,
            hit_ratio,
            ops,
            preload,
        } => {
            let s = cas_small::Settings {
                sizes,
                batch,
                hit_ratio,
                ops,
                preload,
            };
            cas_small::run(ctx, s).await
        }
        ScenarioConfig::CasLarge {
            blob_size,
            chunk_size,
            ops,
            preload,
        } => {
            let s = cas_large::Settings {
                blob_size,
                chunk_size,
                ops,
                preload,
            };
            cas_large::run(ctx, s).await
        }
        ScenarioConfig::Ac {
            hit_ratio,
            ops,
            preload,
        } => ac::run(ctx, hit_ratio, ops, preload).await,
        ScenarioConfig::ExecuteCached { actions } => execute::run_cached(ctx, actions).await,
        ScenarioConfig::Execute => execute::run_uncached(ctx).await,
        ScenarioConfig::Graph {
            width,
            depth,
            action,
            fan_in,
        } => {
            let shape = graph::Shape {
                width,
                depth,
                action,
                fan_in,
            };
            graph::run(ctx, shape).await
        }
    }
}
