//! The Rust toolchain a build uses: its identity (`rustc -vV`), sysroot, and per target triple
//! the `cfg` values and output file names rustc reports, plus which sysroot files an action
//! needs as inputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::ResolveError;

/// The crate types whose file names rustc is asked for, in the order they are printed.
const CRATE_TYPES: [&str; 6] = ["bin", "rlib", "dylib", "cdylib", "staticlib", "proc-macro"];

/// One toolchain, probed.
#[derive(Clone, Debug)]
pub struct Toolchain {
    /// The real rustc binary (`<sysroot>/bin/rustc`), never the rustup proxy.
    pub rustc: PathBuf,
    pub sysroot: PathBuf,
    /// `rustc -vV` verbatim: the toolchain's identity in every unit hash.
    pub version_verbose: String,
    /// `release:` of `rustc -vV`, e.g. `1.95.0`.
    pub release: String,
    pub host: String,
    /// Per triple (host included).
    pub targets: BTreeMap<String, TargetInfo>,
}

/// What rustc says about one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetInfo {
    pub triple: String,
    /// `--print cfg`: `name` or `name="value"` entries, in rustc's order.
    pub cfg: Vec<(String, Option<String>)>,
    /// Per crate type, the file name of crate `___` (`lib___.rlib`), or `None` if unsupported.
    file_names: BTreeMap<String, Option<String>>,
}

impl TargetInfo {
    /// The output file name of crate `crate_name` with `extra` (e.g. `-0123abcd`) for a crate
    /// type (`lib` is `rlib`).
    pub fn file_name(&self, crate_type: &str, crate_name: &str, extra: &str) -> Option<String> {
        let ty = if crate_type == "lib" {
            "rlib"
        } else {
            crate_type
        };
        let pattern = self.file_names.get(ty)?.as_ref()?;
        Some(pattern.replacen("___", &format!("{crate_name}{extra}"), 1))
    }

    /// `CARGO_CFG_*` variables for build scripts: multi-valued cfgs joined with `,`, name-only
    /// ones empty. `debug_assertions` and `proc_macro` are left to the profile.
    pub fn cargo_cfg_env(&self) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in &self.cfg {
            if name == "debug_assertions" || name == "proc_macro" {
                continue;
            }
            let key = format!("CARGO_CFG_{}", name.to_uppercase().replace('-', "_"));
            let entry = out.entry(key).or_default();
            if let Some(v) = value {
                entry.push(v.clone());
            }
        }
        out.into_iter()
            .map(|(k, mut v)| {
                v.sort();
                v.dedup();
                (k, v.join(","))
            })
            .collect()
    }

    /// The value of a `name="value"` cfg (e.g. `target_arch`).
    pub fn cfg_value(&self, name: &str) -> Option<&str> {
        self.cfg
            .iter()
            .find(|(n, v)| n == name && v.is_some())
            .and_then(|(_, v)| v.as_deref())
    }
}

impl Toolchain {
    /// The host triple of the rustc cargo would use from `cwd`.
    pub fn host_triple(cwd: &Path) -> Result<String, ResolveError> {
        let front = std::env::var_os("RUSTC")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("rustc"));
        let vv = output(Command::new(&front).current_dir(cwd).arg("-vV"))?;
        vv.lines()
            .find_map(|l| l.strip_prefix("host:").map(|v| v.trim().to_string()))
            .ok_or_else(|| ResolveError::Cargo("`rustc -vV` printed no `host:` line".into()))
    }

    /// Probes the rustc cargo would use from `cwd` (`$RUSTC`, else `rustc` on PATH, which
    /// rustup resolves with the workspace's `rust-toolchain.toml`), for the host and `targets`.
    pub fn probe(
        cwd: &Path,
        targets: &[String],
        rustflags: &dyn Fn(&str) -> Vec<String>,
    ) -> Result<Toolchain, ResolveError> {
        let front = std::env::var_os("RUSTC")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("rustc"));
        let sysroot = PathBuf::from(
            output(
                Command::new(&front)
                    .current_dir(cwd)
                    .args(["--print", "sysroot"]),
            )?
            .trim()
            .to_string(),
        );
        let rustc = sysroot.join("bin").join("rustc");
        if !rustc.is_file() {
            return Err(ResolveError::Unsupported(format!(
                "rustc reports the sysroot {}, which has no bin/rustc; cargo-farm needs a \
                 rustup-style toolchain directory to ship to workers",
                sysroot.display()
            )));
        }
        let version_verbose = output(Command::new(&rustc).current_dir(cwd).arg("-vV"))?;
        let field = |name: &str| {
            version_verbose
                .lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                .ok_or_else(|| ResolveError::Cargo(format!("`rustc -vV` printed no `{name}` line")))
        };
        let host = field("host:")?;
        let release = field("release:")?;
        let mut infos = BTreeMap::new();
        let mut all: Vec<String> = vec![host.clone()];
        all.extend(targets.iter().cloned());
        for triple in all {
            if infos.contains_key(&triple) {
                continue;
            }
            let info = probe_target(&rustc, cwd, &triple, &rustflags(&triple))?;
            infos.insert(triple, info);
        }
        Ok(Toolchain {
            rustc,
            sysroot,
            version_verbose,
            release,
            host,
            targets: infos,
        })
    }

    pub fn target(&self, triple: &str) -> Result<&TargetInfo, ResolveError> {
        self.targets.get(triple).ok_or_else(|| {
            ResolveError::Unsupported(format!("the toolchain was not probed for target {triple}"))
        })
    }

    /// Whether the standard library for `triple` is installed in this sysroot.
    pub fn has_std_for(&self, triple: &str) -> bool {
        self.sysroot
            .join("lib/rustlib")
            .join(triple)
            .join("lib")
            .is_dir()
    }

    /// The sysroot files an action compiling for `triples` needs, as (path relative to the
    /// sysroot, local path): `bin/rustc`, the shared libraries it loads, and the whole
    /// `lib/rustlib/<triple>` of the host and of each triple. Sorted by relative path.
    pub fn files(&self, triples: &[String]) -> Result<Vec<(String, PathBuf)>, ResolveError> {
        let mut out = vec![("bin/rustc".to_string(), self.rustc.clone())];
        let lib = self.sysroot.join("lib");
        let entries = std::fs::read_dir(&lib).map_err(ResolveError::io(&lib))?;
        for entry in entries {
            let entry = entry.map_err(ResolveError::io(&lib))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let ty = entry.file_type().map_err(ResolveError::io(entry.path()))?;
            if !ty.is_dir() && name.contains(".so") {
                out.push((format!("lib/{name}"), entry.path()));
            }
        }
        let mut wanted: Vec<&str> = vec![self.host.as_str()];
        wanted.extend(triples.iter().map(String::as_str));
        wanted.sort();
        wanted.dedup();
        for triple in wanted {
            let dir = lib.join("rustlib").join(triple);
            if !dir.is_dir() {
                return Err(ResolveError::Unsupported(format!(
                    "the standard library for {triple} is not installed in {} (try `rustup \
                     target add {triple}`)",
                    self.sysroot.display()
                )));
            }
            walk(&dir, &format!("lib/rustlib/{triple}"), &mut out)?;
        }
        out.sort();
        Ok(out)
    }
}

/// Every file and symlink under `dir`, as `prefix/relative` paths.
fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> Result<(), ResolveError> {
    let entries = std::fs::read_dir(dir).map_err(ResolveError::io(dir))?;
    for entry in entries {
        let entry = entry.map_err(ResolveError::io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let ty = entry.file_type().map_err(ResolveError::io(&path))?;
        let rel = format!("{prefix}/{name}");
        if ty.is_dir() {
            walk(&path, &rel, out)?;
        } else {
            out.push((rel, path));
        }
    }
    Ok(())
}

fn probe_target(
    rustc: &Path,
    cwd: &Path,
    triple: &str,
    rustflags: &[String],
) -> Result<TargetInfo, ResolveError> {
    let mut cmd = Command::new(rustc);
    cmd.current_dir(cwd)
        .args(["-", "--crate-name", "___", "--print=file-names"]);
    for ty in CRATE_TYPES {
        cmd.args(["--crate-type", ty]);
    }
    cmd.args(["--target", triple, "--print=cfg"]);
    cmd.args(rustflags);
    cmd.stdin(std::process::Stdio::null());
    let text = output(&mut cmd)?;
    let mut lines = text.lines();
    let mut file_names = BTreeMap::new();
    for ty in CRATE_TYPES {
        let name = lines.next().ok_or_else(|| {
            ResolveError::Cargo(format!(
                "`rustc --print=file-names --target {triple}` printed too few lines"
            ))
        })?;
        file_names.insert(ty.to_string(), Some(name.to_string()));
    }
    let cfg = lines.map(parse_cfg_line).collect();
    Ok(TargetInfo {
        triple: triple.to_string(),
        cfg,
        file_names,
    })
}

/// `name` or `name="value"`.
fn parse_cfg_line(line: &str) -> (String, Option<String>) {
    match line.split_once('=') {
        Some((name, value)) => (name.to_string(), Some(value.trim_matches('"').to_string())),
        None => (line.to_string(), None),
    }
}

/// Runs `cmd` and returns its stdout as text, or an error with its stderr.
fn output(cmd: &mut Command) -> Result<String, ResolveError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = crate::cargo::run(cmd, None)?;
    String::from_utf8(out)
        .map_err(|_| ResolveError::Cargo(format!("{program} printed something that is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cfg_lines() {
        assert_eq!(parse_cfg_line("unix"), ("unix".into(), None));
        assert_eq!(
            parse_cfg_line("target_arch=\"x86_64\""),
            ("target_arch".into(), Some("x86_64".into()))
        );
    }

    #[test]
    fn cargo_cfg_env_joins_values() {
        let info = TargetInfo {
            triple: "t".into(),
            cfg: vec![
                ("unix".into(), None),
                ("debug_assertions".into(), None),
                ("target_feature".into(), Some("sse2".into())),
                ("target_feature".into(), Some("fxsr".into())),
            ],
            file_names: BTreeMap::new(),
        };
        let env = info.cargo_cfg_env();
        assert_eq!(env.get("CARGO_CFG_UNIX").map(String::as_str), Some(""));
        assert_eq!(
            env.get("CARGO_CFG_TARGET_FEATURE").map(String::as_str),
            Some("fxsr,sse2")
        );
        assert!(!env.contains_key("CARGO_CFG_DEBUG_ASSERTIONS"));
    }
}
