//! Explaining a failed build-script run: which host paths it referred to that exist on this
//! machine but not in its sandbox, whether it tried the network, and how to fix it with an
//! override in `cargo-farm.toml`.

use std::collections::BTreeSet;
use std::path::Path;

use resolver::Plan;

/// Host directories every sandbox shows (read-only) or replaces with its own.
const VISIBLE: &[&str] = &[
    "/exec", "/usr", "/bin", "/lib", "/lib64", "/tmp", "/proc", "/dev",
];

/// Messages that mean the network was not there.
const NETWORK_SIGNS: &[&str] = &[
    "Could not resolve host",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "failed to lookup address",
    "Name or service not known",
    "No address associated with hostname",
];

/// Notes for the user after build script `i` failed with this output.
pub fn sandbox_notes(plan: &Plan, i: usize, stdout: &[u8], stderr: &[u8]) -> Vec<String> {
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(stdout),
        String::from_utf8_lossy(stderr)
    );
    let package = plan
        .package_of(i)
        .map(|p| p.name.clone())
        .unwrap_or_else(|_| "PACKAGE".into());
    let mut notes = Vec::new();
    for p in unreachable_paths(&text) {
        notes.push(format!(
            "note: the build script of `{package}` referred to {p}, which exists on this machine \
             but is outside its sandbox (it sees only its package, its dependencies' outputs, the \
             toolchain and /usr)"
        ));
    }
    if NETWORK_SIGNS.iter().any(|s| text.contains(s)) {
        notes.push(format!(
            "note: the build script of `{package}` tried to use the network; actions run with \
             none"
        ));
    }
    notes.push(format!(
        "help: give it what it needs in {}/{}:\n        [overrides.{package}]\n        inputs = \
         [\"/path/it/needs\"]   # mounted at /exec/.cargo-farm/host/path/it/needs\n        env = \
         {{ SOME_DIR = \"{{input:/path/it/needs}}\" }}",
        plan.packages.workspace_root.display(),
        resolver::overrides::FILE_NAME
    ));
    notes
}

/// Absolute paths mentioned in `text` that exist here but are not visible in a sandbox.
pub fn unreachable_paths(text: &str) -> Vec<String> {
    let mut found = BTreeSet::new();
    let bytes: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let starts = bytes[i] == '/' && (i == 0 || !is_path_char(bytes[i - 1]));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < bytes.len() && is_path_char(bytes[j]) {
            j += 1;
        }
        let candidate: String = bytes[i..j].iter().collect();
        let candidate = candidate.trim_end_matches(['.', ',', ':', ')']).to_string();
        i = j;
        if candidate.len() < 2 || VISIBLE.iter().any(|v| under(&candidate, v)) {
            continue;
        }
        if Path::new(&candidate).exists() {
            found.insert(candidate);
        }
    }
    found.into_iter().collect()
}

fn under(path: &str, dir: &str) -> bool {
    path == dir || path.starts_with(&format!("{dir}/"))
}

fn is_path_char(c: char) -> bool {
    c.is_alphanumeric() || "/._-+@".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_host_paths_outside_the_sandbox() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("header.h");
        std::fs::write(&p, "").unwrap();
        // tempdir is under /tmp, which sandboxes replace: use a path under the cwd instead.
        let here = std::env::current_dir().unwrap().join("Cargo.toml");
        let text = format!(
            "error: cannot open {} (No such file)\nalso /usr/include/stdio.h and /exec/x, {}.",
            here.display(),
            p.display()
        );
        let found = unreachable_paths(&text);
        assert_eq!(found, vec![here.display().to_string()]);
    }
}
