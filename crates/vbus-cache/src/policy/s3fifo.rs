//! S3-FIFO: a small probationary FIFO, a main FIFO with reinsertion, and a ghost FIFO of hashes.

use std::collections::{HashMap, VecDeque};

use std::sync::atomic::{AtomicU8, Ordering};

/// Share of the capacity, in bytes, the small queue holds before it gives way (10%).
const SMALL_SHARE: f64 = 0.10;
/// The access counter saturates here.
const FREQ_MAX: u8 = 3;
/// Ghost entries remembered at least.
const GHOST_MIN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Queue {
    #[default]
    None,
    Small,
    Main,
}

#[derive(Debug, Default)]
struct SlotState {
    /// Hits since the last pass, bumped under a shared lock, so atomic (a lost race loses one
    /// count). Beside the rest of the slot's state: one cache line per slot on every path.
    freq: AtomicU8,
    queue: Queue,
    /// Bumped at every insert into the slot: queue positions of an earlier occupant go stale.
    stamp: u32,
    size_bytes: u64,
    key_hash: u64,
}

/// A queue position: the slot and its stamp when it was queued.
type Position = (u32, u32);

/// New keys enter the small queue; keys seen recently in the ghost queue enter main. Eviction
/// takes from small while it holds more than 10% of the bytes: an entry hit twice or more there
/// moves to main, the others leave and their hashes go to the ghost queue. In main, an entry hit
/// since its last pass is reinserted with one hit fewer; the others leave.
///
/// The queues are rings of positions, read and written in order (no pointer chasing); a removed
/// entry is left in its ring and skipped when it comes up, and a ring holding more stale
/// positions than live ones is compacted.
#[derive(Debug)]
pub struct S3Fifo {
    small: VecDeque<Position>,
    main: VecDeque<Position>,
    small_len: usize,
    main_len: usize,
    small_target_bytes: u64,
    small_bytes: u64,
    slots: Vec<SlotState>,
    /// The ghost queue, as a window over remember numbers: the `ghost_len` newest remembered
    /// hashes are in it. `ghost_index` maps a hash to its newest remember number; an entry
    /// older than the window is dead and swept out when the index outgrows twice the window.
    /// (A queue of hashes beside the index would cost one more random probe per eviction.)
    ghost_index: HashMap<u64, u64, KeyHashState>,
    ghost_seq: u64,
    ghost_len: u64,
}

/// The ghost index's keys are key hashes already: used as they are, not hashed again.
#[derive(Debug, Clone, Copy, Default)]
struct KeyHashState;

impl std::hash::BuildHasher for KeyHashState {
    type Hasher = KeyHashHasher;

    fn build_hasher(&self) -> KeyHashHasher {
        KeyHashHasher(0)
    }
}

#[derive(Debug)]
struct KeyHashHasher(u64);

impl std::hash::Hasher for KeyHashHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; anything else folds in bytewise.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// Stale positions a ring may hold beyond its live ones before it is compacted.
const STALE_SLACK: usize = 64;

impl S3Fifo {
    pub(crate) fn new(capacity_bytes: u64) -> Self {
        Self {
            small: VecDeque::new(),
            main: VecDeque::new(),
            small_len: 0,
            main_len: 0,
            small_target_bytes: ((capacity_bytes as f64) * SMALL_SHARE) as u64,
            small_bytes: 0,
            slots: Vec::new(),
            ghost_index: HashMap::with_hasher(KeyHashState),
            ghost_seq: 0,
            ghost_len: 0,
        }
    }

    pub(crate) fn insert(&mut self, slot: u32, key_hash: u64, size_bytes: u64) {
        let idx = slot as usize;
        if self.slots.len() <= idx {
            self.slots.resize_with(idx + 1, SlotState::default);
        }
        let returning = self
            .ghost_index
            .remove(&key_hash)
            .is_some_and(|seq| self.in_ghost(seq));
        let queue = if returning { Queue::Main } else { Queue::Small };
        let state = &mut self.slots[idx];
        state.freq.store(0, Ordering::Relaxed);
        state.queue = queue;
        state.stamp = state.stamp.wrapping_add(1);
        state.size_bytes = size_bytes;
        state.key_hash = key_hash;
        let position = (slot, state.stamp);
        match queue {
            Queue::Main => {
                self.main.push_back(position);
                self.main_len += 1;
            }
            _ => {
                self.small.push_back(position);
                self.small_len += 1;
                self.small_bytes += size_bytes;
            }
        }
    }

    pub(crate) fn access(&self, slot: u32) {
        if let Some(state) = self.slots.get(slot as usize) {
            let seen = state.freq.load(Ordering::Relaxed);
            if seen < FREQ_MAX {
                state.freq.store(seen + 1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn remove(&mut self, slot: u32) {
        let Some(state) = self.slots.get_mut(slot as usize) else {
            return;
        };
        match state.queue {
            Queue::Small => {
                self.small_len -= 1;
                self.small_bytes -= state.size_bytes;
            }
            Queue::Main => self.main_len -= 1,
            Queue::None => return,
        }
        state.queue = Queue::None;
        let slots = &self.slots;
        for (ring, live, queue) in [
            (&mut self.small, self.small_len, Queue::Small),
            (&mut self.main, self.main_len, Queue::Main),
        ] {
            if ring.len() > 2 * live + STALE_SLACK {
                ring.retain(|&position| is_live(slots, position, queue));
            }
        }
    }

    /// The oldest live position of a ring, taken out of it.
    fn pop_live(&mut self, queue: Queue) -> Option<u32> {
        let ring = match queue {
            Queue::Small => &mut self.small,
            _ => &mut self.main,
        };
        while let Some(position) = ring.pop_front() {
            if is_live(&self.slots, position, queue) {
                return Some(position.0);
            }
        }
        None
    }

    fn requeue_main(&mut self, slot: u32) {
        let stamp = self.slots[slot as usize].stamp;
        self.main.push_back((slot, stamp));
    }

    pub(crate) fn evict(&mut self, keep: &mut dyn FnMut(u32) -> bool) -> Option<u32> {
        // Each entry moves at most a few times (small → main, and FREQ_MAX reinsertions), and
        // kept entries once per queue per call, so this bound covers every case.
        let bound = 2 * (usize::from(FREQ_MAX) + 2) * (self.len() + 1);
        // Kept entries met in a row in main: a full pass of them means main has nothing to give,
        // and small is tried whatever its share.
        let mut main_kept_run = 0usize;
        let mut force_small = false;
        for _ in 0..bound {
            let from_small = self.small_len > 0
                && (force_small
                    || self.small_bytes > self.small_target_bytes
                    || self.main_len == 0);
            if from_small {
                let slot = self.pop_live(Queue::Small)?;
                self.small_len -= 1;
                let state = &mut self.slots[slot as usize];
                self.small_bytes -= state.size_bytes;
                if state.freq.load(Ordering::Relaxed) > 1 || keep(slot) {
                    let state = &mut self.slots[slot as usize];
                    state.queue = Queue::Main;
                    state.freq.store(0, Ordering::Relaxed);
                    self.requeue_main(slot);
                    self.main_len += 1;
                    continue;
                }
                let state = &mut self.slots[slot as usize];
                state.queue = Queue::None;
                let key_hash = state.key_hash;
                self.remember(key_hash);
                return Some(slot);
            }
            let slot = self.pop_live(Queue::Main)?;
            let freq = self.slots[slot as usize].freq.load(Ordering::Relaxed);
            if freq > 0 {
                self.slots[slot as usize]
                    .freq
                    .store(freq - 1, Ordering::Relaxed);
                self.requeue_main(slot);
                continue;
            }
            if keep(slot) {
                self.requeue_main(slot);
                main_kept_run += 1;
                if main_kept_run > self.main_len {
                    if self.small_len == 0 {
                        return None;
                    }
                    force_small = true;
                }
                continue;
            }
            self.main_len -= 1;
            self.slots[slot as usize].queue = Queue::None;
            return Some(slot);
        }
        None
    }

    /// Whether remember number `seq` is still in the ghost window.
    fn in_ghost(&self, seq: u64) -> bool {
        seq + self.ghost_len > self.ghost_seq
    }

    /// Puts a key hash in the ghost queue, which remembers about as many keys as the queues hold:
    /// the window grows by one up to that many (a queue trimmed to it after each push).
    fn remember(&mut self, key_hash: u64) {
        self.ghost_seq += 1;
        self.ghost_index.insert(key_hash, self.ghost_seq);
        let ghost_max = self.len().max(GHOST_MIN) as u64;
        self.ghost_len = (self.ghost_len + 1).min(ghost_max);
        if self.ghost_index.len() as u64 > 2 * self.ghost_len + STALE_SLACK as u64 {
            let (ghost_seq, ghost_len) = (self.ghost_seq, self.ghost_len);
            self.ghost_index
                .retain(|_, &mut seq| seq + ghost_len > ghost_seq);
        }
    }

    pub(crate) fn key_hash(&self, slot: u32) -> u64 {
        self.slots
            .get(slot as usize)
            .map_or(0, |state| state.key_hash)
    }

    pub(crate) fn index_bytes(&self) -> usize {
        (self.small.capacity() + self.main.capacity()) * std::mem::size_of::<Position>()
            + self.slots.capacity() * std::mem::size_of::<SlotState>()
            // A hash map entry: key, value and one control byte.
            + self.ghost_index.capacity() * (std::mem::size_of::<(u64, u64)>() + 1)
    }

    pub(crate) fn len(&self) -> usize {
        self.small_len + self.main_len
    }
}

/// Whether a queued position still stands for its slot's entry in that queue.
fn is_live(slots: &[SlotState], (slot, stamp): Position, queue: Queue) -> bool {
    slots
        .get(slot as usize)
        .is_some_and(|state| state.stamp == stamp && state.queue == queue)
}
