//! Issue 20's findings against the real daemon: damaged L3 files are never served, and a file
//! changed while the daemon was down is never adopted silently.

use std::os::unix::fs::FileExt as _;
use std::path::Path;

use rustix::process::Signal;

use crate::support::{Daemon, http_get, http_get_bytes, run, vbus};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|at| ((at >> 7) as u8).wrapping_mul(13) ^ (at as u8) ^ seed)
        .collect()
}

fn flip(path: &Path, offset: u64) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 1;
    file.write_all_at(&byte, offset).unwrap();
}

fn l3_stats(addr: &str) -> serde_json::Value {
    let (status, body) = http_get(addr, "/v1/stats");
    assert_eq!(status, 200, "{body}");
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    stats["tiers"]["L3_DISK"].clone()
}

/// Finding 1: a put marked its file verified, so `vbus get` served a byte flipped in L3 with exit
/// 0. Now the get fails, writes no file, counts the failure and quarantines the file.
#[test]
fn corrupt_l3_bytes_are_never_served_by_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("VBUS");
    let daemon = Daemon::start(&home);
    let get = |key: &str, out: &Path| {
        run(vbus(&home)
            .args(["--addr", &daemon.addr, "get", key])
            .arg(out))
    };
    // 20 MiB is read whole into L2 by a get; 70 MiB streams from L3 on every get.
    for (name, len, offset) in [
        ("mid", 20usize << 20, 15u64 << 20),
        ("big", 70 << 20, 65 << 20),
    ] {
        let value = pattern(len, len as u8);
        let input = dir.path().join(name);
        std::fs::write(&input, &value).unwrap();
        let key = format!("models/{name}");
        let put = run(vbus(&home)
            .args(["--addr", &daemon.addr, "put", &key])
            .arg(&input));
        assert!(put.success, "{put:#?}");
        let out = dir.path().join(format!("{name}.out"));
        if len > 64 << 20 {
            let warm = get(&key, &out);
            assert!(warm.success, "{warm:#?}");
            assert!(std::fs::read(&out).unwrap() == value);
            std::fs::remove_file(&out).unwrap();
        }
        flip(&home.join("CACHE/L3_DISK").join(&key), offset);
        let damaged = get(&key, &out);
        assert!(!damaged.success, "a damaged file was served: {damaged:#?}");
        assert!(!out.exists(), "a failed get leaves no file");
        let (status, _) = http_get(&daemon.addr, &format!("/v1/objects/{key}"));
        assert_eq!(status, 404, "the quarantined file is gone, not served");
    }
    let l3 = l3_stats(&daemon.addr);
    assert_eq!(l3["n_checksum_failures"], 2, "{l3}");
    let quarantined = home
        .join("CACHE/L3_DISK/.vbus-quarantine/models")
        .read_dir()
        .unwrap()
        .count();
    assert_eq!(quarantined, 2);
    let (_, metrics) = http_get(&daemon.addr, "/metrics");
    assert!(
        metrics.contains("vbus_l3_checksum_failures_total 2"),
        "{metrics}"
    );
}

/// Finding 2: a file changed on disk while the daemon was down was adopted silently. Now the
/// start logs it at WARN with its path and both hashes, and counts it.
#[test]
fn a_file_changed_while_the_daemon_was_down_is_logged_with_both_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("VBUS");
    let mut daemon = Daemon::start(&home);
    let value = pattern(100_000, 9);
    let input = dir.path().join("v");
    std::fs::write(&input, &value).unwrap();
    let put = run(vbus(&home)
        .args(["--addr", &daemon.addr, "put", "models/weights"])
        .arg(&input));
    assert!(put.success, "{put:#?}");
    daemon.signal(Signal::TERM);
    assert_eq!(daemon.wait().0, Some(0));

    flip(&home.join("CACHE/L3_DISK/models/weights"), 70_000);
    let mut changed = value.clone();
    changed[70_000] ^= 1;
    let daemon = Daemon::start(&home);
    let l3 = l3_stats(&daemon.addr);
    assert_eq!(l3["n_changed_on_open"], 1, "{l3}");
    let log = std::fs::read_to_string(home.join("AUDIT/LOGS/vbus_daemon.log")).unwrap();
    let warning = log
        .lines()
        .find(|line| line.contains("changed outside VBUS"))
        .unwrap_or_else(|| panic!("no warning in the log:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("models/weights"), "{warning}");
    assert!(
        warning.contains(&blake3::hash(&value).to_hex().to_string()),
        "{warning}"
    );
    assert!(
        warning.contains(&blake3::hash(&changed).to_hex().to_string()),
        "{warning}"
    );
}

/// `vbus init` at `home`, then `change` applied to its config.
fn init_with(home: &Path, change: impl FnOnce(&mut serde_json::Value)) {
    let init = run(vbus(home).arg("init"));
    assert!(init.success, "{init:#?}");
    let path = home.join("CONFIG/vbus_config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    change(&mut config);
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

/// Finding 5: `vbus --home ./does-not-exist rm KEY` removed the key on another home's daemon at
/// the default address, and a home's client commands went to 7878 whatever port its daemon had.
/// Now a home's commands reach the address its daemon recorded, and a home that does not exist
/// or runs no daemon is an error.
#[test]
fn a_client_command_acts_only_on_its_own_homes_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h5");
    let daemon = Daemon::start(&home);
    let value = dir.path().join("canary");
    std::fs::write(&value, b"canary").unwrap();
    // No --addr: the address comes from the home (the daemon listens on a port chosen at start).
    let put = run(vbus(&home).args(["put", "tmp/canary"]).arg(&value));
    assert!(put.success, "{put:#?}");
    assert_eq!(
        std::fs::read_to_string(home.join(".vbus.addr"))
            .unwrap()
            .trim(),
        daemon.addr
    );
    let ls = run(vbus(&home).args(["ls", "tmp"]));
    assert!(ls.success && ls.stdout.contains("canary"), "{ls:#?}");

    let missing = dir.path().join("does-not-exist");
    let rm = run(vbus(&missing).args(["rm", "tmp/canary"]));
    assert!(!rm.success, "{rm:#?}");
    assert!(rm.stderr.contains("does not exist"), "{}", rm.stderr);
    assert!(!missing.exists(), "a client command created the home");

    let idle = dir.path().join("idle");
    assert!(run(vbus(&idle).arg("init")).success);
    let rm = run(vbus(&idle).args(["rm", "tmp/canary"]));
    assert!(!rm.success, "{rm:#?}");
    assert!(
        rm.stderr.contains("no vbus daemon is running"),
        "{}",
        rm.stderr
    );
    let (status, body) = http_get(&daemon.addr, "/v1/objects/tmp/canary");
    assert_eq!((status, body.as_str()), (200, "canary"));
}

/// Finding 6: refusals sent before the upload finished showed as "cannot reach the daemon ...
/// Broken pipe", names were not percent-encoded, and a write-back put said "stored".
#[test]
fn the_cli_reports_refusals_and_durability_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("VBUS");
    init_with(&home, |config| {
        config["cache_hierarchy"]["L3_DISK"]["max_size_mb"] = 16.into();
        config["cache_hierarchy"]["write_mode"] = "write_back".into();
    });
    let daemon = Daemon::start(&home);
    let big = dir.path().join("big");
    std::fs::write(&big, pattern(20 << 20, 1)).unwrap();
    let put = run(vbus(&home).args(["put", "ds/big"]).arg(&big));
    assert!(!put.success, "{put:#?}");
    assert!(
        put.stderr.contains("413") && put.stderr.contains("capacity"),
        "{}",
        put.stderr
    );

    // A bad key with the value on stdin (no length known): 400, named.
    let mut child = vbus(&home)
        .args(["put", "ds/../escape", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(&pattern(4 << 20, 2));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("400"), "{stderr}");
    assert!(!stderr.contains("cannot reach"), "{stderr}");

    let small = dir.path().join("small");
    std::fs::write(&small, b"in RAM").unwrap();
    let put = run(vbus(&home).args(["put", "ds/small"]).arg(&small));
    assert!(put.success, "{put:#?}");
    assert!(
        put.stdout.starts_with("accepted ds/small") && put.stdout.contains("not yet durable"),
        "{}",
        put.stdout
    );

    let ls = run(vbus(&home).args(["ls", "a b"]));
    assert!(!ls.success);
    assert!(!ls.stderr.contains("invalid uri"), "{}", ls.stderr);
    let ls = run(vbus(&home).args(["ls", "nosuch"]));
    assert!(!ls.success, "{ls:#?}");
    assert!(ls.stderr.contains("nosuch"), "{}", ls.stderr);
    drop(daemon);
}

/// Finding 3: pages had no total limit and a GPU page beyond L1 answered 500. Both are 507 now,
/// naming what to change, and nothing is half made.
#[test]
fn pages_past_the_state_limits_answer_507_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("VBUS");
    init_with(&home, |config| {
        config["state"]["pages_max_mb"] = 8.into();
        config["cache_hierarchy"]["L1_VRAM"]["max_size_mb"] = 64.into();
    });
    let daemon = Daemon::start(&home);
    let create = |size: u64, location: &str| {
        let body = format!(r#"{{"size": {size}, "location": "{location}"}}"#);
        crate::support::http_raw(
            &daemon.addr,
            "POST",
            "/v1/pages",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    };
    let (status, body) = create(6 << 20, "cpu");
    assert_eq!(status, 201, "{body}");
    let (status, body) = create(4 << 20, "cpu");
    assert_eq!(status, 507, "{body}");
    assert!(body.contains("state.pages_max_mb"), "{body}");
    let (status, body) = create(2 << 30, "gpu");
    assert_eq!(status, 507, "{body}");
    let (status, body) = http_get(&daemon.addr, "/v1/pages");
    assert_eq!(status, 200, "{body}");
    let pages: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(pages["pages"].as_array().map(Vec::len), Some(1), "{body}");
    // The bus goes on.
    let (status, body) = create(1 << 20, "cpu");
    assert_eq!(status, 201, "{body}");
}

/// Finding 4: a damaged last log record was zeroed as a torn tail, and damage elsewhere stopped
/// the whole daemon with the reason on stderr only. Now the daemon serves objects on, pages
/// answer 503 naming the segment and offset, the log says it at ERROR, and `vbus state repair`
/// (dry run first) cuts the log back so the state bus opens again.
#[test]
fn a_damaged_log_keeps_objects_up_and_is_repaired_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("VBUS");
    let daemon = Daemon::start(&home);
    let create = |addr: &str| {
        crate::support::http_raw(
            addr,
            "POST",
            "/v1/pages",
            &[("Content-Type", "application/json")],
            br#"{"size": 4096, "location": "cpu"}"#,
        )
    };
    for _ in 0..5 {
        assert_eq!(create(&daemon.addr).0, 201);
    }
    // Killed: no checkpoint at exit, the log alone holds the pages.
    daemon.signal(Signal::KILL);
    drop(daemon);
    let tlog = home.join("DATA/TLOG");
    let segment = std::fs::read_dir(&tlog)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .unwrap();
    let bytes = std::fs::read(&segment).unwrap();
    let last = bytes.iter().rposition(|&b| b != 0).unwrap();
    let flip = if bytes[last] ^ 0x80 != 0 { 0x80 } else { 0x40 };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.write_all_at(&[bytes[last] ^ flip], last as u64)
        .unwrap();
    drop(file);

    let daemon = Daemon::start(&home);
    let value = dir.path().join("v");
    std::fs::write(&value, b"objects still work").unwrap();
    let put = run(vbus(&home).args(["put", "ds/v"]).arg(&value));
    assert!(put.success, "{put:#?}");
    let (status, body) = http_get(&daemon.addr, "/v1/pages");
    assert_eq!(status, 503, "{body}");
    let segment_name = segment.file_name().unwrap().to_string_lossy().into_owned();
    assert!(body.contains(&segment_name), "{body}");
    assert!(body.contains("state repair"), "{body}");
    let (_, stats) = http_get(&daemon.addr, "/v1/stats");
    assert!(stats.contains("\"error\""), "{stats}");
    let log = std::fs::read_to_string(home.join("AUDIT/LOGS/vbus_daemon.log")).unwrap();
    assert!(
        log.lines()
            .any(|line| line.contains("ERROR") && line.contains(&segment_name)),
        "{log}"
    );
    let refused = run(vbus(&home).args(["state", "repair", "--yes"]));
    assert!(
        !refused.success && refused.stderr.contains("stop it"),
        "{refused:#?}"
    );
    daemon.signal(Signal::TERM);
    drop(daemon);

    let dry = run(vbus(&home).args(["state", "repair", "--dry-run"]));
    assert!(dry.success, "{dry:#?}");
    assert!(
        dry.stdout.contains("the log ends at record 4")
            && dry.stdout.contains("nothing was changed"),
        "{}",
        dry.stdout
    );
    assert_eq!(std::fs::read(&segment).unwrap()[last], bytes[last] ^ flip);
    let unconfirmed = run(vbus(&home).args(["state", "repair"]));
    assert!(!unconfirmed.success, "{unconfirmed:#?}");
    let repaired = run(vbus(&home).args(["state", "repair", "--yes"]));
    assert!(repaired.success, "{repaired:#?}");
    assert!(tlog.join("damaged").read_dir().unwrap().count() >= 1);

    let daemon = Daemon::start(&home);
    let (status, body) = http_get(&daemon.addr, "/v1/pages");
    assert_eq!(status, 200, "{body}");
    let pages: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(pages["pages"].as_array().map(Vec::len), Some(4), "{body}");
    assert_eq!(create(&daemon.addr).0, 201);
}

/// The disk-fault test against the daemon: 200 rounds, each flipping a byte of, truncating or
/// deleting a random L3 file under the running daemon (L2 off, so every get reads L3), then
/// getting every value over HTTP. A 200 always carries exactly the acknowledged bytes; a damaged
/// or deleted file is refused (never served) and counted in `/v1/stats`; each lost value is put
/// again, as its owner would.
#[test]
fn disk_faults_under_the_daemon_never_serve_a_wrong_byte() {
    const N_FILES: usize = 8;
    const N_ROUNDS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("VBUS");
    init_with(&home, |config| {
        config["cache_hierarchy"]["L2_RAM"]["enabled"] = false.into();
    });
    let daemon = Daemon::start(&home);
    let put = |name: &str, value: &[u8]| {
        let (status, body) = crate::support::http_raw(
            &daemon.addr,
            "PUT",
            &format!("/v1/objects/faults/{name}"),
            &[],
            value,
        );
        assert_eq!(status, 201, "{body}");
    };
    let mut rng = fastrand::Rng::with_seed(200);
    let mut values: Vec<Vec<u8>> = (0..N_FILES)
        .map(|idx| pattern(rng.usize(1..1_500_000), idx as u8))
        .collect();
    for (idx, value) in values.iter().enumerate() {
        put(&format!("f{idx}"), value);
    }
    let (mut n_damaged, mut n_deleted) = (0u64, 0u64);
    let started = std::time::Instant::now();
    for round in 0..N_ROUNDS {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(240),
            "round {round} is past the time bound"
        );
        let victim = rng.usize(..N_FILES);
        let path = home.join(format!("CACHE/L3_DISK/faults/f{victim}"));
        let len = values[victim].len() as u64;
        let fault = rng.u8(..4);
        match fault {
            0 => flip(&path, rng.u64(..len)),
            1 => std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(rng.u64(..len))
                .unwrap(),
            2 => std::fs::remove_file(&path).unwrap(),
            _ => {}
        }
        for (idx, value) in values.iter_mut().enumerate() {
            let name = format!("f{idx}");
            let (status, body) =
                http_get_bytes(&daemon.addr, &format!("/v1/objects/faults/{name}"));
            if status == 200 {
                assert!(body == *value, "round {round}: {name} served wrong bytes");
                assert!(
                    idx != victim || fault == 3,
                    "round {round}: damaged {name} served"
                );
                continue;
            }
            assert_eq!(idx, victim, "round {round}: {name} answered {status}");
            match fault {
                2 => {
                    assert_eq!(status, 404, "round {round}");
                    n_deleted += 1;
                }
                _ => {
                    let text = String::from_utf8_lossy(&body);
                    assert!(
                        text.contains(&format!("faults/{name}")),
                        "round {round}: {text}"
                    );
                    n_damaged += 1;
                }
            }
            *value = pattern(rng.usize(1..1_500_000), round as u8);
            put(&name, value);
        }
    }
    let l3 = l3_stats(&daemon.addr);
    assert_eq!(l3["n_checksum_failures"], n_damaged, "{l3}");
    assert_eq!(l3["n_missing"], n_deleted, "{l3}");
    assert!(
        n_damaged > 50 && n_deleted > 25,
        "{n_damaged} damaged, {n_deleted} deleted"
    );
    eprintln!(
        "{N_ROUNDS} rounds: {n_damaged} damaged files refused, {n_deleted} deletions noticed"
    );
}

/// Log bytes damaged under the running daemon: 200 rounds, each replaying the page at a random
/// acknowledged sequence number from the log (and now and then flipping a byte of the log's
/// written records first). A replay answers exactly the page as it was acknowledged at that
/// number, or refuses naming the segment; never other bytes.
#[test]
fn log_faults_under_the_daemon_never_replay_a_wrong_byte() {
    const N_ROUNDS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("VBUS");
    let daemon = Daemon::start(&home);
    let (status, body) = crate::support::http_raw(
        &daemon.addr,
        "POST",
        "/v1/pages",
        &[("Content-Type", "application/json")],
        br#"{"size": 64, "location": "cpu"}"#,
    );
    assert_eq!(status, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = created["id"].as_u64().unwrap();
    let mut rng = fastrand::Rng::with_seed(4);
    let mut acknowledged: Vec<(u64, Vec<u8>)> =
        vec![(created["seq"].as_u64().unwrap(), vec![0u8; 64])];
    for _ in 0..60 {
        let bytes: Vec<u8> = (0..64).map(|_| rng.u8(..)).collect();
        let mut delta = Vec::new();
        vbus_state::delta::encode(&vbus_state::Delta::dense(bytes.clone()), &mut delta);
        let (status, body) = crate::support::http_raw(
            &daemon.addr,
            "PATCH",
            &format!("/v1/pages/{id}"),
            &[("Content-Type", "application/octet-stream")],
            &delta,
        );
        assert_eq!(status, 200, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        acknowledged.push((answer["seq"].as_u64().unwrap(), bytes));
    }
    let segment = std::fs::read_dir(home.join("DATA/TLOG"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .unwrap();
    let written_end = std::fs::read(&segment)
        .unwrap()
        .iter()
        .rposition(|&b| b != 0)
        .unwrap() as u64;
    let segment_name = segment.file_name().unwrap().to_string_lossy().into_owned();
    let (mut n_exact, mut n_refused, mut n_flips) = (0, 0, 0);
    for round in 0..N_ROUNDS {
        if round >= 20 && rng.usize(..30) == 0 {
            flip(&segment, rng.u64(32..written_end));
            n_flips += 1;
        }
        let (seq, expected) = &acknowledged[rng.usize(..acknowledged.len())];
        let (status, body) = http_get_bytes(&daemon.addr, &format!("/v1/replay/{seq}/pages/{id}"));
        if status == 200 {
            assert!(
                body == *expected,
                "round {round}: replay to {seq} gave other bytes"
            );
            n_exact += 1;
        } else {
            let text = String::from_utf8_lossy(&body);
            assert!(status >= 500, "round {round}: {status} {text}");
            assert!(text.contains(&segment_name), "round {round}: {text}");
            n_refused += 1;
        }
    }
    assert!(
        n_flips > 0 && n_exact > 0,
        "{n_flips} flips, {n_exact} exact"
    );
    eprintln!(
        "{N_ROUNDS} replays: {n_exact} exact, {n_refused} refused naming the segment, {n_flips} flips"
    );
}
