//! GetTree: streams every Directory of a tree in breadth-first order, in pages.
//!
//! The order is deterministic for a given CAS content: the root, then each directory's
//! subdirectories in the order they are listed, each distinct directory (by digest) once.
//! Subdirectories missing from the CAS are omitted, as the spec asks ("return the portion
//! present and omit the rest"); a missing root is NOT_FOUND, and a blob that does not decode as
//! a Directory (or lists an invalid digest) is INVALID_ARGUMENT naming it.
//!
//! One call streams every page from its starting point to the end; each page carries a
//! `next_page_token` that a later call can resume from. A token is the page's BFS offset plus a
//! checksum binding it to the root digest, so a token from another tree is refused.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use futures::StreamExt;
use prost::Message;
use sha2::{Digest as _, Sha256};
use tonic::Status;

use super::{check_digest_function, parse_digest, ResponseStream};
use crate::digest::Digest;
use crate::store::{BlobStore, ByteRange};

/// Directories per page when the client asks for `page_size` 0.
pub const DEFAULT_TREE_PAGE_SIZE: usize = 1000;
/// The most directories one page holds, whatever the client asks for.
pub const MAX_TREE_PAGE_SIZE: usize = 10_000;
/// Encoded bytes after which a page is cut short (clients decode at most 4 MiB by default).
const PAGE_BYTES: usize = 2 * 1024 * 1024;
/// Directory blobs fetched concurrently while walking.
const FETCH_CONCURRENCY: usize = 64;
/// Directory bytes (by digest size) fetched and held at once while walking; a batch always takes
/// at least one directory, however big. Real directories are kilobytes, so this only bites on
/// trees of huge directories, whose fetches would otherwise hold up to 64 of them in memory.
const FETCH_BYTES: u64 = 4 * 1024 * 1024;
/// Domain separation of page-token checksums.
const TOKEN_DOMAIN: &[u8] = b"farm-gettree-v1\0";

fn token_checksum(root: &Digest, offset: u64) -> [u8; 8] {
    let mut sha = Sha256::new();
    sha.update(TOKEN_DOMAIN);
    sha.update(root.hash());
    sha.update(root.size().to_be_bytes());
    sha.update(offset.to_be_bytes());
    let full = sha.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&full[..8]);
    out
}

/// The opaque token resuming a walk of `root` at BFS position `offset`.
pub fn encode_page_token(root: &Digest, offset: u64) -> String {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&offset.to_be_bytes());
    raw[8..].copy_from_slice(&token_checksum(root, offset));
    hex::encode(raw)
}

/// The BFS offset in `token` (0 for the empty token), or INVALID_ARGUMENT if the token is
/// malformed or was issued for another root.
pub fn decode_page_token(root: &Digest, token: &str) -> Result<u64, Status> {
    if token.is_empty() {
        return Ok(0);
    }
    let shown: String = token.chars().take(40).collect();
    let mut raw = [0u8; 16];
    hex::decode_to_slice(token, &mut raw)
        .map_err(|_| Status::invalid_argument(format!("malformed GetTree page token {shown:?}")))?;
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&raw[..8]);
    let offset = u64::from_be_bytes(offset);
    if raw[8..] != token_checksum(root, offset) {
        return Err(Status::invalid_argument(format!(
            "GetTree page token {shown:?} was not issued for a tree rooted at {root}"
        )));
    }
    Ok(offset)
}

/// Fetches and decodes one directory; `Ok(None)` if it is not in the CAS. `parent` names the
/// referring directory in error messages (`None` for the root).
async fn fetch_directory(
    cas: &dyn BlobStore,
    digest: Digest,
    parent: Option<Digest>,
    max_bytes: usize,
) -> Result<Option<reapi::Directory>, Status> {
    let what = match parent {
        Some(p) => format!("directory {digest} (a subdirectory of {p})"),
        None => format!("tree root {digest}"),
    };
    if digest.size() > max_bytes as u64 {
        return Err(Status::invalid_argument(format!(
            "{what} is {} bytes, too large to be a Directory message (limit {max_bytes})",
            digest.size()
        )));
    }
    let data = match cas.get_bytes(&digest, ByteRange::ALL).await {
        Ok(data) => data,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    reapi::Directory::decode(data)
        .map(Some)
        .map_err(|e| Status::invalid_argument(format!("{what} is not a valid Directory: {e}")))
}

/// A directory discovered but not fetched yet, with the directory that listed it.
struct Pending {
    digest: Digest,
    parent: Digest,
}

/// The state of one breadth-first walk.
struct TreeWalk {
    cas: Arc<dyn BlobStore>,
    max_directory_bytes: usize,
    seen: HashSet<Digest>,
    queue: VecDeque<Pending>,
    ready: VecDeque<reapi::Directory>,
}

impl TreeWalk {
    fn new(
        cas: Arc<dyn BlobStore>,
        max_directory_bytes: usize,
        root: Digest,
        root_dir: reapi::Directory,
    ) -> Result<Self, Status> {
        let mut walk = TreeWalk {
            cas,
            max_directory_bytes,
            seen: HashSet::from([root]),
            queue: VecDeque::new(),
            ready: VecDeque::new(),
        };
        walk.discover(&root_dir, root)?;
        walk.ready.push_back(root_dir);
        Ok(walk)
    }

    /// Queues the not-yet-seen subdirectories of `dir` (whose digest is `parent`).
    fn discover(&mut self, dir: &reapi::Directory, parent: Digest) -> Result<(), Status> {
        for node in &dir.directories {
            let what = format!(
                "digest of subdirectory {:?} of directory {parent}",
                node.name
            );
            let digest = parse_digest(node.digest.as_ref(), &what)?;
            if self.seen.insert(digest) {
                self.queue.push_back(Pending { digest, parent });
            }
        }
        Ok(())
    }

    /// Fetches queued directories, in order and some at a time, until one is ready to emit or
    /// the walk is over.
    async fn fill(&mut self) -> Result<(), Status> {
        while self.ready.is_empty() && !self.queue.is_empty() {
            let (mut n, mut bytes) = (0, 0u64);
            for pending in self.queue.iter().take(FETCH_CONCURRENCY) {
                bytes = bytes.saturating_add(pending.digest.size());
                if n > 0 && bytes > FETCH_BYTES {
                    break;
                }
                n += 1;
            }
            let batch: Vec<Pending> = self.queue.drain(..n).collect();
            let max = self.max_directory_bytes;
            let jobs: Vec<_> = batch.iter().map(|p| (p.digest, p.parent)).collect();
            let cas = self.cas.clone();
            let fetched: Vec<_> = futures::stream::iter(jobs)
                .map(move |(digest, parent)| {
                    let cas = cas.clone();
                    async move { fetch_directory(&*cas, digest, Some(parent), max).await }
                })
                .buffered(n)
                .collect()
                .await;
            for (pending, result) in batch.iter().zip(fetched) {
                match result? {
                    Some(dir) => {
                        self.discover(&dir, pending.digest)?;
                        self.ready.push_back(dir);
                    }
                    None => tracing::debug!(
                        directory = %pending.digest,
                        parent = %pending.parent,
                        "GetTree: omitting a subdirectory missing from the CAS"
                    ),
                }
            }
        }
        Ok(())
    }

    /// The encoded size of the next directory, or `None` at the end of the walk.
    async fn peek_len(&mut self) -> Result<Option<usize>, Status> {
        self.fill().await?;
        Ok(self.ready.front().map(Message::encoded_len))
    }

    async fn next(&mut self) -> Result<Option<reapi::Directory>, Status> {
        self.fill().await?;
        Ok(self.ready.pop_front())
    }
}

/// Takes the next page (at most `page_size` directories and, beyond the first, about
/// [`PAGE_BYTES`]) and whether more follow; `offset` advances past it.
async fn next_page(
    walk: &mut TreeWalk,
    root: &Digest,
    page_size: usize,
    offset: &mut u64,
) -> Result<(reapi::GetTreeResponse, bool), Status> {
    let mut directories = Vec::new();
    let mut bytes = 0usize;
    while directories.len() < page_size {
        let Some(len) = walk.peek_len().await? else {
            break;
        };
        if !directories.is_empty() && bytes + len > PAGE_BYTES {
            break;
        }
        let Some(dir) = walk.next().await? else {
            break;
        };
        bytes += len;
        directories.push(dir);
    }
    *offset += directories.len() as u64;
    let more = walk.peek_len().await?.is_some();
    let next_page_token = if more {
        encode_page_token(root, *offset)
    } else {
        String::new()
    };
    let page = reapi::GetTreeResponse {
        directories,
        next_page_token,
    };
    Ok((page, more))
}

/// Validates a GetTree request, fetches its root and skips to its page token; the returned
/// stream then yields the pages. Errors found before the first page are the RPC's status.
pub(super) async fn get_tree(
    cas: Arc<dyn BlobStore>,
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
    let start = decode_page_token(&root, &req.page_token)?;
    let root_dir = fetch_directory(&*cas, root, None, max_directory_bytes)
        .await?
        .ok_or_else(|| {
            Status::not_found(format!("tree root directory {root} is not in the CAS"))
        })?;
    let mut walk = TreeWalk::new(cas, max_directory_bytes, root, root_dir)?;
    for _ in 0..start {
        if walk.next().await?.is_none() {
            break;
        }
    }
    let stream = futures::stream::unfold(Some((walk, start)), move |state| async move {
        let (mut walk, mut offset) = state?;
        match next_page(&mut walk, &root, page_size, &mut offset).await {
            Ok((page, true)) => Some((Ok(page), Some((walk, offset)))),
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

    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::ChunkStream;
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
        let pages: Vec<_> = get_tree(store.clone(), req, 16 << 20)
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
            peak <= FETCH_BYTES + biggest,
            "{peak} directory bytes were read at once"
        );
    }

    #[test]
    fn page_tokens_round_trip_and_are_bound_to_their_root() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let t = encode_page_token(&a, 42);
        assert_eq!(decode_page_token(&a, &t).unwrap(), 42);
        assert_eq!(decode_page_token(&a, "").unwrap(), 0);
        assert!(decode_page_token(&b, &t).is_err());
        assert!(decode_page_token(&a, "zz").is_err());
        let mut forged = t.clone();
        forged.replace_range(15..16, if &t[15..16] == "0" { "1" } else { "0" });
        assert!(decode_page_token(&a, &forged).is_err());
    }
}
