//! `graph`: a synthetic build graph submitted as a build client would.
//!
//! `--depth` levels of `--width` actions. An action of level `l > 0` reads the outputs of
//! `--fan-in` actions of level `l - 1` (always the one in its own column, so the critical path
//! is exactly `--depth` actions long, plus others drawn from the seed). Each action sleeps
//! `--action-ms`, then writes its inputs and its name to `out`. An action is uploaded (its
//! Command, input Directories, Action) and executed only once all its inputs are done, its
//! input root naming their output digests; at most `--concurrency` are in flight, like a
//! client's `-j`. A run's actions are new every time (a random nonce in their salts).
//!
//! Critical-path efficiency = ideal critical-path time (`depth × action-ms`) / measured wall
//! time of the run. A request here is one run of the whole graph (`--requests`, default 1).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cas::Digest;
use futures::stream::FuturesUnordered;
use futures::StreamExt as _;
use parking_lot::Mutex;
use serde_json::Value;

use super::{measure, Context, Measured};
use crate::actions::{self, Blob};
use crate::budget::{Budget, Outcome};
use crate::client::Clients;
use crate::content::{self, Rng};
use crate::rpc::{self, SetupError};
use crate::stats::{Kind, Recorder};

pub const EXECUTE: Kind = Kind::primary("execute");
pub const UPLOAD: Kind = Kind::auxiliary("upload_action");

/// The shape of the graph.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub width: usize,
    pub depth: usize,
    pub action: Duration,
    pub fan_in: usize,
}

impl Shape {
    pub fn nodes(&self) -> usize {
        self.width * self.depth
    }

    /// The inputs of each node: own column first, then distinct others of the level before.
    pub fn dependencies(&self, seed: u64) -> Vec<Vec<usize>> {
        let mut rng = Rng::new(content::key(seed, 0x6EA9));
        (0..self.nodes())
            .map(|n| {
                let (level, col) = (n / self.width, n % self.width);
                if level == 0 {
                    return Vec::new();
                }
                let base = (level - 1) * self.width;
                let mut cols = vec![col];
                while cols.len() < self.fan_in {
                    let c = rng.below(self.width as u64) as usize;
                    if !cols.contains(&c) {
                        cols.push(c);
                    }
                }
                cols.into_iter().map(|c| base + c).collect()
            })
            .collect()
    }

    pub fn ideal(&self) -> Duration {
        self.action * self.depth as u32
    }
}

/// One run's outcome.
#[derive(Clone, Copy, Debug)]
struct RunResult {
    wall: Duration,
    complete: bool,
}

/// The script every action runs: `$1` seconds of sleep, then inputs and name into `out`.
const SCRIPT: &str = "sleep \"$1\" && { cat deps/* 2>/dev/null; echo \"$2\"; } > out";

pub async fn run(ctx: Arc<Context>, shape: Shape) -> Result<Measured, SetupError> {
    let deps = Arc::new(shape.dependencies(ctx.config.seed));
    let runs = Arc::new(Mutex::new(Vec::<RunResult>::new()));
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let mut measured = measure(&ctx, 1, |_, budget| {
        let ctx = ctx.clone();
        let deps = deps.clone();
        let runs = runs.clone();
        let nonce = nonce.clone();
        async move {
            let mut rec = Recorder::new();
            let mut run_index = 0u64;
            while budget.take() {
                let salt = format!("farm-loadtest graph {nonce} {run_index}");
                let r = run_once(&ctx, shape, &deps, &salt, &budget, &mut rec).await;
                runs.lock().push(r);
                run_index += 1;
            }
            rec
        }
    })
    .await;
    let runs = runs.lock().clone();
    let mut complete: Vec<Duration> = runs.iter().filter(|r| r.complete).map(|r| r.wall).collect();
    complete.sort();
    let ideal = shape.ideal();
    let x = &mut measured.extra;
    x.insert("graph_actions".into(), Value::from(shape.nodes()));
    x.insert("graph_runs".into(), Value::from(runs.len()));
    x.insert("graph_runs_complete".into(), Value::from(complete.len()));
    x.insert(
        "ideal_critical_path_ms".into(),
        Value::from(ideal.as_secs_f64() * 1e3),
    );
    if let Some(median) = complete.get(complete.len() / 2) {
        let efficiency = ideal.as_secs_f64() / median.as_secs_f64().max(1e-9);
        x.insert(
            "graph_wall_ms".into(),
            Value::from(median.as_secs_f64() * 1e3),
        );
        x.insert("critical_path_efficiency".into(), Value::from(efficiency));
        measured.notes.push(format!(
            "graph {}x{} (fan-in {}, {} ms actions): ideal critical path {:.0} ms, run wall time \
             {:.0} ms{}: critical-path efficiency {:.3}",
            shape.width,
            shape.depth,
            shape.fan_in,
            shape.action.as_millis(),
            ideal.as_secs_f64() * 1e3,
            median.as_secs_f64() * 1e3,
            if complete.len() > 1 { " (median)" } else { "" },
            efficiency
        ));
    }
    if complete.len() < runs.len() {
        measured.notes.push(format!(
            "{} of {} graph runs did not complete (failures, or the run's time was up)",
            runs.len() - complete.len(),
            runs.len()
        ));
    }
    Ok(measured)
}

/// Per-node bookkeeping of one run.
struct Dag<'a> {
    deps: &'a [Vec<usize>],
    dependents: Vec<Vec<usize>>,
    waiting: Vec<usize>,
    blocked: Vec<bool>,
    outputs: Vec<Option<Digest>>,
    ready: VecDeque<usize>,
    skipped: u64,
}

impl<'a> Dag<'a> {
    fn new(shape: Shape, deps: &'a [Vec<usize>]) -> Self {
        let mut dependents = vec![Vec::new(); deps.len()];
        for (n, ds) in deps.iter().enumerate() {
            for &d in ds {
                dependents[d].push(n);
            }
        }
        Dag {
            deps,
            dependents,
            waiting: deps.iter().map(Vec::len).collect(),
            blocked: vec![false; deps.len()],
            outputs: vec![None; deps.len()],
            ready: (0..shape.width.min(deps.len())).collect(),
            skipped: 0,
        }
    }

    /// Node `n` finished with `output` (None: failed); releases or skips its dependents.
    fn finish(&mut self, n: usize, output: Option<Digest>) {
        let ok = output.is_some();
        self.outputs[n] = output;
        let mut stack = vec![(n, ok)];
        while let Some((n, ok)) = stack.pop() {
            for i in 0..self.dependents[n].len() {
                let d = self.dependents[n][i];
                self.waiting[d] -= 1;
                if !ok {
                    self.blocked[d] = true;
                }
                if self.waiting[d] == 0 {
                    if self.blocked[d] {
                        self.skipped += 1;
                        stack.push((d, false));
                    } else {
                        self.ready.push_back(d);
                    }
                }
            }
        }
    }

    /// The input files of node `n`: its dependencies' outputs.
    fn inputs(&self, n: usize) -> Vec<(String, Digest)> {
        self.deps[n]
            .iter()
            .filter_map(|&d| self.outputs[d].map(|o| (format!("n{d}"), o)))
            .collect()
    }
}

async fn run_once(
    ctx: &Context,
    shape: Shape,
    deps: &[Vec<usize>],
    salt: &str,
    budget: &Budget,
    rec: &mut Recorder,
) -> RunResult {
    let start = Instant::now();
    let mut dag = Dag::new(shape, deps);
    let mut in_flight = FuturesUnordered::new();
    let mut done = 0usize;
    let mut sent = 0usize;
    loop {
        while in_flight.len() < ctx.config.concurrency && !budget.is_stopped() {
            let Some(n) = dag.ready.pop_front() else {
                break;
            };
            let inputs = dag.inputs(n);
            let clients = ctx.pool.get(sent).clone();
            sent += 1;
            in_flight.push(run_node(ctx, clients, shape, n, inputs, salt, budget));
        }
        let Some((n, output, node_rec)) = in_flight.next().await else {
            break;
        };
        rec.merge(&node_rec);
        if output.is_some() {
            done += 1;
        }
        dag.finish(n, output);
    }
    rec.count("skipped", dag.skipped);
    RunResult {
        wall: start.elapsed(),
        complete: done == deps.len(),
    }
}

/// Uploads and executes node `n`; its output digest, and what it measured.
async fn run_node(
    ctx: &Context,
    clients: Clients,
    shape: Shape,
    n: usize,
    inputs: Vec<(String, Digest)>,
    salt: &str,
    budget: &Budget,
) -> (usize, Option<Digest>, Recorder) {
    let mut rec = Recorder::new();
    let instance = &ctx.config.instance;
    let args = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        SCRIPT.to_string(),
        "sh".to_string(),
        format!("{:.3}", shape.action.as_secs_f64()),
        format!("n{n} {salt}"),
    ];
    let command = actions::command(&args, &["out"]);
    let mut blobs: Vec<Blob> = vec![command.clone()];
    let root = if inputs.is_empty() {
        Digest::EMPTY
    } else {
        let dir = actions::directory_of_files(&inputs);
        let root = actions::directory_with_subdir("deps", &dir.digest);
        let d = root.digest;
        blobs.push(dir);
        blobs.push(root);
        d
    };
    let action = actions::action(&command.digest, &root, salt, &ctx.config.platform);
    let action_digest = action.digest;
    blobs.push(action);
    let bytes: u64 = blobs.iter().map(|b| b.data.len() as u64).sum();
    let count = blobs.len() as u64;
    let start = Instant::now();
    let outcome = budget
        .guard(rpc::batch_update(
            &clients,
            instance,
            blobs.iter().map(Blob::pair).collect(),
        ))
        .await;
    match outcome {
        Outcome::Done(Ok(failed)) if failed.is_empty() => {
            rec.ok(UPLOAD, start.elapsed(), count, bytes)
        }
        Outcome::Done(Ok(failed)) => {
            rec.failed(EXECUTE, failed[0]);
            return (n, None, rec);
        }
        other => {
            let _ = rec.settle(EXECUTE, other);
            return (n, None, rec);
        }
    }
    let start = Instant::now();
    let outcome = budget
        .guard(rpc::execute(&clients, instance, &action_digest, false))
        .await;
    let latency = start.elapsed();
    let Some(response) = rec.settle(EXECUTE, outcome) else {
        return (n, None, rec);
    };
    let code = rpc::status_name(response.status.as_ref());
    if code != "OK" {
        let message = response.status.as_ref().map_or("", |s| s.message.as_str());
        rec.failed_with(EXECUTE, code, message);
        return (n, None, rec);
    }
    let Some(result) = response.result else {
        rec.failed(EXECUTE, "INTERNAL");
        return (n, None, rec);
    };
    if result.exit_code != 0 {
        rec.failed(EXECUTE, "EXIT_NONZERO");
        return (n, None, rec);
    }
    let output = result
        .output_files
        .iter()
        .find(|f| f.path == "out")
        .and_then(|f| Digest::from_proto(f.digest.as_ref()).ok());
    match output {
        Some(d) => {
            rec.ok(EXECUTE, latency, 1, d.size());
            (n, Some(d), rec)
        }
        None => {
            rec.failed(EXECUTE, "MISSING_OUTPUT");
            (n, None, rec)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_depends_on_its_column_and_fan_in_distinct_others() {
        let shape = Shape {
            width: 5,
            depth: 3,
            action: Duration::from_millis(10),
            fan_in: 3,
        };
        let deps = shape.dependencies(1);
        assert_eq!(deps.len(), 15);
        assert!(deps[..5].iter().all(Vec::is_empty));
        for (n, ds) in deps.iter().enumerate().skip(5) {
            assert_eq!(ds.len(), 3);
            assert_eq!(ds[0], n - 5);
            let mut u = ds.clone();
            u.sort();
            u.dedup();
            assert_eq!(u.len(), 3);
            assert!(ds.iter().all(|d| d / 5 == n / 5 - 1));
        }
        assert_eq!(shape.ideal(), Duration::from_millis(30));
    }

    #[test]
    fn a_failure_skips_everything_downstream() {
        let shape = Shape {
            width: 2,
            depth: 3,
            action: Duration::ZERO,
            fan_in: 1,
        };
        let deps = shape.dependencies(1);
        let mut dag = Dag::new(shape, &deps);
        assert_eq!(dag.ready.drain(..).collect::<Vec<_>>(), vec![0, 1]);
        dag.finish(0, None);
        dag.finish(1, Some(Digest::of(b"x")));
        assert_eq!(dag.ready.drain(..).collect::<Vec<_>>(), vec![3]);
        assert_eq!(dag.skipped, 2);
        assert_eq!(dag.inputs(3), vec![("n1".to_string(), Digest::of(b"x"))]);
    }
}
