//! A child process storing files is killed with SIGKILL at random moments, 200 times. After each
//! reopen every final path holds a complete version whose hash matches the index, everything
//! acknowledged is there, and no staging file remains.
//!
//! The child is this test binary run again by `vbus_test_support::crash`: the test
//! `bounded_workload_leaves_a_consistent_store` then runs the workload until it is killed.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;
use vbus_test_support::crash as harness;

use vbus_store::FileStore;

use crate::support::{check_content, content, files_on_disk};

/// The test the harness runs as the child (it runs the workload until killed).
const CHILD_TEST: &str = "crash::bounded_workload_leaves_a_consistent_store";
const N_ROUNDS: u64 = 200;
const N_KEYS: usize = 12;

fn key(key_idx: usize) -> (String, String) {
    (
        format!("ds{}", key_idx % 2),
        format!("sub{}/f{key_idx}", key_idx % 3),
    )
}

/// The workload: stores (whole and through writers), removes, abandoned writers and reads, each
/// acknowledged on stdout once it returned. Runs `n_ops` operations, or forever for `None`.
fn workload(root: &Path, round: u64, n_ops: Option<u64>, stdout: &mut dyn std::io::Write) {
    let store = FileStore::open(root).unwrap();
    let mut rng = fastrand::Rng::with_seed(round);
    writeln!(stdout, "ready").unwrap();
    let mut op_idx = 0u64;
    while n_ops.is_none_or(|n| op_idx < n) {
        op_idx += 1;
        let tag = (round << 32) | op_idx;
        let (dataset, path) = key(rng.usize(..N_KEYS));
        let len = if rng.u32(..10) == 0 {
            rng.usize(..2 << 20)
        } else {
            rng.usize(..64 << 10)
        };
        let op = rng.u32(..10);
        match op {
            0..=5 => writeln!(stdout, "begin put {dataset}/{path} {tag}").unwrap(),
            6 => writeln!(stdout, "begin rm {dataset}/{path} {tag}").unwrap(),
            _ => {}
        }
        match op {
            0..=3 => {
                store
                    .store_file(&dataset, &path, &content(tag, len))
                    .unwrap();
                writeln!(stdout, "ack put {dataset}/{path} {tag}").unwrap();
            }
            4..=5 => {
                let mut writer = store.file_writer(&dataset, &path).unwrap();
                for chunk in content(tag, len).chunks(100_000) {
                    writer.write_all(chunk).unwrap();
                }
                writer.commit().unwrap();
                writeln!(stdout, "ack put {dataset}/{path} {tag}").unwrap();
            }
            6 => {
                store.remove(&dataset, &path).unwrap();
                writeln!(stdout, "ack rm {dataset}/{path} {tag}").unwrap();
            }
            7 => {
                let mut writer = store.file_writer(&dataset, &path).unwrap();
                writer.write_all(&content(tag, len)).unwrap();
                drop(writer);
            }
            _ => {
                if let Some(bytes) = store.get_file_by_path(&dataset, &path).unwrap() {
                    assert!(check_content(&bytes).is_some(), "torn read in the child");
                }
            }
        }
    }
}

/// The state of one key: present with the tag of its contents, or absent.
type State = Option<u64>;

/// Checks the store after a crash: every key holds exactly its acknowledged state, or the result
/// of the one operation in flight when the child died. Returns the state observed.
fn check_after_crash(
    root: &Path,
    acked: &HashMap<String, State>,
    in_flight: Option<&(String, State)>,
    context: &str,
) -> HashMap<String, State> {
    let store = FileStore::open(root).unwrap();
    assert_eq!(
        std::fs::read_dir(root.join(".vbus-staging"))
            .unwrap()
            .count(),
        0,
        "{context}: staging files remain"
    );
    let mut observed: HashMap<String, State> = HashMap::new();
    for dataset in store.datasets() {
        for meta in store.list(&dataset).unwrap() {
            let key = format!("{}/{}", meta.dataset, meta.path);
            let bytes = store
                .get_file_by_path(&meta.dataset, &meta.path)
                .unwrap_or_else(|err| panic!("{context}: {key}: {err}"))
                .unwrap_or_else(|| panic!("{context}: {key} listed but not readable"));
            let tag = check_content(&bytes).unwrap_or_else(|| panic!("{context}: {key} is torn"));
            let hash = store.meta(&meta.dataset, &meta.path).unwrap().unwrap().hash;
            assert_eq!(
                hash,
                Some(*blake3::hash(&bytes).as_bytes()),
                "{context}: {key} hash differs from the index"
            );
            observed.insert(key, Some(tag));
        }
    }
    let keys: std::collections::BTreeSet<&String> = acked.keys().chain(observed.keys()).collect();
    for key in keys {
        let got = observed.get(key).copied().flatten();
        let expected = acked.get(key).copied().flatten();
        let in_flight_result = in_flight.filter(|(k, _)| k == key).map(|(_, state)| *state);
        assert!(
            got == expected || Some(got) == in_flight_result,
            "{context}: {key} holds {got:x?}; acknowledged {expected:x?}, in flight {in_flight_result:x?}"
        );
    }
    let mut indexed: Vec<String> = observed.keys().cloned().collect();
    indexed.sort();
    assert_eq!(
        files_on_disk(root),
        indexed,
        "{context}: files on disk and index differ"
    );
    observed
}

/// Reads the child's `begin` and `ack` lines into the acknowledged states; returns the operation
/// still in flight at the end and the number of acknowledgements.
fn apply_lines(
    lines: impl Iterator<Item = String>,
    acked: &mut HashMap<String, State>,
) -> (Option<(String, State)>, usize) {
    let mut in_flight = None;
    let mut n_acks = 0;
    for line in lines {
        let words: Vec<&str> = line.split(' ').collect();
        let [phase, op, key, tag] = words[..] else {
            continue;
        };
        let state = (op == "put").then(|| tag.parse::<u64>().unwrap());
        match phase {
            "begin" => in_flight = Some((key.to_owned(), state)),
            "ack" => {
                acked.insert(key.to_owned(), state);
                in_flight = None;
                n_acks += 1;
            }
            _ => {}
        }
    }
    (in_flight, n_acks)
}

#[test]
fn bounded_workload_leaves_a_consistent_store() {
    if let Some(child) = harness::child() {
        return workload(&child.dir, child.round, None, &mut std::io::stdout().lock());
    }
    let dir = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    workload(dir.path(), 1, Some(150), &mut lines);
    let mut acked = HashMap::new();
    let lines = String::from_utf8(lines).unwrap();
    let (in_flight, n_acks) = apply_lines(lines.lines().map(str::to_owned), &mut acked);
    assert!(
        in_flight.is_none() && n_acks > 50,
        "{n_acks} acknowledgements"
    );
    let observed = check_after_crash(dir.path(), &acked, None, "clean run");
    assert_eq!(
        observed,
        acked
            .into_iter()
            .filter(|(_, state)| state.is_some())
            .collect()
    );
}

#[test]
fn sigkill_at_random_moments_tears_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("L3_DISK");
    let mut acked: HashMap<String, State> = HashMap::new();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut n_acks_total = 0usize;
    for round in 1..=N_ROUNDS {
        // Some rounds die during open (staging clean-up, index load), most while writing.
        let delay = if rng.u32(..5) == 0 {
            rng.u64(..15)
        } else {
            rng.u64(15..120)
        };
        let killed = harness::run_and_kill(CHILD_TEST, &root, round, Duration::from_millis(delay));
        assert!(
            killed.by_the_kill,
            "round {round}: the child exited by itself"
        );
        let (in_flight, n_acks) = apply_lines(killed.stdout.lines().map(str::to_owned), &mut acked);
        n_acks_total += n_acks;
        let context = format!("round {round} (killed after {delay} ms)");
        acked = check_after_crash(&root, &acked, in_flight.as_ref(), &context);
    }
    assert!(
        n_acks_total > N_ROUNDS as usize,
        "the children acknowledged only {n_acks_total} operations"
    );
}
