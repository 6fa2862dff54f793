//! Streamed reads of large blobs with direct I/O (see [`crate::direct_io`]).

use std::fs::File;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::direct_io;
use crate::error::StoreError;
use crate::store::ChunkStream;

/// Bytes per chunk of a direct read (aligned, so every read after the first starts aligned).
const CHUNK: usize = direct_io::BLOCK / 2;

/// Streams `[start, start + len)` of a blob file: a blocking task reads chunk after chunk into
/// pooled blocks (from the page cache where it holds them, else with `O_DIRECT` through
/// `direct`), one chunk ahead of the consumer, and stops when the stream is dropped.
pub(super) fn direct_stream(
    cached: File,
    direct: Option<File>,
    start: u64,
    len: u64,
) -> ChunkStream {
    let (tx, rx) = mpsc::channel(1);
    tokio::task::spawn_blocking(move || {
        let end = start + len;
        let mut offset = start;
        while offset < end {
            // The first chunk ends on a chunk boundary, so the following ones are aligned.
            let to_boundary = CHUNK - (offset % CHUNK as u64) as usize;
            let n = to_boundary.min((end - offset) as usize);
            let chunk = direct_io::read_range(&cached, direct.as_ref(), offset, n);
            let failed = chunk.is_err();
            if tx.blocking_send(chunk.map_err(StoreError::from)).is_err() || failed {
                return;
            }
            offset += n as u64;
        }
    });
    Box::pin(ReceiverStream::new(rx))
}
