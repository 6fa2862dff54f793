//! REAPI Execution and Operations services, queues, platform matching and the worker protocol.
//!
//! Architecture invariant: the scheduler knows REAPI and workers, nothing about Cargo.

/// The generated worker protocol (`proto/farm/worker/v1/worker.proto`): an API boundary shared
/// with the `worker` crate.
pub mod protocol {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("farm.worker.v1");
}
