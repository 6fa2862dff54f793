//! Response streams of `ByteStream.Read`: a blob range re-chunked into bounded messages, or
//! compressed on the fly into one zstd frame.
//!
//! Both are pull-driven: the next store chunk is only requested when tonic wants the next message,
//! so however big the blob, the server holds about one chunk of it per read.

use std::collections::VecDeque;
use std::pin::Pin;

use crate::proto::bytestream::ReadResponse;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tonic::Status;
use zstd::stream::raw::{Encoder, InBuffer, Operation, OutBuffer};

use crate::metrics;
use crate::store::ChunkStream;

/// The response stream of `Read`.
pub type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResponse, Status>> + Send + 'static>>;

/// zstd level of compressed reads: the fastest, so compression keeps up with the network.
pub const READ_ZSTD_LEVEL: i32 = 1;

/// A stream of `Bytes` pieces of at most `max` bytes each.
type Pieces = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send + 'static>>;

/// Splits the store's chunks into pieces of at most `max` bytes (without copying), checking that
/// the store returns exactly `expected` bytes (anything else is `DATA_LOSS`).
fn pieces(inner: ChunkStream, max: usize, expected: u64) -> Pieces {
    struct State {
        inner: ChunkStream,
        pending: Bytes,
        remaining: u64,
        done: bool,
    }
    let state = State {
        inner,
        pending: Bytes::new(),
        remaining: expected,
        done: false,
    };
    Box::pin(futures::stream::unfold(state, move |mut st| async move {
        loop {
            if !st.pending.is_empty() {
                let n = st.pending.len().min(max);
                let piece = st.pending.split_to(n);
                return Some((Ok(piece), st));
            }
            if st.done {
                return None;
            }
            match st.inner.next().await {
                Some(Ok(chunk)) => {
                    let len = chunk.len() as u64;
                    if len > st.remaining {
                        st.done = true;
                        let msg =
                            format!("the store returned more bytes than the {expected} requested");
                        return Some((Err(Status::data_loss(msg)), st));
                    }
                    st.remaining -= len;
                    st.pending = chunk;
                }
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(e.into()), st));
                }
                None => {
                    st.done = true;
                    if st.remaining != 0 {
                        let msg = format!(
                            "the store returned {} fewer bytes than the {expected} requested",
                            st.remaining
                        );
                        return Some((Err(Status::data_loss(msg)), st));
                    }
                    return None;
                }
            }
        }
    }))
}

/// The uncompressed response stream: one message per piece.
pub(super) fn plain(inner: ChunkStream, max: usize, expected: u64) -> ReadStream {
    let bytes_read = metrics::BYTES.with_label_values(&["read"]);
    Box::pin(pieces(inner, max, expected).map(move |piece| {
        piece.map(|data| {
            bytes_read.inc_by(data.len() as u64);
            ReadResponse { data }
        })
    }))
}

/// Ranges up to this size are compressed right in the response stream's task; bigger ones on the
/// blocking pool, one piece at a time, so no async worker is held for long.
const INLINE_COMPRESS_BYTES: u64 = 64 * 1024;

/// The zstd response stream: the `expected` bytes of `inner` as one zstd frame, in messages of at
/// most `max` bytes.
pub(super) fn zstd(inner: ChunkStream, max: usize, expected: u64) -> Result<ReadStream, Status> {
    let mut encoder = Encoder::new(READ_ZSTD_LEVEL).map_err(internal)?;
    encoder
        .set_pledged_src_size(Some(expected))
        .map_err(internal)?;
    struct State {
        pieces: Pieces,
        encoder: Option<Box<Encoder<'static>>>,
        ready: VecDeque<Vec<u8>>,
    }
    let state = State {
        pieces: pieces(inner, max, expected),
        encoder: Some(Box::new(encoder)),
        ready: VecDeque::new(),
    };
    let bytes_read = metrics::BYTES.with_label_values(&["read"]);
    Ok(Box::pin(futures::stream::unfold(state, move |mut st| {
        let bytes_read = bytes_read.clone();
        async move {
            loop {
                if let Some(data) = st.ready.pop_front() {
                    bytes_read.inc_by(data.len() as u64);
                    return Some((Ok(ReadResponse { data: data.into() }), st));
                }
                // The encoder is gone once the frame is finished (or after an error).
                let mut encoder = st.encoder.take()?;
                let piece = match st.pieces.next().await {
                    Some(Ok(piece)) => Some(piece),
                    Some(Err(status)) => return Some((Err(status), st)),
                    None => None,
                };
                let last = piece.is_none();
                let job = move || {
                    let out = match &piece {
                        Some(piece) => compress(&mut encoder, piece, max),
                        None => end_frame(&mut encoder, max),
                    };
                    (encoder, out)
                };
                let done = if expected <= INLINE_COMPRESS_BYTES {
                    Ok(job())
                } else {
                    tokio::task::spawn_blocking(job).await
                };
                match done {
                    Ok((encoder, Ok(out))) => {
                        st.ready.extend(out);
                        if !last {
                            st.encoder = Some(encoder);
                        }
                    }
                    Ok((_, Err(e))) => return Some((Err(internal(e)), st)),
                    Err(e) => return Some((Err(internal(e)), st)),
                }
            }
        }
    })))
}

/// Compresses `input`, returning the output produced so far in buffers of at most `max` bytes.
fn compress(
    encoder: &mut Encoder<'static>,
    input: &[u8],
    max: usize,
) -> std::io::Result<Vec<Vec<u8>>> {
    let mut out = Output::new(max, input.len());
    let len = input.len();
    let mut input = InBuffer::around(input);
    while input.pos() < len {
        let cur = out.space();
        let pos = cur.len();
        encoder.run(&mut input, &mut OutBuffer::around_pos(cur, pos))?;
    }
    Ok(out.done())
}

/// Ends the frame, returning its last bytes in buffers of at most `max` bytes.
fn end_frame(encoder: &mut Encoder<'static>, max: usize) -> std::io::Result<Vec<Vec<u8>>> {
    // What is left is at most one block (128 KiB) plus the frame's epilogue.
    let mut out = Output::new(max, 128 * 1024);
    loop {
        let cur = out.space();
        let pos = cur.len();
        if encoder.finish(&mut OutBuffer::around_pos(cur, pos), true)? == 0 {
            return Ok(out.done());
        }
    }
}

/// Compressed output collected into buffers of at most `max` bytes.
struct Output {
    done: Vec<Vec<u8>>,
    cur: Vec<u8>,
    capacity: usize,
}

impl Output {
    /// Buffers sized for about `expected` bytes of output (but never over `max`).
    fn new(max: usize, expected: usize) -> Self {
        let capacity = max.min(expected.saturating_add(1024));
        Output {
            done: Vec::new(),
            cur: Vec::with_capacity(capacity),
            capacity,
        }
    }

    /// The current buffer, with room for at least one more byte.
    fn space(&mut self) -> &mut Vec<u8> {
        if self.cur.len() >= self.capacity || self.cur.len() == self.cur.capacity() {
            let full = std::mem::replace(&mut self.cur, Vec::with_capacity(self.capacity));
            self.done.push(full);
        }
        &mut self.cur
    }

    fn done(mut self) -> Vec<Vec<u8>> {
        if !self.cur.is_empty() {
            self.done.push(self.cur);
        }
        self.done
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("zstd compression failed: {e}"))
}
