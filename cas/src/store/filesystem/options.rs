//! How a [`FilesystemStore`](super::FilesystemStore) is opened.

use std::time::Duration;

use super::DEFAULT_CHECKPOINT_INTERVAL;

/// How to open a [`FilesystemStore`].
#[derive(Clone, Debug)]
pub struct FilesystemOptions {
    /// Byte budget of the blobs before least-recently-used ones are evicted.
    pub max_bytes: u64,
    /// Keys are content digests (a CAS): files whose content does not match their name are
    /// deleted at open, and after an unclean stop the blobs written since the last checkpoint
    /// are rehashed. Must be false for stores of other values (the action cache).
    pub verify_on_recovery: bool,
    /// How often written data is flushed to disk (`syncfs`) and a checkpoint recorded; bounds
    /// what a recovery rehashes. Only with `verify_on_recovery`.
    pub checkpoint_interval: Duration,
    /// Read ranges of at least [`MIN_DIRECT_BYTES`](crate::direct_io::MIN_DIRECT_BYTES) from
    /// the page cache where it holds them and with `O_DIRECT` otherwise, instead of through
    /// newly allocated page-cache pages (see [`crate::direct_io`]).
    pub direct_io: bool,
}

impl FilesystemOptions {
    /// A content-addressed store of at most `max_bytes`, checkpointed every 30 s, reading large
    /// blobs with direct I/O.
    pub fn new(max_bytes: u64) -> Self {
        FilesystemOptions {
            max_bytes,
            verify_on_recovery: true,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            direct_io: true,
        }
    }
}
