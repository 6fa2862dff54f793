//! Composing a REAPI input root from digests: stored trees mounted at paths, plus single files,
//! symlinks and empty directories, without touching disk or a store.
//!
//! A [`TreeBuilder`] holds a tree whose directories are either *open* (held as entries, to be
//! encoded by [`TreeBuilder::build`]) or *stored* (a digest plus the [`DirectoryIndex`] that can
//! expand it). Mounting a stored tree ([`TreeBuilder::add_tree`]) adds one stored node: nothing is
//! read. Only when something is later added inside it, or another tree is merged over it, are the
//! directories on the way opened, one level at a time. `build` then encodes the open directories
//! only, so its cost is proportional to what was expanded or created, never to the size of the
//! mounted trees (a toolchain of thousands of directories mounted opaque costs one `DirectoryNode`).
//!
//! The result is canonical as [`super::validate_directory`] defines it (files, directories and
//! symlinks each sorted by name in UTF-8 byte order, names unique), so composing the content of a
//! folder gives the same root digest as [`super::build_tree`] of that folder on disk, whatever the
//! order of the calls.
//!
//! Node properties (mtime, unix mode, custom) of stored entries are kept when their directory is
//! expanded, so an expanded but unchanged directory re-encodes to its original digest. Two
//! entries are *identical* when their content is equal (digest and executable bit, symlink
//! target, directory content) and their properties are equal or absent on one side; the merged
//! entry keeps the properties that were present.

use std::collections::btree_map::Entry;
use std::collections::{BTreeSet, HashSet};

use bazel_remote_apis::build::bazel::remote::execution::v2::Directory;
use bytes::Bytes;

use super::validate_name;
use crate::digest::Digest;
use tree::{
    apply_merge, check_merge, conflict, describe_file, describe_node, describe_symlink, encode,
    expand, files_identical, find, symlinks_identical, Dir, FileEntry, Item, Node, OpenDir,
    SymlinkEntry,
};

mod index;
mod tree;

pub use index::DirectoryIndex;

/// The deepest directory (in path segments from the root) a [`TreeBuilder`] creates or expands.
/// Linux paths are at most 4096 bytes, so no materialisable tree is deeper than 2048; this bound
/// keeps the recursive merge and encode far from the stack limit.
pub const MAX_DEPTH: usize = 512;

/// Why a tree could not be composed. Paths are the '/'-separated tree paths given to the
/// builder, or paths inside a mounted tree; the root is shown as `.`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ComposeError {
    #[error("invalid tree path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("invalid symlink target {target:?} for {}: {reason}", show(.path))]
    InvalidSymlinkTarget {
        path: String,
        target: String,
        reason: String,
    },
    #[error("conflict at {}: {existing} is already there, cannot add {new}", show(.path))]
    Conflict {
        path: String,
        existing: String,
        new: String,
    },
    #[error("directory {digest} (needed at {}) is not in the directory index", show(.path))]
    MissingDirectory { path: String, digest: Digest },
    #[error("directory {digest} is not canonical: {reason}")]
    InvalidDirectory { digest: Digest, reason: String },
    #[error("{} is more than {max} directories deep", show(.path), max = MAX_DEPTH)]
    TooDeep { path: String },
    #[error("the Tree message has no root directory")]
    TreeWithoutRoot,
}

fn show(path: &str) -> &str {
    if path.is_empty() {
        "."
    } else {
        path
    }
}

/// A directory encoded by [`TreeBuilder::build`].
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedDirectory {
    pub digest: Digest,
    /// The prost encoding, the blob to store under `digest`.
    pub bytes: Bytes,
    pub directory: Directory,
}

/// What [`TreeBuilder::build`] produced.
#[derive(Clone, Debug, PartialEq)]
pub struct ComposedTree {
    pub root_digest: Digest,
    /// Every directory the builder created or re-encoded, each digest once, root first and every
    /// directory before its subdirectories. Mounted subtrees left opaque are not listed (they are
    /// already stored); a listed directory may also be stored already (an expanded directory that
    /// ended unchanged), so upload after `find_missing` as usual. Empty when the root itself is an
    /// opaque mounted tree.
    pub directories: Vec<EncodedDirectory>,
    /// The distinct file digests given to [`TreeBuilder::add_file`], sorted. Files of mounted
    /// trees are not listed.
    pub file_digests: Vec<Digest>,
}

/// Composes a canonical REAPI tree from stored trees and digests; see the module docs.
///
/// Every `add_*` method either succeeds or leaves the tree's content unchanged (it may have
/// expanded stored directories on the way, which changes no digest).
#[derive(Debug, Default)]
pub struct TreeBuilder {
    root: Dir,
    added_files: BTreeSet<Digest>,
}

impl TreeBuilder {
    /// An empty tree (its root is the empty directory).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file with content `digest` at the '/'-separated relative `path`, creating parent
    /// directories as needed. The same file (same digest and executable bit) at the same path is
    /// accepted; anything else there is a [`ComposeError::Conflict`].
    pub fn add_file(
        &mut self,
        path: &str,
        digest: Digest,
        executable: bool,
    ) -> Result<(), ComposeError> {
        let p = TreePath::parse(path)?;
        let Some(name) = p.last() else {
            return Err(root_refused(path, "a file"));
        };
        let new = FileEntry {
            digest,
            executable,
            properties: None,
        };
        // Already there (e.g. inside a mounted tree): nothing to expand.
        if matches!(find(self.root.view(), &p.segments), Some(Item::File(f)) if files_identical(&f, &new))
        {
            self.added_files.insert(digest);
            return Ok(());
        }
        let parent = self.parent_mut(&p)?;
        match parent.entries.entry(name.to_string()) {
            Entry::Vacant(v) => {
                v.insert(Node::File(new));
            }
            Entry::Occupied(o) => match o.get() {
                Node::File(f) if files_identical(f, &new) => {}
                other => return Err(conflict(path, describe_node(other), describe_file(&new))),
            },
        }
        self.added_files.insert(digest);
        Ok(())
    }

    /// Adds a symlink at `path` pointing to `target` (kept verbatim, never resolved). The target
    /// must be non-empty and free of NUL, as REAPI requires.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), ComposeError> {
        let p = TreePath::parse(path)?;
        let Some(name) = p.last() else {
            return Err(root_refused(path, "a symlink"));
        };
        let reason = if target.is_empty() {
            Some("empty target")
        } else if target.contains('\0') {
            Some("target contains NUL")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(ComposeError::InvalidSymlinkTarget {
                path: path.to_string(),
                target: target.to_string(),
                reason: reason.to_string(),
            });
        }
        let new = SymlinkEntry {
            target: target.to_string(),
            properties: None,
        };
        if matches!(find(self.root.view(), &p.segments), Some(Item::Symlink(s)) if symlinks_identical(&s, &new))
        {
            return Ok(());
        }
        let parent = self.parent_mut(&p)?;
        match parent.entries.entry(name.to_string()) {
            Entry::Vacant(v) => {
                v.insert(Node::Symlink(new));
            }
            Entry::Occupied(o) => match o.get() {
                Node::Symlink(s) if symlinks_identical(s, &new) => {}
                other => return Err(conflict(path, describe_node(other), describe_symlink(&new))),
            },
        }
        Ok(())
    }

    /// Makes sure a directory exists at `path` (parents created as needed); an existing
    /// directory, stored or not, is left as it is. `""` (the root) always exists.
    pub fn add_empty_dir(&mut self, path: &str) -> Result<(), ComposeError> {
        let p = TreePath::parse(path)?;
        let Some(name) = p.last() else {
            return Ok(());
        };
        if matches!(find(self.root.view(), &p.segments), Some(Item::Dir(_))) {
            return Ok(());
        }
        let parent = self.parent_mut(&p)?;
        match parent.entries.entry(name.to_string()) {
            Entry::Vacant(v) => {
                v.insert(Node::Dir(Dir::default()));
            }
            Entry::Occupied(o) => match o.get() {
                Node::Dir(_) => {}
                other => return Err(conflict(path, describe_node(other), "a directory".into())),
            },
        }
        Ok(())
    }

    /// Mounts the stored tree `root` at `path` (`""` = the root). `directories` must hold `root`
    /// and every directory below it that ends up expanded (normally the whole tree, as from
    /// [`super::get_tree`] or a `Tree` message).
    ///
    /// If nothing is at `path` (or only an empty directory), the tree is mounted opaque: it is
    /// referenced by digest and not read. If a directory is already there, the two are merged:
    /// entries present on one side only are kept, identical entries are fine, and directories on
    /// both sides are merged recursively (expanding only those that differ). Anything else is a
    /// [`ComposeError::Conflict`] naming the path, and the tree is left as it was.
    pub fn add_tree(
        &mut self,
        path: &str,
        root: Digest,
        directories: &DirectoryIndex,
    ) -> Result<(), ComposeError> {
        let p = TreePath::parse(path)?;
        // Known before anything changes, so a missing root leaves no parents behind.
        directories.lookup(&root, path)?;
        let depth = p.segments.len();
        let Some(name) = p.last() else {
            check_merge(self.root.view(), root, directories, path, depth)?;
            return apply_merge(&mut self.root, root, directories, path);
        };
        let parent = self.parent_mut(&p)?;
        match parent.entries.entry(name.to_string()) {
            Entry::Vacant(v) => {
                v.insert(Node::Dir(Dir::Stored {
                    digest: root,
                    index: directories.clone(),
                }));
                Ok(())
            }
            Entry::Occupied(o) => match o.into_mut() {
                Node::Dir(existing) => {
                    check_merge(existing.view(), root, directories, path, depth)?;
                    apply_merge(existing, root, directories, path)
                }
                other => Err(conflict(
                    path,
                    describe_node(other),
                    format!("directory {root}"),
                )),
            },
        }
    }

    /// Encodes every open directory, bottom up, and returns the root digest with the encoded
    /// directories and the files added with [`TreeBuilder::add_file`]. Costs time proportional to
    /// the directories created or expanded, not to the size of mounted trees.
    pub fn build(self) -> ComposedTree {
        let mut directories = Vec::new();
        let mut seen = HashSet::new();
        let root_digest = match self.root {
            Dir::Stored { digest, .. } => digest,
            Dir::Open(open) => encode(open, &mut directories, &mut seen),
        };
        // Encoded children first; reversed, every directory comes before its subdirectories.
        directories.reverse();
        ComposedTree {
            root_digest,
            directories,
            file_digests: self.added_files.into_iter().collect(),
        }
    }

    /// The open directory that is the parent of `p`'s last segment, creating missing
    /// directories and expanding stored ones on the way.
    fn parent_mut(&mut self, p: &TreePath<'_>) -> Result<&mut OpenDir, ComposeError> {
        let parents = p.segments.len().saturating_sub(1);
        let mut cur = &mut self.root;
        for (i, seg) in p.segments[..parents].iter().enumerate() {
            let open = expand(cur, p.prefix(i))?;
            let node = open
                .entries
                .entry((*seg).to_string())
                .or_insert_with(|| Node::Dir(Dir::default()));
            match node {
                Node::Dir(d) => cur = d,
                other => {
                    return Err(conflict(
                        p.prefix(i + 1),
                        describe_node(other),
                        format!("a directory (on the way to {})", p.full),
                    ))
                }
            }
        }
        expand(cur, p.prefix(parents))
    }
}

/// A checked '/'-separated relative path; no segments for the root.
struct TreePath<'a> {
    full: &'a str,
    segments: Vec<&'a str>,
}

impl<'a> TreePath<'a> {
    fn parse(path: &'a str) -> Result<Self, ComposeError> {
        let bad = |reason: String| ComposeError::InvalidPath {
            path: path.to_string(),
            reason,
        };
        if path.is_empty() {
            return Ok(TreePath {
                full: path,
                segments: Vec::new(),
            });
        }
        if path.starts_with('/') {
            return Err(bad("absolute paths are not allowed".into()));
        }
        let mut segments = Vec::new();
        for seg in path.split('/') {
            if seg.is_empty() {
                return Err(bad("empty segment (a trailing or doubled '/')".into()));
            }
            validate_name(seg).map_err(bad)?;
            segments.push(seg);
        }
        if segments.len() > MAX_DEPTH {
            return Err(ComposeError::TooDeep {
                path: path.to_string(),
            });
        }
        Ok(TreePath {
            full: path,
            segments,
        })
    }

    fn last(&self) -> Option<&'a str> {
        self.segments.last().copied()
    }

    /// The path of the first `n` segments.
    fn prefix(&self, n: usize) -> &'a str {
        if n == 0 {
            return "";
        }
        let len = self.segments[..n].iter().map(|s| s.len()).sum::<usize>() + n - 1;
        &self.full[..len]
    }
}

fn root_refused(path: &str, what: &str) -> ComposeError {
    ComposeError::InvalidPath {
        path: path.to_string(),
        reason: format!("the root is a directory, it cannot be {what}"),
    }
}
