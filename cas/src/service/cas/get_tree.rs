//! GetTree: streams every Directory of a tree in breadth-first order, in pages.
//!
//! The order is deterministic for a given CAS content: the root, then each directory's
//! subdirectories in the order they are listed, each distinct directory (by digest) once.
//! Subdirectories missing from the CAS are omitted, as the spec asks ("return the portion
//! present and omit the rest"); a missing root is NOT_FOUND, and a blob that does not decode as
//! a Directory (or lists an invalid digest) is INVALID_ARGUMENT naming it.
//!
//! One call streams every page from its starting point to the end; each page but the last
//! carries a `next_page_token` that a later call resumes from without walking the pages before
//! it again ([`walk`] keeps the walk for that). A token from another tree, or altered, is
//! INVALID_ARGUMENT.

use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use tonic::Status;

use super::{check_digest_function, parse_digest, ResponseStream};
use crate::store::BlobStore;

mod walk;

use walk::{decode_page_token, Cursor};
pub use walk::{TreeWalks, KEEP_WALKS_FOR, MAX_KEPT_DIRECTORIES};

/// Directories per page when the client asks for `page_size` 0.
pub const DEFAULT_TREE_PAGE_SIZE: usize = 1000;
/// The most directories one page holds, whatever the client asks for.
pub const MAX_TREE_PAGE_SIZE: usize = 10_000;
/// Encoded bytes after which a page is cut short (clients decode at most 4 MiB by default).
const PAGE_BYTES: usize = 2 * 1024 * 1024;

/// Takes the next page (at most `page_size` directories and, beyond the first, about
/// [`PAGE_BYTES`]) and whether more follow. Fetches at most one directory beyond the page (to
/// know whether another page follows).
async fn next_page(
    cursor: &mut Cursor,
    page_size: usize,
) -> Result<(reapi::GetTreeResponse, bool), Status> {
    let mut directories = Vec::new();
    let mut bytes = 0usize;
    let mut next_index = None;
    while directories.len() < page_size {
        let want = page_size - directories.len();
        let Some(len) = cursor.peek_len(want).await? else {
            break;
        };
        if !directories.is_empty() && bytes + len > PAGE_BYTES {
            break;
        }
        let Some((index, dir)) = cursor.next(want).await? else {
            break;
        };
        bytes += len;
        directories.push(dir);
        next_index = Some(index + 1);
    }
    let more = cursor.peek_len(1).await?.is_some();
    let next_page_token = match (more, next_index) {
        (true, Some(index)) => cursor.token_at(index),
        _ => String::new(),
    };
    let page = reapi::GetTreeResponse {
        directories,
        next_page_token,
    };
    Ok((page, more))
}

/// Validates a GetTree request and finds where its page token points (fetching the root of a
/// new walk); the returned stream then yields the pages. Errors found before the first page are
/// the RPC's status.
pub(super) async fn get_tree(
    cas: Arc<dyn BlobStore>,
    walks: Arc<TreeWalks>,
    req: reapi::GetTreeRequest,
    max_directory_bytes: usize,
) -> Result<ResponseStream<reapi::GetTreeResponse>, Status> {
    check_digest_function(req.digest_function)?;
    let root = parse_digest(req.root_digest.as_ref(), "root digest")?;
    let page_size = match usize::try_from(req.page_size) {
        Ok(0) => DEFAULT_TREE_PAGE_SIZE,
        Ok(n) => n.min(MAX_TREE_PAGE_SIZE),
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "page_size {} is negative",
                req.page_size
            )))
        }
    };
    let cursor = match decode_page_token(&root, &req.page_token)? {
        Some(token) => Cursor::resume(cas, max_directory_bytes, walks, root, token).await?,
        None => {
            let mut cursor = Cursor::start(cas, max_directory_bytes, walks, root);
            if cursor.peek_len(page_size).await?.is_none() {
                return Err(Status::not_found(format!(
                    "tree root directory {root} is not in the CAS"
                )));
            }
            cursor
        }
    };
    let stream = futures::stream::unfold(Some(cursor), move |state| async move {
        let mut cursor = state?;
        match next_page(&mut cursor, page_size).await {
            Ok((page, true)) => Some((Ok(page), Some(cursor))),
            Ok((page, false)) => Some((Ok(page), None)),
            Err(status) => Some((Err(status), None)),
        }
    });
    Ok(Box::pin(stream))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use bytes::Bytes;
    use futures::StreamExt;
    use prost::Message;

    use super::*;
    use crate::digest::Digest;
    use crate::store::memory::MemoryStore;
    use crate::store::{ByteRange, ChunkStream};
    use crate::StoreError;

    /// A memory store whose reads take a moment, recording the most bytes being read at once.
    #[derive(Debug)]
    struct Slow {
        inner: MemoryStore,
        reading: AtomicU64,
        peak: AtomicU64,
    }

    #[async_trait::async_trait]
    impl BlobStore for Slow {
        async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError> {
            self.inner.find_missing(digests).await
        }
        async fn get(&self, digest: &Digest, range: ByteRange) -> Result<ChunkStream, StoreError> {
            let now = self.reading.fetch_add(digest.size(), Ordering::SeqCst) + digest.size();
            self.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let data = self.inner.get_bytes(digest, range).await;
            self.reading.fetch_sub(digest.size(), Ordering::SeqCst);
            Ok(crate::store::once(data?))
        }
        async fn put(&self, digest: &Digest, data: ChunkStream) -> Result<(), StoreError> {
            self.inner.put(digest, data).await
        }
        fn kind(&self) -> &'static str {
            "slow"
        }
    }

    #[tokio::test]
    async fn a_walk_of_huge_directories_holds_only_a_few_at_once() {
        let store = Arc::new(Slow {
            inner: MemoryStore::new(1 << 30),
            reading: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        });
        let mut root = reapi::Directory::default();
        let mut biggest = 0;
        for i in 0..16 {
            let big = reapi::Directory {
                files: vec![reapi::FileNode {
                    name: format!("{i}{}", "x".repeat(1 << 20)),
                    digest: Some(Digest::EMPTY.to_proto()),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let data = Bytes::from(big.encode_to_vec());
            let digest = Digest::of(&data);
            biggest = biggest.max(digest.size());
            store.put_bytes(&digest, data).await.unwrap();
            root.directories.push(reapi::DirectoryNode {
                name: format!("d{i:02}"),
                digest: Some(digest.to_proto()),
            });
        }
        let data = Bytes::from(root.encode_to_vec());
        let root_digest = Digest::of(&data);
        store.put_bytes(&root_digest, data).await.unwrap();

        let req = reapi::GetTreeRequest {
            root_digest: Some(root_digest.to_proto()),
            ..Default::default()
        };
        let walks = Arc::new(TreeWalks::default());
        let pages: Vec<_> = get_tree(store.clone(), walks, req, 16 << 20)
            .await
            .unwrap()
            .collect()
            .await;
        let dirs: usize = pages
            .iter()
            .map(|p| p.as_ref().unwrap().directories.len())
            .sum();
        assert_eq!(dirs, 17);
        let peak = store.peak.load(Ordering::SeqCst);
        assert!(
            peak <= walk::FETCH_BYTES + biggest,
            "{peak} directory bytes were read at once"
        );
    }
}
