//! The resolver's one error type.

use std::path::PathBuf;

/// Why a workspace could not be planned (or a unit's action not derived).
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Cargo (or rustc) refused, or printed something we cannot read; the message says which.
    #[error("{0}")]
    Cargo(String),
    /// A command could not be started at all.
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A manifest or lockfile we could not read.
    #[error("{}: {message}", .path.display())]
    Manifest { path: PathBuf, message: String },
    /// Something in the workspace we cannot turn into a hermetic action.
    #[error("{0}")]
    Unsupported(String),
    /// A unit cargo can build but cargo-farm cannot model as an action; the front end falls
    /// back to cargo itself for such builds.
    #[error("cannot model {unit}: {why}")]
    CannotModel { unit: String, why: String },
    /// A build script printed a directive we cannot honour.
    #[error("build script of {package}: {message}")]
    BuildScript { package: String, message: String },
    /// Cargo.lock or a crate archive failed a supply-chain check.
    #[error(transparent)]
    Source(#[from] crate::sources::SourceError),
}

impl ResolveError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ResolveError {
        let path = path.into();
        move |source| ResolveError::Io { path, source }
    }
}
