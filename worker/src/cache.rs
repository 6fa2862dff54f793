//! The worker's local content-addressed cache: one read-only file per blob, hardlinked into
//! every action's input root that needs it.
//!
//! - Files live in `DIR/blobs/HASH-SIZE` (mode 0444) and `DIR/blobs/HASH-SIZEx` (0555, for
//!   executable inputs: a hardlink shares its inode's mode, so each mode needs its own copy).
//! - Least-recently-used files are deleted beyond a byte budget. Deleting a file that actions
//!   still link to is harmless: their links keep the inode alive.
//! - Misses are fetched through a [`GrpcStore`]: small blobs in `BatchReadBlobs` requests, large
//!   ones streamed to disk. Every fetched blob is hashed and checked against its digest before
//!   it is renamed into place, so the cache only ever holds verified content.
//! - A worker beside a filesystem store it trusts (the embedded farm's) hardlinks blobs from that
//!   store instead of fetching them ([`LocalBlobs`]); such a store only ever holds files whose
//!   content matched their digest, so they are not hashed again.
//! - Concurrent requests for the same blob share one fetch, which runs in its own task so it
//!   completes for the others even if the action that started it is cancelled.
//! - On start the index is rebuilt from the files on disk.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use cas::store::grpc::GrpcStore;
use cas::store::{BlobStore, ByteRange};
use cas::{Digest, DigestHasher, StoreError};
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt as _, StreamExt as _};
use lru::LruCache;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt as _;

/// Blobs up to this size are fetched with `BatchReadBlobs`; larger ones are streamed.
const BATCH_READ_MAX_BLOB: u64 = 256 * 1024;
/// How many large blobs are streamed at once.
const STREAM_CONCURRENCY: usize = 8;

/// A trusted store on this machine whose files hold exactly the content of their digest (a
/// `cas::store::filesystem::FilesystemStore`, which verifies every blob before it is visible).
pub trait LocalBlobs: Send + Sync + std::fmt::Debug {
    /// The file holding `digest`, if it may be there.
    fn blob_file(&self, digest: &Digest) -> Option<PathBuf>;
}

impl LocalBlobs for cas::store::filesystem::FilesystemStore {
    fn blob_file(&self, digest: &Digest) -> Option<PathBuf> {
        Some(self.blob_path(digest))
    }
}

/// One cached file: a blob and the mode its copy has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub digest: Digest,
    pub executable: bool,
}

impl Key {
    fn file_name(&self) -> String {
        if self.executable {
            format!("{}x", self.digest.key())
        } else {
            self.digest.key()
        }
    }

    fn mode(&self) -> u32 {
        if self.executable {
            0o555
        } else {
            0o444
        }
    }

    /// Parses a file name written by [`Key::file_name`].
    fn parse(name: &str) -> Option<Key> {
        let (base, executable) = match name.strip_suffix('x') {
            Some(b) => (b, true),
            None => (name, false),
        };
        let (hash, size) = base.split_once('-')?;
        let size = cas::digest::parse_size(size).ok()?;
        let digest = Digest::parse(hash, i64::try_from(size).ok()?).ok()?;
        Some(Key { digest, executable })
    }
}

/// Why blobs could not be put in the cache.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// The remote CAS does not have these blobs.
    #[error("{} blob(s) missing from the CAS", .0.len())]
    Missing(Vec<Digest>),
    #[error("fetching {digest}: {message}")]
    Fetch { digest: Digest, message: String },
}

/// The result of one fetch, shared by everyone waiting for it.
type FetchResult = Result<(), FetchFailure>;

#[derive(Debug, Clone)]
enum FetchFailure {
    NotFound,
    Other(String),
}

struct Index {
    lru: LruCache<Key, u64>,
    used: u64,
}

/// The cache; share it as `Arc<LocalCache>`.
pub struct LocalCache {
    blobs: PathBuf,
    tmp: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    inflight: Mutex<HashMap<Key, Shared<BoxFuture<'static, FetchResult>>>>,
    remote_fetches: AtomicU64,
    local: std::sync::OnceLock<Arc<dyn LocalBlobs>>,
}

impl std::fmt::Debug for LocalCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCache")
            .field("dir", &self.blobs)
            .field("max_bytes", &self.max_bytes)
            .field("used_bytes", &self.used_bytes())
            .finish()
    }
}

impl LocalCache {
    /// Opens (creating) the cache in `dir`, keeping at most `max_bytes` of blobs. The directory
    /// is made accessible to its owner only: actions see the files through hardlinks, never
    /// through this path.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Arc<LocalCache>> {
        let blobs = dir.join("blobs");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&blobs)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let mut index = Index {
            lru: LruCache::unbounded(),
            used: 0,
        };
        for entry in std::fs::read_dir(&blobs)? {
            let entry = entry?;
            let name = entry.file_name();
            let key = name.to_str().and_then(Key::parse);
            let meta = entry.metadata()?;
            match key {
                Some(k) if meta.is_file() && meta.len() == k.digest.size() => {
                    if meta.permissions().mode() & 0o777 != k.mode() {
                        std::fs::set_permissions(
                            entry.path(),
                            std::fs::Permissions::from_mode(k.mode()),
                        )?;
                    }
                    index.used += k.digest.size();
                    index.lru.put(k, k.digest.size());
                }
                _ => {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let cache = LocalCache {
            blobs,
            tmp,
            max_bytes,
            index: Mutex::new(index),
            inflight: Mutex::new(HashMap::new()),
            remote_fetches: AtomicU64::new(0),
            local: std::sync::OnceLock::new(),
        };
        cache.evict();
        Ok(Arc::new(cache))
    }

    /// Takes blobs from `local` (by hardlink, or a copy across filesystems) before fetching.
    pub fn set_local_source(&self, local: Arc<dyn LocalBlobs>) {
        let _ = self.local.set(local);
    }

    /// Where the cached file of `key` is (whether or not it is there now).
    pub fn path(&self, key: &Key) -> PathBuf {
        self.blobs.join(key.file_name())
    }

    /// Bytes of blobs held.
    pub fn used_bytes(&self) -> u64 {
        self.index.lock().used
    }

    /// Files held.
    pub fn len(&self) -> usize {
        self.index.lock().lru.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Blobs fetched from the remote CAS since the cache was opened.
    pub fn remote_fetches(&self) -> u64 {
        self.remote_fetches.load(Ordering::Relaxed)
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.index.lock().lru.contains(key)
    }

    /// Makes every key present, fetching misses through `store` (one fetch per key however
    /// many callers want it). Blobs the CAS lacks are all reported in
    /// [`CacheError::Missing`].
    pub async fn ensure(
        self: &Arc<Self>,
        store: &GrpcStore,
        keys: &[Key],
    ) -> Result<(), CacheError> {
        let mut waits = Vec::new();
        let mut owned = Vec::new();
        {
            let mut index = self.index.lock();
            let mut inflight = self.inflight.lock();
            for key in keys {
                if index.lru.get(key).is_some() {
                    continue;
                }
                if let Some(f) = inflight.get(key) {
                    waits.push((*key, f.clone()));
                    continue;
                }
                let (tx, rx) = tokio::sync::oneshot::channel::<FetchResult>();
                let shared = rx
                    .map(|r| {
                        r.unwrap_or_else(|_| Err(FetchFailure::Other("fetch task ended".into())))
                    })
                    .boxed()
                    .shared();
                inflight.insert(*key, shared.clone());
                waits.push((*key, shared));
                owned.push((*key, tx));
            }
        }
        if !owned.is_empty() {
            let cache = self.clone();
            let store = store.clone();
            tokio::spawn(async move { cache.fetch_all(&store, owned).await });
        }
        let mut missing = Vec::new();
        let mut failure = None;
        for (key, wait) in waits {
            match wait.await {
                Ok(()) => {}
                Err(FetchFailure::NotFound) => missing.push(key.digest),
                Err(FetchFailure::Other(message)) => {
                    failure.get_or_insert(CacheError::Fetch {
                        digest: key.digest,
                        message,
                    });
                }
            }
        }
        if !missing.is_empty() {
            missing.sort();
            missing.dedup();
            return Err(CacheError::Missing(missing));
        }
        failure.map_or(Ok(()), Err)
    }

    /// Hardlinks the cached file of `key` to `dest`; `NotFound` if it was evicted meanwhile.
    /// Falls back to a copy when the file has too many links already.
    pub fn link(&self, key: &Key, dest: &Path) -> std::io::Result<()> {
        let src = self.path(key);
        match std::fs::hard_link(&src, dest) {
            Err(e) if e.raw_os_error() == Some(libc::EMLINK) => {
                std::fs::copy(&src, dest)?;
                std::fs::set_permissions(dest, std::fs::Permissions::from_mode(key.mode()))
            }
            other => other,
        }
    }

    /// Fetches `owned` keys, answering each one's waiters and clearing its in-flight entry.
    async fn fetch_all(
        self: Arc<Self>,
        store: &GrpcStore,
        owned: Vec<(Key, tokio::sync::oneshot::Sender<FetchResult>)>,
    ) {
        // Keys whose twin (same digest, other mode) is also wanted or held are made by a local
        // copy once one of them is here.
        let mut by_digest: HashMap<Digest, Vec<(Key, tokio::sync::oneshot::Sender<FetchResult>)>> =
            HashMap::new();
        for (k, tx) in owned {
            by_digest.entry(k.digest).or_default().push((k, tx));
        }
        let mut copies = Vec::new();
        let mut remote = Vec::new();
        for (digest, mut group) in by_digest {
            let twin_held = group.iter().position(|(k, _)| {
                self.contains(&Key {
                    digest,
                    executable: !k.executable,
                })
            });
            if let Some(i) = twin_held {
                copies.push(group.swap_remove(i));
            }
            // Fetch the read-only copy first: it can be hardlinked from a local store.
            group.sort_by_key(|(k, _)| !k.executable);
            if let Some(first) = group.pop() {
                remote.push(first);
            }
            copies.extend(group);
        }

        let remote = self.take_local(remote).await;
        let small: Vec<_> = remote
            .iter()
            .filter(|(k, _)| k.digest.size() <= BATCH_READ_MAX_BLOB)
            .map(|(k, _)| *k)
            .collect();
        let mut results: HashMap<Key, FetchResult> = self.fetch_small(store, &small).await;
        let large: Vec<Key> = remote
            .iter()
            .filter(|(k, _)| k.digest.size() > BATCH_READ_MAX_BLOB)
            .map(|(k, _)| *k)
            .collect();
        let fetched: Vec<(Key, FetchResult)> = futures::stream::iter(large)
            .map(|k| {
                let cache = &self;
                async move { (k, cache.fetch_large(store, &k).await) }
            })
            .buffer_unordered(STREAM_CONCURRENCY)
            .collect()
            .await;
        results.extend(fetched);
        for (key, tx) in remote {
            let r = results
                .remove(&key)
                .unwrap_or_else(|| Err(FetchFailure::Other("blob was not fetched".into())));
            self.finish(key, tx, r);
        }
        for (key, tx) in copies {
            let twin = Key {
                digest: key.digest,
                executable: !key.executable,
            };
            let r = match self.copy_from(&twin, &key).await {
                Ok(()) => Ok(()),
                // The twin failed or was evicted: fetch this one on its own.
                Err(_) => self.fetch_one(store, &key).await,
            };
            self.finish(key, tx, r);
        }
    }

    /// Places the keys the local store holds (answering their waiters); returns the rest.
    async fn take_local(
        &self,
        keys: Vec<(Key, tokio::sync::oneshot::Sender<FetchResult>)>,
    ) -> Vec<(Key, tokio::sync::oneshot::Sender<FetchResult>)> {
        let Some(local) = self.local.get().cloned() else {
            return keys;
        };
        let jobs: Vec<(Key, PathBuf, PathBuf, PathBuf)> = keys
            .iter()
            .filter_map(|(k, _)| {
                let src = local.blob_file(&k.digest)?;
                let tmp = self.tmp.join(uuid::Uuid::new_v4().to_string());
                Some((*k, src, tmp, self.path(k)))
            })
            .collect();
        let placed = tokio::task::spawn_blocking(move || {
            jobs.into_iter()
                .filter(|(k, src, tmp, dest)| place_local(k, src, tmp, dest).is_ok())
                .map(|(k, ..)| k)
                .collect::<std::collections::HashSet<Key>>()
        })
        .await
        .unwrap_or_default();
        let mut rest = Vec::new();
        for (key, tx) in keys {
            if placed.contains(&key) {
                self.finish(key, tx, Ok(()));
            } else {
                rest.push((key, tx));
            }
        }
        rest
    }

    /// Records a finished fetch, then wakes its waiters.
    fn finish(&self, key: Key, tx: tokio::sync::oneshot::Sender<FetchResult>, r: FetchResult) {
        if r.is_ok() {
            self.insert(key);
        }
        self.inflight.lock().remove(&key);
        let _ = tx.send(r);
    }

    async fn fetch_one(&self, store: &GrpcStore, key: &Key) -> FetchResult {
        if key.digest.size() <= BATCH_READ_MAX_BLOB {
            let mut r = self.fetch_small(store, &[*key]).await;
            r.remove(key)
                .unwrap_or_else(|| Err(FetchFailure::Other("blob was not fetched".into())))
        } else {
            self.fetch_large(store, key).await
        }
    }

    /// Fetches small blobs with `BatchReadBlobs` and writes them into place.
    async fn fetch_small(&self, store: &GrpcStore, keys: &[Key]) -> HashMap<Key, FetchResult> {
        let mut out = HashMap::new();
        if keys.is_empty() {
            return out;
        }
        let digests: Vec<Digest> = keys.iter().map(|k| k.digest).collect();
        let answers = match store.batch_read(&digests).await {
            Ok(a) => a,
            Err(e) => {
                let failure = failure_of(e);
                return keys.iter().map(|k| (*k, Err(failure.clone()))).collect();
            }
        };
        self.remote_fetches
            .fetch_add(answers.len() as u64, Ordering::Relaxed);
        crate::metrics::CACHE_FETCHES.inc_by(answers.len() as u64);
        let by_digest: HashMap<Digest, Result<Bytes, StoreError>> = answers.into_iter().collect();
        let mut writes = Vec::new();
        for k in keys {
            match by_digest.get(&k.digest) {
                Some(Ok(data)) if Digest::of(data) == k.digest => {
                    writes.push((*k, data.clone()));
                }
                Some(Ok(_)) => {
                    out.insert(
                        *k,
                        Err(FetchFailure::Other("the CAS sent corrupt content".into())),
                    );
                }
                Some(Err(e)) if e.is_not_found() => {
                    out.insert(*k, Err(FetchFailure::NotFound));
                }
                Some(Err(e)) => {
                    out.insert(*k, Err(FetchFailure::Other(e.to_string())));
                }
                None => {
                    out.insert(
                        *k,
                        Err(FetchFailure::Other("no answer for the blob".into())),
                    );
                }
            }
        }
        let tmp = self.tmp.clone();
        let blobs = self.blobs.clone();
        let written = tokio::task::spawn_blocking(move || {
            writes
                .into_iter()
                .map(|(k, data)| {
                    let r = write_in_place(&tmp, &blobs, &k, &data)
                        .map_err(|e| FetchFailure::Other(format!("writing the cache: {e}")));
                    (k, r)
                })
                .collect::<Vec<_>>()
        })
        .await;
        match written {
            Ok(w) => out.extend(w),
            Err(e) => {
                for k in keys {
                    out.entry(*k)
                        .or_insert_with(|| Err(FetchFailure::Other(format!("writer task: {e}"))));
                }
            }
        }
        out
    }

    /// Streams one blob to a temp file while hashing it, then renames it into place.
    async fn fetch_large(&self, store: &GrpcStore, key: &Key) -> FetchResult {
        self.remote_fetches.fetch_add(1, Ordering::Relaxed);
        crate::metrics::CACHE_FETCHES.inc();
        let mut stream = store
            .get(&key.digest, ByteRange::ALL)
            .await
            .map_err(failure_of)?;
        let tmp = self.tmp.join(uuid::Uuid::new_v4().to_string());
        let guard = RemoveOnDrop(Some(tmp.clone()));
        let io = |e: std::io::Error| FetchFailure::Other(format!("writing the cache: {e}"));
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io)?;
        let mut hasher = DigestHasher::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(failure_of)?;
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        drop(file);
        let got = hasher.finish();
        if got != key.digest {
            return Err(FetchFailure::Other(format!(
                "the CAS sent content hashing to {got}"
            )));
        }
        tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(key.mode()))
            .await
            .map_err(io)?;
        tokio::fs::rename(&tmp, self.path(key)).await.map_err(io)?;
        guard.defuse();
        Ok(())
    }

    /// Makes `key` by copying its held twin (the same blob in the other mode).
    async fn copy_from(&self, twin: &Key, key: &Key) -> FetchResult {
        let src = self.path(twin);
        let tmp = self.tmp.join(uuid::Uuid::new_v4().to_string());
        let dest = self.path(key);
        let mode = key.mode();
        let r = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let guard = RemoveOnDrop(Some(tmp.clone()));
            std::fs::copy(&src, &tmp)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
            std::fs::rename(&tmp, &dest)?;
            guard.defuse();
            Ok(())
        })
        .await;
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(FetchFailure::Other(e.to_string())),
            Err(e) => Err(FetchFailure::Other(e.to_string())),
        }
    }

    /// Adds a file now in place to the index, evicting beyond the budget.
    fn insert(&self, key: Key) {
        {
            let mut index = self.index.lock();
            if index.lru.put(key, key.digest.size()).is_none() {
                index.used += key.digest.size();
            }
            crate::metrics::CACHE_BYTES.set(index.used as i64);
        }
        self.evict();
    }

    /// Deletes least-recently-used files until the budget holds (never the newest one).
    fn evict(&self) {
        let mut victims = Vec::new();
        {
            let mut index = self.index.lock();
            while index.used > self.max_bytes && index.lru.len() > 1 {
                let Some((k, size)) = index.lru.pop_lru() else {
                    break;
                };
                index.used -= size;
                victims.push(k);
            }
            crate::metrics::CACHE_BYTES.set(index.used as i64);
        }
        crate::metrics::CACHE_EVICTIONS.inc_by(victims.len() as u64);
        for k in victims {
            let _ = std::fs::remove_file(self.path(&k));
        }
    }
}

/// Puts a trusted local store's file for `key` in place: a hardlink when the store's file has
/// the key's mode or can take it (non-executable files become 0444), a copy otherwise.
fn place_local(key: &Key, src: &Path, tmp: &Path, dest: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(src)?;
    if !meta.is_file() || meta.len() != key.digest.size() {
        return Err(std::io::Error::other("not the blob's size"));
    }
    let guard = RemoveOnDrop(Some(tmp.to_path_buf()));
    let linked = !key.executable && std::fs::hard_link(src, tmp).is_ok();
    if !linked {
        std::fs::copy(src, tmp)?;
    }
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(key.mode()))?;
    std::fs::rename(tmp, dest)?;
    guard.defuse();
    Ok(())
}

/// Writes a verified small blob to a temp file and renames it into place.
fn write_in_place(tmp: &Path, blobs: &Path, key: &Key, data: &[u8]) -> std::io::Result<()> {
    let path = tmp.join(uuid::Uuid::new_v4().to_string());
    let guard = RemoveOnDrop(Some(path.clone()));
    let mut f = std::fs::File::create(&path)?;
    f.write_all(data)?;
    drop(f);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(key.mode()))?;
    std::fs::rename(&path, blobs.join(key.file_name()))?;
    guard.defuse();
    Ok(())
}

fn failure_of(e: StoreError) -> FetchFailure {
    if e.is_not_found() {
        FetchFailure::NotFound
    } else {
        FetchFailure::Other(e.to_string())
    }
}

/// Deletes a temp file unless defused.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn defuse(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        let k = Key {
            digest: Digest::of(b"x"),
            executable: true,
        };
        assert_eq!(Key::parse(&k.file_name()), Some(k));
        let k = Key {
            executable: false,
            ..k
        };
        assert_eq!(Key::parse(&k.file_name()), Some(k));
        assert_eq!(Key::parse("junk"), None);
    }

    #[test]
    fn reopening_rebuilds_the_index_and_enforces_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LocalCache::open(dir.path(), 1 << 20).unwrap();
        let tmp = dir.path().join("tmp");
        for i in 0..3u8 {
            let data = vec![i; 1000];
            let k = Key {
                digest: Digest::of(&data),
                executable: i == 0,
            };
            write_in_place(&tmp, &cache.blobs, &k, &data).unwrap();
        }
        std::fs::write(cache.blobs.join("stray"), b"?").unwrap();
        drop(cache);
        let cache = LocalCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.used_bytes(), 3000);
        assert!(!dir.path().join("blobs/stray").exists());
        drop(cache);
        let cache = LocalCache::open(dir.path(), 2500).unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(std::fs::read_dir(&cache.blobs).unwrap().count(), 2);
    }
}
