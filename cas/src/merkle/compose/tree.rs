//! The builder's node model (open and stored directories), the two-phase merge of a stored tree
//! into it, and the encoding of its open directories.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashSet};

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    Directory, DirectoryNode, FileNode, NodeProperties, SymlinkNode,
};

use super::{ComposeError, DirectoryIndex, EncodedDirectory, MAX_DEPTH};
use crate::digest::Digest;
use crate::merkle::encode_directory;

#[derive(Clone, Debug, PartialEq)]
pub(super) struct FileEntry {
    pub(super) digest: Digest,
    pub(super) executable: bool,
    pub(super) properties: Option<NodeProperties>,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct SymlinkEntry {
    pub(super) target: String,
    pub(super) properties: Option<NodeProperties>,
}

#[derive(Debug)]
pub(super) enum Node {
    File(FileEntry),
    Symlink(SymlinkEntry),
    Dir(Dir),
}

#[derive(Debug)]
pub(super) enum Dir {
    /// Referenced by digest; expanded from `index` only when needed.
    Stored {
        digest: Digest,
        index: DirectoryIndex,
    },
    Open(OpenDir),
}

impl Default for Dir {
    fn default() -> Self {
        Dir::Open(OpenDir::default())
    }
}

#[derive(Debug, Default)]
pub(super) struct OpenDir {
    /// `String`'s order is byte order, which for UTF-8 is the canonical REAPI order.
    pub(super) entries: BTreeMap<String, Node>,
    pub(super) properties: Option<NodeProperties>,
}

/// A read-only view of a directory, open or stored.
#[derive(Clone, Copy)]
pub(super) enum DirRef<'a> {
    Open(&'a OpenDir),
    Stored(Digest, &'a DirectoryIndex),
}

/// An entry of a directory being merged in, or found in an existing one.
pub(super) enum Item<'a> {
    File(FileEntry),
    Symlink(SymlinkEntry),
    Dir(DirRef<'a>),
}

impl Dir {
    pub(super) fn view(&self) -> DirRef<'_> {
        match self {
            Dir::Open(o) => DirRef::Open(o),
            Dir::Stored { digest, index } => DirRef::Stored(*digest, index),
        }
    }
}

/// Opens `dir` if it is stored, replacing it by its entries (subdirectories stay stored).
pub(super) fn expand<'a>(dir: &'a mut Dir, path: &str) -> Result<&'a mut OpenDir, ComposeError> {
    if let Dir::Stored { digest, index } = &*dir {
        let open = open_stored(*digest, index, path)?;
        *dir = Dir::Open(open);
    }
    match dir {
        Dir::Open(open) => Ok(open),
        // Replaced just above.
        Dir::Stored { .. } => unreachable!("a stored directory is opened before use"),
    }
}

pub(super) fn open_stored(
    digest: Digest,
    index: &DirectoryIndex,
    path: &str,
) -> Result<OpenDir, ComposeError> {
    let dir = index.lookup(&digest, path)?;
    let mut open = OpenDir {
        entries: BTreeMap::new(),
        properties: dir.node_properties.clone(),
    };
    for (name, item) in stored_items(dir, digest, index)? {
        let node = match item {
            Item::File(f) => Node::File(f),
            Item::Symlink(s) => Node::Symlink(s),
            Item::Dir(DirRef::Stored(d, _)) => Node::Dir(Dir::Stored {
                digest: d,
                index: index.clone(),
            }),
            Item::Dir(DirRef::Open(_)) => continue, // stored_items never yields these
        };
        open.entries.insert(name.to_string(), node);
    }
    Ok(open)
}

/// The entries of a stored (validated) directory, files then directories then symlinks.
pub(super) fn stored_items<'a>(
    dir: &'a Directory,
    digest: Digest,
    index: &'a DirectoryIndex,
) -> Result<Vec<(&'a str, Item<'a>)>, ComposeError> {
    let mut items =
        Vec::with_capacity(dir.files.len() + dir.directories.len() + dir.symlinks.len());
    for f in &dir.files {
        items.push((f.name.as_str(), Item::File(file_entry(f, digest)?)));
    }
    for d in &dir.directories {
        let child = child_digest(d, digest)?;
        items.push((d.name.as_str(), Item::Dir(DirRef::Stored(child, index))));
    }
    for s in &dir.symlinks {
        items.push((s.name.as_str(), Item::Symlink(symlink_entry(s))));
    }
    Ok(items)
}

/// The entry called `name` in a stored (validated, so sorted) directory.
pub(super) fn find_stored<'a>(
    dir: &'a Directory,
    digest: Digest,
    index: &'a DirectoryIndex,
    name: &str,
) -> Result<Option<Item<'a>>, ComposeError> {
    if let Ok(i) = dir.files.binary_search_by(|n| n.name.as_str().cmp(name)) {
        return Ok(Some(Item::File(file_entry(&dir.files[i], digest)?)));
    }
    if let Ok(i) = dir
        .directories
        .binary_search_by(|n| n.name.as_str().cmp(name))
    {
        let child = child_digest(&dir.directories[i], digest)?;
        return Ok(Some(Item::Dir(DirRef::Stored(child, index))));
    }
    if let Ok(i) = dir.symlinks.binary_search_by(|n| n.name.as_str().cmp(name)) {
        return Ok(Some(Item::Symlink(symlink_entry(&dir.symlinks[i]))));
    }
    Ok(None)
}

/// The entry at `segments` below `root`, read without expanding anything; `None` when it is
/// absent or cannot be reached (a non-directory or an unknown directory on the way), which the
/// mutating path then reports.
pub(super) fn find<'a>(root: DirRef<'a>, segments: &[&str]) -> Option<Item<'a>> {
    let (last, parents) = segments.split_last()?;
    let mut cur = root;
    for seg in parents {
        match find_in(cur, seg)? {
            Item::Dir(d) => cur = d,
            _ => return None,
        }
    }
    find_in(cur, last)
}

fn find_in<'a>(dir: DirRef<'a>, name: &str) -> Option<Item<'a>> {
    match dir {
        DirRef::Open(o) => find_open(o, name),
        DirRef::Stored(digest, index) => {
            let stored = index.get(&digest)?;
            find_stored(stored, digest, index, name).ok().flatten()
        }
    }
}

pub(super) fn find_open<'a>(dir: &'a OpenDir, name: &str) -> Option<Item<'a>> {
    Some(match dir.entries.get(name)? {
        Node::File(f) => Item::File(f.clone()),
        Node::Symlink(s) => Item::Symlink(s.clone()),
        Node::Dir(d) => Item::Dir(d.view()),
    })
}

pub(super) fn file_entry(node: &FileNode, dir: Digest) -> Result<FileEntry, ComposeError> {
    let digest =
        Digest::from_proto(node.digest.as_ref()).map_err(|e| ComposeError::InvalidDirectory {
            digest: dir,
            reason: format!("file {:?} has an invalid digest: {e}", node.name),
        })?;
    Ok(FileEntry {
        digest,
        executable: node.is_executable,
        properties: node.node_properties.clone(),
    })
}

pub(super) fn symlink_entry(node: &SymlinkNode) -> SymlinkEntry {
    SymlinkEntry {
        target: node.target.clone(),
        properties: node.node_properties.clone(),
    }
}

pub(super) fn child_digest(node: &DirectoryNode, dir: Digest) -> Result<Digest, ComposeError> {
    Digest::from_proto(node.digest.as_ref()).map_err(|e| ComposeError::InvalidDirectory {
        digest: dir,
        reason: format!("subdirectory {:?} has an invalid digest: {e}", node.name),
    })
}

/// Checks, without changing anything, that the stored tree `incoming` can be merged into
/// `existing` (at `path`, `depth` segments deep): every entry on both sides identical, or
/// directories on both sides that can themselves be merged.
pub(super) fn check_merge(
    existing: DirRef<'_>,
    incoming: Digest,
    index: &DirectoryIndex,
    path: &str,
    depth: usize,
) -> Result<(), ComposeError> {
    if matches!(existing, DirRef::Stored(d, _) if d == incoming) || incoming == Digest::EMPTY {
        return Ok(());
    }
    if depth > MAX_DEPTH {
        return Err(ComposeError::TooDeep {
            path: path.to_string(),
        });
    }
    let new_dir = index.lookup(&incoming, path)?;
    // The existing side's stored message, looked up once.
    let stored = match existing {
        DirRef::Stored(d, idx) => Some((d, idx, idx.lookup(&d, path)?)),
        DirRef::Open(_) => None,
    };
    let existing_props = match (existing, stored) {
        (_, Some((_, _, dir))) => dir.node_properties.as_ref(),
        (DirRef::Open(o), None) => o.properties.as_ref(),
        (DirRef::Stored(..), None) => None,
    };
    if !props_compatible(existing_props, new_dir.node_properties.as_ref()) {
        return Err(conflict(
            path,
            format!("a directory with properties {existing_props:?}"),
            format!(
                "directory {incoming} with properties {:?}",
                new_dir.node_properties
            ),
        ));
    }
    for (name, item) in stored_items(new_dir, incoming, index)? {
        let found = match (existing, stored) {
            (_, Some((d, idx, dir))) => find_stored(dir, d, idx, name)?,
            (DirRef::Open(o), None) => find_open(o, name),
            (DirRef::Stored(..), None) => None,
        };
        let Some(found) = found else { continue };
        match (&found, &item) {
            (Item::File(a), Item::File(b)) if files_identical(a, b) => {}
            (Item::Symlink(a), Item::Symlink(b)) if symlinks_identical(a, b) => {}
            (Item::Dir(a), Item::Dir(DirRef::Stored(b, _))) => {
                check_merge(*a, *b, index, &join(path, name), depth + 1)?
            }
            _ => {
                return Err(conflict(
                    &join(path, name),
                    describe_item(&found),
                    describe_item(&item),
                ))
            }
        }
    }
    Ok(())
}

/// Merges the stored tree `incoming` into `existing`, after [`check_merge`] accepted it (which
/// also bounded the depth).
pub(super) fn apply_merge(
    existing: &mut Dir,
    incoming: Digest,
    index: &DirectoryIndex,
    path: &str,
) -> Result<(), ComposeError> {
    let replace = match &*existing {
        Dir::Stored { digest, .. } => *digest == Digest::EMPTY,
        Dir::Open(o) => o.entries.is_empty() && o.properties.is_none(),
    };
    if replace {
        *existing = Dir::Stored {
            digest: incoming,
            index: index.clone(),
        };
        return Ok(());
    }
    if matches!(&*existing, Dir::Stored { digest, .. } if *digest == incoming)
        || incoming == Digest::EMPTY
    {
        return Ok(());
    }
    let new_dir = index.lookup(&incoming, path)?;
    let open = expand(existing, path)?;
    if open.properties.is_none() {
        open.properties = new_dir.node_properties.clone();
    }
    for (name, item) in stored_items(new_dir, incoming, index)? {
        match open.entries.entry(name.to_string()) {
            Entry::Vacant(v) => {
                v.insert(match item {
                    Item::File(f) => Node::File(f),
                    Item::Symlink(s) => Node::Symlink(s),
                    Item::Dir(DirRef::Stored(d, _)) => Node::Dir(Dir::Stored {
                        digest: d,
                        index: index.clone(),
                    }),
                    Item::Dir(DirRef::Open(_)) => continue, // stored_items never yields these
                });
            }
            // `check_merge` found both sides identical or both directories.
            Entry::Occupied(mut o) => match (o.get_mut(), item) {
                (Node::Dir(d), Item::Dir(DirRef::Stored(child, _))) => {
                    apply_merge(d, child, index, &join(path, name))?
                }
                (Node::File(f), Item::File(new)) if f.properties.is_none() => {
                    f.properties = new.properties
                }
                (Node::Symlink(s), Item::Symlink(new)) if s.properties.is_none() => {
                    s.properties = new.properties
                }
                _ => {}
            },
        }
    }
    Ok(())
}

/// Encodes `open` and its open descendants (post order), pushing each new digest once.
pub(super) fn encode(
    open: OpenDir,
    out: &mut Vec<EncodedDirectory>,
    seen: &mut HashSet<Digest>,
) -> Digest {
    let mut dir = Directory {
        node_properties: open.properties,
        ..Directory::default()
    };
    // The map iterates in canonical order, so each list comes out sorted.
    for (name, node) in open.entries {
        match node {
            Node::File(f) => dir.files.push(FileNode {
                name,
                digest: Some(f.digest.to_proto()),
                is_executable: f.executable,
                node_properties: f.properties,
            }),
            Node::Symlink(s) => dir.symlinks.push(SymlinkNode {
                name,
                target: s.target,
                node_properties: s.properties,
            }),
            Node::Dir(Dir::Stored { digest, .. }) => dir.directories.push(DirectoryNode {
                name,
                digest: Some(digest.to_proto()),
            }),
            Node::Dir(Dir::Open(child)) => {
                let digest = encode(child, out, seen);
                dir.directories.push(DirectoryNode {
                    name,
                    digest: Some(digest.to_proto()),
                });
            }
        }
    }
    let (digest, bytes) = encode_directory(&dir);
    if seen.insert(digest) {
        out.push(EncodedDirectory {
            digest,
            bytes,
            directory: dir,
        });
    }
    digest
}

pub(super) fn props_compatible(a: Option<&NodeProperties>, b: Option<&NodeProperties>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

pub(super) fn files_identical(a: &FileEntry, b: &FileEntry) -> bool {
    a.digest == b.digest
        && a.executable == b.executable
        && props_compatible(a.properties.as_ref(), b.properties.as_ref())
}

pub(super) fn symlinks_identical(a: &SymlinkEntry, b: &SymlinkEntry) -> bool {
    a.target == b.target && props_compatible(a.properties.as_ref(), b.properties.as_ref())
}

pub(super) fn describe_file(f: &FileEntry) -> String {
    let exec = if f.executable { "executable " } else { "" };
    let props = if f.properties.is_some() {
        " (with node properties)"
    } else {
        ""
    };
    format!("{exec}file {}{props}", f.digest)
}

pub(super) fn describe_symlink(s: &SymlinkEntry) -> String {
    let props = if s.properties.is_some() {
        " (with node properties)"
    } else {
        ""
    };
    format!("symlink to {:?}{props}", s.target)
}

pub(super) fn describe_dir(d: DirRef<'_>) -> String {
    match d {
        DirRef::Open(_) => "a directory".to_string(),
        DirRef::Stored(digest, _) => format!("directory {digest}"),
    }
}

pub(super) fn describe_node(n: &Node) -> String {
    match n {
        Node::File(f) => describe_file(f),
        Node::Symlink(s) => describe_symlink(s),
        Node::Dir(d) => describe_dir(d.view()),
    }
}

pub(super) fn describe_item(i: &Item<'_>) -> String {
    match i {
        Item::File(f) => describe_file(f),
        Item::Symlink(s) => describe_symlink(s),
        Item::Dir(d) => describe_dir(*d),
    }
}
pub(super) fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}/{name}")
    }
}

pub(super) fn conflict(path: &str, existing: String, new: String) -> ComposeError {
    ComposeError::Conflict {
        path: path.to_string(),
        existing,
        new,
    }
}
