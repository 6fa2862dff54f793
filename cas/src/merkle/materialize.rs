//! Writing a stored tree to disk.

use std::collections::hash_map::{Entry, HashMap};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use bazel_remote_apis::build::bazel::remote::execution::v2::Directory;
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::io::AsyncWriteExt as _;

use super::error::show;
use super::fetch::fetch_tree;
use super::validate::symlink_escapes;
use super::{
    find_missing_batched, post_order, validate_directory, BlobKind, MerkleError, MissingBlob,
};
use crate::digest::{Digest, DigestHasher};
use crate::store::{BlobStore, ByteRange};

/// How [`materialize_with`] treats what it writes.
#[derive(Clone, Debug)]
pub struct MaterializeOptions {
    /// Create symlinks whose target is absolute or leads outside the tree. Off by default: an
    /// action's inputs should not be able to point the sandbox at the host.
    pub allow_escaping_symlinks: bool,
    /// Refuse trees that expand to more files, directories and symlinks than this. A tree that
    /// reuses one subtree at many places is small in the CAS but can be huge on disk.
    pub max_entries: u64,
    /// How many files are written at once.
    pub concurrency: usize,
}

impl Default for MaterializeOptions {
    fn default() -> Self {
        MaterializeOptions {
            allow_escaping_symlinks: false,
            max_entries: 10_000_000,
            concurrency: 16,
        }
    }
}

/// What [`materialize`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaterializeStats {
    pub files: u64,
    /// Directories, the root included.
    pub directories: u64,
    pub symlinks: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// [`materialize_with`] default options (escaping symlinks refused).
pub async fn materialize(
    store: &dyn BlobStore,
    root_digest: &Digest,
    dest: &Path,
) -> Result<MaterializeStats, MerkleError> {
    materialize_with(store, root_digest, dest, &MaterializeOptions::default()).await
}

/// Writes the tree rooted at `root_digest` into `dest` (created if needed; it may exist but
/// must not already hold any of the tree's names, which are created exclusively).
///
/// Before touching the disk, it fetches every `Directory`, checks each against its digest and
/// for canonical form, refuses escaping symlinks (unless allowed) and oversized trees, and asks
/// the store in one bulk call for the file blobs, failing with [`MerkleError::MissingBlobs`]
/// (every missing digest with a path needing it) if any is absent. Then it creates the
/// directories, streams each file chunk by chunk while hashing it (a mismatch deletes the file
/// and fails with [`MerkleError::ContentMismatch`]), sets modes 0o755 / 0o644 regardless of
/// the umask, and creates the symlinks last. On error `dest` is left partly written.
pub async fn materialize_with(
    store: &dyn BlobStore,
    root_digest: &Digest,
    dest: &Path,
    options: &MaterializeOptions,
) -> Result<MaterializeStats, MerkleError> {
    let fetched = fetch_tree(store, root_digest).await?;
    for f in &fetched {
        validate_directory(&f.dir).map_err(|reason| MerkleError::InvalidDirectory {
            digest: f.digest,
            path: f.path.clone(),
            reason,
        })?;
    }
    let dirs: HashMap<Digest, &Directory> = fetched.iter().map(|f| (f.digest, &f.dir)).collect();
    let entries = expanded_entries(*root_digest, &dirs);
    if entries > options.max_entries {
        return Err(MerkleError::TooManyEntries {
            root: *root_digest,
            limit: options.max_entries,
        });
    }
    let plan = plan(*root_digest, &dirs, options)?;

    let mut first_path: HashMap<Digest, &Path> = HashMap::new();
    let mut wanted = Vec::new();
    for job in &plan.files {
        if job.digest == Digest::EMPTY {
            continue;
        }
        if let Entry::Vacant(e) = first_path.entry(job.digest) {
            e.insert(&job.rel);
            wanted.push(job.digest);
        }
    }
    let missing = find_missing_batched(store, &wanted).await?;
    if !missing.is_empty() {
        let listed = wanted
            .iter()
            .filter(|d| missing.contains(d))
            .map(|d| MissingBlob {
                digest: *d,
                path: first_path
                    .get(d)
                    .map(|p| p.to_path_buf())
                    .unwrap_or_default(),
                kind: BlobKind::File,
            })
            .collect();
        return Err(MerkleError::MissingBlobs(listed));
    }

    let mut stats = MaterializeStats {
        files: plan.files.len() as u64,
        directories: plan.dirs.len() as u64 + 1,
        symlinks: plan.symlinks.len() as u64,
        bytes: 0,
    };
    let (dest_dir, new_dirs) = (dest.to_path_buf(), plan.dirs);
    blocking(move || {
        std::fs::create_dir_all(&dest_dir).map_err(MerkleError::io(&dest_dir))?;
        for rel in new_dirs {
            let path = dest_dir.join(rel);
            std::fs::create_dir(&path).map_err(MerkleError::io(&path))?;
        }
        Ok(())
    })
    .await?;

    let written: Vec<u64> = futures::stream::iter(plan.files)
        .map(|job| write_file(store, dest, job))
        .buffer_unordered(options.concurrency.max(1))
        .try_collect()
        .await?;
    stats.bytes = written.iter().sum();

    let (dest_dir, links) = (dest.to_path_buf(), plan.symlinks);
    blocking(move || {
        for (rel, target) in links {
            let path = dest_dir.join(rel);
            std::os::unix::fs::symlink(&target, &path).map_err(MerkleError::io(&path))?;
        }
        Ok(())
    })
    .await?;
    Ok(stats)
}

async fn blocking(
    f: impl FnOnce() -> Result<(), MerkleError> + Send + 'static,
) -> Result<(), MerkleError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| MerkleError::Internal(format!("a blocking file task failed: {e}")))?
}

/// How many entries (directories, the root included, files and symlinks) the tree has once
/// expanded, each subtree counted at every place it appears; saturating.
fn expanded_entries(root: Digest, dirs: &HashMap<Digest, &Directory>) -> u64 {
    let mut counts: HashMap<Digest, u64> = HashMap::with_capacity(dirs.len());
    for d in post_order(root, dirs) {
        let Some(dir) = dirs.get(&d) else { continue };
        let mut n = 1 + dir.files.len() as u64 + dir.symlinks.len() as u64;
        for child in &dir.directories {
            let c = Digest::from_proto(child.digest.as_ref()).ok();
            n = n.saturating_add(c.and_then(|c| counts.get(&c).copied()).unwrap_or(1));
        }
        counts.insert(d, n);
    }
    counts.get(&root).copied().unwrap_or(1)
}

/// A file to write: its content's digest, its path under the root, its mode.
struct FileJob {
    digest: Digest,
    rel: PathBuf,
    executable: bool,
}

/// Everything to create, in an order where parents come before their children.
struct Plan {
    dirs: Vec<PathBuf>,
    files: Vec<FileJob>,
    symlinks: Vec<(PathBuf, String)>,
}

/// Expands the (validated) tree into paths, checking every symlink where it is placed.
fn plan(
    root: Digest,
    dirs: &HashMap<Digest, &Directory>,
    options: &MaterializeOptions,
) -> Result<Plan, MerkleError> {
    let not_fetched = |d: &Digest| MerkleError::Internal(format!("directory {d} was not fetched"));
    let root_dir = *dirs.get(&root).ok_or_else(|| not_fetched(&root))?;
    let mut plan = Plan {
        dirs: Vec::new(),
        files: Vec::new(),
        symlinks: Vec::new(),
    };
    // Each entry: a directory's path and the directories from the root down to it.
    let mut stack: Vec<(PathBuf, Vec<&Directory>)> = vec![(PathBuf::new(), vec![root_dir])];
    while let Some((rel, chain)) = stack.pop() {
        let Some(dir) = chain.last().copied() else {
            continue;
        };
        let bad = |reason: String| MerkleError::InvalidDirectory {
            digest: super::directory_digest(dir),
            path: rel.clone(),
            reason,
        };
        for f in &dir.files {
            let digest = Digest::from_proto(f.digest.as_ref())
                .map_err(|e| bad(format!("file {:?}: {e}", f.name)))?;
            plan.files.push(FileJob {
                digest,
                rel: rel.join(&f.name),
                executable: f.is_executable,
            });
        }
        for s in &dir.symlinks {
            let path = rel.join(&s.name);
            if !options.allow_escaping_symlinks && symlink_escapes(dirs, &chain, &s.target) {
                return Err(MerkleError::EscapingSymlink {
                    path,
                    target: s.target.clone(),
                });
            }
            plan.symlinks.push((path, s.target.clone()));
        }
        for n in dir.directories.iter().rev() {
            let digest = Digest::from_proto(n.digest.as_ref())
                .map_err(|e| bad(format!("subdirectory {:?}: {e}", n.name)))?;
            let child = *dirs.get(&digest).ok_or_else(|| not_fetched(&digest))?;
            let path = rel.join(&n.name);
            plan.dirs.push(path.clone());
            let mut child_chain = chain.clone();
            child_chain.push(child);
            stack.push((path, child_chain));
        }
    }
    Ok(plan)
}

/// Streams one blob into a new file at `dest/job.rel`, verifying it against its digest.
/// Returns the bytes written.
async fn write_file(store: &dyn BlobStore, dest: &Path, job: FileJob) -> Result<u64, MerkleError> {
    let path = dest.join(&job.rel);
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .await
        .map_err(MerkleError::io(&path))?;
    let expected = job.digest;
    let mut hasher = DigestHasher::new();
    let mut too_long = false;
    if expected != Digest::EMPTY {
        let context = || format!("reading {expected} for {}", show(&job.rel));
        let missing = || {
            MerkleError::MissingBlobs(vec![MissingBlob {
                digest: expected,
                path: job.rel.clone(),
                kind: BlobKind::File,
            }])
        };
        let mut stream = match store.get(&expected, ByteRange::ALL).await {
            Ok(s) => s,
            Err(e) if e.is_not_found() => return Err(missing()),
            Err(e) => return Err(MerkleError::store(context())(e)),
        };
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) if e.is_not_found() => return Err(missing()),
                Err(e) => return Err(MerkleError::store(context())(e)),
            };
            hasher.update(&chunk);
            if hasher.len() > expected.size() {
                too_long = true;
                break;
            }
            file.write_all(&chunk)
                .await
                .map_err(MerkleError::io(&path))?;
        }
    }
    file.flush().await.map_err(MerkleError::io(&path))?;
    let written = hasher.len();
    let actual = hasher.finish();
    if too_long || actual != expected {
        drop(file);
        let _ = tokio::fs::remove_file(&path).await;
        let found = if too_long {
            format!("more than {} bytes", expected.size())
        } else {
            actual.to_string()
        };
        return Err(MerkleError::ContentMismatch {
            path,
            expected,
            found,
        });
    }
    let mode = if job.executable { 0o755 } else { 0o644 };
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .await
        .map_err(MerkleError::io(&path))?;
    Ok(written)
}
