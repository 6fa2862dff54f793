//! Runs one build's action graph: each unit becomes an action as soon as the units it depends
//! on are done (build-script outputs feed the actions after them), at most `jobs` in flight,
//! each looked up in the farm's cache and executed on a miss. Stops starting new work after the
//! first failure, as cargo does.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use anyhow::{anyhow, Result};
use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use parking_lot::Mutex;
use resolver::build_script_output::BuildScriptOutput;
use resolver::{build_script, rustc, ActionSpec, Plan, UnitKind};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::action_proto::{self, EncodedAction};
use crate::client::{ActionLabel, FarmClient};
use crate::diagnose;
use crate::inputs::InputComposer;
use crate::reporter::{Diagnostics, Outcome, Reporter};
use crate::results::{Results, UnitResult};
use crate::uploader::{BlobSource, Uploader};

/// Where actions that miss the cache run.
pub enum Execution {
    /// On the farm (remote or embedded), through Execute.
    Farm,
    /// On this machine's sandbox; results are written to the farm's action cache.
    Local(Arc<worker::Executor>),
}

/// Everything one build shares.
pub struct Build {
    pub plan: Arc<Plan>,
    pub client: FarmClient,
    pub uploader: Arc<Uploader>,
    pub composer: InputComposer,
    pub results: Results,
    pub reporter: Reporter,
    pub execution: Execution,
    pub jobs: usize,
    /// Print each action's command line (`-v`).
    pub verbose: bool,
    scripts: Mutex<HashMap<usize, BuildScriptOutput>>,
}

/// How one unit ended.
struct UnitEnd {
    unit: usize,
    outcome: Result<Outcome>,
}

impl Build {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        plan: Arc<Plan>,
        client: FarmClient,
        uploader: Arc<Uploader>,
        composer: InputComposer,
        reporter: Reporter,
        execution: Execution,
        jobs: usize,
    ) -> Build {
        Build {
            plan,
            client,
            uploader,
            composer,
            results: Results::default(),
            reporter,
            execution,
            jobs: jobs.max(1),
            verbose: false,
            scripts: Mutex::new(HashMap::new()),
        }
    }

    /// Runs every unit; true if all succeeded.
    pub async fn run(self: &Arc<Self>) -> bool {
        let plan = &self.plan;
        let n = plan.units.len();
        let mut waiting: Vec<usize> = vec![0; n];
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
        for u in &plan.units {
            let mut deps: Vec<usize> = u.unit.dependencies.iter().map(|d| d.index).collect();
            deps.sort_unstable();
            deps.dedup();
            waiting[u.index] = deps.len();
            for d in deps {
                dependents[d].push(u.index);
            }
        }
        let mut ready: VecDeque<usize> = plan
            .order
            .iter()
            .copied()
            .filter(|&i| waiting[i] == 0)
            .collect();
        let mut running = JoinSet::new();
        let mut failed = false;
        loop {
            while !failed && running.len() < self.jobs {
                let Some(i) = ready.pop_front() else { break };
                let build = self.clone();
                running.spawn(async move {
                    build.reporter.started();
                    let outcome = build.run_unit(i).await;
                    UnitEnd { unit: i, outcome }
                });
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let end = match joined {
                Ok(end) => end,
                Err(e) => {
                    self.reporter
                        .eprintln(&format!("error: a build task panicked: {e}"));
                    self.reporter.finished(Outcome::Failed);
                    failed = true;
                    continue;
                }
            };
            match end.outcome {
                Ok(Outcome::Failed) => {
                    self.reporter.finished(Outcome::Failed);
                    failed = true;
                }
                Ok(outcome) => {
                    self.reporter.finished(outcome);
                    for &d in &dependents[end.unit] {
                        waiting[d] -= 1;
                        if waiting[d] == 0 {
                            ready.push_back(d);
                        }
                    }
                }
                Err(e) => {
                    self.reporter
                        .eprintln(&format!("error: {}: {e:#}", self.plan.describe(end.unit)));
                    self.reporter.finished(Outcome::Failed);
                    failed = true;
                }
            }
        }
        !failed && self.reporter.counts().done == n
    }

    fn spec(&self, i: usize) -> Result<ActionSpec> {
        let scripts = self.scripts.lock();
        Ok(match self.plan.unit(i).kind {
            UnitKind::BuildScriptRun => build_script::run_action(&self.plan, i, &*scripts)?,
            UnitKind::Compile | UnitKind::BuildScriptCompile => {
                rustc::compile_action(&self.plan, i, &*scripts)?
            }
        })
    }

    async fn run_unit(&self, i: usize) -> Result<Outcome> {
        let spec = self.spec(i)?;
        let outcome = self.run_spec(i, &spec).await?;
        let exited_ok = self.results.get(i).is_some_and(|r| r.exit_code == 0);
        if outcome != Outcome::Failed || exited_ok {
            // Success, or a failure already reported (a build script's `cargo::error`).
            return Ok(outcome);
        }
        // A compile that reached into another target's crate root (left out of its inputs):
        // run it again with the whole package.
        let excluded = excluded_paths(&spec);
        let stderr = self
            .results
            .get(i)
            .map(|r| String::from_utf8_lossy(&r.stderr).into_owned())
            .unwrap_or_default();
        if excluded.iter().any(|p| stderr.contains(p.as_str())) {
            let mut full = spec.clone();
            for input in &mut full.inputs {
                if let resolver::Input::Package { exclude, .. } = input {
                    exclude.clear();
                }
            }
            return self.run_spec(i, &full).await;
        }
        self.report_failure(i, &spec, &self.results.get(i).unwrap_or_default());
        Ok(Outcome::Failed)
    }

    async fn run_spec(&self, i: usize, spec: &ActionSpec) -> Result<Outcome> {
        let spec = spec.clone();
        let root = self.composer.input_root(&spec, &self.results).await?;
        let encoded = action_proto::encode(&spec, root, false);
        self.uploader
            .ensure(vec![
                (
                    encoded.command_digest,
                    BlobSource::Bytes(encoded.command_bytes.clone()),
                ),
                (
                    encoded.action_digest,
                    BlobSource::Bytes(encoded.action_bytes.clone()),
                ),
            ])
            .await?;
        let (result, cached) = self.execute(i, &encoded).await?;
        if self.verbose {
            let cwd = if spec.working_directory.is_empty() {
                String::new()
            } else {
                format!(" (in {})", spec.working_directory)
            };
            self.reporter.eprintln(&format!(
                "{:>12} `{}`{cwd}",
                if cached { "Cached" } else { "Ran" },
                spec.argv_line()
            ));
        }
        let unit_result =
            UnitResult::from_action_result(&self.client, &result, &spec.working_directory, cached)
                .await?;
        self.uploader.mark_present(unit_result.digests());
        let dirs = unit_result
            .out_dir_blobs
            .iter()
            .map(|(d, b)| (*d, BlobSource::Bytes(b.clone())))
            .collect();
        self.uploader.ensure(dirs).await?;
        let unit_result = self.results.insert(i, unit_result);
        let kind = self.plan.unit(i).kind;
        if unit_result.exit_code != 0 {
            return Ok(Outcome::Failed);
        }
        if kind == UnitKind::BuildScriptRun {
            let package = self.plan.package_of(i)?;
            let stdout = String::from_utf8_lossy(&unit_result.stdout);
            let output = BuildScriptOutput::parse(&stdout, &package.name)?;
            for w in &output.warnings {
                self.reporter.eprintln(&format!(
                    "warning: {}@{}: {w}",
                    package.name, package.version_text
                ));
            }
            if !output.errors.is_empty() {
                for e in &output.errors {
                    self.reporter.eprintln(&format!(
                        "error: {}@{}: {e}",
                        package.name, package.version_text
                    ));
                }
                return Ok(Outcome::Failed);
            }
            self.reporter.message(json!({
                "reason": "build-script-executed",
                "package_id": package.id,
                "linked_libs": output.link_libs,
                "linked_paths": output.link_search,
                "cfgs": output.cfgs,
                "env": output.env,
                "out_dir": rustc::exec_abs(&self.plan.unit(i).out_dir(package)),
            }));
            self.scripts.lock().insert(i, output);
        } else {
            let d = self
                .reporter
                .diagnostics(&self.plan, i, &unit_result.stderr);
            if d.warnings > 0 && !self.reporter.is_json() {
                self.reporter.eprintln(&format!(
                    "warning: `{}` ({}) generated {}\n",
                    self.plan
                        .package_of(i)
                        .map(|p| p.name.clone())
                        .unwrap_or_default(),
                    unit_label(&self.plan, i),
                    Diagnostics::plural(d.warnings, "warning")
                ));
            }
        }
        Ok(if cached {
            Outcome::CacheHit
        } else {
            Outcome::Executed
        })
    }

    /// The action's result and whether it came from the cache.
    async fn execute(&self, i: usize, a: &EncodedAction) -> Result<(reapi::ActionResult, bool)> {
        let target = self.plan.describe(i);
        let label = ActionLabel {
            target: &target,
            mnemonic: match self.plan.unit(i).kind {
                UnitKind::BuildScriptRun => "CargoBuildScriptRun",
                _ => "Rustc",
            },
        };
        match &self.execution {
            Execution::Farm => {
                let response = self.client.execute(&a.action_digest, label).await?;
                let result = check_response(&response)?;
                Ok((result, response.cached_result))
            }
            Execution::Local(executor) => {
                if let Some(hit) = self.client.cached_result(&a.action_digest, label).await? {
                    return Ok((hit, true));
                }
                let job = worker::Job {
                    instance_name: self.client.store.instance_name().to_string(),
                    action_digest: a.action_digest,
                    action: a.action.clone(),
                    command: a.command.clone(),
                    timeout: None,
                };
                let response = executor
                    .execute(&job, &CancellationToken::new(), &|_| {})
                    .await;
                let result = check_response(&response)?;
                if result.exit_code == 0 {
                    self.client
                        .store_result(&a.action_digest, &result, label)
                        .await?;
                }
                Ok((result, false))
            }
        }
    }

    fn report_failure(&self, i: usize, spec: &ActionSpec, r: &UnitResult) {
        let plan = &self.plan;
        let u = plan.unit(i);
        match u.kind {
            UnitKind::BuildScriptRun => {
                let package = plan
                    .package_of(i)
                    .map(|p| format!("{} v{}", p.name, p.version_text));
                let mut text = format!(
                    "error: failed to run custom build command for `{}`\n\nCaused by:\n  process \
                     didn't exit successfully: `{}` (exit status: {})",
                    package.unwrap_or_default(),
                    spec.argv_line(),
                    r.exit_code
                );
                for (name, body) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
                    text.push_str(&format!("\n  --- {name}\n"));
                    for line in String::from_utf8_lossy(body).lines() {
                        text.push_str(&format!("  {line}\n"));
                    }
                }
                self.reporter.eprintln(text.trim_end());
                for note in diagnose::sandbox_notes(plan, i, &r.stdout, &r.stderr) {
                    self.reporter.eprintln(&note);
                }
            }
            UnitKind::Compile | UnitKind::BuildScriptCompile => {
                let d = self.reporter.diagnostics(plan, i, &r.stderr);
                let name = plan
                    .package_of(i)
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                let what = unit_label(plan, i);
                let mut count = if d.errors > 0 {
                    format!("due to {}", Diagnostics::plural(d.errors, "previous error"))
                } else {
                    format!("(rustc exited with {})", r.exit_code)
                };
                if d.warnings > 0 {
                    count.push_str(&format!(
                        "; {} emitted",
                        Diagnostics::plural(d.warnings, "warning")
                    ));
                }
                self.reporter.eprintln(&format!(
                    "error: could not compile `{name}` ({what}) {count}"
                ));
            }
        }
    }
}

/// The package files a spec leaves out, relative to their package (so that rustc's
/// `src/../examples/x.rs` spelling matches too).
fn excluded_paths(spec: &ActionSpec) -> Vec<String> {
    let mut out = Vec::new();
    for input in &spec.inputs {
        if let resolver::Input::Package { exclude, .. } = input {
            out.extend(exclude.iter().map(|e| e.trim_end_matches('/').to_string()));
        }
    }
    out
}

/// `lib`, `bin "app"`, `build script`, `test "report"`: how cargo names a unit in messages.
fn unit_label(plan: &Plan, i: usize) -> String {
    let u = plan.unit(i);
    if u.kind == UnitKind::BuildScriptCompile {
        return "build script".into();
    }
    let t = &u.unit.target;
    let kind = t.kind.first().cloned().unwrap_or_default();
    let base = if t.is_lib() {
        kind
    } else {
        format!("{kind} \"{}\"", t.name)
    };
    if u.unit.mode == resolver::unit_graph::Mode::Test {
        format!("{base} test")
    } else {
        base
    }
}

/// The ActionResult of a response whose status is OK, or the status as an error.
fn check_response(r: &reapi::ExecuteResponse) -> Result<reapi::ActionResult> {
    if let Some(s) = &r.status {
        if s.code != 0 {
            let code = tonic::Code::from(s.code);
            return Err(anyhow!(
                "the farm could not run the action: {} ({code:?})",
                s.message
            ));
        }
    }
    r.result
        .clone()
        .ok_or_else(|| anyhow!("the farm answered without an ActionResult"))
}
