//! Fetching the `Directory` messages of a stored tree.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use bazel_remote_apis::build::bazel::remote::execution::v2::Directory;
use futures::{StreamExt as _, TryStreamExt as _};
use prost::Message as _;

use super::error::show;
use super::{child_digests, BlobKind, MerkleError, MissingBlob};
use crate::digest::Digest;
use crate::store::{BlobStore, ByteRange};

/// How many `Directory` messages are fetched at once.
const FETCH_CONCURRENCY: usize = 16;

/// Largest `Directory` message we read into memory (real ones are kilobytes).
pub(crate) const MAX_DIRECTORY_BYTES: u64 = 64 << 20;

/// A fetched directory with its digest and the first tree path it was found at.
pub(crate) struct Fetched {
    pub digest: Digest,
    pub path: PathBuf,
    pub dir: Directory,
}

/// Every `Directory` of the tree rooted at `root`, root first, then breadth first in name order,
/// each digest once (identical subtrees are fetched and listed once). Each message is checked
/// against its digest and decoded, but not checked for canonical form (see
/// [`super::validate_directory`]); the GetTree RPC returns trees as they were stored.
///
/// Directories the store lacks fail with [`MerkleError::MissingBlobs`] listing every missing
/// one of the first tree level that has any, with their paths.
pub async fn get_tree(store: &dyn BlobStore, root: &Digest) -> Result<Vec<Directory>, MerkleError> {
    Ok(fetch_tree(store, root)
        .await?
        .into_iter()
        .map(|f| f.dir)
        .collect())
}

/// [`get_tree`], with each directory's digest.
pub async fn get_tree_with_digests(
    store: &dyn BlobStore,
    root: &Digest,
) -> Result<Vec<(Digest, Directory)>, MerkleError> {
    Ok(fetch_tree(store, root)
        .await?
        .into_iter()
        .map(|f| (f.digest, f.dir))
        .collect())
}

pub(crate) async fn fetch_tree(
    store: &dyn BlobStore,
    root: &Digest,
) -> Result<Vec<Fetched>, MerkleError> {
    let mut seen = HashSet::from([*root]);
    let mut level = vec![(*root, PathBuf::new())];
    let mut out = Vec::new();
    while !level.is_empty() {
        let fetched: Vec<(Digest, PathBuf, Option<Directory>)> = futures::stream::iter(level)
            .map(|(digest, path)| async move {
                let dir = fetch_directory(store, &digest, &path).await?;
                Ok::<_, MerkleError>((digest, path, dir))
            })
            .buffered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        let mut missing = Vec::new();
        let mut next = Vec::new();
        for (digest, path, dir) in fetched {
            let Some(dir) = dir else {
                missing.push(MissingBlob {
                    digest,
                    path,
                    kind: BlobKind::Directory,
                });
                continue;
            };
            let children = child_digests(&digest, &path, &dir)?;
            for (child, node) in children.into_iter().zip(&dir.directories) {
                if seen.insert(child) {
                    next.push((child, path.join(&node.name)));
                }
            }
            out.push(Fetched { digest, path, dir });
        }
        if !missing.is_empty() {
            return Err(MerkleError::MissingBlobs(missing));
        }
        level = next;
    }
    Ok(out)
}

/// Reads and decodes one `Directory`, checking the stored bytes against `digest`; `None` if the
/// store does not have it.
async fn fetch_directory(
    store: &dyn BlobStore,
    digest: &Digest,
    path: &Path,
) -> Result<Option<Directory>, MerkleError> {
    if digest.size() > MAX_DIRECTORY_BYTES {
        return Err(MerkleError::InvalidDirectory {
            digest: *digest,
            path: path.to_path_buf(),
            reason: format!("larger than the {MAX_DIRECTORY_BYTES}-byte limit for directories"),
        });
    }
    if *digest == Digest::EMPTY {
        // An empty directory encodes to nothing; REAPI stores treat the empty blob as always
        // present, and clients do not upload it.
        return Ok(Some(Directory::default()));
    }
    let context = || format!("reading directory {digest} at {}", show(path));
    let mut stream = match store.get(digest, ByteRange::ALL).await {
        Ok(s) => s,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(MerkleError::store(context())(e)),
    };
    let corrupt = |reason: String| MerkleError::Corrupt {
        digest: *digest,
        path: path.to_path_buf(),
        reason,
    };
    let mut buf = Vec::with_capacity(digest.size() as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(MerkleError::store(context()))?;
        if buf.len() as u64 + chunk.len() as u64 > digest.size() {
            return Err(corrupt(
                "the stored blob is longer than its digest says".into(),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    let actual = Digest::of(&buf);
    if actual != *digest {
        return Err(corrupt(format!("the stored bytes hash to {actual}")));
    }
    Directory::decode(&buf[..])
        .map(Some)
        .map_err(|e| MerkleError::InvalidDirectory {
            digest: *digest,
            path: path.to_path_buf(),
            reason: format!("not a Directory message: {e}"),
        })
}
