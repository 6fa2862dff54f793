//! The REAPI ActionCache service: GetActionResult and UpdateActionResult over
//! [`Storage::action_cache`].
//!
//! Entries are prost-encoded `ActionResult`s stored under [`action_cache_key`], a digest derived
//! from the instance name and the action digest, so instance names partition the cache.
//!
//! With [`StorageOptions::completeness_check`](super::StorageOptions::completeness_check) on, a
//! result is only returned while every blob it references (output files, stdout/stderr, output
//! directory Trees and the files inside them) is still in the CAS; otherwise the answer is
//! NOT_FOUND, so clients rebuild instead of failing to download evicted outputs.
//!
//! Inline contents sent with an update are moved into the CAS and replaced by their digests;
//! inline contents are only returned when asked for, within [`INLINE_BUDGET_BYTES`].

use std::collections::HashSet;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bytes::Bytes;
use prost::Message;
use reapi::action_cache_server::{ActionCache, ActionCacheServer};
use sha2::{Digest as _, Sha256};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use super::cas::{check_digest_function, max_message_bytes, parse_digest};
use super::{observe, Storage};
use crate::digest::Digest;
use crate::metrics;
use crate::store::{BlobStore, ByteRange};

/// Most bytes of stdout, stderr and output files inlined into one GetActionResult answer.
pub const INLINE_BUDGET_BYTES: u64 = 1024 * 1024;

/// Largest output-directory `Tree` the completeness check reads into memory. A result names its
/// Trees by digest, and any CAS blob can be named: a bigger one makes the result incomplete (it
/// cannot be checked) instead of costing its size in server memory on every lookup.
pub const MAX_CHECKED_TREE_BYTES: u64 = 64 * 1024 * 1024;

/// The action-cache store key of `action` within `instance_name`:
/// SHA-256 of `"farm-ac-v1\0" + instance_name + "\0" + "HASH/SIZE"`, with the action's size.
pub fn action_cache_key(instance_name: &str, action: &Digest) -> Digest {
    let mut sha = Sha256::new();
    sha.update(b"farm-ac-v1\0");
    sha.update(instance_name.as_bytes());
    sha.update(b"\0");
    sha.update(action.to_string().as_bytes());
    Digest::new(sha.finalize().into(), action.size())
}

/// Why some output of `result` is not available from the CAS, or `None` if all are.
///
/// Output directory Trees are fetched and decoded one at a time (a missing, corrupt or larger
/// than [`MAX_CHECKED_TREE_BYTES`] Tree makes the result incomplete); every file digest they
/// list joins one bulk `find_missing`.
pub async fn missing_outputs(
    cas: &dyn BlobStore,
    result: &reapi::ActionResult,
) -> Result<Option<String>, Status> {
    let mut digests: HashSet<Digest> = HashSet::new();
    for file in &result.output_files {
        match Digest::from_proto(file.digest.as_ref()) {
            Ok(d) => digests.insert(d),
            Err(e) => return Ok(Some(format!("output file {:?}: {e}", file.path))),
        };
    }
    for (name, d) in [
        ("stdout", &result.stdout_digest),
        ("stderr", &result.stderr_digest),
    ] {
        if let Some(d) = d {
            match Digest::parse(&d.hash, d.size_bytes) {
                Ok(d) => digests.insert(d),
                Err(e) => return Ok(Some(format!("{name} digest: {e}"))),
            };
        }
    }
    let mut trees = Vec::new();
    for dir in &result.output_directories {
        match Digest::from_proto(dir.tree_digest.as_ref()) {
            Ok(d) => trees.push((dir.path.as_str(), d)),
            Err(e) => return Ok(Some(format!("output directory {:?}: {e}", dir.path))),
        }
    }
    for (path, tree_digest) in &trees {
        if tree_digest.size() > MAX_CHECKED_TREE_BYTES {
            return Ok(Some(format!(
                "the Tree {tree_digest} of output directory {path:?} is larger than the \
                 {MAX_CHECKED_TREE_BYTES} bytes this server reads to check a result"
            )));
        }
        let data = match cas.get_bytes(tree_digest, ByteRange::ALL).await {
            Ok(data) => data,
            Err(e) if e.is_not_found() => {
                return Ok(Some(format!(
                    "the Tree {tree_digest} of output directory {path:?} was evicted from the CAS"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        let tree = match reapi::Tree::decode(data) {
            Ok(tree) => tree,
            Err(e) => {
                return Ok(Some(format!(
                    "the Tree {tree_digest} of output directory {path:?} is corrupt: {e}"
                )))
            }
        };
        for dir in tree.root.iter().chain(tree.children.iter()) {
            for file in &dir.files {
                match Digest::from_proto(file.digest.as_ref()) {
                    Ok(d) => digests.insert(d),
                    Err(e) => {
                        return Ok(Some(format!(
                            "file {:?} in output directory {path:?}: {e}",
                            file.name
                        )))
                    }
                };
            }
        }
    }
    let digests: Vec<Digest> = digests.into_iter().collect();
    let missing = cas.find_missing(&digests).await?;
    Ok(missing.first().map(|first| {
        format!(
            "{} of its {} output blobs are no longer in the CAS (evicted), e.g. {first}",
            missing.len(),
            digests.len()
        )
    }))
}

/// Where an inlined blob goes in an ActionResult.
#[derive(Clone, Copy)]
enum Slot {
    Stdout,
    Stderr,
    File(usize),
}

/// Plans one inline slot: `raw` already holding bytes (kept, charged to the budget), or a blob
/// to fetch if it fits the budget.
fn plan_inline(
    plan: &mut Vec<(Slot, Digest)>,
    budget: &mut u64,
    slot: Slot,
    raw: &[u8],
    digest: Option<&reapi::Digest>,
) {
    if !raw.is_empty() {
        *budget = budget.saturating_sub(raw.len() as u64);
        return;
    }
    if let Ok(d) = Digest::from_proto(digest) {
        if d.size() > 0 && d.size() <= *budget {
            *budget -= d.size();
            plan.push((slot, d));
        }
    }
}

/// Applies the GetActionResult inlining hints: fills what was asked for (up to
/// [`INLINE_BUDGET_BYTES`]; blobs that cannot be read are simply not inlined) and strips inline
/// contents that were not asked for but have a digest.
async fn inline_outputs(
    cas: &dyn BlobStore,
    result: &mut reapi::ActionResult,
    req: &reapi::GetActionResultRequest,
) {
    let mut budget = INLINE_BUDGET_BYTES;
    let mut plan = Vec::new();
    if req.inline_stdout {
        let digest = result.stdout_digest.as_ref();
        plan_inline(
            &mut plan,
            &mut budget,
            Slot::Stdout,
            &result.stdout_raw,
            digest,
        );
    } else if result.stdout_digest.is_some() {
        result.stdout_raw.clear();
    }
    if req.inline_stderr {
        let digest = result.stderr_digest.as_ref();
        plan_inline(
            &mut plan,
            &mut budget,
            Slot::Stderr,
            &result.stderr_raw,
            digest,
        );
    } else if result.stderr_digest.is_some() {
        result.stderr_raw.clear();
    }
    let wanted: HashSet<&str> = req.inline_output_files.iter().map(String::as_str).collect();
    for (i, file) in result.output_files.iter_mut().enumerate() {
        if wanted.contains(file.path.as_str()) {
            let digest = file.digest.as_ref();
            plan_inline(
                &mut plan,
                &mut budget,
                Slot::File(i),
                &file.contents,
                digest,
            );
        } else if file.digest.is_some() {
            file.contents.clear();
        }
    }
    let fetched =
        futures::future::join_all(plan.iter().map(|(_, d)| cas.get_bytes(d, ByteRange::ALL))).await;
    for ((slot, digest), data) in plan.into_iter().zip(fetched) {
        let data = match data {
            Ok(data) if data.len() as u64 == digest.size() => data.to_vec(),
            Ok(_) | Err(_) => {
                tracing::debug!(%digest, "not inlining an output that cannot be read");
                continue;
            }
        };
        match slot {
            Slot::Stdout => result.stdout_raw = data,
            Slot::Stderr => result.stderr_raw = data,
            Slot::File(i) => {
                if let Some(file) = result.output_files.get_mut(i) {
                    file.contents = data;
                }
            }
        }
    }
}

/// Moves one inline buffer out of an update: checks it against `digest` (or derives the digest
/// when there is none), queues it for the CAS and leaves the canonical digest in its place.
fn take_inline(
    what: &str,
    raw: &mut Vec<u8>,
    digest: &mut Option<reapi::Digest>,
    uploads: &mut Vec<(Digest, Bytes)>,
) -> Result<(), Status> {
    let declared = match digest.as_ref() {
        Some(d) => Some(parse_digest(Some(d), &format!("digest of {what}"))?),
        None => None,
    };
    if raw.is_empty() {
        return Ok(());
    }
    let actual = Digest::of(raw);
    if let Some(declared) = declared {
        if declared != actual {
            return Err(Status::invalid_argument(format!(
                "inline contents of {what} hash to {actual}, not to its digest {declared}"
            )));
        }
    }
    *digest = Some(actual.to_proto());
    uploads.push((actual, Bytes::from(std::mem::take(raw))));
    Ok(())
}

/// Validates an uploaded ActionResult and moves its inline contents out, returning the blobs
/// to store in the CAS.
fn prepare_update(result: &mut reapi::ActionResult) -> Result<Vec<(Digest, Bytes)>, Status> {
    let mut uploads = Vec::new();
    for file in &mut result.output_files {
        let what = format!("output file {:?}", file.path);
        if file.digest.is_none() && file.contents.is_empty() {
            return Err(Status::invalid_argument(format!("{what} has no digest")));
        }
        take_inline(&what, &mut file.contents, &mut file.digest, &mut uploads)?;
    }
    take_inline(
        "stdout",
        &mut result.stdout_raw,
        &mut result.stdout_digest,
        &mut uploads,
    )?;
    take_inline(
        "stderr",
        &mut result.stderr_raw,
        &mut result.stderr_digest,
        &mut uploads,
    )?;
    for dir in &result.output_directories {
        let what = format!("tree digest of output directory {:?}", dir.path);
        parse_digest(dir.tree_digest.as_ref(), &what)?;
        if let Some(root) = &dir.root_directory_digest {
            let what = format!("root directory digest of output directory {:?}", dir.path);
            parse_digest(Some(root), &what)?;
        }
    }
    Ok(uploads)
}

/// The ActionCache service over one [`Storage`].
#[derive(Clone, Debug)]
pub struct ActionCacheService {
    storage: Storage,
}

impl ActionCacheService {
    pub fn new(storage: Storage) -> Self {
        ActionCacheService { storage }
    }

    /// The stored result, before completeness checks and inlining; NOT_FOUND if there is none
    /// or it cannot be decoded.
    async fn lookup(
        &self,
        instance_name: &str,
        action: &Digest,
    ) -> Result<reapi::ActionResult, Status> {
        let key = action_cache_key(instance_name, action);
        let data = match self
            .storage
            .action_cache
            .get_bytes(&key, ByteRange::ALL)
            .await
        {
            Ok(data) => data,
            Err(e) if e.is_not_found() => {
                return Err(Status::not_found(format!(
                    "no cached result for action {action} in instance {instance_name:?}"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        reapi::ActionResult::decode(data).map_err(|e| {
            tracing::warn!(%action, instance_name, error = %e,
                "undecodable action-cache entry; answering it as a miss");
            Status::not_found(format!(
                "the cached result for action {action} is unreadable; treated as a miss"
            ))
        })
    }

    async fn get_action_result(
        &self,
        req: reapi::GetActionResultRequest,
    ) -> Result<reapi::ActionResult, Status> {
        check_digest_function(req.digest_function)?;
        let action = parse_digest(req.action_digest.as_ref(), "action digest")?;
        let found = self.lookup(&req.instance_name, &action).await;
        let mut result = match found {
            Ok(result) => result,
            Err(status) => {
                if status.code() == tonic::Code::NotFound {
                    metrics::record_lookup("action_cache", false);
                }
                return Err(status);
            }
        };
        if self.storage.options.completeness_check {
            if let Some(why) = missing_outputs(&*self.storage.cas, &result).await? {
                metrics::record_lookup("action_cache", false);
                return Err(Status::not_found(format!(
                    "the cached result for action {action} is incomplete and was not returned: \
                     {why}; the action must be run again"
                )));
            }
        }
        inline_outputs(&*self.storage.cas, &mut result, &req).await;
        metrics::record_lookup("action_cache", true);
        Ok(result)
    }

    async fn update_action_result(
        &self,
        req: reapi::UpdateActionResultRequest,
    ) -> Result<reapi::ActionResult, Status> {
        check_digest_function(req.digest_function)?;
        let action = parse_digest(req.action_digest.as_ref(), "action digest")?;
        let mut result = req
            .action_result
            .ok_or_else(|| Status::invalid_argument("missing action_result"))?;
        let uploads = prepare_update(&mut result)?;
        let inline_bytes: u64 = uploads.iter().map(|(d, _)| d.size()).sum();
        let cas = &*self.storage.cas;
        let stored = futures::future::join_all(
            uploads
                .into_iter()
                .map(|(d, data)| async move { cas.put_bytes(&d, data).await }),
        )
        .await;
        for outcome in stored {
            outcome?;
        }
        metrics::BYTES
            .with_label_values(&["written"])
            .inc_by(inline_bytes);
        let key = action_cache_key(&req.instance_name, &action);
        self.storage
            .action_cache
            .put_bytes(&key, Bytes::from(result.encode_to_vec()))
            .await?;
        Ok(result)
    }
}

#[tonic::async_trait]
impl ActionCache for ActionCacheService {
    async fn get_action_result(
        &self,
        request: Request<reapi::GetActionResultRequest>,
    ) -> Result<Response<reapi::ActionResult>, Status> {
        observe(
            "ActionCache.GetActionResult",
            ActionCacheService::get_action_result(self, request.into_inner()),
        )
        .await
        .map(Response::new)
    }

    async fn update_action_result(
        &self,
        request: Request<reapi::UpdateActionResultRequest>,
    ) -> Result<Response<reapi::ActionResult>, Status> {
        observe(
            "ActionCache.UpdateActionResult",
            ActionCacheService::update_action_result(self, request.into_inner()),
        )
        .await
        .map(Response::new)
    }
}

/// The ActionCache service, with message limits matching the CAS service's.
pub fn service(storage: &Storage) -> ActionCacheServer<ActionCacheService> {
    let limit = max_message_bytes(&storage.options);
    ActionCacheServer::new(ActionCacheService::new(storage.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit)
        .accept_compressed(CompressionEncoding::Zstd)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::ChunkStream;

    /// A memory store that records every digest read from it.
    #[derive(Debug)]
    struct Recording {
        inner: MemoryStore,
        reads: Mutex<Vec<Digest>>,
    }

    #[async_trait::async_trait]
    impl BlobStore for Recording {
        async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, crate::StoreError> {
            self.inner.find_missing(digests).await
        }
        async fn get(
            &self,
            digest: &Digest,
            range: ByteRange,
        ) -> Result<ChunkStream, crate::StoreError> {
            self.reads.lock().unwrap().push(*digest);
            self.inner.get(digest, range).await
        }
        async fn put(&self, digest: &Digest, data: ChunkStream) -> Result<(), crate::StoreError> {
            self.inner.put(digest, data).await
        }
        fn kind(&self) -> &'static str {
            "recording"
        }
    }

    #[tokio::test]
    async fn an_oversized_tree_is_not_read_and_makes_the_result_incomplete() {
        let cas = Recording {
            inner: MemoryStore::new(1 << 20),
            reads: Mutex::default(),
        };
        let huge = Digest::new([7; 32], MAX_CHECKED_TREE_BYTES + 1);
        let result = reapi::ActionResult {
            output_directories: vec![reapi::OutputDirectory {
                path: "out".into(),
                tree_digest: Some(huge.to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let why = missing_outputs(&cas, &result).await.unwrap().unwrap();
        assert!(
            why.contains("larger than") && why.contains("\"out\""),
            "{why}"
        );
        assert!(
            cas.reads.lock().unwrap().is_empty(),
            "the Tree must not be read"
        );
    }
}
