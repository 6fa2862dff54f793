//! Crash safety without fsync on the write path.
//!
//! Blobs are renamed into place without fsync, so after a power cut or kernel crash a file can be
//! empty or truncated under its digest name. Three files in the store's root bound the damage:
//! - `checkpoint`: `farm-fs-checkpoint-v1 <unix secs>`. A background task, every interval in
//!   which something was written, notes the time T, runs `syncfs` on the store's filesystem and
//!   then records T. Every blob committed before T is durable.
//! - `clean`: written after a final `syncfs` when the last handle of the store is dropped (clean
//!   shutdown); removed, durably, when the store opens.
//! - Every commit stamps the blob's mtime with the commit time (after its last data write), so a
//!   blob whose data may not be durable has an mtime after the last checkpoint.
//!
//! At open without a `clean` marker, every blob whose mtime is at least T minus
//! [`SAFETY_MARGIN_SECS`] (all blobs if there is no usable checkpoint) is rehashed, and those
//! whose content does not match their name are deleted. Reads refresh mtimes too, so recently
//! read blobs are rehashed as well: a superset, bounded by the activity of one interval.
//!
//! Only stores whose keys are content digests can be checked this way (`verify_on_recovery`);
//! for those, a file whose length differs from its name's size is deleted at every open.

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use tracing::{debug, info, warn};

use super::{unix_secs, FoundBlob, Inner};
use crate::digest::DigestHasher;

/// Written by the final `syncfs` of a clean shutdown; its absence at open means a crash.
pub const CLEAN_MARKER: &str = "clean";

/// The time before the last completed `syncfs`, as `farm-fs-checkpoint-v1 <unix secs>`.
pub const CHECKPOINT_FILE: &str = "checkpoint";

const CHECKPOINT_PREFIX: &str = "farm-fs-checkpoint-v1 ";

/// Blobs with an mtime this close before the checkpoint are rehashed too (clock adjustments).
pub const SAFETY_MARGIN_SECS: u64 = 5;

/// Default interval between checkpoints.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(30);

/// Most threads rehashing at once (the disk, not the CPU, is usually the limit).
const MAX_HASH_THREADS: usize = 4;

const HASH_CHUNK: usize = 1 << 20;

/// Makes the store's state as found on disk trustworthy, before it is indexed: deletes blobs
/// whose length differs from their name and, after an unclean stop, those whose content does
/// not match. Returns whether a recovery ran (the next checkpoint must then make its deletions
/// durable). Blocking.
pub(super) fn recover(root: &Path, found: &mut Vec<FoundBlob>) -> io::Result<bool> {
    found.retain(|blob| {
        let ok = blob.len == blob.digest.size();
        if !ok {
            warn!(path = %blob.path.display(), len = blob.len, "deleting blob whose length does not match its name");
            remove(&blob.path);
        }
        ok
    });
    if take_clean_marker(root)? {
        debug!(root = %root.display(), "filesystem store was shut down cleanly");
        return Ok(false);
    }
    if found.is_empty() {
        // A new (or empty) store: nothing written before the stop can be torn.
        debug!(root = %root.display(), "filesystem store is empty; nothing to recover");
        return Ok(false);
    }
    let checkpoint = read_checkpoint(root);
    let now = unix_secs(SystemTime::now());
    let since = match checkpoint {
        // A checkpoint in the future means the clock went back: nothing can be trusted.
        Some(t) if t <= now => t.saturating_sub(SAFETY_MARGIN_SECS),
        _ => 0,
    };
    let started = std::time::Instant::now();
    let suspects: Vec<usize> = (0..found.len())
        .filter(|&i| unix_secs(found[i].mtime) >= since)
        .collect();
    let bytes: u64 = suspects.iter().map(|&i| found[i].len).sum();
    warn!(
        root = %root.display(),
        checkpoint,
        blobs = suspects.len(),
        bytes,
        "filesystem store was not shut down cleanly; rehashing the blobs written since the last checkpoint"
    );
    let bad = rehash(found, &suspects);
    for &i in &bad {
        warn!(path = %found[i].path.display(), "deleting corrupt blob (content does not match its name)");
        remove(&found[i].path);
    }
    let mut keep = vec![true; found.len()];
    for &i in &bad {
        keep[i] = false;
    }
    let mut keep = keep.into_iter();
    found.retain(|_| keep.next().unwrap_or(true));
    info!(
        root = %root.display(),
        rehashed = suspects.len(),
        bytes,
        deleted = bad.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "filesystem store recovery finished"
    );
    Ok(true)
}

/// Indices (into `found`) of the `suspects` whose content does not match their digest.
fn rehash(found: &[FoundBlob], suspects: &[usize]) -> Vec<usize> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_HASH_THREADS)
        .min(suspects.len().max(1));
    let next = AtomicUsize::new(0);
    let worker = || {
        let mut bad = Vec::new();
        let mut buf = vec![0; HASH_CHUNK];
        loop {
            let Some(&i) = suspects.get(next.fetch_add(1, Ordering::Relaxed)) else {
                return bad;
            };
            match matches_name(&found[i], &mut buf) {
                Ok(true) => {}
                Ok(false) => bad.push(i),
                Err(e) => {
                    // Unreadable is as bad as wrong: it must not be served.
                    warn!(path = %found[i].path.display(), error = %e, "could not rehash blob");
                    bad.push(i);
                }
            }
        }
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads).map(|_| scope.spawn(worker)).collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(bad) => bad,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

fn matches_name(blob: &FoundBlob, buf: &mut [u8]) -> io::Result<bool> {
    let mut file = fs::File::open(&blob.path)?;
    let mut hasher = DigestHasher::new();
    loop {
        let n = match file.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        if hasher.len() > blob.digest.size() {
            return Ok(false);
        }
    }
    Ok(hasher.finish() == blob.digest)
}

fn remove(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            warn!(path = %path.display(), error = %e, "could not delete blob");
        }
    }
}

/// Removes the clean marker, durably (a later crash must not find a stale one). Returns
/// whether it was there.
fn take_clean_marker(root: &Path) -> io::Result<bool> {
    match fs::remove_file(root.join(CLEAN_MARKER)) {
        Ok(()) => {
            fs::File::open(root)?.sync_all()?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The last checkpoint's time, if there is a well-formed one.
fn read_checkpoint(root: &Path) -> Option<u64> {
    let path = root.join(CHECKPOINT_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                warn!(path = %path.display(), error = %e, "could not read the checkpoint");
            }
            return None;
        }
    };
    let secs = text
        .strip_prefix(CHECKPOINT_PREFIX)
        .and_then(|t| t.strip_suffix('\n'))
        .and_then(|t| t.parse::<u64>().ok());
    if secs.is_none() {
        warn!(path = %path.display(), "ignoring a malformed checkpoint");
    }
    secs
}

/// Writes `contents` to `root/name` atomically (temp file + rename), with an fsync of the file
/// and the directory if `durable`.
fn write_atomically(root: &Path, name: &str, contents: &str, durable: bool) -> io::Result<()> {
    let tmp = root.join(format!("{name}.tmp"));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(contents.as_bytes())?;
    if durable {
        file.sync_all()?;
    }
    drop(file);
    fs::rename(&tmp, root.join(name))?;
    if durable {
        fs::File::open(root)?.sync_all()?;
    }
    Ok(())
}

/// Flushes every dirty page of the filesystem holding `root` to disk.
fn sync_filesystem(root: &Path) -> io::Result<()> {
    let dir = fs::File::open(root)?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: `dir` owns the descriptor and outlives the call; syncfs only reads it.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        // No per-filesystem sync elsewhere: fsync the root only (weaker, best effort).
        dir.sync_all()
    }
}

/// One checkpoint: note the time, flush the filesystem, record the time. Blocking.
fn checkpoint(root: &Path) -> io::Result<()> {
    let before = unix_secs(SystemTime::now());
    sync_filesystem(root)?;
    write_atomically(
        root,
        CHECKPOINT_FILE,
        &format!("{CHECKPOINT_PREFIX}{before}\n"),
        false,
    )
}

/// Checkpoints the store every `interval` in which something was written, until the store is
/// dropped (the task holds only a weak reference).
pub(super) fn spawn_checkpoints(inner: Weak<Inner>, dirty: Arc<AtomicBool>, interval: Duration) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            if inner.strong_count() == 0 {
                return;
            }
            if !dirty.swap(false, Ordering::SeqCst) {
                continue;
            }
            let Some(inner) = inner.upgrade() else { return };
            let done = tokio::task::spawn_blocking(move || {
                let result = checkpoint(&inner.root);
                if let Err(e) = &result {
                    inner.dirty.store(true, Ordering::SeqCst);
                    warn!(root = %inner.root.display(), error = %e, "filesystem store checkpoint failed");
                }
                result.is_ok()
            })
            .await;
            if let Ok(true) = done {
                debug!("filesystem store checkpoint written");
            }
        }
    });
}

/// The clean shutdown of the last handle: flush what is dirty, then leave the clean marker.
/// Blocking; errors only cost a recovery at the next open.
pub(super) fn shut_down(inner: &Inner) {
    let root = &inner.root;
    if inner.dirty.load(Ordering::SeqCst) {
        if let Err(e) = sync_filesystem(root) {
            warn!(root = %root.display(), error = %e, "final sync failed; the next open will rehash recent blobs");
            return;
        }
    }
    match write_atomically(root, CLEAN_MARKER, "clean shutdown\n", true) {
        Ok(()) => debug!(root = %root.display(), "filesystem store shut down cleanly"),
        Err(e) => warn!(root = %root.display(), error = %e, "could not write the clean marker"),
    }
}
