//! The plan of one build: every unit of cargo's unit graph with its content-derived hash, the
//! files it produces, and where those appear in later actions' input roots. Commands are
//! derived per unit by [`crate::rustc`] and [`crate::build_script`] once the build scripts a
//! unit depends on have run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::cargo::{BuildMode, BuildRequest};
use crate::config::BuildConfig;
use crate::error::ResolveError;
use crate::hash::UnitHasher;
use crate::metadata::{PackageInfo, Packages, FARM_DIR};
use crate::overrides::Overrides;
use crate::toolchain::Toolchain;
use crate::unit_graph::{Mode, Unit, UnitGraph};

/// Exec-root directories every action uses.
pub mod layout {
    /// Outputs of compile actions.
    pub const OUT: &str = ".cargo-farm/out";
    /// Dependency artifacts (`-L dependency=`).
    pub const DEPS: &str = ".cargo-farm/deps";
    /// The toolchain (`bin/rustc`, `lib/`).
    pub const TOOLCHAIN: &str = ".cargo-farm/toolchain";
    /// Build-script executables and `OUT_DIR`s.
    pub const BUILD: &str = ".cargo-farm/build";
}

/// What a unit does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitKind {
    /// rustc: a library, binary, test, example, bench, proc-macro.
    Compile,
    /// rustc: a `build.rs`.
    BuildScriptCompile,
    /// Running a compiled build script.
    BuildScriptRun,
}

/// One unit, planned.
#[derive(Clone, Debug)]
pub struct PlannedUnit {
    pub index: usize,
    pub unit: Unit,
    pub kind: UnitKind,
    /// 16 hex digits: `-C metadata` and the file-name suffix.
    pub hash: String,
    /// The triple it is compiled for (the host's for host units).
    pub triple: String,
    /// `--target` is passed (a target unit of a cross or explicit-target build).
    pub explicit_target: bool,
    /// `-C extra-filename` value (`-<hash>`), or empty where cargo uses none.
    pub extra_filename: String,
    /// Files the action writes into [`layout::OUT`] (compile units).
    pub outputs: Vec<String>,
    /// What a dependent that links passes to `--extern` (rlib, .so) — or the executable.
    pub link_artifact: Option<String>,
    /// What a dependent that only needs metadata passes (rmeta when emitted).
    pub meta_artifact: Option<String>,
    /// `--emit` kinds.
    pub emit: Vec<&'static str>,
}

impl PlannedUnit {
    pub fn package_id(&self) -> &str {
        &self.unit.pkg_id
    }

    /// Whether this unit produces a linked artifact (its upstream needs full rlibs).
    pub fn links(&self) -> bool {
        if self.unit.mode == Mode::Check {
            return false;
        }
        self.unit.mode == Mode::Test
            || self
                .unit
                .target
                .crate_types
                .iter()
                .any(|t| t != "lib" && t != "rlib")
    }

    /// The directory a build-script run writes (`OUT_DIR`), exec-root-relative.
    pub fn out_dir(&self, package: &PackageInfo) -> String {
        format!("{}/{}-{}/out", layout::BUILD, package.name, self.hash)
    }

    /// Where a build-script executable is staged for its run, exec-root-relative.
    pub fn script_path(&self, package: &PackageInfo) -> String {
        format!(
            "{}/{}-{}/build-script-build",
            layout::BUILD,
            package.name,
            self.hash
        )
    }
}

/// Everything about one build.
#[derive(Clone, Debug)]
pub struct Plan {
    pub units: Vec<PlannedUnit>,
    pub roots: Vec<usize>,
    pub packages: Packages,
    pub toolchain: Toolchain,
    pub config: BuildConfig,
    pub overrides: Overrides,
    pub mode: BuildMode,
    /// `debug`, `release` or a custom profile's name: the directory under `target/`.
    pub profile_dir: String,
    /// The `--target` triples (empty for a host build).
    pub requested_targets: Vec<String>,
    /// Packages of the root units (`CARGO_PRIMARY_PACKAGE`).
    pub primary_packages: BTreeSet<String>,
    /// Units in an order where every unit comes after its dependencies.
    pub order: Vec<usize>,
}

impl Plan {
    /// Plans `graph`. `request` gives the profile and targets; `config` the flags from cargo's
    /// configuration and environment.
    pub fn new(
        graph: UnitGraph,
        packages: Packages,
        toolchain: Toolchain,
        config: BuildConfig,
        overrides: Overrides,
        request: &BuildRequest,
    ) -> Result<Plan, ResolveError> {
        let order = topological_order(&graph)?;
        let explicit = !request.targets.is_empty();
        let mut units: Vec<Option<PlannedUnit>> = vec![None; graph.units.len()];
        for &i in &order {
            let unit = &graph.units[i];
            let planned = plan_unit(i, unit, &units, &packages, &toolchain, &config, explicit)?;
            units[i] = Some(planned);
        }
        let units: Vec<PlannedUnit> = units.into_iter().flatten().collect();
        let primary_packages = graph
            .roots
            .iter()
            .map(|&r| graph.units[r].pkg_id.clone())
            .collect();
        let profile_dir = match (&request.profile, request.release) {
            (Some(p), _) if p == "dev" || p == "test" => "debug".to_string(),
            (Some(p), _) if p == "bench" => "release".to_string(),
            (Some(p), _) => p.clone(),
            (None, true) => "release".to_string(),
            (None, false) => "debug".to_string(),
        };
        Ok(Plan {
            units,
            roots: graph.roots,
            packages,
            toolchain,
            config,
            overrides,
            mode: request.mode,
            profile_dir,
            requested_targets: request.targets.clone(),
            primary_packages,
            order,
        })
    }

    pub fn unit(&self, i: usize) -> &PlannedUnit {
        &self.units[i]
    }

    pub fn package_of(&self, i: usize) -> Result<&PackageInfo, ResolveError> {
        self.packages.get(&self.units[i].unit.pkg_id)
    }

    /// Direct dependencies of `i` that are compile units with a library target.
    pub fn lib_deps(&self, i: usize) -> impl Iterator<Item = (&str, &PlannedUnit)> {
        self.units[i].unit.dependencies.iter().filter_map(|d| {
            let u = &self.units[d.index];
            (u.kind == UnitKind::Compile && u.unit.target.is_lib())
                .then_some((d.extern_crate_name.as_str(), u))
        })
    }

    /// Every library `i` needs in `-L dependency=`: its library dependencies and, except
    /// through proc-macros (whose dependencies rustc never loads), theirs, transitively.
    pub fn transitive_libs(&self, i: usize) -> Vec<usize> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<usize> = self.lib_deps(i).map(|(_, u)| u.index).collect();
        while let Some(u) = stack.pop() {
            if !seen.insert(u) {
                continue;
            }
            if self.units[u].unit.target.is_proc_macro() {
                continue;
            }
            stack.extend(self.lib_deps(u).map(|(_, d)| d.index));
        }
        seen.into_iter().collect()
    }

    /// The build-script run unit of `i`'s own package, if it has one.
    pub fn own_script_run(&self, i: usize) -> Option<usize> {
        self.units[i]
            .unit
            .dependencies
            .iter()
            .map(|d| d.index)
            .find(|&d| {
                self.units[d].kind == UnitKind::BuildScriptRun
                    && self.units[d].unit.pkg_id == self.units[i].unit.pkg_id
            })
    }

    /// Build-script runs whose `rustc-link-search` paths `i` gets: its own package's and those
    /// of every package in its library closure.
    pub fn link_search_runs(&self, i: usize) -> Vec<usize> {
        let mut runs = BTreeSet::new();
        runs.extend(self.own_script_run(i));
        for lib in self.transitive_libs(i) {
            runs.extend(self.own_script_run(lib));
        }
        runs.into_iter().collect()
    }

    /// The local files of a path package (empty for other sources, whose files come from
    /// their verified archives).
    pub fn target_directory(&self) -> &PathBuf {
        &self.packages.target_directory
    }

    /// Units that produce `OUT_DIR`s: build-script runs.
    pub fn is_run(&self, i: usize) -> bool {
        self.units[i].kind == UnitKind::BuildScriptRun
    }

    /// A label like `serde v1.0.228 (lib)` for progress and errors.
    pub fn describe(&self, i: usize) -> String {
        let u = &self.units[i];
        let (name, version) = match self.packages.get(&u.unit.pkg_id) {
            Ok(p) => (p.name.as_str(), p.version_text.as_str()),
            Err(_) => (u.unit.pkg_id.as_str(), ""),
        };
        let what = match u.kind {
            UnitKind::BuildScriptCompile => "build script".to_string(),
            UnitKind::BuildScriptRun => "build script run".to_string(),
            UnitKind::Compile => {
                let kind = u.unit.target.kind.join(",");
                let test = if u.unit.mode == Mode::Test {
                    " test"
                } else {
                    ""
                };
                if kind == "lib" || u.unit.target.name == name.replace('-', "_") && kind != "bin" {
                    format!("{kind}{test}")
                } else {
                    format!("{kind} \"{}\"{test}", u.unit.target.name)
                }
            }
        };
        let host = if u.explicit_target {
            format!(" [{}]", u.triple)
        } else {
            String::new()
        };
        format!("{name} v{version} ({what}){host}")
    }
}

fn plan_unit(
    index: usize,
    unit: &Unit,
    done: &[Option<PlannedUnit>],
    packages: &Packages,
    toolchain: &Toolchain,
    config: &BuildConfig,
    explicit_target: bool,
) -> Result<PlannedUnit, ResolveError> {
    let package = packages.get(&unit.pkg_id)?;
    let kind = match (unit.mode, unit.target.is_custom_build()) {
        (Mode::RunCustomBuild, _) => UnitKind::BuildScriptRun,
        (_, true) => UnitKind::BuildScriptCompile,
        (Mode::Build | Mode::Check | Mode::Test, false) => UnitKind::Compile,
        (mode, _) => {
            return Err(ResolveError::CannotModel {
                unit: format!("{} ({})", package.name, unit.target.name),
                why: format!("it is a {mode:?} unit, and cargo farm does not run rustdoc"),
            })
        }
    };
    let cannot = |why: String| ResolveError::CannotModel {
        unit: format!(
            "{} v{} ({})",
            package.name, package.version_text, unit.target.name
        ),
        why,
    };
    if let Some(backend) = &unit.profile.codegen_backend {
        return Err(cannot(format!(
            "its profile selects the codegen backend {backend:?}"
        )));
    }
    if unit.dependencies.iter().any(|d| d.noprelude) {
        return Err(cannot(
            "it depends on a `noprelude` crate (-Z build-std)".into(),
        ));
    }
    if !std::path::Path::new(&unit.target.src_path).starts_with(&package.manifest_dir) {
        return Err(cannot(format!(
            "its crate root {} is outside its package directory {}, whose files are all an \
             action sees",
            unit.target.src_path,
            package.manifest_dir.display()
        )));
    }
    if let Some(links) = &package.links {
        let triple = unit.platform.as_deref().unwrap_or(&toolchain.host);
        if config.overrides_links(triple, links) {
            return Err(cannot(format!(
                "cargo config overrides its build script (target.{triple}.{links})"
            )));
        }
    }
    let (triple, explicit) = match &unit.platform {
        Some(t) => (t.clone(), explicit_target),
        None => (toolchain.host.clone(), false),
    };
    let rustflags = config.rustflags_for(unit.platform.as_deref());
    let mut h = UnitHasher::new("cargo-farm unit v1");
    h.field("package", &package.name)
        .field("version", &package.version_text)
        .field("source", &package.stable_source())
        .field("target", &unit.target.name)
        .list("kind", unit.target.kind.iter().map(String::as_str))
        .list(
            "crate-types",
            unit.target.crate_types.iter().map(String::as_str),
        )
        .field("edition", &unit.target.edition)
        .field("mode", &format!("{:?}", unit.mode))
        .field("profile", &format!("{:?}", unit.profile))
        .list("features", unit.features.iter().map(String::as_str))
        .field("triple", &triple)
        .field("explicit-target", if explicit { "1" } else { "0" })
        .field("toolchain", &toolchain.version_verbose)
        .list("rustflags", rustflags.iter().map(String::as_str))
        .field("linker", config.linker_for(&triple).unwrap_or(""));
    let mut deps: Vec<(String, String)> = Vec::new();
    for d in &unit.dependencies {
        let dep = done[d.index].as_ref().ok_or_else(|| {
            ResolveError::Cargo("cargo's unit graph has a dependency cycle".into())
        })?;
        deps.push((d.extern_crate_name.clone(), dep.hash.clone()));
    }
    deps.sort();
    for (name, hash) in &deps {
        h.field("dep", &format!("{name}={hash}"));
    }
    let hash = h.finish();

    let target_info = toolchain.target(&triple)?;
    let crate_name = unit.target.crate_name();
    let is_test = unit.mode == Mode::Test;
    let no_extra = kind == UnitKind::Compile
        && !is_test
        && package.is_local
        && unit
            .target
            .crate_types
            .iter()
            .any(|t| t == "dylib" || t == "cdylib");
    let extra_filename = if no_extra {
        String::new()
    } else {
        format!("-{hash}")
    };
    let mut outputs = Vec::new();
    let mut link_artifact = None;
    let mut meta_artifact = None;
    let mut emit = vec!["dep-info"];
    if kind != UnitKind::BuildScriptRun {
        outputs.push(format!("{crate_name}{extra_filename}.d"));
        let crate_types: Vec<&str> = if is_test {
            vec!["bin"]
        } else {
            unit.target.crate_types.iter().map(String::as_str).collect()
        };
        let rlib_only = !is_test && crate_types.iter().all(|t| *t == "lib" || *t == "rlib");
        let rmeta = format!("lib{crate_name}{extra_filename}.rmeta");
        if unit.mode == Mode::Check {
            emit.push("metadata");
            outputs.push(rmeta.clone());
            meta_artifact = Some(rmeta);
        } else {
            if rlib_only {
                emit.push("metadata");
                outputs.push(rmeta.clone());
                meta_artifact = Some(rmeta);
            }
            emit.push("link");
            for ty in &crate_types {
                let name = target_info
                    .file_name(ty, &crate_name, &extra_filename)
                    .ok_or_else(|| {
                        ResolveError::Unsupported(format!(
                            "target {triple} does not support crate type {ty} ({})",
                            package.name
                        ))
                    })?;
                if !outputs.contains(&name) {
                    outputs.push(name.clone());
                }
                let links_here = matches!(*ty, "lib" | "rlib" | "proc-macro" | "dylib" | "bin");
                if link_artifact.is_none() && links_here {
                    link_artifact = Some(name);
                }
            }
            if meta_artifact.is_none() {
                meta_artifact = link_artifact.clone();
            }
        }
    }
    let _ = FARM_DIR;
    Ok(PlannedUnit {
        index,
        unit: unit.clone(),
        kind,
        hash,
        triple,
        explicit_target: explicit,
        extra_filename,
        outputs,
        link_artifact,
        meta_artifact,
        emit,
    })
}

/// Dependencies before dependents; a cycle is an error (cargo never prints one).
fn topological_order(graph: &UnitGraph) -> Result<Vec<usize>, ResolveError> {
    let n = graph.units.len();
    let mut state = vec![0u8; n]; // 0 new, 1 open, 2 done
    let mut order = Vec::with_capacity(n);
    for start in 0..n {
        if state[start] != 0 {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        state[start] = 1;
        while let Some((u, next)) = stack.pop() {
            let deps = &graph.units[u].dependencies;
            if next < deps.len() {
                stack.push((u, next + 1));
                let d = deps[next].index;
                match state[d] {
                    0 => {
                        state[d] = 1;
                        stack.push((d, 0));
                    }
                    1 => {
                        return Err(ResolveError::Cargo(
                            "cargo's unit graph has a dependency cycle".into(),
                        ))
                    }
                    _ => {}
                }
            } else {
                state[u] = 2;
                order.push(u);
            }
        }
    }
    Ok(order)
}

/// Counts of units by kind, for summaries.
pub fn count_kinds(plan: &Plan) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for u in &plan.units {
        let k = match u.kind {
            UnitKind::Compile => "compile",
            UnitKind::BuildScriptCompile => "build-script compile",
            UnitKind::BuildScriptRun => "build-script run",
        };
        *m.entry(k).or_default() += 1;
    }
    m
}
