//! Per-package overrides from `cargo-farm.toml` at the workspace root, for build scripts (or
//! compiles) that need more than their package's files:
//!
//! ```toml
//! [overrides.foo-sys]
//! inputs = ["/opt/foo", "third_party/foo"]   # host files or directories added to the inputs
//! env = { FOO_DIR = "{input:/opt/foo}" }     # extra environment; {input:P} is where P is mounted
//! local = true                               # run its build script on this machine, unsandboxed
//! ```
//!
//! An absolute input `/opt/foo` appears at `/exec/.cargo-farm/host/opt/foo`; a relative one
//! (from the workspace root) at the same relative place under `/exec`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::action::EXEC_ROOT;
use crate::error::ResolveError;

/// The file name looked for at the workspace root.
pub const FILE_NAME: &str = "cargo-farm.toml";

/// What one package gets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PackageOverride {
    #[serde(default)]
    pub inputs: Vec<PathBuf>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub local: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    overrides: BTreeMap<String, PackageOverride>,
    /// Where to build (`remote`, `remote-cache`, `instance`): read by the front end.
    #[serde(default)]
    #[allow(dead_code)]
    farm: toml::Table,
}

/// All overrides, by package name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    by_package: BTreeMap<String, PackageOverride>,
    workspace_root: PathBuf,
}

impl Overrides {
    /// Reads `cargo-farm.toml` in `workspace_root` if there is one.
    pub fn load(workspace_root: &Path) -> Result<Overrides, ResolveError> {
        let path = workspace_root.join(FILE_NAME);
        let mut out = Overrides {
            workspace_root: workspace_root.to_path_buf(),
            ..Default::default()
        };
        if !path.is_file() {
            return Ok(out);
        }
        let text = std::fs::read_to_string(&path).map_err(ResolveError::io(&path))?;
        let file: File = toml::from_str(&text).map_err(|e| ResolveError::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        for (name, o) in &file.overrides {
            for input in &o.inputs {
                let local = out.local_path(input);
                if !local.exists() {
                    return Err(ResolveError::Manifest {
                        path: path.clone(),
                        message: format!(
                            "overrides.{name}.inputs names {}, which does not exist",
                            local.display()
                        ),
                    });
                }
            }
        }
        out.by_package = file.overrides;
        Ok(out)
    }

    pub fn get(&self, package: &str) -> Option<&PackageOverride> {
        self.by_package.get(package)
    }

    /// Where an override input is on this machine.
    pub fn local_path(&self, input: &Path) -> PathBuf {
        if input.is_absolute() {
            input.to_path_buf()
        } else {
            self.workspace_root.join(input)
        }
    }

    /// Where an override input appears in the input root (exec-root-relative).
    pub fn mount_point(input: &Path) -> String {
        let text = input.to_string_lossy();
        match text.strip_prefix('/') {
            Some(abs) => format!(
                "{}/host/{}",
                crate::metadata::FARM_DIR,
                abs.trim_end_matches('/')
            ),
            None => text.trim_end_matches('/').to_string(),
        }
    }

    /// `value` with every `{input:P}` replaced by the absolute in-sandbox path of input `P`.
    pub fn expand(value: &str) -> String {
        let mut out = String::new();
        let mut rest = value;
        while let Some(start) = rest.find("{input:") {
            out.push_str(&rest[..start]);
            let after = &rest[start + "{input:".len()..];
            match after.find('}') {
                Some(end) => {
                    let p = Path::new(&after[..end]);
                    out.push_str(&format!("{EXEC_ROOT}/{}", Self::mount_point(p)));
                    rest = &after[end + 1..];
                }
                None => {
                    out.push_str(&rest[start..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_inputs() {
        assert_eq!(
            Overrides::expand("{input:/opt/foo}/include:{input:third/x}"),
            "/exec/.cargo-farm/host/opt/foo/include:/exec/third/x"
        );
        assert_eq!(Overrides::expand("plain"), "plain");
    }

    #[test]
    fn missing_input_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join(FILE_NAME),
            "[overrides.a]\ninputs = [\"/definitely/not/here\"]\n",
        )
        .unwrap();
        let e = Overrides::load(t.path()).unwrap_err().to_string();
        assert!(e.contains("/definitely/not/here"), "{e}");
        std::fs::write(t.path().join(FILE_NAME), "[overrides.a]\nbogus = 1\n").unwrap();
        assert!(Overrides::load(t.path()).is_err());
    }
}
