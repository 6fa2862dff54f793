//! What `open` finds on disk: leftover temp files and the blob files to index.

use std::fs;
use std::io;
use std::path::Path;

use tracing::{debug, warn};

use super::FoundBlob;
use crate::digest::{parse_size, Digest};

/// Deletes leftover temp files (interrupted uploads, spools, evictions) from a previous run.
pub(super) fn clean_tmp(tmp: &Path) -> io::Result<()> {
    for entry in fs::read_dir(tmp)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            warn!(path = %path.display(), "ignoring unexpected directory in the store's tmp/");
        } else if let Err(e) = fs::remove_file(&path) {
            warn!(path = %path.display(), error = %e, "could not delete leftover temp file");
        }
    }
    Ok(())
}

/// Parses a blob file name, `<64 lowercase hex>-<decimal size>` exactly as [`Digest::key`]
/// writes it (no sign, no leading zeros).
pub(super) fn parse_blob_name(name: &str) -> Option<Digest> {
    let (hash, size) = name.split_once('-')?;
    let size = i64::try_from(parse_size(size).ok()?).ok()?;
    let digest = Digest::parse(hash, size).ok()?;
    (digest.key() == name).then_some(digest)
}

pub(super) fn is_shard_name(name: &str) -> bool {
    name.len() == 2 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Finds every well-named blob file under `blobs/` with its length and mtime, deleting junk
/// files (bad names, files in the wrong shard, anything not a regular file).
pub(super) fn scan_blobs(blobs: &Path) -> io::Result<Vec<FoundBlob>> {
    let mut found = Vec::new();
    for shard in fs::read_dir(blobs)? {
        let shard = shard?;
        let shard_path = shard.path();
        let shard_name = shard.file_name();
        let shard_name = shard_name.to_str().filter(|n| is_shard_name(n));
        match (shard.file_type()?.is_dir(), shard_name) {
            (true, Some(shard_name)) => scan_shard(&shard_path, shard_name, &mut found)?,
            (true, None) => {
                warn!(path = %shard_path.display(), "ignoring unexpected directory in blobs/")
            }
            (false, _) => remove_junk(&shard_path),
        }
    }
    Ok(found)
}

fn scan_shard(dir: &Path, shard: &str, found: &mut Vec<FoundBlob>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            warn!(path = %path.display(), "ignoring unexpected directory in blobs/");
            continue;
        }
        let name = entry.file_name();
        if name
            .to_string_lossy()
            .starts_with(super::write::SHARD_TMP_PREFIX)
        {
            // An in-memory blob being written when the previous run stopped.
            debug!(path = %path.display(), "deleting leftover temp file");
            if let Err(e) = fs::remove_file(&path) {
                warn!(path = %path.display(), error = %e, "could not delete leftover temp file");
            }
            continue;
        }
        let digest = name
            .to_str()
            .filter(|n| n.starts_with(shard))
            .and_then(parse_blob_name);
        match digest {
            Some(digest) if file_type.is_file() => {
                let meta = entry.metadata()?;
                found.push(FoundBlob {
                    path,
                    digest,
                    len: meta.len(),
                    mtime: meta.modified()?,
                });
            }
            _ => remove_junk(&path),
        }
    }
    Ok(())
}

fn remove_junk(path: &Path) {
    warn!(path = %path.display(), "deleting junk file in blobs/");
    if let Err(e) = fs::remove_file(path) {
        warn!(path = %path.display(), error = %e, "could not delete junk file");
    }
}
