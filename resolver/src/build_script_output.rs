//! What a build script printed: `cargo::` (and old-style `cargo:`) directives, parsed into what
//! dependents get (cfgs, env, link flags, `DEP_*` metadata).

use crate::error::ResolveError;

/// Which linked targets a `rustc-link-arg*` applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkArgScope {
    All,
    Bins,
    Bin(String),
    Tests,
    Examples,
    Benches,
    Cdylib,
}

/// The parsed output of one build-script run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildScriptOutput {
    pub cfgs: Vec<String>,
    pub check_cfgs: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `rustc-link-lib` values (`[KIND[:MODIFIERS]=]NAME[:RENAME]`).
    pub link_libs: Vec<String>,
    /// `rustc-link-search` values (`[KIND=]PATH`).
    pub link_search: Vec<String>,
    pub link_args: Vec<(LinkArgScope, String)>,
    /// `metadata` key/values, for `DEP_<LINKS>_<KEY>` of dependents.
    pub metadata: Vec<(String, String)>,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

impl BuildScriptOutput {
    /// Parses stdout of the build script of `package`. Unknown `cargo::` directives are an
    /// error (as with cargo); lines without a `cargo:` prefix are ignored.
    pub fn parse(stdout: &str, package: &str) -> Result<BuildScriptOutput, ResolveError> {
        let mut out = BuildScriptOutput::default();
        let err = |message: String| ResolveError::BuildScript {
            package: package.to_string(),
            message,
        };
        for line in stdout.lines() {
            let (new_syntax, rest) = if let Some(r) = line.strip_prefix("cargo::") {
                (true, r)
            } else if let Some(r) = line.strip_prefix("cargo:") {
                (false, r)
            } else {
                continue;
            };
            let Some((key, value)) = rest.split_once('=') else {
                if new_syntax {
                    return Err(err(format!("directive {line:?} has no `=`")));
                }
                continue;
            };
            let value = value.trim_end_matches('\r').to_string();
            match key {
                "rustc-cfg" => out.cfgs.push(value),
                "rustc-check-cfg" => out.check_cfgs.push(value),
                "rustc-env" => {
                    let (k, v) = value
                        .split_once('=')
                        .ok_or_else(|| err(format!("rustc-env {value:?} is not KEY=VALUE")))?;
                    out.env.push((k.to_string(), v.to_string()));
                }
                "rustc-link-lib" => out.link_libs.push(value),
                "rustc-link-search" => out.link_search.push(value),
                "rustc-flags" => parse_flags(&value, &mut out).map_err(err)?,
                "rustc-link-arg" => out.link_args.push((LinkArgScope::All, value)),
                "rustc-link-arg-bins" => out.link_args.push((LinkArgScope::Bins, value)),
                "rustc-link-arg-tests" => out.link_args.push((LinkArgScope::Tests, value)),
                "rustc-link-arg-examples" => out.link_args.push((LinkArgScope::Examples, value)),
                "rustc-link-arg-benches" => out.link_args.push((LinkArgScope::Benches, value)),
                "rustc-link-arg-cdylib" | "rustc-cdylib-link-arg" => {
                    out.link_args.push((LinkArgScope::Cdylib, value))
                }
                "rustc-link-arg-bin" => {
                    let (bin, arg) = value.split_once('=').ok_or_else(|| {
                        err(format!("rustc-link-arg-bin {value:?} is not BIN=ARG"))
                    })?;
                    out.link_args
                        .push((LinkArgScope::Bin(bin.to_string()), arg.to_string()));
                }
                "warning" => out.warnings.push(value),
                "error" => out.errors.push(value),
                "rerun-if-changed" | "rerun-if-env-changed" => {}
                "metadata" if new_syntax => {
                    let (k, v) = value
                        .split_once('=')
                        .ok_or_else(|| err(format!("metadata {value:?} is not KEY=VALUE")))?;
                    out.metadata.push((k.to_string(), v.to_string()));
                }
                other if new_syntax => {
                    return Err(err(format!(
                        "unknown build-script directive `cargo::{other}`"
                    )))
                }
                // Old syntax: any other key is metadata.
                other => out.metadata.push((other.to_string(), value)),
            }
        }
        Ok(out)
    }

    /// `DEP_<LINKS>_<KEY>` variables for dependents of a package with `links = "<links>"`.
    pub fn dep_env(&self, links: &str) -> Vec<(String, String)> {
        let prefix = format!("DEP_{}_", env_name(links));
        self.metadata
            .iter()
            .map(|(k, v)| (format!("{prefix}{}", env_name(k)), v.clone()))
            .collect()
    }
}

/// `rustc-flags`: only `-l` and `-L` are allowed.
fn parse_flags(value: &str, out: &mut BuildScriptOutput) -> Result<(), String> {
    let mut words = value.split_whitespace();
    while let Some(w) = words.next() {
        let (flag, arg) = if w == "-l" || w == "-L" {
            let arg = words
                .next()
                .ok_or_else(|| format!("rustc-flags {value:?}: {w} without a value"))?;
            (w, arg.to_string())
        } else if let Some(a) = w.strip_prefix("-l") {
            ("-l", a.to_string())
        } else if let Some(a) = w.strip_prefix("-L") {
            ("-L", a.to_string())
        } else {
            return Err(format!(
                "rustc-flags {value:?}: only -l and -L are allowed, not {w}"
            ));
        };
        if flag == "-l" {
            out.link_libs.push(arg);
        } else {
            out.link_search.push(arg);
        }
    }
    Ok(())
}

/// Cargo's environment-variable spelling of a name: upper case, `-` as `_`.
pub fn env_name(s: &str) -> String {
    s.to_uppercase().replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_syntaxes() {
        let out = BuildScriptOutput::parse(
            "noise\ncargo::rustc-cfg=foo\ncargo:rustc-cfg=bar=\"x\"\ncargo::rustc-env=A=b=c\n\
             cargo::rustc-link-lib=static=native\ncargo:rustc-link-search=native=/exec/o\n\
             cargo::metadata=version=1.2\ncargo:include=/exec/inc\ncargo::warning=careful\n\
             cargo::rustc-flags=-l z -L/usr/lib\ncargo::rustc-link-arg-bin=app=-Wl,-z\n",
            "p",
        )
        .unwrap();
        assert_eq!(out.cfgs, vec!["foo", "bar=\"x\""]);
        assert_eq!(out.env, vec![("A".to_string(), "b=c".to_string())]);
        assert_eq!(out.link_libs, vec!["static=native", "z"]);
        assert_eq!(out.link_search, vec!["native=/exec/o", "/usr/lib"]);
        assert_eq!(out.warnings, vec!["careful"]);
        assert_eq!(
            out.dep_env("native-x"),
            vec![
                ("DEP_NATIVE_X_VERSION".to_string(), "1.2".to_string()),
                ("DEP_NATIVE_X_INCLUDE".to_string(), "/exec/inc".to_string())
            ]
        );
        assert_eq!(
            out.link_args,
            vec![(LinkArgScope::Bin("app".into()), "-Wl,-z".into())]
        );
    }

    #[test]
    fn refuses_unknown_new_directives() {
        let e = BuildScriptOutput::parse("cargo::frobnicate=1", "p").unwrap_err();
        assert!(e.to_string().contains("frobnicate"));
        assert!(BuildScriptOutput::parse("cargo::rustc-flags=-O", "p").is_err());
    }
}
