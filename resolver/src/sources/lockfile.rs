//! Cargo.lock: the exact package set of a workspace, with the checksum of every registry crate.
//!
//! Parsed with `toml` + `serde` rather than a dedicated crate: the format is plain TOML, small
//! and stable, the fields we need (name, version, source, checksum, dependencies) have not
//! changed meaning from version 1 to 4, `toml` is already a workspace dependency, and keeping the
//! parse here lets every error name the lockfile and the package at fault.
//!
//! Versions: 1 and 2 carry no `version` key (1 is recognised by checksums in its `[metadata]`
//! table, `"checksum NAME VERSION (SOURCE)" = "HASH"`, or an old `[root]` table), 3 and 4 say
//! `version = N`. Version 1 may write `<none>` for a checksum it does not know.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{is_sha256_hex, SourceError};

/// One `[[package]]` of Cargo.lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    /// `registry+URL`, `sparse+URL`, `git+URL#COMMIT`; `None` for workspace and path packages.
    pub source: Option<String>,
    /// SHA-256 (lowercase hex) of the registry `.crate` archive; `None` for git, path and
    /// workspace packages (and `<none>` entries of version 1).
    pub checksum: Option<String>,
    /// The dependency entries as written (`name`, `name version` or
    /// `name version (source)`).
    pub dependencies: Vec<String>,
}

impl LockedPackage {
    /// Whether the package comes from a registry (`registry+` or `sparse+` source), i.e. from
    /// a `.crate` archive that must match [`LockedPackage::checksum`].
    pub fn is_registry(&self) -> bool {
        self.source
            .as_deref()
            .is_some_and(|s| s.starts_with("registry+") || s.starts_with("sparse+"))
    }
}

/// A parsed Cargo.lock.
#[derive(Clone, Debug)]
pub struct Lockfile {
    /// Where it was read from (used in messages).
    pub path: PathBuf,
    /// The format version, 1 to 4 (1 and 2 as inferred).
    pub version: u32,
    packages: Vec<LockedPackage>,
    by_key: HashMap<(String, String, Option<String>), usize>,
}

#[derive(Deserialize)]
struct RawLockfile {
    version: Option<toml::Value>,
    #[serde(default)]
    package: Vec<RawPackage>,
    root: Option<RawPackage>,
    #[serde(default)]
    metadata: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
struct RawPackage {
    name: String,
    version: String,
    source: Option<String>,
    checksum: Option<String>,
    #[serde(default)]
    dependencies: Vec<String>,
}

impl Lockfile {
    /// Reads and parses the lockfile at `path`.
    pub fn read(path: &Path) -> Result<Self, SourceError> {
        let text = std::fs::read_to_string(path).map_err(SourceError::io(path))?;
        Self::parse(&text, path)
    }

    /// Parses lockfile text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, SourceError> {
        let bad = |message: String| SourceError::Lockfile {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawLockfile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let v1_checksums = v1_checksums(&raw.metadata).map_err(bad)?;
        let version = match &raw.version {
            None if !v1_checksums.is_empty() || raw.root.is_some() => 1,
            None => 2,
            Some(toml::Value::Integer(v @ 1..=4)) => *v as u32,
            Some(toml::Value::Integer(v)) => {
                return Err(SourceError::LockfileVersion {
                    path: path.to_path_buf(),
                    version: *v,
                })
            }
            Some(other) => return Err(bad(format!("`version` is not an integer: {other}"))),
        };

        let mut packages = Vec::with_capacity(raw.package.len() + 1);
        let mut by_key = HashMap::with_capacity(raw.package.len() + 1);
        for p in raw.root.into_iter().chain(raw.package) {
            let key = (p.name.clone(), p.version.clone(), p.source.clone());
            let what = describe(&p.name, &p.version, p.source.as_deref());
            let inline = p.checksum.filter(|c| c != "<none>");
            let listed = v1_checksums.get(&key).cloned().flatten();
            let checksum = match (inline, listed) {
                (Some(a), Some(b)) if a != b => {
                    return Err(bad(format!(
                        "{what} has checksum {a} inline and {b} in [metadata]"
                    )))
                }
                (a, b) => a.or(b),
            };
            if let Some(c) = &checksum {
                if !is_sha256_hex(c) {
                    return Err(bad(format!(
                        "{what} has checksum {c:?}, which is not 64 lowercase hex digits"
                    )));
                }
            }
            if by_key.insert(key, packages.len()).is_some() {
                return Err(bad(format!("{what} is listed twice")));
            }
            packages.push(LockedPackage {
                name: p.name,
                version: p.version,
                source: p.source,
                checksum,
                dependencies: p.dependencies,
            });
        }
        for key in v1_checksums.keys() {
            if !by_key.contains_key(key) {
                let what = describe(&key.0, &key.1, key.2.as_deref());
                return Err(bad(format!(
                    "[metadata] has a checksum for {what}, which is not a [[package]]"
                )));
            }
        }
        Ok(Lockfile {
            path: path.to_path_buf(),
            version,
            packages,
            by_key,
        })
    }

    /// Every package, in file order (a version 1 `[root]` first).
    pub fn packages(&self) -> &[LockedPackage] {
        &self.packages
    }

    /// The package with exactly this name, version and source (`None` for path and workspace
    /// packages). Sources compare as written in the lockfile.
    pub fn get(&self, name: &str, version: &str, source: Option<&str>) -> Option<&LockedPackage> {
        let key = (
            name.to_string(),
            version.to_string(),
            source.map(str::to_string),
        );
        self.by_key.get(&key).map(|&i| &self.packages[i])
    }

    /// Every package with this name and version, whatever its source.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a LockedPackage> + 'a {
        self.packages
            .iter()
            .filter(move |p| p.name == name && p.version == version)
    }
}

type V1Checksums = HashMap<(String, String, Option<String>), Option<String>>;

/// The `"checksum NAME VERSION (SOURCE)" = "HASH"` entries of a version 1 `[metadata]` table
/// (`None` for `<none>`); other metadata keys are ignored.
fn v1_checksums(metadata: &BTreeMap<String, toml::Value>) -> Result<V1Checksums, String> {
    let mut out = HashMap::new();
    for (key, value) in metadata {
        let Some(spec) = key.strip_prefix("checksum ") else {
            continue;
        };
        let bad = || format!("[metadata] key {key:?} is not \"checksum NAME VERSION (SOURCE)\"");
        let (name, rest) = spec.split_once(' ').ok_or_else(bad)?;
        let (version, source) = rest.split_once(" (").ok_or_else(bad)?;
        let source = source.strip_suffix(')').ok_or_else(bad)?;
        let value = value
            .as_str()
            .ok_or_else(|| format!("[metadata] {key:?} is not a string"))?;
        let checksum = (value != "<none>").then(|| value.to_string());
        out.insert(
            (
                name.to_string(),
                version.to_string(),
                Some(source.to_string()),
            ),
            checksum,
        );
    }
    Ok(out)
}

fn describe(name: &str, version: &str, source: Option<&str>) -> String {
    match source {
        Some(s) => format!("package {name} {version} ({s})"),
        None => format!("package {name} {version}"),
    }
}
