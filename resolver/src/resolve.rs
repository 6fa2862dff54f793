//! Planning a workspace end to end: cargo metadata, the unit graph, the toolchain, config and
//! overrides, into a [`Plan`].

use std::collections::BTreeSet;

use crate::cargo::BuildRequest;
use crate::config::BuildConfig;
use crate::error::ResolveError;
use crate::metadata::Packages;
use crate::overrides::Overrides;
use crate::plan::Plan;
use crate::toolchain::Toolchain;

/// Plans the build `request` describes.
pub fn resolve(request: &BuildRequest) -> Result<Plan, ResolveError> {
    let metadata = request.metadata()?;
    let graph = request.unit_graph()?;
    let packages = Packages::from_metadata(&metadata)?;
    let cwd = match &request.cwd {
        Some(c) => c.clone(),
        None => std::env::current_dir().map_err(ResolveError::io("."))?,
    };
    // Triples named by the graph itself (`--target`, or `build.target` in cargo config).
    let targets: Vec<String> = graph
        .units
        .iter()
        .filter_map(|u| u.platform.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let host = Toolchain::host_triple(&packages.workspace_root)?;
    let config = BuildConfig::load(&cwd, &host, !targets.is_empty())?;
    let toolchain = Toolchain::probe(&packages.workspace_root, &targets, &|t: &str| {
        config.rustflags_for(if t == host && targets.is_empty() {
            None
        } else {
            Some(t)
        })
    })?;
    for t in &targets {
        if !toolchain.has_std_for(t) {
            return Err(ResolveError::Unsupported(format!(
                "the standard library for {t} is not installed (run `rustup target add {t}`)"
            )));
        }
    }
    let overrides = Overrides::load(&packages.workspace_root)?;
    let mut request = request.clone();
    request.targets = targets;
    Plan::new(graph, packages, toolchain, config, overrides, &request)
}
