//! Deterministic content: blobs, digests and choices derived from `(seed, index)`, so a run
//! is reproducible from its seed and no blob is ever held whole when it need not be.
//!
//! Large blobs are sequences of independently generated chunks: the digest is computed in a
//! first pass that generates and hashes chunk after chunk, and the upload regenerates the same
//! chunks while it streams them.

use bytes::{Bytes, BytesMut};
use cas::{Digest, DigestHasher};

use crate::options::SizeMix;

/// SplitMix64's finaliser: a well-mixed 64-bit hash of `x`.
pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A key for `(a, b)`.
pub fn key(a: u64, b: u64) -> u64 {
    splitmix(splitmix(a) ^ b.rotate_left(17))
}

/// A small, fast pseudo-random generator (wyrand).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(splitmix(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xA076_1D64_78BD_642F);
        let t = u128::from(self.0).wrapping_mul(u128::from(self.0 ^ 0xE703_7ED1_A0B4_28DB));
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// Fills `buf` with bytes determined by `key` (incompressible).
pub fn fill(buf: &mut [u8], key: u64) {
    let mut rng = Rng::new(key);
    let mut words = buf.chunks_exact_mut(8);
    for w in &mut words {
        w.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    let rest = words.into_remainder();
    let last = rng.next_u64().to_le_bytes();
    rest.copy_from_slice(&last[..rest.len()]);
}

/// Small blob number `index` of a run seeded `seed`: its size is drawn from `sizes`.
pub fn small_blob(seed: u64, index: u64, sizes: &SizeMix) -> (Digest, Vec<u8>) {
    let k = key(seed, index);
    let size = sizes.pick(splitmix(k ^ 0x5157));
    let mut data = vec![0u8; size as usize];
    fill(&mut data, k);
    (Digest::of(&data), data)
}

/// A digest no blob has (a random hash): FindMissingBlobs answers it missing.
pub fn absent_digest(seed: u64, index: u64, sizes: &SizeMix) -> Digest {
    let mut hash = [0u8; 32];
    fill(&mut hash, key(seed ^ 0x00AB_5E17, index));
    Digest::new(hash, sizes.pick(key(seed, index)))
}

/// A large blob generated chunk by chunk.
#[derive(Clone, Copy, Debug)]
pub struct LargeBlob {
    key: u64,
    pub size: u64,
    pub chunk: usize,
}

impl LargeBlob {
    pub fn new(seed: u64, index: u64, size: u64, chunk: usize) -> Self {
        LargeBlob {
            key: key(seed ^ 0x1A76_E000, index),
            size,
            chunk: chunk.max(1),
        }
    }

    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(self.chunk as u64)
    }

    /// Chunk `i` (the last one may be shorter).
    pub fn chunk_at(&self, i: u64) -> Bytes {
        let start = i * self.chunk as u64;
        let len = (self.size.saturating_sub(start)).min(self.chunk as u64) as usize;
        let mut buf = BytesMut::zeroed(len);
        fill(&mut buf, key(self.key, i));
        buf.freeze()
    }

    /// The digest, by generating and hashing every chunk once (CPU-bound: run it on a
    /// blocking thread).
    pub fn digest(&self) -> Digest {
        let mut hasher = DigestHasher::new();
        let mut buf = vec![0u8; self.chunk];
        for i in 0..self.chunks() {
            let start = i * self.chunk as u64;
            let len = (self.size - start).min(self.chunk as u64) as usize;
            fill(&mut buf[..len], key(self.key, i));
            hasher.update(&buf[..len]);
        }
        hasher.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_deterministic_and_distinct() {
        let mix = SizeMix::single(4096);
        let (d1, b1) = small_blob(1, 2, &mix);
        let (d2, b2) = small_blob(1, 2, &mix);
        let (d3, _) = small_blob(1, 3, &mix);
        let (d4, _) = small_blob(2, 2, &mix);
        assert_eq!((d1, &b1), (d2, &b2));
        assert_eq!(b1.len(), 4096);
        assert_ne!(d1, d3);
        assert_ne!(d1, d4);
        assert_eq!(Digest::of(&b1), d1);
    }

    #[test]
    fn sizes_follow_the_mix() {
        let mix: SizeMix = "10:1,20:3".parse().unwrap();
        let n20 = (0..4000)
            .filter(|i| small_blob(9, *i, &mix).1.len() == 20)
            .count();
        assert!((2700..3300).contains(&n20), "{n20}");
    }

    #[test]
    fn large_blob_digest_matches_its_chunks() {
        let blob = LargeBlob::new(5, 1, 10_000, 4096);
        assert_eq!(blob.chunks(), 3);
        let mut all = Vec::new();
        for i in 0..blob.chunks() {
            all.extend_from_slice(&blob.chunk_at(i));
        }
        assert_eq!(all.len(), 10_000);
        assert_eq!(Digest::of(&all), blob.digest());
        assert_ne!(LargeBlob::new(5, 2, 10_000, 4096).digest(), blob.digest());
    }

    #[test]
    fn rng_ranges() {
        let mut r = Rng::new(3);
        assert!((0..1000).all(|_| r.below(7) < 7));
        assert_eq!(r.below(0), 0);
        let hits = (0..10_000).filter(|_| r.chance(0.25)).count();
        assert!((2200..2800).contains(&hits), "{hits}");
    }
}
