//! Cargo's unit graph (`cargo build --unit-graph -Z unstable-options`, format version 1): every
//! compilation or build-script run cargo would perform, with its dependencies.
//!
//! The types mirror cargo's JSON exactly enough to plan from; unknown fields are ignored so a
//! newer cargo that adds fields still parses, while a format version other than 1 is refused.

use serde::Deserialize;

use crate::error::ResolveError;

/// The whole graph: units (indexed by position) and the indices of the requested ones.
#[derive(Clone, Debug, Deserialize)]
pub struct UnitGraph {
    pub version: u32,
    pub units: Vec<Unit>,
    pub roots: Vec<usize>,
}

impl UnitGraph {
    /// Parses `cargo build --unit-graph` output, checking the format version and that every
    /// index points at a unit.
    pub fn parse(json: &[u8]) -> Result<UnitGraph, ResolveError> {
        let graph: UnitGraph = serde_json::from_slice(json).map_err(|e| {
            ResolveError::Cargo(format!("cargo printed a unit graph we cannot read: {e}"))
        })?;
        if graph.version != 1 {
            return Err(ResolveError::Cargo(format!(
                "cargo printed unit graph format version {}; this cargo-farm reads version 1",
                graph.version
            )));
        }
        let n = graph.units.len();
        let bad_root = graph.roots.iter().find(|&&r| r >= n);
        let bad_dep = graph
            .units
            .iter()
            .flat_map(|u| u.dependencies.iter())
            .find(|d| d.index >= n);
        if bad_root.is_some() || bad_dep.is_some() {
            return Err(ResolveError::Cargo(
                "cargo's unit graph refers to a unit index it does not define".into(),
            ));
        }
        Ok(graph)
    }
}

/// One unit of work.
#[derive(Clone, Debug, Deserialize)]
pub struct Unit {
    pub pkg_id: String,
    pub target: UnitTarget,
    pub profile: UnitProfile,
    /// The target triple, or `None` for the host (build scripts, proc-macros and, without
    /// `--target`, everything).
    pub platform: Option<String>,
    pub mode: Mode,
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub dependencies: Vec<UnitDep>,
}

/// The Cargo target (lib, bin, test, ...) a unit compiles.
#[derive(Clone, Debug, Deserialize)]
pub struct UnitTarget {
    pub kind: Vec<String>,
    pub crate_types: Vec<String>,
    pub name: String,
    pub src_path: String,
    pub edition: String,
    #[serde(default)]
    pub test: bool,
    #[serde(default)]
    pub doctest: bool,
}

impl UnitTarget {
    pub fn is_custom_build(&self) -> bool {
        self.kind.iter().any(|k| k == "custom-build")
    }

    pub fn is_proc_macro(&self) -> bool {
        self.crate_types.iter().any(|k| k == "proc-macro")
    }

    /// A library target (what `--extern` can name): lib, rlib, dylib, proc-macro.
    pub fn is_lib(&self) -> bool {
        self.kind.iter().any(|k| {
            matches!(
                k.as_str(),
                "lib" | "rlib" | "dylib" | "cdylib" | "staticlib" | "proc-macro"
            )
        })
    }

    pub fn is_bin(&self) -> bool {
        self.kind.iter().any(|k| k == "bin")
    }

    pub fn is_example(&self) -> bool {
        self.kind.iter().any(|k| k == "example")
    }

    pub fn is_test_target(&self) -> bool {
        self.kind.iter().any(|k| k == "test")
    }

    pub fn is_bench_target(&self) -> bool {
        self.kind.iter().any(|k| k == "bench")
    }

    /// The crate name rustc gets: the target name with `-` replaced by `_`.
    pub fn crate_name(&self) -> String {
        self.name.replace('-', "_")
    }
}

/// A profile as cargo resolved it for one unit.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Hash)]
pub struct UnitProfile {
    pub name: String,
    pub opt_level: String,
    pub lto: String,
    #[serde(default)]
    pub codegen_backend: Option<String>,
    #[serde(default)]
    pub codegen_units: Option<u32>,
    pub debuginfo: Option<DebugInfo>,
    #[serde(default)]
    pub split_debuginfo: Option<String>,
    pub debug_assertions: bool,
    pub overflow_checks: bool,
    pub rpath: bool,
    pub incremental: bool,
    pub panic: String,
    #[serde(default)]
    pub strip: Option<serde_json::Value>,
}

/// `debuginfo`: a level (0, 1, 2) or a name (`line-tables-only`, `line-directives-only`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(untagged)]
pub enum DebugInfo {
    Level(u32),
    Named(String),
}

impl DebugInfo {
    /// The `-C debuginfo=` value, or `None` for no debug info.
    pub fn flag_value(&self) -> Option<String> {
        match self {
            DebugInfo::Level(0) => None,
            DebugInfo::Level(n) => Some(n.to_string()),
            DebugInfo::Named(s) if s == "none" || s == "0" => None,
            DebugInfo::Named(s) => Some(s.clone()),
        }
    }
}

impl UnitProfile {
    /// Whether any debug info is generated.
    pub fn has_debuginfo(&self) -> bool {
        self.debuginfo
            .as_ref()
            .and_then(|d| d.flag_value())
            .is_some()
    }

    /// The resolved `strip` setting (`none`, `debuginfo`, `symbols`).
    pub fn strip(&self) -> String {
        let value = self.strip.as_ref();
        let named = |v: &serde_json::Value| -> Option<String> {
            match v {
                serde_json::Value::String(s) => Some(s.to_lowercase()),
                serde_json::Value::Object(m) => m
                    .get("Named")
                    .and_then(|n| n.as_str())
                    .map(|s| s.to_lowercase()),
                _ => None,
            }
        };
        if let Some(serde_json::Value::Object(m)) = value {
            if let Some(resolved) = m.get("resolved") {
                return named(resolved).unwrap_or_else(|| "none".into());
            }
            // Cargo resolves the default itself where it applies (release without debuginfo
            // shows up as `resolved`); a still-deferred setting keeps its own value.
            if let Some(deferred) = m.get("deferred") {
                return named(deferred).unwrap_or_else(|| "none".into());
            }
        }
        value.and_then(named).unwrap_or_else(|| "none".into())
    }
}

/// What a unit does.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Build,
    Check,
    Test,
    RunCustomBuild,
    Doc,
    Doctest,
    Docscrape,
}

/// An edge of the graph.
#[derive(Clone, Debug, Deserialize)]
pub struct UnitDep {
    pub index: usize,
    pub extern_crate_name: String,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub noprelude: bool,
}
