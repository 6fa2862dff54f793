//! [`MemoryState`]: operation records in this process's memory (the default). Nothing survives
//! the process, but a new scheduler built over the same `MemoryState` resumes from it, which is
//! how tests exercise the restart logic without Redis.

use std::collections::HashMap;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{OperationRecord, RecordStage, SchedulerState, StateChange, StateError};

/// Operation records in a hash map.
#[derive(Debug, Default)]
pub struct MemoryState {
    records: Mutex<HashMap<String, OperationRecord>>,
}

impl MemoryState {
    /// An empty state.
    pub fn new() -> Self {
        MemoryState::default()
    }

    /// How many operations are recorded.
    pub fn len(&self) -> usize {
        self.records.lock().len()
    }

    /// Whether no operation is recorded.
    pub fn is_empty(&self) -> bool {
        self.records.lock().is_empty()
    }
}

#[async_trait]
impl SchedulerState for MemoryState {
    async fn load_unfinished(&self) -> Result<Vec<OperationRecord>, StateError> {
        Ok(self
            .records
            .lock()
            .values()
            .filter(|r| {
                matches!(
                    r.record_stage(),
                    RecordStage::Queued | RecordStage::Executing
                )
            })
            .cloned()
            .collect())
    }

    async fn get(&self, name: &str) -> Result<Option<OperationRecord>, StateError> {
        Ok(self.records.lock().get(name).cloned())
    }

    async fn apply(&self, changes: &[StateChange]) -> Result<(), StateError> {
        let mut records = self.records.lock();
        for change in changes {
            match change {
                StateChange::Put(record) => {
                    records.insert(record.name.clone(), record.clone());
                }
                StateChange::Remove(name) => {
                    records.remove(name);
                }
            }
        }
        Ok(())
    }

    fn is_durable(&self) -> bool {
        false
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
