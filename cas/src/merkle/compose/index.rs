//! [`DirectoryIndex`]: the stored `Directory` messages a [`super::TreeBuilder`] expands mounted
//! trees from.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2::{Directory, Tree};

use super::tree::{child_digest, join};
use super::ComposeError;
use crate::digest::Digest;
use crate::merkle::{directory_digest, validate_directory};

/// The empty `Directory`, whose digest is [`Digest::EMPTY`]; always known to every index.
static EMPTY_DIRECTORY: Directory = Directory {
    files: Vec::new(),
    directories: Vec::new(),
    symlinks: Vec::new(),
    node_properties: None,
};

/// Stored `Directory` messages by digest, the source a [`TreeBuilder`] expands mounted trees
/// from. Cheap to clone (the map is shared behind an `Arc`), so one index of a toolchain can serve
/// every action; inserting into a clone that is shared copies the map first.
///
/// Every inserted directory is checked with [`validate_directory`] once, on insertion, so
/// expansion can rely on canonical, sorted entries. The empty directory ([`Digest::EMPTY`]) is
/// always present.
#[derive(Clone, Default)]
pub struct DirectoryIndex {
    dirs: Arc<HashMap<Digest, Directory>>,
}

impl fmt::Debug for DirectoryIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DirectoryIndex({} directories)", self.dirs.len())
    }
}

impl DirectoryIndex {
    /// An index holding only the (implicit) empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// An index of `dirs`, each validated (see [`DirectoryIndex::insert`]).
    pub fn from_directories(
        dirs: impl IntoIterator<Item = Directory>,
    ) -> Result<Self, ComposeError> {
        let mut index = Self::new();
        index.extend(dirs)?;
        Ok(index)
    }

    /// An index of a REAPI `Tree` message's root and children, with the root's digest.
    pub fn from_tree(tree: &Tree) -> Result<(Self, Digest), ComposeError> {
        let mut index = Self::new();
        let root = index.insert_tree(tree)?;
        Ok((index, root))
    }

    /// Adds one directory after checking it is canonical; returns its digest.
    pub fn insert(&mut self, dir: Directory) -> Result<Digest, ComposeError> {
        let digest = directory_digest(&dir);
        if self.dirs.contains_key(&digest) {
            return Ok(digest);
        }
        validate_directory(&dir)
            .map_err(|reason| ComposeError::InvalidDirectory { digest, reason })?;
        Arc::make_mut(&mut self.dirs).insert(digest, dir);
        Ok(digest)
    }

    /// Adds every directory of `dirs` (e.g. the output of [`super::get_tree`]).
    pub fn extend(
        &mut self,
        dirs: impl IntoIterator<Item = Directory>,
    ) -> Result<(), ComposeError> {
        for dir in dirs {
            self.insert(dir)?;
        }
        Ok(())
    }

    /// Adds a REAPI `Tree` message's root and children; returns the root's digest.
    pub fn insert_tree(&mut self, tree: &Tree) -> Result<Digest, ComposeError> {
        let root = tree.root.clone().ok_or(ComposeError::TreeWithoutRoot)?;
        self.extend(tree.children.iter().cloned())?;
        self.insert(root)
    }

    /// The directory stored under `digest`, if known.
    pub fn get(&self, digest: &Digest) -> Option<&Directory> {
        if *digest == Digest::EMPTY {
            return Some(&EMPTY_DIRECTORY);
        }
        self.dirs.get(digest)
    }

    /// Whether `digest` is known.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.get(digest).is_some()
    }

    /// How many directories were inserted (the implicit empty one not counted unless inserted).
    pub fn len(&self) -> usize {
        self.dirs.len()
    }

    /// Whether nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    /// Checks that the root and every directory below it are present; returns how many distinct
    /// directories the tree has. This walks the whole tree, so call it once per index and root
    /// (e.g. when a toolchain tree is fetched), not per composed action.
    pub fn check_complete(&self, root: &Digest) -> Result<usize, ComposeError> {
        let mut seen = HashSet::from([*root]);
        let mut stack = vec![(*root, String::new())];
        while let Some((digest, path)) = stack.pop() {
            let dir = self.lookup(&digest, &path)?;
            for node in &dir.directories {
                let child = child_digest(node, digest)?;
                if seen.insert(child) {
                    stack.push((child, join(&path, &node.name)));
                }
            }
        }
        Ok(seen.len())
    }

    pub(super) fn lookup(&self, digest: &Digest, path: &str) -> Result<&Directory, ComposeError> {
        self.get(digest)
            .ok_or_else(|| ComposeError::MissingDirectory {
                path: path.to_string(),
                digest: *digest,
            })
    }
}
