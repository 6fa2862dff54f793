//! Content-derived names: `-C metadata` / `-C extra-filename` of every unit come from what the
//! unit is (package, version, source, target, profile, features, platform, toolchain, flags and
//! its dependencies' hashes), never from a local path, so two checkouts of one tree name their
//! artifacts identically.

use sha2::{Digest as _, Sha256};

/// The first 16 hex digits of SHA-256 of `bytes`.
pub fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    hex::encode(&digest[..8])
}

/// Accumulates named fields into one hash; fields are length-prefixed so that no two
/// different field lists collide by concatenation.
#[derive(Default)]
pub struct UnitHasher {
    inner: Sha256,
}

impl UnitHasher {
    pub fn new(domain: &str) -> Self {
        let mut h = UnitHasher::default();
        h.field("domain", domain);
        h
    }

    pub fn field(&mut self, name: &str, value: &str) -> &mut Self {
        for part in [name.as_bytes(), value.as_bytes()] {
            self.inner.update((part.len() as u64).to_le_bytes());
            self.inner.update(part);
        }
        self
    }

    pub fn list<'a>(&mut self, name: &str, values: impl IntoIterator<Item = &'a str>) -> &mut Self {
        let mut n = 0u64;
        for v in values {
            self.field(name, v);
            n += 1;
        }
        self.field(name, &format!("#{n}"))
    }

    /// 16 hex digits.
    pub fn finish(&self) -> String {
        let digest = self.inner.clone().finalize();
        hex::encode(&digest[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_do_not_run_together() {
        let a = UnitHasher::new("t")
            .field("x", "ab")
            .field("y", "c")
            .finish();
        let b = UnitHasher::new("t")
            .field("x", "a")
            .field("y", "bc")
            .finish();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert_eq!(
            a,
            UnitHasher::new("t")
                .field("x", "ab")
                .field("y", "c")
                .finish()
        );
    }
}
