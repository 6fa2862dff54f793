//! The queue index: queued operations grouped by the platform they require, each group ordered
//! by priority then arrival, plus which connected workers could take each group.
//!
//! Actions that require the same property set share one [`Key`]. Workers and keys are matched
//! once, when either appears (each worker keeps the list of keys it satisfies, each key the
//! set of idle workers that satisfy it), so dispatch never scans queued actions:
//!
//! - a worker with a free slot takes the best head among its compatible keys' queues
//!   (`O(keys × log n)`), and
//! - a new action goes straight to the idle compatible worker with the most free slots, or
//!   into its key's queue (`O(log n)`).
//!
//! Order within a key: lower `ExecutionPolicy.priority` first (REAPI: a lower value runs
//! sooner), then first queued first (a sequence number; requeued actions keep theirs, so they
//! go back near the front).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use prometheus::IntGauge;

use crate::metrics;
use crate::platform::Platform;

/// Index of a [`Key`] in [`Queues`]; keys are never removed, so ids stay valid.
pub type KeyId = usize;

/// Identifies one worker session (a connection; a reconnecting worker gets a new one).
pub type SessionId = u64;

/// Queue order: `(priority, sequence)`, smallest first.
pub type Rank = (i32, u64);

/// One platform requirement set, its queue and the workers that satisfy it.
#[derive(Debug)]
pub struct Key {
    pub platform: Platform,
    /// Queued operations by rank.
    pub queue: BTreeMap<Rank, Arc<str>>,
    /// Connected workers satisfying this key that have a free slot, most free slots first.
    pub idle: BTreeSet<(Reverse<u32>, SessionId)>,
    /// Connected workers satisfying this key (busy or not).
    pub workers: usize,
    /// Since when no connected worker satisfies this key (`None` while one does).
    pub no_worker_since: Option<Instant>,
    depth: IntGauge,
}

impl Key {
    fn new(platform: Platform, now: Instant) -> Self {
        let depth = metrics::QUEUE_DEPTH.with_label_values(&[&platform.label()]);
        Key {
            platform,
            queue: BTreeMap::new(),
            idle: BTreeSet::new(),
            workers: 0,
            no_worker_since: Some(now),
            depth,
        }
    }

    /// Queues `name` at `rank`.
    pub fn push(&mut self, rank: Rank, name: Arc<str>) {
        if self.queue.insert(rank, name).is_none() {
            self.depth.inc();
        }
    }

    /// Removes the entry at `rank`, if queued.
    pub fn remove(&mut self, rank: Rank) -> Option<Arc<str>> {
        let removed = self.queue.remove(&rank);
        if removed.is_some() {
            self.depth.dec();
        }
        removed
    }

    /// The best queued entry's rank.
    pub fn head(&self) -> Option<Rank> {
        self.queue.first_key_value().map(|(rank, _)| *rank)
    }

    /// The idle worker with the most free slots.
    pub fn best_idle(&self) -> Option<SessionId> {
        self.idle.first().map(|(_, session)| *session)
    }

    /// Records that a compatible worker's free slots went from `old` to `new`.
    pub fn set_free(&mut self, session: SessionId, old: u32, new: u32) {
        if old > 0 {
            self.idle.remove(&(Reverse(old), session));
        }
        if new > 0 {
            self.idle.insert((Reverse(new), session));
        }
    }

    /// A compatible worker connected.
    pub fn worker_joined(&mut self) {
        self.workers += 1;
        self.no_worker_since = None;
    }

    /// A compatible worker left.
    pub fn worker_left(&mut self, now: Instant) {
        self.workers = self.workers.saturating_sub(1);
        if self.workers == 0 {
            self.no_worker_since = Some(now);
        }
    }
}

/// Every key, interned by platform.
#[derive(Debug, Default)]
pub struct Queues {
    keys: Vec<Key>,
    by_platform: HashMap<Platform, KeyId>,
}

impl Queues {
    /// The key of `platform`, and whether it was just created (the caller then matches it
    /// against connected workers).
    pub fn intern(&mut self, platform: &Platform, now: Instant) -> (KeyId, bool) {
        if let Some(&id) = self.by_platform.get(platform) {
            return (id, false);
        }
        let id = self.keys.len();
        self.keys.push(Key::new(platform.clone(), now));
        self.by_platform.insert(platform.clone(), id);
        (id, true)
    }

    /// The key with id `id` (ids come from [`Queues::intern`]).
    pub fn key(&self, id: KeyId) -> &Key {
        &self.keys[id]
    }

    /// The key with id `id`, to change.
    pub fn key_mut(&mut self, id: KeyId) -> &mut Key {
        &mut self.keys[id]
    }

    /// Every key with its id.
    pub fn iter(&self) -> impl Iterator<Item = (KeyId, &Key)> {
        self.keys.iter().enumerate()
    }

    /// Ids of the keys a worker offering `offer` satisfies.
    pub fn compatible_with(&self, offer: &Platform) -> Vec<KeyId> {
        self.keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.platform.is_satisfied_by(offer))
            .map(|(id, _)| id)
            .collect()
    }

    /// Among `keys`, the one whose queue head ranks best, with that rank.
    pub fn best_head(&self, keys: &[KeyId]) -> Option<(KeyId, Rank)> {
        keys.iter()
            .filter_map(|&id| self.keys[id].head().map(|rank| (id, rank)))
            .min_by_key(|&(_, rank)| rank)
    }

    /// Total queued operations.
    pub fn depth(&self) -> usize {
        self.keys.iter().map(|k| k.queue.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_then_fifo_across_keys() {
        let now = Instant::now();
        let mut q = Queues::default();
        let linux = Platform::from_pairs([("OSFamily", "linux")]);
        let any = Platform::empty();
        let (a, new_a) = q.intern(&linux, now);
        let (b, new_b) = q.intern(&any, now);
        assert!(new_a && new_b);
        assert_eq!(q.intern(&linux, now), (a, false));
        q.key_mut(a).push((0, 5), "a5".into());
        q.key_mut(a).push((-1, 9), "a9".into());
        q.key_mut(b).push((0, 1), "b1".into());
        let worker = Platform::from_pairs([("OSFamily", "linux"), ("ISA", "x86-64")]);
        let compatible = q.compatible_with(&worker);
        assert_eq!(compatible, vec![a, b]);
        assert_eq!(q.best_head(&compatible), Some((a, (-1, 9))));
        q.key_mut(a).remove((-1, 9));
        assert_eq!(q.best_head(&compatible), Some((b, (0, 1))));
        assert_eq!(q.best_head(&[a]), Some((a, (0, 5))));
        assert_eq!(q.depth(), 2);
    }

    #[test]
    fn idle_workers_most_free_first() {
        let now = Instant::now();
        let mut q = Queues::default();
        let (k, _) = q.intern(&Platform::empty(), now);
        let key = q.key_mut(k);
        key.set_free(1, 0, 2);
        key.set_free(2, 0, 5);
        assert_eq!(key.best_idle(), Some(2));
        key.set_free(2, 5, 1);
        assert_eq!(key.best_idle(), Some(1));
        key.set_free(1, 2, 0);
        key.set_free(2, 1, 0);
        assert_eq!(key.best_idle(), None);
    }
}
