//! Turns a Cargo workspace into hermetic, relocatable actions: cargo's metadata and unit graph
//! in, one [`ActionSpec`] per unit out (library, binary, test, example, proc-macro, build-script
//! compile and run), with every path relative to a fixed exec root and every name derived from
//! content.
//!
//! | module | job |
//! |---|---|
//! | [`cargo`] | running `cargo metadata` and `cargo build --unit-graph` with the user's flags |
//! | [`unit_graph`], [`metadata`], [`manifest`] | what cargo says, typed; `[lints]` from manifests |
//! | [`toolchain`] | `rustc -vV`, sysroot, per-target cfg and file names, the toolchain's files |
//! | [`config`] | RUSTFLAGS and linkers from cargo config and the environment |
//! | [`overrides`] | `cargo-farm.toml`: per-package extra inputs, env, run-locally |
//! | [`plan`] | units with content hashes, outputs and the exec-root layout |
//! | [`rustc`], [`build_script`] | the action of a compile unit, of a build-script run |
//! | [`build_script_output`] | parsing `cargo::` directives |
//! | [`package_files`] | the files of a local package |
//! | [`sources`] | Cargo.lock checksums; verified registry archives and vendored crates |
//! | [`wrapper`] | recording cargo's real rustc invocations (`RUSTC_WRAPPER`) |
//!
//! Architecture invariants: the resolver knows Cargo and rustc, nothing about gRPC, REAPI
//! messages or where actions run. No absolute path of the machine that plans a build enters
//! an action, except `CARGO_BIN_EXE_*`/`CARGO_TARGET_TMPDIR` of integration tests (which must
//! name where the binaries land locally). Every registry crate is checked against Cargo.lock's
//! checksum before any of its content is used.

pub mod action;
pub mod build_script;
pub mod build_script_output;
pub mod cargo;
pub mod config;
pub mod error;
pub mod hash;
pub mod manifest;
pub mod metadata;
pub mod overrides;
pub mod package_files;
pub mod plan;
pub mod resolve;
pub mod rustc;
pub mod sources;
pub mod toolchain;
pub mod unit_graph;

pub use action::{ActionSpec, Input, EXEC_ROOT};
pub use cargo::{BuildMode, BuildRequest, TargetSelection};
pub use error::ResolveError;
pub use plan::{Plan, PlannedUnit, UnitKind};
pub use resolve::resolve;
