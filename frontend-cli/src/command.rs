//! `cargo farm build|check` and `cargo farm up`, from flags to exit status.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use resolver::BuildMode;
use serde_json::json;

use crate::build_graph::{Build, Execution};
use crate::cli::{farm_home, BuildArgs, MessageFormat, UpArgs};
use crate::client::FarmClient;
use crate::digest_cache::DigestCache;
use crate::embedded::{EmbeddedFarm, EmbeddedOptions};
use crate::inputs::InputComposer;
use crate::reporter::Reporter;
use crate::uploader::Uploader;

/// Exit status of a failed build (cargo's).
pub const BUILD_FAILED: i32 = 101;

fn cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Runs a build or check; returns the process exit status.
pub async fn build(args: BuildArgs, mode: BuildMode) -> Result<i32> {
    let request = args.request(mode);
    let planning = request.clone();
    let plan = match tokio::task::spawn_blocking(move || resolver::resolve(&planning))
        .await
        .context("planning the build")?
    {
        Ok(plan) => plan,
        Err(e @ resolver::ResolveError::CannotModel { .. }) => {
            return crate::fallback::build_with_cargo(&args, &request, &e).await
        }
        Err(e) => return Err(e.into()),
    };
    let plan = Arc::new(plan);
    let home = farm_home(args.farm.farm_home.as_ref());
    std::fs::create_dir_all(&home)
        .with_context(|| format!("creating the farm home {}", home.display()))?;
    let digests = Arc::new(DigestCache::load(&home.join("file-digests")));

    let farm_args = crate::farm_config::resolve(&args.farm, &plan.packages.workspace_root, &home)?;
    let mut embedded = None;
    let (client, execution, where_) = if let Some(url) = &farm_args.remote {
        let client = FarmClient::connect(url, &farm_args.instance).await?;
        (client, Execution::Farm, "remote")
    } else if let Some(url) = &farm_args.remote_cache {
        let client = FarmClient::connect(url, &farm_args.instance).await?;
        let executor = local_executor(&home, &client).await?;
        (client, Execution::Local(Arc::new(executor)), "remote-cache")
    } else {
        let farm = EmbeddedFarm::start(EmbeddedOptions {
            home: home.clone(),
            listen: "127.0.0.1:0".parse().context("loopback address")?,
            workers: 1,
            slots: cpus(),
            max_bytes: 20 << 30,
            bwrap: PathBuf::from("bwrap"),
        })
        .await?;
        let client = FarmClient::connect(farm.url(), &farm_args.instance).await?;
        embedded = Some(farm);
        (client, Execution::Farm, "embedded")
    };
    let jobs = args.jobs.unwrap_or(match where_ {
        "remote" => 64,
        _ => 2 * cpus() as usize,
    });

    let uploader = Arc::new(Uploader::new(client.store.clone()));
    let composer = InputComposer::new(plan.clone(), uploader.clone(), digests.clone())?;
    let json = args.message_format == MessageFormat::Json;
    let reporter = Reporter::new(plan.units.len(), json);
    let mut build = Build::new(
        plan.clone(),
        client.clone(),
        uploader.clone(),
        composer,
        reporter,
        execution,
        jobs,
    );
    build.verbose = args.verbose;
    let build = Arc::new(build);
    let mut ok = build.run().await;
    let mut placed = 0;
    if ok {
        let artifacts = crate::artifacts::root_artifacts(&plan);
        match crate::artifacts::place(
            &plan,
            &client,
            &build.results,
            &digests,
            &build.reporter,
            &artifacts,
        )
        .await
        {
            Ok(n) => placed = n,
            Err(e) => {
                build.reporter.eprintln(&format!("error: {e:#}"));
                ok = false;
            }
        }
    }
    build.reporter.finish(
        &plan,
        json!({
            "farm": where_,
            "invocation_id": client.invocation_id,
            "uploaded_bytes": uploader.uploaded_bytes(),
            "artifacts_written": placed,
        }),
    );
    if let Err(e) = digests.save() {
        tracing::warn!(error = %e, "could not save the file digest cache");
    }
    if let Some(farm) = embedded {
        farm.stop().await?;
    }
    Ok(if ok { 0 } else { BUILD_FAILED })
}

/// The sandboxed executor of `--remote-cache` builds (its blob cache under the farm home).
async fn local_executor(home: &std::path::Path, client: &FarmClient) -> Result<worker::Executor> {
    let mut config =
        worker::ExecutorConfig::new(crate::worker_dir::worker_dir(home, "local-worker")?);
    config.slots = cpus();
    let executor = worker::Executor::new(config, client.store.clone())
        .await
        .context("preparing the local sandbox")?;
    executor.self_test().await.context(
        "the sandbox does not work on this machine (install bubblewrap: apt-get install \
         bubblewrap)",
    )?;
    Ok(executor)
}

/// Serves the farm until Ctrl-C or SIGTERM.
pub async fn up(args: UpArgs) -> Result<i32> {
    let home = farm_home(args.farm_home.as_ref());
    let farm = EmbeddedFarm::start(EmbeddedOptions {
        home: home.clone(),
        listen: args.listen,
        workers: args.workers,
        slots: args.slots.unwrap_or_else(cpus),
        max_bytes: args.max_size.as_u64(),
        bwrap: PathBuf::from("bwrap"),
    })
    .await?;
    eprintln!(
        "cargo farm: serving REAPI at {} (home {}); build with `cargo farm build --remote {}`",
        farm.url(),
        home.display(),
        farm.url().replacen("http://", "grpc://", 1)
    );
    cas::process::shutdown_signal().await;
    eprintln!("cargo farm: stopping");
    tokio::time::timeout(Duration::from_secs(30), farm.stop())
        .await
        .context("stopping the farm took longer than 30 s")??;
    Ok(0)
}
