//! A child process running a random history with fdatasync'd changes and periodic checkpoints
//! is killed with SIGKILL at random moments, 200 times. After each reopen the state equals, byte
//! for byte and epoch for epoch (by hash), the reference state at the recovered sequence number,
//! and that number is at least the last one the child acknowledged as durable.
//!
//! The history is a function of the state (see `random_step`), so a reference bus running the
//! same steps in another directory gives the expected state at any sequence number.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use vbus_state::{Durability, StateBus};

use crate::random_step;

const CHILD_ENV: &str = "VBUS_STATE_CRASH_CHILD";
const N_ROUNDS: u64 = 200;

fn open(dir: &Path, durability: Durability) -> StateBus {
    StateBus::builder(dir)
        .durability(durability)
        .segment_bytes(64 << 10)
        .open()
        .unwrap()
}

fn child(dir: &Path) {
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
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reference_dir = tempfile::tempdir().unwrap();
    let reference = open(reference_dir.path(), Durability::Buffered);
    let mut expected: HashMap<u64, [u8; 32]> = HashMap::new();
    expected.insert(0, reference.state_hash().unwrap());
    let exe = std::env::current_exe().unwrap();
    let mut rng = fastrand::Rng::with_seed(11);
    let mut acked = 0u64;
    for round in 0..N_ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash::sigkill_at_random_moments_keeps_every_acknowledged_change",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|line| {
                    line.strip_prefix("ack ")
                        .and_then(|s| s.parse::<u64>().ok())
                })
                .max()
        });
        std::thread::sleep(Duration::from_millis(rng.u64(10..60)));
        child.kill().unwrap();
        child.wait().unwrap();
        if let Some(last) = reader.join().unwrap() {
            acked = acked.max(last);
        }
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
