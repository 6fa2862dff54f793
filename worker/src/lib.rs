//! The farm worker: runs REAPI actions leased by the scheduler, each in its own sandbox.
//!
//! Modules, each one concern, bottom up:
//! - [`platform`]: the platform this worker advertises (real ISA, OS family) and its id.
//! - [`paths`]: paths inside an input root, resolved without ever leaving it.
//! - [`cache`]: the local content-addressed cache whose read-only files are hardlinked into
//!   input roots (LRU under a byte budget, fetches deduplicated).
//! - [`stage`]: materializing an input root from the cache, creating output parents.
//! - [`sandbox`]: running one command under bubblewrap (namespaces, no network, read-only host
//!   paths, rlimits, timeout kills everything).
//! - [`outputs`]: collecting REAPI 2.0–2.3 outputs and uploading their blobs.
//! - [`executor`]: one action from lease to `ExecuteResponse`, with timestamps.
//! - [`session`]: the worker-protocol client loop (hello, keep-alives, leases, reconnects).
//! - [`metrics`]: `farm_worker_*` Prometheus metrics.
//!
//! Architecture invariant: the worker runs what an Action says and nothing else; it knows
//! nothing about Cargo.

pub mod cache;
pub mod executor;
pub mod metrics;
pub mod outputs;
pub mod paths;
pub mod platform;
pub mod sandbox;
pub mod session;
pub mod stage;

pub use executor::{Executor, ExecutorConfig, Job, Stage};
pub use sandbox::{Limits, SandboxConfig};
