//! Each policy against a naive model of the same algorithm on `VecDeque`s: the same victims, in
//! the same order, under random inserts, hits, removals and evictions with kept slots.

use std::collections::VecDeque;

use super::s3fifo::{ghost_set_index, ghost_tag};
use super::{Policy, PolicyKind, S3Fifo, SlotTable, Victim};

/// The algorithms again, written the slow obvious way. Queues hold slots oldest first.
enum Model {
    /// Oldest first; `stamps` are the pushes counted when each slot was last pushed.
    Lru {
        queue: VecDeque<u32>,
        stamps: Vec<u32>,
        clock: u32,
    },
    Sieve {
        queue: VecDeque<(u32, bool)>,
        hand: Option<u32>,
    },
    S3Fifo {
        small: VecDeque<u32>,
        main: VecDeque<u32>,
        freq: Vec<u8>,
        sizes: Vec<u64>,
        hashes: Vec<u64>,
        small_bytes: u64,
        small_target_bytes: u64,
        /// The ghost table: sets of 15 tags each, oldest first (0: none).
        ghost_sets: Vec<VecDeque<u32>>,
        /// Inserts whose key had a ghost (so the test knows it met some).
        n_returned: usize,
    },
}

/// Puts `tag` at the back of its set, dropping the set's oldest.
fn ghost_push(sets: &mut [VecDeque<u32>], tag: u32) {
    let n_sets = sets.len();
    let set = &mut sets[ghost_set_index(tag, n_sets)];
    set.pop_front();
    set.push_back(tag);
}

/// Makes the ghost table hold `n` ghosts and a sixteenth more, placing the old ghosts anew,
/// oldest first: the oldest of every set, then the next oldest of every set, and so on.
fn ghost_grow(sets: &mut Vec<VecDeque<u32>>, n: usize) {
    let n_sets = (n + n / 16).div_ceil(15).max(1);
    let old = std::mem::replace(sets, vec![VecDeque::from([0; 15]); n_sets]);
    for age in 0..15 {
        for set in &old {
            if set[age] != 0 {
                ghost_push(sets, set[age]);
            }
        }
    }
}

fn position(queue: &VecDeque<u32>, slot: u32) -> Option<usize> {
    queue.iter().position(|&s| s == slot)
}

impl Model {
    fn new(kind: PolicyKind, capacity_bytes: u64) -> Self {
        match kind {
            PolicyKind::Lru => Self::Lru {
                queue: VecDeque::new(),
                stamps: vec![0; 4096],
                clock: 0,
            },
            PolicyKind::Sieve => Self::Sieve {
                queue: VecDeque::new(),
                hand: None,
            },
            PolicyKind::S3Fifo => Self::S3Fifo {
                small: VecDeque::new(),
                main: VecDeque::new(),
                freq: vec![0; 4096],
                sizes: vec![0; 4096],
                hashes: vec![0; 4096],
                small_bytes: 0,
                small_target_bytes: (capacity_bytes as f64 * 0.10) as u64,
                ghost_sets: Vec::new(),
                n_returned: 0,
            },
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Lru { queue, .. } => queue.len(),
            Self::Sieve { queue, .. } => queue.len(),
            Self::S3Fifo { small, main, .. } => small.len() + main.len(),
        }
    }

    fn insert(&mut self, slot: u32, key_hash: u64, size_bytes: u64) {
        match self {
            Self::Lru {
                queue,
                stamps,
                clock,
            } => {
                queue.push_back(slot);
                stamps[slot as usize] = *clock;
                *clock += 1;
            }
            Self::Sieve { queue, .. } => queue.push_back((slot, false)),
            Self::S3Fifo {
                small,
                main,
                freq,
                sizes,
                hashes,
                small_bytes,
                ghost_sets,
                n_returned,
                ..
            } => {
                freq[slot as usize] = 0;
                sizes[slot as usize] = size_bytes;
                hashes[slot as usize] = key_hash;
                let len = small.len() + main.len();
                if len >= 15 * ghost_sets.len() {
                    ghost_grow(ghost_sets, len + 1);
                }
                let tag = ghost_tag(key_hash);
                let n_sets = ghost_sets.len();
                let set = &mut ghost_sets[ghost_set_index(tag, n_sets)];
                if let Some(at) = set.iter().position(|&held| held == tag) {
                    set[at] = 0;
                    main.push_back(slot);
                    *n_returned += 1;
                } else {
                    small.push_back(slot);
                    *small_bytes += size_bytes;
                }
            }
        }
    }

    /// A hit as a tier serves it: LRU leaves the newest quarter where it is.
    fn hit(&mut self, slot: u32) {
        if let Self::Lru {
            queue,
            stamps,
            clock,
        } = self
            && ((*clock - stamps[slot as usize]) as usize) < queue.len() / 4
        {
            return;
        }
        self.access(slot);
    }

    fn access(&mut self, slot: u32) {
        match self {
            Self::Lru {
                queue,
                stamps,
                clock,
            } => {
                if let Some(at) = position(queue, slot) {
                    queue.remove(at);
                    queue.push_back(slot);
                    stamps[slot as usize] = *clock;
                    *clock += 1;
                }
            }
            Self::Sieve { queue, .. } => {
                if let Some(entry) = queue.iter_mut().find(|(s, _)| *s == slot) {
                    entry.1 = true;
                }
            }
            Self::S3Fifo { freq, .. } => freq[slot as usize] = (freq[slot as usize] + 1).min(3),
        }
    }

    fn remove(&mut self, slot: u32) {
        match self {
            Self::Lru { queue, .. } => {
                if let Some(at) = position(queue, slot) {
                    queue.remove(at);
                }
            }
            Self::Sieve { queue, hand } => {
                if let Some(at) = queue.iter().position(|(s, _)| *s == slot) {
                    if *hand == Some(slot) {
                        *hand = queue.get(at + 1).map(|(s, _)| *s);
                    }
                    queue.remove(at);
                }
            }
            Self::S3Fifo {
                small,
                main,
                sizes,
                small_bytes,
                ..
            } => {
                if let Some(at) = position(small, slot) {
                    small.remove(at);
                    *small_bytes -= sizes[slot as usize];
                } else if let Some(at) = position(main, slot) {
                    main.remove(at);
                }
            }
        }
    }

    fn evict(&mut self, keep: &dyn Fn(u32) -> bool) -> Option<u32> {
        let n = self.len();
        match self {
            Self::Lru {
                queue,
                stamps,
                clock,
            } => {
                for _ in 0..n {
                    let slot = queue.pop_front()?;
                    if keep(slot) {
                        queue.push_back(slot);
                        stamps[slot as usize] = *clock;
                        *clock += 1;
                    } else {
                        return Some(slot);
                    }
                }
                None
            }
            Self::Sieve { queue, hand } => {
                let mut at = match *hand {
                    Some(slot) => queue.iter().position(|(s, _)| *s == slot)?,
                    None => 0,
                };
                for _ in 0..=2 * n {
                    let (slot, visited) = *queue.get(at)?;
                    if visited || keep(slot) {
                        queue[at].1 = false;
                        at = if at + 1 < queue.len() { at + 1 } else { 0 };
                        continue;
                    }
                    *hand = queue.get(at + 1).map(|(s, _)| *s);
                    queue.remove(at);
                    return Some(slot);
                }
                None
            }
            Self::S3Fifo {
                small,
                main,
                freq,
                sizes,
                hashes,
                small_bytes,
                small_target_bytes,
                ghost_sets,
                ..
            } => {
                let (mut main_kept_run, mut force_small) = (0usize, false);
                for _ in 0..2 * 5 * (n + 1) {
                    if !small.is_empty()
                        && (force_small || *small_bytes > *small_target_bytes || main.is_empty())
                    {
                        let slot = small.pop_front()?;
                        *small_bytes -= sizes[slot as usize];
                        if freq[slot as usize] > 1 || keep(slot) {
                            freq[slot as usize] = 0;
                            main.push_back(slot);
                            continue;
                        }
                        ghost_push(ghost_sets, ghost_tag(hashes[slot as usize]));
                        return Some(slot);
                    }
                    let slot = main.pop_front()?;
                    if freq[slot as usize] > 0 {
                        freq[slot as usize] -= 1;
                        main.push_back(slot);
                        continue;
                    }
                    if keep(slot) {
                        main.push_back(slot);
                        main_kept_run += 1;
                        if main_kept_run > main.len() {
                            if small.is_empty() {
                                return None;
                            }
                            force_small = true;
                        }
                        continue;
                    }
                    return Some(slot);
                }
                None
            }
        }
    }
}

fn check(kind: PolicyKind, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let capacity_bytes = 64 * 100;
    let mut policy = Policy::new(kind, capacity_bytes);
    let mut model = Model::new(kind, capacity_bytes);
    let mut live: Vec<u32> = Vec::new();
    let mut free: Vec<u32> = (0..4096).rev().collect();
    let mut pinned = vec![false; 4096];
    // Each live slot's hash.
    let mut hashes = vec![0u64; 4096];
    let mut slots = SlotTable::default();
    for op_idx in 0..20_000 {
        let context = format!("{} seed {seed} op {op_idx}", kind.as_str());
        match rng.u32(..100) {
            0..=34 if !free.is_empty() => {
                // Hashes come back in other slots, so that ghost hits happen; as in a tier,
                // no two live slots share one.
                let key_hash = rng.u64(..300);
                if live.iter().any(|&other| hashes[other as usize] == key_hash) {
                    continue;
                }
                let slot = free.pop().unwrap();
                hashes[slot as usize] = key_hash;
                let size = rng.u64(1..128);
                slots.set_size(slot, size);
                policy.insert(slot, key_hash, size, &slots);
                model.insert(slot, key_hash, size);
                pinned[slot as usize] = rng.u32(..20) == 0;
                live.push(slot);
            }
            35..=64 if !live.is_empty() => {
                let slot = live[rng.usize(..live.len())];
                policy.hit(slot, &slots);
                model.hit(slot);
            }
            65..=74 if !live.is_empty() => {
                let slot = live[rng.usize(..live.len())];
                policy.access(slot, &slots);
                model.access(slot);
            }
            75..=84 if !live.is_empty() => {
                let slot = live.swap_remove(rng.usize(..live.len()));
                policy.remove(slot, &slots);
                model.remove(slot);
                free.push(slot);
            }
            _ => {
                let pinned_now = pinned.clone();
                let victim = policy.evict(&mut |slot| pinned_now[slot as usize], &slots);
                let got = victim.map(|victim| victim.slot);
                let expected = model.evict(&|slot| pinned_now[slot as usize]);
                assert_eq!(got, expected, "{context}: victim");
                if let Some(victim) = victim {
                    assert_eq!(
                        victim.key_hash, hashes[victim.slot as usize],
                        "{context}: the victim's key hash"
                    );
                }
                if let Some(slot) = got {
                    assert!(!pinned[slot as usize], "{context}: evicted a kept slot");
                    let at = live
                        .iter()
                        .position(|&s| s == slot)
                        .expect("victims are live");
                    live.swap_remove(at);
                    free.push(slot);
                }
            }
        }
        assert_eq!(policy.len(), model.len(), "{context}: len");
        assert_eq!(
            policy.len(),
            live.len(),
            "{context}: len against the live set"
        );
    }
    if let Model::S3Fifo { n_returned, .. } = model {
        assert!(
            n_returned > 100,
            "seed {seed}: {n_returned} keys came back as ghosts"
        );
    }
}

#[test]
fn lru_matches_its_model() {
    for seed in 1..=4 {
        check(PolicyKind::Lru, seed);
    }
}

#[test]
fn sieve_matches_its_model() {
    for seed in 1..=4 {
        check(PolicyKind::Sieve, seed);
    }
}

#[test]
fn s3fifo_matches_its_model() {
    for seed in 1..=4 {
        check(PolicyKind::S3Fifo, seed);
    }
}

/// Sizes and marks for the fixed-order tests below: slots under 16 of `size_bytes` each.
fn slots(size_bytes: u64) -> SlotTable {
    let mut slots = SlotTable::default();
    for slot in 0..16 {
        slots.set_size(slot, size_bytes);
    }
    slots
}

#[test]
fn everything_kept_means_no_victim() {
    let m = &slots(10);
    for kind in PolicyKind::ALL {
        let mut policy = Policy::new(kind, 1000);
        for slot in 0..10 {
            policy.insert(slot, u64::from(slot), 10, m);
        }
        assert_eq!(policy.evict(&mut |_| true, m), None, "{}", kind.as_str());
        assert_eq!(policy.len(), 10);
        let victim = policy.evict(&mut |slot| slot != 7, m);
        assert_eq!(
            victim,
            Some(Victim {
                slot: 7,
                key_hash: 7
            }),
            "{}",
            kind.as_str()
        );
    }
}

#[test]
fn classic_orders() {
    let m = &slots(1);
    // LRU: a hit saves an entry.
    let mut lru = Policy::new(PolicyKind::Lru, 0);
    for slot in 0..3 {
        lru.insert(slot, u64::from(slot), 1, m);
    }
    lru.access(0, m);
    assert_eq!(
        lru.evict(&mut |_| false, m).map(|victim| victim.slot),
        Some(1)
    );
    // A hit among the newest quarter does not move a slot; an older one does.
    let mut lru = Policy::new(PolicyKind::Lru, 0);
    for slot in 0..12 {
        lru.insert(slot, u64::from(slot), 1, m);
    }
    lru.hit(0, m);
    lru.hit(11, m);
    let order: Vec<_> =
        std::iter::from_fn(|| lru.evict(&mut |_| false, m).map(|victim| victim.slot)).collect();
    assert_eq!(order, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0]);
    // SIEVE: a visited entry survives one sweep, and the hand stays where it stopped.
    let mut sieve = Policy::new(PolicyKind::Sieve, 0);
    for slot in 0..4 {
        sieve.insert(slot, u64::from(slot), 1, m);
    }
    sieve.access(0, m);
    assert_eq!(
        sieve.evict(&mut |_| false, m).map(|victim| victim.slot),
        Some(1)
    );
    sieve.access(2, m);
    assert_eq!(
        sieve.evict(&mut |_| false, m).map(|victim| victim.slot),
        Some(3)
    );
    assert_eq!(
        sieve.evict(&mut |_| false, m).map(|victim| victim.slot),
        Some(0)
    );
    // S3-FIFO: a key evicted from small and inserted again goes to main, ahead of small's.
    let m = &slots(30);
    let mut s3 = S3Fifo::new(100);
    s3.insert(0, 42, 30, m);
    assert_eq!(
        s3.evict(&mut |_| false, m).map(|victim| victim.slot),
        Some(0)
    );
    assert!(s3.has_ghost(42), "a victim from small leaves a ghost");
    assert!(!s3.has_ghost(43));
    s3.insert(1, 42, 30, m);
    assert!(!s3.has_ghost(42), "consumed");
    s3.insert(2, 7, 30, m);
    assert_eq!(
        s3.evict(&mut |_| false, m).map(|victim| victim.slot),
        Some(2),
        "small is over 10% and goes first"
    );
}
