//! Collecting an action's outputs into an `ActionResult` and uploading their blobs.
//!
//! REAPI 2.0 clients list `output_files` and `output_directories`; 2.1+ clients list
//! `output_paths`, whose type the worker finds out (and then the 2.0 fields are ignored).
//! Missing outputs are simply left out. Directories become `Tree` messages. Symlinks are
//! reported as symlinks, never followed out of the input root: an output path that leads out
//! through a symlink or `..`, or a symlink output (or a symlink inside an output directory)
//! pointing out of the root, is refused with [`OutputError::Refused`] (unless escaping
//! symlinks are allowed).
//!
//! Uploads ask the CAS once, in bulk, which blobs it lacks, then send small ones in
//! `BatchUpdateBlobs` requests and stream the rest from disk.

use std::collections::HashMap;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    command::OutputDirectoryFormat, ActionResult, Command, Directory, OutputDirectory, OutputFile,
    OutputSymlink,
};
use bytes::Bytes;
use cas::merkle::{self, MerkleError};
use cas::store::grpc::GrpcStore;
use cas::store::BlobStore;
use cas::{Digest, DigestHasher, StoreError};
use futures::{StreamExt as _, TryStreamExt as _};
use prost::Message as _;

use crate::paths::{self, Resolved, RootPath};

/// Blobs below this size are uploaded in batches, read whole into memory.
const SMALL_BLOB: u64 = 1 << 20;
/// Most bytes of small blobs held in memory at once while uploading.
const SMALL_BATCH_BYTES: u64 = 16 << 20;
/// Large blobs streamed at once.
const UPLOAD_CONCURRENCY: usize = 4;

/// Why outputs could not be reported.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// An output the worker will not report (escapes the root, wrong type, special file).
    #[error("{0}")]
    Refused(String),
    #[error("uploading outputs: {0}")]
    Store(#[from] StoreError),
    #[error("reading outputs: {0}")]
    Io(String),
}

impl OutputError {
    pub fn to_status(self) -> tonic::Status {
        match self {
            OutputError::Refused(m) => tonic::Status::failed_precondition(m),
            OutputError::Store(e) => {
                let s = tonic::Status::from(e);
                tonic::Status::new(s.code(), format!("uploading outputs: {}", s.message()))
            }
            OutputError::Io(m) => tonic::Status::internal(m),
        }
    }
}

/// Blobs to upload: files on disk and blobs in memory, each digest once.
#[derive(Debug, Default)]
pub struct Uploads {
    files: HashMap<Digest, PathBuf>,
    blobs: HashMap<Digest, Bytes>,
}

impl Uploads {
    pub fn add_file(&mut self, digest: Digest, path: PathBuf) {
        if digest != Digest::EMPTY && !self.blobs.contains_key(&digest) {
            self.files.entry(digest).or_insert(path);
        }
    }

    pub fn add_blob(&mut self, data: Bytes) -> Digest {
        let digest = Digest::of(&data);
        if digest != Digest::EMPTY {
            self.files.remove(&digest);
            self.blobs.entry(digest).or_insert(data);
        }
        digest
    }

    pub fn len(&self) -> usize {
        self.files.len() + self.blobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Uploads what the CAS lacks; returns how many blobs and bytes were sent.
    pub async fn upload(self, store: &GrpcStore) -> Result<(u64, u64), StoreError> {
        if self.is_empty() {
            return Ok((0, 0));
        }
        let all: Vec<Digest> = self
            .files
            .keys()
            .chain(self.blobs.keys())
            .copied()
            .collect();
        let missing = store.find_missing(&all).await?;
        let (mut sent, mut bytes) = (0u64, 0u64);
        let mut small: Vec<(Digest, Bytes)> = Vec::new();
        let mut small_bytes = 0u64;
        let mut large: Vec<(Digest, PathBuf)> = Vec::new();
        for d in missing {
            sent += 1;
            bytes += d.size();
            if let Some(data) = self.blobs.get(&d) {
                small_bytes += d.size();
                small.push((d, data.clone()));
            } else if let Some(path) = self.files.get(&d) {
                if d.size() >= SMALL_BLOB {
                    large.push((d, path.clone()));
                    continue;
                }
                let data = read_small(path.clone()).await?;
                small_bytes += d.size();
                small.push((d, data));
            }
            if small_bytes >= SMALL_BATCH_BYTES {
                store.batch_update(std::mem::take(&mut small)).await?;
                small_bytes = 0;
            }
        }
        if !small.is_empty() {
            store.batch_update(small).await?;
        }
        futures::stream::iter(large)
            .map(|(d, path)| async move {
                let file = tokio::fs::File::open(&path).await?;
                let stream = tokio_util::io::ReaderStream::with_capacity(file, merkle::CHUNK_SIZE)
                    .map(|r| r.map_err(StoreError::from));
                store.put(&d, Box::pin(stream)).await
            })
            .buffer_unordered(UPLOAD_CONCURRENCY)
            .try_collect::<()>()
            .await?;
        Ok((sent, bytes))
    }
}

async fn read_small(path: PathBuf) -> Result<Bytes, StoreError> {
    Ok(Bytes::from(tokio::fs::read(path).await?))
}

/// Hashes a regular file (without following a symlink at `path`); returns its digest and
/// whether its owner-execute bit is set.
pub fn hash_file(path: &Path) -> std::io::Result<(Digest, bool)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = f.metadata()?;
    let mut hasher = DigestHasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((hasher.finish(), meta.permissions().mode() & 0o100 != 0))
}

/// What a listed output is expected to be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    File,
    Directory,
    /// `output_paths`: whatever is there.
    Any,
}

/// Options of [`collect`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CollectOptions {
    /// Report symlinks whose target leaves the input root instead of refusing them.
    pub allow_escaping_symlinks: bool,
}

/// Collects the outputs `command` declares from the input root `root` (after the action ran
/// and every process of it is gone): the returned `ActionResult` has only output fields set.
/// Blocking; run it on a blocking thread.
pub fn collect(
    root: &Path,
    command: &Command,
    working_dir: &RootPath,
    options: CollectOptions,
    uploads: &mut Uploads,
) -> Result<ActionResult, OutputError> {
    let mut result = ActionResult::default();
    let mut c = Collector {
        root,
        working_dir,
        options,
        format: command.output_directory_format(),
        uploads,
        result: &mut result,
    };
    if !command.output_paths.is_empty() {
        for p in &command.output_paths {
            c.one(p, Expect::Any)?;
        }
    } else {
        #[allow(deprecated)]
        for p in &command.output_files {
            c.one(p, Expect::File)?;
        }
        #[allow(deprecated)]
        for p in &command.output_directories {
            c.one(p, Expect::Directory)?;
        }
    }
    Ok(result)
}

struct Collector<'a> {
    root: &'a Path,
    working_dir: &'a RootPath,
    options: CollectOptions,
    format: OutputDirectoryFormat,
    uploads: &'a mut Uploads,
    result: &'a mut ActionResult,
}

impl Collector<'_> {
    fn one(&mut self, listed: &str, expect: Expect) -> Result<(), OutputError> {
        let path = paths::normalize(self.working_dir, listed)
            .map_err(|e| OutputError::Refused(format!("output {listed:?}: {e}")))?;
        let real = match paths::resolve(self.root, &path, false) {
            Err(e) => return Err(OutputError::Refused(format!("output {listed:?}: {e}"))),
            Ok(Resolved::Missing) => return Ok(()),
            Ok(Resolved::At(real)) => real,
        };
        let full = paths::join(self.root, &real);
        let meta = match std::fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(OutputError::Io(format!("{}: {e}", full.display()))),
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            return self.symlink(listed, &real, expect);
        }
        if kind.is_file() {
            if expect == Expect::Directory {
                return Err(OutputError::Refused(format!(
                    "output directory {listed:?} is a regular file"
                )));
            }
            let (digest, is_executable) =
                hash_file(&full).map_err(|e| OutputError::Io(format!("{listed:?}: {e}")))?;
            self.uploads.add_file(digest, full);
            self.result.output_files.push(OutputFile {
                path: listed.to_string(),
                digest: Some(digest.to_proto()),
                is_executable,
                contents: Vec::new(),
                node_properties: None,
            });
            return Ok(());
        }
        if kind.is_dir() {
            if expect == Expect::File {
                return Err(OutputError::Refused(format!(
                    "output file {listed:?} is a directory"
                )));
            }
            return self.directory(listed, &real, &full);
        }
        Err(OutputError::Refused(format!(
            "output {listed:?} is neither a file, a directory nor a symlink"
        )))
    }

    fn symlink(
        &mut self,
        listed: &str,
        real: &RootPath,
        expect: Expect,
    ) -> Result<(), OutputError> {
        let full = paths::join(self.root, real);
        let target = std::fs::read_link(&full)
            .map_err(|e| OutputError::Io(format!("{listed:?}: {e}")))?
            .into_os_string()
            .into_string()
            .map_err(|_| {
                OutputError::Refused(format!("symlink {listed:?} has a non-UTF-8 target"))
            })?;
        let parent = &real[..real.len().saturating_sub(1)];
        let escapes = paths::symlink_escapes(self.root, parent, &target);
        if escapes && !self.options.allow_escaping_symlinks {
            return Err(OutputError::Refused(format!(
                "output {listed:?} is a symlink to {target:?}, outside the input root"
            )));
        }
        // What the link points to, when it stays inside the root.
        let pointee = match paths::resolve(self.root, real, true) {
            Ok(Resolved::At(p)) if !escapes => std::fs::metadata(paths::join(self.root, &p)).ok(),
            _ => None,
        };
        let is_file = pointee.as_ref().is_some_and(|m| m.is_file());
        let is_dir = pointee.as_ref().is_some_and(|m| m.is_dir());
        let node = OutputSymlink {
            path: listed.to_string(),
            target,
            node_properties: None,
        };
        #[allow(deprecated)]
        match expect {
            Expect::File if !is_file && !escapes => Err(OutputError::Refused(format!(
                "output file {listed:?} is a symlink to something that is not a file"
            ))),
            Expect::Directory if !is_dir && !escapes => Err(OutputError::Refused(format!(
                "output directory {listed:?} is a symlink to something that is not a directory"
            ))),
            Expect::File => {
                self.result.output_file_symlinks.push(node);
                Ok(())
            }
            Expect::Directory => {
                self.result.output_directory_symlinks.push(node);
                Ok(())
            }
            Expect::Any => {
                // 2.0 readers of a 2.1 result find it in the typed field as well.
                if is_file {
                    self.result.output_file_symlinks.push(node.clone());
                } else if is_dir {
                    self.result.output_directory_symlinks.push(node.clone());
                }
                self.result.output_symlinks.push(node);
                Ok(())
            }
        }
    }

    fn directory(&mut self, listed: &str, real: &RootPath, full: &Path) -> Result<(), OutputError> {
        let tree = merkle::build_tree_blocking(full).map_err(|e| match e {
            MerkleError::Io { .. } | MerkleError::Internal(_) => OutputError::Io(e.to_string()),
            other => OutputError::Refused(format!("output directory {listed:?}: {other}")),
        })?;
        if !self.options.allow_escaping_symlinks {
            self.check_symlinks(listed, real, &tree.directories)?;
        }
        for f in &tree.files {
            self.uploads.add_file(f.digest, f.path.clone());
        }
        let tree_digest = self
            .uploads
            .add_blob(Bytes::from(tree.tree_message().encode_to_vec()));
        let root_directory_digest = if self.format == OutputDirectoryFormat::TreeOnly {
            None
        } else {
            for (_, dir) in &tree.directories {
                self.uploads.add_blob(Bytes::from(dir.encode_to_vec()));
            }
            Some(tree.root_digest.to_proto())
        };
        self.result.output_directories.push(OutputDirectory {
            path: listed.to_string(),
            tree_digest: Some(tree_digest.to_proto()),
            is_topologically_sorted: false,
            root_directory_digest,
        });
        Ok(())
    }

    /// Refuses symlinks inside an output directory that point out of the input root.
    fn check_symlinks(
        &self,
        listed: &str,
        real: &RootPath,
        dirs: &[(Digest, Directory)],
    ) -> Result<(), OutputError> {
        let by_digest: HashMap<Digest, &Directory> = dirs.iter().map(|(d, x)| (*d, x)).collect();
        let Some((root, _)) = dirs.first() else {
            return Ok(());
        };
        let mut stack = vec![(*root, real.clone())];
        while let Some((d, at)) = stack.pop() {
            let Some(dir) = by_digest.get(&d) else {
                continue;
            };
            for s in &dir.symlinks {
                if paths::symlink_escapes(self.root, &at, &s.target) {
                    return Err(OutputError::Refused(format!(
                        "output directory {listed:?} holds the symlink {} -> {:?}, outside the \
                         input root",
                        paths::show(&[at.clone(), vec![s.name.clone()]].concat()),
                        s.target
                    )));
                }
            }
            for sub in &dir.directories {
                if let Ok(c) = Digest::from_proto(sub.digest.as_ref()) {
                    let mut p = at.clone();
                    p.push(sub.name.clone());
                    stack.push((c, p));
                }
            }
        }
        Ok(())
    }
}
