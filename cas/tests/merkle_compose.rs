//! `cas::merkle::TreeBuilder`: composing input roots from stored trees and digests, checked
//! against `build_tree` of the same content materialised on disk.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use bazel_remote_apis::build::bazel::remote::execution::v2::{Directory, FileNode, NodeProperties};
use cas::merkle::{
    build_tree_blocking, validate_directory, ComposeError, ComposedTree, DirectoryIndex, LocalTree,
    TreeBuilder, MAX_DEPTH,
};
use cas::Digest;
use prost::Message as _;

/// One entry of a folder, to write on disk or add to a builder.
#[derive(Clone, Debug)]
enum Spec {
    File(&'static str, &'static [u8], bool),
    Link(&'static str, &'static str),
    EmptyDir(&'static str),
}
use Spec::{EmptyDir, File, Link};

/// A folder with nesting, an executable, an empty file, shared content, identical subtrees,
/// symlinks (one dangling), an empty directory and names whose byte order differs from a
/// case-insensitive or Unicode-aware sort.
const FIXTURE: &[Spec] = &[
    File("bin/tool", b"#!/bin/sh\necho hi\n", true),
    File("bin/data", b"data", false),
    File("empty", b"", false),
    File("a/b/c/deep.txt", b"deep", false),
    File("a/b/c2/deep.txt", b"deep", false),
    File("a/shared1.txt", b"same content", false),
    File("z/shared2.txt", b"same content", false),
    File("B.txt", b"upper", false),
    File("a.txt", b"lower", false),
    File("\u{e4}.txt", b"umlaut", false),
    File("a-b/x", b"dash", false),
    File("a_b/x", b"underscore", false),
    Link("link_to_deep", "a/b/c/deep.txt"),
    Link("z/dangling", "does/not/exist"),
    EmptyDir("emptydir"),
    EmptyDir("a/b/also_empty"),
];

fn write_specs(root: &Path, specs: &[Spec]) {
    for spec in specs {
        match spec {
            File(path, content, exec) => {
                let path = root.join(path);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, content).unwrap();
                let mode = if *exec { 0o755 } else { 0o644 };
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            Link(path, target) => {
                let path = root.join(path);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::os::unix::fs::symlink(target, path).unwrap();
            }
            EmptyDir(path) => std::fs::create_dir_all(root.join(path)).unwrap(),
        }
    }
}

/// `build_tree` of `specs` written to a fresh temporary folder.
fn local(specs: &[Spec]) -> LocalTree {
    let dir = tempfile::tempdir().unwrap();
    write_specs(dir.path(), specs);
    build_tree_blocking(dir.path()).unwrap()
}

/// `specs` with every path under `prefix`.
fn under(prefix: &'static str, specs: &[Spec]) -> Vec<Spec> {
    let p = |s: &str| -> &'static str { Box::leak(format!("{prefix}/{s}").into_boxed_str()) };
    specs
        .iter()
        .map(|s| match s {
            File(path, c, e) => File(p(path), c, *e),
            Link(path, t) => Link(p(path), t),
            EmptyDir(path) => EmptyDir(p(path)),
        })
        .collect()
}

fn add_specs(b: &mut TreeBuilder, specs: &[Spec]) {
    for spec in specs {
        match spec {
            File(path, content, exec) => b.add_file(path, Digest::of(content), *exec).unwrap(),
            Link(path, target) => b.add_symlink(path, target).unwrap(),
            EmptyDir(path) => b.add_empty_dir(path).unwrap(),
        }
    }
}

/// The index of a local tree's directories, and its root digest.
fn stored(specs: &[Spec]) -> (DirectoryIndex, Digest) {
    let tree = local(specs);
    let index =
        DirectoryIndex::from_directories(tree.directories.iter().map(|(_, d)| d.clone())).unwrap();
    (index, tree.root_digest)
}

/// Checks the returned directories: digests match their bytes and messages, each is canonical,
/// each digest appears once, root first when anything was encoded, and together with `indexes`
/// they resolve every directory the root refers to.
fn assert_well_formed(t: &ComposedTree, indexes: &[&DirectoryIndex]) {
    let mut seen = HashSet::new();
    for d in &t.directories {
        assert_eq!(Digest::of(&d.bytes), d.digest);
        assert_eq!(d.directory.encode_to_vec(), d.bytes.to_vec());
        validate_directory(&d.directory).unwrap();
        assert!(seen.insert(d.digest), "{} listed twice", d.digest);
    }
    if let Some(first) = t.directories.first() {
        assert_eq!(first.digest, t.root_digest, "root listed first");
    }
    // Together with the indexes, the listed directories resolve the whole tree.
    let mut known: Vec<Directory> = t.directories.iter().map(|d| d.directory.clone()).collect();
    for index in indexes {
        collect_reachable(index, &t.root_digest, &mut known, &t.directories);
    }
    let all = DirectoryIndex::from_directories(known).unwrap();
    all.check_complete(&t.root_digest).unwrap();
}

/// Adds to `out` every directory of `index` reachable from `root` through directories known in
/// `index` or `encoded`.
fn collect_reachable(
    index: &DirectoryIndex,
    root: &Digest,
    out: &mut Vec<Directory>,
    encoded: &[cas::merkle::EncodedDirectory],
) {
    let mut stack = vec![*root];
    let mut seen = HashSet::new();
    while let Some(d) = stack.pop() {
        if !seen.insert(d) {
            continue;
        }
        let dir = match encoded.iter().find(|e| e.digest == d) {
            Some(e) => e.directory.clone(),
            None => match index.get(&d) {
                Some(dir) => {
                    out.push(dir.clone());
                    dir.clone()
                }
                None => continue,
            },
        };
        for n in &dir.directories {
            stack.push(Digest::from_proto(n.digest.as_ref()).unwrap());
        }
    }
}

#[test]
fn composed_files_match_the_local_folder() {
    let expected = local(FIXTURE);
    let mut b = TreeBuilder::new();
    add_specs(&mut b, FIXTURE);
    let t = b.build();
    assert_eq!(t.root_digest, expected.root_digest);
    assert_well_formed(&t, &[]);
    // Everything was created, so every directory of the folder is listed, and nothing else.
    let got: HashSet<Digest> = t.directories.iter().map(|d| d.digest).collect();
    let want: HashSet<Digest> = expected.directories.iter().map(|(d, _)| *d).collect();
    assert_eq!(got, want);
    let mut files = expected.file_digests();
    files.sort();
    assert_eq!(t.file_digests, files);
}

#[test]
fn insertion_order_does_not_matter() {
    let mut forward = TreeBuilder::new();
    add_specs(&mut forward, FIXTURE);
    let forward = forward.build();

    let mut reversed_specs = FIXTURE.to_vec();
    reversed_specs.reverse();
    let mut reversed = TreeBuilder::new();
    add_specs(&mut reversed, &reversed_specs);
    assert_eq!(reversed.build(), forward);

    // A few deterministic shuffles (an LCG), including deep paths before their parents' files.
    let mut seed = 0x2545_f491_u64;
    for _ in 0..5 {
        let mut specs = FIXTURE.to_vec();
        for i in (1..specs.len()).rev() {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            specs.swap(i, (seed >> 33) as usize % (i + 1));
        }
        let mut b = TreeBuilder::new();
        add_specs(&mut b, &specs);
        assert_eq!(b.build(), forward, "order {specs:?}");
    }
}

/// A toolchain-like tree: many nested directories.
fn toolchain() -> Vec<Spec> {
    let mut specs = vec![
        File("bin/rustc", b"rustc binary", true),
        File("bin/cargo", b"cargo binary", true),
        File("lib/librustc_driver.so", b"driver", false),
        File(
            "lib/rustlib/x86_64-unknown-linux-gnu/lib/libstd.rlib",
            b"std",
            false,
        ),
        File(
            "lib/rustlib/x86_64-unknown-linux-gnu/lib/libcore.rlib",
            b"core",
            false,
        ),
        File(
            "lib/rustlib/src/rust/library/core/src/lib.rs",
            b"//! core",
            false,
        ),
        Link(
            "lib/rustlib/x86_64-unknown-linux-gnu/bin/gcc-ld/ld.lld",
            "../rust-lld",
        ),
    ];
    for i in 0..30 {
        let path: &'static str = Box::leak(format!("share/doc/d{i}/README").into_boxed_str());
        specs.push(File(path, b"doc", false));
    }
    specs
}

#[test]
fn a_mounted_tree_stays_opaque() {
    let (index, tc_root) = stored(&toolchain());
    let mut b = TreeBuilder::new();
    b.add_tree("toolchain", tc_root, &index).unwrap();
    let mut deps = Vec::new();
    for i in 0..100 {
        let path: &'static str = Box::leak(format!("deps/libdep{i}.rlib").into_boxed_str());
        let content: &'static [u8] = Box::leak(format!("rlib {i}").into_bytes().into_boxed_slice());
        deps.push(File(path, content, false));
    }
    add_specs(&mut b, &deps);
    let t = b.build();

    let mut all = under("toolchain", &toolchain());
    all.extend(deps.iter().cloned());
    assert_eq!(t.root_digest, local(&all).root_digest);
    // Only the root and deps/ were encoded; the toolchain's ~40 directories were not.
    assert_eq!(t.directories.len(), 2);
    let root = &t.directories[0].directory;
    let tc = root
        .directories
        .iter()
        .find(|n| n.name == "toolchain")
        .unwrap();
    assert_eq!(tc.digest, Some(tc_root.to_proto()));
    assert_eq!(t.file_digests.len(), 100);
    assert_well_formed(&t, &[&index]);
}

#[test]
fn a_tree_mounted_at_the_root_alone_is_that_tree() {
    let (index, root) = stored(FIXTURE);
    let mut b = TreeBuilder::new();
    b.add_tree("", root, &index).unwrap();
    let t = b.build();
    assert_eq!(t.root_digest, root);
    assert!(t.directories.is_empty());
    assert!(t.file_digests.is_empty());

    // An empty directory at the mount point does not force an expansion either.
    let mut b = TreeBuilder::new();
    b.add_empty_dir("m").unwrap();
    b.add_tree("m", root, &index).unwrap();
    assert_eq!(b.build().directories.len(), 1);
}

#[test]
fn adding_inside_a_mounted_tree_expands_only_the_path() {
    let (index, tc_root) = stored(&toolchain());
    let mut b = TreeBuilder::new();
    b.add_tree("tc", tc_root, &index).unwrap();
    b.add_file("tc/lib/rustlib/new.txt", Digest::of(b"new"), false)
        .unwrap();
    b.add_symlink(
        "tc/lib/rustlib/x86_64-unknown-linux-gnu/lib/alias",
        "libstd.rlib",
    )
    .unwrap();
    let t = b.build();

    let mut all = under("tc", &toolchain());
    all.push(File("tc/lib/rustlib/new.txt", b"new", false));
    all.push(Link(
        "tc/lib/rustlib/x86_64-unknown-linux-gnu/lib/alias",
        "libstd.rlib",
    ));
    assert_eq!(t.root_digest, local(&all).root_digest);
    // root, tc, tc/lib, tc/lib/rustlib, .../x86_64-unknown-linux-gnu, .../lib
    assert_eq!(t.directories.len(), 6);
    assert_eq!(t.file_digests, vec![Digest::of(b"new")]);
    assert_well_formed(&t, &[&index]);
}

#[test]
fn an_identical_file_inside_a_mounted_tree_changes_nothing() {
    let (index, tc_root) = stored(&toolchain());
    let mut b = TreeBuilder::new();
    b.add_tree("", tc_root, &index).unwrap();
    b.add_file("bin/rustc", Digest::of(b"rustc binary"), true)
        .unwrap();
    b.add_empty_dir("lib/rustlib").unwrap();
    b.add_symlink(
        "lib/rustlib/x86_64-unknown-linux-gnu/bin/gcc-ld/ld.lld",
        "../rust-lld",
    )
    .unwrap();
    let t = b.build();
    assert_eq!(t.root_digest, tc_root);
    // Found by reading the index: nothing was expanded.
    assert!(t.directories.is_empty());
    assert_eq!(t.file_digests, vec![Digest::of(b"rustc binary")]);

    let mut b = TreeBuilder::new();
    b.add_tree("", tc_root, &index).unwrap();
    let err = b
        .add_file("bin/rustc", Digest::of(b"rustc binary"), false)
        .unwrap_err();
    assert!(
        matches!(&err, ComposeError::Conflict { path, .. } if path == "bin/rustc"),
        "{err}"
    );
    assert!(err.to_string().contains("executable file"), "{err}");
}

const TREE_A: &[Spec] = &[
    File("src/a.rs", b"a", false),
    File("common/x", b"x", false),
    File("shared/deep/same", b"same", true),
    EmptyDir("only_a"),
];

const TREE_B: &[Spec] = &[
    File("src/b.rs", b"b", false),
    File("common/x", b"x", false),
    File("shared/deep/same", b"same", true),
    Link("src/link", "b.rs"),
    File("other/o", b"o", false),
];

#[test]
fn different_trees_at_the_same_path_merge() {
    let (ia, ra) = stored(TREE_A);
    let (ib, rb) = stored(TREE_B);
    let mut union = TREE_A.to_vec();
    union.extend(TREE_B.iter().cloned());

    let mut b = TreeBuilder::new();
    b.add_tree("mnt", ra, &ia).unwrap();
    b.add_tree("mnt", rb, &ib).unwrap();
    let t = b.build();
    assert_eq!(t.root_digest, local(&under("mnt", &union)).root_digest);
    // root, mnt and mnt/src differ; common/ and shared/ are identical on both sides and stay
    // opaque; only_a/ and other/ exist on one side only.
    assert_eq!(t.directories.len(), 3);
    assert_well_formed(&t, &[&ia, &ib]);

    // The same at the root, in the other order, and with files added around them.
    let mut b = TreeBuilder::new();
    b.add_file("top.txt", Digest::of(b"top"), false).unwrap();
    b.add_tree("", rb, &ib).unwrap();
    b.add_tree("", ra, &ia).unwrap();
    b.add_file("src/c.rs", Digest::of(b"c"), false).unwrap();
    let t = b.build();
    union.push(File("top.txt", b"top", false));
    union.push(File("src/c.rs", b"c", false));
    assert_eq!(t.root_digest, local(&union).root_digest);
    assert_well_formed(&t, &[&ia, &ib]);
}

#[test]
fn merging_identical_trees_is_a_no_op() {
    let (index, root) = stored(TREE_A);
    // A second index of the same tree: identity is by digest, not by index.
    let (index2, root2) = stored(TREE_A);
    assert_eq!(root, root2);
    let mut b = TreeBuilder::new();
    b.add_tree("m", root, &index).unwrap();
    b.add_tree("m", root2, &index2).unwrap();
    let t = b.build();
    assert_eq!(t.directories.len(), 1);
    assert_eq!(t.root_digest, local(&under("m", TREE_A)).root_digest);

    // Merging a tree over an expanded copy of itself (files added one by one) also agrees.
    let mut b = TreeBuilder::new();
    add_specs(&mut b, TREE_A);
    b.add_tree("", root, &index).unwrap();
    assert_eq!(b.build().root_digest, root);
}

fn conflict_path(err: &ComposeError) -> &str {
    match err {
        ComposeError::Conflict { path, .. } => path,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[test]
fn conflicts_are_refused_naming_the_path() {
    let mut b = TreeBuilder::new();
    b.add_file("a/f", Digest::of(b"1"), false).unwrap();
    b.add_symlink("a/l", "f").unwrap();
    b.add_empty_dir("a/d").unwrap();
    let before = {
        let mut c = TreeBuilder::new();
        c.add_file("a/f", Digest::of(b"1"), false).unwrap();
        c.add_symlink("a/l", "f").unwrap();
        c.add_empty_dir("a/d").unwrap();
        c.build().root_digest
    };

    let cases: Vec<(ComposeError, &str)> = vec![
        (
            b.add_file("a/f", Digest::of(b"2"), false).unwrap_err(),
            "a/f",
        ),
        (
            b.add_file("a/f", Digest::of(b"1"), true).unwrap_err(),
            "a/f",
        ),
        (
            b.add_file("a/f/g", Digest::of(b"1"), false).unwrap_err(),
            "a/f",
        ),
        (
            b.add_file("a/d", Digest::of(b"1"), false).unwrap_err(),
            "a/d",
        ),
        (
            b.add_file("a/l", Digest::of(b"1"), false).unwrap_err(),
            "a/l",
        ),
        (
            b.add_file("a/l/x", Digest::of(b"1"), false).unwrap_err(),
            "a/l",
        ),
        (b.add_symlink("a/l", "g").unwrap_err(), "a/l"),
        (b.add_symlink("a/f", "f").unwrap_err(), "a/f"),
        (b.add_empty_dir("a/f").unwrap_err(), "a/f"),
        (b.add_empty_dir("a/l").unwrap_err(), "a/l"),
    ];
    for (err, path) in &cases {
        assert_eq!(conflict_path(err), *path, "{err}");
        assert!(err.to_string().contains(path), "{err}");
    }
    // Identical additions are fine, and nothing above changed the tree.
    b.add_file("a/f", Digest::of(b"1"), false).unwrap();
    b.add_symlink("a/l", "f").unwrap();
    b.add_empty_dir("a/d").unwrap();
    assert_eq!(b.build().root_digest, before);
}

#[test]
fn conflicting_trees_are_refused_and_leave_the_builder_unchanged() {
    let (ia, ra) = stored(&[
        File("x/y/f", b"1", false),
        File("x/y/g", b"g", false),
        File("kind", b"a file", false),
    ]);
    // Sorts before everything of A, so a merge that applied as it checked would have added it.
    let (ic, rc) = stored(&[
        File("aaa_first", b"new", false),
        File("x/y/f", b"2", false),
        File("x/y/zzz", b"new", false),
    ]);
    let (ik, rk) = stored(&[File("kind/inner", b"a dir", false)]);

    let mut b = TreeBuilder::new();
    b.add_tree("mnt", ra, &ia).unwrap();
    let err = b.add_tree("mnt", rc, &ic).unwrap_err();
    assert_eq!(conflict_path(&err), "mnt/x/y/f", "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&Digest::of(b"1").to_string()), "{msg}");
    assert!(msg.contains(&Digest::of(b"2").to_string()), "{msg}");
    let err = b.add_tree("mnt", rk, &ik).unwrap_err();
    assert_eq!(conflict_path(&err), "mnt/kind", "{err}");
    // A tree where a file is, and a file where a mounted tree is.
    b.add_file("file", Digest::of(b"f"), false).unwrap();
    let err = b.add_tree("file", ra, &ia).unwrap_err();
    assert_eq!(conflict_path(&err), "file", "{err}");
    let err = b.add_file("mnt", Digest::of(b"f"), false).unwrap_err();
    assert_eq!(conflict_path(&err), "mnt", "{err}");

    let t = b.build();
    let mut want = under(
        "mnt",
        &[
            File("x/y/f", b"1", false),
            File("x/y/g", b"g", false),
            File("kind", b"a file", false),
        ],
    );
    want.push(File("file", b"f", false));
    assert_eq!(t.root_digest, local(&want).root_digest);
}

#[test]
fn bad_paths_are_refused() {
    let (index, root) = stored(TREE_A);
    let deep = vec!["d"; MAX_DEPTH + 1].join("/");
    for path in [
        "/abs", "/", "a//b", "a/", "./a", "a/./b", "a/..", "../a", "..", ".", "a/\0",
    ] {
        let mut b = TreeBuilder::new();
        let errs = [
            b.add_file(path, Digest::of(b"x"), false).unwrap_err(),
            b.add_symlink(path, "t").unwrap_err(),
            b.add_empty_dir(path).unwrap_err(),
            b.add_tree(path, root, &index).unwrap_err(),
        ];
        for err in errs {
            assert!(
                matches!(&err, ComposeError::InvalidPath { path: p, .. } if p == path),
                "{path:?}: {err:?}"
            );
        }
        assert_eq!(b.build().root_digest, Digest::EMPTY);
    }
    let mut b = TreeBuilder::new();
    assert!(matches!(
        b.add_file(&deep, Digest::EMPTY, false),
        Err(ComposeError::TooDeep { .. })
    ));
    // The root is a directory: it can be mounted on or ensured, not replaced by a leaf.
    assert!(matches!(
        b.add_file("", Digest::EMPTY, false),
        Err(ComposeError::InvalidPath { .. })
    ));
    assert!(matches!(
        b.add_symlink("", "x"),
        Err(ComposeError::InvalidPath { .. })
    ));
    b.add_empty_dir("").unwrap();
    // Symlink targets REAPI refuses.
    assert!(matches!(
        b.add_symlink("l", ""),
        Err(ComposeError::InvalidSymlinkTarget { .. })
    ));
    assert!(matches!(
        b.add_symlink("l", "a\0b"),
        Err(ComposeError::InvalidSymlinkTarget { .. })
    ));
    assert_eq!(b.build().root_digest, Digest::EMPTY);
}

#[test]
fn empty_dirs_and_symlinks_inside_mounted_trees() {
    let (index, root) = stored(TREE_A);
    let mut b = TreeBuilder::new();
    b.add_tree("m", root, &index).unwrap();
    // Existing directories, stored or not, are left alone: no expansion.
    b.add_empty_dir("m").unwrap();
    b.add_empty_dir("m/src").unwrap();
    assert_eq!(b.build().directories.len(), 1);

    let mut b = TreeBuilder::new();
    b.add_tree("m", root, &index).unwrap();
    b.add_empty_dir("m/only_a/nested/empty").unwrap();
    b.add_symlink("m/shared/deep/to_same", "same").unwrap();
    let t = b.build();
    let mut want = under("m", TREE_A);
    want.push(EmptyDir("m/only_a/nested/empty"));
    want.push(Link("m/shared/deep/to_same", "same"));
    assert_eq!(t.root_digest, local(&want).root_digest);
    assert_well_formed(&t, &[&index]);
}

#[test]
fn missing_directories_are_reported() {
    let tree = local(TREE_A);
    let full =
        DirectoryIndex::from_directories(tree.directories.iter().map(|(_, d)| d.clone())).unwrap();
    // Unknown root: refused before any parent is created.
    let mut b = TreeBuilder::new();
    let unknown = Digest::of(b"not a directory");
    let err = b.add_tree("x/y", unknown, &full).unwrap_err();
    assert_eq!(
        err,
        ComposeError::MissingDirectory {
            path: "x/y".into(),
            digest: unknown
        }
    );
    assert_eq!(b.build().root_digest, Digest::EMPTY);

    // An index with the root only: mounting works (opaque), expanding a child does not.
    let root_only = DirectoryIndex::from_directories([tree.root().clone()]).unwrap();
    let mut b = TreeBuilder::new();
    b.add_tree("m", tree.root_digest, &root_only).unwrap();
    let err = b
        .add_file("m/src/new.rs", Digest::of(b"n"), false)
        .unwrap_err();
    let src = tree
        .root()
        .directories
        .iter()
        .find(|n| n.name == "src")
        .unwrap();
    assert_eq!(
        err,
        ComposeError::MissingDirectory {
            path: "m/src".into(),
            digest: Digest::from_proto(src.digest.as_ref()).unwrap()
        }
    );
    assert!(err.to_string().contains("m/src"), "{err}");
    assert!(matches!(
        root_only.check_complete(&tree.root_digest),
        Err(ComposeError::MissingDirectory { .. })
    ));
    assert_eq!(
        full.check_complete(&tree.root_digest).unwrap(),
        tree.directories.len()
    );
}

#[test]
fn directory_index_from_a_tree_message_and_validation() {
    let tree = local(FIXTURE);
    let (index, root) = DirectoryIndex::from_tree(&tree.tree_message()).unwrap();
    assert_eq!(root, tree.root_digest);
    assert_eq!(index.len(), tree.directories.len());
    assert_eq!(index.check_complete(&root).unwrap(), tree.directories.len());
    assert!(
        index.contains(&Digest::EMPTY),
        "the empty directory is always known"
    );

    let file = |name: &str| FileNode {
        name: name.into(),
        digest: Some(Digest::of(name.as_bytes()).to_proto()),
        is_executable: false,
        node_properties: None,
    };
    let unsorted = Directory {
        files: vec![file("b"), file("a")],
        ..Default::default()
    };
    let err = DirectoryIndex::from_directories([unsorted]).unwrap_err();
    assert!(
        matches!(&err, ComposeError::InvalidDirectory { reason, .. } if reason.contains("sorted")),
        "{err}"
    );
    let dotdot = Directory {
        files: vec![file("..")],
        ..Default::default()
    };
    assert!(DirectoryIndex::from_directories([dotdot]).is_err());
    assert_eq!(
        DirectoryIndex::from_tree(&Default::default()).unwrap_err(),
        ComposeError::TreeWithoutRoot
    );
}

#[test]
fn node_properties_survive_expansion() {
    let props = NodeProperties {
        unix_mode: Some(bazel_remote_apis::google::protobuf::UInt32Value { value: 0o640 }),
        ..Default::default()
    };
    let inner = Directory {
        files: vec![FileNode {
            name: "f".into(),
            digest: Some(Digest::of(b"f").to_proto()),
            is_executable: false,
            node_properties: Some(props.clone()),
        }],
        ..Default::default()
    };
    let (inner_digest, _) = cas::merkle::encode_directory(&inner);
    let mut outer = Directory::default();
    outer.directories.push(
        bazel_remote_apis::build::bazel::remote::execution::v2::DirectoryNode {
            name: "sub".into(),
            digest: Some(inner_digest.to_proto()),
        },
    );
    let index = DirectoryIndex::from_directories([inner.clone(), outer.clone()]).unwrap();
    let (outer_digest, _) = cas::merkle::encode_directory(&outer);

    // The same file without properties is identical: nothing changes, nothing is expanded.
    let mut b = TreeBuilder::new();
    b.add_tree("", outer_digest, &index).unwrap();
    b.add_file("sub/f", Digest::of(b"f"), false).unwrap();
    let t = b.build();
    assert_eq!(t.root_digest, outer_digest);
    assert!(t.directories.is_empty());

    // Merging an expanded copy without the properties keeps them: the digest is unchanged.
    let mut b = TreeBuilder::new();
    b.add_file("sub/f", Digest::of(b"f"), false).unwrap();
    b.add_tree("", outer_digest, &index).unwrap();
    assert_eq!(b.build().root_digest, outer_digest);

    // Adding a sibling keeps the property on the re-encoded file node.
    let mut b = TreeBuilder::new();
    b.add_tree("", outer_digest, &index).unwrap();
    b.add_file("sub/g", Digest::of(b"g"), false).unwrap();
    let t = b.build();
    let sub = t
        .directories
        .iter()
        .find(|d| d.directory.files.len() == 2)
        .unwrap();
    assert_eq!(sub.directory.files[0].node_properties, Some(props));
    assert_eq!(sub.directory.files[1].node_properties, None);
}
