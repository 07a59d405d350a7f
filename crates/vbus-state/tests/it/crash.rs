//! A child process running a random history with fdatasync'd changes and periodic checkpoints
//! is killed with SIGKILL at random moments, 200 times. After each reopen the state equals, byte
//! for byte and epoch for epoch (by hash), the reference state at the recovered sequence number,
//! and that number is at least the last one the child acknowledged as durable.
//!
//! The history is a function of the state (see `random_step`), so a reference bus running the
//! same steps in another directory gives the expected state at any sequence number.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;
use vbus_test_support::crash as harness;

use vbus_state::{Durability, StateBus};

use crate::random_step;

/// This test's name, for the harness to run it as the child.
const TEST: &str = "crash::sigkill_at_random_moments_keeps_every_acknowledged_change";
const N_ROUNDS: u64 = 200;

fn open(dir: &Path, durability: Durability) -> StateBus {
    StateBus::builder(dir)
        .durability(durability)
        .segment_bytes(64 << 10)
        .open()
        .unwrap()
}

fn run_child(dir: &Path) {
    let bus = open(dir, Durability::Fdatasync);
    let mut out = std::io::stdout().lock();
    // libtest's "test NAME ... " has no line end yet: the first acknowledgement gets a line of its own.
    writeln!(out).unwrap();
    let mut n_steps = 0u64;
    loop {
        random_step(&bus);
        n_steps += 1;
        writeln!(out, "ack {}", bus.last_seq()).unwrap();
        out.flush().unwrap();
        if n_steps.is_multiple_of(50) {
            bus.checkpoint().unwrap();
        }
    }
}

#[test]
fn sigkill_at_random_moments_keeps_every_acknowledged_change() {
    if let Some(child) = harness::child() {
        return run_child(&child.dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let reference_dir = tempfile::tempdir().unwrap();
    let reference = open(reference_dir.path(), Durability::Buffered);
    let mut expected: HashMap<u64, [u8; 32]> = HashMap::new();
    expected.insert(0, reference.state_hash().unwrap());
    let mut rng = fastrand::Rng::with_seed(11);
    let mut acked = 0u64;
    for round in 0..N_ROUNDS {
        let after = Duration::from_millis(rng.u64(10..60));
        let killed = harness::run_and_kill(TEST, dir.path(), round, after);
        acked = acked.max(killed.max_ack().unwrap_or(0));
        let bus = StateBus::builder(dir.path())
            .segment_bytes(64 << 10)
            .open()
            .unwrap_or_else(|err| panic!("round {round}: the bus does not reopen: {err}"));
        let recovered = bus.last_seq();
        assert!(
            recovered >= acked,
            "round {round}: change {acked} was acknowledged, the bus recovered to {recovered}"
        );
        while reference.last_seq() < recovered {
            random_step(&reference);
            expected.insert(reference.last_seq(), reference.state_hash().unwrap());
        }
        assert_eq!(
            Some(&bus.state_hash().unwrap()),
            expected.get(&recovered),
            "round {round}: the state at {recovered} differs from the reference"
        );
    }
    assert!(acked > N_ROUNDS, "only {acked} changes acknowledged");
    eprintln!("{N_ROUNDS} kills, {acked} changes acknowledged");
}
