//! The rustc action of a compile unit (library, binary, test, example, proc-macro, build
//! script): cargo's command line with exec-root-relative paths, its environment, and exactly
//! the inputs it reads.

use std::collections::BTreeMap;

use crate::action::{ActionSpec, Input, EXEC_ROOT};
use crate::build_script_output::{BuildScriptOutput, LinkArgScope};
use crate::error::ResolveError;
use crate::metadata::PackageInfo;
use crate::overrides::Overrides;
use crate::plan::{layout, Plan, PlannedUnit, UnitKind};
use crate::unit_graph::Mode;

/// Parsed outputs of the build-script runs done so far, by run unit.
pub trait ScriptOutputs {
    fn script_output(&self, run_unit: usize) -> Option<&BuildScriptOutput>;
}

impl ScriptOutputs for std::collections::HashMap<usize, BuildScriptOutput> {
    fn script_output(&self, run_unit: usize) -> Option<&BuildScriptOutput> {
        self.get(&run_unit)
    }
}

/// `PATH` inside every sandbox: the system's compilers and linkers.
pub const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The environment cargo gives every rustc and build script of `package`.
pub fn package_env(package: &PackageInfo) -> Vec<(String, String)> {
    let v = &package.version;
    let dir = exec_abs(&package.exec_dir);
    vec![
        ("CARGO_MANIFEST_DIR".into(), dir.clone()),
        ("CARGO_MANIFEST_PATH".into(), format!("{dir}/Cargo.toml")),
        ("CARGO_PKG_AUTHORS".into(), package.authors.join(":")),
        ("CARGO_PKG_DESCRIPTION".into(), package.description.clone()),
        ("CARGO_PKG_HOMEPAGE".into(), package.homepage.clone()),
        ("CARGO_PKG_LICENSE".into(), package.license.clone()),
        (
            "CARGO_PKG_LICENSE_FILE".into(),
            package.license_file.clone(),
        ),
        ("CARGO_PKG_NAME".into(), package.name.clone()),
        ("CARGO_PKG_README".into(), package.readme.clone()),
        ("CARGO_PKG_REPOSITORY".into(), package.repository.clone()),
        (
            "CARGO_PKG_RUST_VERSION".into(),
            package.rust_version.clone(),
        ),
        ("CARGO_PKG_VERSION".into(), package.version_text.clone()),
        ("CARGO_PKG_VERSION_MAJOR".into(), v.major.to_string()),
        ("CARGO_PKG_VERSION_MINOR".into(), v.minor.to_string()),
        ("CARGO_PKG_VERSION_PATCH".into(), v.patch.to_string()),
        ("CARGO_PKG_VERSION_PRE".into(), v.pre.to_string()),
        ("PATH".into(), SANDBOX_PATH.into()),
    ]
}

/// An exec-root-relative path as the absolute path actions see.
pub fn exec_abs(rel: &str) -> String {
    if rel.is_empty() {
        EXEC_ROOT.to_string()
    } else {
        format!("{EXEC_ROOT}/{rel}")
    }
}

/// The `ISA` platform value of a target triple's architecture.
pub fn isa_of_triple(triple: &str) -> String {
    let arch = triple.split('-').next().unwrap_or(triple);
    match arch {
        "x86_64" => "x86-64".into(),
        "i686" | "i586" | "x86" => "x86-32".into(),
        other => other.into(),
    }
}

/// The platform an action runs on: the host toolchain's (rustc and build scripts are host
/// programs), whatever the target.
pub fn exec_platform(plan: &Plan) -> Vec<(String, String)> {
    let os = if plan.toolchain.host.contains("-linux") {
        "linux"
    } else {
        std::env::consts::OS
    };
    vec![
        ("ISA".into(), isa_of_triple(&plan.toolchain.host)),
        ("OSFamily".into(), os.into()),
    ]
}

/// The source path of the unit's crate root, relative to the exec root.
pub fn src_path(
    plan: &Plan,
    u: &PlannedUnit,
    package: &PackageInfo,
) -> Result<String, ResolveError> {
    let src = std::path::Path::new(&u.unit.target.src_path);
    let rel = src.strip_prefix(&package.manifest_dir).map_err(|_| {
        ResolveError::Unsupported(format!(
            "{}: the crate root {} is outside the package directory {}",
            plan.describe(u.index),
            src.display(),
            package.manifest_dir.display()
        ))
    })?;
    let rel = crate::metadata::relative_slash_path(rel)?;
    Ok(if package.exec_dir.is_empty() {
        rel
    } else {
        format!("{}/{rel}", package.exec_dir)
    })
}

/// The action compiling unit `i` (a [`UnitKind::Compile`] or [`UnitKind::BuildScriptCompile`]).
pub fn compile_action(
    plan: &Plan,
    i: usize,
    scripts: &dyn ScriptOutputs,
) -> Result<ActionSpec, ResolveError> {
    let u = plan.unit(i);
    let package = plan.package_of(i)?;
    let target = &u.unit.target;
    let profile = &u.unit.profile;
    let crate_name = if u.kind == UnitKind::BuildScriptCompile {
        "build_script_build".to_string()
    } else {
        target.crate_name()
    };
    let mut a: Vec<String> = vec![
        format!("{}/bin/rustc", layout::TOOLCHAIN),
        "--crate-name".into(),
        crate_name.clone(),
        format!("--edition={}", target.edition),
        src_path(plan, u, package)?,
        "--error-format=json".into(),
        "--json=diagnostic-rendered-ansi,artifacts,future-incompat".into(),
    ];
    if u.unit.mode == Mode::Test {
        a.push("--test".into());
    } else {
        for ty in &target.crate_types {
            a.push("--crate-type".into());
            a.push(ty.clone());
        }
    }
    a.push(format!("--emit={}", u.emit.join(",")));
    if target.is_proc_macro() {
        a.extend(["-C".into(), "prefer-dynamic".into()]);
    }
    if profile.opt_level != "0" {
        a.extend(["-C".into(), format!("opt-level={}", profile.opt_level)]);
    }
    if profile.panic != "unwind" {
        a.extend(["-C".into(), format!("panic={}", profile.panic)]);
    }
    match profile.lto.as_str() {
        "false" => a.extend(["-C".into(), "embed-bitcode=no".into()]),
        "off" => a.extend([
            "-C".into(),
            "lto=off".into(),
            "-C".into(),
            "embed-bitcode=no".into(),
        ]),
        lto if u.links() && !target.is_proc_macro() => {
            let value = if lto == "thin" { "lto=thin" } else { "lto" };
            a.extend(["-C".into(), value.into()]);
        }
        _ => {}
    }
    if let Some(n) = profile.codegen_units {
        a.extend(["-C".into(), format!("codegen-units={n}")]);
    }
    if let Some(d) = profile.debuginfo.as_ref().and_then(|d| d.flag_value()) {
        a.extend(["-C".into(), format!("debuginfo={d}")]);
    }
    if let Some(s) = &profile.split_debuginfo {
        a.extend(["-C".into(), format!("split-debuginfo={s}")]);
    }
    // [lints], then the check-cfg values of lints.rust.unexpected_cfgs, as cargo orders them.
    a.extend(package.lints.flags.iter().cloned());
    for c in &package.lints.check_cfg {
        a.extend(["--check-cfg".into(), c.clone()]);
    }
    let default_assertions = profile.opt_level == "0";
    if profile.debug_assertions != default_assertions {
        a.extend([
            "-C".into(),
            format!("debug-assertions={}", on_off(profile.debug_assertions)),
        ]);
    }
    if profile.overflow_checks != profile.debug_assertions {
        a.extend([
            "-C".into(),
            format!("overflow-checks={}", on_off(profile.overflow_checks)),
        ]);
    }
    if profile.rpath {
        a.extend(["-C".into(), "rpath".into()]);
    }
    for f in &u.unit.features {
        a.extend(["--cfg".into(), format!("feature=\"{f}\"")]);
    }
    a.extend(["--check-cfg".into(), "cfg(docsrs,test)".into()]);
    let values: Vec<String> = package
        .features
        .iter()
        .map(|f| format!("\"{f}\""))
        .collect();
    a.extend([
        "--check-cfg".into(),
        format!("cfg(feature, values({}))", values.join(", ")),
    ]);
    a.extend(["-C".into(), format!("metadata={}", u.hash)]);
    if !u.extra_filename.is_empty() {
        a.extend(["-C".into(), format!("extra-filename={}", u.extra_filename)]);
    }
    a.extend(["--out-dir".into(), layout::OUT.into()]);
    if u.explicit_target {
        a.extend(["--target".into(), u.triple.clone()]);
    }
    if let Some(linker) = plan.config.linker_for(&u.triple) {
        if u.links() {
            a.extend(["-C".into(), format!("linker={linker}")]);
        }
    }
    let strip = profile.strip();
    if strip != "none" {
        a.extend(["-C".into(), format!("strip={strip}")]);
    }
    a.extend(["-L".into(), format!("dependency={}", layout::DEPS)]);

    let mut inputs = vec![
        Input::Toolchain {
            triples: if u.explicit_target {
                vec![u.triple.clone()]
            } else {
                vec![]
            },
            at: layout::TOOLCHAIN.into(),
        },
        Input::Package {
            package: package.id.clone(),
            at: package.exec_dir.clone(),
            // Registry and git sources never change: only local packages are narrowed.
            exclude: if package.is_local {
                other_target_roots(package, &target.src_path)
            } else {
                Vec::new()
            },
        },
    ];
    // Direct dependencies by extern name; everything in the closure is staged for -L.
    let mut externs: BTreeMap<String, String> = BTreeMap::new();
    for (name, dep) in plan.lib_deps(i) {
        let file = artifact_for(u, dep)?;
        externs.insert(name.to_string(), format!("{}/{file}", layout::DEPS));
    }
    for lib in plan.transitive_libs(i) {
        let dep = plan.unit(lib);
        let file = artifact_for(u, dep)?;
        inputs.push(Input::UnitFile {
            unit: lib,
            at: format!("{}/{file}", layout::DEPS),
            file,
        });
    }
    for (name, path) in &externs {
        a.extend(["--extern".into(), format!("{name}={path}")]);
    }
    if target.is_proc_macro() {
        a.extend(["--extern".into(), "proc_macro".into()]);
    }
    if !package.is_local {
        a.extend(["--cap-lints".into(), "allow".into()]);
    }

    let mut env = package_env(package);
    env.push(("CARGO_CRATE_NAME".into(), crate_name.clone()));
    if plan.primary_packages.contains(&package.id) {
        env.push(("CARGO_PRIMARY_PACKAGE".into(), "1".into()));
    }
    if target.is_bin() {
        env.push(("CARGO_BIN_NAME".into(), target.name.clone()));
    }
    if u.unit.mode == Mode::Test && (target.is_test_target() || target.is_bench_target()) {
        // Integration tests run the package's binaries: point at where they land locally.
        let profile_dir = plan
            .target_directory()
            .join(target_subdir(plan, u))
            .join(&plan.profile_dir);
        for dep in &u.unit.dependencies {
            let d = plan.unit(dep.index);
            if d.kind == UnitKind::Compile && d.unit.target.is_bin() {
                let exe = profile_dir.join(&d.unit.target.name);
                env.push((
                    format!("CARGO_BIN_EXE_{}", d.unit.target.name),
                    exe.display().to_string(),
                ));
            }
        }
        let tmp = plan.target_directory().join("tmp");
        env.push(("CARGO_TARGET_TMPDIR".into(), tmp.display().to_string()));
    }

    // Native search paths of every build script in the closure first, then this package's
    // own directives (cargo's order).
    for run in plan.link_search_runs(i) {
        let Some(output) = scripts.script_output(run) else {
            continue;
        };
        for s in &output.link_search {
            a.extend(["-L".into(), s.clone()]);
        }
        if !output.link_search.is_empty() && Some(run) != plan.own_script_run(i) {
            let run_pkg = plan.package_of(run)?;
            inputs.push(Input::OutDir {
                unit: run,
                at: plan.unit(run).out_dir(run_pkg),
            });
        }
    }
    // This package's build script: OUT_DIR, cfgs, env, link flags.
    if let Some(run) = plan.own_script_run(i) {
        let out_dir = plan.unit(run).out_dir(package);
        env.push(("OUT_DIR".into(), exec_abs(&out_dir)));
        inputs.push(Input::OutDir {
            unit: run,
            at: out_dir,
        });
        let output = scripts.script_output(run).ok_or_else(|| {
            ResolveError::Unsupported(format!(
                "{} needs its build script's output before it can be planned",
                plan.describe(i)
            ))
        })?;
        // Cargo passes `-l` to the package's library only, or to every target without one.
        let own_lib = plan
            .lib_deps(i)
            .any(|(_, d)| d.unit.pkg_id == u.unit.pkg_id && !d.unit.target.is_proc_macro());
        if target.is_lib() || !own_lib {
            for lib in &output.link_libs {
                a.extend(["-l".into(), lib.clone()]);
            }
        }
        if u.links() {
            for (scope, arg) in &output.link_args {
                if link_arg_applies(scope, u) {
                    a.extend(["-C".into(), format!("link-arg={arg}")]);
                }
            }
        }
        for c in &output.cfgs {
            a.extend(["--cfg".into(), c.clone()]);
        }
        for c in &output.check_cfgs {
            a.extend(["--check-cfg".into(), c.clone()]);
        }
        env.extend(output.env.iter().cloned());
    }
    a.extend(plan.config.rustflags_for(u.unit.platform.as_deref()));
    a.push(format!("--remap-path-prefix={EXEC_ROOT}=."));
    add_override(plan, package, &mut inputs, &mut env);

    Ok(ActionSpec {
        unit: i,
        args: a,
        env: sorted_env(env)?,
        working_directory: String::new(),
        inputs: dedup(inputs),
        output_files: u
            .outputs
            .iter()
            .map(|f| format!("{}/{f}", layout::OUT))
            .collect(),
        output_directories: Vec::new(),
        platform: exec_platform(plan),
    })
}

/// The crate roots of the package's targets other than the one at `src` (relative to the
/// package), and the directory of multi-file ones (`src/bin/x/main.rs` -> `src/bin/x/`)
/// unless `src` is inside it.
pub fn other_target_roots(package: &PackageInfo, src: &str) -> Vec<String> {
    let src = std::path::Path::new(src);
    let own = src.strip_prefix(&package.manifest_dir).unwrap_or(src);
    let mut out = Vec::new();
    for t in &package.targets {
        let Ok(rel) = t.strip_prefix(&package.manifest_dir) else {
            continue;
        };
        if rel == own {
            continue;
        }
        let Ok(text) = crate::metadata::relative_slash_path(rel) else {
            continue;
        };
        out.push(text);
        if rel.file_name().is_some_and(|n| n == "main.rs") {
            if let Some(dir) = rel.parent() {
                let top_level = dir.parent().is_none_or(|p| p.as_os_str().is_empty());
                if !top_level && !own.starts_with(dir) {
                    if let Ok(d) = crate::metadata::relative_slash_path(dir) {
                        out.push(format!("{d}/"));
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `target/` or `target/<triple>/` where cargo puts this unit's artifacts.
pub fn target_subdir(plan: &Plan, u: &PlannedUnit) -> std::path::PathBuf {
    if plan.requested_targets.is_empty() || !u.explicit_target {
        std::path::PathBuf::new()
    } else {
        std::path::PathBuf::from(&u.triple)
    }
}

fn link_arg_applies(scope: &LinkArgScope, u: &PlannedUnit) -> bool {
    let t = &u.unit.target;
    match scope {
        LinkArgScope::All => true,
        LinkArgScope::Bins => t.is_bin() && u.unit.mode != Mode::Test,
        LinkArgScope::Bin(name) => t.is_bin() && &t.name == name,
        LinkArgScope::Tests => u.unit.mode == Mode::Test,
        LinkArgScope::Examples => t.is_example(),
        LinkArgScope::Benches => t.is_bench_target(),
        LinkArgScope::Cdylib => t.crate_types.iter().any(|c| c == "cdylib"),
    }
}

/// Which file of `dep` unit `u` reads: full artifacts when `u` links, metadata otherwise
/// (proc-macros are always the shared object).
fn artifact_for(u: &PlannedUnit, dep: &PlannedUnit) -> Result<String, ResolveError> {
    let file = if dep.unit.target.is_proc_macro() || u.links() {
        dep.link_artifact
            .clone()
            .or_else(|| dep.meta_artifact.clone())
    } else {
        dep.meta_artifact.clone()
    };
    file.ok_or_else(|| {
        ResolveError::Unsupported(format!(
            "dependency {} produces nothing {} can use",
            dep.unit.target.name, u.unit.target.name
        ))
    })
}

pub(crate) fn add_override(
    plan: &Plan,
    package: &PackageInfo,
    inputs: &mut Vec<Input>,
    env: &mut Vec<(String, String)>,
) {
    if let Some(o) = plan.overrides.get(&package.name) {
        for p in &o.inputs {
            inputs.push(Input::HostPath {
                path: plan.overrides.local_path(p),
                at: Overrides::mount_point(p),
            });
        }
        for (k, v) in &o.env {
            env.push((k.clone(), Overrides::expand(v)));
        }
    }
}

/// Sorts by name; a later value for the same name replaces an earlier one.
pub(crate) fn sorted_env(
    env: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, ResolveError> {
    let map: BTreeMap<String, String> = env.into_iter().collect();
    Ok(map.into_iter().collect())
}

pub(crate) fn dedup(inputs: Vec<Input>) -> Vec<Input> {
    let mut seen = std::collections::HashSet::new();
    inputs
        .into_iter()
        .filter(|i| seen.insert(i.clone()))
        .collect()
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}
