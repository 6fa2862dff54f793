//! The files of a local (path) package that its actions see: everything under its manifest
//! directory except version-control metadata, the build's target directory, any other cache
//! directory (one holding a `CACHEDIR.TAG`, as every cargo target directory does) and nested
//! packages (directories with their own `Cargo.toml`, which are packages of their own). Symlinks are
//! followed, so a `README.md -> ../README.md` brings the file it points to.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::ResolveError;

/// One file of a package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageFile {
    /// Relative to the package directory, `/`-separated.
    pub rel: String,
    /// Where it is on this machine.
    pub local: PathBuf,
    pub executable: bool,
}

/// Directories never part of a package's inputs.
const SKIPPED_DIRS: &[&str] = &[".git", ".hg", ".svn", ".jj"];

/// Lists the files of the package in `dir`, sorted by relative path. `exclude` are absolute
/// directories to leave out (the target directory).
pub fn package_files(dir: &Path, exclude: &[PathBuf]) -> Result<Vec<PackageFile>, ResolveError> {
    let mut out = Vec::new();
    let mut visited = HashSet::new();
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let exclude: Vec<PathBuf> = exclude.iter().map(|p| canon(p)).collect();
    walk(dir, "", true, &exclude, &mut visited, &mut out)?;
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

fn walk(
    dir: &Path,
    prefix: &str,
    is_root: bool,
    exclude: &[PathBuf],
    visited: &mut HashSet<PathBuf>,
    out: &mut Vec<PackageFile>,
) -> Result<(), ResolveError> {
    let real = std::fs::canonicalize(dir).map_err(ResolveError::io(dir))?;
    if exclude.contains(&real) || !visited.insert(real) {
        return Ok(());
    }
    if !is_root && dir.join("Cargo.toml").is_file() {
        return Ok(());
    }
    // Cargo marks every target directory (whatever CARGO_TARGET_DIR named it) with a
    // CACHEDIR.TAG, as other caches do: build output is never a source.
    if dir.join("CACHEDIR.TAG").is_file() {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(ResolveError::io(dir))?;
    for entry in entries {
        let entry = entry.map_err(ResolveError::io(dir))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(ResolveError::Unsupported(format!(
                "{} has a name that is not UTF-8",
                path.display()
            )));
        };
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        // Follow symlinks; a dangling one is skipped (cargo would fail on it only if used).
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ResolveError::Io { path, source: e }),
        };
        if meta.is_dir() {
            if SKIPPED_DIRS.contains(&name.as_str()) {
                continue;
            }
            walk(&path, &rel, false, exclude, visited, out)?;
        } else if meta.is_file() {
            use std::os::unix::fs::PermissionsExt as _;
            out.push(PackageFile {
                rel,
                local: path,
                executable: meta.permissions().mode() & 0o111 != 0,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_target_git_and_nested_packages() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        for (p, body) in [
            ("Cargo.toml", "[package]"),
            ("src/lib.rs", ""),
            ("target/debug/x", ""),
            (".git/HEAD", ""),
            ("nested/Cargo.toml", ""),
            ("nested/src/lib.rs", ""),
            ("data/a.txt", "a"),
            (
                "other-target/CACHEDIR.TAG",
                "Signature: 8a477f597d28d172789f06886806bc55",
            ),
            ("other-target/debug/y", ""),
        ] {
            let f = root.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, body).unwrap();
        }
        std::os::unix::fs::symlink(root.join("data/a.txt"), root.join("link.txt")).unwrap();
        let files = package_files(root, &[root.join("target")]).unwrap();
        let rels: Vec<&str> = files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(rels, ["Cargo.toml", "data/a.txt", "link.txt", "src/lib.rs"]);
    }
}
