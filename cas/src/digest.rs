//! SHA-256 digests as REAPI uses them: lowercase 64-hex hash plus size in bytes.
//!
//! Parsing is strict: anything but exactly 64 lowercase hex characters, or a negative size, is
//! refused. Hashing uses the `sha2` crate, which picks the SHA-NI / ARMv8 hardware path at run
//! time when the CPU has it.

use std::fmt;
use std::str::FromStr;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use sha2::{Digest as _, Sha256};

/// Why a digest could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest hash {0:?} is not 64 lowercase hex characters (SHA-256)")]
    BadHash(String),
    #[error("digest size {0} is negative")]
    NegativeSize(i64),
    #[error("digest {0:?} is not of the form HASH/SIZE")]
    BadForm(String),
    #[error("digest size {0:?} is not a decimal number")]
    BadSize(String),
    #[error("missing digest")]
    Missing,
}

/// A SHA-256 content digest: the hash of a blob and its length.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hash: [u8; 32],
    size: u64,
}

impl Digest {
    /// The digest of the empty blob.
    pub const EMPTY: Digest = Digest {
        hash: [
            0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f,
            0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b,
            0x78, 0x52, 0xb8, 0x55,
        ],
        size: 0,
    };

    pub const fn new(hash: [u8; 32], size: u64) -> Self {
        Digest { hash, size }
    }

    /// Hashes `data` in one go.
    pub fn of(data: &[u8]) -> Self {
        Digest {
            hash: Sha256::digest(data).into(),
            size: data.len() as u64,
        }
    }

    /// Parses a lowercase hex hash and a size.
    pub fn parse(hash: &str, size: i64) -> Result<Self, DigestError> {
        if size < 0 {
            return Err(DigestError::NegativeSize(size));
        }
        Ok(Digest {
            hash: parse_hash(hash)?,
            size: size as u64,
        })
    }

    /// Parses an optional REAPI digest message (absent digests are an error).
    pub fn from_proto(d: Option<&reapi::Digest>) -> Result<Self, DigestError> {
        let d = d.ok_or(DigestError::Missing)?;
        Self::parse(&d.hash, d.size_bytes)
    }

    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn to_proto(&self) -> reapi::Digest {
        reapi::Digest {
            hash: self.hash_hex(),
            size_bytes: self.size as i64,
        }
    }

    /// `HASH-SIZE`, safe as a file name or object key.
    pub fn key(&self) -> String {
        format!("{}-{}", self.hash_hex(), self.size)
    }
}

fn parse_hash(hash: &str) -> Result<[u8; 32], DigestError> {
    let ok = hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !ok {
        return Err(DigestError::BadHash(hash.chars().take(80).collect()));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hash, &mut out).map_err(|_| DigestError::BadHash(hash.to_string()))?;
    Ok(out)
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hash_hex(), self.size)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Parses `HASH/SIZE`.
impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, DigestError> {
        let (hash, size) = s
            .split_once('/')
            .ok_or_else(|| DigestError::BadForm(s.to_string()))?;
        let size = parse_size(size)?;
        Ok(Digest {
            hash: parse_hash(hash)?,
            size,
        })
    }
}

/// Parses a decimal size as used in resource names: digits only, no sign, no leading `+`.
pub fn parse_size(s: &str) -> Result<u64, DigestError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DigestError::BadSize(s.to_string()));
    }
    s.parse::<u64>()
        .ok()
        .filter(|v| *v <= i64::MAX as u64)
        .ok_or_else(|| DigestError::BadSize(s.to_string()))
}

/// Incremental SHA-256 over a stream of chunks, counting bytes as it goes.
#[derive(Clone, Default)]
pub struct DigestHasher {
    sha: Sha256,
    len: u64,
}

impl DigestHasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.sha.update(chunk);
        self.len += chunk.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> Digest {
        Digest {
            hash: self.sha.finalize().into(),
            size: self.len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_digest_constant_matches_hash_of_nothing() {
        assert_eq!(Digest::of(b""), Digest::EMPTY);
    }

    #[test]
    fn strict_parsing() {
        let h = Digest::of(b"abc").hash_hex();
        assert!(Digest::parse(&h, 3).is_ok());
        assert_eq!(
            Digest::parse(&h.to_uppercase(), 3),
            Err(DigestError::BadHash(h.to_uppercase()))
        );
        assert!(Digest::parse(&h[..63], 3).is_err());
        assert!(Digest::parse(&format!("{h}0"), 3).is_err());
        assert_eq!(Digest::parse(&h, -1), Err(DigestError::NegativeSize(-1)));
        assert!(format!("{h}/+3").parse::<Digest>().is_err());
        assert!(format!("{h}/3x").parse::<Digest>().is_err());
        assert_eq!(
            format!("{h}/3").parse::<Digest>().unwrap(),
            Digest::of(b"abc")
        );
    }

    #[test]
    fn incremental_equals_one_shot() {
        let mut h = DigestHasher::new();
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.finish(), Digest::of(b"hello world"));
    }
}
