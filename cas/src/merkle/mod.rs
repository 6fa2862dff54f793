//! REAPI v2 directory Merkle trees: building them from local folders, uploading, fetching and
//! materializing them.
//!
//! A tree is a set of `Directory` messages, each stored in the CAS under the SHA-256 of its
//! prost encoding and referring to its children by digest. Two equal folders give the same root
//! digest whatever their absolute path or the order their entries were created in, because every
//! `Directory` is in the canonical form the spec requires: files, directories and symlinks each
//! sorted by name (UTF-8 byte order), names unique and single path segments.
//!
//! - [`build_tree`] hashes a local folder without a store; [`upload_directory`] is `build_tree`
//!   followed by one bulk `find_missing` and uploads of only what is missing, streamed from disk.
//! - [`get_tree`] fetches every `Directory` of a stored tree breadth first (each digest once);
//!   [`tree_file_digests`] lists the file blobs they refer to.
//! - [`materialize`] validates a stored tree and writes it to disk, verifying each file's
//!   content while streaming it.
//!
//! File contents are never held whole in memory: they move in chunks of [`CHUNK_SIZE`].

use std::collections::{HashMap, HashSet};

use bazel_remote_apis::build::bazel::remote::execution::v2::{Directory, Tree};
use bytes::Bytes;
use prost::Message as _;

use crate::digest::Digest;
use crate::store::BlobStore;

mod compose;
mod error;
mod fetch;
mod local;
mod materialize;
mod upload;
mod validate;

pub use compose::{
    ComposeError, ComposedTree, DirectoryIndex, EncodedDirectory, TreeBuilder, MAX_DEPTH,
};
pub use error::{BlobKind, MerkleError, MissingBlob};
pub use fetch::{get_tree, get_tree_with_digests};
pub use local::{build_tree, build_tree_blocking, LocalFile, LocalTree, TreeStats};
pub use materialize::{materialize, materialize_with, MaterializeOptions, MaterializeStats};
pub use upload::{upload_directory, upload_tree, UploadStats, UploadedTree};
pub use validate::{validate_directory, validate_name};

/// Size of the chunks file contents are read, hashed and streamed in.
pub const CHUNK_SIZE: usize = 1 << 20;

/// How many digests one `find_missing` call carries at most.
const FIND_MISSING_BATCH: usize = 10_000;

/// The digest of a `Directory` message: SHA-256 of its prost encoding, which is deterministic
/// (fields in tag order), so a canonical `Directory` always has the same digest.
pub fn directory_digest(dir: &Directory) -> Digest {
    Digest::of(&dir.encode_to_vec())
}

/// Encodes a `Directory` and returns its digest with the bytes to store under it.
pub fn encode_directory(dir: &Directory) -> (Digest, Bytes) {
    let bytes = Bytes::from(dir.encode_to_vec());
    (Digest::of(&bytes), bytes)
}

/// A REAPI `Tree` from directories listed root first (as [`get_tree`] and
/// [`LocalTree::directories`] list them); `None` for an empty list.
pub fn tree_message(directories: &[Directory]) -> Option<Tree> {
    let (root, children) = directories.split_first()?;
    Some(Tree {
        root: Some(root.clone()),
        children: children.to_vec(),
    })
}

/// The distinct file-content digests `directories` refer to, in order of first appearance.
/// The empty blob is included when an empty file is present; REAPI servers treat it as always
/// present, so completeness checks may skip it.
pub fn tree_file_digests(directories: &[Directory]) -> Result<Vec<Digest>, MerkleError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for dir in directories {
        for f in &dir.files {
            let d = Digest::from_proto(f.digest.as_ref()).map_err(|e| {
                MerkleError::InvalidDirectory {
                    digest: directory_digest(dir),
                    path: Default::default(),
                    reason: format!("file {:?} has an invalid digest: {e}", f.name),
                }
            })?;
            if seen.insert(d) {
                out.push(d);
            }
        }
    }
    Ok(out)
}

/// The digests of a directory's subdirectories, in order; a bad digest is reported against `dir`.
pub(crate) fn child_digests(
    digest: &Digest,
    path: &std::path::Path,
    dir: &Directory,
) -> Result<Vec<Digest>, MerkleError> {
    dir.directories
        .iter()
        .map(|n| {
            Digest::from_proto(n.digest.as_ref()).map_err(|e| MerkleError::InvalidDirectory {
                digest: *digest,
                path: path.to_path_buf(),
                reason: format!("subdirectory {:?} has an invalid digest: {e}", n.name),
            })
        })
        .collect()
}

/// The digests reachable from `root` in `dirs`, each once, children before parents (root
/// last). Iterative, so deep trees do not exhaust the stack; digests absent from `dirs` (or
/// unparsable) are skipped, and a cycle (impossible without a SHA-256 collision) is cut.
pub(crate) fn post_order(root: Digest, dirs: &HashMap<Digest, &Directory>) -> Vec<Digest> {
    let mut out = Vec::with_capacity(dirs.len());
    let mut done = HashSet::with_capacity(dirs.len());
    let mut open = HashSet::new();
    let mut stack = vec![(root, false)];
    while let Some((d, expanded)) = stack.pop() {
        if expanded {
            open.remove(&d);
            if done.insert(d) {
                out.push(d);
            }
            continue;
        }
        if done.contains(&d) || open.contains(&d) {
            continue;
        }
        let Some(dir) = dirs.get(&d) else { continue };
        open.insert(d);
        stack.push((d, true));
        for n in dir.directories.iter().rev() {
            if let Ok(c) = Digest::from_proto(n.digest.as_ref()) {
                if !done.contains(&c) {
                    stack.push((c, false));
                }
            }
        }
    }
    out
}

/// `find_missing` over any number of digests, in batches.
pub(crate) async fn find_missing_batched(
    store: &dyn BlobStore,
    digests: &[Digest],
) -> Result<HashSet<Digest>, MerkleError> {
    let mut missing = HashSet::new();
    for batch in digests.chunks(FIND_MISSING_BATCH) {
        let found = store
            .find_missing(batch)
            .await
            .map_err(MerkleError::store("asking the store which blobs it lacks"))?;
        missing.extend(found);
    }
    Ok(missing)
}
