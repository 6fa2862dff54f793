//! The farm's embedded default store: one file per blob on local disk, bounded by bytes, evicting
//! the least recently used blobs.
//!
//! Layout under the root directory:
//! - `blobs/ab/<hash>-<size>`: one file per stored value, named by [`Digest::key`] and sharded
//!   by the hash's first two hex characters (`ab`).
//! - `tmp/`: files being written (streamed uploads, the gRPC layer's spool files, evicted blobs
//!   about to be unlinked). It is on the same filesystem as `blobs/`, so a finished file moves
//!   into place with one atomic rename. [`FilesystemStore::open`] deletes whatever it finds
//!   there.
//! - `blobs/ab/.put-*`: in-memory blobs being written ([`write`]), renamed into place within
//!   their shard; `open` deletes leftovers.
//!
//! An in-memory index (digest -> length and last-touch time) kept in LRU order answers
//! `find_missing` without touching the disk and decides what to evict. Recency survives restarts
//! through file mtimes: a use sets the blob's mtime to now when the recorded touch is more than
//! [`TOUCH_INTERVAL_SECS`] old (so hot blobs cost no extra syscall), and `open` rebuilds the LRU
//! order from the mtimes it finds.
//!
//! Consistency between the index and the directory: every change to one digest's file (moving a
//! new file into place, detaching an evicted one, forgetting a vanished one) happens under that
//! digest's stripe lock together with the matching index update, so concurrent writers of the
//! same digest and a concurrent eviction cannot leave the index describing a file that is not
//! there. The global index lock is only ever held for in-memory work; no syscall runs under it.
//!
//! One process owns a root at a time: the index lives in that process's memory.
//!
//! Writes are not fsynced (for speed); [`recovery`] checkpoints with `syncfs` in the background
//! and, after an unclean stop, rehashes what was written since the last checkpoint.

mod options;
mod read;
mod recovery;
mod scan;
mod write;

pub use options::FilesystemOptions;
pub use recovery::{CHECKPOINT_FILE, CLEAN_MARKER, DEFAULT_CHECKPOINT_INTERVAL};

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use filetime::FileTime;
use futures::StreamExt;
use lru::{DefaultHasher, LruCache};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use super::{BlobStore, ByteRange, ChunkStream};
use crate::digest::Digest;
use crate::direct_io;
use crate::error::StoreError;
use crate::metrics;
use crate::spool::VerifiedFile;

/// The store's name in logs and metric labels.
const KIND: &str = "filesystem";

/// A use refreshes a blob's on-disk mtime only when its last recorded touch is this old.
pub const TOUCH_INTERVAL_SECS: u64 = 60;

/// Chunk size of streamed reads.
const READ_CHUNK: usize = 1 << 20;

/// Ranges up to this size are read whole by the task that opens the file (one blocking hop, not
/// two, for the many small blobs of a build).
const SMALL_READ: u64 = 64 << 10;

/// Number of per-digest-stripe locks serialising file moves with their index updates.
const STRIPES: usize = 64;

/// A blob store on local disk. Cheap to clone: clones share one index and directory.
#[derive(Clone)]
pub struct FilesystemStore {
    inner: Arc<Inner>,
}

/// The state a store shares with its clones.
struct Inner {
    root: PathBuf,
    blobs: PathBuf,
    tmp: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    stripes: Vec<Mutex<()>>,
    verify_on_recovery: bool,
    /// Large reads use direct I/O.
    direct_io: bool,
    /// Distinguishes this process's temp-file names from leftovers, with `tmp_counter`.
    tmp_seed: u64,
    tmp_counter: AtomicU64,
    /// Something was committed since the last checkpoint (shared with the checkpoint task, so
    /// that an idle store is not even upgraded from its weak reference).
    dirty: Arc<AtomicBool>,
}

impl Drop for Inner {
    /// The last handle is gone: a clean shutdown.
    fn drop(&mut self) {
        if self.verify_on_recovery {
            recovery::shut_down(self);
        }
    }
}

/// The in-memory index: every stored blob with its real length, least recently used first.
struct Index {
    entries: LruCache<Digest, Entry>,
    /// Sum of `entries`' lengths.
    bytes: u64,
}

/// What the index knows about one stored blob.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The file's real length (values are opaque: not necessarily `digest.size()`).
    len: u64,
    /// Unix seconds of the last use written to the file's mtime (or when it was written).
    touched: u64,
}

impl Index {
    fn new() -> Self {
        Index {
            entries: LruCache::unbounded(),
            bytes: 0,
        }
    }

    /// Inserts or replaces `digest` as most recently used; replacing never double counts.
    fn insert(&mut self, digest: Digest, entry: Entry) {
        if let Some(old) = self.entries.put(digest, entry) {
            self.bytes -= old.len;
        }
        self.bytes += entry.len;
    }

    fn remove(&mut self, digest: &Digest) -> Option<Entry> {
        let entry = self.entries.pop(digest)?;
        self.bytes -= entry.len;
        Some(entry)
    }

    /// Marks `digest` as just used. `None` if absent; `Some(true)` if its on-disk mtime is stale
    /// and should be refreshed to `now` (the entry already records `now`).
    fn touch(&mut self, digest: &Digest, now: u64) -> Option<bool> {
        let entry = self.entries.get_mut(digest)?;
        // A touch in the future (clock stepped back, odd mtime) counts as stale, so it heals.
        let stale = entry.touched > now || now - entry.touched >= TOUCH_INTERVAL_SECS;
        if stale {
            entry.touched = now;
        }
        Some(stale)
    }

    /// Removes least recently used entries until the total is within `max_bytes`.
    fn pop_over_budget(&mut self, max_bytes: u64) -> Vec<(Digest, u64)> {
        let mut victims = Vec::new();
        while self.bytes > max_bytes {
            let Some((digest, entry)) = self.entries.pop_lru() else {
                break;
            };
            self.bytes -= entry.len;
            victims.push((digest, entry.len));
        }
        victims
    }
}

/// A file in `tmp/` (or handed over by a caller) that is deleted on drop unless disarmed, so
/// every early return and every cancelled future cleans up after itself.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    fn new(path: PathBuf) -> Self {
        TempFile { path, armed: true }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// The file was moved into place: keep it.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = fs::remove_file(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    warn!(path = %self.path.display(), error = %e, "could not delete temp file");
                }
            }
        }
    }
}

/// A blob file found on disk by `open`.
struct FoundBlob {
    path: PathBuf,
    digest: Digest,
    len: u64,
    mtime: SystemTime,
}

/// What `get` opened: a small blob already read, a file positioned at the range start, or a
/// large range to read with direct I/O (the file, the same file opened with `O_DIRECT` if that
/// worked, the range).
enum Opened {
    Small(Bytes),
    File(fs::File, u64),
    Direct(fs::File, Option<fs::File>, u64, u64),
}

impl FilesystemStore {
    /// Opens (creating if needed) the content-addressed store rooted at `root`, holding at most
    /// `max_bytes` of blobs: [`FilesystemStore::open_with`] with [`FilesystemOptions::new`].
    pub async fn open(root: PathBuf, max_bytes: u64) -> Result<Self, StoreError> {
        Self::open_with(root, FilesystemOptions::new(max_bytes)).await
    }

    /// Opens (creating if needed) the store rooted at `root`. Rebuilds the index from
    /// `root/blobs` (least recently used = oldest mtime), deletes junk file names, leftover temp
    /// files and (with `verify_on_recovery`) corrupt blobs, and evicts down to the budget.
    pub async fn open_with(root: PathBuf, options: FilesystemOptions) -> Result<Self, StoreError> {
        let interval = options.checkpoint_interval;
        let store = tokio::task::spawn_blocking(move || Self::open_blocking(root, options))
            .await
            .map_err(join_error)??;
        if store.inner.verify_on_recovery {
            let dirty = Arc::clone(&store.inner.dirty);
            recovery::spawn_checkpoints(Arc::downgrade(&store.inner), dirty, interval);
        }
        Ok(store)
    }

    fn open_blocking(root: PathBuf, options: FilesystemOptions) -> Result<Self, StoreError> {
        let max_bytes = options.max_bytes;
        let blobs = root.join("blobs");
        let tmp = root.join("tmp");
        fs::create_dir_all(&blobs)?;
        fs::create_dir_all(&tmp)?;
        scan::clean_tmp(&tmp)?;
        for shard in 0..=u8::MAX {
            create_dir_if_missing(&blobs.join(format!("{shard:02x}")))?;
        }

        let mut found = scan::scan_blobs(&blobs)?;
        let recovered = options.verify_on_recovery && recovery::recover(&root, &mut found)?;
        // Oldest first, so the most recently used blob ends up at the front of the LRU order.
        found.sort_by(|a, b| a.mtime.cmp(&b.mtime).then(a.digest.cmp(&b.digest)));
        let mut index = Index::new();
        for blob in found {
            let touched = unix_secs(blob.mtime);
            let len = blob.len;
            index.insert(blob.digest, Entry { len, touched });
        }
        let victims = index.pop_over_budget(max_bytes);
        let (count, bytes) = (index.entries.len(), index.bytes);
        let inner = Inner {
            root,
            blobs,
            tmp,
            max_bytes,
            index: Mutex::new(index),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            verify_on_recovery: options.verify_on_recovery,
            direct_io: options.direct_io,
            tmp_seed: uuid::Uuid::new_v4().as_u64_pair().0,
            tmp_counter: AtomicU64::new(0),
            // A recovery's deletions become durable with the next checkpoint.
            dirty: Arc::new(AtomicBool::new(recovered)),
        };
        if !victims.is_empty() {
            info!(
                evicting = victims.len(),
                max_bytes, "filesystem store is over budget"
            );
        }
        inner.evict(victims);
        info!(root = %inner.root.display(), blobs = count, bytes, max_bytes, "opened filesystem store");
        Ok(FilesystemStore {
            inner: Arc::new(inner),
        })
    }

    /// The directory for temp files on the store's filesystem: spool uploads here so that
    /// `put_verified_file` is a rename.
    pub fn tmp_dir(&self) -> PathBuf {
        self.inner.tmp.clone()
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Where the blob stored under `digest` lives (whether or not it is stored).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner.blob_path(digest)
    }

    /// The byte budget.
    pub fn max_bytes(&self) -> u64 {
        self.inner.max_bytes
    }

    /// Bytes of blobs currently stored (real file lengths).
    pub fn used_bytes(&self) -> u64 {
        self.inner.index.lock().bytes
    }

    /// Number of blobs currently stored.
    pub fn blob_count(&self) -> usize {
        self.inner.index.lock().entries.len()
    }

    /// Runs blocking file work off the async threads.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(join_error)?
    }
}

impl Inner {
    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let key = digest.key();
        self.blobs.join(&key[..2]).join(key)
    }

    fn new_tmp_path(&self, prefix: &str) -> PathBuf {
        self.tmp.join(format!("{prefix}-{}", uuid::Uuid::new_v4()))
    }

    fn stripe(&self, digest: &Digest) -> &Mutex<()> {
        &self.stripes[usize::from(digest.hash()[0]) % self.stripes.len()]
    }

    fn too_big(&self, digest: &Digest, len: u64) -> StoreError {
        StoreError::ResourceExhausted(format!(
            "blob {digest} ({len}+ bytes) is larger than the filesystem store's budget of {} bytes",
            self.max_bytes
        ))
    }

    /// Moves a finished file of `len` bytes (in `tmp/` or its shard) into place, indexes it as
    /// most recently used and evicts down to the budget. `stamp` sets its mtime to now first:
    /// needed when its last data write may be old (a spool file), not when it was just written
    /// (the kernel stamped it then; recovery's margin covers its coarse clock). Blocking.
    fn commit(
        &self,
        digest: Digest,
        file: TempFile,
        len: u64,
        stamp: bool,
    ) -> Result<(), StoreError> {
        let dest = self.blob_path(&digest);
        if self.verify_on_recovery && stamp {
            // The mtime must follow the last data write, so that data a checkpoint may not have
            // flushed always lies in the window a recovery rehashes.
            filetime::set_file_mtime(file.path(), FileTime::now())?;
        }
        let victims = {
            let _stripe = self.stripe(&digest).lock();
            rename_into_dir(file.path(), &dest)?;
            file.disarm();
            self.dirty.store(true, Ordering::SeqCst);
            let mut index = self.index.lock();
            let touched = now_secs();
            index.insert(digest, Entry { len, touched });
            index.pop_over_budget(self.max_bytes)
        };
        self.evict(victims);
        Ok(())
    }

    /// Deletes the files of entries already removed from the index. Blocking.
    fn evict(&self, victims: Vec<(Digest, u64)>) {
        for (digest, len) in victims {
            metrics::record_eviction(KIND, len);
            if let Some(doomed) = self.detach(&digest) {
                // Unlinking a big file can take a while: do it outside every lock. Readers that
                // already opened the blob keep reading the unlinked inode.
                if let Err(e) = fs::remove_file(&doomed) {
                    warn!(path = %doomed.display(), error = %e, "could not delete evicted blob");
                }
            }
            debug!(%digest, len, "evicted blob");
        }
    }

    /// Moves an evicted blob's file out of `blobs/` unless the digest was stored again since it
    /// was evicted (then the file in place is the new, indexed one). Blocking.
    fn detach(&self, digest: &Digest) -> Option<PathBuf> {
        let _stripe = self.stripe(digest).lock();
        if self.index.lock().entries.contains(digest) {
            return None;
        }
        let path = self.blob_path(digest);
        let doomed = self.new_tmp_path("evicted");
        match fs::rename(&path, &doomed) {
            Ok(()) => Some(doomed),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "could not move evicted blob aside");
                if let Err(e) = fs::remove_file(&path) {
                    warn!(path = %path.display(), error = %e, "could not delete evicted blob");
                }
                None
            }
        }
    }

    /// Opens `range` of a blob, refreshing its mtime if `touch` (the on-disk one is stale).
    /// Blocking.
    fn open_range(
        &self,
        digest: &Digest,
        range: ByteRange,
        touch: bool,
    ) -> Result<Opened, StoreError> {
        let path = self.blob_path(digest);
        let mut file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.reopen_or_forget(digest, &path)?
            }
            Err(e) => return Err(e.into()),
        };
        let len = file.metadata()?.len();
        let (start, end) = range.clamp(len)?;
        if touch {
            if let Err(e) = filetime::set_file_handle_times(&file, None, Some(FileTime::now())) {
                debug!(path = %path.display(), error = %e, "could not refresh blob mtime");
            }
        }
        let want = end - start;
        if want == 0 {
            return Ok(Opened::Small(Bytes::new()));
        }
        if start > 0 {
            file.seek(SeekFrom::Start(start))?;
        }
        if want <= SMALL_READ {
            // `want` is at most SMALL_READ, so it fits in usize.
            let mut buf = vec![0; want as usize];
            file.read_exact(&mut buf)?;
            return Ok(Opened::Small(Bytes::from(buf)));
        }
        if self.direct_io && want >= direct_io::MIN_DIRECT_BYTES {
            // Opened by path a second time: if the blob was evicted in between, the direct
            // handle is missing and the reads go through the page cache; if it was stored
            // again, the new file has the same content (values this large are blobs).
            let direct = direct_io::open_direct(&path).ok().flatten();
            return Ok(Opened::Direct(file, direct, start, want));
        }
        Ok(Opened::File(file, want))
    }

    /// The blob's file vanished although indexed (deleted behind our back, or evicted and
    /// unlinked since `get` looked it up): look again under the stripe lock and forget it if it
    /// really is gone.
    fn reopen_or_forget(&self, digest: &Digest, path: &Path) -> Result<fs::File, StoreError> {
        let _stripe = self.stripe(digest).lock();
        match fs::File::open(path) {
            Ok(file) => Ok(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if self.index.lock().remove(digest).is_some() {
                    warn!(%digest, "blob was indexed but its file is gone; forgetting it");
                }
                Err(StoreError::NotFound(*digest))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Brings a caller's file into `tmp/`: a rename, or a copy if it lives on another
    /// filesystem. The caller's file is deleted either way. Blocking.
    fn stage(&self, src: TempFile) -> Result<TempFile, StoreError> {
        if src.path().parent() == Some(self.tmp.as_path()) {
            return Ok(src);
        }
        let staged = TempFile::new(self.new_tmp_path("put"));
        match fs::rename(src.path(), staged.path()) {
            Ok(()) => src.disarm(),
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
                fs::copy(src.path(), staged.path())?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(staged)
    }
}

#[async_trait]
impl BlobStore for FilesystemStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError> {
        let now = now_secs();
        let mut missing = Vec::new();
        let mut refresh = Vec::new();
        {
            let mut index = self.inner.index.lock();
            for digest in digests {
                match index.touch(digest, now) {
                    Some(true) => refresh.push(*digest),
                    Some(false) => {}
                    None => missing.push(*digest),
                }
            }
        }
        if missing.len() > 1 {
            // Only the misses need de-duplicating (a hit is never reported); foldhash, as in the
            // index, is randomly seeded and several times faster than SipHash here.
            let mut seen =
                HashSet::with_capacity_and_hasher(missing.len(), DefaultHasher::default());
            missing.retain(|d| seen.insert(*d));
        }
        if !refresh.is_empty() {
            // Persist the recency in the background: the answer never waits on the disk.
            let inner = Arc::clone(&self.inner);
            let work = move || {
                for digest in refresh {
                    let path = inner.blob_path(&digest);
                    if let Err(e) = filetime::set_file_mtime(&path, FileTime::now()) {
                        debug!(path = %path.display(), error = %e, "could not refresh blob mtime");
                    }
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => drop(handle.spawn_blocking(work)),
                Err(_) => work(),
            }
        }
        Ok(missing)
    }

    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<ChunkStream, StoreError> {
        let touch = self
            .inner
            .index
            .lock()
            .touch(digest, now_secs())
            .ok_or(StoreError::NotFound(*digest))?;
        let digest = *digest;
        let opened = self
            .blocking(move |inner| inner.open_range(&digest, range, touch))
            .await?;
        match opened {
            Opened::Small(data) if data.is_empty() => Ok(Box::pin(futures::stream::empty())),
            Opened::Small(data) => Ok(super::once(data)),
            Opened::Direct(file, direct, start, len) => {
                Ok(read::direct_stream(file, direct, start, len))
            }
            Opened::File(file, len) => {
                let file = tokio::fs::File::from_std(file).take(len);
                let capacity = READ_CHUNK.min(usize::try_from(len).unwrap_or(READ_CHUNK));
                let stream = tokio_util::io::ReaderStream::with_capacity(file, capacity);
                Ok(Box::pin(stream.map(|r| r.map_err(StoreError::from))))
            }
        }
    }

    async fn put(&self, digest: &Digest, mut data: ChunkStream) -> Result<(), StoreError> {
        let tmp = TempFile::new(self.inner.new_tmp_path("put"));
        let mut file = create_new(&self.inner.tmp, tmp.path()).await?;
        let mut len = 0u64;
        while let Some(chunk) = data.next().await {
            let chunk = chunk?;
            len += chunk.len() as u64;
            if len > self.inner.max_bytes {
                return Err(self.inner.too_big(digest, len));
            }
            file.write_all(&chunk).await?;
        }
        // Waits for the last in-flight write and surfaces its error; no fsync (by design).
        file.flush().await?;
        drop(file);
        let digest = *digest;
        self.blocking(move |inner| inner.commit(digest, tmp, len, false))
            .await
    }

    async fn put_bytes(&self, digest: &Digest, data: Bytes) -> Result<(), StoreError> {
        let digest = *digest;
        self.blocking(move |inner| inner.put_bytes_blocking(digest, &data))
            .await
    }

    /// One blocking call per [`write::BLOBS_PER_CALL`] blobs, run concurrently.
    async fn put_many(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<(), StoreError>> {
        write::put_many(&self.inner, blobs).await
    }

    async fn put_verified_file(&self, file: VerifiedFile) -> Result<(), StoreError> {
        let digest = *file.digest();
        // From here on the file is ours: any failure below deletes it.
        let src = TempFile::new(file.take_path());
        self.blocking(move |inner| {
            let len = fs::metadata(src.path())?.len();
            if len > inner.max_bytes {
                return Err(inner.too_big(&digest, len));
            }
            let staged = inner.stage(src)?;
            inner.commit(digest, staged, len, true)
        })
        .await
    }

    fn kind(&self) -> &'static str {
        KIND
    }
}

impl fmt::Debug for FilesystemStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilesystemStore")
            .field("root", &self.inner.root)
            .field("max_bytes", &self.inner.max_bytes)
            .finish_non_exhaustive()
    }
}

fn join_error(e: tokio::task::JoinError) -> StoreError {
    StoreError::Internal(format!("filesystem store task failed: {e}"))
}

fn now_secs() -> u64 {
    unix_secs(SystemTime::now())
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn create_dir_if_missing(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

/// Creates a new, exclusive temp file, recreating `tmp` if someone removed it.
async fn create_new(tmp: &Path, path: &Path) -> Result<tokio::fs::File, StoreError> {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    match options.open(path).await {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tokio::fs::create_dir_all(tmp).await?;
            Ok(options.open(path).await?)
        }
        r => Ok(r?),
    }
}

/// Renames `src` to `dest`, creating `dest`'s directory if someone removed it.
fn rename_into_dir(src: &Path, dest: &Path) -> io::Result<()> {
    match fs::rename(src, dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && src.exists() => {
            if let Some(dir) = dest.parent() {
                fs::create_dir_all(dir)?;
            }
            fs::rename(src, dest)
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::scan::{is_shard_name, parse_blob_name};
    use super::*;

    #[test]
    fn blob_names_parse_strictly() {
        let d = Digest::of(b"abc");
        assert_eq!(parse_blob_name(&d.key()), Some(d));
        let h = d.hash_hex();
        for bad in [
            format!("{h}-03"),
            format!("{h}-+3"),
            format!("{h}--3"),
            format!("{h}-3x"),
            format!("{h}-"),
            format!("{h}3"),
            format!("{}-3", h.to_uppercase()),
            format!("{}-3", &h[..63]),
            format!("{h}0-3"),
            format!("{h}-99999999999999999999"),
            "put-1234".to_string(),
        ] {
            assert_eq!(parse_blob_name(&bad), None, "{bad:?} must be refused");
        }
        assert!(is_shard_name("0f") && !is_shard_name("0F") && !is_shard_name("0fa"));
    }

    #[test]
    fn index_replaces_without_double_counting_and_touch_is_rate_limited() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let mut index = Index::new();
        index.insert(
            a,
            Entry {
                len: 5,
                touched: 100,
            },
        );
        index.insert(
            a,
            Entry {
                len: 7,
                touched: 100,
            },
        );
        index.insert(
            b,
            Entry {
                len: 3,
                touched: 100,
            },
        );
        assert_eq!((index.entries.len(), index.bytes), (2, 10));
        assert_eq!(index.touch(&a, 100 + TOUCH_INTERVAL_SECS - 1), Some(false));
        assert_eq!(index.touch(&a, 100 + TOUCH_INTERVAL_SECS), Some(true));
        assert_eq!(index.touch(&a, 100 + TOUCH_INTERVAL_SECS), Some(false));
        assert_eq!(
            index.touch(&b, 50),
            Some(true),
            "a touch in the future heals"
        );
        assert_eq!(index.touch(&Digest::EMPTY, 100), None);
        // b was touched last, so a goes first.
        assert_eq!(index.pop_over_budget(3), vec![(a, 7)]);
        assert_eq!(index.remove(&b).map(|e| e.len), Some(3));
        assert_eq!(index.bytes, 0);
    }
}
