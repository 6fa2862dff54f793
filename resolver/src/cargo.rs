//! Asking cargo: `cargo metadata` for packages and `cargo build --unit-graph` for the units of a
//! build, both with the user's selection flags passed through.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::ResolveError;
use crate::unit_graph::UnitGraph;

/// What to compile: metadata only (`check`) or real artifacts (`build`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BuildMode {
    #[default]
    Build,
    Check,
}

/// Which targets of the selected packages to build (cargo's target-selection flags).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetSelection {
    pub lib: bool,
    pub bins: bool,
    pub bin: Vec<String>,
    pub examples: bool,
    pub example: Vec<String>,
    pub tests: bool,
    pub test: Vec<String>,
    pub benches: bool,
    pub all_targets: bool,
}

/// A build as the user asked for it, in cargo's terms.
#[derive(Clone, Debug, Default)]
pub struct BuildRequest {
    pub cargo: Option<PathBuf>,
    /// `--manifest-path`; `None` lets cargo find the manifest from the current directory.
    pub manifest_path: Option<PathBuf>,
    /// The directory cargo runs in (and finds `.cargo/config.toml` from).
    pub cwd: Option<PathBuf>,
    pub mode: BuildMode,
    pub packages: Vec<String>,
    pub workspace: bool,
    pub exclude: Vec<String>,
    pub release: bool,
    pub profile: Option<String>,
    /// `--target` triples (empty: the host).
    pub targets: Vec<String>,
    pub features: Vec<String>,
    pub all_features: bool,
    pub no_default_features: bool,
    pub locked: bool,
    pub offline: bool,
    pub frozen: bool,
    pub selection: TargetSelection,
}

impl BuildRequest {
    fn cargo(&self) -> PathBuf {
        self.cargo
            .clone()
            .or_else(|| std::env::var_os("CARGO").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("cargo"))
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(self.cargo());
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        cmd
    }

    /// Flags every cargo call shares: manifest and lock policy.
    fn common_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(m) = &self.manifest_path {
            args.push("--manifest-path".into());
            args.push(m.display().to_string());
        }
        for (on, flag) in [
            (self.locked, "--locked"),
            (self.offline, "--offline"),
            (self.frozen, "--frozen"),
        ] {
            if on {
                args.push(flag.into());
            }
        }
        args
    }

    /// Feature flags (shared by metadata and the unit graph).
    fn feature_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if !self.features.is_empty() {
            args.push("--features".into());
            args.push(self.features.join(","));
        }
        if self.all_features {
            args.push("--all-features".into());
        }
        if self.no_default_features {
            args.push("--no-default-features".into());
        }
        args
    }

    /// The arguments of `cargo build|check --unit-graph`.
    pub fn unit_graph_args(&self) -> Vec<String> {
        let mut args = self.build_args();
        args.splice(
            1..1,
            ["--unit-graph", "-Z", "unstable-options"].map(String::from),
        );
        args
    }

    /// The arguments of the plain `cargo build|check` this request stands for.
    pub fn build_args(&self) -> Vec<String> {
        let mut args = vec![match self.mode {
            BuildMode::Build => "build".to_string(),
            BuildMode::Check => "check".to_string(),
        }];
        args.extend(self.common_args());
        for p in &self.packages {
            args.push("-p".into());
            args.push(p.clone());
        }
        if self.workspace {
            args.push("--workspace".into());
        }
        for e in &self.exclude {
            args.push("--exclude".into());
            args.push(e.clone());
        }
        if self.release {
            args.push("--release".into());
        }
        if let Some(p) = &self.profile {
            args.push("--profile".into());
            args.push(p.clone());
        }
        for t in &self.targets {
            args.push("--target".into());
            args.push(t.clone());
        }
        args.extend(self.feature_args());
        let s = &self.selection;
        for (on, flag) in [
            (s.lib, "--lib"),
            (s.bins, "--bins"),
            (s.examples, "--examples"),
            (s.tests, "--tests"),
            (s.benches, "--benches"),
            (s.all_targets, "--all-targets"),
        ] {
            if on {
                args.push(flag.into());
            }
        }
        for (names, flag) in [
            (&s.bin, "--bin"),
            (&s.example, "--example"),
            (&s.test, "--test"),
        ] {
            for n in names {
                args.push(flag.into());
                args.push(n.clone());
            }
        }
        args
    }

    /// Runs `cargo metadata` (all features resolved as requested, every platform).
    pub fn metadata(&self) -> Result<crate::metadata::Metadata, ResolveError> {
        let mut cmd = self.command();
        cmd.args(["metadata", "--format-version", "1"]);
        cmd.args(self.common_args());
        cmd.args(self.feature_args());
        let out = run(&mut cmd, Some("cargo metadata"))?;
        serde_json::from_slice(&out)
            .map_err(|e| ResolveError::Cargo(format!("cannot read cargo metadata's output: {e}")))
    }

    /// Runs `cargo build --unit-graph` with `RUSTC_BOOTSTRAP=1` for that call only (the flag is
    /// unstable on stable toolchains).
    pub fn unit_graph(&self) -> Result<UnitGraph, ResolveError> {
        let mut cmd = self.command();
        cmd.args(self.unit_graph_args());
        cmd.env("RUSTC_BOOTSTRAP", "1");
        let out = run(&mut cmd, Some("cargo build --unit-graph")).map_err(|e| match e {
            ResolveError::Cargo(m) => ResolveError::Cargo(format!(
                "{m}\ncargo-farm plans builds from cargo's unit graph (`cargo build --unit-graph \
                 -Z unstable-options`, enabled with RUSTC_BOOTSTRAP=1); this cargo refused it"
            )),
            other => other,
        })?;
        UnitGraph::parse(&out)
    }
}

/// Runs `cmd`, returning stdout, or an error naming `what` (or the command line, when `what` is
/// `None`) with the program's own stderr.
pub(crate) fn run(cmd: &mut Command, what: Option<&str>) -> Result<Vec<u8>, ResolveError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|source| ResolveError::Spawn {
        program: program.clone(),
        source,
    })?;
    if !out.status.success() {
        let shown = match what {
            Some(w) => w.to_string(),
            None => {
                let args: Vec<String> = cmd
                    .get_args()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                format!("{program} {}", args.join(" "))
            }
        };
        return Err(ResolveError::Cargo(format!(
            "`{shown}` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        )));
    }
    Ok(out.stdout)
}

/// The directory holding `manifest` (a `Cargo.toml` path).
pub fn manifest_dir(manifest: &Path) -> &Path {
    manifest.parent().unwrap_or(Path::new("."))
}
