//! The SIGKILL crash harness shared by the store, log, state bus and cache tests.
//!
//! ```ignore
//! #[test]
//! fn acknowledged_writes_survive_sigkill() {
//!     if let Some(child) = crash::child() {
//!         return workload(&child.dir, child.round); // prints `ack ...` lines until killed
//!     }
//!     for round in 0..200 {
//!         let killed = crash::run_and_kill(
//!             "crash::acknowledged_writes_survive_sigkill", &dir, round, delay);
//!         check(&dir, &killed.stdout);
//!     }
//! }
//! ```

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Set in the child: the directory it works in.
const DIR_ENV: &str = "VBUS_CRASH_CHILD_DIR";
/// Set in the child: the round, a seed for its workload.
const ROUND_ENV: &str = "VBUS_CRASH_CHILD_ROUND";

/// What a child is given.
#[derive(Debug, Clone)]
pub struct Child {
    /// The directory it works in (the same every round, so each round finds what the last one
    /// left).
    pub dir: PathBuf,
    /// The round, for seeding its workload.
    pub round: u64,
}

/// `Some` when this process is a crash test's child: the test then runs its workload instead of
/// the parent's rounds.
pub fn child() -> Option<Child> {
    let dir = std::env::var_os(DIR_ENV)?;
    let round = std::env::var(ROUND_ENV)
        .ok()
        .and_then(|round| round.parse().ok())
        .unwrap_or(0);
    Some(Child {
        dir: PathBuf::from(dir),
        round,
    })
}

/// A killed child's output.
#[derive(Debug)]
pub struct Killed {
    /// Everything it printed on stdout (libtest's own lines included).
    pub stdout: String,
    /// Whether the kill ended it (`false`: it had already exited by itself, which a workload that
    /// runs until killed never does).
    pub by_the_kill: bool,
}

impl Killed {
    /// The stdout lines that start with `ack `, without the prefix.
    pub fn acks(&self) -> impl Iterator<Item = &str> {
        self.stdout
            .lines()
            .filter_map(|line| line.strip_prefix("ack "))
    }

    /// The largest number acknowledged as `ack N` (a log's or a bus's sequence number).
    pub fn max_ack(&self) -> Option<u64> {
        self.acks().filter_map(|ack| ack.parse().ok()).max()
    }
}

/// Runs the test `test` (its full name in this test binary, for `--exact`) as a child with
/// [`child`] giving `dir` and `round`, kills it with SIGKILL after `after`, and returns what it
/// printed.
pub fn run_and_kill(test: &str, dir: &Path, round: u64, after: Duration) -> Killed {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(DIR_ENV, dir)
        .env(ROUND_ENV, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the crash child starts");
    let mut stdout = child.stdout.take().expect("the child's stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read cut short by the kill keeps what came.
        let _ = stdout.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    });
    std::thread::sleep(after);
    // `kill` sends SIGKILL; it fails only when the child was already reaped.
    let _ = child.kill();
    let status = child.wait().expect("the crash child is reaped");
    let stdout = reader.join().expect("the child's stdout reader");
    Killed {
        stdout,
        by_the_kill: status.code().is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_the_ack_lines_without_the_prefix() {
        let killed = Killed {
            stdout: "running 1 test\nack 1\nbegin put a 2\nack put a 2\nack".to_owned(),
            by_the_kill: true,
        };
        assert_eq!(killed.acks().collect::<Vec<_>>(), ["1", "put a 2"]);
        assert_eq!(killed.max_ack(), Some(1));
    }
}
