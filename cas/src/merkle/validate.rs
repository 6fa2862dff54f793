//! Canonical-form checks for `Directory` messages, and the symlink-escape check.

use std::collections::{HashMap, HashSet};

use bazel_remote_apis::build::bazel::remote::execution::v2::{Directory, NodeProperties};

use crate::digest::Digest;

/// Refuses names REAPI does not allow: empty, `.`, `..`, or containing `/` (or NUL, which no
/// filesystem can store).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".to_string());
    }
    if name == "." || name == ".." {
        return Err(format!("name {name:?} is not allowed"));
    }
    if name.contains('/') {
        return Err(format!("name {name:?} contains '/'"));
    }
    if name.contains('\0') {
        return Err(format!("name {name:?} contains NUL"));
    }
    Ok(())
}

/// Checks that `dir` is in REAPI canonical form: every name valid, files, directories and
/// symlinks each strictly sorted by name (UTF-8 byte order), names unique across all three
/// lists, digests present and well formed, symlink targets non-empty, node properties sorted.
/// Returns the first violation found.
pub fn validate_directory(dir: &Directory) -> Result<(), String> {
    let names = dir.files.iter().map(|n| n.name.as_str());
    check_sorted("file", names)?;
    check_sorted("directory", dir.directories.iter().map(|n| n.name.as_str()))?;
    check_sorted("symlink", dir.symlinks.iter().map(|n| n.name.as_str()))?;

    let total = dir.files.len() + dir.directories.len() + dir.symlinks.len();
    let mut all = HashSet::with_capacity(total);
    for f in &dir.files {
        Digest::from_proto(f.digest.as_ref())
            .map_err(|e| format!("file {:?} has an invalid digest: {e}", f.name))?;
        check_properties(&f.name, f.node_properties.as_ref())?;
        all.insert(f.name.as_str());
    }
    for d in &dir.directories {
        Digest::from_proto(d.digest.as_ref())
            .map_err(|e| format!("subdirectory {:?} has an invalid digest: {e}", d.name))?;
        if !all.insert(d.name.as_str()) {
            return Err(format!("name {:?} is used by more than one entry", d.name));
        }
    }
    for s in &dir.symlinks {
        if s.target.is_empty() {
            return Err(format!("symlink {:?} has an empty target", s.name));
        }
        if s.target.contains('\0') {
            return Err(format!("symlink {:?} has a target containing NUL", s.name));
        }
        check_properties(&s.name, s.node_properties.as_ref())?;
        if !all.insert(s.name.as_str()) {
            return Err(format!("name {:?} is used by more than one entry", s.name));
        }
    }
    check_properties(".", dir.node_properties.as_ref())
}

fn check_sorted<'a>(what: &str, names: impl Iterator<Item = &'a str>) -> Result<(), String> {
    let mut prev: Option<&str> = None;
    for name in names {
        validate_name(name).map_err(|e| format!("{what} entry: {e}"))?;
        if let Some(p) = prev {
            // `str` orders by bytes, which for UTF-8 is code-point order, as the spec requires.
            if p == name {
                return Err(format!("{what} name {name:?} appears twice"));
            }
            if p > name {
                return Err(format!(
                    "{what} names are not sorted: {p:?} before {name:?}"
                ));
            }
        }
        prev = Some(name);
    }
    Ok(())
}

fn check_properties(owner: &str, props: Option<&NodeProperties>) -> Result<(), String> {
    let Some(props) = props else { return Ok(()) };
    // The same property name may repeat if the server allows it, so the order is not strict.
    if props.properties.windows(2).any(|w| w[0].name > w[1].name) {
        return Err(format!(
            "node properties of {owner:?} are not sorted by name"
        ));
    }
    Ok(())
}

/// How many symlinks a target may pass through before we give up resolving it (as the OS does
/// with `ELOOP`; such a link cannot resolve, so it cannot escape either).
const MAX_SYMLINK_HOPS: u32 = 40;

/// Where resolving a symlink target inside the tree ended.
enum Resolved<'a> {
    /// Inside the tree; the stack of directories from the root (`None` for a component that is
    /// a file or does not exist, resolved lexically from then on).
    Inside(Vec<Option<&'a Directory>>),
    Escapes,
    Unresolvable,
}

/// Whether the symlink target `target`, placed in the directory reached from the root through
/// `parents` (root first, the symlink's own directory last), points outside the tree.
///
/// Unlike a lexical check, this follows the tree's own symlinks the way the kernel would: with
/// `sub/up -> ..`, the target `sub/up/..` leaves the tree although it looks like it stays.
pub(crate) fn symlink_escapes(
    dirs: &HashMap<Digest, &Directory>,
    parents: &[&Directory],
    target: &str,
) -> bool {
    let stack = parents.iter().map(|d| Some(*d)).collect();
    let mut hops = 0;
    matches!(resolve(dirs, stack, target, &mut hops), Resolved::Escapes)
}

fn resolve<'a>(
    dirs: &HashMap<Digest, &'a Directory>,
    mut stack: Vec<Option<&'a Directory>>,
    target: &str,
    hops: &mut u32,
) -> Resolved<'a> {
    if target.starts_with('/') {
        return Resolved::Escapes;
    }
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                if stack.len() <= 1 {
                    return Resolved::Escapes;
                }
                stack.pop();
            }
            name => {
                let Some(Some(dir)) = stack.last() else {
                    stack.push(None);
                    continue;
                };
                if let Ok(i) = dir
                    .directories
                    .binary_search_by(|n| n.name.as_str().cmp(name))
                {
                    let child = Digest::from_proto(dir.directories[i].digest.as_ref()).ok();
                    stack.push(child.and_then(|c| dirs.get(&c).copied()));
                } else if let Ok(i) = dir.symlinks.binary_search_by(|n| n.name.as_str().cmp(name)) {
                    *hops += 1;
                    if *hops > MAX_SYMLINK_HOPS {
                        return Resolved::Unresolvable;
                    }
                    let link_target = dir.symlinks[i].target.as_str();
                    match resolve(dirs, stack.clone(), link_target, hops) {
                        Resolved::Inside(s) => stack = s,
                        other => return other,
                    }
                } else {
                    stack.push(None);
                }
            }
        }
    }
    Resolved::Inside(stack)
}
