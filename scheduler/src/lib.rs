//! REAPI Execution and Operations services, queues, platform matching and the worker protocol.
//!
//! Architecture invariant: the scheduler knows REAPI and workers, nothing about Cargo.
//!
//! Layers, bottom up:
//!
//! | module | job |
//! |---|---|
//! | [`platform`] | platform property sets and the matching rule (below) |
//! | [`queue`] | queued work per platform key, priority then FIFO; which workers fit each key |
//! | [`operations`] | operation names, stages and the `google.longrunning.Operation` messages |
//! | [`state`] | [`state::SchedulerState`]: the durable record of operations (memory, Redis) |
//! | [`scheduling`] | the [`Scheduler`]: operations, leases and workers behind one lock |
//! | [`action_cache`] | where results are looked up and written: embedded store or remote REAPI |
//! | [`execution`] | the REAPI Execution service (Execute, WaitExecution) |
//! | [`workers`] | the `WorkerSessions` service: one long-lived stream per worker |
//! | [`service`] | google.longrunning Operations, and all services on one port |
//! | [`metrics`] | `farm_scheduler_*` metrics in the process-wide registry |
//! | [`request_metadata`] | REAPI `RequestMetadata`: log spans, passed on to workers |
//!
//! # Platform matching rules
//!
//! - An action's requirements are the properties of `Action.platform`, or of the deprecated
//!   `Command.platform` when the Action has none.
//! - A property is a `(name, value)` pair, compared exactly (byte for byte, case-sensitive):
//!   no wildcards, ranges or defaults. `OSFamily`, `ISA` and custom keys follow the same rule.
//! - A worker offers a set of pairs in its `Hello`; it may offer several values of one name
//!   (`ISA=x86-64` and `ISA=x86-64-v3`) and names no action mentions.
//! - **A worker can run an action when every pair the action requires is among the pairs the
//!   worker offers.** An action requiring nothing runs anywhere; order and duplicates of
//!   properties do not matter.
//! - Instance names do not partition workers.
//! - An action no connected worker can run waits `unsatisfiable_wait` (default 60 s) for one
//!   to connect, then finishes with `FAILED_PRECONDITION` naming its requirements and what
//!   the connected workers offer. It never hangs.
//!
//! # Lifecycle of an Execute
//!
//! 1. The action cache is consulted (unless `skip_cache_lookup`): a complete hit finishes the
//!    operation at once with `cached_result = true`.
//! 2. An identical in-flight operation (same instance and action digest, not `do_not_cache`)
//!    is joined: N clients, one execution, one operation name.
//! 3. The Action, Command and every input blob must be in the CAS; otherwise Execute fails
//!    with `FAILED_PRECONDITION` and a `PreconditionFailure` listing each missing digest.
//! 4. The operation queues by platform, priority, then arrival; a worker with a free slot
//!    gets a lease. Lost workers mean a requeue (at most `max_retries` times); timeouts,
//!    cancellation and unsatisfiable platforms finish it with a status in its ExecuteResponse.
//! 5. A successful result (exit code 0, not `do_not_cache`) is written to the action cache
//!    before the operation completes.

pub mod action_cache;
pub mod config;
pub mod execution;
pub mod inputs;
pub mod metrics;
pub mod operations;
pub mod platform;
pub mod queue;
pub mod request_metadata;
pub mod scheduling;
pub mod service;
pub mod state;
pub mod workers;

pub use config::SchedulerConfig;
pub use scheduling::{NewOperation, Scheduler, Stats, Subscription};

/// The generated worker protocol (`proto/farm/worker/v1/worker.proto`): an API boundary shared
/// with the `worker` crate.
pub mod protocol {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("farm.worker.v1");
}
