//! REAPI Merkle trees: build, upload, fetch and materialize, against the memory store and a
//! small streaming disk store.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bazel_remote_apis::build::bazel::remote::execution::v2::{
    Directory, DirectoryNode, FileNode, SymlinkNode,
};
use bytes::Bytes;
use cas::merkle::{self, MaterializeOptions, MerkleError};
use cas::store::memory::MemoryStore;
use cas::{BlobStore, ByteRange, ChunkStream, Digest, StoreError};
use common::peak_rss_bytes;
use futures::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

fn write(path: &Path, content: &[u8], mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn symlink(target: &str, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, path).unwrap();
}

/// A folder with nested and identical subtrees, an executable, an empty file, symlinks (one
/// dangling), an empty directory, shared content and names whose byte order differs from a
/// naive case-insensitive or Unicode-aware sort.
fn fixture(root: &Path, reversed: bool) {
    let mut steps: Vec<Box<dyn Fn()>> = vec![
        Box::new(|| write(&root.join("bin/tool"), b"#!/bin/sh\necho hi\n", 0o755)),
        Box::new(|| write(&root.join("bin/user_exec_only"), b"u", 0o744)),
        Box::new(|| write(&root.join("bin/others_exec_only"), b"o", 0o611)),
        Box::new(|| write(&root.join("empty"), b"", 0o644)),
        Box::new(|| write(&root.join("a/b/c/deep.txt"), b"deep", 0o644)),
        Box::new(|| write(&root.join("a/b/c2/deep.txt"), b"deep", 0o644)),
        Box::new(|| write(&root.join("a/shared1.txt"), b"same content", 0o644)),
        Box::new(|| write(&root.join("z/shared2.txt"), b"same content", 0o600)),
        Box::new(|| write(&root.join("B.txt"), b"upper", 0o644)),
        Box::new(|| write(&root.join("a.txt"), b"lower", 0o644)),
        Box::new(|| write(&root.join("\u{e4}.txt"), b"umlaut", 0o644)),
        Box::new(|| symlink("a/b/c/deep.txt", &root.join("link_to_deep"))),
        Box::new(|| symlink("does/not/exist", &root.join("z/dangling"))),
        Box::new(|| std::fs::create_dir_all(root.join("emptydir")).unwrap()),
    ];
    if reversed {
        steps.reverse();
    }
    for step in steps {
        step();
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir,
    File { content: Vec<u8>, mode: u32 },
    Symlink(PathBuf),
}

/// Every entry under `root`, with file contents and permission bits, without following links.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            let entry = if meta.is_dir() {
                stack.push(e.path());
                Entry::Dir
            } else if meta.file_type().is_symlink() {
                Entry::Symlink(std::fs::read_link(e.path()).unwrap())
            } else {
                Entry::File {
                    content: std::fs::read(e.path()).unwrap(),
                    mode: meta.permissions().mode() & 0o777,
                }
            };
            out.insert(rel, entry);
        }
    }
    out
}

fn memory() -> MemoryStore {
    MemoryStore::new(1 << 30)
}

fn file_node(name: &str, content: &[u8], exec: bool) -> FileNode {
    FileNode {
        name: name.into(),
        digest: Some(Digest::of(content).to_proto()),
        is_executable: exec,
        node_properties: None,
    }
}

fn dir_node(name: &str, digest: Digest) -> DirectoryNode {
    DirectoryNode {
        name: name.into(),
        digest: Some(digest.to_proto()),
    }
}

fn link_node(name: &str, target: &str) -> SymlinkNode {
    SymlinkNode {
        name: name.into(),
        target: target.into(),
        node_properties: None,
    }
}

async fn put_dir(store: &dyn BlobStore, dir: &Directory) -> Digest {
    let (digest, bytes) = merkle::encode_directory(dir);
    store.put_bytes(&digest, bytes).await.unwrap();
    digest
}

#[tokio::test]
async fn roundtrip_preserves_contents_modes_and_symlinks() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fixture(src.path(), false);
    let store = memory();
    let up = merkle::upload_directory(&store, src.path()).await.unwrap();
    assert_eq!(up.stats.files, 11);
    assert_eq!(up.stats.symlinks, 2);
    assert_eq!(
        up.stats.directories, 8,
        "root, a, a/b, a/b/c, a/b/c2, bin, emptydir, z"
    );

    let out = dst.path().join("out");
    let stats = merkle::materialize(&store, &up.root_digest, &out)
        .await
        .unwrap();
    assert_eq!((stats.files, stats.symlinks, stats.directories), (11, 2, 8));
    assert_eq!(stats.bytes, up.stats.file_bytes);

    let mut expected = snapshot(src.path());
    // Only the user-execute bit is part of the tree: modes come back as 0o755 or 0o644.
    for entry in expected.values_mut() {
        if let Entry::File { mode, .. } = entry {
            *mode = if *mode & 0o100 != 0 { 0o755 } else { 0o644 };
        }
    }
    assert_eq!(snapshot(&out), expected);
    let tool = std::fs::metadata(out.join("bin/tool")).unwrap();
    assert_eq!(tool.permissions().mode() & 0o777, 0o755);

    // Materializing over existing names refuses rather than overwriting.
    let again = merkle::materialize(&store, &up.root_digest, &out).await;
    assert!(matches!(again, Err(MerkleError::Io { .. })), "{again:?}");
}

#[tokio::test]
async fn root_digest_is_independent_of_location_and_creation_order() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fixture(one.path(), false);
    fixture(&two.path().join("elsewhere/deeper"), true);
    let a = merkle::build_tree(one.path()).await.unwrap();
    let b = merkle::build_tree(&two.path().join("elsewhere/deeper"))
        .await
        .unwrap();
    assert_eq!(a.root_digest, b.root_digest);
    assert_eq!(a.tree_message(), b.tree_message());
    let up = merkle::upload_directory(&memory(), one.path())
        .await
        .unwrap();
    assert_eq!(up.root_digest, a.root_digest, "upload and build_tree agree");

    // ...and it does depend on content, the exec bit and symlink targets.
    let perms = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(two.path().join("elsewhere/deeper/a.txt"), perms).unwrap();
    let c = merkle::build_tree_blocking(&two.path().join("elsewhere/deeper")).unwrap();
    assert_ne!(c.root_digest, a.root_digest);
    write(&one.path().join("a/b/c/deep.txt"), b"deeP", 0o644);
    let d = merkle::build_tree_blocking(one.path()).unwrap();
    assert_ne!(d.root_digest, a.root_digest);
}

#[tokio::test]
async fn directories_are_canonical_and_match_hand_built_protos() {
    let src = tempfile::tempdir().unwrap();
    fixture(src.path(), true);
    let store = memory();
    let up = merkle::upload_directory(&store, src.path()).await.unwrap();
    let root = up.tree.root();
    let names: Vec<&str> = root.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["B.txt", "a.txt", "empty", "\u{e4}.txt"],
        "UTF-8 byte order"
    );
    let dirs: Vec<&str> = root.directories.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(dirs, ["a", "bin", "emptydir", "z"]);
    assert_eq!(
        root.symlinks,
        vec![link_node("link_to_deep", "a/b/c/deep.txt")]
    );
    assert_eq!(root.files[2], file_node("empty", b"", false));

    // Hand-built expectation for the `bin` and `emptydir` subtrees.
    let bin = Directory {
        files: vec![
            file_node("others_exec_only", b"o", false),
            file_node("tool", b"#!/bin/sh\necho hi\n", true),
            file_node("user_exec_only", b"u", true),
        ],
        ..Default::default()
    };
    assert_eq!(
        root.directories[1],
        dir_node("bin", merkle::directory_digest(&bin))
    );
    assert_eq!(root.directories[2], dir_node("emptydir", Digest::EMPTY));

    // The stored tree reads back in the same order, each identical subtree once.
    let fetched = merkle::get_tree_with_digests(&store, &up.root_digest)
        .await
        .unwrap();
    assert_eq!(fetched, up.tree.directories);
    assert_eq!(fetched.len(), 7, "a/b/c and a/b/c2 are one directory");
    for (digest, dir) in &fetched {
        merkle::validate_directory(dir).unwrap();
        assert_eq!(merkle::directory_digest(dir), *digest);
    }
    let plain = merkle::get_tree(&store, &up.root_digest).await.unwrap();
    assert_eq!(merkle::tree_message(&plain), Some(up.tree_message()));
    let mut files = merkle::tree_file_digests(&plain).unwrap();
    files.sort();
    let mut expected = up.tree.file_digests();
    expected.sort();
    assert_eq!(files, expected);
    assert_eq!(files.len(), 9, "11 files, two pairs share content");
}

/// Counts what reaches the wrapped store.
#[derive(Debug)]
struct Counting<S> {
    inner: S,
    puts: AtomicU64,
    put_bytes: AtomicU64,
    max_chunk: AtomicU64,
}

impl<S> Counting<S> {
    fn new(inner: S) -> Self {
        Counting {
            inner,
            puts: AtomicU64::new(0),
            put_bytes: AtomicU64::new(0),
            max_chunk: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl<S: BlobStore> BlobStore for Counting<S> {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError> {
        self.inner.find_missing(digests).await
    }
    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<ChunkStream, StoreError> {
        self.inner.get(digest, range).await
    }
    async fn put(&self, digest: &Digest, data: ChunkStream) -> Result<(), StoreError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        let (bytes, max) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(self.max_chunk.load(Ordering::SeqCst))),
        );
        let (b, m) = (bytes.clone(), max.clone());
        let counted = data.map(move |c| {
            if let Ok(c) = &c {
                b.fetch_add(c.len() as u64, Ordering::SeqCst);
                m.fetch_max(c.len() as u64, Ordering::SeqCst);
            }
            c
        });
        let r = self.inner.put(digest, Box::pin(counted)).await;
        self.put_bytes
            .fetch_add(bytes.load(Ordering::SeqCst), Ordering::SeqCst);
        self.max_chunk
            .fetch_max(max.load(Ordering::SeqCst), Ordering::SeqCst);
        r
    }
    fn kind(&self) -> &'static str {
        "counting"
    }
}

#[tokio::test]
async fn second_upload_sends_nothing() {
    let src = tempfile::tempdir().unwrap();
    fixture(src.path(), false);
    let store = Counting::new(memory());
    let first = merkle::upload_directory(&store, src.path()).await.unwrap();
    let distinct_files: u64 = first.tree.file_digests().iter().map(|d| d.size()).sum();
    let dirs: u64 = first.tree.directories.iter().map(|(d, _)| d.size()).sum();
    assert_eq!(
        first.stats.uploaded_bytes,
        distinct_files + dirs,
        "shared content sent once"
    );
    assert_eq!(
        store.put_bytes.load(Ordering::SeqCst),
        distinct_files + dirs
    );
    assert_eq!(
        first.stats.uploaded_blobs,
        store.puts.load(Ordering::SeqCst)
    );

    let second = merkle::upload_directory(&store, src.path()).await.unwrap();
    assert_eq!(second.root_digest, first.root_digest);
    assert_eq!(
        (second.stats.uploaded_blobs, second.stats.uploaded_bytes),
        (0, 0)
    );
    assert_eq!(
        store.puts.load(Ordering::SeqCst),
        first.stats.uploaded_blobs
    );
}

#[tokio::test]
async fn file_changed_between_hashing_and_upload_is_refused() {
    let src = tempfile::tempdir().unwrap();
    write(&src.path().join("f"), b"before", 0o644);
    let tree = merkle::build_tree(src.path()).await.unwrap();
    write(&src.path().join("f"), b"after!", 0o644);
    let store = memory();
    let err = merkle::upload_tree(&store, tree).await.unwrap_err();
    assert!(matches!(err, MerkleError::FileChanged { .. }), "{err}");
    assert_eq!(
        store
            .find_missing(&[Digest::of(b"before")])
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::Aborted);
}

#[tokio::test]
async fn tampered_blobs_are_caught_on_materialize() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fixture(src.path(), false);
    let store = memory();
    let up = merkle::upload_directory(&store, src.path()).await.unwrap();
    let deep = Digest::of(b"deep");

    for wrong in [&b"DEEP"[..], b"dee", b"deep and more"] {
        store
            .put_bytes(&deep, Bytes::copy_from_slice(wrong))
            .await
            .unwrap();
        let out = dst.path().join(format!("out-{}", wrong.len()));
        let err = merkle::materialize(&store, &up.root_digest, &out)
            .await
            .unwrap_err();
        let MerkleError::ContentMismatch { path, expected, .. } = &err else {
            panic!("expected a content mismatch, got {err}");
        };
        assert_eq!(*expected, deep);
        assert!(path.ends_with("deep.txt"), "{}", path.display());
        assert!(!path.exists(), "the bad file is removed");
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::DataLoss);
    }

    // A corrupted Directory message is caught before anything is written.
    let bin = up.tree.root().directories[1].digest.clone();
    let bin = Digest::from_proto(bin.as_ref()).unwrap();
    store
        .put_bytes(&bin, Bytes::from(vec![0u8; bin.size() as usize]))
        .await
        .unwrap();
    let out = dst.path().join("out-dir");
    let err = merkle::materialize(&store, &up.root_digest, &out)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MerkleError::Corrupt { digest, .. } if *digest == bin),
        "{err}"
    );
    assert!(!out.exists());
}

#[tokio::test]
async fn missing_blobs_are_listed_with_their_paths() {
    let dst = tempfile::tempdir().unwrap();
    let store = memory();
    let sub = Directory {
        files: vec![
            file_node("gone", b"never uploaded", false),
            file_node("here", b"x", false),
        ],
        ..Default::default()
    };
    store
        .put_bytes(&Digest::of(b"x"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    let root = Directory {
        directories: vec![dir_node("sub", put_dir(&store, &sub).await)],
        ..Default::default()
    };
    let root = put_dir(&store, &root).await;
    let err = merkle::materialize(&store, &root, &dst.path().join("o"))
        .await
        .unwrap_err();
    let missing = err.missing_blobs().unwrap().to_vec();
    assert_eq!(missing.len(), 1);
    assert_eq!(missing[0].digest, Digest::of(b"never uploaded"));
    assert_eq!(missing[0].path, Path::new("sub/gone"));
    assert!(err.to_string().contains("sub/gone"), "{err}");
    assert!(err
        .to_string()
        .contains(&Digest::of(b"never uploaded").hash_hex()));
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        !status.details().is_empty(),
        "PreconditionFailure details for the client"
    );
    assert!(!dst.path().join("o").exists(), "nothing written");

    // A missing subdirectory is reported by get_tree with its path.
    let absent = Directory {
        files: vec![file_node("f", b"y", false)],
        ..Default::default()
    };
    let orphan = Directory {
        directories: vec![dir_node("lost", merkle::directory_digest(&absent))],
        ..Default::default()
    };
    let orphan = put_dir(&store, &orphan).await;
    let err = merkle::get_tree(&store, &orphan).await.unwrap_err();
    let missing = err.missing_blobs().unwrap();
    assert_eq!(missing[0].path, Path::new("lost"));
    assert_eq!(missing[0].kind, merkle::BlobKind::Directory);
}

/// Stores `root` = { file, sub/ { up -> .. }, link -> target } and materializes it.
async fn materialize_link(target: &str, allow: bool) -> Result<PathBuf, MerkleError> {
    let store = memory();
    store
        .put_bytes(&Digest::of(b"f"), Bytes::from_static(b"f"))
        .await
        .unwrap();
    let sub = Directory {
        symlinks: vec![link_node("up", "..")],
        ..Default::default()
    };
    let root = Directory {
        files: vec![file_node("file", b"f", false)],
        directories: vec![dir_node("sub", put_dir(&store, &sub).await)],
        symlinks: vec![link_node("link", target)],
        ..Default::default()
    };
    let root = put_dir(&store, &root).await;
    let dst = tempfile::tempdir().unwrap().keep();
    let options = MaterializeOptions {
        allow_escaping_symlinks: allow,
        ..Default::default()
    };
    merkle::materialize_with(&store, &root, &dst, &options).await?;
    Ok(dst)
}

#[tokio::test]
async fn escaping_symlinks_are_refused_unless_allowed() {
    for target in [
        "../outside",
        "/etc/passwd",
        "sub/../../x",
        "sub/up/..",
        "./sub/up/../x",
    ] {
        let err = materialize_link(target, false).await.unwrap_err();
        assert!(
            matches!(&err, MerkleError::EscapingSymlink { .. }),
            "{target}: {err}"
        );
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::InvalidArgument
        );
        let dst = materialize_link(target, true).await.unwrap();
        assert_eq!(
            std::fs::read_link(dst.join("link")).unwrap(),
            Path::new(target)
        );
        std::fs::remove_dir_all(dst).unwrap();
    }
    for target in [
        "file",
        "sub/../file",
        "sub/up/file",
        "sub/up",
        "missing/deeper",
        "link",
    ] {
        let dst = materialize_link(target, false).await.unwrap();
        assert_eq!(
            std::fs::read_link(dst.join("link")).unwrap(),
            Path::new(target)
        );
        std::fs::remove_dir_all(dst).unwrap();
    }
}

#[tokio::test]
async fn non_canonical_directories_are_refused() {
    let f = |n: &str| file_node(n, b"", false);
    let cases = [
        vec![f("..")],
        vec![f("a/b")],
        vec![f("")],
        vec![f("b"), f("a")],
        vec![f("a"), f("a")],
    ];
    for files in cases {
        let store = memory();
        let root = put_dir(
            &store,
            &Directory {
                files,
                ..Default::default()
            },
        )
        .await;
        let dst = tempfile::tempdir().unwrap();
        let out = dst.path().join("o");
        let err = merkle::materialize(&store, &root, &out).await.unwrap_err();
        assert!(matches!(err, MerkleError::InvalidDirectory { .. }), "{err}");
        assert!(!out.exists());
    }
    let clash = Directory {
        files: vec![f("x")],
        symlinks: vec![link_node("x", "y")],
        ..Default::default()
    };
    assert!(merkle::validate_directory(&clash).is_err());
    let store = memory();
    let not_a_dir = Digest::of(b"\xff\xff\xff");
    store
        .put_bytes(&not_a_dir, Bytes::from_static(b"\xff\xff\xff"))
        .await
        .unwrap();
    let err = merkle::get_tree(&store, &not_a_dir).await.unwrap_err();
    assert!(matches!(err, MerkleError::InvalidDirectory { .. }), "{err}");
}

#[tokio::test]
async fn trees_that_expand_too_far_are_refused() {
    let store = memory();
    let mut d = put_dir(&store, &Directory::default()).await;
    for _ in 0..30 {
        let next = Directory {
            directories: vec![dir_node("a", d), dir_node("b", d)],
            ..Default::default()
        };
        d = put_dir(&store, &next).await;
    }
    let dst = tempfile::tempdir().unwrap();
    let err = merkle::materialize(&store, &d, dst.path())
        .await
        .unwrap_err();
    assert!(matches!(err, MerkleError::TooManyEntries { .. }), "{err}");
    assert_eq!(merkle::get_tree(&store, &d).await.unwrap().len(), 31);
}

#[tokio::test]
async fn special_files_and_non_utf8_names_are_refused_by_path() {
    let src = tempfile::tempdir().unwrap();
    write(&src.path().join("ok"), b"fine", 0o644);
    let sock = src.path().join("sub/control.sock");
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let err = merkle::upload_directory(&memory(), src.path())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            MerkleError::UnsupportedFileType { kind: "socket", .. }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("control.sock"), "{err}");

    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join(OsStr::from_bytes(b"bad\xffname")), b"").unwrap();
    let err = merkle::build_tree(src.path()).await.unwrap_err();
    assert!(matches!(err, MerkleError::NonUtf8Name { .. }), "{err}");
}

/// A store that keeps blobs in files and streams them both ways in 1 MiB chunks, so a large
/// round trip shows whether the Merkle code buffers.
#[derive(Debug)]
struct DiskStore(PathBuf);

#[async_trait]
impl BlobStore for DiskStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError> {
        Ok(digests
            .iter()
            .copied()
            .filter(|d| !self.0.join(d.key()).exists())
            .collect())
    }
    async fn get(&self, digest: &Digest, _: ByteRange) -> Result<ChunkStream, StoreError> {
        let file = tokio::fs::File::open(self.0.join(digest.key()))
            .await
            .map_err(|_| StoreError::NotFound(*digest))?;
        let chunks = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
        Ok(Box::pin(chunks.map(|c| c.map_err(StoreError::from))))
    }
    async fn put(&self, digest: &Digest, mut data: ChunkStream) -> Result<(), StoreError> {
        let tmp = self.0.join(format!("{}.tmp", digest.key()));
        let mut file = tokio::fs::File::create(&tmp).await?;
        while let Some(chunk) = data.next().await {
            file.write_all(&chunk?).await?;
        }
        file.flush().await?;
        tokio::fs::rename(tmp, self.0.join(digest.key())).await?;
        Ok(())
    }
    fn kind(&self) -> &'static str {
        "disk"
    }
}

#[tokio::test]
async fn large_file_round_trip_streams() {
    const SIZE: usize = 200 << 20;
    let (src, blobs, dst) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let big = src.path().join("big.bin");
    let mut expected = cas::DigestHasher::new();
    {
        use std::io::Write as _;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..SIZE / chunk.len() {
            for word in chunk.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                word.copy_from_slice(&x.to_le_bytes());
            }
            expected.update(&chunk);
            f.write_all(&chunk).unwrap();
        }
    }
    let expected = expected.finish();
    let before = peak_rss_bytes().expect("VmHWM in /proc/self/status");

    let store = Counting::new(DiskStore(blobs.path().to_path_buf()));
    let up = merkle::upload_directory(&store, src.path()).await.unwrap();
    assert_eq!(up.tree.files[0].digest, expected);
    assert!(store.max_chunk.load(Ordering::SeqCst) <= merkle::CHUNK_SIZE as u64);
    let out = dst.path().join("out");
    let stats = merkle::materialize(&store, &up.root_digest, &out)
        .await
        .unwrap();
    assert_eq!(stats.bytes, SIZE as u64);

    let grown_mib = (peak_rss_bytes().expect("VmHWM in /proc/self/status") - before) >> 20;
    assert!(
        grown_mib < 64,
        "peak memory grew by {grown_mib} MiB for a 200 MiB file"
    );
    let copy = merkle::build_tree(&out).await.unwrap();
    assert_eq!(copy.root_digest, up.root_digest);
    assert_eq!(copy.files[0].digest, expected);
}
