//! De-duplication of sends by (sender, envelope id), one table per shard.

use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use crate::id::EnvelopeId;

/// An empty slot.
const EMPTY: u128 = 0;
/// A removed entry: skipped by lookups, cleared with its generation.
const REMOVED: u128 = u128::MAX;

/// The envelope ids routed recently, by sender: a repeat is answered
/// `duplicate` and not routed again. One per shard (every connection of a
/// user lives on the user's owner shard).
///
/// Two generations, so that forgetting costs nothing per id: ids go into
/// the current generation; once it holds `capacity` ids or is `window` old,
/// it becomes the previous one and the old previous one is cleared whole.
/// So every id is remembered for at least `window` and among at least the
/// `capacity` most recent ones (at most twice both), with no per-id expiry.
///
/// Built for the cache, which is what a send pays for here (a table of the
/// default size is far larger than a core's L2, so each cache line touched
/// is a miss; with `std`'s map, four lines per send cost a fifth of a
/// shard's throughput, measured): each generation is a flat open-addressing
/// table of 16-byte keys at most half full. The two generations are interleaved (slot `i` of both in
/// one 32-byte pair), so the two probes of a send share that line: one
/// miss, not two. The key is the envelope id XOR a secret 128-bit hash of the
/// sender: the same id from two senders is two keys, and no client can
/// make its key equal another sender's without knowing that hash. The slot
/// is a keyed hash of the key, so chosen ids cannot pile onto one slot.
#[derive(Debug)]
pub struct Dedup<S = std::hash::RandomState> {
    /// Both generations' slots, `mask + 1` each, interleaved: slot `i` of
    /// generation `t` is at `2 * i + t` (allocated on first use).
    slots: Box<[u128]>,
    current: usize,
    mask: usize,
    /// Slots taken in the current generation (removed entries included).
    fresh: usize,
    /// Live entries per table.
    live: [usize; 2],
    hasher: S,
    /// When the current generation started (at its first id).
    since: Option<Instant>,
    window: Duration,
    capacity: usize,
}

impl<S: BuildHasher + Default> Dedup<S> {
    /// Remembers ids for at least `window`, among at least the `capacity`
    /// most recent.
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            slots: Box::default(),
            current: 0,
            mask: (capacity.max(1) * 2).next_power_of_two() - 1,
            fresh: 0,
            live: [0, 0],
            hasher: S::default(),
            since: None,
            window,
            capacity,
        }
    }
}

impl<S: BuildHasher> Dedup<S> {
    /// Records `id` from `sender` at `now`; false if it was seen (from the
    /// same sender) within the window.
    pub fn insert(&mut self, sender: &str, id: EnvelopeId, now: Instant) -> bool {
        if self.capacity == 0 || self.window.is_zero() {
            return true;
        }
        let since = *self.since.get_or_insert(now);
        if self.fresh >= self.capacity || now.saturating_duration_since(since) >= self.window {
            self.rotate(now);
        }
        if self.slots.is_empty() {
            // Zeroed by the allocator: pages are touched as they fill.
            self.slots = vec![EMPTY; 2 * (self.mask + 1)].into();
        }
        let key = self.key(sender, id);
        let slot = self.slot(key);
        if self.find(1 - self.current, key, slot).is_some() {
            return false;
        }
        let mut i = slot;
        loop {
            match self.slots[2 * i + self.current] {
                EMPTY => break,
                k if k == key => return false,
                _ => i = (i + 1) & self.mask,
            }
        }
        self.slots[2 * i + self.current] = key;
        self.fresh += 1;
        self.live[self.current] += 1;
        true
    }

    /// Starts loading the cache line that [`insert`](Self::insert) will
    /// read for `id` from `sender`, so that its miss overlaps other work
    /// (the frame before it in a read batch). Changes nothing.
    pub fn prefetch(&self, sender: &str, id: EnvelopeId) {
        if self.slots.is_empty() || self.capacity == 0 || self.window.is_zero() {
            return;
        }
        prefetch(&self.slots[2 * self.slot(self.key(sender, id))]);
    }

    /// Forgets `id` (its send failed, so a retry must be routed).
    pub fn remove(&mut self, sender: &str, id: EnvelopeId) {
        if self.slots.is_empty() {
            return;
        }
        let key = self.key(sender, id);
        let slot = self.slot(key);
        for t in 0..2 {
            if let Some(i) = self.find(t, key, slot) {
                self.slots[2 * i + t] = REMOVED;
                self.live[t] -= 1;
            }
        }
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.live[0] + self.live[1]
    }

    /// True if no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The current generation becomes the previous one; the old previous
    /// one is cleared (a sequential write, once per generation).
    fn rotate(&mut self, now: Instant) {
        let old = 1 - self.current;
        for pair in self.slots.chunks_exact_mut(2) {
            pair[old] = EMPTY;
        }
        self.live[old] = 0;
        self.current = old;
        self.fresh = 0;
        self.since = Some(now);
    }

    /// The slot of `key` in generation `t`, probing from `slot`.
    fn find(&self, t: usize, key: u128, slot: usize) -> Option<usize> {
        let mut i = slot;
        loop {
            match self.slots[2 * i + t] {
                EMPTY => return None,
                k if k == key => return Some(i),
                _ => i = (i + 1) & self.mask,
            }
        }
    }

    fn key(&self, sender: &str, id: EnvelopeId) -> u128 {
        let hi = self.hasher.hash_one((0u8, sender));
        let lo = self.hasher.hash_one((1u8, sender));
        let key = u128::from_be_bytes(id.0) ^ (u128::from(hi) << 64 | u128::from(lo));
        // The two marker values are taken by another key (a chance of
        // 2^-127 for a fresh id, and no way to aim for it).
        match key {
            EMPTY => 1,
            REMOVED => REMOVED - 1,
            k => k,
        }
    }

    fn slot(&self, key: u128) -> usize {
        self.hasher.hash_one(key) as usize & self.mask
    }
}

#[cfg(target_arch = "x86_64")]
fn prefetch(slot: &u128) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    // SAFETY: a prefetch is only a hint: it reads nothing into the program
    // and never faults (and the pointer is a valid reference anyway).
    unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(slot).cast()) }
}

#[cfg(not(target_arch = "x86_64"))]
fn prefetch(_: &u128) {}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// The same rules with `std`'s map: id → (sender, generation).
    struct Model {
        seen: HashMap<(String, u8), u64>,
        generation: u64,
        fresh: usize,
        capacity: usize,
    }

    impl Model {
        fn insert(&mut self, sender: &str, id: u8) -> bool {
            if self.fresh >= self.capacity {
                self.generation += 1;
                self.fresh = 0;
                let keep = self.generation - 1;
                self.seen.retain(|_, g| *g >= keep);
            }
            let key = (sender.to_owned(), id);
            if self.seen.contains_key(&key) {
                return false;
            }
            self.seen.insert(key, self.generation);
            self.fresh += 1;
            true
        }

        fn remove(&mut self, sender: &str, id: u8) {
            self.seen.remove(&(sender.to_owned(), id));
        }
    }

    fn id(n: u8) -> EnvelopeId {
        let mut b = [0; 16];
        b[15] = n;
        EnvelopeId(b)
    }

    proptest! {
        /// Whatever the order of sends and removals, the table answers as
        /// the model does (a small capacity makes probes wrap and
        /// generations turn over often).
        #[test]
        fn agrees_with_a_map(
            capacity in 1usize..6,
            ops in proptest::collection::vec((any::<bool>(), 0u8..3, 0u8..12), 1..200),
        ) {
            let t = Instant::now();
            let mut dedup: Dedup = Dedup::new(Duration::from_secs(60), capacity);
            let mut model = Model { seen: HashMap::new(), generation: 0, fresh: 0, capacity };
            let senders = ["alice", "bob", "carol"];
            for (insert, who, n) in ops {
                let sender = senders[usize::from(who)];
                if insert {
                    dedup.prefetch(sender, id(n));
                    prop_assert_eq!(dedup.insert(sender, id(n), t), model.insert(sender, n));
                } else {
                    dedup.remove(sender, id(n));
                    model.remove(sender, n);
                }
                prop_assert_eq!(dedup.len(), model.seen.len());
            }
        }
    }

    #[test]
    fn removed_slots_do_not_fill_the_table() {
        let t = Instant::now();
        let mut dedup: Dedup = Dedup::new(Duration::from_secs(60), 2);
        // Many generations of ids all removed again: were removed slots
        // kept across generations, the 4-slot tables would fill and a
        // probe would never end.
        for n in 0..200u8 {
            assert!(dedup.insert("alice", id(n), t));
            dedup.remove("alice", id(n));
        }
        assert!(dedup.is_empty());
        assert!(dedup.insert("alice", id(7), t), "a removed id is routed again");
        assert!(!dedup.insert("alice", id(7), t));
    }

    #[test]
    fn a_generation_ends_after_the_window() {
        let t = Instant::now();
        let window = Duration::from_secs(10);
        let mut dedup: Dedup = Dedup::new(window, 100);
        assert!(dedup.insert("alice", id(1), t));
        assert!(!dedup.insert("alice", id(1), t + window), "in the previous generation");
        assert!(dedup.insert("alice", id(2), t + window));
        assert!(dedup.insert("alice", id(1), t + 2 * window), "its generation was cleared");
    }

    #[test]
    fn off_when_capacity_or_window_is_zero() {
        let t = Instant::now();
        for mut dedup in
            [Dedup::<std::hash::RandomState>::new(Duration::ZERO, 10), Dedup::new(Duration::from_secs(1), 0)]
        {
            assert!(dedup.insert("alice", id(1), t));
            assert!(dedup.insert("alice", id(1), t));
            assert!(dedup.is_empty());
        }
    }
}
