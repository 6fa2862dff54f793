//! The one error type every blob store returns, and its mapping to gRPC status codes.

use crate::digest::{Digest, DigestError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob {0} not found")]
    NotFound(Digest),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The backend (Redis, S3, ...) could not be reached or refused the request.
    #[error("store backend unavailable: {0}")]
    Unavailable(String),
    #[error("the request was cancelled: {0}")]
    Cancelled(String),
    #[error("internal store error: {0}")]
    Internal(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<DigestError> for StoreError {
    fn from(e: DigestError) -> Self {
        StoreError::InvalidArgument(e.to_string())
    }
}

impl StoreError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound(_))
    }
}

impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> Self {
        use tonic::Status;
        match e {
            StoreError::NotFound(_) => Status::not_found(e.to_string()),
            StoreError::InvalidArgument(m) => Status::invalid_argument(m),
            StoreError::OutOfRange(m) => Status::out_of_range(m),
            StoreError::ResourceExhausted(m) => Status::resource_exhausted(m),
            StoreError::FailedPrecondition(m) => Status::failed_precondition(m),
            StoreError::Unavailable(m) => Status::unavailable(m),
            StoreError::Cancelled(m) => Status::cancelled(m),
            StoreError::Internal(m) => Status::internal(m),
            // REAPI: "insufficient disk quota to store the blob" is RESOURCE_EXHAUSTED.
            StoreError::Io(io) if is_out_of_space(&io) => {
                Status::resource_exhausted(format!("out of storage space: {io}"))
            }
            StoreError::Io(io) => Status::internal(format!("I/O error: {io}")),
        }
    }
}

/// Whether an I/O error means the disk (or the quota) is full.
fn is_out_of_space(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{FileTooLarge, QuotaExceeded, StorageFull};
    matches!(e.kind(), StorageFull | QuotaExceeded | FileTooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_resource_exhausted_other_io_errors_internal() {
        for kind in [
            std::io::ErrorKind::StorageFull,
            std::io::ErrorKind::QuotaExceeded,
        ] {
            let status = tonic::Status::from(StoreError::Io(kind.into()));
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{kind:?}");
        }
        let enospc = StoreError::Io(std::io::Error::from_raw_os_error(28));
        assert_eq!(
            tonic::Status::from(enospc).code(),
            tonic::Code::ResourceExhausted
        );
        let other = StoreError::Io(std::io::ErrorKind::PermissionDenied.into());
        assert_eq!(tonic::Status::from(other).code(), tonic::Code::Internal);
    }
}
