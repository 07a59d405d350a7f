//! Write-through puts acknowledged before a SIGKILL are all readable, intact, after reopen. The
//! child is this test binary run again with `VBUS_CACHE_CRASH_CHILD` set.

use std::collections::HashMap;
use std::time::Duration;
use vbus_test_support::crash as harness;

use vbus_cache::{CacheKey, CacheManager};

/// This test's name, for the harness to run it as the child.
const TEST: &str = "crash::acknowledged_puts_survive_sigkill";
const N_ROUNDS: u64 = 40;

/// Bytes that name their key and tag, so a value of another key or a torn one is caught.
fn content(key_idx: u64, tag: u64) -> Vec<u8> {
    let len = 16 + (tag % 4000) as usize;
    let mut bytes = Vec::with_capacity(len);
    bytes.extend_from_slice(&key_idx.to_le_bytes());
    bytes.extend_from_slice(&tag.to_le_bytes());
    while bytes.len() < len {
        bytes.push((tag.wrapping_mul(31) ^ bytes.len() as u64) as u8);
    }
    bytes
}

fn open(root: &std::path::Path) -> CacheManager {
    CacheManager::builder()
        .l3_dir(root)
        .l2_capacity_bytes(64 * 1024)
        .l2_shards(2)
        .build()
        .unwrap()
}

/// Puts and removes, each acknowledged on stdout after it returned (announced before it starts).
fn workload(root: &std::path::Path, round: u64, n_ops: Option<u64>, out: &mut dyn std::io::Write) {
    // libtest's "test NAME ... " has no line end yet: start the first operation on a line of its own.
    writeln!(out).unwrap();
    let cache = open(root);
    let mut rng = fastrand::Rng::with_seed(round);
    let mut op_idx = 0;
    while n_ops.is_none_or(|n| op_idx < n) {
        op_idx += 1;
        let key_idx = rng.u64(..16);
        let key = CacheKey::new("crash", &format!("k{key_idx}"));
        let tag = round << 32 | op_idx;
        if rng.u32(..8) == 0 {
            writeln!(out, "begin rm {key_idx} {tag}").unwrap();
            cache.remove(key).unwrap();
            writeln!(out, "ack rm {key_idx} {tag}").unwrap();
        } else {
            writeln!(out, "begin put {key_idx} {tag}").unwrap();
            cache.put(key, &content(key_idx, tag)).unwrap();
            writeln!(out, "ack put {key_idx} {tag}").unwrap();
        }
        let _ = cache
            .get(CacheKey::new("crash", &format!("k{}", rng.u64(..16))))
            .unwrap();
    }
}

/// The state of a key: the tag of its content, or absent.
type State = Option<u64>;

/// Applies the workload's lines to `acked` and returns the operation begun and not acknowledged.
/// Other lines are libtest's (a child killed before its first operation ends on the unfinished
/// "test NAME ... "); each workload line is one write of under PIPE_BUF bytes, so never torn.
fn apply(lines: &str, acked: &mut HashMap<u64, State>) -> Option<(u64, State)> {
    let mut in_flight = None;
    for line in lines.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        let [phase @ ("begin" | "ack"), op @ ("put" | "rm"), key, tag] = words[..] else {
            continue;
        };
        let parse = |field: &str| -> u64 {
            field
                .parse()
                .unwrap_or_else(|err| panic!("workload line {line:?}: {field:?}: {err}"))
        };
        let (key, tag) = (parse(key), parse(tag));
        let state = (op == "put").then_some(tag);
        if phase == "begin" {
            in_flight = Some((key, state));
        } else {
            acked.insert(key, state);
            in_flight = None;
        }
    }
    in_flight
}

/// Every key reads back as acknowledged, or as the operation in flight at the kill.
fn check(
    root: &std::path::Path,
    acked: &HashMap<u64, State>,
    in_flight: Option<(u64, State)>,
    context: &str,
) -> HashMap<u64, State> {
    let cache = open(root);
    let mut observed = HashMap::new();
    for key_idx in 0..16u64 {
        let got = cache
            .get(CacheKey::new("crash", &format!("k{key_idx}")))
            .unwrap();
        let state = got.map(|value| {
            let bytes = value.bytes();
            let tag = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
            assert_eq!(
                bytes,
                content(key_idx, tag),
                "{context}: k{key_idx} is torn or foreign"
            );
            tag
        });
        let expected = acked.get(&key_idx).copied().flatten();
        let in_flight_state = in_flight.filter(|(k, _)| *k == key_idx).map(|(_, s)| s);
        assert!(
            state == expected || Some(state) == in_flight_state,
            "{context}: k{key_idx} holds {state:x?}; acknowledged {expected:x?}, in flight {in_flight_state:x?}"
        );
        observed.insert(key_idx, state);
    }
    observed
}

#[test]
fn acknowledged_puts_survive_sigkill() {
    if let Some(child) = harness::child() {
        return workload(&child.dir, child.round, None, &mut std::io::stdout().lock());
    }
    // The same workload without a crash first: everything acknowledged reads back.
    let dir = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    workload(&dir.path().join("clean"), 1, Some(200), &mut lines);
    let mut acked = HashMap::new();
    assert!(apply(&String::from_utf8(lines).unwrap(), &mut acked).is_none());
    check(&dir.path().join("clean"), &acked, None, "clean run");

    let root = dir.path().join("L3");
    let mut acked: HashMap<u64, State> = HashMap::new();
    let mut rng = fastrand::Rng::with_seed(9);
    let mut n_acks = 0;
    for round in 2..2 + N_ROUNDS {
        let after = Duration::from_millis(rng.u64(20..150));
        let killed = harness::run_and_kill(TEST, &root, round, after);
        assert!(
            killed.by_the_kill,
            "round {round}: the child exited by itself"
        );
        let text = killed.stdout;
        n_acks += text.lines().filter(|line| line.starts_with("ack")).count();
        let in_flight = apply(&text, &mut acked);
        acked = check(&root, &acked, in_flight, &format!("round {round}"));
    }
    assert!(
        n_acks > N_ROUNDS as usize,
        "only {n_acks} operations were acknowledged"
    );
}

#[test]
fn a_child_killed_before_its_first_operation_leaves_only_libtest_lines() {
    let mut acked = HashMap::new();
    let text = "\nrunning 1 test\ntest crash::acknowledged_puts_survive_sigkill ... ";
    assert_eq!(apply(text, &mut acked), None);
    assert!(acked.is_empty());
    let text = format!("{text}\nbegin put 3 7\nack put 3 7\nbegin rm 3 8\n");
    assert_eq!(apply(&text, &mut acked), Some((3, None)));
    assert_eq!(acked, HashMap::from([(3, Some(7))]));
}
