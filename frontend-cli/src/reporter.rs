//! What the user sees: a progress bar (done/total, cache hits, running, failed) on a terminal,
//! compiler diagnostics as cargo prints them (or as cargo's JSON messages with
//! `--message-format json`), and the closing summary.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;
use resolver::Plan;
use serde_json::{json, Value};

/// How a unit ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    CacheHit,
    Executed,
    Failed,
}

/// Diagnostics of one rustc run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics {
    pub errors: usize,
    pub warnings: usize,
}

impl Diagnostics {
    /// ` due to 2 previous errors; 1 warning emitted`-style suffix, as cargo words it.
    pub fn plural(n: usize, what: &str) -> String {
        if n == 1 {
            format!("1 {what}")
        } else {
            format!("{n} {what}s")
        }
    }
}

/// Counters of a build.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: usize,
    pub done: usize,
    pub cache_hits: usize,
    pub executed: usize,
    pub failed: usize,
    pub running: usize,
}

/// Reports one build.
pub struct Reporter {
    bar: ProgressBar,
    json: bool,
    color: bool,
    counts: Mutex<Counts>,
    started: Instant,
}

impl Reporter {
    pub fn new(total: usize, json: bool) -> Reporter {
        let terminal = std::io::stderr().is_terminal();
        let bar = if terminal && !json {
            ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        let style =
            ProgressStyle::with_template("{prefix:>12.cyan.bold} [{bar:25}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix("Building");
        bar.enable_steady_tick(Duration::from_millis(200));
        Reporter {
            bar,
            json,
            color: terminal,
            counts: Mutex::new(Counts {
                total,
                ..Counts::default()
            }),
            started: Instant::now(),
        }
    }

    pub fn counts(&self) -> Counts {
        *self.counts.lock()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn refresh(&self, c: &Counts) {
        self.bar.set_position(c.done as u64);
        self.bar.set_message(format!(
            "{} cached, {} running, {} failed",
            c.cache_hits, c.running, c.failed
        ));
    }

    pub fn started(&self) {
        let mut c = self.counts.lock();
        c.running += 1;
        self.refresh(&c);
    }

    pub fn finished(&self, outcome: Outcome) {
        let mut c = self.counts.lock();
        c.running = c.running.saturating_sub(1);
        c.done += 1;
        match outcome {
            Outcome::CacheHit => c.cache_hits += 1,
            Outcome::Executed => c.executed += 1,
            Outcome::Failed => c.failed += 1,
        }
        self.refresh(&c);
    }

    /// A line on stderr, above the bar.
    pub fn eprintln(&self, line: &str) {
        self.bar.suspend(|| {
            let mut e = std::io::stderr().lock();
            let _ = writeln!(e, "{line}");
        });
    }

    /// A JSON message on stdout (only with `--message-format json`).
    pub fn message(&self, value: Value) {
        if self.json {
            self.bar.suspend(|| {
                let mut o = std::io::stdout().lock();
                let _ = writeln!(o, "{value}");
            });
        }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Shows rustc's JSON diagnostics from `stderr` of unit `i` as cargo does: each rendered
    /// diagnostic, rustc's own "N warnings emitted" / "aborting due to" summaries left out.
    pub fn diagnostics(&self, plan: &Plan, i: usize, stderr: &[u8]) -> Diagnostics {
        let text = String::from_utf8_lossy(stderr);
        let mut counts = Diagnostics::default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                if !line.trim().is_empty() {
                    self.eprintln(line);
                }
                continue;
            };
            if v.get("$message_type").and_then(Value::as_str) != Some("diagnostic") {
                continue;
            }
            let message = v.get("message").and_then(Value::as_str).unwrap_or_default();
            let summary_line = v
                .get("spans")
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty)
                && (message.starts_with("aborting due to")
                    || message.ends_with("warning emitted")
                    || message.ends_with("warnings emitted"));
            if summary_line {
                continue;
            }
            match v.get("level").and_then(Value::as_str) {
                Some("error") | Some("error: internal compiler error") => counts.errors += 1,
                Some("warning") => counts.warnings += 1,
                _ => {}
            }
            if self.json {
                self.message(json!({
                    "reason": "compiler-message",
                    "package_id": plan.unit(i).package_id(),
                    "manifest_path": manifest_path(plan, i),
                    "target": target_json(plan, i),
                    "message": v,
                }));
            } else if let Some(rendered) = v.get("rendered").and_then(Value::as_str) {
                let shown = if self.color {
                    rendered.to_string()
                } else {
                    strip_ansi(rendered)
                };
                // `rendered` ends with its own newline.
                self.eprint(&shown);
            }
        }
        counts
    }

    /// Text on stderr, above the bar, as is.
    pub fn eprint(&self, text: &str) {
        self.bar.suspend(|| {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "{text}");
        });
    }

    /// Ends the bar and prints the summary line (or the JSON summary).
    pub fn finish(&self, plan: &Plan, extra: Value) {
        self.bar.finish_and_clear();
        let c = self.counts();
        let secs = self.started.elapsed().as_secs_f64();
        let success = c.failed == 0 && c.done == c.total;
        if self.json {
            self.message(json!({"reason": "build-finished", "success": success}));
            let mut summary = json!({
                "reason": "farm-summary",
                "actions": c.total,
                "cache_hits": c.cache_hits,
                "executed": c.executed,
                "failed": c.failed,
                "skipped": c.total - c.done,
                "seconds": (secs * 1000.0).round() / 1000.0,
            });
            if let (Value::Object(s), Value::Object(e)) = (&mut summary, extra) {
                s.extend(e);
            }
            self.message(summary);
        } else {
            let profile = profile_label(plan);
            let head = if success { "Finished" } else { "Failed" };
            self.eprintln(&format!(
                "{head:>12} {profile} in {secs:.2}s: {} actions, {} cache hits, {} executed, {} failed{}",
                c.total,
                c.cache_hits,
                c.executed,
                c.failed,
                if c.total > c.done {
                    format!(", {} not run", c.total - c.done)
                } else {
                    String::new()
                }
            ));
        }
    }
}

/// `` `dev` profile [unoptimized + debuginfo] target(s)``, as cargo words it.
fn profile_label(plan: &Plan) -> String {
    let Some(root) = plan.roots.first() else {
        return "build".into();
    };
    let p = &plan.unit(*root).unit.profile;
    let opt = if p.opt_level == "0" {
        "unoptimized"
    } else {
        "optimized"
    };
    let debug = if p.has_debuginfo() {
        " + debuginfo"
    } else {
        ""
    };
    format!("`{}` profile [{opt}{debug}] target(s)", p.name)
}

pub fn manifest_path(plan: &Plan, i: usize) -> String {
    plan.package_of(i)
        .map(|p| p.manifest_dir.join("Cargo.toml").display().to_string())
        .unwrap_or_default()
}

pub fn target_json(plan: &Plan, i: usize) -> Value {
    let t = &plan.unit(i).unit.target;
    json!({
        "kind": t.kind,
        "crate_types": t.crate_types,
        "name": t.name,
        "src_path": t.src_path,
        "edition": t.edition,
        "doctest": t.doctest,
        "test": t.test,
    })
}

/// Removes ANSI escape sequences.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn strips_ansi() {
        assert_eq!(
            super::strip_ansi("\x1b[1m\x1b[31merror\x1b[0m: x"),
            "error: x"
        );
    }
}
