//! `farm-loadtest`: load scenarios against any REAPI v2 endpoint (ours or another vendor's),
//! reporting throughput, latency quantiles, errors by gRPC status and the generator's own CPU.
//!
//! Modules, each one concern, bottom up:
//!
//! | module | job |
//! |---|---|
//! | [`options`] | flags (clap) validated into a typed [`options::Config`] |
//! | [`client`] | channels (TLS, bearer token, REAPI `RequestMetadata`), the REAPI clients |
//! | [`content`] | deterministic blobs, digests and choices from `(seed, index)`; chunked large blobs |
//! | [`actions`] | Commands, Actions, Directories and ActionResults of the execution scenarios |
//! | [`rpc`] | REAPI calls the scenarios share (batch upload, UpdateActionResult, Execute to its end) |
//! | [`budget`] | when a run stops: exact request counts, a deadline, a hard stop, per-request timeouts |
//! | [`stats`] | per-kind counts and HDR latency histograms, errors by status code name |
//! | [`cpu`] | the generator's CPU (getrusage) and the machine's (/proc/stat) over the run |
//! | [`scenarios`] | the measuring frame and `cas-small`, `cas-large`, `ac`, `execute-cached`, `execute`, `graph` |
//! | [`report`] | the table and the JSON line |
//!
//! Invariants: a run always stops by itself (a count, a deadline, per-request timeouts, a hard
//! stop); failures during the measured part are counted by status, never fatal; setup before
//! the clock must succeed or the run does not start; no blob larger than one chunk is held in
//! memory by the generator.

pub mod actions;
pub mod budget;
pub mod client;
pub mod content;
pub mod cpu;
pub mod options;
pub mod report;
pub mod rpc;
pub mod scenarios;
pub mod stats;

pub use options::{Args, Config, Scenario};
