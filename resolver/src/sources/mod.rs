//! Where the sources of non-local packages come from, verified before use: Cargo.lock's
//! checksums ([`lockfile`]), registry `.crate` archives checked against them and unpacked in
//! memory ([`registry`]), and `cargo vendor` directories checked against their
//! `.cargo-checksum.json` ([`vendor`]).
//!
//! The supply-chain rule: no byte of a registry crate is used before the SHA-256 of the whole
//! archive matched Cargo.lock, and no vendored file is returned unless its own SHA-256 matched
//! and the vendored package's checksum matched Cargo.lock.

use std::path::PathBuf;

pub mod lockfile;
pub mod registry;
pub mod vendor;

pub use lockfile::{LockedPackage, Lockfile};
pub use registry::{
    cached_crate_path, read_crate_archive, read_crate_archive_limited, CrateContents, CrateFile,
    CrateSymlink, MAX_UNPACKED_BYTES,
};
pub use vendor::{read_vendored, VendoredFile};

/// Why a lockfile, crate archive or vendored package was refused.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Cargo.lock could not be parsed or holds something inconsistent.
    #[error("{}: not a valid Cargo.lock: {message}", .path.display())]
    Lockfile { path: PathBuf, message: String },
    #[error("{}: Cargo.lock version {version} is not supported (versions 1 to 4 are)", .path.display())]
    LockfileVersion { path: PathBuf, version: i64 },
    /// An expected checksum that is not 64 hex digits.
    #[error("{package}: {value:?} is not a SHA-256 checksum (64 hex digits)")]
    BadChecksum { package: String, value: String },
    /// The supply-chain check: the archive is not the one Cargo.lock pinned.
    #[error(
        "checksum mismatch for {package} ({}): Cargo.lock expects sha256 {expected}, the archive has {actual}",
        .path.display()
    )]
    ChecksumMismatch {
        package: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// An archive entry that could escape the package or is not a plain file, directory or
    /// symlink.
    #[error("{package} ({}): archive entry {entry:?} refused: {reason}", .path.display())]
    UnsafeEntry {
        package: String,
        path: PathBuf,
        entry: String,
        reason: String,
    },
    #[error("{package} ({}): more than {limit} bytes uncompressed; refused", .path.display())]
    ArchiveTooLarge {
        package: String,
        path: PathBuf,
        limit: u64,
    },
    #[error("{package} ({}): not a valid gzipped tar archive: {message}", .path.display())]
    CorruptArchive {
        package: String,
        path: PathBuf,
        message: String,
    },
    #[error("{}: invalid .cargo-checksum.json: {message}", .path.display())]
    VendorChecksumFile { path: PathBuf, message: String },
    #[error(
        "vendored package {}: its .cargo-checksum.json has package checksum {actual}, Cargo.lock expects {expected}",
        .dir.display()
    )]
    VendorPackageMismatch {
        dir: PathBuf,
        expected: String,
        /// `none` when the file has no package checksum.
        actual: String,
    },
    #[error("vendored package {}: {file} is listed in .cargo-checksum.json but missing", .dir.display())]
    VendorFileMissing { dir: PathBuf, file: String },
    #[error(
        "vendored package {}: {file} has sha256 {actual}, .cargo-checksum.json expects {expected}",
        .dir.display()
    )]
    VendorFileMismatch {
        dir: PathBuf,
        file: String,
        expected: String,
        actual: String,
    },
    #[error("vendored package {}: {file} is not listed in .cargo-checksum.json", .dir.display())]
    VendorFileUnlisted { dir: PathBuf, file: String },
    #[error("vendored package {}: {file:?} refused: {reason}", .dir.display())]
    VendorUnsafePath {
        dir: PathBuf,
        file: String,
        reason: String,
    },
}

impl SourceError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> SourceError {
        let path = path.into();
        move |source| SourceError::Io { path, source }
    }
}

/// Whether `s` is a SHA-256 in lowercase hex, as Cargo writes them.
pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The segments of a '/'-separated relative path, or why it is not a safe one: absolute, empty
/// segments (leading, doubled or trailing '/'), `.`, `..` or NUL.
pub(crate) fn relative_segments(path: &str) -> Result<Vec<&str>, String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.starts_with('/') {
        return Err("absolute path".into());
    }
    let mut out = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" => return Err("empty path segment".into()),
            "." => return Err("'.' path segment".into()),
            ".." => return Err("'..' path segment".into()),
            s if s.contains('\0') => return Err("NUL in path".into()),
            s => out.push(s),
        }
    }
    Ok(out)
}
