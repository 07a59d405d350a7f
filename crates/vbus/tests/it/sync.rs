//! The BUS end to end: a tracker and several daemons (agents), each its own process with its own
//! home, on loopback, sharing one master directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use serde_json::Value as Json;

use crate::support::{Daemon, S3Server, http_get, http_raw, run_ok, vbus};

const TOKEN: &str = "cluster-token-0123456789";

/// A file of `n` pseudo-random bytes.
fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut bytes = vec![0u8; n];
    rng.fill(&mut bytes);
    bytes
}

/// Writes `n_files` files of `file_bytes` under `master/dataset`; returns path → bytes.
fn write_dataset(
    master: &Path,
    dataset: &str,
    n_files: usize,
    file_bytes: usize,
) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for idx in 0..n_files {
        let path = format!("shard-{idx:02}.bin");
        let bytes = random_bytes(idx as u64 + 1, file_bytes + idx * 4099);
        let full = master.join(dataset).join(&path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, &bytes).unwrap();
        files.insert(path, bytes);
    }
    files
}

/// An initialised home whose daemon joins `tracker` with the shared `master`.
fn agent_home(root: &Path, name: &str, master: &Path, tracker: &str) -> PathBuf {
    agent_home_at(root, name, &master.display().to_string(), tracker)
}

/// [`agent_home`] with the master at `location` (a directory or an `s3://` URL).
fn agent_home_at(root: &Path, name: &str, location: &str, tracker: &str) -> PathBuf {
    let home = root.join(name);
    run_ok(&home, &["init"]);
    let config_path = home.join("CONFIG/vbus_config.json");
    let mut config: Json =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let bus = &mut config["bus_config"];
    bus["master_db"] = Json::String(location.to_owned());
    bus["tracker"] = Json::String(tracker.to_owned());
    bus["cluster_token"] = Json::String(TOKEN.to_owned());
    bus["agent_id"] = Json::String(name.to_owned());
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    home
}

/// `vbus tracker` on a free port (or `port`), its state in `home`.
fn start_tracker(home: &Path, port: u16) -> Daemon {
    std::fs::create_dir_all(home).unwrap();
    Daemon::start_with(
        home,
        &[
            "tracker",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--token",
            TOKEN,
        ],
    )
}

fn post_json(addr: &str, path: &str, body: &Json) -> (u16, Json) {
    let (status, text) = http_raw(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    (
        status,
        serde_json::from_str(&text).unwrap_or(Json::String(text)),
    )
}

/// Records a version of the master's `dataset` through `agent`; returns its name.
fn push(agent: &Daemon, dataset: &str) -> String {
    let (status, pushed) = post_json(
        &agent.addr,
        "/v1/sync/push",
        &serde_json::json!({ "dataset": dataset }),
    );
    assert_eq!(status, 200, "{pushed}");
    pushed["version"].as_str().unwrap().to_owned()
}

fn pull(agent: &Daemon, dataset: &str) -> Json {
    pull_at(&agent.addr, dataset)
}

fn pull_at(addr: &str, dataset: &str) -> Json {
    let (status, report) = post_json(
        addr,
        "/v1/sync/pull",
        &serde_json::json!({ "dataset": dataset }),
    );
    assert_eq!(status, 200, "pull on {addr}: {report}");
    report
}

/// The holders the tracker names for one file.
fn holders(tracker: &str, dataset: &str, version: &str, path: &str) -> Vec<String> {
    let auth = format!("Bearer {TOKEN}");
    let (status, text) = http_raw(
        tracker,
        "GET",
        &format!("/v1/tracker/holders?dataset={dataset}&version={version}&path={path}"),
        &[("Authorization", auth.as_str())],
        &[],
    );
    assert_eq!(status, 200, "{text}");
    let holders: Json = serde_json::from_str(&text).unwrap();
    holders
        .as_array()
        .unwrap()
        .iter()
        .map(|agent| agent["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until the tracker names `want` holders of `path`.
fn wait_for_holders(tracker: &str, dataset: &str, version: &str, path: &str, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = holders(tracker, dataset, version, path);
        if now.len() >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the tracker names {now:?} for {path}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every file of the dataset in `home`'s L3 equals the master's, byte for byte.
fn assert_holds(home: &Path, dataset: &str, files: &BTreeMap<String, Vec<u8>>) {
    for (path, bytes) in files {
        let held = std::fs::read(home.join("CACHE/L3_DISK").join(dataset).join(path))
            .unwrap_or_else(|err| panic!("{}: {path}: {err}", home.display()));
        assert!(
            held == *bytes,
            "{}: {path} differs from the master",
            home.display()
        );
    }
}

fn as_u64(report: &Json, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {report}"))
}

/// A daemon whose master is on `s3`.
fn start_s3_agent(home: &Path, s3: &S3Server) -> Daemon {
    set_bus_key(home, "s3_endpoint", Json::String(s3.endpoint.clone()));
    Daemon::spawn(
        vbus(home)
            .args(["up", "--listen", "127.0.0.1:0"])
            .envs(s3.env()),
    )
}

/// The cluster of the issue: a tracker, the master on a real S3-compatible server (the bucket
/// `master`), four agents.
#[test]
fn four_agents_pull_one_dataset_from_s3_and_the_master_serves_it_about_once() {
    let dir = tempfile::tempdir().unwrap();
    let s3_root = dir.path().join("s3");
    // s3s-fs serves the folder `master` of its root as the bucket `master`.
    let files = write_dataset(&s3_root.join("master"), "ds", 8, 32 << 20);
    let s3 = S3Server::start(&s3_root);
    let total: u64 = files.values().map(|b| b.len() as u64).sum();
    let tracker = start_tracker(&dir.path().join("tracker"), 0);
    let homes: Vec<PathBuf> = ["a", "b", "c", "d"]
        .iter()
        .map(|name| agent_home_at(dir.path(), name, "s3://master", &tracker.addr))
        .collect();
    let agents: Vec<Daemon> = homes.iter().map(|home| start_s3_agent(home, &s3)).collect();

    // Record a version of the master's `ds`, by the CLI: its manifest is written to the bucket.
    let pushed = run_ok(
        &homes[0],
        &["--addr", &agents[0].addr, "sync", "push", "ds"],
    );
    let version = pushed
        .stdout
        .split_whitespace()
        .next()
        .and_then(|spec| spec.split_once('@'))
        .map(|(_, version)| version.trim_end_matches(':').to_owned())
        .unwrap_or_else(|| panic!("push printed {:?}", pushed.stdout));

    // The first agent has no peer: everything from the master.
    let first = pull(&agents[0], "ds");
    assert_eq!(as_u64(&first, "bytes_from_origin"), total, "{first}");
    assert_eq!(first["version"], version.as_str());
    let first_path = files.keys().next().unwrap();
    wait_for_holders(&tracker.addr, "ds", &version, first_path, 1);

    // The other three at once: from the first agent, and from each other.
    let reports: Vec<Json> = std::thread::scope(|scope| {
        let handles: Vec<_> = agents[1..]
            .iter()
            .map(|agent| {
                let addr = agent.addr.as_str();
                scope.spawn(move || pull_at(addr, "ds"))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!("first pull: {first}\nthe next three: {reports:#?}");
    let mut egress = as_u64(&first, "bytes_from_origin");
    for report in &reports {
        assert_eq!(
            as_u64(report, "bytes_from_peers") + as_u64(report, "bytes_from_origin"),
            total,
            "{report}"
        );
        assert_eq!(as_u64(report, "pieces_rejected"), 0, "{report}");
        egress += as_u64(report, "bytes_from_origin");
    }
    assert!(
        egress as f64 <= 1.25 * total as f64,
        "the master served {egress} bytes for a {total}-byte dataset: {reports:?}"
    );
    for home in &homes {
        assert_holds(home, "ds", &files);
    }
    // A second pull fetches nothing (by the CLI, naming the version).
    let spec = format!("ds@{version}");
    let again = run_ok(
        &homes[1],
        &["--addr", &agents[1].addr, "sync", "pull", &spec],
    );
    let expected = format!("(0 fetched, {} already held)", files.len());
    assert!(again.stdout.contains(&expected), "{}", again.stdout);
    // Status, by the CLI.
    let status = run_ok(&homes[3], &["--addr", &agents[3].addr, "sync", "status"]);
    assert!(status.stdout.contains(&version), "{}", status.stdout);
    assert!(
        s3_root
            .join(format!("master/.vbus/manifests/ds/{version}.json"))
            .is_file(),
        "the version's manifest is in the bucket"
    );
}

#[test]
fn an_s3_master_with_wrong_credentials_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let s3_root = dir.path().join("s3");
    write_dataset(&s3_root.join("master"), "ds", 1, 1000);
    let s3 = S3Server::start(&s3_root);
    let home = agent_home_at(dir.path(), "a", "s3://master", "");
    set_bus_key(&home, "tracker", Json::String(String::new()));
    set_bus_key(&home, "s3_endpoint", Json::String(s3.endpoint.clone()));
    let agent = Daemon::spawn(
        vbus(&home)
            .args(["up", "--listen", "127.0.0.1:0"])
            .env("AWS_ACCESS_KEY_ID", crate::support::S3_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
    );
    let (status, refused) = post_json(
        &agent.addr,
        "/v1/sync/push",
        &serde_json::json!({ "dataset": "ds" }),
    );
    assert_eq!(status, 400, "{refused}");
    let message = refused["error"].as_str().unwrap_or_default();
    assert!(message.contains("s3://master/ds"), "{message}");
    // Nothing was recorded in the bucket.
    assert!(!s3_root.join("master/.vbus").exists());
    // A dataset the bucket lacks is a 404 on pull that names the master.
    let (status, missing) = post_json(
        &agent.addr,
        "/v1/sync/pull",
        &serde_json::json!({ "dataset": "nothing" }),
    );
    assert_eq!(status, 404, "{missing}");
}

#[test]
fn pulls_survive_a_dead_peer_a_corrupt_peer_a_tracker_restart_and_a_master_outage() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("master");
    let files = write_dataset(&master, "ds", 4, 6 << 20);
    let tracker_home = dir.path().join("tracker");
    let mut tracker = start_tracker(&tracker_home, 0);
    let tracker_addr = tracker.addr.clone();
    let port: u16 = tracker_addr.rsplit(':').next().unwrap().parse().unwrap();
    let homes: Vec<PathBuf> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|name| agent_home(dir.path(), name, &master, &tracker_addr))
        .collect();
    let agents: Vec<Daemon> = homes.iter().map(|home| Daemon::start(home)).collect();
    let version = push(&agents[0], "ds");
    let first_path = files.keys().next().unwrap().clone();

    // a pulls from the master, c from a.
    pull(&agents[0], "ds");
    wait_for_holders(&tracker_addr, "ds", &version, &first_path, 1);
    pull(&agents[2], "ds");
    wait_for_holders(&tracker_addr, "ds", &version, &first_path, 2);

    // c's copy of the first file goes bad on disk; a is killed as b starts pulling.
    let on_c = homes[2].join("CACHE/L3_DISK/ds").join(&first_path);
    let mut bytes = std::fs::read(&on_c).unwrap();
    // Both of its pieces: whichever b asks c for is damaged.
    bytes[1000] ^= 0xff;
    bytes[(4 << 20) + 1000] ^= 0xff;
    std::fs::write(&on_c, &bytes).unwrap();
    let report = std::thread::scope(|scope| {
        let b = agents[1].addr.as_str();
        let pulling = scope.spawn(move || pull_at(b, "ds"));
        std::thread::sleep(Duration::from_millis(20));
        agents[0].signal(Signal::KILL);
        pulling.join().unwrap()
    });
    eprintln!("b, with a killed and c damaged: {report}");
    assert_holds(&homes[1], "ds", &files);
    // c checks every piece it reads: it caught its own damage and sent none of it (b rejected
    // nothing), quarantined the file, and withdrew its copy at the tracker.
    assert_eq!(
        as_u64(&report, "pieces_rejected"),
        0,
        "a damaged piece left c: {report}"
    );
    let (status, stats) = http_get(&agents[2].addr, "/v1/stats");
    assert_eq!(status, 200, "{stats}");
    let stats: Json = serde_json::from_str(&stats).unwrap();
    assert!(
        stats["tiers"]["L3_DISK"]["n_checksum_failures"].as_u64() >= Some(1),
        "c did not catch its damaged copy: {stats}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let named = holders(&tracker_addr, "ds", &version, &first_path);
        if !named.contains(&"c".to_owned()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the tracker still names c: {named:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The tracker is killed and restarted on its port while d pulls; the pull finishes and the
    // agents are known again.
    let report = std::thread::scope(|scope| {
        let d = agents[3].addr.as_str();
        let pulling = scope.spawn(move || pull_at(d, "ds"));
        tracker.signal(Signal::KILL);
        let _ = tracker.wait();
        tracker = start_tracker(&tracker_home, port);
        pulling.join().unwrap()
    });
    eprintln!("d, across a tracker restart: {report}");
    assert_holds(&homes[3], "ds", &files);
    let total: u64 = files.values().map(|b| b.len() as u64).sum();
    assert_eq!(
        as_u64(&report, "bytes_from_peers") + as_u64(&report, "bytes_from_origin"),
        total,
        "{report}"
    );
    let second_path = files.keys().nth(1).unwrap().clone();
    wait_for_holders(&tracker.addr, "ds", &version, &second_path, 2);

    // The master goes away: e pulls the named version from its peers alone (the manifest too,
    // checked against the version's name); the newest version needs the master.
    std::fs::rename(&master, dir.path().join("master-offline")).unwrap();
    let (status, report) = post_json(
        &agents[4].addr,
        "/v1/sync/pull",
        &serde_json::json!({ "dataset": "ds", "version": version }),
    );
    assert_eq!(status, 200, "{report}");
    eprintln!("e, with the master gone: {report}");
    assert_eq!(as_u64(&report, "bytes_from_origin"), 0, "{report}");
    assert_holds(&homes[4], "ds", &files);
    let (status, refused) = post_json(
        &agents[4].addr,
        "/v1/sync/pull",
        &serde_json::json!({ "dataset": "ds" }),
    );
    assert_eq!(status, 404, "{refused}");
    assert!(refused.to_string().contains("at the master"), "{refused}");
    drop(agents);
}

#[test]
fn peer_routes_need_the_cluster_token_and_a_daemon_alone_still_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("master");
    write_dataset(&master, "ds", 1, 1000);
    let tracker = start_tracker(&dir.path().join("tracker"), 0);
    let home = agent_home(dir.path(), "a", &master, &tracker.addr);
    let agent = Daemon::start(&home);
    let (status, body) = http_raw(
        &agent.addr,
        "GET",
        "/v1/bus/files/ds/shard-00.bin?blake3=00&offset=0&len=1",
        &[],
        &[],
    );
    assert_eq!(status, 401, "{body}");
    let (status, body) = http_raw(
        &tracker.addr,
        "GET",
        "/v1/tracker/agents",
        &[("Authorization", "Bearer wrong-token-0123456789")],
        &[],
    );
    assert_eq!(status, 401, "{body}");
    // With the token, a file not held is a 404, not bytes.
    let auth = format!("Bearer {TOKEN}");
    let (status, body) = http_raw(
        &agent.addr,
        "GET",
        "/v1/bus/files/ds/shard-00.bin?blake3=00&offset=0&len=1",
        &[("Authorization", auth.as_str())],
        &[],
    );
    assert_eq!(status, 404, "{body}");
    // A home without a cluster refuses peers, and a tracker without a token is refused.
    let lone = dir.path().join("lone");
    run_ok(&lone, &["init"]);
    let lone_daemon = Daemon::start(&lone);
    let (status, body) = http_raw(
        &lone_daemon.addr,
        "GET",
        "/v1/bus/files/ds/x?blake3=00&offset=0&len=1",
        &[("Authorization", auth.as_str())],
        &[],
    );
    assert_eq!(status, 403, "{body}");
    let refused = crate::support::run(vbus(&lone).env_remove("VBUS_CLUSTER_TOKEN").args([
        "tracker",
        "--listen",
        "127.0.0.1:0",
    ]));
    assert!(
        !refused.success && refused.stderr.contains("cluster token"),
        "{refused:?}"
    );
    // Without a cluster, push and pull still work against the home's own master.
    let files = write_dataset(&lone.join("DATA/MASTER_DB"), "solo", 2, 3 << 20);
    let total: u64 = files.values().map(|b| b.len() as u64).sum();
    push(&lone_daemon, "solo");
    let report = pull(&lone_daemon, "solo");
    assert_eq!(as_u64(&report, "bytes_from_origin"), total, "{report}");
    assert_eq!(as_u64(&report, "tracker_errors"), 0, "{report}");
    assert_holds(&lone, "solo", &files);
}

/// Sets `bus_config.KEY` in `home`'s config.
/// Names the local-directory repositories the daemon keeps coherent.
fn set_repositories(home: &Path, repos: &[PathBuf]) {
    let paths: Vec<String> = repos.iter().map(|r| r.display().to_string()).collect();
    set_bus_key(home, "repositories", Json::from(paths));
}

/// Whether `path` holds exactly `want`.
fn holds(path: &Path, want: &[u8]) -> bool {
    std::fs::read(path).is_ok_and(|got| got == want)
}

/// The stages in `BUS/INTERCONNECT/{dataset}` of an agent's home.
fn staged(home: &Path, dataset: &str) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(home.join("BUS/INTERCONNECT").join(dataset))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect()
}

fn set_bus_key(home: &Path, key: &str, value: Json) {
    let config_path = home.join("CONFIG/vbus_config.json");
    let mut config: Json =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["bus_config"][key] = value;
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

#[test]
fn upload_and_download_limits_pace_pulls() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("master");
    let files = write_dataset(&master, "ds", 2, 8_000_000);
    let total: u64 = files.values().map(|b| b.len() as u64).sum();
    let tracker = start_tracker(&dir.path().join("tracker"), 0);
    let homes: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|name| agent_home(dir.path(), name, &master, &tracker.addr))
        .collect();
    // a serves peers at 8 MB/s; c downloads at 8 MB/s.
    set_bus_key(
        &homes[0],
        "upload_bytes_per_second",
        Json::from(8_000_000u64),
    );
    set_bus_key(
        &homes[2],
        "download_bytes_per_second",
        Json::from(8_000_000u64),
    );
    let agents: Vec<Daemon> = homes.iter().map(|home| Daemon::start(home)).collect();
    let version = push(&agents[0], "ds");
    pull(&agents[0], "ds");
    for path in files.keys() {
        wait_for_holders(&tracker.addr, "ds", &version, path, 1);
    }
    // The last piece (at most 4 MiB) may go as soon as its turn starts.
    let floor = (total - (4 << 20)) as f64 / 8_000_000.0 * 0.9;
    // b from a, paced by a's upload limit.
    let from_a = pull(&agents[1], "ds");
    assert_eq!(as_u64(&from_a, "bytes_from_peers"), total, "{from_a}");
    let seconds = from_a["seconds"].as_f64().unwrap();
    assert!(seconds >= floor, "{total} bytes at 8 MB/s took {seconds} s");
    // c, paced by its own download limit; its status shows the pull going on.
    let (paced, seen) = std::thread::scope(|scope| {
        let c = agents[2].addr.as_str();
        let pulling = scope.spawn(move || pull_at(c, "ds"));
        let mut seen = Vec::new();
        while !pulling.is_finished() {
            let (status, body) = http_raw(c, "GET", "/v1/sync/status", &[], &[]);
            assert_eq!(status, 200, "{body}");
            let status: Json = serde_json::from_str(&body).unwrap();
            if let Some(entry) = status["pulls_in_progress"].as_array().unwrap().first() {
                assert_eq!(entry["dataset"], "ds");
                assert_eq!(as_u64(entry, "bytes"), total);
                seen.push(as_u64(entry, "bytes_done"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (pulling.join().unwrap(), seen)
    });
    assert!(
        seen.iter().any(|&done| done > 0 && done < total),
        "no pull in progress seen in the status: {seen:?}"
    );
    let seconds = paced["seconds"].as_f64().unwrap();
    assert!(
        seconds >= floor,
        "{total} bytes at 8 MB/s took {seconds} s: {paced}"
    );
    assert_holds(&homes[1], "ds", &files);
    assert_holds(&homes[2], "ds", &files);
}

#[test]
fn a_get_that_misses_every_tier_fetches_through_the_bus() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("master");
    let files = write_dataset(&master, "ds", 2, 5 << 20);
    let tracker = start_tracker(&dir.path().join("tracker"), 0);
    let homes: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|name| agent_home(dir.path(), name, &master, &tracker.addr))
        .collect();
    let agents: Vec<Daemon> = homes.iter().map(|home| Daemon::start(home)).collect();
    // Before any version is recorded, the master has nothing to give: a plain 404.
    let (status, body) = http_raw(
        &agents[1].addr,
        "GET",
        "/v1/objects/ds/shard-00.bin",
        &[],
        &[],
    );
    assert_eq!(status, 404, "{body}");
    let version = push(&agents[0], "ds");
    pull(&agents[0], "ds");
    wait_for_holders(&tracker.addr, "ds", &version, "shard-00.bin", 1);
    // b never pulled: its get goes to the BUS (a peer holds it), and L3 keeps it.
    let out = dir.path().join("got.bin");
    run_ok(
        &homes[1],
        &[
            "--addr",
            &agents[1].addr,
            "get",
            "ds/shard-00.bin",
            out.to_str().unwrap(),
        ],
    );
    assert!(std::fs::read(&out).unwrap() == files["shard-00.bin"]);
    let held = std::fs::read(homes[1].join("CACHE/L3_DISK/ds/shard-00.bin")).unwrap();
    assert!(held == files["shard-00.bin"]);
    // A path the version does not have is still a 404.
    let (status, body) = http_raw(&agents[1].addr, "GET", "/v1/objects/ds/nope.bin", &[], &[]);
    assert_eq!(status, 404, "{body}");
}

#[test]
fn a_peer_cannot_pass_off_a_tampered_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("master");
    write_dataset(&master, "ds", 1, 1 << 20);
    let tracker = start_tracker(&dir.path().join("tracker"), 0);
    let homes: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|name| agent_home(dir.path(), name, &master, &tracker.addr))
        .collect();
    let agents: Vec<Daemon> = homes.iter().map(|home| Daemon::start(home)).collect();
    let version = push(&agents[0], "ds");
    pull(&agents[0], "ds");
    wait_for_holders(&tracker.addr, "ds", &version, "shard-00.bin", 1);
    // a's recorded manifest now claims other bytes for the file; the master is gone.
    let recorded = homes[0].join(format!("BUS/CONTROL_PLANE/manifests/ds@{version}.json"));
    let mut manifest: Json =
        serde_json::from_str(&std::fs::read_to_string(&recorded).unwrap()).unwrap();
    manifest["files"][0]["blake3"] = Json::String("ab".repeat(32));
    std::fs::write(&recorded, manifest.to_string()).unwrap();
    std::fs::rename(&master, dir.path().join("master-offline")).unwrap();
    let (status, refused) = post_json(
        &agents[1].addr,
        "/v1/sync/pull",
        &serde_json::json!({ "dataset": "ds", "version": version }),
    );
    assert_eq!(status, 404, "{refused}");
    assert!(
        refused.to_string().contains("whose content is version"),
        "{refused}"
    );
    assert!(!homes[1].join("CACHE/L3_DISK/ds/shard-00.bin").exists());
}

/// `PUT /v1/objects/{key}` with `bytes`; the status and the JSON answer.
fn put_object(addr: &str, key: &str, bytes: &[u8]) -> (u16, Json) {
    let (status, text) = http_raw(addr, "PUT", &format!("/v1/objects/{key}"), &[], bytes);
    (
        status,
        serde_json::from_str(&text).unwrap_or(Json::String(text)),
    )
}

/// `GET /v1/objects/{key}`: the status and the body's bytes.
fn get_object(addr: &str, key: &str) -> (u16, Vec<u8>) {
    get_bytes(addr, &format!("/v1/objects/{key}"), None)
}

/// A GET whose body is bytes, with a bearer token when given.
fn get_bytes(addr: &str, path: &str, token: Option<&str>) -> (u16, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.get(format!("http://{addr}{path}"));
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request
        .call()
        .unwrap_or_else(|err| panic!("GET {path} on {addr}: {err}"));
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap();
    (status, body)
}

/// The coherence directory's line for `dataset/path`, as the tracker answers it.
fn directory_line(tracker: &str, dataset: &str, path: &str) -> Json {
    let auth = format!("Bearer {TOKEN}");
    let (status, text) = http_raw(
        tracker,
        "GET",
        &format!("/v1/tracker/line?dataset={dataset}&path={path}"),
        &[("Authorization", auth.as_str())],
        &[],
    );
    assert_eq!(status, 200, "{text}");
    serde_json::from_str::<Json>(&text).unwrap()["line"].clone()
}

/// Waits until `check` holds, for at most `limit`; returns how long it took.
fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

/// MESI coherence across three agents whose master is a real S3-compatible server:
/// a write on a invalidates b and c, a read on b gets the new version, and the master has it
/// within the sync interval; a 40 MiB file goes the same way (a multipart upload to S3).
#[test]
fn a_write_invalidates_the_other_holders_and_reaches_the_master_within_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let s3_root = dir.path().join("s3");
    let bucket = s3_root.join("master");
    std::fs::create_dir_all(bucket.join("ds")).unwrap();
    std::fs::write(bucket.join("ds/x.bin"), random_bytes(1, 100_000)).unwrap();
    std::fs::write(bucket.join("ds/big.bin"), random_bytes(2, 40 << 20)).unwrap();
    let s3 = S3Server::start(&s3_root);
    let tracker = start_tracker(&dir.path().join("tracker"), 0);
    let interval = Duration::from_secs(2);
    let homes: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let home = agent_home_at(dir.path(), name, "s3://master", &tracker.addr);
            set_bus_key(
                &home,
                "sync_interval_seconds",
                Json::from(interval.as_secs()),
            );
            home
        })
        .collect();
    let mut agents: Vec<Daemon> = homes.iter().map(|home| start_s3_agent(home, &s3)).collect();
    push(&agents[0], "ds");
    for agent in &agents {
        pull(agent, "ds");
    }

    // a writes x.bin: b and c, which hold it from the pull, are invalid.
    let new_x = random_bytes(3, 120_000);
    let (status, put) = put_object(&agents[0].addr, "ds/x.bin", &new_x);
    assert_eq!(status, 201, "{put}");
    assert_eq!(put["coherence"]["version"], 1, "{put}");
    let line = directory_line(&tracker.addr, "ds", "x.bin");
    assert_eq!(line["owner"], "a", "{line}");
    assert_eq!(line["holders"]["a"], "modified", "{line}");
    assert_eq!(line["holders"]["b"], "invalid", "{line}");
    assert_eq!(line["holders"]["c"], "invalid", "{line}");
    let written = Instant::now();

    // A read on b returns the new version, fetched from a; b is then Shared, and so is a.
    let (status, got) = get_object(&agents[1].addr, "ds/x.bin");
    assert_eq!(status, 200);
    assert!(
        got == new_x,
        "b read {} bytes, not the new version",
        got.len()
    );
    let line = directory_line(&tracker.addr, "ds", "x.bin");
    assert_eq!(line["holders"]["b"], "shared", "{line}");
    assert_eq!(line["holders"]["c"], "invalid", "{line}");

    // The master has it within the sync interval (plus a beat of slack).
    let took = wait_until(
        interval + Duration::from_secs(2),
        "x.bin at the master",
        || std::fs::read(bucket.join("ds/x.bin")).is_ok_and(|held| held == new_x),
    );
    eprintln!(
        "x.bin reached the master {took:?} after the read ({:?} after the write)",
        written.elapsed()
    );
    wait_until(Duration::from_secs(5), "the line clean", || {
        directory_line(&tracker.addr, "ds", "x.bin")["dirty"] == false
    });

    // A 40 MiB write on c: read on a, then written back as a multipart upload.
    let new_big = random_bytes(4, 40 << 20);
    let (status, put) = put_object(&agents[2].addr, "ds/big.bin", &new_big);
    assert_eq!(status, 201, "{put}");
    let (status, got) = get_object(&agents[0].addr, "ds/big.bin");
    assert_eq!(status, 200);
    assert!(
        got == new_big,
        "a read {} bytes, not c's version",
        got.len()
    );
    wait_until(
        interval + Duration::from_secs(4),
        "big.bin at the master",
        || std::fs::read(bucket.join("ds/big.bin")).is_ok_and(|held| held == new_big),
    );

    // A push records a version with both new files.
    let (status, pushed) = post_json(
        &agents[1].addr,
        "/v1/sync/push",
        &serde_json::json!({ "dataset": "ds" }),
    );
    assert_eq!(status, 200, "{pushed}");
    let version = pushed["version"].as_str().unwrap().to_owned();
    let manifest: Json = serde_json::from_slice(
        &std::fs::read(bucket.join(format!(".vbus/manifests/ds/{version}.json"))).unwrap(),
    )
    .unwrap();
    let hash_of = |path: &str| {
        manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|file| file["path"] == path)
            .map(|file| file["blake3"].as_str().unwrap().to_owned())
    };
    assert_eq!(
        hash_of("x.bin").as_deref(),
        Some(blake3::hash(&new_x).to_hex().as_str())
    );
    assert_eq!(
        hash_of("big.bin").as_deref(),
        Some(blake3::hash(&new_big).to_hex().as_str())
    );

    // a writes again and dies at once: b is never served the older version. Either the
    // write-back happened (b reads the new one from the master) or b's read is refused.
    let newest = random_bytes(5, 50_000);
    let (status, put) = put_object(&agents[0].addr, "ds/x.bin", &newest);
    assert_eq!(status, 201, "{put}");
    agents[0].signal(Signal::KILL);
    let (status, got) = get_object(&agents[1].addr, "ds/x.bin");
    match status {
        200 => assert!(got == newest, "b was served a stale x.bin"),
        503 => {
            let message = String::from_utf8_lossy(&got);
            assert!(message.contains("owned by a"), "{message}");
        }
        other => panic!("HTTP {other}: {}", String::from_utf8_lossy(&got)),
    }
    let _ = agents.remove(0).wait();
}

/// Two agents write the same file at once, many times, while a third reads it: the directory
/// gives every acknowledged write its own version, every read returns one whole written
/// content, and afterwards every agent and the master agree on the last version.
#[test]
fn concurrent_writers_end_in_one_version_order_with_no_torn_file() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("master");
    std::fs::create_dir_all(master.join("ds")).unwrap();
    std::fs::write(master.join("ds/y.bin"), b"the master's first y").unwrap();
    let tracker = start_tracker(&dir.path().join("tracker"), 0);
    let homes: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let home = agent_home(dir.path(), name, &master, &tracker.addr);
            set_bus_key(&home, "sync_interval_seconds", Json::from(1));
            home
        })
        .collect();
    let agents: Vec<Daemon> = homes.iter().map(|home| Daemon::start(home)).collect();
    const ROUNDS: usize = 15;
    // Each write is distinct and 1 MiB + a little, so a torn mix would be seen.
    let content = |writer: usize, round: usize| {
        random_bytes((writer * 1000 + round) as u64, (1 << 20) + round)
    };
    let written: std::collections::HashSet<Vec<u8>> = (0..2)
        .flat_map(|writer| (0..ROUNDS).map(move |round| (writer, round)))
        .map(|(writer, round)| content(writer, round))
        .collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (versions, reads) = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..2)
            .map(|writer| {
                let addr = agents[writer].addr.clone();
                scope.spawn(move || {
                    (0..ROUNDS)
                        .map(|round| {
                            let (status, put) =
                                put_object(&addr, "ds/y.bin", &content(writer, round));
                            assert_eq!(status, 201, "{put}");
                            put["coherence"]["version"].as_u64().unwrap()
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let reader_addr = agents[2].addr.clone();
        let (written, done) = (&written, &done);
        let reader = scope.spawn(move || {
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, got) = get_object(&reader_addr, "ds/y.bin");
                if status == 200 {
                    assert!(
                        written.contains(&got) || got == b"the master's first y",
                        "c read {} bytes that no writer wrote whole",
                        got.len()
                    );
                    reads += 1;
                }
            }
            reads
        });
        let versions: Vec<u64> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (versions, reader.join().unwrap())
    });
    // One order: every acknowledged write has its own version, 1 to 2 x ROUNDS.
    let mut sorted = versions.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=2 * ROUNDS as u64).collect::<Vec<_>>());
    let line = directory_line(&tracker.addr, "ds", "y.bin");
    assert_eq!(line["version"], 2 * ROUNDS as u64, "{line}");
    let last = line["blake3"].as_str().unwrap().to_owned();
    eprintln!("c read y.bin {reads} times during the writes");
    // Every agent reads the last version, whole.
    for agent in &agents {
        let (status, got) = get_object(&agent.addr, "ds/y.bin");
        assert_eq!(status, 200);
        assert_eq!(blake3::hash(&got).to_hex().as_str(), last);
    }
    // The master gets the last version (the write-back timer is 1 s), never an older one after.
    wait_until(
        Duration::from_secs(6),
        "y.bin's last version at the master",
        || {
            std::fs::read(master.join("ds/y.bin"))
                .is_ok_and(|held| blake3::hash(&held).to_hex().as_str() == last)
        },
    );
    std::thread::sleep(Duration::from_millis(1500));
    let held = std::fs::read(master.join("ds/y.bin")).unwrap();
    assert_eq!(blake3::hash(&held).to_hex().as_str(), last);
    // No temporary file of a write-back is left in the master.
    let leftovers: Vec<_> = std::fs::read_dir(master.join("ds"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .filter(|name| name != "y.bin")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The bytes done of the pull in progress on `addr`, if one is.
fn pull_progress(addr: &str) -> Option<u64> {
    let (status, body) = http_raw(addr, "GET", "/v1/sync/status", &[], &[]);
    assert_eq!(status, 200, "{body}");
    let status: Json = serde_json::from_str(&body).unwrap();
    status["pulls_in_progress"]
        .as_array()
        .and_then(|pulls| pulls.first())
        .map(|pull| as_u64(pull, "bytes_done"))
}

/// A pull staged in `BUS/INTERCONNECT` serves its verified pieces to peers while in flight,
/// and, killed and restarted, resumes from them: the second pull fetches only the rest.
#[test]
fn a_pull_serves_pieces_in_flight_and_resumes_after_a_kill() {
    const PIECE: usize = 4 << 20;
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("master");
    let files = write_dataset(&master, "ds", 1, 8 * PIECE);
    let bytes = &files["shard-00.bin"];
    let home = agent_home(dir.path(), "a", &master, "");
    set_bus_key(&home, "tracker", Json::String(String::new()));
    set_bus_key(&home, "pull_workers", Json::from(1));
    set_bus_key(&home, "download_bytes_per_second", Json::from(4_000_000));
    let mut agent = Daemon::start(&home);
    push(&agent, "ds");
    let addr = agent.addr.clone();
    // The pull's request ends with the daemon, unanswered.
    let pulling = std::thread::spawn(move || {
        let _ = ureq::post(format!("http://{addr}/v1/sync/pull"))
            .header("Content-Type", "application/json")
            .send(r#"{"dataset": "ds"}"#);
    });
    wait_until(Duration::from_secs(20), "two pieces pulled", || {
        pull_progress(&agent.addr).is_some_and(|done| done >= 2 * PIECE as u64)
    });

    // A peer gets a verified piece of the file in flight, and 425 for one not there yet.
    let blake3 = blake3::hash(bytes).to_hex().to_string();
    let range = |index: usize| {
        get_bytes(
            &agent.addr,
            &format!(
                "/v1/bus/files/ds/shard-00.bin?blake3={blake3}&offset={}&len={PIECE}",
                index * PIECE
            ),
            Some(TOKEN),
        )
    };
    let (status, first) = range(0);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&first));
    assert!(first == bytes[..PIECE], "piece 0 in flight differs");
    let (status, last) = range(7);
    assert_eq!(status, 425, "{}", String::from_utf8_lossy(&last));

    // Killed mid-pull; the stage stays.
    agent.signal(Signal::KILL);
    let _ = agent.wait();
    let _ = pulling.join();
    let stages = staged(&home, "ds");
    assert_eq!(stages.len(), 1, "{stages:?}");

    // Restarted without the limit: the pull resumes and fetches only what was missing.
    set_bus_key(&home, "download_bytes_per_second", Json::from(0));
    let agent = Daemon::start(&home);
    let report = pull(&agent, "ds");
    let fetched = as_u64(&report, "bytes_from_origin") + as_u64(&report, "bytes_from_peers");
    assert!(
        fetched <= (8 - 2) * PIECE as u64,
        "the resumed pull fetched {fetched} bytes of {}: {report}",
        8 * PIECE
    );
    assert_eq!(as_u64(&report, "files_fetched"), 1, "{report}");
    assert_holds(&home, "ds", &files);
    let left = staged(&home, "ds");
    assert!(
        left.is_empty(),
        "the stage is gone once published: {left:?}"
    );
}

/// `repositories` as local directories on one machine: the daemon mirrors the master
/// into them, a file changed in one reaches the master and the other within a round, and two
/// repositories changing one file in the same round end with the same version everywhere.
#[test]
fn local_repositories_are_kept_coherent_with_the_master() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("master");
    std::fs::create_dir_all(master.join("ds/sub")).unwrap();
    std::fs::write(master.join("ds/a.txt"), b"a from the master").unwrap();
    std::fs::write(master.join("ds/sub/b.bin"), random_bytes(7, 3 << 20)).unwrap();
    let home = agent_home(dir.path(), "solo", &master, "");
    set_bus_key(&home, "tracker", Json::String(String::new()));
    set_bus_key(&home, "sync_interval_seconds", Json::from(1));
    let repos = [dir.path().join("repo1"), dir.path().join("repo2")];
    set_repositories(&home, &repos);
    let agent = Daemon::start(&home);
    let limit = Duration::from_secs(10);

    // The master is mirrored into both.
    let b = std::fs::read(master.join("ds/sub/b.bin")).unwrap();
    for repo in &repos {
        wait_until(limit, "the master mirrored", || {
            holds(&repo.join("ds/a.txt"), b"a from the master")
                && holds(&repo.join("ds/sub/b.bin"), &b)
        });
    }

    // A change in repo1 reaches the master and repo2.
    std::fs::write(repos[0].join("ds/a.txt"), b"a as repo1 wrote it").unwrap();
    wait_until(limit, "repo1's change everywhere", || {
        holds(&master.join("ds/a.txt"), b"a as repo1 wrote it")
            && holds(&repos[1].join("ds/a.txt"), b"a as repo1 wrote it")
    });
    // A new file in repo2 too.
    std::fs::create_dir_all(repos[1].join("other")).unwrap();
    std::fs::write(repos[1].join("other/new.txt"), b"new in repo2").unwrap();
    wait_until(limit, "repo2's new file everywhere", || {
        holds(&master.join("other/new.txt"), b"new in repo2")
            && holds(&repos[0].join("other/new.txt"), b"new in repo2")
    });
    // A change at the master reaches both.
    std::fs::write(master.join("ds/sub/b.bin"), b"b rewritten at the master").unwrap();
    for repo in &repos {
        wait_until(limit, "the master's change in the repositories", || {
            holds(&repo.join("ds/sub/b.bin"), b"b rewritten at the master")
        });
    }

    // Both change one file at once: every copy ends with the same one of the two, whole.
    std::fs::write(repos[0].join("ds/a.txt"), vec![1u8; 1 << 20]).unwrap();
    std::fs::write(repos[1].join("ds/a.txt"), vec![2u8; 1 << 20]).unwrap();
    let copies = [
        master.join("ds/a.txt"),
        repos[0].join("ds/a.txt"),
        repos[1].join("ds/a.txt"),
    ];
    wait_until(limit, "one agreed version", || {
        let held: Vec<Vec<u8>> = copies
            .iter()
            .map(|p| std::fs::read(p).unwrap_or_default())
            .collect();
        held.iter().all(|h| *h == held[0])
    });
    let agreed = std::fs::read(&copies[0]).unwrap();
    assert!(
        agreed == vec![1u8; 1 << 20] || agreed == vec![2u8; 1 << 20],
        "a torn or foreign a.txt ({} bytes)",
        agreed.len()
    );
    // Stable: another round changes nothing.
    std::thread::sleep(Duration::from_millis(2500));
    for copy in &copies {
        assert!(holds(copy, &agreed), "{} moved", copy.display());
    }
    let (status, body) = http_raw(&agent.addr, "GET", "/v1/sync/status", &[], &[]);
    assert_eq!(status, 200);
    let status: Json = serde_json::from_str(&body).unwrap();
    assert!(
        status["repositories"]["last_round"]["writes"].is_u64(),
        "{status}"
    );
}

/// A local repository of a clustered agent: a change there is a coherent write (another agent
/// reads it), and another agent's write reaches the repository within a round.
#[test]
fn a_clustered_agents_repository_takes_part_in_coherence() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("master");
    std::fs::create_dir_all(master.join("ds")).unwrap();
    std::fs::write(master.join("ds/f.txt"), b"f from the master").unwrap();
    let tracker = start_tracker(&dir.path().join("tracker"), 0);
    let repo = dir.path().join("repo");
    let homes: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|name| {
            let home = agent_home(dir.path(), name, &master, &tracker.addr);
            set_bus_key(&home, "sync_interval_seconds", Json::from(1));
            home
        })
        .collect();
    set_repositories(&homes[0], std::slice::from_ref(&repo));
    let agents: Vec<Daemon> = homes.iter().map(|home| Daemon::start(home)).collect();
    let limit = Duration::from_secs(10);
    wait_until(limit, "the master mirrored", || {
        holds(&repo.join("ds/f.txt"), b"f from the master")
    });

    // Written in a's repository: ordered at the directory, read on b.
    std::fs::write(repo.join("ds/f.txt"), b"f as the repository wrote it").unwrap();
    wait_until(limit, "the repository's write ordered", || {
        directory_line(&tracker.addr, "ds", "f.txt")["owner"] == "a"
    });
    let (status, got) = get_object(&agents[1].addr, "ds/f.txt");
    assert_eq!(status, 200);
    assert_eq!(got, b"f as the repository wrote it");

    // Written on b: a's repository gets it, and so does the master.
    let (status, put) = put_object(&agents[1].addr, "ds/f.txt", b"f as b wrote it");
    assert_eq!(status, 201, "{put}");
    wait_until(limit, "b's write in a's repository and the master", || {
        holds(&repo.join("ds/f.txt"), b"f as b wrote it")
            && holds(&master.join("ds/f.txt"), b"f as b wrote it")
    });
}
