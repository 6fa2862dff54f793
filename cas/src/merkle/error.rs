//! [`MerkleError`]: everything that can go wrong building, uploading, fetching or materializing a
//! tree, with the path in the tree it happened at, and its mapping to gRPC status codes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bazel_remote_apis::google::{protobuf::Any, rpc};
use prost::Message as _;

use crate::digest::Digest;
use crate::error::StoreError;

/// Whether a missing blob was wanted as a file's content or as a `Directory` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobKind {
    File,
    Directory,
}

/// A blob a tree refers to that the store does not hold, and where in the tree it was needed
/// (relative to the tree's root; empty for the root itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingBlob {
    pub digest: Digest,
    pub path: PathBuf,
    pub kind: BlobKind,
}

/// Why a tree could not be built, uploaded, fetched or materialized.
///
/// Paths are local filesystem paths for I/O and upload errors, and paths relative to the tree's
/// root (shown as `.` for the root) for errors about a stored tree.
#[derive(Debug, thiserror::Error)]
pub enum MerkleError {
    #[error("I/O error at {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store error while {context}: {source}")]
    Store {
        context: String,
        #[source]
        source: StoreError,
    },
    #[error("{} is a {kind}; only regular files, directories and symlinks can be uploaded", .path.display())]
    UnsupportedFileType { path: PathBuf, kind: &'static str },
    #[error("{} has a name that is not valid UTF-8; REAPI names must be UTF-8", .path.display())]
    NonUtf8Name { path: PathBuf },
    #[error("symlink {} has a target that is not valid UTF-8; REAPI targets must be UTF-8", .path.display())]
    NonUtf8Target { path: PathBuf },
    #[error("{}", missing_message(.0))]
    MissingBlobs(Vec<MissingBlob>),
    #[error("invalid directory {digest} at {}: {reason}", show(.path))]
    InvalidDirectory {
        digest: Digest,
        path: PathBuf,
        reason: String,
    },
    #[error("stored blob {digest} (for {}) is corrupt: {reason}", show(.path))]
    Corrupt {
        digest: Digest,
        path: PathBuf,
        reason: String,
    },
    #[error("content written to {} does not match its digest {expected}: got {found}", .path.display())]
    ContentMismatch {
        path: PathBuf,
        expected: Digest,
        found: String,
    },
    #[error("symlink {} -> {target:?} points outside the tree (set allow_escaping_symlinks to permit it)", show(.path))]
    EscapingSymlink { path: PathBuf, target: String },
    #[error("{} changed while it was being uploaded (it had been hashed as {expected}); retry", .path.display())]
    FileChanged { path: PathBuf, expected: Digest },
    #[error("tree {root} expands to more than {limit} entries")]
    TooManyEntries { root: Digest, limit: u64 },
    #[error("internal error: {0}")]
    Internal(String),
}

impl MerkleError {
    /// The blobs a tree needs that the store lacks, if that is what this error is about.
    pub fn missing_blobs(&self) -> Option<&[MissingBlob]> {
        match self {
            MerkleError::MissingBlobs(m) => Some(m),
            _ => None,
        }
    }

    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MerkleError + '_ {
        move |source| MerkleError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn store(context: impl Into<String>) -> impl FnOnce(StoreError) -> MerkleError {
        let context = context.into();
        move |source| MerkleError::Store { context, source }
    }
}

/// Shows a tree-relative path, the root being `.`.
pub(crate) fn show(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        ".".to_string()
    } else {
        path.display().to_string()
    }
}

/// How many missing blobs an error message lists before summarising the rest.
const LISTED: usize = 10;

fn missing_message(missing: &[MissingBlob]) -> String {
    let mut m = format!("{} blob(s) missing from the CAS:", missing.len());
    for b in missing.iter().take(LISTED) {
        let kind = match b.kind {
            BlobKind::File => "file",
            BlobKind::Directory => "directory",
        };
        let _ = write!(m, " {kind} {} ({}),", show(&b.path), b.digest);
    }
    m.pop();
    if missing.len() > LISTED {
        let _ = write!(m, " and {} more", missing.len() - LISTED);
    }
    m
}

/// `google.rpc.PreconditionFailure`, which REAPI clients read to learn which inputs to upload
/// again (not among the generated types we depend on).
#[derive(Clone, PartialEq, prost::Message)]
struct PreconditionFailure {
    #[prost(message, repeated, tag = "1")]
    violations: Vec<Violation>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Violation {
    #[prost(string, tag = "1")]
    r#type: String,
    #[prost(string, tag = "2")]
    subject: String,
    #[prost(string, tag = "3")]
    description: String,
}

/// FAILED_PRECONDITION with one `MISSING` violation per blob, as REAPI's Execute specifies.
fn missing_status(message: String, missing: &[MissingBlob]) -> tonic::Status {
    let failure = PreconditionFailure {
        violations: missing
            .iter()
            .map(|b| Violation {
                r#type: "MISSING".to_string(),
                subject: format!("blobs/{}/{}", b.digest.hash_hex(), b.digest.size()),
                description: format!("needed at {}", show(&b.path)),
            })
            .collect(),
    };
    let code = tonic::Code::FailedPrecondition;
    let status = rpc::Status {
        code: code as i32,
        message: message.clone(),
        details: vec![Any {
            type_url: "type.googleapis.com/google.rpc.PreconditionFailure".to_string(),
            value: failure.encode_to_vec(),
        }],
    };
    tonic::Status::with_details(code, message, status.encode_to_vec().into())
}

impl From<MerkleError> for tonic::Status {
    fn from(e: MerkleError) -> Self {
        use tonic::Status;
        let message = e.to_string();
        match e {
            MerkleError::MissingBlobs(missing) => missing_status(message, &missing),
            MerkleError::Store { source, .. } => {
                let code = tonic::Status::from(source).code();
                Status::new(code, message)
            }
            MerkleError::UnsupportedFileType { .. }
            | MerkleError::NonUtf8Name { .. }
            | MerkleError::NonUtf8Target { .. }
            | MerkleError::InvalidDirectory { .. }
            | MerkleError::EscapingSymlink { .. }
            | MerkleError::TooManyEntries { .. } => Status::invalid_argument(message),
            MerkleError::Corrupt { .. } | MerkleError::ContentMismatch { .. } => {
                Status::data_loss(message)
            }
            MerkleError::FileChanged { .. } => Status::aborted(message),
            MerkleError::Io { .. } | MerkleError::Internal(_) => Status::internal(message),
        }
    }
}
