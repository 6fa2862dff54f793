//! Loading an Action for execution and checking that everything it needs is in the CAS.
//!
//! Execute must refuse, with `FAILED_PRECONDITION` and a `google.rpc.PreconditionFailure`
//! listing every missing digest (REAPI), an action whose Action, Command, input-root
//! directories or input files are not stored, so the client uploads them and retries instead
//! of a worker failing later. The status is built by `cas::merkle`'s
//! `From<MerkleError> for tonic::Status` (one `MISSING` violation per blob, subject
//! `blobs/{hash}/{size}`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bytes::Bytes;
use cas::merkle::{self, BlobKind, MerkleError, MissingBlob};
use cas::store::{BlobStore, ByteRange};
use cas::Digest;
use prost::Message;
use tonic::Status;

use crate::platform::Platform;

/// Largest Action or Command read into memory (real ones are kilobytes).
pub const MAX_MESSAGE_BYTES: u64 = 64 << 20;

/// How many digests one `find_missing` call carries.
const FIND_MISSING_BATCH: usize = 10_000;

/// An Action ready to queue.
#[derive(Clone, Debug)]
pub struct LoadedAction {
    pub action: reapi::Action,
    /// The encoded Action and Command, as stored.
    pub action_bytes: Bytes,
    pub command_bytes: Bytes,
    /// What it requires of a worker (see [`crate::platform`]).
    pub platform: Platform,
    /// `Action.timeout`, if set.
    pub timeout: Option<Duration>,
}

/// The pseudo-path missing Action and Command blobs are reported at.
const ACTION_PATH: &str = "(the Action)";
const COMMAND_PATH: &str = "(the Command)";

fn missing(digest: Digest, path: impl Into<PathBuf>, kind: BlobKind) -> MissingBlob {
    MissingBlob {
        digest,
        path: path.into(),
        kind,
    }
}

/// Reads a small message blob; `Ok(None)` if the CAS lacks it.
async fn read_message(
    cas: &dyn BlobStore,
    digest: &Digest,
    what: &str,
) -> Result<Option<Bytes>, Status> {
    if digest.size() > MAX_MESSAGE_BYTES {
        return Err(Status::invalid_argument(format!(
            "the {what} {digest} is larger than the {MAX_MESSAGE_BYTES}-byte limit"
        )));
    }
    match cas.get_bytes(digest, ByteRange::ALL).await {
        Ok(data) => Ok(Some(data)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(Status::from(e)),
    }
}

/// Parses a digest field of the Action (INVALID_ARGUMENT naming it when bad).
fn field_digest(d: Option<&reapi::Digest>, what: &str) -> Result<Digest, Status> {
    Digest::from_proto(d).map_err(|e| Status::invalid_argument(format!("the Action's {what}: {e}")))
}

/// Loads the Action `digest` and its Command from `cas` and checks that its whole input root
/// is stored. Missing blobs (all of them, each once) → FAILED_PRECONDITION with a
/// PreconditionFailure; undecodable messages or bad digests → INVALID_ARGUMENT.
pub async fn load_action(cas: &dyn BlobStore, digest: &Digest) -> Result<LoadedAction, Status> {
    let Some(action_bytes) = read_message(cas, digest, "Action").await? else {
        let m = vec![missing(*digest, ACTION_PATH, BlobKind::File)];
        return Err(MerkleError::MissingBlobs(m).into());
    };
    let action = reapi::Action::decode(&action_bytes[..]).map_err(|e| {
        Status::invalid_argument(format!("blob {digest} is not an Action message: {e}"))
    })?;
    let command_digest = field_digest(action.command_digest.as_ref(), "command_digest")?;
    let root_digest = field_digest(action.input_root_digest.as_ref(), "input_root_digest")?;
    let timeout = match &action.timeout {
        None => None,
        Some(t) if t.seconds < 0 || t.nanos < 0 => {
            return Err(Status::invalid_argument(format!(
                "the Action's timeout {}s {}ns is negative",
                t.seconds, t.nanos
            )))
        }
        Some(t) => Some(Duration::new(
            t.seconds as u64,
            t.nanos.clamp(0, 999_999_999) as u32,
        )),
    };
    let (command, root_missing) = tokio::join!(
        read_message(cas, &command_digest, "Command"),
        missing_inputs(cas, &root_digest)
    );
    let command = command?;
    let mut all = Vec::new();
    if command.is_none() {
        all.push(missing(command_digest, COMMAND_PATH, BlobKind::File));
    }
    all.extend(root_missing?);
    let mut seen = HashSet::new();
    all.retain(|m| seen.insert(m.digest));
    if !all.is_empty() {
        return Err(MerkleError::MissingBlobs(all).into());
    }
    let command_bytes = command.unwrap_or_default();
    let decoded_command = reapi::Command::decode(&command_bytes[..]).map_err(|e| {
        Status::invalid_argument(format!(
            "blob {command_digest} is not a Command message: {e}"
        ))
    })?;
    let platform = Platform::of_action(&action, &decoded_command);
    Ok(LoadedAction {
        action,
        action_bytes,
        command_bytes,
        platform,
        timeout,
    })
}

/// Every blob of the input tree rooted at `root` the CAS lacks: the directories of the first
/// tree level that has missing ones, or else every missing file, with a path each.
pub async fn missing_inputs(
    cas: &dyn BlobStore,
    root: &Digest,
) -> Result<Vec<MissingBlob>, Status> {
    let dirs = match merkle::get_tree_with_digests(cas, root).await {
        Ok(dirs) => dirs,
        Err(MerkleError::MissingBlobs(m)) => return Ok(m),
        Err(e) => return Err(e.into()),
    };
    let mut files = Vec::new();
    let mut seen = HashSet::new();
    for (dir_digest, dir) in &dirs {
        for f in &dir.files {
            let d = Digest::from_proto(f.digest.as_ref()).map_err(|e| {
                Status::invalid_argument(format!(
                    "input directory {dir_digest}: file {:?} has an invalid digest: {e}",
                    f.name
                ))
            })?;
            // The empty blob is always present (REAPI); clients never upload it.
            if d != Digest::EMPTY && seen.insert(d) {
                files.push(d);
            }
        }
    }
    let mut absent = HashSet::new();
    for batch in files.chunks(FIND_MISSING_BATCH) {
        absent.extend(cas.find_missing(batch).await.map_err(Status::from)?);
    }
    if absent.is_empty() {
        return Ok(Vec::new());
    }
    Ok(locate(root, &dirs, &absent))
}

/// Finds a path in the tree for each of `absent`'s file digests (breadth first, names in
/// order), for the PreconditionFailure descriptions.
fn locate(
    root: &Digest,
    dirs: &[(Digest, reapi::Directory)],
    absent: &HashSet<Digest>,
) -> Vec<MissingBlob> {
    let by_digest: HashMap<Digest, &reapi::Directory> = dirs.iter().map(|(d, m)| (*d, m)).collect();
    let mut out = Vec::new();
    let mut found = HashSet::new();
    let mut visited = HashSet::from([*root]);
    let mut todo = VecDeque::from([(*root, PathBuf::new())]);
    while let Some((digest, path)) = todo.pop_front() {
        let Some(dir) = by_digest.get(&digest) else {
            continue;
        };
        for f in &dir.files {
            if let Ok(d) = Digest::from_proto(f.digest.as_ref()) {
                if absent.contains(&d) && found.insert(d) {
                    out.push(missing(d, path.join(&f.name), BlobKind::File));
                }
            }
        }
        for sub in &dir.directories {
            if let Ok(d) = Digest::from_proto(sub.digest.as_ref()) {
                if visited.insert(d) {
                    todo.push_back((d, path.join(&sub.name)));
                }
            }
        }
    }
    out
}
