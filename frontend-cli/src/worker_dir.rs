//! Where a local worker keeps its blob cache and action directories. As root, actions run as
//! per-slot sandbox users, who must be able to traverse the path to their action directory; a
//! farm home under a private directory (root's `~/.cache` under a 0700 `/root`) is not, so the
//! worker directory then moves to `/var/tmp/cargo-farm-<uid>/<hash of the home>/`.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

/// The directory of worker `name` of the farm home `home`.
pub fn worker_dir(home: &Path, name: &str) -> Result<PathBuf> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let wanted = home.join(name);
    if uid != 0 || traversable_by_others(home) {
        return Ok(wanted);
    }
    let base = PathBuf::from(format!("/var/tmp/cargo-farm-{uid}"));
    match std::fs::symlink_metadata(&base) {
        Ok(m) => {
            if !m.is_dir() || m.uid() != uid {
                bail!(
                    "{} exists but is not a directory owned by uid {uid}; remove it, or use a \
                     farm home every user can traverse (--farm-home)",
                    base.display()
                );
            }
        }
        Err(_) => {
            std::fs::create_dir_all(&base)
                .with_context(|| format!("creating {}", base.display()))?;
        }
    }
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("setting the mode of {}", base.display()))?;
    let canonical = std::fs::canonicalize(home).unwrap_or_else(|_| home.to_path_buf());
    let key = resolver::hash::short_hash(canonical.to_string_lossy().as_bytes());
    let dir = base.join(key);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("setting the mode of {}", dir.display()))?;
    Ok(dir.join(name))
}

/// Whether every directory from `/` down to `dir` lets other users through (`o+x`).
fn traversable_by_others(dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    dir.ancestors().all(|d| {
        std::fs::metadata(d)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_homes_are_not_traversable() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            traversable_by_others(&home),
            traversable_by_others(t.path())
        );
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!traversable_by_others(&home));
        let dir = worker_dir(&home, "worker-0").unwrap();
        if unsafe { libc::geteuid() } == 0 {
            assert!(dir.starts_with("/var/tmp"), "{}", dir.display());
        } else {
            assert_eq!(dir, home.join("worker-0"));
        }
    }
}
