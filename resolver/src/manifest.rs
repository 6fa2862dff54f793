//! What `cargo metadata` leaves out of a manifest but cargo passes to rustc: the `[lints]`
//! table (own or `workspace = true`) as `--warn=`/`--deny=`... flags, and the extra
//! `--check-cfg` values of `lints.rust.unexpected_cfgs.check-cfg`.

use std::path::Path;

use crate::error::ResolveError;

/// Lint flags of one package, in cargo's order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LintFlags {
    /// `--{level}={tool::}name` flags.
    pub flags: Vec<String>,
    /// Values for extra `--check-cfg` arguments.
    pub check_cfg: Vec<String>,
}

fn read_toml(path: &Path) -> Result<toml::Table, ResolveError> {
    let text = std::fs::read_to_string(path).map_err(ResolveError::io(path))?;
    text.parse::<toml::Table>()
        .map_err(|e| ResolveError::Manifest {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// `[workspace.lints]` of the workspace root manifest, if any.
pub fn workspace_lints(root_manifest: &Path) -> Result<Option<toml::Table>, ResolveError> {
    if !root_manifest.is_file() {
        return Ok(None);
    }
    let table = read_toml(root_manifest)?;
    Ok(table
        .get("workspace")
        .and_then(|w| w.get("lints"))
        .and_then(|l| l.as_table())
        .cloned())
}

/// The lint flags of the package whose manifest is `manifest`.
pub fn package_lints(
    manifest: &Path,
    workspace: Option<&toml::Table>,
) -> Result<LintFlags, ResolveError> {
    let table = read_toml(manifest)?;
    let Some(lints) = table.get("lints") else {
        return Ok(LintFlags::default());
    };
    let inherits = lints
        .get("workspace")
        .and_then(|w| w.as_bool())
        .unwrap_or(false);
    let lints = if inherits {
        match workspace {
            Some(w) => w.clone(),
            None => {
                return Err(ResolveError::Manifest {
                    path: manifest.to_path_buf(),
                    message: "`lints.workspace = true` but the workspace defines no \
                              [workspace.lints]"
                        .into(),
                })
            }
        }
    } else {
        match lints.as_table() {
            Some(t) => t.clone(),
            None => {
                return Err(ResolveError::Manifest {
                    path: manifest.to_path_buf(),
                    message: "[lints] is not a table".into(),
                })
            }
        }
    };
    lint_flags(&lints).map_err(|message| ResolveError::Manifest {
        path: manifest.to_path_buf(),
        message,
    })
}

/// Cargo's ordering: by priority, then by lint name (without its tool) in reverse, as cargo
/// prints them; the `cargo` tool's lints are cargo's own.
fn lint_flags(lints: &toml::Table) -> Result<LintFlags, String> {
    // (priority, name without its tool, reversed; tool; level)
    let mut entries: Vec<(i64, std::cmp::Reverse<String>, String, String)> = Vec::new();
    let mut check_cfg = Vec::new();
    for (tool, table) in lints {
        if tool == "cargo" || tool == "workspace" {
            continue;
        }
        let table = table
            .as_table()
            .ok_or_else(|| format!("lints.{tool} is not a table"))?;
        for (name, config) in table {
            let (level, priority) = match config {
                toml::Value::String(level) => (level.clone(), 0),
                toml::Value::Table(t) => {
                    let level = t
                        .get("level")
                        .and_then(|l| l.as_str())
                        .ok_or_else(|| format!("lints.{tool}.{name} has no `level`"))?
                        .to_string();
                    let priority = t.get("priority").and_then(|p| p.as_integer()).unwrap_or(0);
                    if tool == "rust" && name == "unexpected_cfgs" {
                        if let Some(values) = t.get("check-cfg").and_then(|c| c.as_array()) {
                            for v in values {
                                let v = v.as_str().ok_or_else(|| {
                                    "lints.rust.unexpected_cfgs.check-cfg must be strings"
                                        .to_string()
                                })?;
                                check_cfg.push(v.to_string());
                            }
                        }
                    }
                    (level, priority)
                }
                _ => return Err(format!("lints.{tool}.{name} must be a level or a table")),
            };
            if !matches!(
                level.as_str(),
                "forbid" | "deny" | "warn" | "allow" | "expect"
            ) {
                return Err(format!("lints.{tool}.{name} has unknown level {level:?}"));
            }
            let full = if tool == "rust" {
                name.clone()
            } else {
                format!("{tool}::{name}")
            };
            entries.push((priority, std::cmp::Reverse(name.clone()), full, level));
        }
    }
    entries.sort();
    Ok(LintFlags {
        flags: entries
            .into_iter()
            .map(|(_, _, full, level)| format!("--{level}={full}"))
            .collect(),
        check_cfg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_in_cargo_order() {
        let t: toml::Table = r#"
            [rust]
            unsafe_code = "forbid"
            missing_docs = { level = "warn", priority = -1 }
            unexpected_cfgs = { level = "warn", check-cfg = ['cfg(foo)'] }
            [clippy]
            pedantic = "deny"
            [cargo]
            unused = "warn"
        "#
        .parse()
        .unwrap();
        let f = lint_flags(&t).unwrap();
        assert_eq!(
            f.flags,
            vec![
                "--warn=missing_docs",
                "--forbid=unsafe_code",
                "--warn=unexpected_cfgs",
                "--deny=clippy::pedantic",
            ]
        );
        assert_eq!(f.check_cfg, vec!["cfg(foo)"]);
    }

    #[test]
    fn bad_level_is_refused() {
        let t: toml::Table = "[rust]\nfoo = \"loud\"".parse().unwrap();
        assert!(lint_flags(&t).unwrap_err().contains("unknown level"));
    }
}
