//! A `google.bytestream.WriteRequest` decoded from the pieces of the HTTP/2 DATA frames it
//! arrived in, without copying its `data` into one buffer.
//!
//! prost's `Message::decode` needs one contiguous buffer for a `bytes` field to come out without
//! a copy, and a large request spans several frames; so the four fields of `WriteRequest` are
//! read here by hand, with the wire rules prost applies: the last occurrence of a field wins,
//! unknown fields are skipped, a wrong wire type or a truncated field is a decode error
//! (`INTERNAL`, as tonic reports prost's errors).

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use tonic::Status;

use crate::proto::bytestream::WriteRequest;

/// One `WriteRequest`, its data still in the pieces it was received in.
#[derive(Debug, Default)]
pub(super) struct WriteChunk {
    pub resource_name: String,
    pub write_offset: i64,
    pub finish_write: bool,
    pub data: Vec<Bytes>,
}

impl WriteChunk {
    /// Bytes of data the request carries.
    pub fn data_len(&self) -> usize {
        self.data.iter().map(Bytes::len).sum()
    }
}

impl From<WriteRequest> for WriteChunk {
    fn from(request: WriteRequest) -> Self {
        WriteChunk {
            resource_name: request.resource_name,
            write_offset: request.write_offset,
            finish_write: request.finish_write,
            data: if request.data.is_empty() {
                Vec::new()
            } else {
                vec![request.data]
            },
        }
    }
}

/// Pieces shorter than this are copied together rather than kept as they came: a client that
/// sends a message as a million one-byte (or padded) DATA frames would otherwise pin a handle
/// and a frame buffer per byte. Longer pieces stay slices of h2's read buffers, whose frame
/// overhead (9 header and at most 256 padding bytes) is then under 7% of what they hold.
const SMALL_PIECE_BYTES: usize = 4096;

/// Bytes in the order received, kept as the pieces they came in (small ones copied together);
/// every operation takes from the front.
#[derive(Debug, Default)]
pub(super) struct Rope {
    pieces: VecDeque<Bytes>,
    /// Small pieces received after the last of `pieces`, copied into one buffer.
    small: BytesMut,
    len: usize,
}

impl Rope {
    /// A rope over `pieces`, in order, kept as given (pieces taken out of a rope were
    /// coalesced when they went in).
    pub fn from_pieces(pieces: Vec<Bytes>) -> Self {
        let len = pieces.iter().map(Bytes::len).sum();
        let pieces = pieces.into_iter().filter(|p| !p.is_empty()).collect();
        Rope {
            pieces,
            small: BytesMut::new(),
            len,
        }
    }

    /// Appends `piece` at the back.
    pub fn push(&mut self, piece: Bytes) {
        if piece.is_empty() {
            return;
        }
        self.len += piece.len();
        if piece.len() < SMALL_PIECE_BYTES {
            self.small.extend_from_slice(&piece);
        } else {
            self.seal_small();
            self.pieces.push_back(piece);
        }
    }

    /// Moves the copied small pieces behind `pieces`, keeping the order received.
    fn seal_small(&mut self) {
        if !self.small.is_empty() {
            self.pieces.push_back(self.small.split().freeze());
        }
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Pieces held (the copied small ones count as one).
    #[cfg(test)]
    fn piece_count(&self) -> usize {
        self.pieces.len() + usize::from(!self.small.is_empty())
    }

    /// Takes the first byte.
    pub fn get_u8(&mut self) -> Option<u8> {
        if self.pieces.is_empty() {
            self.seal_small();
        }
        let front = self.pieces.front_mut()?;
        let byte = front.get_u8();
        if front.is_empty() {
            self.pieces.pop_front();
        }
        self.len -= 1;
        Some(byte)
    }

    /// Takes the first `n` bytes as pieces of the ones held (no copy), or nothing if fewer
    /// are held.
    pub fn split_to(&mut self, n: usize) -> Option<Vec<Bytes>> {
        if n > self.len {
            return None;
        }
        if n > self.len - self.small.len() {
            self.seal_small();
        }
        let mut taken = Vec::new();
        let mut left = n;
        while left > 0 {
            let Some(front) = self.pieces.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                if let Some(piece) = self.pieces.pop_front() {
                    taken.push(piece);
                }
            } else {
                taken.push(front.split_to(left));
                left = 0;
            }
        }
        self.len -= n;
        if self.pieces.capacity() > 64 && self.pieces.len() < self.pieces.capacity() / 4 {
            self.pieces.shrink_to_fit();
        }
        Some(taken)
    }
}

const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;

/// Decodes one serialized `WriteRequest` held in `pieces`.
pub(super) fn decode(pieces: Vec<Bytes>) -> Result<WriteChunk, Status> {
    let mut rope = Rope::from_pieces(pieces);
    let mut chunk = WriteChunk::default();
    while rope.len() > 0 {
        let key = varint(&mut rope, "key")?;
        let (field, wire) = (key >> 3, key & 7);
        match field {
            0 => return Err(invalid("invalid field number 0")),
            1 => {
                expect_wire(wire, WIRE_LEN, "resource_name")?;
                let bytes = length_delimited(&mut rope, "resource_name")?;
                let mut name = Vec::with_capacity(bytes.iter().map(Bytes::len).sum());
                for piece in &bytes {
                    name.extend_from_slice(piece);
                }
                chunk.resource_name = String::from_utf8(name).map_err(|_| {
                    invalid("WriteRequest.resource_name: invalid string value: data is not UTF-8")
                })?;
            }
            2 => {
                expect_wire(wire, WIRE_VARINT, "write_offset")?;
                chunk.write_offset = varint(&mut rope, "write_offset")? as i64;
            }
            3 => {
                expect_wire(wire, WIRE_VARINT, "finish_write")?;
                chunk.finish_write = varint(&mut rope, "finish_write")? != 0;
            }
            10 => {
                expect_wire(wire, WIRE_LEN, "data")?;
                chunk.data = length_delimited(&mut rope, "data")?;
            }
            _ => skip(&mut rope, wire)?,
        }
    }
    Ok(chunk)
}

fn invalid(what: &str) -> Status {
    Status::internal(format!("failed to decode Protobuf message: {what}"))
}

fn expect_wire(got: u64, want: u64, field: &str) -> Result<(), Status> {
    if got == want {
        Ok(())
    } else {
        Err(invalid(&format!(
            "WriteRequest.{field}: invalid wire type: {got} (expected {want})"
        )))
    }
}

/// A base-128 varint of at most 10 bytes.
fn varint(rope: &mut Rope, field: &str) -> Result<u64, Status> {
    let mut value = 0u64;
    for i in 0..10 {
        let Some(byte) = rope.get_u8() else {
            return Err(invalid(&format!("{field}: buffer underflow")));
        };
        if i == 9 && byte > 1 {
            return Err(invalid(&format!("{field}: invalid varint")));
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(invalid(&format!("{field}: invalid varint")))
}

fn length_delimited(rope: &mut Rope, field: &str) -> Result<Vec<Bytes>, Status> {
    let len = varint(rope, field)?;
    usize::try_from(len)
        .ok()
        .and_then(|len| rope.split_to(len))
        .ok_or_else(|| invalid(&format!("WriteRequest.{field}: buffer underflow")))
}

/// Skips an unknown field of wire type `wire`.
fn skip(rope: &mut Rope, wire: u64) -> Result<(), Status> {
    let len = match wire {
        WIRE_VARINT => return varint(rope, "unknown field").map(drop),
        WIRE_FIXED64 => 8,
        WIRE_FIXED32 => 4,
        WIRE_LEN => {
            let len = varint(rope, "unknown field")?;
            usize::try_from(len).unwrap_or(usize::MAX)
        }
        other => {
            return Err(invalid(&format!(
                "unknown field: unsupported wire type {other}"
            )))
        }
    };
    rope.split_to(len)
        .map(drop)
        .ok_or_else(|| invalid("unknown field: buffer underflow"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// `bytes` cut into pieces at every `step` bytes.
    fn cut(bytes: &[u8], step: usize) -> Vec<Bytes> {
        bytes
            .chunks(step.max(1))
            .map(Bytes::copy_from_slice)
            .collect()
    }

    fn flat(pieces: &[Bytes]) -> Vec<u8> {
        pieces.iter().flat_map(|p| p.iter().copied()).collect()
    }

    #[test]
    fn decodes_what_prost_encodes_however_it_is_cut() {
        let request = WriteRequest {
            resource_name: "main/uploads/u/blobs/ab/3".into(),
            write_offset: (1 << 40) + 7,
            finish_write: true,
            data: Bytes::from((0..5000u32).map(|i| i as u8).collect::<Vec<_>>()),
        };
        let encoded = request.encode_to_vec();
        for step in [1, 2, 3, 7, 64, 1000, 4999, encoded.len()] {
            let chunk = decode(cut(&encoded, step)).expect("decodes");
            assert_eq!(chunk.resource_name, request.resource_name);
            assert_eq!(chunk.write_offset, request.write_offset);
            assert!(chunk.finish_write);
            assert_eq!(flat(&chunk.data), request.data.to_vec(), "cut every {step}");
        }
    }

    #[test]
    fn data_in_one_piece_comes_out_as_a_slice_of_it() {
        let request = WriteRequest {
            data: Bytes::from(vec![7u8; 1 << 16]),
            ..Default::default()
        };
        let encoded = Bytes::from(request.encode_to_vec());
        let chunk = decode(vec![encoded.clone()]).expect("decodes");
        assert_eq!(chunk.data.len(), 1);
        let start = encoded.as_ptr() as usize;
        let data = chunk.data[0].as_ptr() as usize;
        assert!(data > start && data < start + encoded.len(), "not copied");
    }

    #[test]
    fn defaults_unknown_fields_and_repeats_follow_protobuf() {
        assert_eq!(decode(Vec::new()).expect("empty").data_len(), 0);
        // field 2 = 5, unknown varint field 7, unknown LEN field 8, fixed32 field 9, fixed64
        // field 11, then field 2 again = 6 (the last wins), data "hi".
        let bytes = [
            0x10, 5, 0x38, 0x96, 0x01, 0x42, 2, b'x', b'y', 0x4d, 1, 2, 3, 4, 0x59, 1, 2, 3, 4, 5,
            6, 7, 8, 0x10, 6, 0x52, 2, b'h', b'i',
        ];
        let chunk = decode(cut(&bytes, 3)).expect("decodes");
        assert_eq!(chunk.write_offset, 6);
        assert_eq!(flat(&chunk.data), b"hi");
        assert!(!chunk.finish_write);
    }

    #[test]
    fn malformed_requests_are_decode_errors() {
        let cases: [&[u8]; 7] = [
            &[0x12, 1, b'a'], // write_offset with the LEN wire type
            &[0x52, 5, b'a'], // data longer than the message
            &[0x10],          // varint cut short
            &[
                0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ], // 11-byte varint
            &[0x0a, 2, 0xc3, 0x28], // resource_name not UTF-8
            &[0x02, 0],       // field number 0
            &[0x3b],          // group (wire type 3)
        ];
        for bytes in cases {
            let status = decode(cut(bytes, 1)).expect_err("refused");
            assert_eq!(status.code(), tonic::Code::Internal, "{bytes:?}");
            assert!(
                status.message().starts_with("failed to decode"),
                "{status:?}"
            );
        }
    }

    #[test]
    fn the_rope_splits_across_pieces_without_losing_bytes() {
        let mut rope = Rope::from_pieces(cut(b"abcdefghij", 3));
        assert_eq!(rope.get_u8(), Some(b'a'));
        assert_eq!(flat(&rope.split_to(4).expect("held")), b"bcde");
        assert!(rope.split_to(6).is_none());
        assert_eq!(rope.len(), 5);
        assert_eq!(flat(&rope.split_to(5).expect("held")), b"fghij");
        assert_eq!(rope.get_u8(), None);
    }

    #[test]
    fn small_pieces_are_copied_together_and_large_ones_kept() {
        let mut rope = Rope::default();
        for byte in 0..=255u8 {
            rope.push(Bytes::from(vec![byte]));
        }
        assert_eq!(rope.piece_count(), 1, "256 one-byte pieces held as one");
        let large = Bytes::from(vec![9u8; SMALL_PIECE_BYTES]);
        rope.push(large.clone());
        rope.push(Bytes::from_static(b"end"));
        assert_eq!(rope.piece_count(), 3);
        let taken = rope.split_to(rope.len()).expect("held");
        assert_eq!(taken.len(), 3);
        assert_eq!(taken[1].as_ptr(), large.as_ptr(), "large piece not copied");
        let mut want: Vec<u8> = (0..=255u8).collect();
        want.extend_from_slice(&large);
        want.extend_from_slice(b"end");
        assert_eq!(flat(&taken), want);
    }

    #[test]
    fn a_message_sent_a_byte_at_a_time_decodes_into_one_piece() {
        let request = WriteRequest {
            resource_name: "uploads/u/blobs/ab/3".into(),
            data: Bytes::from(vec![5u8; 100_000]),
            ..Default::default()
        };
        let mut rope = Rope::default();
        for piece in cut(&request.encode_to_vec(), 1) {
            rope.push(piece);
        }
        assert_eq!(rope.piece_count(), 1);
        let chunk = decode(rope.split_to(rope.len()).expect("held")).expect("decodes");
        assert_eq!(chunk.data.len(), 1);
        assert_eq!(chunk.data_len(), 100_000);
    }
}
