//! What finished actions produced, by unit: output files by exec-root path, the `OUT_DIR`
//! tree of build-script runs, and stdout/stderr.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{anyhow, Context as _, Result};
use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bytes::Bytes;
use cas::merkle::DirectoryIndex;
use cas::Digest;
use parking_lot::RwLock;
use prost::Message as _;
use resolver::plan::layout;

use crate::client::FarmClient;
use crate::inputs::StoredTree;

/// One output file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileOut {
    pub digest: Digest,
    pub executable: bool,
}

/// The result of one unit's action.
#[derive(Clone, Debug, Default)]
pub struct UnitResult {
    /// Output files by exec-root-relative path.
    pub files: HashMap<String, FileOut>,
    /// The (first) output directory, for build-script runs.
    pub out_dir: Option<StoredTree>,
    /// Its `Directory` messages, encoded: a result stores only the `Tree`, and an input root
    /// that mounts the directory needs each of them in the CAS.
    pub out_dir_blobs: Vec<(Digest, Bytes)>,
    pub stdout: Bytes,
    pub stderr: Bytes,
    pub exit_code: i32,
    pub cached: bool,
}

impl UnitResult {
    /// Reads an ActionResult of an action that ran in `working_directory`.
    pub async fn from_action_result(
        client: &FarmClient,
        result: &reapi::ActionResult,
        working_directory: &str,
        cached: bool,
    ) -> Result<UnitResult> {
        let mut files = HashMap::new();
        for f in &result.output_files {
            let digest = Digest::from_proto(f.digest.as_ref())
                .with_context(|| format!("output {} has a malformed digest", f.path))?;
            files.insert(
                join(working_directory, &f.path),
                FileOut {
                    digest,
                    executable: f.is_executable,
                },
            );
        }
        let mut out_dir = None;
        let mut out_dir_blobs = Vec::new();
        if let Some(d) = result.output_directories.first() {
            let tree_digest = Digest::from_proto(d.tree_digest.as_ref())
                .with_context(|| format!("output directory {} has a malformed digest", d.path))?;
            let bytes = client.read_blob(&tree_digest).await?;
            let tree = reapi::Tree::decode(&bytes[..])
                .map_err(|e| anyhow!("output directory {}: bad Tree message: {e}", d.path))?;
            let mut index = DirectoryIndex::new();
            let root = index.insert_tree(&tree)?;
            for dir in tree.root.iter().chain(tree.children.iter()) {
                let (digest, bytes) = cas::merkle::encode_directory(dir);
                out_dir_blobs.push((digest, bytes));
            }
            out_dir = Some(StoredTree { root, index });
        }
        let stdout =
            crate::client::result_text(client, &result.stdout_raw, result.stdout_digest.as_ref())
                .await?;
        let stderr =
            crate::client::result_text(client, &result.stderr_raw, result.stderr_digest.as_ref())
                .await?;
        Ok(UnitResult {
            files,
            out_dir,
            out_dir_blobs,
            stdout,
            stderr,
            exit_code: result.exit_code,
            cached,
        })
    }

    /// Every blob this result references (to mark present in the CAS).
    pub fn digests(&self) -> Vec<Digest> {
        self.files.values().map(|f| f.digest).collect()
    }
}

/// `path` relative to `dir` (both exec-root-relative), normalised (`..` popped).
pub fn join(dir: &str, path: &str) -> String {
    let mut parts: Vec<&str> = dir.split('/').filter(|s| !s.is_empty()).collect();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// Results of this build so far; cheap to share.
#[derive(Debug, Default)]
pub struct Results {
    units: RwLock<HashMap<usize, Arc<UnitResult>>>,
}

impl Results {
    pub fn insert(&self, unit: usize, result: UnitResult) -> Arc<UnitResult> {
        let r = Arc::new(result);
        self.units.write().insert(unit, r.clone());
        r
    }

    pub fn get(&self, unit: usize) -> Option<Arc<UnitResult>> {
        self.units.read().get(&unit).cloned()
    }

    /// Output `file` (a name in the unit's out directory) of `unit`.
    pub fn file(&self, unit: usize, file: &str) -> Option<FileOut> {
        let key = format!("{}/{file}", layout::OUT);
        self.units.read().get(&unit)?.files.get(&key).copied()
    }

    pub fn out_dir(&self, unit: usize) -> Option<StoredTree> {
        self.units.read().get(&unit)?.out_dir.clone()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn joins() {
        assert_eq!(
            super::join("crates/a", "../../.cargo-farm/x"),
            ".cargo-farm/x"
        );
        assert_eq!(super::join("", ".cargo-farm/out/f"), ".cargo-farm/out/f");
    }
}
