//! S3-FIFO: a small probationary FIFO, a main FIFO with reinsertion, and a ghost FIFO of hashes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};

use super::SlotList;

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

#[derive(Debug, Clone, Copy, Default)]
struct SlotState {
    queue: Queue,
    size_bytes: u64,
    key_hash: u64,
}

/// New keys enter the small queue; keys seen recently in the ghost queue enter main. Eviction
/// takes from small while it holds more than 10% of the bytes: an entry hit twice or more there
/// moves to main, the others leave and their hashes go to the ghost queue. In main, an entry hit
/// since its last pass is reinserted with one hit fewer; the others leave.
#[derive(Debug)]
pub struct S3Fifo {
    small: SlotList,
    main: SlotList,
    small_target_bytes: u64,
    small_bytes: u64,
    slots: Vec<SlotState>,
    /// Hit counters, bumped under a shared lock, so atomic (a lost race loses one count).
    freq: Vec<AtomicU8>,
    ghost: VecDeque<(u64, u64)>,
    ghost_index: HashMap<u64, u64, foldhash::fast::FixedState>,
    ghost_seq: u64,
}

impl S3Fifo {
    pub(crate) fn new(capacity_bytes: u64) -> Self {
        Self {
            small: SlotList::new(),
            main: SlotList::new(),
            small_target_bytes: ((capacity_bytes as f64) * SMALL_SHARE) as u64,
            small_bytes: 0,
            slots: Vec::new(),
            freq: Vec::new(),
            ghost: VecDeque::new(),
            ghost_index: HashMap::with_hasher(foldhash::fast::FixedState::default()),
            ghost_seq: 0,
        }
    }

    pub(crate) fn insert(&mut self, slot: u32, key_hash: u64, size_bytes: u64) {
        let idx = slot as usize;
        if self.slots.len() <= idx {
            self.slots.resize(idx + 1, SlotState::default());
            self.freq.resize_with(idx + 1, || AtomicU8::new(0));
        }
        self.freq[idx].store(0, Ordering::Relaxed);
        let returning = self.ghost_index.remove(&key_hash).is_some();
        let queue = if returning { Queue::Main } else { Queue::Small };
        self.slots[idx] = SlotState {
            queue,
            size_bytes,
            key_hash,
        };
        match queue {
            Queue::Main => self.main.push_head(slot),
            _ => {
                self.small.push_head(slot);
                self.small_bytes += size_bytes;
            }
        }
    }

    pub(crate) fn access(&self, slot: u32) {
        if let Some(freq) = self.freq.get(slot as usize) {
            let seen = freq.load(Ordering::Relaxed);
            if seen < FREQ_MAX {
                freq.store(seen + 1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn remove(&mut self, slot: u32) {
        let Some(state) = self.slots.get_mut(slot as usize) else {
            return;
        };
        match state.queue {
            Queue::Small => {
                self.small.unlink(slot);
                self.small_bytes -= state.size_bytes;
            }
            Queue::Main => {
                self.main.unlink(slot);
            }
            Queue::None => {}
        }
        state.queue = Queue::None;
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
            let from_small = !self.small.is_empty()
                && (force_small
                    || self.small_bytes > self.small_target_bytes
                    || self.main.is_empty());
            if from_small {
                let slot = self.small.tail()?;
                let state = self.slots[slot as usize];
                self.small.unlink(slot);
                self.small_bytes -= state.size_bytes;
                if self.freq[slot as usize].load(Ordering::Relaxed) > 1 || keep(slot) {
                    self.slots[slot as usize].queue = Queue::Main;
                    self.freq[slot as usize].store(0, Ordering::Relaxed);
                    self.main.push_head(slot);
                    continue;
                }
                self.slots[slot as usize].queue = Queue::None;
                self.remember(state.key_hash);
                return Some(slot);
            }
            let slot = self.main.tail()?;
            let freq = self.freq[slot as usize].load(Ordering::Relaxed);
            if freq > 0 {
                self.freq[slot as usize].store(freq - 1, Ordering::Relaxed);
                self.main.move_to_head(slot);
                continue;
            }
            if keep(slot) {
                self.main.move_to_head(slot);
                main_kept_run += 1;
                if main_kept_run > self.main.len() {
                    if self.small.is_empty() {
                        return None;
                    }
                    force_small = true;
                }
                continue;
            }
            self.main.unlink(slot);
            self.slots[slot as usize].queue = Queue::None;
            return Some(slot);
        }
        None
    }

    /// Puts a key hash in the ghost queue, which remembers about as many keys as the queues hold.
    fn remember(&mut self, key_hash: u64) {
        self.ghost_seq += 1;
        self.ghost.push_back((key_hash, self.ghost_seq));
        self.ghost_index.insert(key_hash, self.ghost_seq);
        let ghost_max = self.len().max(GHOST_MIN);
        while self.ghost.len() > ghost_max {
            if let Some((old_hash, seq)) = self.ghost.pop_front()
                && self.ghost_index.get(&old_hash) == Some(&seq)
            {
                self.ghost_index.remove(&old_hash);
            }
        }
    }

    pub(crate) fn index_bytes(&self) -> usize {
        self.small.index_bytes()
            + self.main.index_bytes()
            + self.slots.capacity() * std::mem::size_of::<SlotState>()
            + self.freq.capacity()
            + self.ghost.capacity() * std::mem::size_of::<(u64, u64)>()
            // A hash map entry: key, value and one control byte.
            + self.ghost_index.capacity() * (std::mem::size_of::<(u64, u64)>() + 1)
    }

    pub(crate) fn len(&self) -> usize {
        self.small.len() + self.main.len()
    }
}
