//! Materializing an action's input root: directories created, files hardlinked from the local
//! cache, symlinks recreated; then the parents of the declared outputs created.
//!
//! Every `Directory` is fetched and checked against its digest and REAPI canonical form (names
//! are single, valid path components) before anything is written; blobs the CAS lacks are all
//! reported together as [`MerkleError::MissingBlobs`] with the paths needing them, which the
//! executor turns into `FAILED_PRECONDITION` with a `PreconditionFailure`.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2::Directory;
use cas::merkle::{self, BlobKind, MerkleError, MissingBlob};
use cas::store::grpc::GrpcStore;
use cas::store::BlobStore;
use cas::Digest;

use crate::cache::{CacheError, Key, LocalCache};
use crate::paths::{self, Resolved, RootPath};

/// How many times links are retried after their cache files were evicted mid-staging.
const LINK_ATTEMPTS: usize = 3;

/// Why an input root could not be staged.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Fetching or checking the tree failed; includes missing blobs.
    #[error(transparent)]
    Merkle(#[from] MerkleError),
    /// The inputs or the declared outputs are not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// A blob could not be brought into the local cache.
    #[error("{0}")]
    Fetch(String),
    #[error("I/O error at {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StageError {
    /// The gRPC status to report for this error.
    pub fn to_status(self) -> tonic::Status {
        match self {
            StageError::Merkle(e) => e.into(),
            StageError::Invalid(m) => tonic::Status::invalid_argument(m),
            StageError::Fetch(m) => tonic::Status::unavailable(m),
            e @ StageError::Io { .. } => tonic::Status::internal(e.to_string()),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StageError + '_ {
    move |source| StageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What was staged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageStats {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// The entries of a tree, flattened.
#[derive(Default)]
struct Plan {
    /// Directories below the root, parents first.
    dirs: Vec<PathBuf>,
    files: Vec<(PathBuf, Key)>,
    symlinks: Vec<(PathBuf, String)>,
    stats: StageStats,
}

/// Who owns what the worker creates for an action, when the action runs as another user.
pub type Owner = Option<(u32, u32)>;

/// Writes the tree `root` into the existing, empty directory `dest`. `Directory` messages are
/// read through `dirs` (a store that may cache them), file contents through the local `cache`
/// (fetching misses from `store`). Created directories are given to `owner`.
pub async fn stage(
    dirs: &dyn BlobStore,
    cache: &Arc<LocalCache>,
    store: &GrpcStore,
    root: &Digest,
    dest: &Path,
    owner: Owner,
    max_entries: u64,
) -> Result<StageStats, StageError> {
    let tree = merkle::get_tree_with_digests(dirs, root).await?;
    let by_digest: HashMap<Digest, &Directory> = tree.iter().map(|(d, dir)| (*d, dir)).collect();
    for (d, dir) in &tree {
        merkle::validate_directory(dir)
            .map_err(|reason| StageError::Invalid(format!("input directory {d}: {reason}")))?;
    }
    let plan = plan(*root, &by_digest, max_entries)?;

    // The first path of each distinct file, to name missing blobs.
    let mut first_path: HashMap<Key, PathBuf> = HashMap::new();
    for (p, k) in &plan.files {
        first_path.entry(*k).or_insert_with(|| p.clone());
    }
    let keys: Vec<Key> = first_path.keys().copied().collect();
    ensure(cache, store, &keys, &first_path).await?;

    let stats = plan.stats;
    let dest = dest.to_path_buf();
    let cache2 = cache.clone();
    let (plan, mut evicted) = blocking(move || write_tree(&cache2, &dest, plan, owner)).await?;
    for _ in 1..LINK_ATTEMPTS {
        if evicted.is_empty() {
            break;
        }
        let keys: Vec<Key> = evicted.iter().map(|(_, k)| *k).collect();
        ensure(cache, store, &keys, &first_path).await?;
        let cache2 = cache.clone();
        evicted = blocking(move || link_files(&cache2, evicted)).await?;
    }
    drop(plan);
    if let Some((p, _)) = evicted.first() {
        return Err(StageError::Fetch(format!(
            "the local cache is too small to hold the inputs at once ({} evicted while staging)",
            p.display()
        )));
    }
    Ok(stats)
}

async fn ensure(
    cache: &Arc<LocalCache>,
    store: &GrpcStore,
    keys: &[Key],
    first_path: &HashMap<Key, PathBuf>,
) -> Result<(), StageError> {
    match cache.ensure(store, keys).await {
        Ok(()) => Ok(()),
        Err(CacheError::Missing(digests)) => {
            let missing = digests
                .into_iter()
                .map(|digest| {
                    let path = [false, true]
                        .iter()
                        .find_map(|&executable| first_path.get(&Key { digest, executable }))
                        .cloned()
                        .unwrap_or_default();
                    MissingBlob {
                        digest,
                        path,
                        kind: BlobKind::File,
                    }
                })
                .collect();
            Err(MerkleError::MissingBlobs(missing).into())
        }
        Err(e @ CacheError::Fetch { .. }) => Err(StageError::Fetch(e.to_string())),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StageError> + Send + 'static,
) -> Result<T, StageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StageError::Fetch(format!("staging task failed: {e}")))?
}

/// Flattens the tree, depth first, refusing trees of more than `max_entries` entries.
fn plan(
    root: Digest,
    dirs: &HashMap<Digest, &Directory>,
    max_entries: u64,
) -> Result<Plan, StageError> {
    let mut plan = Plan::default();
    let mut stack = vec![(root, PathBuf::new())];
    let mut entries = 0u64;
    while let Some((digest, path)) = stack.pop() {
        let dir = dirs.get(&digest).ok_or_else(|| {
            StageError::Invalid(format!("directory {digest} is not in the fetched tree"))
        })?;
        entries += (dir.files.len() + dir.directories.len() + dir.symlinks.len()) as u64;
        if entries > max_entries {
            return Err(StageError::Invalid(format!(
                "the input root expands to more than {max_entries} entries"
            )));
        }
        for f in &dir.files {
            let digest = Digest::from_proto(f.digest.as_ref())
                .map_err(|e| StageError::Invalid(format!("file {:?}: {e}", f.name)))?;
            plan.stats.files += 1;
            plan.stats.bytes += digest.size();
            plan.files.push((
                path.join(&f.name),
                Key {
                    digest,
                    executable: f.is_executable,
                },
            ));
        }
        for s in &dir.symlinks {
            plan.stats.symlinks += 1;
            plan.symlinks.push((path.join(&s.name), s.target.clone()));
        }
        for d in dir.directories.iter().rev() {
            let digest = Digest::from_proto(d.digest.as_ref())
                .map_err(|e| StageError::Invalid(format!("directory {:?}: {e}", d.name)))?;
            let child = path.join(&d.name);
            plan.dirs.push(child.clone());
            plan.stats.directories += 1;
            stack.push((digest, child));
        }
    }
    // Parents before children: a path sorts after its prefix.
    plan.dirs.sort();
    Ok(plan)
}

/// Creates the directories, links the files and makes the symlinks of `plan` under `dest`.
/// Returns the plan and the files whose cache entry vanished (evicted) before being linked.
#[allow(clippy::type_complexity)]
fn write_tree(
    cache: &LocalCache,
    dest: &Path,
    mut plan: Plan,
    owner: Owner,
) -> Result<(Plan, Vec<(PathBuf, Key)>), StageError> {
    for rel in &plan.dirs {
        let p = dest.join(rel);
        std::fs::create_dir(&p).map_err(io(&p))?;
        give(&p, owner)?;
    }
    let files = std::mem::take(&mut plan.files);
    let evicted = link_files(
        cache,
        files.iter().map(|(p, k)| (dest.join(p), *k)).collect(),
    )?;
    plan.files = files;
    for (rel, target) in &plan.symlinks {
        let p = dest.join(rel);
        std::os::unix::fs::symlink(target, &p).map_err(io(&p))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).map_err(io(&p))?;
        }
    }
    Ok((plan, evicted))
}

/// Hardlinks each file (absolute destination paths) from the cache; returns those whose cache
/// file is gone.
fn link_files(
    cache: &LocalCache,
    files: Vec<(PathBuf, Key)>,
) -> Result<Vec<(PathBuf, Key)>, StageError> {
    let mut evicted = Vec::new();
    for (p, key) in files {
        match cache.link(&key, &p) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound && !cache.contains(&key) => {
                evicted.push((p, key));
            }
            Err(e) => return Err(io(&p)(e)),
        }
    }
    Ok(evicted)
}

/// Chowns a directory the worker made to the action's user.
fn give(path: &Path, owner: Owner) -> Result<(), StageError> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io(path))?;
    }
    Ok(())
}

/// Creates `dest`, the (empty) input root, owned by `owner`.
pub fn create_root(dest: &Path, owner: Owner) -> Result<(), StageError> {
    std::fs::create_dir(dest).map_err(io(dest))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755)).map_err(io(dest))?;
    give(dest, owner)
}

/// Makes sure the directory `path` (relative to `root`) exists, creating missing components
/// for `owner`. Existing components may be symlinks that stay inside the root; anything
/// leaving the root, or a file in the way, is refused.
pub fn create_dirs_within(root: &Path, path: &[String], owner: Owner) -> Result<(), StageError> {
    let mut at: RootPath = Vec::new();
    for c in path {
        at.push(c.clone());
        let p = paths::join(root, &at);
        match std::fs::symlink_metadata(&p) {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                std::fs::create_dir(&p).map_err(io(&p))?;
                give(&p, owner)?;
            }
            Err(e) => return Err(io(&p)(e)),
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                match paths::resolve(root, &at, true)
                    .map_err(|e| StageError::Invalid(e.to_string()))?
                {
                    Resolved::At(real) if paths::join(root, &real).is_dir() => at = real,
                    _ => {
                        return Err(StageError::Invalid(format!(
                            "{} is a symlink to something that is not a directory",
                            paths::show(&at)
                        )))
                    }
                }
            }
            Ok(_) => {
                return Err(StageError::Invalid(format!(
                    "{} is a file in the input root, but a directory is needed there",
                    paths::show(&at)
                )))
            }
        }
    }
    Ok(())
}
