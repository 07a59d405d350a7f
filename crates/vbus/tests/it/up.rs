use rustix::process::Signal;

use crate::support::{Daemon, http_get, run, vbus};

#[test]
fn up_initialises_the_home_serves_and_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("VBUS");
    // A file copied into L3 by hand before the start is adopted by the store.
    std::fs::create_dir_all(home.join("CACHE/L3_DISK/models")).unwrap();
    std::fs::write(home.join("CACHE/L3_DISK/models/tiny.bin"), b"0123456789").unwrap();
    let mut daemon = Daemon::start(&home);
    assert!(
        home.join("CONFIG/vbus_config.json").is_file(),
        "up did not initialise the home"
    );

    let (status, body) = http_get(&daemon.addr, "/health");
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");

    let (status, body) = http_get(&daemon.addr, "/v1/stats");
    assert_eq!(status, 200, "{body}");
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    let config = vbus_node::Config::load(&home.join("CONFIG/vbus_config.json")).unwrap();
    assert_eq!(
        stats["tiers"]["L2_RAM"]["capacity_bytes"].as_u64(),
        Some(config.cache_hierarchy.l2_ram.capacity_bytes())
    );
    assert_eq!(stats["tiers"]["L1_VRAM"]["device"], "simulated");
    let l3 = &stats["tiers"]["L3_DISK"];
    assert_eq!(
        (l3["n_files"].as_u64(), l3["used_bytes"].as_u64()),
        (Some(1), Some(10)),
        "{l3}"
    );
    assert_eq!(l3["n_adopted_on_open"].as_u64(), Some(1), "{l3}");
    // The hit rates, and live per-tier counters of the cache the daemon runs.
    for rate in ["l1_hit_rate", "l2_hit_rate", "l3_hit_rate"] {
        assert_eq!(stats[rate].as_f64(), Some(0.0), "{rate}: {stats}");
    }
    assert_eq!(
        stats["tiers"]["L2_RAM"]["hits"].as_u64(),
        Some(0),
        "{stats}"
    );
    assert_eq!(
        stats["moves"]["source_fetches"].as_u64(),
        Some(0),
        "{stats}"
    );
    assert_eq!(
        stats["write_mode"].as_str(),
        Some("write_through"),
        "{stats}"
    );
    assert_eq!(stats["dirty"]["entries"].as_u64(), Some(0), "{stats}");
    assert!(stats["process"]["rss_bytes"].as_u64().unwrap() > 0);
    // The state bus runs from DATA/TLOG and DATA/CHECKPOINTS.
    assert_eq!(stats["state"]["enabled"], true, "{stats}");
    assert_eq!(stats["state"]["last_seq"].as_u64(), Some(0), "{stats}");
    assert!(
        std::fs::read_dir(home.join("DATA/TLOG"))
            .unwrap()
            .any(|entry| entry
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".seg")),
        "no log segment in DATA/TLOG"
    );

    let (status, body) = http_get(&daemon.addr, "/v1/no-such-thing");
    assert_eq!(status, 404);
    assert!(
        body.contains("no route for GET /v1/no-such-thing"),
        "{body}"
    );

    daemon.signal(Signal::TERM);
    let (code, stderr) = daemon.wait();
    assert_eq!(code, Some(0), "{stderr}");
    let log = std::fs::read_to_string(home.join("AUDIT/LOGS/vbus_daemon.log")).unwrap();
    assert!(log.contains("listening on http://"), "{log}");
    assert!(log.contains("signal=\"SIGTERM\""), "{log}");
    assert!(log.contains("stopped cleanly"), "{log}");
    // The shutdown checkpointed the state bus.
    assert!(log.contains("state bus checkpointed"), "{log}");
    assert_eq!(
        std::fs::read_dir(home.join("DATA/CHECKPOINTS"))
            .unwrap()
            .count(),
        1,
        "no checkpoint after SIGTERM"
    );
}

#[test]
fn sigint_also_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path());
    daemon.signal(Signal::INT);
    let (code, stderr) = daemon.wait();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn a_second_daemon_on_the_same_home_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = Daemon::start(dir.path());
    let second = run(vbus(dir.path()).args(["up", "--listen", "127.0.0.1:0"]));
    assert_eq!(second.code, Some(1));
    assert!(
        second.stderr.contains("another vbus daemon"),
        "{}",
        second.stderr
    );
    let (status, _) = http_get(&first.addr, "/health");
    assert_eq!(status, 200, "the first daemon was disturbed");
}

#[test]
fn listening_beyond_loopback_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let result = run(vbus(dir.path()).args(["up", "--listen", "0.0.0.0:0"]));
    assert_eq!(result.code, Some(1));
    assert!(
        result.stderr.contains("`api.listen`") && result.stderr.contains("api.token"),
        "{}",
        result.stderr
    );
}

/// Start-up refusals name the config key: CUDA asked for where there is no driver, and L3 turned
/// off (this cache keeps every value in L3).
#[test]
fn tier_configs_it_cannot_honour_are_refused_by_key() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"cache_hierarchy": {"L3_DISK": {"enabled": false}}}"#,
            "cache_hierarchy.L3_DISK.enabled",
        ),
        (r#"{"gpu": {"backend": "cuda"}}"#, "gpu.backend"),
    ];
    for (text, key) in cases {
        if *key == "gpu.backend" && std::path::Path::new("/proc/driver/nvidia").exists() {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        crate::support::run_ok(dir.path(), &["init"]);
        std::fs::write(dir.path().join("CONFIG/vbus_config.json"), text).unwrap();
        let result = run(vbus(dir.path()).args(["up", "--listen", "127.0.0.1:0"]));
        assert_eq!(result.code, Some(1), "{text}: {result:?}");
        assert!(
            result.stderr.contains(&format!("`{key}`")),
            "{text}: {}",
            result.stderr
        );
    }
}
