//! Partial uploads: what a `Write` has committed so far, kept between streams so a client can
//! resume after a break, and expired once abandoned.
//!
//! The registry maps a full upload resource name to a slot. While a `Write` stream works on an
//! upload it holds the upload itself in a [`Checkout`] and the slot only says "busy" (plus a live
//! progress counter for `QueryWriteStatus`), so chunks never touch the shared map. When the stream
//! breaks, the checkout puts the upload back as idle, unless the break hit in the middle of
//! appending a chunk: then the spool and the hasher may disagree, and the upload is dropped.
//!
//! An idle upload holds an open spool file (and, for zstd, a decoder with its window), so at
//! most [`MAX_IDLE_UPLOADS`] are kept: beyond that the one idle longest is dropped, and its
//! client starts over (QueryWriteStatus says NOT_FOUND).

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tonic::Status;
use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

use crate::digest::Digest;
use crate::spool::{Spool, VerifiedFile};

/// Size of the buffer zstd decodes into before the bytes go to the spool.
const DECODE_BUFFER_BYTES: usize = 256 * 1024;

/// Most partial uploads kept idle for a resume (each holds a file descriptor).
pub(super) const MAX_IDLE_UPLOADS: usize = 256;

/// All partial uploads of one service instance.
#[derive(Debug)]
pub(super) struct Registry {
    state: Mutex<State>,
    idle_timeout: Duration,
    max_idle: usize,
}

#[derive(Debug)]
struct State {
    slots: HashMap<String, Slot>,
    last_sweep: Instant,
}

#[derive(Debug)]
enum Slot {
    /// No stream is working on the upload; it expires `idle_timeout` after `since`.
    Idle {
        upload: Box<PartialUpload>,
        since: Instant,
    },
    /// A stream holds the upload; `progress` is its committed size, updated as it goes.
    Busy { progress: Arc<AtomicI64> },
}

impl Registry {
    /// A registry expiring idle uploads after `idle_timeout`, and keeping at most `max_idle`.
    pub(super) fn new(idle_timeout: Duration, max_idle: usize) -> Self {
        Registry {
            state: Mutex::new(State {
                slots: HashMap::new(),
                last_sweep: Instant::now(),
            }),
            idle_timeout,
            max_idle,
        }
    }

    /// Takes the upload named `name` (if any) out of the registry for one stream, marking the
    /// name busy. A second concurrent stream for the same name is refused with `ABORTED`.
    pub(super) fn checkout(self: &Arc<Self>, name: &str) -> Result<Checkout, Status> {
        let mut expired = Vec::new();
        let result = {
            let mut state = self.state.lock();
            self.sweep(&mut state, &mut expired);
            let progress = Arc::new(AtomicI64::new(0));
            let busy = Slot::Busy {
                progress: progress.clone(),
            };
            match state.slots.insert(name.to_string(), busy) {
                Some(Slot::Busy { progress }) => {
                    state
                        .slots
                        .insert(name.to_string(), Slot::Busy { progress });
                    Err(Status::aborted(format!(
                        "upload {name:?} is already in progress on another Write stream"
                    )))
                }
                Some(Slot::Idle { upload, .. }) => {
                    progress.store(upload.committed, Ordering::Relaxed);
                    Ok(Checkout::new(self, name, Some(upload), progress))
                }
                None => Ok(Checkout::new(self, name, None, progress)),
            }
        };
        drop(expired); // deletes spool files outside the lock
        result
    }

    /// The committed size of the partial upload named `name`, busy or idle.
    pub(super) fn progress(&self, name: &str) -> Option<i64> {
        let mut expired = Vec::new();
        let result = {
            let mut state = self.state.lock();
            self.sweep(&mut state, &mut expired);
            state.slots.get(name).map(|slot| match slot {
                Slot::Idle { upload, .. } => upload.committed,
                Slot::Busy { progress } => progress.load(Ordering::Relaxed),
            })
        };
        drop(expired);
        result
    }

    /// Drops the idle partial upload named `name`, if there is one (the blob arrived some other
    /// way). A busy one is left to its stream.
    pub(super) fn discard_idle(&self, name: &str) {
        let removed = {
            let mut state = self.state.lock();
            match state.slots.get(name) {
                Some(Slot::Idle { .. }) => state.slots.remove(name),
                _ => None,
            }
        };
        drop(removed);
    }

    /// Number of partial uploads, busy or idle.
    pub(super) fn len(&self) -> usize {
        self.state.lock().slots.len()
    }

    /// Moves idle uploads older than the timeout into `expired`, at most every quarter timeout
    /// (and at least every minute), so the scan costs nothing on the hot path.
    fn sweep(&self, state: &mut State, expired: &mut Vec<Slot>) {
        let now = Instant::now();
        let every = (self.idle_timeout / 4).min(Duration::from_secs(60));
        if now.duration_since(state.last_sweep) < every {
            return;
        }
        state.last_sweep = now;
        let timeout = self.idle_timeout;
        let stale: Vec<String> = state
            .slots
            .iter()
            .filter(|(_, slot)| {
                matches!(slot, Slot::Idle { since, .. } if now.duration_since(*since) >= timeout)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(slot) = state.slots.remove(&name) {
                tracing::info!(upload = %name, "expiring abandoned partial upload");
                expired.push(slot);
            }
        }
    }

    /// Ends a checkout: puts the upload back as idle (dropping the longest idle one if that
    /// makes too many), or frees the name.
    fn release(&self, name: &str, upload: Option<Box<PartialUpload>>) {
        let mut state = self.state.lock();
        let Some(upload) = upload else {
            state.slots.remove(name);
            return;
        };
        let since = Instant::now();
        state
            .slots
            .insert(name.to_string(), Slot::Idle { upload, since });
        if state.slots.len() <= self.max_idle {
            return;
        }
        let idle = state.slots.iter().filter_map(|(name, slot)| match slot {
            Slot::Idle { since, .. } => Some((*since, name)),
            Slot::Busy { .. } => None,
        });
        if idle.clone().count() <= self.max_idle {
            return;
        }
        let Some(oldest) = idle.min().map(|(_, name)| name.clone()) else {
            return;
        };
        let dropped = state.slots.remove(&oldest);
        drop(state);
        tracing::info!(upload = %oldest, max_idle = self.max_idle,
            "dropping the longest idle partial upload: too many are idle");
        drop(dropped); // deletes its spool file outside the lock
    }
}

/// One stream's hold on an upload name. Dropping it puts the upload back for a later resume,
/// unless it was finished, discarded, or interrupted while appending.
pub(super) struct Checkout {
    registry: Arc<Registry>,
    name: String,
    upload: Option<Box<PartialUpload>>,
    progress: Arc<AtomicI64>,
    /// Set while a chunk is being appended: an interruption then leaves the spool unusable.
    appending: bool,
}

impl Checkout {
    fn new(
        registry: &Arc<Registry>,
        name: &str,
        upload: Option<Box<PartialUpload>>,
        progress: Arc<AtomicI64>,
    ) -> Self {
        Checkout {
            registry: registry.clone(),
            name: name.to_string(),
            upload,
            progress,
            appending: false,
        }
    }

    /// The upload held, if the name had one.
    pub(super) fn upload(&mut self) -> Option<&mut PartialUpload> {
        self.upload.as_deref_mut()
    }

    /// Starts a new upload under this name.
    pub(super) fn install(&mut self, upload: PartialUpload) -> &mut PartialUpload {
        self.progress.store(upload.committed, Ordering::Relaxed);
        self.upload.insert(Box::new(upload))
    }

    /// The upload's committed size (0 without an upload).
    pub(super) fn committed(&self) -> i64 {
        self.upload.as_ref().map_or(0, |u| u.committed)
    }

    /// Checks (and applies) the first `write_offset` of a stream; see [`PartialUpload::resume`].
    pub(super) fn resume(&mut self, offset: i64) -> Result<(), Status> {
        let Some(upload) = self.upload.as_deref_mut() else {
            return Err(Status::internal("resume of a checkout without an upload"));
        };
        upload.resume(offset)?;
        self.progress.store(upload.committed, Ordering::Relaxed);
        Ok(())
    }

    /// Appends requests' data, in order; if this future is dropped half-way, the upload is
    /// dropped too.
    pub(super) async fn append(&mut self, data: Vec<Bytes>, digest: &Digest) -> Result<(), Status> {
        let Some(upload) = self.upload.as_deref_mut() else {
            return Err(Status::internal("append to a checkout without an upload"));
        };
        self.appending = true;
        upload.append_all(data, digest).await?;
        self.appending = false;
        self.progress.store(upload.committed, Ordering::Relaxed);
        Ok(())
    }

    /// Gets an upload ready to sit idle until a later stream resumes it (see
    /// [`Spool::park`]); if this future is dropped half-way, the upload is dropped too.
    pub(super) async fn park(&mut self) -> Result<(), Status> {
        let Some(upload) = self.upload.as_deref_mut() else {
            return Ok(());
        };
        self.appending = true;
        upload.spool.park().await.map_err(Status::from)?;
        self.appending = false;
        Ok(())
    }

    /// Takes the upload out for finishing; the name is freed when the checkout drops.
    pub(super) fn take(&mut self) -> Option<Box<PartialUpload>> {
        self.upload.take()
    }

    /// Drops the upload (and its spool file) and frees the name.
    pub(super) fn discard(mut self) {
        self.upload = None;
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        let upload = if self.appending {
            None
        } else {
            self.upload.take()
        };
        self.registry.release(&self.name, upload);
    }
}

/// The state of one upload between requests.
pub(super) struct PartialUpload {
    spool: Spool,
    /// The ByteStream offset the next stream must start at: the uncompressed bytes received, or
    /// for compressed uploads the offset of the compressed stream (see [`PartialUpload::resume`]).
    committed: i64,
    /// Present for zstd uploads.
    zstd: Option<ZstdIn>,
}

impl std::fmt::Debug for PartialUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartialUpload")
            .field("received", &self.spool.len())
            .field("committed", &self.committed)
            .field("compressed", &self.zstd.is_some())
            .finish()
    }
}

/// A streaming zstd decoder feeding the spool.
struct ZstdIn {
    decoder: Decoder<'static>,
    out: Box<[u8]>,
    /// The last decoder step ended a frame (or nothing was decoded yet): the data so far is a
    /// complete zstd stream.
    at_frame_end: bool,
    /// Uncompressed bytes in the spool when this decoder started.
    base: u64,
    /// Compressed bytes this decoder has consumed.
    consumed: u64,
}

impl ZstdIn {
    fn new(base: u64) -> Result<Self, Status> {
        let decoder = Decoder::new()
            .map_err(|e| Status::internal(format!("cannot create a zstd decoder: {e}")))?;
        Ok(ZstdIn {
            decoder,
            out: vec![0; DECODE_BUFFER_BYTES].into_boxed_slice(),
            at_frame_end: true,
            base,
            consumed: 0,
        })
    }
}

impl PartialUpload {
    /// A new, empty upload spooling into `spool`, decoding zstd if `compressed`.
    pub(super) fn new(spool: Spool, compressed: bool) -> Result<Self, Status> {
        let zstd = if compressed {
            Some(ZstdIn::new(0)?)
        } else {
            None
        };
        Ok(PartialUpload {
            spool,
            committed: 0,
            zstd,
        })
    }

    /// The committed size `QueryWriteStatus` reports and the next stream must start at.
    pub(super) fn committed(&self) -> i64 {
        self.committed
    }

    /// Checks the first `write_offset` of a stream. Uncompressed: it must equal the bytes
    /// received. Compressed, either the committed offset (the client continues the compressed
    /// stream it was sending, as Bazel does), or, per REAPI's rule that a stream's first offset
    /// is an uncompressed one, the uncompressed bytes received (the client starts a new zstd
    /// stream for the rest of the blob; the old decoder state is dropped).
    fn resume(&mut self, offset: i64) -> Result<(), Status> {
        let received = self.spool.len();
        let Some(zstd) = &mut self.zstd else {
            if u64::try_from(offset).ok() == Some(received) {
                return Ok(());
            }
            return Err(Status::invalid_argument(format!(
                "write_offset {offset} does not match the upload's committed size: expected \
                 {received}, got {offset}"
            )));
        };
        if offset == self.committed {
            return Ok(());
        }
        if u64::try_from(offset).ok() == Some(received) {
            *zstd = ZstdIn::new(received)?;
            self.committed = offset;
            return Ok(());
        }
        Err(Status::invalid_argument(format!(
            "write_offset {offset} does not match the compressed upload: expected {} (to \
             continue its compressed stream) or {received} (to start a new zstd stream at that \
             uncompressed offset), got {offset}",
            self.committed
        )))
    }

    /// Appends requests' data (compressed or not), refusing anything beyond the digest's size;
    /// uncompressed data goes to the spool in one call.
    async fn append_all(&mut self, data: Vec<Bytes>, digest: &Digest) -> Result<(), Status> {
        if self.zstd.is_some() {
            for part in data {
                self.append(part, digest).await?;
            }
            return Ok(());
        }
        let len: u64 = data.iter().map(|d| d.len() as u64).sum();
        if self.spool.len() + len > digest.size() {
            return Err(overlong(digest, self.spool.len() + len));
        }
        self.spool
            .write_all_owned(data)
            .await
            .map_err(Status::from)?;
        self.committed += len as i64;
        Ok(())
    }

    /// Appends one request's data (compressed or not), refusing anything beyond the digest's
    /// size.
    async fn append(&mut self, data: Bytes, digest: &Digest) -> Result<(), Status> {
        let size = digest.size();
        let len = data.len() as u64;
        let Some(zstd) = &mut self.zstd else {
            if self.spool.len() + len > size {
                return Err(overlong(digest, self.spool.len() + len));
            }
            self.spool.write_owned(data).await.map_err(Status::from)?;
            self.committed += len as i64;
            return Ok(());
        };
        // Even with skippable frames, a zstd encoding of `n` bytes needs far less than this.
        let remaining = size - zstd.base;
        let cap = remaining + remaining / 64 + (1 << 20);
        if zstd.consumed + len > cap {
            return Err(Status::invalid_argument(format!(
                "compressed data for blob {digest} is longer ({}+ bytes) than any zstd encoding \
                 of its {remaining} remaining bytes",
                zstd.consumed + len
            )));
        }
        let mut input = InBuffer::around(&data[..]);
        loop {
            let before = input.pos();
            let (hint, produced) = {
                let mut output = OutBuffer::around(&mut zstd.out[..]);
                let hint = zstd.decoder.run(&mut input, &mut output).map_err(|e| {
                    Status::invalid_argument(format!(
                        "compressed data for blob {digest} is not valid zstd: {e}"
                    ))
                })?;
                (hint, output.pos())
            };
            if produced > 0 || input.pos() > before {
                zstd.at_frame_end = hint == 0;
            }
            if produced > 0 {
                let total = self.spool.len() + produced as u64;
                if total > size {
                    return Err(overlong(digest, total));
                }
                self.spool
                    .write(&zstd.out[..produced])
                    .await
                    .map_err(Status::from)?;
            }
            if input.pos() == data.len() && produced < zstd.out.len() {
                break;
            }
        }
        zstd.consumed += len;
        self.committed += len as i64;
        Ok(())
    }

    /// Checks that the upload is complete and hashes to `digest`; the spool file is deleted if
    /// it does not.
    pub(super) async fn finish(self, digest: &Digest) -> Result<VerifiedFile, Status> {
        let received = self.spool.len();
        if received < digest.size() {
            return Err(Status::invalid_argument(format!(
                "finish_write after {received} of the {} bytes of blob {digest}: the upload is \
                 truncated",
                digest.size()
            )));
        }
        if let Some(zstd) = &self.zstd {
            if !zstd.at_frame_end {
                return Err(Status::invalid_argument(format!(
                    "finish_write in the middle of a zstd frame of blob {digest}: the compressed \
                     stream is truncated"
                )));
            }
        }
        self.spool.finish(digest).await.map_err(Status::from)
    }
}

/// The error for data beyond a digest's size.
fn overlong(digest: &Digest, got: u64) -> Status {
    Status::invalid_argument(format!(
        "upload of blob {digest} is longer than its digest's size: {got}+ bytes for {}",
        digest.size()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn registry_with_upload(dir: &std::path::Path, name: &str) -> (Arc<Registry>, Checkout) {
        let registry = Arc::new(Registry::new(Duration::from_secs(3600), MAX_IDLE_UPLOADS));
        let mut checkout = registry.checkout(name).unwrap();
        let spool = Spool::create(dir).await.unwrap();
        checkout.install(PartialUpload::new(spool, false).unwrap());
        (registry, checkout)
    }

    #[tokio::test]
    async fn a_checkout_is_put_back_unless_discarded_and_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![7u8; 1000];
        let digest = Digest::of(&data);
        let (registry, mut checkout) = registry_with_upload(dir.path(), "u").await;
        checkout
            .append(vec![Bytes::copy_from_slice(&data[..400])], &digest)
            .await
            .unwrap();
        assert_eq!(
            registry.progress("u"),
            Some(400),
            "progress of a busy upload is live"
        );
        let err = registry.checkout("u").err().unwrap();
        assert_eq!(err.code(), tonic::Code::Aborted);
        drop(checkout);
        assert_eq!(registry.progress("u"), Some(400), "kept for a resume");

        let mut checkout = registry.checkout("u").unwrap();
        assert_eq!(checkout.committed(), 400);
        checkout.resume(400).unwrap();
        checkout.discard();
        assert_eq!(registry.progress("u"), None);
        assert_eq!(registry.len(), 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn idle_uploads_beyond_the_cap_are_dropped_longest_idle_first() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::new(Duration::from_secs(3600), 2));
        let busy = registry.checkout("busy").unwrap();
        for name in ["a", "b", "c"] {
            let mut checkout = registry.checkout(name).unwrap();
            let spool = Spool::create(dir.path()).await.unwrap();
            checkout.install(PartialUpload::new(spool, false).unwrap());
            drop(checkout);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(registry.progress("a"), None, "the longest idle is dropped");
        assert_eq!(registry.progress("b"), Some(0));
        assert_eq!(registry.progress("c"), Some(0));
        assert_eq!(
            registry.progress("busy"),
            Some(0),
            "busy uploads are not counted"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        drop(busy);
    }

    #[tokio::test]
    async fn an_append_interrupted_half_way_drops_the_upload() {
        let dir = tempfile::tempdir().unwrap();
        // Large enough that tokio's file writes it in several steps.
        let data = vec![1u8; 16 << 20];
        let digest = Digest::of(&data);
        for _ in 0..20 {
            let (registry, mut checkout) = registry_with_upload(dir.path(), "u").await;
            let pending = {
                let mut append =
                    Box::pin(checkout.append(vec![Bytes::from(data.clone())], &digest));
                futures::poll!(&mut append).is_pending()
            };
            drop(checkout);
            if pending {
                assert_eq!(
                    registry.progress("u"),
                    None,
                    "a half-written spool is not kept"
                );
                return;
            }
        }
        panic!("the append never stayed pending");
    }
}
