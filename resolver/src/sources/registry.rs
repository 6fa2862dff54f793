//! Registry crates: a `.crate` archive (gzipped tar), checked against Cargo.lock's checksum
//! before anything in it is used, then unpacked in memory with every entry that could escape
//! the package refused.
//!
//! The archive is read into memory once and that same buffer is hashed and then unpacked, so
//! what is verified is exactly what is used (no second read that could see other content).

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::{is_sha256_hex, relative_segments, SourceError};

/// The largest archive accepted: compressed file size, and uncompressed tar stream (contents plus
/// headers). The biggest crates on crates.io are far below this.
pub const MAX_UNPACKED_BYTES: u64 = 1 << 30;

/// A regular file of a crate archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrateFile {
    /// Relative to the package root (the `NAME-VERSION/` directory), '/'-separated.
    pub path: String,
    pub data: Bytes,
    /// Whether the archive gave it the user-execute bit.
    pub executable: bool,
}

/// A symlink of a crate archive (rare: `cargo package` stores the content of linked files).
/// Its target is relative, stays inside the package lexically and passes through no other
/// symlink of the archive, so it cannot resolve outside the package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrateSymlink {
    /// Relative to the package root, '/'-separated.
    pub path: String,
    pub target: String,
}

/// The content of a verified crate archive, each list sorted by path. Directories are implied
/// by the paths (empty ones are not kept).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrateContents {
    pub files: Vec<CrateFile>,
    pub symlinks: Vec<CrateSymlink>,
}

/// Reads the `.crate` archive at `path` of package `name` `version`, refuses it unless its
/// SHA-256 is `expected_sha256_hex` (Cargo.lock's checksum), and unpacks it in memory with
/// [`MAX_UNPACKED_BYTES`] as the size cap.
///
/// Refused, with errors naming the package, the archive and the entry: a checksum mismatch
/// (before anything is unpacked); entries outside `NAME-VERSION/`, absolute or with `..`, `.` or
/// empty segments, or not UTF-8; hard links, devices, FIFOs and sparse files; symlinks that are
/// absolute, leave the package or go through another symlink; anything under a symlink or a
/// file; duplicate entries; archives over the cap; corrupt gzip or tar data.
pub fn read_crate_archive(
    path: &Path,
    name: &str,
    version: &str,
    expected_sha256_hex: &str,
) -> Result<CrateContents, SourceError> {
    read_crate_archive_limited(path, name, version, expected_sha256_hex, MAX_UNPACKED_BYTES)
}

/// [`read_crate_archive`] with another size cap, in bytes.
pub fn read_crate_archive_limited(
    path: &Path,
    name: &str,
    version: &str,
    expected_sha256_hex: &str,
    limit: u64,
) -> Result<CrateContents, SourceError> {
    let package = format!("{name} {version}");
    let expected = expected_sha256_hex.to_ascii_lowercase();
    if !is_sha256_hex(&expected) {
        return Err(SourceError::BadChecksum {
            package,
            value: expected_sha256_hex.to_string(),
        });
    }
    let too_large = || SourceError::ArchiveTooLarge {
        package: package.clone(),
        path: path.to_path_buf(),
        limit,
    };
    let file = std::fs::File::open(path).map_err(SourceError::io(path))?;
    let mut bytes = Vec::new();
    // One byte more than the cap tells an archive at the cap from one over it.
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(SourceError::io(path))?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != expected {
        return Err(SourceError::ChecksumMismatch {
            package,
            path: path.to_path_buf(),
            expected,
            actual,
        });
    }
    let top = format!("{name}-{version}");
    let unpacker = Unpacker {
        package: &package,
        path,
        top: &top,
    };
    unpacker.unpack(&bytes, limit)
}

/// Where cargo keeps the archive of a registry package it extracted: for
/// `$CARGO_HOME/registry/src/<index-dir>/<name>-<version>/Cargo.toml`, the path
/// `$CARGO_HOME/registry/cache/<index-dir>/<name>-<version>.crate`. `None` if `manifest_path`
/// does not have that shape. Whether the archive exists is not checked.
pub fn cached_crate_path(manifest_path: &Path) -> Option<PathBuf> {
    if manifest_path.file_name()? != "Cargo.toml" {
        return None;
    }
    let package_dir = manifest_path.parent()?;
    let package = package_dir.file_name()?.to_str()?;
    let index_dir = package_dir.parent()?;
    let index = index_dir.file_name()?;
    let src = index_dir.parent()?;
    let registry = src.parent()?;
    if src.file_name()? != "src" || registry.file_name()? != "registry" {
        return None;
    }
    Some(
        registry
            .join("cache")
            .join(index)
            .join(format!("{package}.crate")),
    )
}

/// A reader that fails once more than its limit was read, remembering that it did.
struct Capped<'a, R> {
    inner: R,
    remaining: u64,
    exceeded: &'a AtomicBool,
}

impl<R: Read> Read for Capped<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.remaining {
            self.exceeded.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("size cap exceeded"));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

struct Unpacker<'a> {
    package: &'a str,
    path: &'a Path,
    top: &'a str,
}

/// What an archive path is used as, to find duplicates and paths used as two things.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Symlink,
}

impl Unpacker<'_> {
    fn unpack(&self, gz: &[u8], limit: u64) -> Result<CrateContents, SourceError> {
        let exceeded = AtomicBool::new(false);
        let reader = Capped {
            inner: flate2::read::GzDecoder::new(gz),
            remaining: limit,
            exceeded: &exceeded,
        };
        let io_error = |e: std::io::Error| {
            if exceeded.load(Ordering::Relaxed) {
                SourceError::ArchiveTooLarge {
                    package: self.package.to_string(),
                    path: self.path.to_path_buf(),
                    limit,
                }
            } else {
                SourceError::CorruptArchive {
                    package: self.package.to_string(),
                    path: self.path.to_path_buf(),
                    message: e.to_string(),
                }
            }
        };
        let mut archive = tar::Archive::new(reader);
        let mut out = CrateContents::default();
        let mut leaves: HashMap<String, Kind> = HashMap::new();
        let mut dirs: HashSet<String> = HashSet::new();
        for entry in archive.entries().map_err(io_error)? {
            let mut entry = entry.map_err(io_error)?;
            let raw_path = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw_path).into_owned();
            let refuse = |reason: &str| self.refuse(&shown, reason);
            let entry_type = entry.header().entry_type();
            let is_dir = entry_type == EntryType::Directory;
            let Some(rel) = self.relative(&raw_path, is_dir).map_err(|r| refuse(&r))? else {
                continue; // the package directory itself
            };
            let kind = match entry_type {
                EntryType::Regular | EntryType::Continuous => Kind::File,
                EntryType::Symlink => Kind::Symlink,
                EntryType::Directory => {
                    add_parents(&mut dirs, &rel);
                    dirs.insert(rel);
                    continue;
                }
                EntryType::XGlobalHeader => continue,
                EntryType::Link => return Err(refuse("hard links are not allowed")),
                EntryType::Char | EntryType::Block => {
                    return Err(refuse("device files are not allowed"))
                }
                EntryType::Fifo => return Err(refuse("FIFOs are not allowed")),
                EntryType::GNUSparse => return Err(refuse("sparse files are not supported")),
                other => return Err(refuse(&format!("unsupported entry type {other:?}"))),
            };
            if leaves.insert(rel.clone(), kind).is_some() {
                return Err(refuse("the path appears twice in the archive"));
            }
            add_parents(&mut dirs, &rel);
            match kind {
                Kind::File => {
                    let mode = entry
                        .header()
                        .mode()
                        .map_err(|e| refuse(&format!("unreadable mode: {e}")))?;
                    // A header's size is not trusted for allocation: growth is bounded by the cap.
                    let mut data = Vec::with_capacity(entry.size().min(1 << 20) as usize);
                    entry.read_to_end(&mut data).map_err(io_error)?;
                    out.files.push(CrateFile {
                        path: rel,
                        data: Bytes::from(data),
                        executable: mode & 0o100 != 0,
                    });
                }
                Kind::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .ok_or_else(|| refuse("symlink without a target"))?;
                    let target = std::str::from_utf8(&target)
                        .map_err(|_| refuse("symlink target is not UTF-8"))?
                        .to_string();
                    out.symlinks.push(CrateSymlink { path: rel, target });
                }
            }
        }
        self.check_shape(&out, &leaves, &dirs)?;
        out.files.sort_by(|a, b| a.path.cmp(&b.path));
        out.symlinks.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// The path inside the package of an archive path, `None` for the package directory.
    fn relative(&self, raw: &[u8], is_dir: bool) -> Result<Option<String>, String> {
        let path = std::str::from_utf8(raw).map_err(|_| "path is not UTF-8".to_string())?;
        let path = match path.strip_suffix('/') {
            Some(p) if is_dir => p,
            _ => path,
        };
        let segments = relative_segments(path)?;
        let (first, rest) = segments
            .split_first()
            .ok_or_else(|| "empty path".to_string())?;
        if *first != self.top {
            return Err(format!("outside the package directory {}/", self.top));
        }
        if rest.is_empty() {
            return if is_dir {
                Ok(None)
            } else {
                Err(format!("{} must be a directory", self.top))
            };
        }
        Ok(Some(rest.join("/")))
    }

    /// Refuses paths used as both a leaf and a directory (so nothing is under a file or a
    /// symlink) and symlinks that could resolve outside the package.
    fn check_shape(
        &self,
        out: &CrateContents,
        leaves: &HashMap<String, Kind>,
        dirs: &HashSet<String>,
    ) -> Result<(), SourceError> {
        let mut clashes: Vec<&String> = leaves.keys().filter(|p| dirs.contains(*p)).collect();
        clashes.sort();
        if let Some(path) = clashes.first() {
            let what = match leaves.get(*path) {
                Some(Kind::Symlink) => "a symlink",
                _ => "a file",
            };
            return Err(self.refuse(
                &format!("{}/{path}", self.top),
                &format!("it is {what} and also a directory with entries under it"),
            ));
        }
        for link in &out.symlinks {
            check_symlink(&link.path, &link.target, leaves)
                .map_err(|reason| self.refuse(&format!("{}/{}", self.top, link.path), &reason))?;
        }
        Ok(())
    }

    fn refuse(&self, entry: &str, reason: &str) -> SourceError {
        SourceError::UnsafeEntry {
            package: self.package.to_string(),
            path: self.path.to_path_buf(),
            entry: entry.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Records every parent directory of `path`.
fn add_parents(dirs: &mut HashSet<String>, path: &str) {
    let mut end = 0;
    while let Some(i) = path[end..].find('/') {
        end += i;
        dirs.insert(path[..end].to_string());
        end += 1;
    }
}

/// Checks that a symlink at `path` with `target` resolves, lexically, inside the package, and
/// that no component it walks through (other than the last) is itself a symlink of the archive,
/// so that the lexical answer is the real one.
fn check_symlink(path: &str, target: &str, leaves: &HashMap<String, Kind>) -> Result<(), String> {
    if target.is_empty() {
        return Err("symlink with an empty target".into());
    }
    if target.starts_with('/') {
        return Err(format!("symlink to the absolute path {target:?}"));
    }
    if target.contains('\0') {
        return Err("symlink target contains NUL".into());
    }
    let mut stack: Vec<&str> = path.split('/').collect();
    stack.pop(); // the link's own name: targets are relative to its directory
    let components: Vec<&str> = target
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    for (i, component) in components.iter().enumerate() {
        if *component == ".." {
            if stack.pop().is_none() {
                return Err(format!("symlink target {target:?} leaves the package"));
            }
            continue;
        }
        stack.push(component);
        let last = i + 1 == components.len();
        if !last && leaves.get(&stack.join("/")) == Some(&Kind::Symlink) {
            return Err(format!(
                "symlink target {target:?} goes through another symlink"
            ));
        }
    }
    Ok(())
}
