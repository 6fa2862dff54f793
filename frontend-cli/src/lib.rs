//! `cargo farm`: builds a Cargo workspace as REAPI actions on a remote farm, on a shared cache
//! with local sandboxed execution, or on an embedded in-process farm.
//!
//! | module | job |
//! |---|---|
//! | [`cli`] | flags (cargo's, plus where to build) |
//! | [`command`] | `build`/`check` and `up` from start to summary |
//! | [`farm_config`] | `[farm]` in cargo-farm.toml or the home's config.toml: where to build |
//! | [`embedded`] | the in-process farm: filesystem CAS, scheduler, sandboxed workers |
//! | [`client`] | the REAPI client (CAS, ActionCache, Execution) |
//! | [`inputs`] | input roots from sources, toolchain and earlier outputs |
//! | [`uploader`], [`digest_cache`] | blobs into the CAS once; file hashes remembered across builds |
//! | [`action_proto`] | resolver action specs as REAPI Command/Action |
//! | [`build_graph`] | running the action graph, cache first, at most `-j` in flight |
//! | [`results`] | what finished actions produced |
//! | [`artifacts`] | final artifacts into `target/` |
//! | [`reporter`], [`diagnose`] | progress, diagnostics, summaries; explaining sandbox failures |
//! | [`worker_dir`] | where local workers live (reachable by sandbox users) |
//! | [`fallback`] | cargo itself (wrapper mode) for builds with a unit we cannot model |
//! | [`wrapper`] | `RUSTC_WRAPPER` mode: recording cargo's own rustc invocations |
//!
//! Architecture invariant: the front end never computes a command line (the resolver does) and
//! never runs an action outside a sandbox; it knows REAPI as a client only.

pub mod action_proto;
pub mod artifacts;
pub mod build_graph;
pub mod cli;
pub mod client;
pub mod command;
pub mod diagnose;
pub mod digest_cache;
pub mod embedded;
pub mod fallback;
pub mod farm_config;
pub mod inputs;
pub mod reporter;
pub mod results;
pub mod uploader;
pub mod worker_dir;
pub mod wrapper;
