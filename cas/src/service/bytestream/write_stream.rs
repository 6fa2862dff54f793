//! The requests of one `Write` call, read from the HTTP/2 body without gathering them into one
//! buffer.
//!
//! tonic's `Streaming` copies every DATA frame into its decode buffer before decoding; for an
//! upload that is one more pass over every byte on the core that also hashes them. Here the
//! gRPC length-prefixed messages are cut out of the frames as they arrive, so a request's data
//! reaches the spool as slices of the buffers h2 read the socket into. The rules are tonic's
//! (same statuses, same messages): the compressed flag needs a `grpc-encoding`, a message over
//! the size limit is `OUT_OF_RANGE`, a stream that ends inside a message is `INTERNAL`, a client
//! that cancels has merely ended its stream.

use std::io::Read;
use std::pin::Pin;

use bytes::Bytes;
use tonic::codec::CompressionEncoding;
use tonic::codegen::Body as _;
use tonic::{Code, Status, Streaming};

use super::write_request::{self, Rope, WriteChunk};
use crate::proto::bytestream::WriteRequest;

/// The gRPC message prefix: compressed flag and big-endian length.
const PREFIX_BYTES: usize = 5;

/// Where a `Write` call's requests come from.
pub(super) enum WriteRequests {
    /// Read straight off the HTTP/2 body (the ByteStream server's own path).
    Body(BodyMessages),
    /// Decoded by tonic (the generated `ByteStream` trait's path).
    Tonic(Streaming<WriteRequest>),
}

impl WriteRequests {
    /// The next request, or `None` once the client has ended its stream.
    pub async fn message(&mut self) -> Result<Option<WriteChunk>, Status> {
        match self {
            WriteRequests::Body(body) => body.message().await,
            WriteRequests::Tonic(stream) => Ok(stream.message().await?.map(WriteChunk::from)),
        }
    }
}

/// gRPC messages cut out of a request body's DATA frames.
pub(super) struct BodyMessages {
    body: tonic::body::Body,
    received: Rope,
    /// The prefix of the message being received: (compressed, length).
    pending: Option<(bool, usize)>,
    encoding: Option<CompressionEncoding>,
    max_message_bytes: usize,
    /// The client ended its stream.
    ended: bool,
    /// The client reset its stream (`CANCEL`).
    cancelled: bool,
}

impl BodyMessages {
    /// Messages of `body`, compressed (when flagged) with `encoding`, each at most
    /// `max_message_bytes` (before and after decompression).
    pub fn new(
        body: tonic::body::Body,
        encoding: Option<CompressionEncoding>,
        max_message_bytes: usize,
    ) -> Self {
        BodyMessages {
            body,
            received: Rope::default(),
            pending: None,
            encoding,
            max_message_bytes,
            ended: false,
            cancelled: false,
        }
    }

    async fn message(&mut self) -> Result<Option<WriteChunk>, Status> {
        loop {
            if let Some(message) = self.next_message()? {
                return write_request::decode(message).map(Some);
            }
            if self.cancelled {
                // As tonic: a client that cancels has ended its stream, whatever it had
                // half sent.
                return Ok(None);
            }
            if self.ended {
                return if self.received.len() > 0 || self.pending.is_some() {
                    Err(Status::internal("Unexpected EOF decoding stream."))
                } else {
                    Ok(None)
                };
            }
            let frame = std::future::poll_fn(|cx| Pin::new(&mut self.body).poll_frame(cx)).await;
            match frame {
                Some(Ok(frame)) => {
                    // Trailers carry nothing a Write needs.
                    if let Ok(data) = frame.into_data() {
                        self.received.push(data);
                    }
                }
                Some(Err(status)) if status.code() == Code::Cancelled => self.cancelled = true,
                Some(Err(status)) => return Err(status),
                None => self.ended = true,
            }
        }
    }

    /// Cuts the next whole message out of what has been received, if it is all there.
    fn next_message(&mut self) -> Result<Option<Vec<Bytes>>, Status> {
        let (compressed, len) = match self.pending {
            Some(prefix) => prefix,
            None => {
                let Some(prefix) = self.received.split_to(PREFIX_BYTES) else {
                    return Ok(None);
                };
                let mut raw = [0u8; PREFIX_BYTES];
                let mut at = 0;
                for piece in &prefix {
                    raw[at..at + piece.len()].copy_from_slice(piece);
                    at += piece.len();
                }
                let compressed = match raw[0] {
                    0 => false,
                    1 if self.encoding.is_some() => true,
                    1 => {
                        return Err(Status::internal(
                            "protocol error: received message with compressed-flag but no \
                             grpc-encoding was specified",
                        ))
                    }
                    f => {
                        return Err(Status::internal(format!(
                            "protocol error: received message with invalid compression flag: \
                             {f} (valid flags are 0 and 1), while sending request"
                        )))
                    }
                };
                let len = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]) as usize;
                if len > self.max_message_bytes {
                    return Err(Status::out_of_range(format!(
                        "Error, decoded message length too large: found {len} bytes, the limit \
                         is: {} bytes",
                        self.max_message_bytes
                    )));
                }
                self.pending = Some((compressed, len));
                (compressed, len)
            }
        };
        let Some(message) = self.received.split_to(len) else {
            return Ok(None);
        };
        self.pending = None;
        if compressed {
            return self.decompress(message).map(|m| Some(vec![m]));
        }
        Ok(Some(message))
    }

    /// Decodes a compressed message (zstd, the one encoding the server accepts).
    fn decompress(&self, message: Vec<Bytes>) -> Result<Bytes, Status> {
        if self.encoding != Some(CompressionEncoding::Zstd) {
            return Err(Status::unimplemented(format!(
                "Content is compressed with `{:?}` which isn't supported",
                self.encoding
            )));
        }
        let mut compressed = Vec::with_capacity(message.iter().map(Bytes::len).sum());
        for piece in &message {
            compressed.extend_from_slice(piece);
        }
        let limit = self.max_message_bytes;
        let mut out = Vec::new();
        zstd::stream::read::Decoder::new(&compressed[..])
            .and_then(|decoder| decoder.take(limit as u64 + 1).read_to_end(&mut out))
            .map_err(|e| {
                Status::internal(format!("Error decompressing: {e}, while sending request"))
            })?;
        if out.len() > limit {
            return Err(Status::resource_exhausted(format!(
                "Error decompressing: size limit, of {limit} bytes, exceeded while decompressing \
                 message"
            )));
        }
        // Held until the spool takes it: no spare capacity pinned with it.
        out.shrink_to_fit();
        Ok(Bytes::from(out))
    }
}
