//! `resolver::sources::Lockfile`: the workspace's real Cargo.lock and small inline lockfiles of
//! every version, plus the refusals of missing, garbled and inconsistent ones.

use std::path::{Path, PathBuf};

use resolver::sources::{Lockfile, SourceError};

const CRATES_IO: &str = "registry+https://github.com/rust-lang/crates.io-index";

fn workspace_lockfile() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock")
}

#[test]
fn the_workspace_lockfile_parses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Cargo.lock");
    std::fs::copy(workspace_lockfile(), &path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lock = Lockfile::read(&path).unwrap();

    let declared: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(lock.version, declared);
    assert_eq!(lock.packages().len(), text.matches("[[package]]").count());
    let hex_pkg = lock.get("hex", "0.4.3", Some(CRATES_IO)).unwrap();
    assert!(hex_pkg.is_registry());
    assert_eq!(
        hex_pkg.checksum.as_deref(),
        Some("7f24254aa9a54b5c858eaee2f5bccdb46aaf0e486a595ed5fd8f86ba55232a70")
    );
    let cas_pkg = lock.get("cas", "0.1.0", None).unwrap();
    assert_eq!(
        (cas_pkg.source.as_deref(), cas_pkg.checksum.as_deref()),
        (None, None)
    );
    assert!(!cas_pkg.is_registry());
    assert!(cas_pkg.dependencies.iter().any(|d| d == "hex"));
    assert!(
        lock.get("hex", "0.4.3", None).is_none(),
        "the source is part of the key"
    );
    assert_eq!(lock.find("hex", "0.4.3").count(), 1);
    // Every registry package has a checksum.
    assert!(lock
        .packages()
        .iter()
        .filter(|p| p.is_registry())
        .all(|p| p.checksum.is_some()));
}

const V1_LOCK: &str = r#"
[[package]]
name = "app"
version = "0.1.0"
dependencies = [
 "dep 1.2.3 (registry+https://github.com/rust-lang/crates.io-index)",
]

[[package]]
name = "dep"
version = "1.2.3"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "nosum"
version = "0.0.1"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "gitdep"
version = "0.3.0"
source = "git+https://example.com/gitdep#0123456789abcdef"

[metadata]
"checksum dep 1.2.3 (registry+https://github.com/rust-lang/crates.io-index)" = "1111111111111111111111111111111111111111111111111111111111111111"
"checksum nosum 0.0.1 (registry+https://github.com/rust-lang/crates.io-index)" = "<none>"
"#;

#[test]
fn a_version_1_lockfile_takes_checksums_from_metadata() {
    let lock = Lockfile::parse(V1_LOCK, Path::new("/x/Cargo.lock")).unwrap();
    assert_eq!(lock.version, 1);
    assert_eq!(lock.packages().len(), 4);
    let dep = lock.get("dep", "1.2.3", Some(CRATES_IO)).unwrap();
    assert_eq!(dep.checksum.as_deref(), Some(&"1".repeat(64)[..]));
    assert_eq!(
        lock.get("nosum", "0.0.1", Some(CRATES_IO))
            .unwrap()
            .checksum,
        None
    );
    let git = lock
        .get(
            "gitdep",
            "0.3.0",
            Some("git+https://example.com/gitdep#0123456789abcdef"),
        )
        .unwrap();
    assert_eq!(git.checksum, None);
    assert!(!git.is_registry());
    assert_eq!(
        lock.get("app", "0.1.0", None).unwrap().dependencies,
        ["dep 1.2.3 (registry+https://github.com/rust-lang/crates.io-index)"]
    );

    // An old-style [root] table is a package too.
    let with_root = V1_LOCK.replacen("[[package]]\nname = \"app\"", "[root]\nname = \"app\"", 1);
    let lock = Lockfile::parse(&with_root, Path::new("/x/Cargo.lock")).unwrap();
    assert_eq!(lock.version, 1);
    assert!(lock.get("app", "0.1.0", None).is_some());
}

#[test]
fn version_2_and_3_lockfiles() {
    let sum = "2".repeat(64);
    let body = format!(
        "[[package]]\nname = \"dep\"\nversion = \"1.0.0\"\nsource = \"{CRATES_IO}\"\nchecksum = \"{sum}\"\n"
    );
    let v2 = Lockfile::parse(&body, Path::new("Cargo.lock")).unwrap();
    assert_eq!(v2.version, 2);
    let v3 = Lockfile::parse(&format!("version = 3\n\n{body}"), Path::new("Cargo.lock")).unwrap();
    assert_eq!(v3.version, 3);
    for lock in [v2, v3] {
        let dep = lock.get("dep", "1.0.0", Some(CRATES_IO)).unwrap();
        assert_eq!(dep.checksum.as_deref(), Some(sum.as_str()));
    }
}

#[test]
fn missing_garbled_and_inconsistent_lockfiles_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("Cargo.lock");
    let err = Lockfile::read(&missing).unwrap_err();
    assert!(matches!(err, SourceError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );

    let path = Path::new("/ws/Cargo.lock");
    let refused = |text: &str| {
        let err = Lockfile::parse(text, path).unwrap_err();
        assert!(err.to_string().contains("/ws/Cargo.lock"), "{err}");
        err
    };
    assert!(matches!(
        refused("this is [not toml"),
        SourceError::Lockfile { .. }
    ));
    assert!(matches!(
        refused("[[package]]\nname = \"x\"\n"),
        SourceError::Lockfile { .. }
    ));
    assert!(matches!(
        refused("version = 9\n"),
        SourceError::LockfileVersion { version: 9, .. }
    ));
    let pkg =
        format!("[[package]]\nname = \"dep\"\nversion = \"1.0.0\"\nsource = \"{CRATES_IO}\"\n");
    let err = refused(&format!("{pkg}checksum = \"XYZ\"\n"));
    assert!(err.to_string().contains("dep 1.0.0"), "{err}");
    let err = refused(&format!("{pkg}\n{pkg}"));
    assert!(err.to_string().contains("twice"), "{err}");
    let err = refused(&format!(
        "{pkg}checksum = \"{}\"\n[metadata]\n\"checksum dep 1.0.0 ({CRATES_IO})\" = \"{}\"\n",
        "a".repeat(64),
        "b".repeat(64)
    ));
    assert!(err.to_string().contains("[metadata]"), "{err}");
    let err = refused(&format!("{pkg}[metadata]\n\"checksum garbled\" = \"x\"\n"));
    assert!(err.to_string().contains("checksum garbled"), "{err}");
    let err = refused(&format!(
        "{pkg}[metadata]\n\"checksum ghost 1.0.0 ({CRATES_IO})\" = \"{}\"\n",
        "c".repeat(64)
    ));
    assert!(err.to_string().contains("ghost"), "{err}");
}
