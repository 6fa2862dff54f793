//! Input roots: turns a resolver [`ActionSpec`]'s inputs into one REAPI Merkle tree in the
//! farm's CAS. Package sources, the toolchain and override paths are hashed (through the
//! [`DigestCache`]) and uploaded once per build; outputs of earlier actions are referenced by
//! the digests their results carry, never downloaded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _, Result};
use cas::merkle::{DirectoryIndex, TreeBuilder};
use cas::Digest;
use resolver::metadata::PackageSource;
use resolver::sources::lockfile::Lockfile;
use resolver::{ActionSpec, Input, Plan};
use tokio::sync::OnceCell;

use crate::digest_cache::DigestCache;
use crate::results::Results;
use crate::uploader::{BlobSource, Uploader};

/// A stored tree: its root digest and the directories to expand it from.
#[derive(Clone, Debug)]
pub struct StoredTree {
    pub root: Digest,
    pub index: DirectoryIndex,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum TreeKey {
    Package(String, Vec<String>),
    Toolchain(Vec<String>),
    Host(PathBuf),
}

/// Builds input roots for one build.
pub struct InputComposer {
    plan: Arc<Plan>,
    uploader: Arc<Uploader>,
    digests: Arc<DigestCache>,
    lockfile: Option<Lockfile>,
    trees: parking_lot::Mutex<HashMap<TreeKey, Arc<OnceCell<StoredTree>>>>,
}

/// One entry of a tree to build: a file (where it goes, where its bytes are) or a symlink.
enum TreeFile {
    File {
        rel: String,
        source: BlobSource,
        executable: bool,
    },
    Symlink {
        rel: String,
        target: String,
    },
}

impl TreeFile {
    fn rel(&self) -> &str {
        match self {
            TreeFile::File { rel, .. } | TreeFile::Symlink { rel, .. } => rel,
        }
    }
}

/// Whether `rel` is one of `exclude` (a file) or under one (a directory, with a trailing `/`).
fn excluded(rel: &str, exclude: &[String]) -> bool {
    exclude.iter().any(|e| match e.strip_suffix('/') {
        Some(dir) => rel.starts_with(&format!("{dir}/")),
        None => rel == e,
    })
}

fn file(rel: String, source: BlobSource, executable: bool) -> TreeFile {
    TreeFile::File {
        rel,
        source,
        executable,
    }
}

impl InputComposer {
    pub fn new(
        plan: Arc<Plan>,
        uploader: Arc<Uploader>,
        digests: Arc<DigestCache>,
    ) -> Result<InputComposer> {
        let lock_path = plan.packages.workspace_root.join("Cargo.lock");
        let lockfile = if lock_path.is_file() {
            Some(Lockfile::read(&lock_path)?)
        } else {
            None
        };
        Ok(InputComposer {
            plan,
            uploader,
            digests,
            lockfile,
            trees: Default::default(),
        })
    }

    /// The input root of `spec`, uploaded; `results` holds the outputs of earlier actions.
    pub async fn input_root(&self, spec: &ActionSpec, results: &Results) -> Result<Digest> {
        let mut b = TreeBuilder::new();
        for input in &spec.inputs {
            match input {
                Input::Toolchain { triples, at } => {
                    let t = self.tree(TreeKey::Toolchain(triples.clone())).await?;
                    b.add_tree(at, t.root, &t.index)?;
                }
                Input::Package {
                    package,
                    at,
                    exclude,
                } => {
                    let t = self
                        .tree(TreeKey::Package(package.clone(), exclude.clone()))
                        .await?;
                    b.add_tree(at, t.root, &t.index)?;
                }
                Input::UnitFile { unit, file, at } => {
                    let out = results.file(*unit, file).ok_or_else(|| {
                        anyhow!(
                            "{} did not produce {file}, which {} needs",
                            self.plan.describe(*unit),
                            self.plan.describe(spec.unit)
                        )
                    })?;
                    b.add_file(at, out.digest, out.executable)?;
                }
                Input::OutDir { unit, at } => {
                    let t = results.out_dir(*unit).ok_or_else(|| {
                        anyhow!("{} produced no OUT_DIR", self.plan.describe(*unit))
                    })?;
                    b.add_tree(at, t.root, &t.index)?;
                }
                Input::EmptyDir { at } => b.add_empty_dir(at)?,
                Input::HostPath { path, at } => {
                    if path.is_dir() {
                        let t = self.tree(TreeKey::Host(path.clone())).await?;
                        b.add_tree(at, t.root, &t.index)?;
                    } else {
                        let d = self.digest_local(path).await?;
                        self.uploader
                            .ensure(vec![(d.digest, BlobSource::File(path.clone()))])
                            .await?;
                        b.add_file(at, d.digest, d.executable)?;
                    }
                }
            }
        }
        let composed = b.build();
        let blobs = composed
            .directories
            .into_iter()
            .map(|d| (d.digest, BlobSource::Bytes(d.bytes)))
            .collect();
        self.uploader.ensure(blobs).await?;
        Ok(composed.root_digest)
    }

    async fn tree(&self, key: TreeKey) -> Result<StoredTree> {
        let cell = self.trees.lock().entry(key.clone()).or_default().clone();
        let tree = cell
            .get_or_try_init(|| async { self.build_tree(&key).await })
            .await?;
        Ok(tree.clone())
    }

    async fn build_tree(&self, key: &TreeKey) -> Result<StoredTree> {
        let files = match key {
            TreeKey::Toolchain(triples) => self
                .plan
                .toolchain
                .files(triples)?
                .into_iter()
                .map(|(rel, local)| file(rel, BlobSource::File(local), false))
                .collect(),
            TreeKey::Package(id, exclude) => {
                let mut files = self.package_files(id).await?;
                files.retain(|f| !excluded(f.rel(), exclude));
                files
            }
            TreeKey::Host(dir) => {
                let dir = dir.clone();
                local_dir_files(&dir, &[]).await?
            }
        };
        self.store_tree(files).await.with_context(|| match key {
            TreeKey::Toolchain(_) => format!(
                "preparing the toolchain {} for the farm",
                self.plan.toolchain.sysroot.display()
            ),
            TreeKey::Package(id, _) => format!("preparing the sources of {id}"),
            TreeKey::Host(p) => format!("preparing the input {}", p.display()),
        })
    }

    /// The files of a package: from disk for path and git packages, from the `.crate` archive
    /// (or vendored copy) checked against Cargo.lock for registry ones.
    async fn package_files(&self, id: &str) -> Result<Vec<TreeFile>> {
        let package = self.plan.packages.get(id)?.clone();
        match &package.source {
            PackageSource::Path | PackageSource::Git { .. } => {
                let exclude = vec![self.plan.target_directory().clone()];
                local_dir_files(&package.manifest_dir, &exclude).await
            }
            PackageSource::Registry { source } => {
                let lock = self.lockfile.as_ref().ok_or_else(|| {
                    anyhow!(
                        "{} comes from a registry but the workspace has no Cargo.lock to check \
                         it against",
                        package.name
                    )
                })?;
                let checksum = lock
                    .get(&package.name, &package.version_text, Some(source))
                    .and_then(|p| p.checksum.clone())
                    .ok_or_else(|| {
                        anyhow!(
                            "Cargo.lock records no checksum for {} {}; cargo farm uses a \
                             registry crate only after checking it against Cargo.lock",
                            package.name,
                            package.version_text
                        )
                    })?;
                let dir = package.manifest_dir.clone();
                let name = package.name.clone();
                let version = package.version_text.clone();
                tokio::task::spawn_blocking(move || {
                    registry_files(&dir, &name, &version, &checksum)
                })
                .await
                .context("reading a crate archive")?
            }
        }
    }

    /// Hashes and uploads `files`, returning the stored tree.
    async fn store_tree(&self, files: Vec<TreeFile>) -> Result<StoredTree> {
        let digests = self.digests.clone();
        let hashed = tokio::task::spawn_blocking(move || -> Result<Vec<(TreeFile, Digest)>> {
            files
                .into_iter()
                .map(|f| {
                    let d = match &f {
                        TreeFile::File {
                            source: BlobSource::Bytes(b),
                            ..
                        } => Digest::of(b),
                        TreeFile::File {
                            source: BlobSource::File(p),
                            ..
                        } => {
                            digests
                                .digest(p)
                                .with_context(|| format!("reading {}", p.display()))?
                                .digest
                        }
                        TreeFile::Symlink { .. } => Digest::EMPTY,
                    };
                    Ok((f, d))
                })
                .collect()
        })
        .await
        .context("hashing inputs")??;
        let mut b = TreeBuilder::new();
        let mut blobs = Vec::with_capacity(hashed.len());
        for (f, d) in hashed {
            match f {
                TreeFile::File {
                    rel,
                    source,
                    executable,
                } => {
                    let executable =
                        executable || matches!(&source, BlobSource::File(p) if is_executable(p));
                    b.add_file(&rel, d, executable)?;
                    blobs.push((d, source));
                }
                TreeFile::Symlink { rel, target } => b.add_symlink(&rel, &target)?,
            }
        }
        let composed = b.build();
        let mut index = DirectoryIndex::new();
        for dir in &composed.directories {
            index.insert(dir.directory.clone())?;
            blobs.push((dir.digest, BlobSource::Bytes(dir.bytes.clone())));
        }
        self.uploader.ensure(blobs).await?;
        Ok(StoredTree {
            root: composed.root_digest,
            index,
        })
    }

    async fn digest_local(&self, path: &Path) -> Result<crate::digest_cache::FileDigest> {
        let digests = self.digests.clone();
        let p = path.to_path_buf();
        tokio::task::spawn_blocking(move || digests.digest(&p))
            .await
            .context("hashing an input")?
            .with_context(|| format!("reading {}", path.display()))
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p)
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Every file of a local directory (see `resolver::package_files`).
async fn local_dir_files(dir: &Path, exclude: &[PathBuf]) -> Result<Vec<TreeFile>> {
    let dir = dir.to_path_buf();
    let exclude = exclude.to_vec();
    let files =
        tokio::task::spawn_blocking(move || resolver::package_files::package_files(&dir, &exclude))
            .await
            .context("listing package files")??;
    Ok(files
        .into_iter()
        .map(|f| file(f.rel, BlobSource::File(f.local), f.executable))
        .collect())
}

/// A registry crate's files: a vendored directory verified file by file against its
/// `.cargo-checksum.json`, or the `.crate` archive cargo downloaded, verified against
/// Cargo.lock's checksum before it is opened.
fn registry_files(dir: &Path, name: &str, version: &str, checksum: &str) -> Result<Vec<TreeFile>> {
    use resolver::sources::{registry, vendor};
    if dir.join(".cargo-checksum.json").is_file() {
        let files = vendor::read_vendored(dir, Some(checksum))?;
        return Ok(files
            .into_iter()
            .map(|f| file(f.path, BlobSource::File(f.local_path), f.executable))
            .collect());
    }
    let archive = registry::cached_crate_path(&dir.join("Cargo.toml")).ok_or_else(|| {
        anyhow!(
            "cannot find the downloaded .crate of {name} {version} for {} (run `cargo fetch`)",
            dir.display()
        )
    })?;
    if !archive.is_file() {
        bail!(
            "{} is missing: cargo farm reads registry crates from cargo's download cache so it \
             can check them against Cargo.lock (run `cargo fetch`)",
            archive.display()
        );
    }
    let contents = registry::read_crate_archive(&archive, name, version, checksum)?;
    let mut out: Vec<TreeFile> = contents
        .files
        .into_iter()
        .map(|f| file(f.path, BlobSource::Bytes(f.data), f.executable))
        .collect();
    out.extend(contents.symlinks.into_iter().map(|l| TreeFile::Symlink {
        rel: l.path,
        target: l.target,
    }));
    Ok(out)
}
