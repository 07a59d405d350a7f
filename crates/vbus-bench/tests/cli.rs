//! `vbus-bench` run the way a user runs it: each suite's quick mode prints every figure beside
//! its same-run reference.

use std::path::Path;
use std::process::Command;

/// A `vbus-bench` command whose scratch files go under `home`.
fn vbus(home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vbus-bench"));
    command
        .env_remove("VBUS_HOME")
        .env_remove("VBUS_LOG")
        .arg("--home")
        .arg(home);
    command
}

/// A finished run, with its output as text.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(command: &mut Command) -> Run {
    let output = command.output().expect("vbus-bench runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `vbus-bench --home HOME ARGS..` and insists that it succeeds.
fn run_ok(home: &Path, args: &[&str]) -> Run {
    let result = run(vbus(home).args(args));
    assert_eq!(
        result.code,
        Some(0),
        "vbus-bench {args:?} failed: {result:#?}"
    );
    result
}

/// `--json` output: one JSON object per line.
fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

#[test]
fn bench_scan_quick_prints_each_figure_beside_dd() {
    let dir = tempfile::tempdir().unwrap();
    let result = run_ok(dir.path(), &["scan", "--quick", "--json"]);
    let lines = json_lines(&result.stdout);
    let metrics: Vec<&str> = lines
        .iter()
        .map(|line| line["metric"].as_str().unwrap())
        .collect();
    assert_eq!(
        metrics,
        ["disk_write_fsync", "disk_read_cold", "disk_read_warm"]
    );
    for line in &lines {
        assert_eq!(line["suite"], "scan");
        assert_eq!(line["unit"], "GB/s");
        assert_eq!(line["device"], "cpu");
        assert!(line["reference"].as_str().unwrap().starts_with("dd "));
        let ours = line["ours"].as_f64().unwrap();
        let reference = line["reference_value"].as_f64().unwrap();
        assert!(ours > 0.0 && reference > 0.0, "{line}");
        let ratio = line["ratio"].as_f64().unwrap();
        assert!((ratio - ours / reference).abs() < 1e-9, "{line}");
        assert!(line.get("target").is_some());
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "bench left scratch files"
    );
}

#[test]
fn bench_table_and_unknown_suite() {
    let dir = tempfile::tempdir().unwrap();
    let listed = run_ok(dir.path(), &["list"]);
    for suite in ["gpu ", "scan ", "store "] {
        assert!(
            listed.stdout.lines().any(|line| line.starts_with(suite)),
            "{}",
            listed.stdout
        );
    }
    let unknown = run(vbus(dir.path()).args(["warp-drive", "--quick"]));
    assert_eq!(unknown.code, Some(1));
    assert!(
        unknown
            .stderr
            .contains("unknown bench suite \"warp-drive\""),
        "{}",
        unknown.stderr
    );
}

#[test]
fn bench_store_quick_prints_each_figure_beside_std_fs() {
    let dir = tempfile::tempdir().unwrap();
    let result = run_ok(dir.path(), &["store", "--quick", "--json"]);
    let lines = json_lines(&result.stdout);
    let metrics: Vec<&str> = lines
        .iter()
        .map(|line| line["metric"].as_str().unwrap())
        .collect();
    for size in ["64KiB", "4MiB", "16MiB"] {
        for kind in [
            "write_{}_files",
            "read_{}_files_verified",
            "read_{}_files_blake3",
            "read_{}_files_unchecked",
        ] {
            let metric = kind.replace("{}", size);
            assert!(
                metrics.contains(&metric.as_str()),
                "{metric} missing from {metrics:?}"
            );
        }
    }
    assert!(
        metrics.contains(&"reopen_10k_files") && metrics.contains(&"reopen_files_per_s"),
        "{metrics:?}"
    );
    for line in &lines {
        assert_eq!(line["suite"], "store");
        let (ours, reference) = (
            line["ours"].as_f64().unwrap(),
            line["reference_value"].as_f64().unwrap(),
        );
        assert!(ours > 0.0 && reference > 0.0, "{line}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "bench left its scratch directory"
    );
}

#[test]
fn bench_gpu_quick_runs_on_the_simulated_device_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let result = run_ok(dir.path(), &["gpu", "--quick", "--json"]);
    let lines = json_lines(&result.stdout);
    let has_gpu = std::path::Path::new("/proc/driver/nvidia").exists();
    let metrics: Vec<String> = lines
        .iter()
        .map(|line| line["metric"].as_str().unwrap().to_owned())
        .collect();
    for metric in [
        "host_to_device_pinned",
        "device_to_host_pinned",
        "host_to_device_pageable_staged",
        "device_to_host_pageable_staged",
        "file_to_vram_cold",
        "file_to_vram_warm",
        "alloc_free_1MiB",
    ] {
        let expected = if has_gpu {
            metric.to_owned()
        } else {
            format!("{metric} (simulated)")
        };
        assert!(
            metrics.contains(&expected),
            "{expected} missing from {metrics:?}"
        );
    }
    for line in &lines {
        assert_eq!(line["suite"], "gpu");
        if !has_gpu {
            assert_eq!(line["device"], "simulated", "{line}");
        }
        let (ours, reference) = (
            line["ours"].as_f64().unwrap(),
            line["reference_value"].as_f64().unwrap(),
        );
        assert!(ours > 0.0 && reference > 0.0, "{line}");
    }
    let pinned = lines
        .iter()
        .find(|line| {
            line["metric"]
                .as_str()
                .unwrap()
                .starts_with("host_to_device_pinned")
        })
        .unwrap();
    assert_eq!(pinned["target"], 0.9);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "bench left its file"
    );
}

#[test]
fn bench_cache_quick_compares_with_quick_cache_and_moka() {
    let dir = tempfile::tempdir().unwrap();
    let result = run_ok(dir.path(), &["cache", "--quick", "--json"]);
    let lines = json_lines(&result.stdout);
    let references: std::collections::BTreeSet<&str> = lines
        .iter()
        .map(|line| line["reference"].as_str().unwrap())
        .collect();
    assert!(
        references.contains("quick_cache 0.7") && references.contains("moka 0.12 (sync)"),
        "{references:?}"
    );
    for policy in ["lru", "s3fifo", "sieve"] {
        for exponent in ["0.9", "1.0"] {
            let metric = format!("hit_ratio_zipf{exponent}_{policy}");
            let line = lines
                .iter()
                .find(|line| line["metric"] == metric.as_str())
                .expect(&metric);
            let ours = line["ours"].as_f64().unwrap();
            assert!(ours > 0.3 && ours < 1.0, "{line}");
            // Beside foyer's in-memory cache running the same policy.
            let foyer = format!("foyer-memory 0.22 {policy}");
            assert!(
                lines
                    .iter()
                    .any(|line| line["metric"] == metric.as_str()
                        && line["reference"] == foyer.as_str()),
                "{metric} has no {foyer} reference"
            );
        }
    }
    for movement in [
        "move_l3_to_l2",
        "move_l2_to_l3",
        "move_l2_to_l1",
        "move_l1_to_host",
    ] {
        let line = lines
            .iter()
            .find(|line| line["metric"].as_str().unwrap().starts_with(movement))
            .unwrap_or_else(|| panic!("{movement} is not measured"));
        assert!(
            line["ours"].as_f64().unwrap() > 0.0 && line["reference_value"].as_f64().unwrap() > 0.0,
            "{line}"
        );
    }
    let index = lines
        .iter()
        .find(|line| line["metric"] == "index_bytes_per_entry_s3fifo_u64_keys")
        .expect("index bytes are measured");
    assert!(index["ours"].as_f64().unwrap() > 8.0, "{index}");
}

#[test]
fn bench_cache_replays_a_trace() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.txt");
    let mut text = String::new();
    for round in 0..50 {
        for key in 0..20 {
            text.push_str(&format!("hot-{key} 100\n"));
        }
        text.push_str(&format!("cold-{round}\n"));
    }
    std::fs::write(&trace, text).unwrap();
    let result = run_ok(
        dir.path(),
        &[
            "cache",
            "--json",
            "--trace",
            trace.to_str().unwrap(),
            "--capacity",
            "3000",
        ],
    );
    let lines = json_lines(&result.stdout);
    assert_eq!(lines.len(), 3);
    for line in &lines {
        // 20 hot keys of 100 bytes fit in 3000 bytes: all but their first access hit.
        let ours = line["ours"].as_f64().unwrap();
        assert!(ours > 0.9, "{line}");
    }
    std::fs::write(&trace, "key not-a-size\n").unwrap();
    let bad = run(vbus(dir.path()).args(["cache", "--trace", trace.to_str().unwrap()]));
    assert_eq!(bad.code, Some(1));
    assert!(
        bad.stderr
            .contains("trace.txt:1: size \"not-a-size\" is not a byte count"),
        "{}",
        bad.stderr
    );
    let misplaced = run(vbus(dir.path()).args(["scan", "--capacity", "5"]));
    assert!(
        misplaced.stderr.contains("belong to `vbus-bench cache`"),
        "{}",
        misplaced.stderr
    );
}

#[test]
fn bench_state_quick_compares_with_mmsb_okaywal_and_fdatasync() {
    let dir = tempfile::tempdir().unwrap();
    let result = run_ok(dir.path(), &["state", "--quick", "--json"]);
    let lines = json_lines(&result.stdout);
    let pairs: Vec<(&str, &str)> = lines
        .iter()
        .map(|line| {
            (
                line["metric"].as_str().unwrap(),
                line["reference"].as_str().unwrap(),
            )
        })
        .collect();
    for expected in [
        ("page_alloc_4KiB", "MMSB's published baseline"),
        ("page_alloc_4KiB_buffered_log", "MMSB's published baseline"),
        (
            "sparse_delta_1pct_of_2MiB_apply_only",
            "MMSB's published baseline",
        ),
        (
            "propagate_1000_page_cone_wave_only",
            "MMSB's published baseline",
        ),
        ("sparse_delta_1pct_of_2MiB", "MMSB's published baseline"),
        ("propagate_1000_page_cone", "MMSB's published baseline"),
        ("durable_appends_1_writers", "okaywal 0.3"),
        ("durable_appends_8_writers", "okaywal 0.3"),
        (
            "durable_appends_8_writers",
            "raw write + fdatasync loop, 1 thread",
        ),
        ("replay_records_per_s", "DESIGN.md target"),
    ] {
        assert!(
            pairs.contains(&expected),
            "{expected:?} missing from {pairs:?}"
        );
    }
    for line in &lines {
        assert_eq!(line["suite"], "state");
        let (ours, reference) = (
            line["ours"].as_f64().unwrap(),
            line["reference_value"].as_f64().unwrap(),
        );
        assert!(ours > 0.0 && reference > 0.0, "{line}");
    }
    // MMSB's baselines are the published figures, not measured here.
    let seed: Vec<f64> = lines
        .iter()
        .filter(|line| line["reference"] == "MMSB's published baseline")
        .map(|line| line["reference_value"].as_f64().unwrap())
        .collect();
    assert!(
        seed.len() >= 6 && seed.iter().all(|v| [5.0, 200.0, 500.0].contains(v)),
        "{seed:?}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "bench left its scratch directory"
    );
}

#[test]
fn bench_api_quick_measures_the_api_beside_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let result = run_ok(dir.path(), &["api", "--quick", "--json"]);
    let lines = json_lines(&result.stdout);
    let metrics: Vec<&str> = lines
        .iter()
        .map(|line| line["metric"].as_str().unwrap())
        .collect();
    for metric in [
        "small_gets_per_s_64_conns",
        "small_get_p50_64_conns",
        "small_get_p99_64_conns",
        "large_put_through_api_64.0MiB",
        "large_get_through_api_64.0MiB",
    ] {
        assert!(
            metrics.contains(&metric),
            "{metric} missing from {metrics:?}"
        );
    }
    for line in &lines {
        assert_eq!(line["suite"], "api");
        assert!(
            line["ours"].as_f64().unwrap() > 0.0 && line["reference_value"].as_f64().unwrap() > 0.0,
            "{line}"
        );
        assert!(
            line["reference"]
                .as_str()
                .unwrap()
                .starts_with("CacheManager::"),
            "{line}"
        );
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "bench left its scratch directory"
    );
}

#[test]
fn bench_sync_quick_compares_peer_to_peer_with_the_master_alone() {
    let dir = tempfile::tempdir().unwrap();
    let result = run_ok(dir.path(), &["sync", "--quick", "--json"]);
    let lines = json_lines(&result.stdout);
    let metric = |name: &str| {
        lines
            .iter()
            .find(|line| line["metric"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {}", result.stdout))
    };
    let distribute = metric("distribute_64.0MiB_to_4_agents");
    assert_eq!(distribute["reference"], "every agent from the master alone");
    assert!(distribute["ours"].as_f64().unwrap() > 0.0);
    // The master alone serves the dataset once per agent; its egress limit (40 MB/s) bounds
    // that run from below.
    let alone = metric("master_egress_origin_only");
    assert_eq!(alone["ours"].as_f64().unwrap(), 4.0 * 64.0 * 1048576.0);
    assert!(distribute["reference_value"].as_f64().unwrap() >= 4.0 * 64.0 * 1048576.0 / 40e6 * 0.9);
    // Peer to peer, the master serves at least the dataset once, and less than the four copies.
    let p2p = metric("master_egress_peer_to_peer")["ours"]
        .as_f64()
        .unwrap();
    assert!(
        (64.0 * 1048576.0..4.0 * 64.0 * 1048576.0).contains(&p2p),
        "{p2p}"
    );
    for line in &lines {
        assert_eq!(line["suite"], "sync");
    }
}
