//! Breadth-first walks of stored trees that later GetTree calls resume where an earlier page
//! stopped, and the page tokens that name a place in them.
//!
//! A walk's state is append-only: `order` lists every directory discovered so far, in
//! breadth-first discovery order and each digest once, and `order[..expanded]` have had their
//! subdirectories discovered. Emitting the directories of `order` in sequence (omitting those
//! missing from the CAS) *is* the walk, so any index into `order` is a resumption point: a cursor
//! starting at index `p` fetches `order[p..]` and expands each entry that nobody has expanded
//! yet. Several cursors (a stream and the resumed calls after it) can share one walk; the
//! result is the same for all of them, because expansion is deterministic for given CAS
//! content.
//!
//! Walks that issued a page token are kept in [`TreeWalks`] (bounded by the directories they
//! list and by idle time), so resuming from a token fetches only the directories of the pages
//! still to come: N pages cost O(tree) overall, not O(N × tree). A token whose walk is no longer
//! kept (expired, another server process, a restart) is still honoured by replaying the walk
//! from the root up to its position, which is correct but costs the pages before it.
//!
//! A token is `hex(version | walk id | position | checksum)`. The checksum (SHA-256 of the root
//! digest, walk id and position, truncated) binds a token to its tree and catches altered or
//! truncated tokens; it is deliberately not a secret-keyed MAC, so tokens stay valid across
//! restarts and replicas. A hand-made token can only ask for a position in a tree its sender may
//! read anyway, and positions are checked against the walk.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use futures::StreamExt;
use lru::LruCache;
use parking_lot::Mutex;
use prost::Message;
use sha2::{Digest as _, Sha256};
use tonic::Status;

use super::super::parse_digest;
use crate::digest::Digest;
use crate::store::{BlobStore, ByteRange};

/// Directory blobs fetched concurrently while walking.
pub(super) const FETCH_CONCURRENCY: usize = 64;
/// Directory bytes (by digest size) fetched and held at once while walking; a batch always takes
/// at least one directory, however big. Real directories are kilobytes, so this only bites on
/// trees of huge directories, whose fetches would otherwise hold up to 64 of them in memory.
pub(super) const FETCH_BYTES: u64 = 4 * 1024 * 1024;
/// Most directories listed by all kept walks together (about 100 bytes of memory each).
pub const MAX_KEPT_DIRECTORIES: usize = 500_000;
/// How long a walk is kept for resumption after its last page.
pub const KEEP_WALKS_FOR: Duration = Duration::from_secs(10 * 60);

const TOKEN_VERSION: u8 = 2;
const TOKEN_BYTES: usize = 1 + 16 + 8 + 8;
/// Domain separation of page-token checksums.
const TOKEN_DOMAIN: &[u8] = b"farm-gettree-v2\0";

/// A place in a walk: which walk, and the index into its `order` of the next directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageToken {
    pub walk: u128,
    pub position: u64,
}

fn token_checksum(root: &Digest, token: &PageToken) -> [u8; 8] {
    let mut sha = Sha256::new();
    sha.update(TOKEN_DOMAIN);
    sha.update(root.hash());
    sha.update(root.size().to_be_bytes());
    sha.update(token.walk.to_be_bytes());
    sha.update(token.position.to_be_bytes());
    let full = sha.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&full[..8]);
    out
}

/// The opaque `next_page_token` for `token` in a walk of `root`.
pub fn encode_page_token(root: &Digest, token: &PageToken) -> String {
    let mut raw = [0u8; TOKEN_BYTES];
    raw[0] = TOKEN_VERSION;
    raw[1..17].copy_from_slice(&token.walk.to_be_bytes());
    raw[17..25].copy_from_slice(&token.position.to_be_bytes());
    raw[25..].copy_from_slice(&token_checksum(root, token));
    hex::encode(raw)
}

/// Parses a page token of a walk of `root` (`None` for the empty token). INVALID_ARGUMENT if
/// it is malformed, altered, or was issued for another tree.
pub fn decode_page_token(root: &Digest, token: &str) -> Result<Option<PageToken>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let shown: String = token.chars().take(80).collect();
    let mut raw = [0u8; TOKEN_BYTES];
    let lower_hex = token
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if token.len() != 2 * TOKEN_BYTES
        || !lower_hex
        || hex::decode_to_slice(token, &mut raw).is_err()
    {
        return Err(Status::invalid_argument(format!(
            "malformed GetTree page token {shown:?}: pass a next_page_token of an earlier \
             GetTree response unchanged"
        )));
    }
    if raw[0] != TOKEN_VERSION {
        return Err(Status::invalid_argument(format!(
            "GetTree page token {shown:?} is of an unknown version {}",
            raw[0]
        )));
    }
    let mut walk = [0u8; 16];
    walk.copy_from_slice(&raw[1..17]);
    let mut position = [0u8; 8];
    position.copy_from_slice(&raw[17..25]);
    let parsed = PageToken {
        walk: u128::from_be_bytes(walk),
        position: u64::from_be_bytes(position),
    };
    if raw[25..] != token_checksum(root, &parsed) {
        return Err(Status::invalid_argument(format!(
            "GetTree page token {shown:?} was altered or was not issued for a tree rooted at \
             {root}"
        )));
    }
    Ok(Some(parsed))
}

/// A directory discovered by a walk, and the index in `order` of the directory listing it.
struct Entry {
    digest: Digest,
    parent: Option<u32>,
}

/// The shared, append-only state of one walk.
pub(super) struct WalkState {
    root: Digest,
    order: Vec<Entry>,
    seen: HashSet<Digest>,
    expanded: usize,
}

impl WalkState {
    fn new(root: Digest) -> Self {
        WalkState {
            root,
            order: vec![Entry {
                digest: root,
                parent: None,
            }],
            seen: HashSet::from([root]),
            expanded: 0,
        }
    }

    /// Appends the not-yet-seen subdirectories of `dir`, the directory at `index`. Parses every
    /// child before appending any, so a bad child leaves the state as it was.
    fn expand(&mut self, index: usize, dir: &reapi::Directory) -> Result<(), Status> {
        let parent = self.order[index].digest;
        let children = dir
            .directories
            .iter()
            .map(|node| {
                Digest::from_proto(node.digest.as_ref()).map_err(|_| {
                    let what = format!(
                        "digest of subdirectory {:?} of directory {parent}",
                        node.name
                    );
                    match parse_digest(node.digest.as_ref(), &what) {
                        Err(status) => status,
                        Ok(_) => Status::internal(what),
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let parent = u32::try_from(index).map_err(|_| {
            Status::resource_exhausted("GetTree: the tree has more than 2^32 directories")
        })?;
        for digest in children {
            if self.seen.insert(digest) {
                self.order.push(Entry {
                    digest,
                    parent: Some(parent),
                });
            }
        }
        Ok(())
    }
}

type SharedWalk = Arc<Mutex<WalkState>>;

/// A kept walk and its size when last touched.
struct Kept {
    walk: SharedWalk,
    directories: usize,
    used: Instant,
}

/// The walks kept for resumption by one ContentAddressableStorage service.
#[derive(Debug)]
pub struct TreeWalks {
    kept: Mutex<KeptWalks>,
    max_directories: usize,
    keep_for: Duration,
}

struct KeptWalks {
    walks: LruCache<u128, Kept>,
    directories: usize,
}

impl std::fmt::Debug for KeptWalks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptWalks")
            .field("walks", &self.walks.len())
            .field("directories", &self.directories)
            .finish()
    }
}

impl Default for TreeWalks {
    fn default() -> Self {
        TreeWalks::new(MAX_KEPT_DIRECTORIES, KEEP_WALKS_FOR)
    }
}

impl TreeWalks {
    pub fn new(max_directories: usize, keep_for: Duration) -> Self {
        TreeWalks {
            kept: Mutex::new(KeptWalks {
                walks: LruCache::unbounded(),
                directories: 0,
            }),
            max_directories,
            keep_for,
        }
    }

    fn get(&self, id: u128) -> Option<SharedWalk> {
        let mut kept = self.kept.lock();
        let now = Instant::now();
        let entry = kept.walks.get_mut(&id)?;
        if now.duration_since(entry.used) > self.keep_for {
            return None;
        }
        entry.used = now;
        Some(Arc::clone(&entry.walk))
    }

    /// Keeps (or refreshes) walk `id`, then drops expired walks and the least recently used
    /// ones beyond the budget, never the one just kept.
    fn keep(&self, id: u128, walk: &SharedWalk) {
        let directories = walk.lock().order.len();
        let now = Instant::now();
        let mut kept = self.kept.lock();
        let fresh = Kept {
            walk: Arc::clone(walk),
            directories,
            used: now,
        };
        if let Some(old) = kept.walks.put(id, fresh) {
            kept.directories -= old.directories;
        }
        kept.directories += directories;
        while kept.walks.len() > 1 {
            let Some((_, oldest)) = kept.walks.peek_lru() else {
                break;
            };
            let expired = now.duration_since(oldest.used) > self.keep_for;
            if !expired && kept.directories <= self.max_directories {
                break;
            }
            if let Some((_, gone)) = kept.walks.pop_lru() {
                kept.directories -= gone.directories;
            }
        }
    }

    /// Number of walks kept (for tests and metrics).
    pub fn len(&self) -> usize {
        self.kept.lock().walks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Fetches and decodes one directory; `Ok(None)` if it is not in the CAS. `parent` names the
/// referring directory in error messages (`None` for the root).
pub(super) async fn fetch_directory(
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

/// One call's position in a (possibly shared) walk.
pub(super) struct Cursor {
    cas: Arc<dyn BlobStore>,
    max_directory_bytes: usize,
    walks: Arc<TreeWalks>,
    id: u128,
    walk: SharedWalk,
    /// Index in `order` of the next directory to fetch.
    pos: usize,
    /// Fetched directories not taken yet, with their index in `order`.
    ready: VecDeque<(usize, reapi::Directory)>,
}

impl Cursor {
    /// A cursor at the start of a new walk of `root`.
    pub(super) fn start(
        cas: Arc<dyn BlobStore>,
        max_directory_bytes: usize,
        walks: Arc<TreeWalks>,
        root: Digest,
    ) -> Self {
        Cursor {
            cas,
            max_directory_bytes,
            walks,
            id: uuid::Uuid::new_v4().as_u128(),
            walk: Arc::new(Mutex::new(WalkState::new(root))),
            pos: 0,
            ready: VecDeque::new(),
        }
    }

    /// A cursor at `token` in a walk of `root`: the kept walk if there is one, else a replay of
    /// the walk from the root up to the token's position.
    pub(super) async fn resume(
        cas: Arc<dyn BlobStore>,
        max_directory_bytes: usize,
        walks: Arc<TreeWalks>,
        root: Digest,
        token: PageToken,
    ) -> Result<Self, Status> {
        let position = usize::try_from(token.position).unwrap_or(usize::MAX);
        if let Some(walk) = walks.get(token.walk) {
            let (same_root, expanded) = {
                let state = walk.lock();
                (state.root == root, state.expanded)
            };
            if !same_root || position > expanded {
                return Err(Status::invalid_argument(format!(
                    "GetTree page token (position {position}) does not name a place this \
                     server reached in the tree rooted at {root}"
                )));
            }
            return Ok(Cursor {
                cas,
                max_directory_bytes,
                walks,
                id: token.walk,
                walk,
                pos: position,
                ready: VecDeque::new(),
            });
        }
        tracing::debug!(%root, position, "GetTree: replaying a walk that is no longer kept");
        let mut cursor = Cursor::start(cas, max_directory_bytes, walks, root);
        cursor.id = token.walk;
        while cursor.pos < position {
            let before = cursor.pos;
            cursor.fill(position - cursor.pos).await?;
            cursor.ready.clear();
            if cursor.pos == before {
                return Err(Status::invalid_argument(format!(
                    "GetTree page token (position {position}) is past the end of the tree \
                     rooted at {root}"
                )));
            }
        }
        Ok(cursor)
    }

    /// Fetches directories of the walk, in order and at most `want` (at least one) at a time,
    /// until one is ready or the walk is over.
    async fn fill(&mut self, want: usize) -> Result<(), Status> {
        while self.ready.is_empty() {
            let batch = self.next_batch(want);
            if batch.is_empty() {
                return Ok(());
            }
            let max = self.max_directory_bytes;
            let cas = Arc::clone(&self.cas);
            let n = batch.len();
            let fetched: Vec<_> = futures::stream::iter(batch.clone())
                .map(move |(_, digest, parent)| {
                    let cas = Arc::clone(&cas);
                    async move { fetch_directory(&*cas, digest, parent, max).await }
                })
                .buffered(n)
                .collect()
                .await;
            let mut state = self.walk.lock();
            for ((index, digest, parent), result) in batch.into_iter().zip(fetched) {
                let dir = result?;
                if index == state.expanded {
                    if let Some(dir) = &dir {
                        state.expand(index, dir)?;
                    }
                    state.expanded += 1;
                }
                self.pos = index + 1;
                match dir {
                    Some(dir) => self.ready.push_back((index, dir)),
                    None => tracing::debug!(
                        directory = %digest,
                        parent = ?parent.map(|p| p.to_string()),
                        "GetTree: omitting a subdirectory missing from the CAS"
                    ),
                }
            }
        }
        Ok(())
    }

    /// The next entries to fetch: at most `want` (at least one), [`FETCH_CONCURRENCY`] and
    /// about [`FETCH_BYTES`].
    fn next_batch(&self, want: usize) -> Vec<(usize, Digest, Option<Digest>)> {
        let state = self.walk.lock();
        let limit = want.clamp(1, FETCH_CONCURRENCY);
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        for (index, entry) in state.order.iter().enumerate().skip(self.pos).take(limit) {
            bytes = bytes.saturating_add(entry.digest.size());
            if !batch.is_empty() && bytes > FETCH_BYTES {
                break;
            }
            let parent = entry.parent.map(|p| state.order[p as usize].digest);
            batch.push((index, entry.digest, parent));
        }
        batch
    }

    /// The encoded size of the next directory, or `None` at the end of the walk. `want` bounds
    /// how many directories are fetched ahead.
    pub(super) async fn peek_len(&mut self, want: usize) -> Result<Option<usize>, Status> {
        self.fill(want).await?;
        Ok(self.ready.front().map(|(_, dir)| dir.encoded_len()))
    }

    /// The next directory and its index in the walk.
    pub(super) async fn next(
        &mut self,
        want: usize,
    ) -> Result<Option<(usize, reapi::Directory)>, Status> {
        self.fill(want).await?;
        Ok(self.ready.pop_front())
    }

    /// The token resuming this walk at index `position`; keeps the walk for that resumption.
    pub(super) fn token_at(&self, position: usize) -> String {
        self.walks.keep(self.id, &self.walk);
        let root = self.walk.lock().root;
        let token = PageToken {
            walk: self.id,
            position: position as u64,
        };
        encode_page_token(&root, &token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_are_bound_to_their_root() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let token = PageToken {
            walk: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
            position: 42,
        };
        let t = encode_page_token(&a, &token);
        assert_eq!(decode_page_token(&a, &t).unwrap(), Some(token));
        assert_eq!(decode_page_token(&a, "").unwrap(), None);
        assert!(decode_page_token(&b, &t).is_err(), "another root");
        assert!(decode_page_token(&a, "zz").is_err());
        assert!(
            decode_page_token(&a, &t[..t.len() - 2]).is_err(),
            "truncated"
        );
        for i in 0..t.len() {
            let mut forged = t.clone();
            let c = if &t[i..i + 1] == "0" { "1" } else { "0" };
            forged.replace_range(i..i + 1, c);
            assert!(
                decode_page_token(&a, &forged).is_err(),
                "altered at {i}: {forged}"
            );
        }
        // A version-1 token (offset + checksum, 32 hex digits) is refused, not misread.
        assert!(decode_page_token(&a, &"00".repeat(16)).is_err());
    }

    #[test]
    fn kept_walks_stay_within_budget_and_expire() {
        let walks = TreeWalks::new(3, Duration::from_secs(60));
        let walk = |n: usize| {
            let mut state = WalkState::new(Digest::of(b"root"));
            for i in 1..n {
                state.order.push(Entry {
                    digest: Digest::of(&i.to_le_bytes()),
                    parent: Some(0),
                });
            }
            Arc::new(Mutex::new(state))
        };
        walks.keep(1, &walk(2));
        walks.keep(2, &walk(1));
        assert_eq!(walks.len(), 2);
        walks.keep(3, &walk(2)); // 5 > 3: the oldest (1) goes
        assert!(walks.get(1).is_none());
        assert!(walks.get(2).is_some() && walks.get(3).is_some());
        walks.keep(4, &walk(10)); // bigger than the budget alone: kept, the rest dropped
        assert_eq!(walks.len(), 1);
        assert!(walks.get(4).is_some());

        let short = TreeWalks::new(100, Duration::ZERO);
        short.keep(1, &walk(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.get(1).is_none(), "expired");
    }
}
