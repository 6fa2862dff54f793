//! Where to build when no flag says: the `[farm]` table of the workspace's `cargo-farm.toml`,
//! else of `$CARGO_FARM_HOME/config.toml`. Flags and `CARGO_FARM_*` variables come first.
//!
//! ```toml
//! [farm]
//! remote = "grpc://farm.internal:8980"     # or remote-cache = "..."
//! instance = "ci"
//! ```

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;

use crate::cli::FarmArgs;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FarmTable {
    remote: Option<String>,
    remote_cache: Option<String>,
    instance: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    farm: Option<FarmTable>,
}

fn read(path: &Path) -> Result<Option<FarmTable>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: File =
        toml::from_str(&text).with_context(|| format!("{}: bad [farm] table", path.display()))?;
    if let Some(f) = &file.farm {
        if f.remote.is_some() && f.remote_cache.is_some() {
            bail!(
                "{}: [farm] sets both remote and remote-cache",
                path.display()
            );
        }
    }
    Ok(file.farm)
}

/// `args` with what the flags and environment left unset filled from the config files.
pub fn resolve(args: &FarmArgs, workspace_root: &Path, home: &Path) -> Result<FarmArgs> {
    let mut out = args.clone();
    if args.remote.is_some() || args.remote_cache.is_some() {
        return Ok(out);
    }
    let table = match read(&workspace_root.join(resolver::overrides::FILE_NAME))? {
        Some(t) => Some(t),
        None => read(&home.join("config.toml"))?,
    };
    if let Some(t) = table {
        out.remote = t.remote;
        out.remote_cache = t.remote_cache;
        if out.instance.is_empty() {
            out.instance = t.instance.unwrap_or_default();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_then_workspace_then_home() {
        let ws = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        std::fs::write(
            home.path().join("config.toml"),
            "[farm]\nremote-cache = \"grpc://home:1\"\n",
        )
        .unwrap();
        let none = FarmArgs::default();
        let r = resolve(&none, ws.path(), home.path()).unwrap();
        assert_eq!(r.remote_cache.as_deref(), Some("grpc://home:1"));
        std::fs::write(
            ws.path().join("cargo-farm.toml"),
            "[farm]\nremote = \"grpc://ws:1\"\ninstance = \"ci\"\n",
        )
        .unwrap();
        let r = resolve(&none, ws.path(), home.path()).unwrap();
        assert_eq!(r.remote.as_deref(), Some("grpc://ws:1"));
        assert_eq!(r.instance, "ci");
        let flag = FarmArgs {
            remote_cache: Some("grpc://flag:1".into()),
            ..FarmArgs::default()
        };
        let r = resolve(&flag, ws.path(), home.path()).unwrap();
        assert_eq!(r.remote_cache.as_deref(), Some("grpc://flag:1"));
        assert!(r.remote.is_none());
        std::fs::write(
            ws.path().join("cargo-farm.toml"),
            "[farm]\nremoet = \"x\"\n",
        )
        .unwrap();
        assert!(resolve(&none, ws.path(), home.path()).is_err());
    }
}
