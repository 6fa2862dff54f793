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
}

impl FilesystemOptions {
    /// A content-addressed store of at most `max_bytes`, checkpointed every 30 s.
    pub fn new(max_bytes: u64) -> Self {
        FilesystemOptions {
            max_bytes,
            verify_on_recovery: true,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
        }
    }
}
