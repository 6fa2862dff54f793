//! [`RedisState`]: operation records in Redis, so a restarted scheduler loses no queued or
//! running operation.
//!
//! Layout under a key prefix (default `farm-scheduler:`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{prefix}op:{name}` | string | the prost-encoded [`OperationRecord`]; finished ones expire after the retention |
//! | `{prefix}queue` | sorted set | names of queued operations, scored by arrival sequence |
//! | `{prefix}leases` | hash | executing operation name → lease id |
//!
//! Each batch of changes is one `MULTI`/`EXEC` pipeline, so the three structures never
//! disagree. Plain strings, hashes and sorted sets only: any Redis 5+ works.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use prost::Message;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisError;

use super::{OperationRecord, RecordStage, SchedulerState, StateChange, StateError};

/// The key prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "farm-scheduler:";

/// How many records one MGET reads when loading.
const LOAD_CHUNK: usize = 1000;

/// How long one command may wait for its reply.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one connection attempt may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Scheduler state in Redis.
#[derive(Clone)]
pub struct RedisState {
    conn: ConnectionManager,
    prefix: String,
    /// Seconds a finished operation's record is kept.
    completed_ttl_secs: u64,
    display_url: String,
}

impl fmt::Debug for RedisState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisState")
            .field("url", &self.display_url)
            .field("prefix", &self.prefix)
            .field("completed_ttl_secs", &self.completed_ttl_secs)
            .finish_non_exhaustive()
    }
}

impl RedisState {
    /// Connects to `url` (`redis://[user:password@]host:port[/db]`). Records of finished
    /// operations expire `completed_retention` after they finish (at least one second).
    pub async fn connect(
        url: &str,
        prefix: impl Into<String>,
        completed_retention: Duration,
    ) -> Result<Self, StateError> {
        let display_url = redact(url);
        let client = redis::Client::open(url).map_err(|e| {
            StateError::InvalidConfig(format!("invalid Redis URL {display_url}: {e}"))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_number_of_retries(3);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| {
                StateError::Unavailable(format!("cannot connect to Redis at {display_url}: {e}"))
            })?;
        Ok(RedisState {
            conn,
            prefix: prefix.into(),
            completed_ttl_secs: completed_retention.as_secs().max(1),
            display_url,
        })
    }

    fn op_key(&self, name: &str) -> String {
        format!("{}op:{name}", self.prefix)
    }

    fn queue_key(&self) -> String {
        format!("{}queue", self.prefix)
    }

    fn leases_key(&self) -> String {
        format!("{}leases", self.prefix)
    }

    fn error(&self, what: &str, e: RedisError) -> StateError {
        StateError::Unavailable(format!("Redis {what} at {} failed: {e}", self.display_url))
    }

    fn decode(&self, name: &str, data: &[u8]) -> Result<OperationRecord, StateError> {
        OperationRecord::decode(data).map_err(|e| StateError::Corrupt {
            key: self.op_key(name),
            reason: e.to_string(),
        })
    }
}

#[async_trait]
impl SchedulerState for RedisState {
    async fn load_unfinished(&self) -> Result<Vec<OperationRecord>, StateError> {
        let mut conn = self.conn.clone();
        let (mut names, leased): (Vec<String>, Vec<String>) = redis::pipe()
            .cmd("ZRANGE")
            .arg(self.queue_key())
            .arg(0)
            .arg(-1)
            .cmd("HKEYS")
            .arg(self.leases_key())
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error("loading the queue and leases", e))?;
        names.extend(leased);
        names.sort_unstable();
        names.dedup();
        let mut out = Vec::with_capacity(names.len());
        for chunk in names.chunks(LOAD_CHUNK) {
            let keys: Vec<String> = chunk.iter().map(|n| self.op_key(n)).collect();
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.error("MGET of operation records", e))?;
            for (name, value) in chunk.iter().zip(values) {
                let Some(data) = value else {
                    tracing::warn!(name, "queued or leased operation has no record; skipped");
                    continue;
                };
                let record = self.decode(name, &data)?;
                if matches!(
                    record.record_stage(),
                    RecordStage::Queued | RecordStage::Executing
                ) {
                    out.push(record);
                }
            }
        }
        Ok(out)
    }

    async fn get(&self, name: &str) -> Result<Option<OperationRecord>, StateError> {
        let mut conn = self.conn.clone();
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.op_key(name))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error("GET of an operation record", e))?;
        value.map(|data| self.decode(name, &data)).transpose()
    }

    async fn apply(&self, changes: &[StateChange]) -> Result<(), StateError> {
        if changes.is_empty() {
            return Ok(());
        }
        let queue = self.queue_key();
        let leases = self.leases_key();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for change in changes {
            match change {
                StateChange::Put(record) => {
                    let key = self.op_key(&record.name);
                    let data = record.encode_to_vec();
                    match record.record_stage() {
                        RecordStage::Queued => {
                            pipe.cmd("SET").arg(&key).arg(data).ignore();
                            pipe.cmd("ZADD")
                                .arg(&queue)
                                .arg(record.seq)
                                .arg(&record.name)
                                .ignore();
                            pipe.cmd("HDEL").arg(&leases).arg(&record.name).ignore();
                        }
                        RecordStage::Executing => {
                            pipe.cmd("SET").arg(&key).arg(data).ignore();
                            pipe.cmd("ZREM").arg(&queue).arg(&record.name).ignore();
                            pipe.cmd("HSET")
                                .arg(&leases)
                                .arg(&record.name)
                                .arg(&record.lease_id)
                                .ignore();
                        }
                        RecordStage::Completed | RecordStage::Unspecified => {
                            pipe.cmd("SET")
                                .arg(&key)
                                .arg(data)
                                .arg("EX")
                                .arg(self.completed_ttl_secs)
                                .ignore();
                            pipe.cmd("ZREM").arg(&queue).arg(&record.name).ignore();
                            pipe.cmd("HDEL").arg(&leases).arg(&record.name).ignore();
                        }
                    }
                }
                StateChange::Remove(name) => {
                    pipe.cmd("DEL").arg(self.op_key(name)).ignore();
                    pipe.cmd("ZREM").arg(&queue).arg(name).ignore();
                    pipe.cmd("HDEL").arg(&leases).arg(name).ignore();
                }
            }
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.error("MULTI/EXEC of state changes", e))
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

/// Hides the password of a `redis://user:password@host` URL.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}
