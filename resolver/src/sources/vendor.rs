//! `cargo vendor` directories: one directory per package, with a `.cargo-checksum.json`
//! (`{"files": {PATH: SHA256, ...}, "package": SHA256 | null}`) that lists every file and the
//! checksum of the `.crate` it came from.
//!
//! [`read_vendored`] trusts nothing on disk: the package checksum must be Cargo.lock's, every
//! listed file must exist with its listed SHA-256, and every file present must be listed.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use cas::{Digest, DigestHasher};
use serde::Deserialize;

use super::{is_sha256_hex, relative_segments, SourceError};

/// The checksum file cargo writes in every vendored package.
pub const CHECKSUM_FILE: &str = ".cargo-checksum.json";

/// A verified file of a vendored package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VendoredFile {
    /// Relative to the package directory, '/'-separated.
    pub path: String,
    /// Where it is on this machine.
    pub local_path: PathBuf,
    pub executable: bool,
    /// The digest of the content as verified (SHA-256 as listed, plus size). If the file changes
    /// after this, an upload of it under this digest is refused by the CAS.
    pub digest: Digest,
}

#[derive(Deserialize)]
struct ChecksumFile {
    files: BTreeMap<String, String>,
    #[serde(default)]
    package: Option<String>,
}

/// Verifies the vendored package in `dir` and lists its files (sorted by path, the checksum file
/// itself left out).
///
/// `expected_package_checksum` is Cargo.lock's checksum of the package (`None` for git
/// packages, which have none): when given, the checksum file's `package` must equal it. Then
/// every listed file must exist and hash to its listed SHA-256, and every regular file present
/// must be listed. Symlinks, special files and names that are not UTF-8 are refused.
pub fn read_vendored(
    dir: &Path,
    expected_package_checksum: Option<&str>,
) -> Result<Vec<VendoredFile>, SourceError> {
    let listing = read_checksum_file(dir)?;
    if let Some(expected) = expected_package_checksum {
        let expected = expected.to_ascii_lowercase();
        if !is_sha256_hex(&expected) {
            return Err(SourceError::BadChecksum {
                package: dir.display().to_string(),
                value: expected,
            });
        }
        if listing.package.as_deref() != Some(expected.as_str()) {
            return Err(SourceError::VendorPackageMismatch {
                dir: dir.to_path_buf(),
                expected,
                actual: listing.package.unwrap_or_else(|| "none".into()),
            });
        }
    }
    let present = walk(dir)?;
    for rel in present.keys() {
        if !listing.files.contains_key(rel) {
            return Err(SourceError::VendorFileUnlisted {
                dir: dir.to_path_buf(),
                file: rel.clone(),
            });
        }
    }
    let mut out = Vec::with_capacity(listing.files.len());
    for (rel, expected) in &listing.files {
        let Some(local) = present.get(rel) else {
            return Err(SourceError::VendorFileMissing {
                dir: dir.to_path_buf(),
                file: rel.clone(),
            });
        };
        let (digest, executable) = hash_file(local)?;
        let actual = digest.hash_hex();
        if actual != *expected {
            return Err(SourceError::VendorFileMismatch {
                dir: dir.to_path_buf(),
                file: rel.clone(),
                expected: expected.clone(),
                actual,
            });
        }
        out.push(VendoredFile {
            path: rel.clone(),
            local_path: local.clone(),
            executable,
            digest,
        });
    }
    Ok(out)
}

/// Parses `dir/.cargo-checksum.json`, refusing listed paths that could leave `dir` and
/// checksums that are not SHA-256.
fn read_checksum_file(dir: &Path) -> Result<ChecksumFile, SourceError> {
    let path = dir.join(CHECKSUM_FILE);
    let bad = |message: String| SourceError::VendorChecksumFile {
        path: path.clone(),
        message,
    };
    let text = std::fs::read_to_string(&path).map_err(SourceError::io(&path))?;
    let listing: ChecksumFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if let Some(p) = &listing.package {
        if !is_sha256_hex(p) {
            return Err(bad(format!(
                "package checksum {p:?} is not 64 lowercase hex digits"
            )));
        }
    }
    for (file, sum) in &listing.files {
        if let Err(reason) = relative_segments(file) {
            return Err(SourceError::VendorUnsafePath {
                dir: dir.to_path_buf(),
                file: file.clone(),
                reason: format!("listed in {CHECKSUM_FILE} with an unsafe path: {reason}"),
            });
        }
        if file == CHECKSUM_FILE {
            return Err(bad(format!("{CHECKSUM_FILE} lists itself")));
        }
        if !is_sha256_hex(sum) {
            return Err(bad(format!(
                "checksum {sum:?} of {file} is not 64 lowercase hex digits"
            )));
        }
    }
    Ok(listing)
}

/// Every regular file under `dir` by '/'-separated relative path, except the checksum file.
fn walk(dir: &Path) -> Result<BTreeMap<String, PathBuf>, SourceError> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&path).map_err(SourceError::io(&path))? {
            let entry = entry.map_err(SourceError::io(&path))?;
            let local = entry.path();
            let name =
                entry
                    .file_name()
                    .into_string()
                    .map_err(|name| SourceError::VendorUnsafePath {
                        dir: dir.to_path_buf(),
                        file: join(&rel, &name.to_string_lossy()),
                        reason: "the name is not UTF-8".into(),
                    })?;
            let child = join(&rel, &name);
            let file_type = entry.file_type().map_err(SourceError::io(&local))?;
            if file_type.is_dir() {
                stack.push((local, child));
            } else if file_type.is_file() {
                if child != CHECKSUM_FILE {
                    out.insert(child, local);
                }
            } else {
                let kind = if file_type.is_symlink() {
                    "symlinks are not allowed in vendored packages"
                } else {
                    "only regular files and directories are allowed in vendored packages"
                };
                return Err(SourceError::VendorUnsafePath {
                    dir: dir.to_path_buf(),
                    file: child,
                    reason: kind.into(),
                });
            }
        }
    }
    Ok(out)
}

/// SHA-256 and size of a file read in chunks, and its user-execute bit.
fn hash_file(path: &Path) -> Result<(Digest, bool), SourceError> {
    let mut file = std::fs::File::open(path).map_err(SourceError::io(path))?;
    let meta = file.metadata().map_err(SourceError::io(path))?;
    let mut hasher = DigestHasher::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SourceError::io(path)(e)),
        }
    }
    Ok((hasher.finish(), meta.permissions().mode() & 0o100 != 0))
}

fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}
