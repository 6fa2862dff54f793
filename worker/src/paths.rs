//! Paths inside an action's input root, and resolving them without ever leaving it.
//!
//! The worker runs as a more privileged user than the action, so it must never follow a path
//! the action controls out of the input root. Every path here is a list of single components
//! relative to the root; [`resolve`] walks one on disk the way the kernel would (following
//! symlinks, `..` popping a level), but refuses with [`Escape`] as soon as an absolute symlink
//! or a `..` would leave the root.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// A path relative to the input root, as single components (no `.`, `..` or empty ones).
pub type RootPath = Vec<String>;

/// Lexically checks and normalizes a relative REAPI path (`/`-separated, no leading or
/// trailing slash, no empty component): `.` is dropped, `..` pops a component of `base`+path
/// and may not climb above the root.
pub fn normalize(base: &[String], path: &str) -> Result<RootPath, String> {
    let mut out: RootPath = base.to_vec();
    if path.is_empty() {
        return Ok(out);
    }
    if path.starts_with('/') {
        return Err(format!("path {path:?} is absolute; it must be relative"));
    }
    if path.ends_with('/') {
        return Err(format!("path {path:?} ends with '/'"));
    }
    for c in path.split('/') {
        match c {
            "" => return Err(format!("path {path:?} has an empty component")),
            "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(format!("path {path:?} leaves the input root through '..'"));
                }
            }
            c if c.contains('\0') => return Err(format!("path {path:?} contains NUL")),
            c => out.push(c.to_string()),
        }
    }
    Ok(out)
}

/// `root` joined with `path`.
pub fn join(root: &Path, path: &[String]) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(path);
    p
}

/// Shows a root path as REAPI does (`a/b`; `.` for the root).
pub fn show(path: &[String]) -> String {
    if path.is_empty() {
        ".".to_string()
    } else {
        path.join("/")
    }
}

/// A path that would leave the input root: through the symlink at `via` (or a `..` there).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} leaves the input root{}", show(.path), via_text(.via))]
pub struct Escape {
    /// The path being resolved.
    pub path: RootPath,
    /// The symlink that led out, when one did.
    pub via: Option<RootPath>,
}

fn via_text(via: &Option<RootPath>) -> String {
    match via {
        Some(v) => format!(" through the symlink {}", show(v)),
        None => String::new(),
    }
}

/// Where [`resolve`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The path, with every symlink that was followed replaced by its target. The last
    /// component may not exist (and is a symlink if `follow_last` was false).
    At(RootPath),
    /// A parent component does not exist, is not a directory, or loops.
    Missing,
}

/// How many symlinks one resolution may follow (as the kernel's `ELOOP` limit).
const MAX_HOPS: u32 = 40;

/// Resolves `path` (components relative to `root`, `..` allowed) inside `root`, following
/// symlinks in every component but the last (and the last too if `follow_last`).
pub fn resolve(root: &Path, path: &[String], follow_last: bool) -> Result<Resolved, Escape> {
    let mut hops = 0;
    let components: Vec<&str> = path.iter().map(String::as_str).collect();
    walk(root, Vec::new(), &components, follow_last, &mut hops).map_err(|via| Escape {
        path: path.to_vec(),
        via,
    })
}

/// Whether the symlink target `target`, found in directory `dir` of the root, points outside
/// the root (absolute targets always do).
pub fn symlink_escapes(root: &Path, dir: &[String], target: &str) -> bool {
    if target.starts_with('/') {
        return true;
    }
    let mut hops = 0;
    let components: Vec<&str> = target.split('/').collect();
    walk(root, dir.to_vec(), &components, true, &mut hops).is_err()
}

/// The walk behind [`resolve`]; `Err` carries the symlink that led out (`None` for a `..`
/// of the path itself).
fn walk(
    root: &Path,
    mut stack: RootPath,
    components: &[&str],
    follow_last: bool,
    hops: &mut u32,
) -> Result<Resolved, Option<RootPath>> {
    for (i, c) in components.iter().enumerate() {
        let last = i + 1 == components.len();
        match *c {
            "" | "." => continue,
            ".." => {
                if stack.pop().is_none() {
                    return Err(None);
                }
                continue;
            }
            _ => {}
        }
        stack.push(c.to_string());
        let here = join(root, &stack);
        let meta = match std::fs::symlink_metadata(&here) {
            Ok(m) => m,
            Err(e) if last && e.kind() == ErrorKind::NotFound => return Ok(Resolved::At(stack)),
            Err(_) => return Ok(Resolved::Missing),
        };
        if !meta.file_type().is_symlink() || (last && !follow_last) {
            if !last && !meta.is_dir() {
                return Ok(Resolved::Missing);
            }
            continue;
        }
        *hops += 1;
        if *hops > MAX_HOPS {
            return Ok(Resolved::Missing);
        }
        let link = stack.clone();
        let Ok(target) = std::fs::read_link(&here) else {
            return Ok(Resolved::Missing);
        };
        let target = target.to_string_lossy().into_owned();
        if target.starts_with('/') {
            return Err(Some(link));
        }
        stack.pop();
        let parts: Vec<&str> = target.split('/').collect();
        match walk(root, stack, &parts, true, hops) {
            Ok(Resolved::At(s)) => stack = s,
            Ok(Resolved::Missing) => return Ok(Resolved::Missing),
            Err(via) => return Err(via.or(Some(link))),
        }
        if !last && !join(root, &stack).is_dir() {
            return Ok(Resolved::Missing);
        }
    }
    Ok(Resolved::At(stack))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn v(s: &[&str]) -> RootPath {
        s.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn normalize_refuses_escapes_and_malformed_paths() {
        assert_eq!(normalize(&v(&["w"]), "a/./b").unwrap(), v(&["w", "a", "b"]));
        assert_eq!(normalize(&v(&["w"]), "../x").unwrap(), v(&["x"]));
        assert_eq!(normalize(&v(&["w"]), "").unwrap(), v(&["w"]));
        assert!(normalize(&v(&["w"]), "../../x").is_err());
        assert!(normalize(&[], "/etc/passwd").is_err());
        assert!(normalize(&[], "a//b").is_err());
        assert!(normalize(&[], "a/").is_err());
    }

    #[test]
    fn resolve_follows_inner_symlinks_and_refuses_escaping_ones() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("real/sub")).unwrap();
        symlink("real", root.join("alias")).unwrap();
        symlink("..", root.join("real/up")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../..", root.join("real/out")).unwrap();
        std::fs::write(root.join("file"), b"x").unwrap();

        assert_eq!(
            resolve(root, &v(&["alias", "sub", "x"]), false).unwrap(),
            Resolved::At(v(&["real", "sub", "x"]))
        );
        // `real/up` is the root, so `real/up/..` is above it, although it looks inside.
        assert!(resolve(root, &v(&["real", "up", "..", "x"]), false).is_err());
        assert_eq!(
            resolve(root, &v(&["real", "up", "file"]), false).unwrap(),
            Resolved::At(v(&["file"]))
        );
        let e = resolve(root, &v(&["abs", "passwd"]), false).unwrap_err();
        assert_eq!(e.via, Some(v(&["abs"])));
        assert!(resolve(root, &v(&["real", "out", "x"]), false).is_err());
        // The last component is not followed unless asked.
        assert_eq!(
            resolve(root, &v(&["abs"]), false).unwrap(),
            Resolved::At(v(&["abs"]))
        );
        assert!(resolve(root, &v(&["abs"]), true).is_err());
        assert_eq!(
            resolve(root, &v(&["file", "x"]), false).unwrap(),
            Resolved::Missing
        );
        assert_eq!(
            resolve(root, &v(&["nope", "x"]), false).unwrap(),
            Resolved::Missing
        );

        assert!(symlink_escapes(root, &[], "/usr"));
        assert!(symlink_escapes(root, &v(&["real"]), "../.."));
        assert!(symlink_escapes(root, &[], "real/up/.."));
        assert!(!symlink_escapes(root, &v(&["real"]), "../file"));
        assert!(!symlink_escapes(root, &[], "dangling/../x"));
    }
}
