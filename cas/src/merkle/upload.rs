//! Uploading a local folder: [`build_tree`], one bulk `find_missing`, then streamed uploads of
//! only the missing blobs.

use std::collections::hash_map::{Entry, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2::{Directory, Tree};
use futures::{StreamExt as _, TryStreamExt as _};

use super::{
    build_tree, encode_directory, find_missing_batched, post_order, LocalTree, MerkleError,
    CHUNK_SIZE,
};
use crate::digest::{Digest, DigestHasher};
use crate::error::StoreError;
use crate::store::{BlobStore, ChunkStream};

/// How many files are streamed to the store at once.
const UPLOAD_CONCURRENCY: usize = 8;

/// What an upload found and sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadStats {
    /// Files in the tree, one per path.
    pub files: u64,
    /// Directories in the tree, the root included.
    pub directories: u64,
    pub symlinks: u64,
    /// Total size of all files, one per path.
    pub file_bytes: u64,
    /// Blobs (file contents and `Directory` messages) the store lacked and was sent.
    pub uploaded_blobs: u64,
    /// Bytes of those blobs.
    pub uploaded_bytes: u64,
}

/// A folder uploaded by [`upload_directory`].
#[derive(Clone, Debug)]
pub struct UploadedTree {
    pub root_digest: Digest,
    pub stats: UploadStats,
    /// The tree that was uploaded (digests, file paths, `Directory` messages).
    pub tree: LocalTree,
}

impl UploadedTree {
    /// The REAPI `Tree` message of the uploaded folder.
    pub fn tree_message(&self) -> Tree {
        self.tree.tree_message()
    }
}

/// Hashes the folder at `root` ([`build_tree`]), asks the store in bulk which blobs it lacks,
/// and uploads only those: file contents streamed from disk in [`CHUNK_SIZE`] chunks (several
/// files at once), then `Directory` messages, children before parents, so a store never holds a
/// directory whose subdirectories it lacks because of us.
pub async fn upload_directory(
    store: &dyn BlobStore,
    root: &Path,
) -> Result<UploadedTree, MerkleError> {
    upload_tree(store, build_tree(root).await?).await
}

/// Uploads an already built tree (see [`upload_directory`]). Each file is re-hashed while it
/// streams; one that changed since [`build_tree`] aborts its upload (the store keeps nothing)
/// and fails with [`MerkleError::FileChanged`].
pub async fn upload_tree(
    store: &dyn BlobStore,
    tree: LocalTree,
) -> Result<UploadedTree, MerkleError> {
    // One path per distinct content, in walk order.
    let mut file_paths: HashMap<Digest, &Path> = HashMap::new();
    let mut wanted: Vec<Digest> = Vec::new();
    for f in &tree.files {
        if let Entry::Vacant(e) = file_paths.entry(f.digest) {
            e.insert(&f.path);
            wanted.push(f.digest);
        }
    }
    let file_count = wanted.len();
    wanted.extend(
        tree.directories
            .iter()
            .map(|(d, _)| *d)
            .filter(|d| !file_paths.contains_key(d)),
    );
    let missing = find_missing_batched(store, &wanted).await?;

    let mut stats = UploadStats {
        files: tree.stats.files,
        directories: tree.stats.directories,
        symlinks: tree.stats.symlinks,
        file_bytes: tree.stats.file_bytes,
        ..UploadStats::default()
    };

    let file_jobs: Vec<(Digest, PathBuf)> = wanted[..file_count]
        .iter()
        .filter(|d| missing.contains(d))
        .filter_map(|d| file_paths.get(d).map(|p| (*d, p.to_path_buf())))
        .collect();
    let uploaded: Vec<u64> = futures::stream::iter(file_jobs)
        .map(|(digest, path)| upload_file(store, digest, path))
        .buffer_unordered(UPLOAD_CONCURRENCY)
        .try_collect()
        .await?;
    stats.uploaded_blobs += uploaded.len() as u64;
    stats.uploaded_bytes += uploaded.iter().sum::<u64>();

    let by_digest: HashMap<Digest, &Directory> =
        tree.directories.iter().map(|(d, dir)| (*d, dir)).collect();
    for digest in post_order(tree.root_digest, &by_digest) {
        // A directory whose encoding equals a file's content was uploaded as that file.
        if !missing.contains(&digest) || file_paths.contains_key(&digest) {
            continue;
        }
        let Some(dir) = by_digest.get(&digest) else {
            continue;
        };
        let (encoded_digest, bytes) = encode_directory(dir);
        if encoded_digest != digest {
            return Err(MerkleError::Internal(format!(
                "directory {digest} re-encodes to {encoded_digest}"
            )));
        }
        store
            .put_bytes(&digest, bytes)
            .await
            .map_err(MerkleError::store(format!("uploading directory {digest}")))?;
        stats.uploaded_blobs += 1;
        stats.uploaded_bytes += digest.size();
    }

    Ok(UploadedTree {
        root_digest: tree.root_digest,
        stats,
        tree,
    })
}

/// Streams one file into the store; returns the bytes sent.
async fn upload_file(
    store: &dyn BlobStore,
    digest: Digest,
    path: PathBuf,
) -> Result<u64, MerkleError> {
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(MerkleError::io(&path))?;
    let changed = Arc::new(AtomicBool::new(false));
    let stream = verified_file_stream(file, digest, changed.clone());
    match store.put(&digest, stream).await {
        Ok(()) => Ok(digest.size()),
        Err(_) if changed.load(Ordering::SeqCst) => Err(MerkleError::FileChanged {
            path,
            expected: digest,
        }),
        Err(e) => Err(MerkleError::store(format!(
            "uploading {} as {digest}",
            path.display()
        ))(e)),
    }
}

/// The file's content in [`CHUNK_SIZE`] chunks, hashed on the way; if it turns out not to be
/// `expected` (the file changed since it was hashed), the stream ends with an error, which
/// makes the store drop the upload, and `changed` is set.
fn verified_file_stream(
    file: tokio::fs::File,
    expected: Digest,
    changed: Arc<AtomicBool>,
) -> ChunkStream {
    let reader = tokio_util::io::ReaderStream::with_capacity(file, CHUNK_SIZE);
    let state = (reader, DigestHasher::new(), false);
    let refuse = move |changed: &AtomicBool, what: String| {
        changed.store(true, Ordering::SeqCst);
        StoreError::FailedPrecondition(format!(
            "the file uploaded as {expected} changed while being read: {what}"
        ))
    };
    Box::pin(futures::stream::unfold(
        state,
        move |(mut reader, mut hasher, ended)| {
            let changed = changed.clone();
            async move {
                if ended {
                    return None;
                }
                match reader.next().await {
                    Some(Ok(chunk)) => {
                        hasher.update(&chunk);
                        if hasher.len() > expected.size() {
                            let err =
                                refuse(&changed, format!("it grew past {} bytes", expected.size()));
                            return Some((Err(err), (reader, hasher, true)));
                        }
                        Some((Ok(chunk), (reader, hasher, false)))
                    }
                    Some(Err(e)) => Some((Err(StoreError::Io(e)), (reader, hasher, true))),
                    None => {
                        let actual = std::mem::take(&mut hasher).finish();
                        if actual == expected {
                            return None;
                        }
                        let err = refuse(&changed, format!("it now hashes to {actual}"));
                        Some((Err(err), (reader, hasher, true)))
                    }
                }
            }
        },
    ))
}
