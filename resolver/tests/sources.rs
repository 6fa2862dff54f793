//! `resolver::sources`: verified `.crate` archives (real ones made by `cargo package`, one from
//! the local registry cache, and hand-built malicious ones) and `cargo vendor` directories.
//! Lockfile parsing is in `sources_lockfile.rs`.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use cas::Digest;
use resolver::sources::{
    cached_crate_path, read_crate_archive, read_crate_archive_limited, read_vendored, Lockfile,
    SourceError,
};
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

const CRATES_IO: &str = "registry+https://github.com/rust-lang/crates.io-index";

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.env_remove("CARGO_TARGET_DIR");
    cmd
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(path: &Path, content: &[u8], mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A temporary directory under cargo's per-package test scratch space, kept for the whole run
/// (it backs a fixture shared by several tests). It lies inside this workspace's target
/// directory, so crates made there declare `[workspace]` to be workspaces of their own.
fn kept_tempdir() -> PathBuf {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
        .keep()
}

const LIB_RS: &[u8] = b"pub fn tiny() -> u32 { 42 }\n";

/// `tinycrate-0.1.0.crate`, made once by `cargo package` from a temporary crate with an
/// executable script and a nested directory.
fn packaged_crate() -> &'static Path {
    static CRATE: OnceLock<PathBuf> = OnceLock::new();
    CRATE.get_or_init(|| {
        let dir = kept_tempdir();
        write(
            &dir.join("Cargo.toml"),
            b"[package]\nname = \"tinycrate\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\
              description = \"test\"\nlicense = \"MIT\"\n\n[workspace]\n",
            0o644,
        );
        write(&dir.join("src/lib.rs"), LIB_RS, 0o644);
        write(&dir.join("run.sh"), b"#!/bin/sh\necho hi\n", 0o755);
        write(&dir.join("data/nested/file.txt"), b"nested\n", 0o644);
        run(cargo()
            .args(["package", "--no-verify", "--allow-dirty", "--offline"])
            .arg("--target-dir")
            .arg(dir.join("target"))
            .current_dir(&dir));
        let archive = dir.join("target/package/tinycrate-0.1.0.crate");
        assert!(
            archive.is_file(),
            "cargo package made no {}",
            archive.display()
        );
        archive
    })
}

#[test]
fn a_cargo_package_archive_reads_back() {
    let archive = packaged_crate();
    let sum = sha256_hex(&std::fs::read(archive).unwrap());
    let contents = read_crate_archive(archive, "tinycrate", "0.1.0", &sum).unwrap();
    let paths: Vec<&str> = contents.files.iter().map(|f| f.path.as_str()).collect();
    for want in [
        "Cargo.toml",
        "Cargo.toml.orig",
        "data/nested/file.txt",
        "run.sh",
        "src/lib.rs",
    ] {
        assert!(paths.contains(&want), "{want} missing from {paths:?}");
    }
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "files are sorted by path");
    let lib = contents
        .files
        .iter()
        .find(|f| f.path == "src/lib.rs")
        .unwrap();
    assert_eq!(&lib.data[..], LIB_RS);
    assert!(!lib.executable);
    let script = contents.files.iter().find(|f| f.path == "run.sh").unwrap();
    assert!(script.executable);
    assert!(contents.symlinks.is_empty());
    // Uppercase expected checksums are accepted too.
    read_crate_archive(archive, "tinycrate", "0.1.0", &sum.to_uppercase()).unwrap();
}

#[test]
fn a_tampered_archive_is_refused_before_use() {
    let archive = packaged_crate();
    let good = std::fs::read(archive).unwrap();
    let sum = sha256_hex(&good);
    let dir = tempfile::tempdir().unwrap();
    let tampered = dir.path().join("tinycrate-0.1.0.crate");
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    std::fs::write(&tampered, &bad).unwrap();

    // The flipped byte would also break the gzip stream: the checksum is what refuses it.
    let err = read_crate_archive(&tampered, "tinycrate", "0.1.0", &sum).unwrap_err();
    match &err {
        SourceError::ChecksumMismatch {
            package,
            path,
            expected,
            actual,
        } => {
            assert_eq!(package, "tinycrate 0.1.0");
            assert_eq!(path, &tampered);
            assert_eq!(expected, &sum);
            assert_eq!(actual, &sha256_hex(&bad));
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    let msg = err.to_string();
    for part in [
        "tinycrate 0.1.0",
        &sum,
        &sha256_hex(&bad),
        "tinycrate-0.1.0.crate",
    ] {
        assert!(msg.contains(part), "{msg:?} lacks {part:?}");
    }

    // The genuine archive with another expected checksum, and a malformed one.
    let other = sha256_hex(b"another crate");
    assert!(matches!(
        read_crate_archive(archive, "tinycrate", "0.1.0", &other),
        Err(SourceError::ChecksumMismatch { .. })
    ));
    assert!(matches!(
        read_crate_archive(archive, "tinycrate", "0.1.0", "abc"),
        Err(SourceError::BadChecksum { .. })
    ));
    let missing = dir.path().join("nope.crate");
    let err = read_crate_archive(&missing, "tinycrate", "0.1.0", &sum).unwrap_err();
    assert!(err.to_string().contains("nope.crate"), "{err}");
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"))
}

fn workspace_lockfile() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock")
}

/// The manifest of `name-version` as cargo extracted it in the local registry cache.
fn registry_manifest(name: &str, version: &str) -> PathBuf {
    let src = cargo_home().join("registry/src");
    for index in std::fs::read_dir(&src).unwrap() {
        let manifest = index
            .unwrap()
            .path()
            .join(format!("{name}-{version}/Cargo.toml"));
        if manifest.is_file() {
            return manifest;
        }
    }
    panic!(
        "{name}-{version} is not in {} (the workspace depends on it)",
        src.display()
    );
}

#[test]
fn a_crate_from_the_registry_cache_matches_its_extracted_sources() {
    let lock = Lockfile::read(&workspace_lockfile()).unwrap();
    let hex_pkg = lock.get("hex", "0.4.3", Some(CRATES_IO)).unwrap();
    let checksum = hex_pkg.checksum.as_deref().unwrap();
    let manifest = registry_manifest("hex", "0.4.3");
    let archive = cached_crate_path(&manifest).unwrap();
    assert!(archive.is_file(), "{} missing", archive.display());

    let contents = read_crate_archive(&archive, "hex", "0.4.3", checksum).unwrap();
    let extracted = manifest.parent().unwrap();
    let lib = contents
        .files
        .iter()
        .find(|f| f.path == "src/lib.rs")
        .unwrap();
    assert_eq!(
        &lib.data[..],
        &std::fs::read(extracted.join("src/lib.rs")).unwrap()[..]
    );
    for f in &contents.files {
        assert_eq!(
            &f.data[..],
            &std::fs::read(extracted.join(&f.path)).unwrap()[..],
            "{}",
            f.path
        );
    }
}

#[test]
fn cached_crate_paths() {
    let m = Path::new(
        "/home/u/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/hex-0.4.3/Cargo.toml",
    );
    assert_eq!(
        cached_crate_path(m).unwrap(),
        Path::new("/home/u/.cargo/registry/cache/index.crates.io-1949cf8c6b5b557f/hex-0.4.3.crate")
    );
    for not_registry in [
        "/work/main/cas/Cargo.toml",
        "/home/u/.cargo/registry/src/index/hex-0.4.3/src/lib.rs",
        "/home/u/.cargo/git/checkouts/repo-abc/1234/Cargo.toml",
        "/home/u/.cargo/registry/other/index/hex-0.4.3/Cargo.toml",
        "Cargo.toml",
    ] {
        assert_eq!(
            cached_crate_path(Path::new(not_registry)),
            None,
            "{not_registry}"
        );
    }
}

/// One raw tar entry; paths and link names are written into the header as given (the `tar`
/// crate's own builder refuses `..` and absolute paths, which is what these tests need).
struct Raw {
    path: &'static str,
    kind: EntryType,
    data: Vec<u8>,
    link: Option<&'static str>,
    mode: u32,
}

fn file(path: &'static str, data: &[u8]) -> Raw {
    Raw {
        path,
        kind: EntryType::Regular,
        data: data.to_vec(),
        link: None,
        mode: 0o644,
    }
}

fn special(path: &'static str, kind: EntryType, link: Option<&'static str>) -> Raw {
    Raw {
        path,
        kind,
        data: Vec::new(),
        link,
        mode: 0o644,
    }
}

fn tar_gz(entries: &[Raw]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for e in entries {
        let mut h = Header::new_gnu();
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(e.mode);
        let old = h.as_old_mut();
        old.name.fill(0);
        old.name[..e.path.len()].copy_from_slice(e.path.as_bytes());
        if let Some(link) = e.link {
            old.linkname.fill(0);
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_cksum();
        builder.append(&h, &e.data[..]).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// Writes `bytes` as `pkg-0.1.0.crate` and reads it with its own (correct) checksum, so only
/// the structural checks can refuse it.
fn read_raw(bytes: &[u8], limit: u64) -> Result<resolver::sources::CrateContents, SourceError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pkg-0.1.0.crate");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    read_crate_archive_limited(&path, "pkg", "0.1.0", &sha256_hex(bytes), limit)
}

#[test]
fn hand_built_archives_with_escaping_or_special_entries_are_refused() {
    let lib = || file("pkg-0.1.0/src/lib.rs", b"fn main() {}");
    let cases: Vec<(&str, Vec<Raw>, &str)> = vec![
        (
            "dotdot inside",
            vec![lib(), file("pkg-0.1.0/../x", b"x")],
            "'..'",
        ),
        ("dotdot first", vec![file("../x", b"x")], "'..'"),
        ("absolute", vec![file("/etc/passwd", b"x")], "absolute"),
        (
            "wrong top",
            vec![lib(), file("other-0.1.0/src/lib.rs", b"x")],
            "outside",
        ),
        ("no top", vec![file("lib.rs", b"x")], "outside"),
        (
            "file as top",
            vec![file("pkg-0.1.0", b"x")],
            "must be a directory",
        ),
        ("dot segment", vec![file("pkg-0.1.0/./x", b"x")], "'.'"),
        ("empty segment", vec![file("pkg-0.1.0//x", b"x")], "empty"),
        (
            "hard link",
            vec![
                lib(),
                special(
                    "pkg-0.1.0/hl",
                    EntryType::Link,
                    Some("pkg-0.1.0/src/lib.rs"),
                ),
            ],
            "hard link",
        ),
        (
            "device",
            vec![special("pkg-0.1.0/dev", EntryType::Char, None)],
            "device",
        ),
        (
            "fifo",
            vec![special("pkg-0.1.0/fifo", EntryType::Fifo, None)],
            "FIFO",
        ),
        (
            "escaping symlink",
            vec![special(
                "pkg-0.1.0/evil",
                EntryType::Symlink,
                Some("../../etc"),
            )],
            "leaves the package",
        ),
        (
            "absolute symlink",
            vec![special(
                "pkg-0.1.0/evil",
                EntryType::Symlink,
                Some("/etc/passwd"),
            )],
            "absolute",
        ),
        (
            "file through a symlink",
            vec![
                special("pkg-0.1.0/d", EntryType::Symlink, Some("src")),
                file("pkg-0.1.0/d/x", b"x"),
            ],
            "symlink and also a directory",
        ),
        (
            "symlink chain",
            vec![
                special("pkg-0.1.0/sub/up", EntryType::Symlink, Some("..")),
                special("pkg-0.1.0/x", EntryType::Symlink, Some("sub/up/..")),
            ],
            "through another symlink",
        ),
        ("duplicate", vec![lib(), lib()], "twice"),
        (
            "file under a file",
            vec![file("pkg-0.1.0/a", b"a"), file("pkg-0.1.0/a/b", b"b")],
            "file and also a directory",
        ),
    ];
    for (what, entries, reason_part) in cases {
        let err = read_raw(&tar_gz(&entries), 1 << 20).unwrap_err();
        match &err {
            SourceError::UnsafeEntry {
                package, reason, ..
            } => {
                assert_eq!(package, "pkg 0.1.0", "{what}");
                assert!(reason.contains(reason_part), "{what}: {err}");
            }
            other => panic!("{what}: expected an unsafe entry, got {other:?}"),
        }
        assert!(err.to_string().contains("pkg-0.1.0.crate"), "{what}: {err}");
    }
}

#[test]
fn a_hand_built_archive_with_a_safe_symlink_and_directories_is_accepted() {
    let mut tool = file("pkg-0.1.0/bin/tool", b"#!/bin/sh\n");
    tool.mode = 0o755;
    let entries = vec![
        special("pkg-0.1.0/", EntryType::Directory, None),
        special("pkg-0.1.0/src/", EntryType::Directory, None),
        file("pkg-0.1.0/src/lib.rs", b"pub fn f() {}"),
        tool,
        special("pkg-0.1.0/src/alias.rs", EntryType::Symlink, Some("lib.rs")),
        special("pkg-0.1.0/up", EntryType::Symlink, Some("src/../bin/tool")),
        file("pkg-0.1.0/Cargo.toml", b"[package]"),
    ];
    let contents = read_raw(&tar_gz(&entries), 1 << 20).unwrap();
    let paths: Vec<&str> = contents.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["Cargo.toml", "bin/tool", "src/lib.rs"]);
    assert!(contents.files[1].executable);
    assert!(!contents.files[2].executable);
    let links: Vec<(&str, &str)> = contents
        .symlinks
        .iter()
        .map(|s| (s.path.as_str(), s.target.as_str()))
        .collect();
    assert_eq!(
        links,
        [("src/alias.rs", "lib.rs"), ("up", "src/../bin/tool")]
    );
}

#[test]
fn archives_over_the_size_cap_and_garbage_are_refused() {
    // Compresses to almost nothing: the cap is on the uncompressed size.
    let big = tar_gz(&[file("pkg-0.1.0/big.bin", &vec![0u8; 1 << 20])]);
    assert!(big.len() < 16 << 10);
    assert_eq!(
        read_raw(&big, 2 << 20).unwrap().files[0].data.len(),
        1 << 20
    );
    match read_raw(&big, 512 << 10) {
        Err(SourceError::ArchiveTooLarge { limit, package, .. }) => {
            assert_eq!(limit, 512 << 10);
            assert_eq!(package, "pkg 0.1.0");
        }
        other => panic!("expected too large, got {other:?}"),
    }
    // A compressed file over the cap is refused before it is read whole.
    assert!(matches!(
        read_raw(&big, 1024),
        Err(SourceError::ArchiveTooLarge { .. })
    ));
    // Right checksum, but not gzip.
    assert!(matches!(
        read_raw(b"this is not a gzipped tarball", 1 << 20),
        Err(SourceError::CorruptArchive { .. })
    ));
}

/// A `cargo vendor` directory of `hex 0.4.3` (from the local registry cache, offline), made
/// once, with the checksum Cargo.lock gives it.
fn vendored_hex() -> &'static (PathBuf, String) {
    static VENDORED: OnceLock<(PathBuf, String)> = OnceLock::new();
    VENDORED.get_or_init(|| {
        let dir = kept_tempdir();
        write(
            &dir.join("Cargo.toml"),
            b"[package]\nname = \"vendortest\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
              [dependencies]\nhex = \"=0.4.3\"\n\n[workspace]\n",
            0o644,
        );
        write(&dir.join("src/lib.rs"), b"", 0o644);
        run(cargo()
            .args(["generate-lockfile", "--offline"])
            .current_dir(&dir));
        run(cargo()
            .args(["vendor", "--offline", "--locked", "vendor"])
            .current_dir(&dir));
        let lock = Lockfile::read(&dir.join("Cargo.lock")).unwrap();
        let checksum = lock
            .get("hex", "0.4.3", Some(CRATES_IO))
            .and_then(|p| p.checksum.clone())
            .unwrap();
        let vendored = ["vendor/hex", "vendor/hex-0.4.3"]
            .iter()
            .map(|d| dir.join(d))
            .find(|d| d.is_dir())
            .unwrap();
        (vendored, checksum)
    })
}

/// A copy of the vendored package to tamper with.
fn copy_of_vendored() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let dest = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &dest);
            } else {
                std::fs::copy(entry.path(), dest).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&vendored_hex().0, dir.path());
    dir
}

#[test]
fn a_cargo_vendor_directory_verifies() {
    let (dir, checksum) = vendored_hex();
    let files = read_vendored(dir, Some(checksum)).unwrap();
    let listing: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(".cargo-checksum.json")).unwrap()).unwrap();
    let listed = listing["files"].as_object().unwrap();
    assert_eq!(files.len(), listed.len());
    assert!(files.iter().all(|f| f.path != ".cargo-checksum.json"));
    let lib = files.iter().find(|f| f.path == "src/lib.rs").unwrap();
    let content = std::fs::read(dir.join("src/lib.rs")).unwrap();
    assert_eq!(lib.digest, Digest::of(&content));
    assert_eq!(lib.local_path, dir.join("src/lib.rs"));
    assert!(files.iter().any(|f| f.path == "Cargo.toml"));
    // A git package has no checksum in Cargo.lock: only the files are checked.
    assert_eq!(read_vendored(dir, None).unwrap(), files);
}

#[test]
fn a_tampered_vendor_directory_is_refused() {
    let (_, checksum) = vendored_hex();

    let edited = copy_of_vendored();
    std::fs::write(edited.path().join("src/lib.rs"), b"// evil").unwrap();
    match read_vendored(edited.path(), Some(checksum)) {
        Err(SourceError::VendorFileMismatch { file, actual, .. }) => {
            assert_eq!(file, "src/lib.rs");
            assert_eq!(actual, sha256_hex(b"// evil"));
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }

    let extra = copy_of_vendored();
    std::fs::write(extra.path().join("src/extra.rs"), b"").unwrap();
    match read_vendored(extra.path(), Some(checksum)) {
        Err(SourceError::VendorFileUnlisted { file, .. }) => assert_eq!(file, "src/extra.rs"),
        other => panic!("expected an unlisted file, got {other:?}"),
    }

    let removed = copy_of_vendored();
    std::fs::remove_file(removed.path().join("src/lib.rs")).unwrap();
    match read_vendored(removed.path(), Some(checksum)) {
        Err(SourceError::VendorFileMissing { file, .. }) => assert_eq!(file, "src/lib.rs"),
        other => panic!("expected a missing file, got {other:?}"),
    }

    let pristine = copy_of_vendored();
    let wrong = sha256_hex(b"another package");
    let err = read_vendored(pristine.path(), Some(&wrong)).unwrap_err();
    assert!(
        matches!(&err, SourceError::VendorPackageMismatch { expected, actual, .. }
            if *expected == wrong && actual == checksum),
        "{err:?}"
    );
    assert!(err.to_string().contains(&wrong), "{err}");

    let linked = copy_of_vendored();
    std::os::unix::fs::symlink("/etc/passwd", linked.path().join("src/link.rs")).unwrap();
    assert!(matches!(
        read_vendored(linked.path(), Some(checksum)),
        Err(SourceError::VendorUnsafePath { .. })
    ));
}

#[test]
fn a_checksum_file_listing_paths_outside_the_package_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let outside = sha256_hex(b"secret");
    std::fs::write(
        dir.path().join(".cargo-checksum.json"),
        format!(r#"{{"files": {{"../secret": "{outside}"}}, "package": null}}"#),
    )
    .unwrap();
    match read_vendored(dir.path(), None) {
        Err(SourceError::VendorUnsafePath { file, .. }) => assert_eq!(file, "../secret"),
        other => panic!("expected an unsafe path, got {other:?}"),
    }
    std::fs::write(dir.path().join(".cargo-checksum.json"), b"{not json").unwrap();
    let err = read_vendored(dir.path(), None).unwrap_err();
    assert!(
        matches!(err, SourceError::VendorChecksumFile { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(".cargo-checksum.json"), "{err}");
    // A package checksum required but absent.
    std::fs::write(
        dir.path().join(".cargo-checksum.json"),
        br#"{"files": {}, "package": null}"#,
    )
    .unwrap();
    assert!(matches!(
        read_vendored(dir.path(), Some(&outside)),
        Err(SourceError::VendorPackageMismatch { actual, .. }) if actual == "none"
    ));
    std::fs::remove_file(dir.path().join(".cargo-checksum.json")).unwrap();
    assert!(matches!(
        read_vendored(dir.path(), None),
        Err(SourceError::Io { .. })
    ));
}
