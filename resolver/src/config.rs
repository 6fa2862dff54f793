//! The parts of cargo's configuration that change rustc command lines: `RUSTFLAGS` (and
//! `CARGO_ENCODED_RUSTFLAGS`, `build.rustflags`, `target.<triple>.rustflags`) and
//! `target.<triple>.linker` (and `CARGO_TARGET_<TRIPLE>_LINKER`).
//!
//! Config files are found as cargo finds them: `.cargo/config.toml` (or `.cargo/config`) in the
//! working directory and each parent, then `$CARGO_HOME/config.toml`; the closest file that sets
//! a key wins. `[target.'cfg(..)']` tables are not read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::ResolveError;

/// Flags from configuration and environment, resolved per target triple.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildConfig {
    /// Flags from the environment (`CARGO_ENCODED_RUSTFLAGS`, `RUSTFLAGS`), which replace
    /// every config-file setting when present.
    env_rustflags: Option<Vec<String>>,
    build_rustflags: Vec<String>,
    target_rustflags: BTreeMap<String, Vec<String>>,
    linkers: BTreeMap<String, String>,
    /// `(triple, links name)` of `[target.<triple>.<links>]` tables, which replace build scripts.
    links_overrides: Vec<(String, String)>,
    /// Whether `--target` was given: then host units get no rustflags, as with cargo.
    explicit_target: bool,
    host: String,
}

impl BuildConfig {
    /// Reads config files from `cwd` upwards and the environment.
    pub fn load(
        cwd: &Path,
        host: &str,
        explicit_target: bool,
    ) -> Result<BuildConfig, ResolveError> {
        let mut files = Vec::new();
        let mut dir = Some(cwd);
        while let Some(d) = dir {
            for name in ["config.toml", "config"] {
                let f = d.join(".cargo").join(name);
                if f.is_file() {
                    files.push(f);
                    break;
                }
            }
            dir = d.parent();
        }
        if let Some(home) = cargo_home() {
            let f = home.join("config.toml");
            if f.is_file() && !files.contains(&f) {
                files.push(f);
            }
        }
        let mut config = BuildConfig {
            explicit_target,
            host: host.to_string(),
            ..Default::default()
        };
        // Lowest precedence first, so closer files overwrite.
        for file in files.iter().rev() {
            config.merge_file(file)?;
        }
        config.env_rustflags = env_rustflags();
        for (key, value) in std::env::vars() {
            if let Some(triple) = key
                .strip_prefix("CARGO_TARGET_")
                .and_then(|k| k.strip_suffix("_LINKER"))
            {
                let triple = triple.to_lowercase().replace('_', "-");
                config.linkers.insert(triple, value);
            }
        }
        Ok(config)
    }

    fn merge_file(&mut self, file: &Path) -> Result<(), ResolveError> {
        let text = std::fs::read_to_string(file).map_err(ResolveError::io(file))?;
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ResolveError::Manifest {
                    path: file.to_path_buf(),
                    message: e.to_string(),
                })?;
        let bad = |message: String| ResolveError::Manifest {
            path: file.to_path_buf(),
            message,
        };
        if let Some(flags) = table.get("build").and_then(|b| b.get("rustflags")) {
            self.build_rustflags =
                flag_list(flags).map_err(|m| bad(format!("build.rustflags: {m}")))?;
        }
        if let Some(targets) = table.get("target").and_then(|t| t.as_table()) {
            for (triple, t) in targets {
                if triple.starts_with("cfg(") {
                    continue;
                }
                if let Some(l) = t.get("linker") {
                    let l = l
                        .as_str()
                        .ok_or_else(|| bad(format!("target.{triple}.linker must be a string")))?;
                    self.linkers.insert(triple.clone(), l.to_string());
                }
                if let Some(table) = t.as_table() {
                    for (key, value) in table {
                        if value.is_table() {
                            self.links_overrides.push((triple.clone(), key.clone()));
                        }
                    }
                }
                if let Some(flags) = t.get("rustflags") {
                    let flags = flag_list(flags)
                        .map_err(|m| bad(format!("target.{triple}.rustflags: {m}")))?;
                    self.target_rustflags.insert(triple.clone(), flags);
                }
            }
        }
        Ok(())
    }

    /// Extra rustc flags of a unit for `platform` (`None`: a host unit).
    pub fn rustflags_for(&self, platform: Option<&str>) -> Vec<String> {
        if platform.is_none() && self.explicit_target {
            return Vec::new();
        }
        let triple = platform.unwrap_or(&self.host);
        if let Some(flags) = &self.env_rustflags {
            return flags.clone();
        }
        if let Some(flags) = self.target_rustflags.get(triple) {
            return flags.clone();
        }
        self.build_rustflags.clone()
    }

    /// Whether cargo config replaces the build script of packages with `links = links` on
    /// `triple` (`[target.<triple>.<links>]`).
    pub fn overrides_links(&self, triple: &str, links: &str) -> bool {
        self.links_overrides
            .iter()
            .any(|(t, l)| t == triple && l == links)
    }

    /// The `-C linker=` value for `triple`, if configured.
    pub fn linker_for(&self, triple: &str) -> Option<&str> {
        self.linkers.get(triple).map(String::as_str)
    }
}

/// A config flag list: an array of strings, or one string split on whitespace.
fn flag_list(v: &toml::Value) -> Result<Vec<String>, String> {
    match v {
        toml::Value::String(s) => Ok(s.split_whitespace().map(str::to_string).collect()),
        toml::Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| "must be strings".to_string())
            })
            .collect(),
        _ => Err("must be a string or an array of strings".into()),
    }
}

fn env_rustflags() -> Option<Vec<String>> {
    if let Ok(encoded) = std::env::var("CARGO_ENCODED_RUSTFLAGS") {
        if encoded.is_empty() {
            return Some(Vec::new());
        }
        return Some(encoded.split('\x1f').map(str::to_string).collect());
    }
    std::env::var("RUSTFLAGS")
        .ok()
        .map(|s| s.split_whitespace().map(str::to_string).collect())
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_config_wins_and_host_units_skip_flags_with_target() {
        let t = tempfile::tempdir().unwrap();
        let inner = t.path().join("a/b");
        std::fs::create_dir_all(inner.join(".cargo")).unwrap();
        std::fs::create_dir_all(t.path().join(".cargo")).unwrap();
        std::fs::write(
            t.path().join(".cargo/config.toml"),
            "[build]\nrustflags = \"-C opt-level=1\"\n[target.x-y-z]\nlinker = \"far\"\n",
        )
        .unwrap();
        std::fs::write(
            inner.join(".cargo/config.toml"),
            "[build]\nrustflags = [\"--cfg\", \"near\"]\n",
        )
        .unwrap();
        let mut c = BuildConfig {
            host: "h".into(),
            ..Default::default()
        };
        c.merge_file(&t.path().join(".cargo/config.toml")).unwrap();
        c.merge_file(&inner.join(".cargo/config.toml")).unwrap();
        assert_eq!(c.rustflags_for(None), vec!["--cfg", "near"]);
        assert_eq!(c.linker_for("x-y-z"), Some("far"));
        c.explicit_target = true;
        assert!(c.rustflags_for(None).is_empty());
        assert_eq!(c.rustflags_for(Some("x-y-z")), vec!["--cfg", "near"]);
    }
}
