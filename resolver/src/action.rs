//! An action as the resolver describes it: the command, its environment, where it runs, what it
//! reads and what it writes, in exec-root-relative paths. The front end turns the inputs into
//! digests (sources, toolchain, earlier actions' outputs) and the rest into a REAPI Action.

/// Where every input root is mounted on workers. Absolute paths the actions see (`OUT_DIR`,
/// `CARGO_MANIFEST_DIR`, `RUSTC`) start here, so they are the same on every machine.
pub const EXEC_ROOT: &str = "/exec";

/// One hermetic action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionSpec {
    /// Index of the unit in the plan.
    pub unit: usize,
    /// argv; `args[0]` is relative to the working directory or absolute inside the sandbox.
    pub args: Vec<String>,
    /// Sorted by name, names unique.
    pub env: Vec<(String, String)>,
    /// Relative to the exec root (`""` is the root).
    pub working_directory: String,
    pub inputs: Vec<Input>,
    /// Relative to the working directory (REAPI's rule).
    pub output_files: Vec<String>,
    pub output_directories: Vec<String>,
    /// Sorted `(name, value)` platform properties.
    pub platform: Vec<(String, String)>,
}

/// Something an action reads, and where in the input root it goes (`at`, exec-root-relative).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Input {
    /// The files of a package (from disk, or its verified crate archive) except `exclude`:
    /// paths relative to the package, a trailing `/` naming a directory. Compiles leave out
    /// the crate roots of the package's other targets, so editing `src/main.rs` does not
    /// rebuild the library.
    Package {
        package: String,
        at: String,
        exclude: Vec<String>,
    },
    /// The toolchain files for these target triples (the host's are always there).
    Toolchain { triples: Vec<String>, at: String },
    /// One output file (a name in `Plan::outputs` of `unit`) of an earlier compile action.
    UnitFile {
        unit: usize,
        file: String,
        at: String,
    },
    /// The `OUT_DIR` tree a build-script run produced.
    OutDir { unit: usize, at: String },
    /// An empty directory (e.g. an `OUT_DIR` before its build script runs).
    EmptyDir { at: String },
    /// A host path (file or directory) a per-package override adds as an input.
    HostPath {
        path: std::path::PathBuf,
        at: String,
    },
}

impl ActionSpec {
    /// A one-line description for progress and errors.
    pub fn argv_line(&self) -> String {
        self.args
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Quotes `s` for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
