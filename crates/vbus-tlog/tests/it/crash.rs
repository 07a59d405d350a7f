//! A child process appending (single records and batches, every durability mode, across
//! segment rotations) is killed with SIGKILL at random moments, 200 times. After each reopen the
//! log recovers, its records run without a gap from the first retained, every record
//! acknowledged is there with its own bytes, and appends go on.
//!
//! The child is this test binary run again by `vbus_test_support::crash`.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;
use vbus_test_support::crash as harness;

use vbus_tlog::{Durability, Log, LogOptions};

use crate::payload;

/// This test's name, for the harness to run it as the child.
const TEST: &str = "crash::sigkill_at_random_moments_loses_nothing_acknowledged";
const N_ROUNDS: u64 = 200;

fn options() -> LogOptions {
    LogOptions {
        segment_bytes: 32 << 10,
    }
}

/// Appends until killed, printing `ack SEQ` once a record is durable as asked (buffered records
/// survive a process kill, so every mode's acknowledgement counts here).
fn run_child(dir: &Path) {
    let (log, _) = Log::open(dir, options()).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    let mut rng = fastrand::Rng::new();
    loop {
        let seq = log.next_seq();
        let durability = [
            Durability::Buffered,
            Durability::Fdatasync,
            Durability::Fsync,
        ][rng.usize(..3)];
        let last = if rng.u32(..4) == 0 {
            let payloads: Vec<Vec<u8>> = (seq..seq + 5).map(payload).collect();
            let records: Vec<(u8, &[u8])> = payloads.iter().map(|p| (5, p.as_slice())).collect();
            log.append_batch(&records, durability).unwrap().end - 1
        } else {
            log.append(5, &payload(seq), durability).unwrap()
        };
        writeln!(out, "ack {last}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    if let Some(child) = harness::child() {
        return run_child(&child.dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut acked = 0u64;
    let mut n_torn = 0;
    for round in 0..N_ROUNDS {
        let after = Duration::from_millis(rng.u64(5..40));
        let killed = harness::run_and_kill(TEST, dir.path(), round, after);
        acked = acked.max(killed.max_ack().unwrap_or(0));

        let context = format!("round {round}");
        let (log, recovery) = Log::open(dir.path(), options())
            .unwrap_or_else(|err| panic!("{context}: the log does not reopen: {err}"));
        n_torn += usize::from(recovery.torn_tail_bytes > 0);
        assert!(
            recovery.last_seq >= acked,
            "{context}: record {acked} was acknowledged, the log ends at {}",
            recovery.last_seq
        );
        let first = log.stats().first_seq;
        let mut expected = first;
        log.read_from(first, |record| {
            assert_eq!(record.seq, expected, "{context}: a gap");
            assert_eq!(
                record.payload,
                payload(record.seq),
                "{context}: record {} differs",
                record.seq
            );
            expected += 1;
            Ok(true)
        })
        .unwrap_or_else(|err| panic!("{context}: {err}"));
        assert_eq!(expected, recovery.last_seq + 1, "{context}");
        // Keep the log short: old segments go, as checkpoints would release them.
        log.release_before(recovery.last_seq.saturating_sub(50))
            .unwrap();
    }
    assert!(
        acked > N_ROUNDS,
        "only {acked} records acknowledged in {N_ROUNDS} rounds"
    );
    eprintln!("{N_ROUNDS} kills, {acked} records acknowledged, {n_torn} torn tails zeroed");
}
