//! Protocol code cas generates itself (see build.rs); REAPI's own types come from
//! `bazel-remote-apis`.

/// The ByteStream API with `bytes::Bytes` data fields: wire-identical to
/// `bazel_remote_apis::google::bytestream`, but chunks are never copied on decode.
pub mod bytestream {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("google.bytestream");
}
