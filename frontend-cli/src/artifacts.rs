//! Final artifacts into `target/[<triple>/]<profile>/` where cargo puts them: binaries and
//! examples under their target names, libraries as `lib<name>.rlib` (`.so`, `.a`), test
//! executables in `deps/`. Intermediate outputs stay in the CAS. A file already there with the
//! right content is left alone.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use cas::store::BlobStore as _;
use cas::ByteRange;
use futures::StreamExt as _;
use resolver::plan::layout;
use resolver::unit_graph::Mode;
use resolver::{BuildMode, Plan, UnitKind};
use serde_json::json;
use tokio::io::AsyncWriteExt as _;

use crate::client::FarmClient;
use crate::digest_cache::DigestCache;
use crate::reporter::{manifest_path, target_json, Reporter};
use crate::results::{FileOut, Results};

/// One file to place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    pub unit: usize,
    /// Name in the action's out directory.
    pub output: String,
    /// Where it goes locally.
    pub dest: PathBuf,
}

/// The artifacts of the root units, as cargo lays them out.
pub fn root_artifacts(plan: &Plan) -> Vec<Artifact> {
    let mut out = Vec::new();
    if plan.mode == BuildMode::Check {
        return out;
    }
    // Roots, and the binaries integration tests run (cargo places those too).
    let mut units: Vec<usize> = plan.roots.clone();
    for &r in &plan.roots {
        let root = plan.unit(r);
        if root.unit.mode == Mode::Test && root.unit.target.is_test_target() {
            units.extend(root.unit.dependencies.iter().map(|d| d.index).filter(|&d| {
                plan.unit(d).unit.target.is_bin() && plan.unit(d).unit.mode != Mode::Test
            }));
        }
    }
    units.sort_unstable();
    units.dedup();
    for i in units {
        let u = plan.unit(i);
        if u.kind != UnitKind::Compile {
            continue;
        }
        let dir = plan
            .target_directory()
            .join(resolver::rustc::target_subdir(plan, u))
            .join(&plan.profile_dir);
        let t = &u.unit.target;
        for output in &u.outputs {
            if output.ends_with(".d") || output.ends_with(".rmeta") {
                continue;
            }
            let dest = if u.unit.mode == Mode::Test {
                dir.join("deps").join(output)
            } else if t.is_bin() {
                dir.join(&t.name)
            } else if t.is_example() {
                dir.join("examples").join(&t.name)
            } else {
                // lib<crate>-<hash>.rlib -> lib<crate>.rlib
                dir.join(output.replacen(&u.extra_filename, "", 1))
            };
            out.push(Artifact {
                unit: i,
                output: output.clone(),
                dest,
            });
        }
    }
    out
}

/// Downloads `artifacts` (skipping files already up to date); returns how many were written.
pub async fn place(
    plan: &Plan,
    client: &FarmClient,
    results: &Results,
    digests: &DigestCache,
    reporter: &Reporter,
    artifacts: &[Artifact],
) -> Result<usize> {
    let mut written = 0;
    for a in artifacts {
        let Some(file) = results.file(a.unit, &a.output) else {
            anyhow::bail!(
                "{} produced no {} to place at {}",
                plan.describe(a.unit),
                a.output,
                a.dest.display()
            );
        };
        if !up_to_date(digests, &a.dest, &file) {
            download(client, &file, &a.dest).await?;
            written += 1;
        }
    }
    let placed: std::collections::BTreeSet<usize> = artifacts.iter().map(|a| a.unit).collect();
    for i in placed {
        let files: Vec<String> = artifacts
            .iter()
            .filter(|a| a.unit == i)
            .map(|a| a.dest.display().to_string())
            .collect();
        if files.is_empty() {
            continue;
        }
        let u = plan.unit(i);
        let executable =
            (u.unit.target.is_bin() || u.unit.mode == Mode::Test || u.unit.target.is_example())
                .then(|| files.first().cloned())
                .flatten();
        reporter.message(json!({
            "reason": "compiler-artifact",
            "package_id": u.package_id(),
            "manifest_path": manifest_path(plan, i),
            "target": target_json(plan, i),
            "profile": {
                "opt_level": u.unit.profile.opt_level,
                "debug_assertions": u.unit.profile.debug_assertions,
                "overflow_checks": u.unit.profile.overflow_checks,
                "test": u.unit.mode == Mode::Test,
            },
            "features": u.unit.features,
            "filenames": files,
            "executable": executable,
            "fresh": results.get(i).map(|r| r.cached).unwrap_or(false),
        }));
    }
    let _ = layout::OUT;
    Ok(written)
}

fn up_to_date(digests: &DigestCache, dest: &Path, file: &FileOut) -> bool {
    match digests.digest(dest) {
        Ok(d) => d.digest == file.digest && d.executable == file.executable,
        Err(_) => false,
    }
}

/// Streams a blob to `dest` through a temporary file and a rename.
async fn download(client: &FarmClient, file: &FileOut, dest: &Path) -> Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.farm-{}",
        dest.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("artifact"),
        std::process::id()
    ));
    let mut out = tokio::fs::File::create(&tmp)
        .await
        .with_context(|| format!("creating {}", tmp.display()))?;
    let mut stream = client
        .store
        .get(&file.digest, ByteRange::ALL)
        .await
        .with_context(|| format!("fetching {} from the farm", dest.display()))?;
    let mut hasher = cas::DigestHasher::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("fetching {}", dest.display()))?;
        hasher.update(&chunk);
        out.write_all(&chunk)
            .await
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    out.flush().await?;
    drop(out);
    if hasher.finish() != file.digest {
        let _ = tokio::fs::remove_file(&tmp).await;
        anyhow::bail!("the farm sent {} with the wrong content", dest.display());
    }
    let mode = if file.executable { 0o755 } else { 0o644 };
    tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).await?;
    tokio::fs::rename(&tmp, dest)
        .await
        .with_context(|| format!("moving the artifact into {}", dest.display()))?;
    Ok(())
}
