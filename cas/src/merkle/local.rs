//! Building the Merkle tree of a local folder without a store.

use std::collections::{HashMap, VecDeque};
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    Directory, DirectoryNode, FileNode, SymlinkNode, Tree,
};

use super::{directory_digest, tree_message, MerkleError, CHUNK_SIZE};
use crate::digest::{Digest, DigestHasher};

/// A regular file found by [`build_tree`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalFile {
    /// Digest of the content as it was when hashed.
    pub digest: Digest,
    /// Where the file is on disk (the walked root joined with its tree path).
    pub path: PathBuf,
    pub is_executable: bool,
}

/// Counts of what a walk found; files and bytes are counted once per path, so two files with
/// the same content count twice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    pub files: u64,
    /// Directories, the root included.
    pub directories: u64,
    pub symlinks: u64,
    /// Total size of all files.
    pub file_bytes: u64,
}

/// The Merkle tree of a local folder, computed by [`build_tree`].
#[derive(Clone, Debug)]
pub struct LocalTree {
    pub root_digest: Digest,
    /// Every regular file, one entry per path, in walk order (depth first, by name).
    pub files: Vec<LocalFile>,
    /// Every distinct `Directory` with its digest: root first, then breadth first in name
    /// order, each digest once (identical subtrees are listed once). [`super::get_tree`] lists a
    /// stored tree in the same order, so both give the same `Tree` message.
    pub directories: Vec<(Digest, Directory)>,
    pub stats: TreeStats,
}

impl LocalTree {
    /// The root `Directory`. Panics only if `directories` was emptied by hand: a tree from
    /// [`build_tree`] always lists its root first.
    pub fn root(&self) -> &Directory {
        &self.directories[0].1
    }

    /// The REAPI `Tree` message of this folder (root plus every distinct child directory).
    pub fn tree_message(&self) -> Tree {
        let dirs: Vec<Directory> = self.directories.iter().map(|(_, d)| d.clone()).collect();
        tree_message(&dirs).unwrap_or_default()
    }

    /// The distinct file-content digests, in walk order.
    pub fn file_digests(&self) -> Vec<Digest> {
        let mut seen = std::collections::HashSet::new();
        self.files
            .iter()
            .map(|f| f.digest)
            .filter(|d| seen.insert(*d))
            .collect()
    }
}

/// Walks `root` and builds its canonical REAPI tree, hashing every file in [`CHUNK_SIZE`]
/// chunks on a blocking thread. Symlinks are recorded with their raw target and never followed
/// (`root` itself is followed if it is a symlink).
///
/// Errors name the offending path: a socket, FIFO or device; a name or symlink target that is
/// not UTF-8; any I/O failure.
pub async fn build_tree(root: &Path) -> Result<LocalTree, MerkleError> {
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || build_tree_blocking(&root))
        .await
        .map_err(|e| MerkleError::Internal(format!("the tree walk task failed: {e}")))?
}

/// [`build_tree`] on the calling thread, for callers outside an async runtime.
pub fn build_tree_blocking(root: &Path) -> Result<LocalTree, MerkleError> {
    let meta = std::fs::metadata(root).map_err(MerkleError::io(root))?;
    if !meta.is_dir() {
        return Err(MerkleError::Io {
            path: root.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let mut walker = Walker {
        buf: vec![0; CHUNK_SIZE],
        files: Vec::new(),
        dirs: HashMap::new(),
        stats: TreeStats::default(),
    };
    // Iterative depth-first walk: each frame is a directory whose subdirectories are still
    // being visited; when they are all done its `Directory` is finished and handed to its parent.
    let mut stack = vec![walker.open(String::new(), root)?];
    let mut root_digest = None;
    while let Some(top) = stack.last_mut() {
        if let Some((name, path)) = top.subdirs.next() {
            let frame = walker.open(name, &path)?;
            stack.push(frame);
            continue;
        }
        let Some(done) = stack.pop() else { break };
        let digest = walker.finish(done.dir);
        match stack.last_mut() {
            Some(parent) => parent.dir.directories.push(DirectoryNode {
                name: done.name,
                digest: Some(digest.to_proto()),
            }),
            None => root_digest = Some(digest),
        }
    }
    let root_digest =
        root_digest.ok_or_else(|| MerkleError::Internal("walk ended without a root".into()))?;
    let directories = breadth_first(root_digest, walker.dirs)?;
    Ok(LocalTree {
        root_digest,
        files: walker.files,
        directories,
        stats: walker.stats,
    })
}

/// A directory being walked.
struct Frame {
    name: String,
    dir: Directory,
    subdirs: std::vec::IntoIter<(String, PathBuf)>,
}

struct Walker {
    buf: Vec<u8>,
    files: Vec<LocalFile>,
    dirs: HashMap<Digest, Directory>,
    stats: TreeStats,
}

impl Walker {
    /// Reads one directory: hashes its files, reads its symlinks, lists its subdirectories.
    fn open(&mut self, name: String, path: &Path) -> Result<Frame, MerkleError> {
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(path).map_err(MerkleError::io(path))? {
            let entry = entry.map_err(MerkleError::io(path))?;
            let entry_path = entry.path();
            let name = entry
                .file_name()
                .into_string()
                .map_err(|_| MerkleError::NonUtf8Name {
                    path: entry_path.clone(),
                })?;
            let file_type = entry.file_type().map_err(MerkleError::io(&entry_path))?;
            entries.push((name, entry_path, file_type));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        self.stats.directories += 1;

        let mut dir = Directory::default();
        let mut subdirs = Vec::new();
        for (name, path, file_type) in entries {
            if file_type.is_dir() {
                subdirs.push((name, path));
            } else if file_type.is_file() {
                let (digest, is_executable) = self.hash_file(&path)?;
                dir.files.push(FileNode {
                    name,
                    digest: Some(digest.to_proto()),
                    is_executable,
                    node_properties: None,
                });
                self.stats.files += 1;
                self.stats.file_bytes += digest.size();
                self.files.push(LocalFile {
                    digest,
                    path,
                    is_executable,
                });
            } else if file_type.is_symlink() {
                let target = std::fs::read_link(&path).map_err(MerkleError::io(&path))?;
                let target = target
                    .into_os_string()
                    .into_string()
                    .map_err(|_| MerkleError::NonUtf8Target { path: path.clone() })?;
                dir.symlinks.push(SymlinkNode {
                    name,
                    target,
                    node_properties: None,
                });
                self.stats.symlinks += 1;
            } else {
                return Err(MerkleError::UnsupportedFileType {
                    path,
                    kind: special_kind(&file_type),
                });
            }
        }
        Ok(Frame {
            name,
            dir,
            subdirs: subdirs.into_iter(),
        })
    }

    /// Hashes a file in chunks; returns its digest and whether its user-execute bit is set.
    fn hash_file(&mut self, path: &Path) -> Result<(Digest, bool), MerkleError> {
        let mut file = std::fs::File::open(path).map_err(MerkleError::io(path))?;
        // Mode and type from the open file, so they describe what is actually hashed.
        let meta = file.metadata().map_err(MerkleError::io(path))?;
        if !meta.is_file() {
            return Err(MerkleError::UnsupportedFileType {
                path: path.to_path_buf(),
                kind: special_kind(&meta.file_type()),
            });
        }
        let mut hasher = DigestHasher::new();
        loop {
            match file.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => hasher.update(&self.buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(MerkleError::io(path)(e)),
            }
        }
        Ok((hasher.finish(), meta.permissions().mode() & 0o100 != 0))
    }

    /// Puts a finished directory in canonical order and records it under its digest.
    fn finish(&mut self, mut dir: Directory) -> Digest {
        // `String` orders by UTF-8 bytes, the order the spec requires.
        dir.files.sort_by(|a, b| a.name.cmp(&b.name));
        dir.directories.sort_by(|a, b| a.name.cmp(&b.name));
        dir.symlinks.sort_by(|a, b| a.name.cmp(&b.name));
        let digest = directory_digest(&dir);
        self.dirs.entry(digest).or_insert(dir);
        digest
    }
}

fn special_kind(file_type: &std::fs::FileType) -> &'static str {
    if file_type.is_socket() {
        "socket"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_dir() {
        "directory"
    } else {
        "special file"
    }
}

/// Orders the directories breadth first from the root, each digest once.
fn breadth_first(
    root: Digest,
    mut dirs: HashMap<Digest, Directory>,
) -> Result<Vec<(Digest, Directory)>, MerkleError> {
    let mut out = Vec::with_capacity(dirs.len());
    let mut queue = VecDeque::from([root]);
    while let Some(d) = queue.pop_front() {
        // Already emitted digests were removed from the map, which dedupes shared subtrees.
        let Some(dir) = dirs.remove(&d) else { continue };
        for child in super::child_digests(&d, Path::new(""), &dir)? {
            queue.push_back(child);
        }
        out.push((d, dir));
    }
    Ok(out)
}
