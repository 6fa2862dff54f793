//! A Redis-backed blob store, meant for small blobs and the action cache.
//!
//! Every blob is one Redis string under `{prefix}{hash}-{size}` ([`Digest::key`]). Redis holds
//! values in memory and refuses strings over 512 MiB, so the store has a per-blob cap (clamped to
//! that limit); a size-partitioned policy in front of it sends larger blobs elsewhere.
//!
//! One [`ConnectionManager`] is shared by all calls: it multiplexes requests over a single
//! connection (pipelining them) and reconnects on its own after the connection drops, so each
//! call clones the cheap handle instead of locking a connection.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, ServerErrorKind};

use super::{collect_capped, dedup_in_order, once, BlobStore, ByteRange, ChunkStream};
use crate::digest::Digest;
use crate::error::StoreError;
use crate::redact::redact_url;

/// The largest string Redis accepts (`proto-max-bulk-len` defaults to, and cannot exceed, this).
pub const REDIS_MAX_VALUE_BYTES: u64 = 512 * 1024 * 1024;

/// How long one command may wait for its reply. Generous: a SET of a blob near the 512 MiB cap,
/// or a pipeline of tens of thousands of TOUCHes, must fit in it.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one connection attempt may take before it counts as failed.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnection attempts (with exponential back-off) before a call fails as unavailable.
const RECONNECT_RETRIES: usize = 3;

/// A [`BlobStore`] keeping each blob as one Redis string.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    key_prefix: String,
    max_blob_bytes: u64,
    /// The URL without its password, for logs and error messages.
    display_url: String,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.display_url)
            .field("key_prefix", &self.key_prefix)
            .field("max_blob_bytes", &self.max_blob_bytes)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the Redis server at `url` (`redis://[user:password@]host:port[/db]`, or
    /// `rediss://` for TLS if the crate was built with it).
    ///
    /// Keys are `{key_prefix}{hash}-{size}`. Blobs larger than `max_blob_bytes` (clamped to
    /// Redis' 512 MiB limit) are refused with [`StoreError::ResourceExhausted`]. Fails with
    /// [`StoreError::Unavailable`] if the server cannot be reached now; later connection losses
    /// are repaired by reconnecting on the next call.
    pub async fn connect(
        url: &str,
        key_prefix: String,
        max_blob_bytes: u64,
    ) -> Result<Self, StoreError> {
        let display_url = redact_url(url);
        let client = redis::Client::open(url).map_err(|e| {
            StoreError::InvalidArgument(format!("invalid Redis URL {display_url}: {e}"))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot connect to Redis at {display_url}: {e}"))
            })?;
        Ok(RedisStore {
            conn,
            key_prefix,
            max_blob_bytes: max_blob_bytes.min(REDIS_MAX_VALUE_BYTES),
            display_url,
        })
    }

    /// The effective per-blob cap in bytes (the configured one, clamped to 512 MiB).
    pub fn max_blob_bytes(&self) -> u64 {
        self.max_blob_bytes
    }

    /// The key prefix every blob key starts with.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The Redis key of `digest`.
    pub fn key(&self, digest: &Digest) -> String {
        format!("{}{}", self.key_prefix, digest.key())
    }

    fn too_large(&self, digest: &Digest, size: u64, at_least: bool) -> StoreError {
        let plus = if at_least { "+" } else { "" };
        StoreError::ResourceExhausted(format!(
            "blob {digest} ({size}{plus} bytes) is larger than the Redis store's per-blob cap of \
             {} bytes",
            self.max_blob_bytes
        ))
    }

    fn map_err(&self, what: &str, digest: Option<&Digest>, e: RedisError) -> StoreError {
        let about = digest.map(|d| format!(" of blob {d}")).unwrap_or_default();
        let msg = format!("Redis {what}{about} at {} failed: {e}", self.display_url);
        map_redis_error(e, msg)
    }
}

/// Classifies a Redis error: anything about the connection is `Unavailable`, a server out of
/// memory is `ResourceExhausted`, the rest is `Internal`.
fn map_redis_error(e: RedisError, msg: String) -> StoreError {
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
    {
        return StoreError::Unavailable(msg);
    }
    match e.kind() {
        ErrorKind::AuthenticationFailed
        | ErrorKind::Io
        | ErrorKind::ClusterConnectionNotFound
        | ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::NoPerm,
        ) => StoreError::Unavailable(msg),
        _ if e.code() == Some("OOM") => StoreError::ResourceExhausted(msg),
        _ => StoreError::Internal(msg),
    }
}

/// Clamps a byte position to what a Redis integer argument holds.
fn as_redis_index(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

#[async_trait]
impl BlobStore for RedisStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError> {
        let unique = dedup_in_order(digests);
        if unique.is_empty() {
            return Ok(unique);
        }
        // One pipeline: all TOUCHes go out in one write and come back in one round trip. TOUCH
        // answers like EXISTS but also marks the key used (EXISTS does not), so under an LRU
        // maxmemory policy a blob just reported present is not the next one evicted (REAPI
        // asks FindMissingBlobs to extend the lifetimes of what it finds).
        let mut pipe = redis::pipe();
        for d in &unique {
            pipe.cmd("TOUCH").arg(self.key(d));
        }
        let mut conn = self.conn.clone();
        let present: Vec<bool> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| self.map_err("TOUCH pipeline", None, e))?;
        if present.len() != unique.len() {
            return Err(StoreError::Internal(format!(
                "Redis answered {} of {} TOUCH in a pipeline",
                present.len(),
                unique.len()
            )));
        }
        Ok(unique
            .into_iter()
            .zip(present)
            .filter_map(|(d, here)| (!here).then_some(d))
            .collect())
    }

    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<ChunkStream, StoreError> {
        Ok(once(self.get_bytes(digest, range).await?))
    }

    async fn get_bytes(&self, digest: &Digest, range: ByteRange) -> Result<Bytes, StoreError> {
        let key = self.key(digest);
        let mut conn = self.conn.clone();
        if range.is_all() {
            let value: Option<Bytes> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.map_err("GET", Some(digest), e))?;
            return value.ok_or(StoreError::NotFound(*digest));
        }
        // A ranged read needs the value's length (for OutOfRange) and whether the key exists
        // (GETRANGE answers "" for a missing key); MULTI/EXEC makes the three replies describe
        // one and the same value even if it is overwritten concurrently.
        let start = range.offset;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("EXISTS")
            .arg(&key)
            .cmd("STRLEN")
            .arg(&key);
        let wants_bytes = range.limit != Some(0);
        if wants_bytes {
            // GETRANGE's end is inclusive; -1 means "to the end".
            let end_inclusive = match range.limit {
                Some(limit) => as_redis_index(start.saturating_add(limit) - 1),
                None => -1,
            };
            pipe.cmd("GETRANGE")
                .arg(&key)
                .arg(as_redis_index(start))
                .arg(end_inclusive);
        }
        let (exists, len, data): (bool, u64, Option<Bytes>) = if wants_bytes {
            let (exists, len, data): (bool, u64, Bytes) = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| self.map_err("GETRANGE", Some(digest), e))?;
            (exists, len, Some(data))
        } else {
            let (exists, len): (bool, u64) = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| self.map_err("STRLEN", Some(digest), e))?;
            (exists, len, None)
        };
        if !exists {
            return Err(StoreError::NotFound(*digest));
        }
        let (from, to) = range.clamp(len)?;
        let data = data.unwrap_or_default();
        if data.len() as u64 != to - from {
            // Cannot happen with MULTI/EXEC, but never hand out a silently short read.
            return Err(StoreError::Internal(format!(
                "Redis returned {} bytes for range {from}..{to} of blob {digest}",
                data.len()
            )));
        }
        Ok(data)
    }

    async fn put(&self, digest: &Digest, data: ChunkStream) -> Result<(), StoreError> {
        if digest.size() > self.max_blob_bytes {
            return Err(self.too_large(digest, digest.size(), false));
        }
        // Values are opaque (action-cache entries are not digest.size() long), so the cap is
        // enforced again on the bytes actually received. Nothing reaches Redis unless the
        // stream ends cleanly.
        let data = collect_capped(data, self.max_blob_bytes, |n| {
            self.too_large(digest, n, true)
        })
        .await?;
        self.put_bytes(digest, data).await
    }

    async fn put_bytes(&self, digest: &Digest, data: Bytes) -> Result<(), StoreError> {
        if digest.size() > self.max_blob_bytes {
            return Err(self.too_large(digest, digest.size(), false));
        }
        if data.len() as u64 > self.max_blob_bytes {
            return Err(self.too_large(digest, data.len() as u64, false));
        }
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(self.key(digest))
            .arg(&data[..])
            .exec_async(&mut conn)
            .await
            .map_err(|e| self.map_err("SET", Some(digest), e))
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_saturate() {
        assert_eq!(as_redis_index(u64::MAX), i64::MAX);
        assert_eq!(as_redis_index(7), 7);
    }

    #[tokio::test]
    async fn unreachable_server_is_unavailable() {
        // Port 1 on loopback: nothing listens there, so the connection is refused at once.
        let err = RedisStore::connect("redis://127.0.0.1:1", String::new(), 1 << 20)
            .await
            .expect_err("no server on port 1");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        let err = RedisStore::connect("http://nope", String::new(), 1 << 20)
            .await
            .expect_err("not a redis URL");
        assert!(matches!(err, StoreError::InvalidArgument(_)), "{err:?}");
    }
}
