//! SHA-256 of local files, remembered across builds by (device, inode, size, mtime, ctime), so
//! a warm build hashes only what changed. Kept in one file under the farm home, rewritten
//! atomically at the end of a build.
//!
//! A file modified within [`RACY_WINDOW`] of being hashed is not remembered (the "racy git"
//! problem: a later write in the same timestamp tick would go unnoticed).

use std::collections::HashMap;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use cas::{Digest, DigestHasher};
use parking_lot::Mutex;

/// Files changed this recently are hashed every time.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }
}

/// Digest and executable bit of a local file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileDigest {
    pub digest: Digest,
    pub executable: bool,
}

/// The cache; share it behind an `Arc`.
#[derive(Debug)]
pub struct DigestCache {
    path: Option<PathBuf>,
    entries: Mutex<HashMap<PathBuf, (Stamp, Digest)>>,
    dirty: Mutex<bool>,
}

impl DigestCache {
    /// A cache that is not saved.
    pub fn in_memory() -> DigestCache {
        DigestCache {
            path: None,
            entries: Mutex::new(HashMap::new()),
            dirty: Mutex::new(false),
        }
    }

    /// Loads the cache file at `path` (a missing or unreadable file starts empty: it is only a
    /// cache).
    pub fn load(path: &Path) -> DigestCache {
        let mut entries = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(path) {
            for line in text.lines() {
                if let Some((p, e)) = parse_line(line) {
                    entries.insert(p, e);
                }
            }
        }
        DigestCache {
            path: Some(path.to_path_buf()),
            entries: Mutex::new(entries),
            dirty: Mutex::new(false),
        }
    }

    /// The digest of the file at `path` (following symlinks).
    pub fn digest(&self, path: &Path) -> std::io::Result<FileDigest> {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path)?;
        let executable = meta.permissions().mode() & 0o111 != 0;
        let stamp = Stamp::of(&meta);
        if let Some((s, d)) = self.entries.lock().get(path) {
            if *s == stamp {
                return Ok(FileDigest {
                    digest: *d,
                    executable,
                });
            }
        }
        let digest = hash_file(path)?;
        // Only remember it if the file did not change while we read it and is not racy.
        let after = std::fs::metadata(path)?;
        let modified = after.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let settled = SystemTime::now()
            .duration_since(modified)
            .map(|age| age >= RACY_WINDOW)
            .unwrap_or(false);
        if Stamp::of(&after) == stamp && settled {
            self.entries
                .lock()
                .insert(path.to_path_buf(), (stamp, digest));
            *self.dirty.lock() = true;
        }
        Ok(FileDigest { digest, executable })
    }

    /// Writes the cache back (temp file + rename) if anything was added.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !std::mem::replace(&mut *self.dirty.lock(), false) {
            return Ok(());
        }
        let mut text = String::new();
        for (p, (s, d)) in self.entries.lock().iter() {
            let Some(p) = p.to_str() else { continue };
            if p.contains('\n') {
                continue;
            }
            text.push_str(&format!(
                "{} {} {} {} {} {} {} {p}\n",
                d.hash_hex(),
                d.size(),
                s.dev,
                s.ino,
                s.size,
                s.mtime_ns,
                s.ctime_ns
            ));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }
}

fn parse_line(line: &str) -> Option<(PathBuf, (Stamp, Digest))> {
    let mut parts = line.splitn(8, ' ');
    let hash = parts.next()?;
    let size: i64 = parts.next()?.parse().ok()?;
    let stamp = Stamp {
        dev: parts.next()?.parse().ok()?,
        ino: parts.next()?.parse().ok()?,
        size: parts.next()?.parse().ok()?,
        mtime_ns: parts.next()?.parse().ok()?,
        ctime_ns: parts.next()?.parse().ok()?,
    };
    let path = PathBuf::from(parts.next()?);
    let digest = Digest::parse(hash, size).ok()?;
    Some((path, (stamp, digest)))
}

/// SHA-256 of a file, streamed.
pub fn hash_file(path: &Path) -> std::io::Result<Digest> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = DigestHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_settled_files_and_notices_changes() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("a");
        std::fs::write(&f, b"hello").unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let cache_file = t.path().join("cache");
        let c = DigestCache::load(&cache_file);
        assert_eq!(c.digest(&f).unwrap().digest, Digest::of(b"hello"));
        c.save().unwrap();
        let c = DigestCache::load(&cache_file);
        assert_eq!(c.entries.lock().len(), 1);
        std::fs::write(&f, b"changed").unwrap();
        assert_eq!(c.digest(&f).unwrap().digest, Digest::of(b"changed"));
    }
}
