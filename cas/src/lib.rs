//! Content-addressed storage for the farm.
//!
//! Layers, bottom up: [`digest`] (SHA-256 digests), [`store`] (the one [`store::BlobStore`]
//! trait and its backends and decorators), [`merkle`] (REAPI directory trees), [`config`]
//! (typed description of a store stack), [`service`] (REAPI Capabilities / CAS / ActionCache /
//! ByteStream over tonic). The `farm-cas` binary parses flags and files and wires them together.
//!
//! Architecture invariant: this crate knows nothing about Cargo, scheduling or workers.

pub mod config;
pub mod digest;
pub mod direct_io;
pub mod error;
pub mod merkle;
pub mod metrics;
pub mod process;
pub mod proto;
pub mod redact;
pub mod service;
pub mod spool;
pub mod status_http;
pub mod store;

pub use digest::{Digest, DigestHasher};
pub use error::StoreError;
pub use store::{BlobStore, ByteRange, ChunkStream};
