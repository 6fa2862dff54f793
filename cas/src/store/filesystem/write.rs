//! Writes of in-memory blobs: one blocking call per blob, or per batch of blobs, does
//! everything (create, write, commit), and the temp file lives in the blob's own shard
//! directory so the commit is a rename within one directory.
//!
//! A rename between two directories takes the filesystem-wide rename lock
//! (`s_vfs_rename_mutex`), and files created in one shared `tmp/` contend on that directory's
//! lock; with the temp file next to its destination, concurrent batches only meet when their
//! blobs share one of the 256 shards. Leftovers of a crash (`.put-*` names) are deleted by the
//! next `open`.

use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use std::sync::Arc;

use bytes::Bytes;

use super::{join_error, Inner, TempFile};
use crate::digest::Digest;
use crate::error::StoreError;

/// Prefix of temp files written inside shard directories.
pub(super) const SHARD_TMP_PREFIX: &str = ".put-";

/// Most blobs one blocking call of [`Inner::put_many_blocking`] writes; larger batches are
/// spread over several calls (cores).
pub(super) const BLOBS_PER_CALL: usize = 256;

impl Inner {
    /// A fresh temp-file name in `digest`'s shard directory.
    fn shard_tmp_path(&self, digest: &Digest) -> PathBuf {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let key = digest.key();
        self.blobs
            .join(&key[..2])
            .join(format!("{SHARD_TMP_PREFIX}{:x}-{n:x}", self.tmp_seed))
    }

    /// Stores one in-memory blob: a new file next to its destination, renamed into place.
    /// Blocking.
    pub(super) fn put_bytes_blocking(&self, digest: Digest, data: &[u8]) -> Result<(), StoreError> {
        let len = data.len() as u64;
        if len > self.max_bytes {
            return Err(self.too_big(&digest, len));
        }
        let tmp = TempFile::new(self.shard_tmp_path(&digest));
        let mut file = match create_new(&tmp) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Someone removed the shard directory.
                if let Some(dir) = tmp.path().parent() {
                    fs::create_dir_all(dir)?;
                }
                create_new(&tmp)?
            }
            r => r?,
        };
        file.write_all(data)?;
        drop(file);
        // The data was written just now, so the file's mtime already follows it (no stamp).
        self.commit(digest, tmp, len, false)
    }

    /// Stores each blob of `blobs` in turn, one result per blob. Blocking.
    pub(super) fn put_many_blocking(
        &self,
        blobs: &[(Digest, Bytes)],
    ) -> Vec<Result<(), StoreError>> {
        blobs
            .iter()
            .map(|(digest, data)| self.put_bytes_blocking(*digest, data))
            .collect()
    }
}

fn create_new(tmp: &TempFile) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp.path())
}

/// Stores `blobs` with one blocking call per [`BLOBS_PER_CALL`] of them, run concurrently; one
/// result per blob, in order.
pub(super) async fn put_many(
    inner: &Arc<Inner>,
    blobs: Vec<(Digest, Bytes)>,
) -> Vec<Result<(), StoreError>> {
    let total = blobs.len();
    let mut calls = Vec::new();
    let mut blobs = blobs.into_iter();
    loop {
        let part: Vec<(Digest, Bytes)> = blobs.by_ref().take(BLOBS_PER_CALL).collect();
        if part.is_empty() {
            break;
        }
        let n = part.len();
        let inner = Arc::clone(inner);
        let call = tokio::task::spawn_blocking(move || inner.put_many_blocking(&part));
        calls.push((n, call));
    }
    let mut results = Vec::with_capacity(total);
    for (n, call) in calls {
        match call.await {
            Ok(part) => results.extend(part),
            Err(e) => {
                let msg = join_error(e).to_string();
                results.extend((0..n).map(|_| Err(StoreError::Internal(msg.clone()))));
            }
        }
    }
    results
}
