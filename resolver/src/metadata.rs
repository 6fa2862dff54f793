//! `cargo metadata`: the packages of a build, with what each unit's command line and
//! environment need (`CARGO_PKG_*` values, declared features, `links`, lints).
//!
//! We read cargo's JSON into our own small types rather than the `cargo_metadata` crate because
//! cargo passes several fields verbatim into `CARGO_PKG_*` variables (e.g. `rust-version = "1.85"`
//! stays `1.85`), and `cargo_metadata` normalises them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::ResolveError;
use crate::manifest::{self, LintFlags};

/// The JSON of `cargo metadata --format-version 1`, the parts we use.
#[derive(Clone, Debug, Deserialize)]
pub struct Metadata {
    pub packages: Vec<MetadataPackage>,
    pub workspace_members: Vec<String>,
    pub workspace_root: PathBuf,
    pub target_directory: PathBuf,
}

/// One package of `cargo metadata`.
#[derive(Clone, Debug, Deserialize)]
pub struct MetadataPackage {
    pub name: String,
    pub version: String,
    pub id: String,
    pub source: Option<String>,
    #[serde(default)]
    pub authors: Vec<String>,
    pub description: Option<String>,
    pub license: Option<String>,
    pub license_file: Option<String>,
    pub readme: Option<String>,
    pub homepage: Option<String>,
    pub repository: Option<String>,
    pub rust_version: Option<String>,
    #[serde(default)]
    pub features: BTreeMap<String, Vec<String>>,
    pub manifest_path: PathBuf,
    pub links: Option<String>,
    pub edition: Option<String>,
    #[serde(default)]
    pub targets: Vec<MetadataTarget>,
}

/// One target of a package in `cargo metadata`.
#[derive(Clone, Debug, Deserialize)]
pub struct MetadataTarget {
    pub name: String,
    pub src_path: PathBuf,
}

/// Where a package's sources come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PackageSource {
    /// A local directory (a workspace member or a `path` dependency): files read from disk.
    Path,
    /// A registry crate: the `.crate` archive (or vendored copy) must match `checksum`.
    Registry { source: String },
    /// A git checkout, pinned by the commit in `source`.
    Git { source: String },
}

/// A package, as the planner uses it.
#[derive(Clone, Debug)]
pub struct PackageInfo {
    pub id: String,
    pub name: String,
    pub version: semver::Version,
    /// The version as cargo printed it.
    pub version_text: String,
    pub source: PackageSource,
    /// The directory of its `Cargo.toml` on this machine.
    pub manifest_dir: PathBuf,
    /// Where its files appear in every action's input root (relative, `/`-separated; `""` is
    /// the root itself).
    pub exec_dir: String,
    /// Every declared feature name, sorted (for `--check-cfg`).
    pub features: Vec<String>,
    pub authors: Vec<String>,
    pub description: String,
    pub license: String,
    pub license_file: String,
    pub readme: String,
    pub homepage: String,
    pub repository: String,
    pub rust_version: String,
    pub links: Option<String>,
    /// `[lints]` as rustc flags, plus extra `--check-cfg` values.
    pub lints: LintFlags,
    /// A path package: lints apply in full (others get `--cap-lints allow`).
    pub is_local: bool,
    /// The crate roots of all its targets (local paths).
    pub targets: Vec<PathBuf>,
}

impl PackageInfo {
    /// `source` as recorded in `Cargo.lock` (without the `#commit` fragment for git).
    pub fn lock_source(&self) -> Option<&str> {
        match &self.source {
            PackageSource::Path => None,
            PackageSource::Registry { source } | PackageSource::Git { source } => Some(source),
        }
    }

    /// A stable description of the source for unit hashes: never a local absolute path.
    pub fn stable_source(&self) -> String {
        match &self.source {
            PackageSource::Path => format!("path:{}", self.exec_dir),
            PackageSource::Registry { source } | PackageSource::Git { source } => source.clone(),
        }
    }
}

/// The registry crates.io packages come from.
pub const CRATES_IO: &str = "registry+https://github.com/rust-lang/crates.io-index";
/// Reserved for cargo-farm's own files in every input root.
pub const FARM_DIR: &str = ".cargo-farm";

/// Packages by id, with the workspace root.
#[derive(Clone, Debug)]
pub struct Packages {
    pub by_id: BTreeMap<String, PackageInfo>,
    pub workspace_root: PathBuf,
    pub target_directory: PathBuf,
    pub workspace_members: Vec<String>,
}

impl Packages {
    /// Builds package records from metadata, reading each manifest's `[lints]`.
    pub fn from_metadata(meta: &Metadata) -> Result<Packages, ResolveError> {
        let root = &meta.workspace_root;
        let workspace_lints = manifest::workspace_lints(&root.join("Cargo.toml"))?;
        let mut by_id = BTreeMap::new();
        for p in &meta.packages {
            let info = package_info(p, root, workspace_lints.as_ref())?;
            by_id.insert(p.id.clone(), info);
        }
        Ok(Packages {
            by_id,
            workspace_root: root.clone(),
            target_directory: meta.target_directory.clone(),
            workspace_members: meta.workspace_members.clone(),
        })
    }

    pub fn get(&self, id: &str) -> Result<&PackageInfo, ResolveError> {
        self.by_id.get(id).ok_or_else(|| {
            ResolveError::Cargo(format!(
                "the unit graph names package {id}, which cargo metadata does not list"
            ))
        })
    }
}

fn package_info(
    p: &MetadataPackage,
    workspace_root: &Path,
    workspace_lints: Option<&toml::Table>,
) -> Result<PackageInfo, ResolveError> {
    let version = semver::Version::parse(&p.version).map_err(|e| {
        ResolveError::Cargo(format!(
            "package {} has version {:?}: {e}",
            p.name, p.version
        ))
    })?;
    let manifest_dir = p
        .manifest_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let source = match &p.source {
        None => PackageSource::Path,
        Some(s) if s.starts_with("git+") => PackageSource::Git { source: s.clone() },
        Some(s) => PackageSource::Registry { source: s.clone() },
    };
    let exec_dir = match &source {
        PackageSource::Path => match manifest_dir.strip_prefix(workspace_root) {
            Ok(rel) => relative_slash_path(rel)?,
            Err(_) => format!("{FARM_DIR}/path/{}-{}", p.name, p.version),
        },
        PackageSource::Registry { source } if source == CRATES_IO => {
            format!("{FARM_DIR}/registry/{}-{}", p.name, p.version)
        }
        PackageSource::Registry { source } | PackageSource::Git { source } => format!(
            "{FARM_DIR}/registry/{}-{}-{}",
            p.name,
            p.version,
            &crate::hash::short_hash(source.as_bytes())[..8]
        ),
    };
    let in_workspace = source == PackageSource::Path && manifest_dir.starts_with(workspace_root);
    if in_workspace && (exec_dir == FARM_DIR || exec_dir.starts_with(&format!("{FARM_DIR}/"))) {
        return Err(ResolveError::Unsupported(format!(
            "package {} lives in {}, a directory name cargo-farm reserves for its own files",
            p.name,
            manifest_dir.display()
        )));
    }
    let lints = manifest::package_lints(&p.manifest_path, workspace_lints)?;
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    Ok(PackageInfo {
        id: p.id.clone(),
        name: p.name.clone(),
        version,
        version_text: p.version.clone(),
        is_local: source == PackageSource::Path,
        source,
        manifest_dir,
        exec_dir,
        features: p.features.keys().cloned().collect(),
        authors: p.authors.clone(),
        description: text(&p.description),
        license: text(&p.license),
        license_file: text(&p.license_file),
        readme: text(&p.readme),
        homepage: text(&p.homepage),
        repository: text(&p.repository),
        rust_version: text(&p.rust_version),
        links: p.links.clone(),
        lints,
        targets: p.targets.iter().map(|t| t.src_path.clone()).collect(),
    })
}

/// A relative path as `/`-separated UTF-8, refusing anything else.
pub fn relative_slash_path(rel: &Path) -> Result<String, ResolveError> {
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            std::path::Component::Normal(s) => parts.push(s.to_str().ok_or_else(|| {
                ResolveError::Unsupported(format!("path {} is not UTF-8", rel.display()))
            })?),
            std::path::Component::CurDir => {}
            _ => {
                return Err(ResolveError::Unsupported(format!(
                    "path {} is not a plain relative path",
                    rel.display()
                )))
            }
        }
    }
    Ok(parts.join("/"))
}
