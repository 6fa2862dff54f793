//! The action running a compiled build script: cargo's environment for build scripts, the
//! package's files, `DEP_*` metadata from the `links` packages it depends on (and their
//! `OUT_DIR`s, where such metadata usually points), an empty `OUT_DIR` to fill.

use crate::action::{ActionSpec, Input};
use crate::build_script_output::env_name;
use crate::error::ResolveError;
use crate::plan::{layout, Plan, UnitKind};
use crate::rustc::{
    add_override, dedup, exec_abs, exec_platform, package_env, sorted_env, ScriptOutputs,
};

/// `NUM_JOBS` every build script sees: a constant, so action keys do not depend on the
/// machine that planned them.
pub const NUM_JOBS: &str = "2";

/// The action running build script unit `i` (a [`UnitKind::BuildScriptRun`]).
pub fn run_action(
    plan: &Plan,
    i: usize,
    scripts: &dyn ScriptOutputs,
) -> Result<ActionSpec, ResolveError> {
    let u = plan.unit(i);
    let package = plan.package_of(i)?;
    let compile = u
        .unit
        .dependencies
        .iter()
        .map(|d| d.index)
        .find(|&d| plan.unit(d).kind == UnitKind::BuildScriptCompile)
        .ok_or_else(|| {
            ResolveError::Cargo(format!(
                "{}: the unit graph has no compiled build script for this run",
                plan.describe(i)
            ))
        })?;
    let compiled = plan.unit(compile);
    let exe = compiled.link_artifact.clone().ok_or_else(|| {
        ResolveError::Cargo(format!(
            "{}: the build script produces no executable",
            plan.describe(i)
        ))
    })?;
    let script_at = compiled.script_path(package);
    let out_dir = u.out_dir(package);
    let target = plan.toolchain.target(&u.triple)?;
    let profile = &u.unit.profile;

    let mut env = package_env(package);
    env.extend(target.cargo_cfg_env());
    if profile.debug_assertions {
        env.push(("CARGO_CFG_DEBUG_ASSERTIONS".into(), String::new()));
    }
    env.push(("CARGO_CFG_FEATURE".into(), u.unit.features.join(",")));
    for f in &u.unit.features {
        env.push((format!("CARGO_FEATURE_{}", env_name(f)), "1".into()));
    }
    let rustflags = plan.config.rustflags_for(u.unit.platform.as_deref());
    env.push(("CARGO_ENCODED_RUSTFLAGS".into(), rustflags.join("\x1f")));
    if let Some(links) = &package.links {
        env.push(("CARGO_MANIFEST_LINKS".into(), links.clone()));
    }
    let debug = profile.has_debuginfo();
    env.push(("DEBUG".into(), debug.to_string()));
    env.push(("HOST".into(), plan.toolchain.host.clone()));
    env.push(("TARGET".into(), u.triple.clone()));
    env.push(("NUM_JOBS".into(), NUM_JOBS.into()));
    env.push(("OPT_LEVEL".into(), profile.opt_level.clone()));
    let profile_name =
        if profile.name == "dev" || profile.name == "test" || profile.opt_level == "0" {
            "debug"
        } else {
            "release"
        };
    env.push(("PROFILE".into(), profile_name.into()));
    env.push(("OUT_DIR".into(), exec_abs(&out_dir)));
    let rustc = exec_abs(&format!("{}/bin/rustc", layout::TOOLCHAIN));
    env.push(("RUSTC".into(), rustc));
    if let Some(linker) = plan.config.linker_for(&u.triple) {
        env.push(("RUSTC_LINKER".into(), linker.to_string()));
    }

    let mut inputs = vec![
        Input::Toolchain {
            triples: vec![u.triple.clone()],
            at: layout::TOOLCHAIN.into(),
        },
        // A build script may read any file of its package.
        Input::Package {
            package: package.id.clone(),
            at: package.exec_dir.clone(),
            exclude: Vec::new(),
        },
        Input::UnitFile {
            unit: compile,
            file: exe,
            at: script_at.clone(),
        },
        Input::EmptyDir {
            at: out_dir.clone(),
        },
    ];
    // DEP_<links>_<key> from the runs of dependencies with `links`.
    for dep in &u.unit.dependencies {
        let d = plan.unit(dep.index);
        if d.kind != UnitKind::BuildScriptRun || dep.index == i {
            continue;
        }
        let dep_pkg = plan.package_of(dep.index)?;
        let Some(links) = &dep_pkg.links else {
            continue;
        };
        let output = scripts.script_output(dep.index).ok_or_else(|| {
            ResolveError::Unsupported(format!(
                "{} needs the output of {} first",
                plan.describe(i),
                plan.describe(dep.index)
            ))
        })?;
        env.extend(output.dep_env(links));
        inputs.push(Input::OutDir {
            unit: dep.index,
            at: d.out_dir(dep_pkg),
        });
    }
    add_override(plan, package, &mut inputs, &mut env);

    Ok(ActionSpec {
        unit: i,
        args: vec![exec_abs(&script_at)],
        env: sorted_env(env)?,
        working_directory: package.exec_dir.clone(),
        inputs: dedup(inputs),
        output_files: Vec::new(),
        output_directories: vec![relative_to(&package.exec_dir, &out_dir)],
        platform: exec_platform(plan),
    })
}

/// `path` (exec-root-relative) as seen from directory `from` (exec-root-relative).
pub fn relative_to(from: &str, path: &str) -> String {
    let from: Vec<&str> = from.split('/').filter(|s| !s.is_empty()).collect();
    let to: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<&str> = vec![".."; from.len() - common];
    parts.extend(&to[common..]);
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::relative_to;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_to("", ".cargo-farm/build/x/out"),
            ".cargo-farm/build/x/out"
        );
        assert_eq!(
            relative_to("crates/a", ".cargo-farm/b"),
            "../../.cargo-farm/b"
        );
        assert_eq!(relative_to("a/b", "a/c"), "../c");
    }
}
