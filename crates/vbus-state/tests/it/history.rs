//! Determinism: replaying a random history to every sequence number gives exactly the state
//! recorded when that number was written; the same history run twice gives the same hashes.

use std::collections::BTreeMap;

use vbus_state::{Durability, StateBus};

use crate::random_step;

fn run_history(dir: &std::path::Path, n_steps: usize) -> (StateBus, BTreeMap<u64, [u8; 32]>) {
    let bus = StateBus::builder(dir)
        .durability(Durability::Buffered)
        .segment_bytes(32 << 10)
        .checkpoints_retained(8)
        .open()
        .unwrap();
    let mut hashes = BTreeMap::new();
    hashes.insert(0, bus.state_hash().unwrap());
    for step in 0..n_steps {
        random_step(&bus);
        hashes.insert(bus.last_seq(), bus.state_hash().unwrap());
        if step % 97 == 96 {
            bus.checkpoint().unwrap();
        }
    }
    (bus, hashes)
}

#[test]
fn replay_to_every_sequence_number_rebuilds_that_state() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, hashes) = run_history(dir.path(), 600);
    assert!(hashes.len() > 400, "{} changes", hashes.len());
    assert!(
        bus.edges().len() > 3,
        "the history built too few edges: {} edges, {} pages",
        bus.edges().len(),
        bus.page_ids().len()
    );
    for (&seq, hash) in &hashes {
        let snapshot = bus
            .replay_to(seq)
            .unwrap_or_else(|err| panic!("replay to {seq}: {err}"));
        assert_eq!(snapshot.seq(), seq);
        assert_eq!(&snapshot.state_hash().unwrap(), hash, "state at {seq}");
    }
    // And the live state equals a reopen's.
    let hash = bus.state_hash().unwrap();
    drop(bus);
    assert_eq!(
        StateBus::open(dir.path()).unwrap().state_hash().unwrap(),
        hash
    );
}

#[test]
fn the_same_history_twice_gives_the_same_hashes() {
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_, a) = run_history(first.path(), 300);
    let (_, b) = run_history(second.path(), 300);
    assert_eq!(a, b);
}
