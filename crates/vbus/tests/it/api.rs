//! The HTTP API and the CLI verbs against a real daemon on a loopback port.

use std::io::Write as _;

use crate::support::{Daemon, http_get, http_raw, run, vbus};

/// Runs a client verb against `daemon`; asserts success; returns stdout.
fn cli(home: &std::path::Path, daemon: &Daemon, args: &[&str]) -> String {
    let result = run(vbus(home).args(["--addr", &daemon.addr]).args(args));
    assert!(result.success, "vbus {args:?} failed: {result:#?}");
    result.stdout
}

/// Method, path, headers, body, the status expected, and a fragment of the error expected.
type BadCase<'a> = (
    &'a str,
    String,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    u16,
    &'a str,
);

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|at| (at as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn objects_go_in_and_out_through_the_cli_and_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("VBUS");
    let daemon = Daemon::start(&home);

    // Small (taken whole) and large (streamed) values, from files.
    let small = dir.path().join("small.bin");
    std::fs::write(&small, pattern(1000, 1)).unwrap();
    let large = dir.path().join("large.bin");
    std::fs::write(&large, pattern(20 << 20, 2)).unwrap();
    let out = cli(
        &home,
        &daemon,
        &["put", "models/small.bin", small.to_str().unwrap()],
    );
    assert!(out.starts_with("stored models/small.bin version"), "{out}");
    cli(
        &home,
        &daemon,
        &["put", "models/deep/large.bin", large.to_str().unwrap()],
    );
    cli(
        &home,
        &daemon,
        &["put", "flat_name", small.to_str().unwrap()],
    );

    let back = dir.path().join("back.bin");
    cli(
        &home,
        &daemon,
        &["get", "models/deep/large.bin", back.to_str().unwrap()],
    );
    assert!(
        std::fs::read(&back).unwrap() == pattern(20 << 20, 2),
        "the large value differs"
    );
    cli(
        &home,
        &daemon,
        &["get", "models/small.bin", back.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(&back).unwrap(), pattern(1000, 1));
    // Both are complete files at their final paths in L3.
    assert_eq!(
        std::fs::read(home.join("CACHE/L3_DISK/models/deep/large.bin"))
            .unwrap()
            .len(),
        20 << 20
    );

    let listing = cli(&home, &daemon, &["ls", "models"]);
    assert!(
        listing.contains("deep/large.bin") && listing.contains("small.bin"),
        "{listing}"
    );
    let datasets = cli(&home, &daemon, &["ls"]);
    assert_eq!(datasets.lines().collect::<Vec<_>>(), ["default", "models"]);

    // Range and HEAD through the API, from memory and from the file.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = |path: &str| format!("http://{}{path}", daemon.addr);
    for (path, expected) in [
        ("/v1/objects/models/small.bin", pattern(1000, 1)),
        ("/v1/objects/models/deep/large.bin", pattern(20 << 20, 2)),
    ] {
        let mut response = agent
            .get(&url(path))
            .header("Range", "bytes=100-199")
            .call()
            .unwrap();
        assert_eq!(response.status(), 206, "{path}");
        let total = expected.len();
        assert_eq!(
            response.headers()["content-range"].to_str().unwrap(),
            format!("bytes 100-199/{total}")
        );
        let body = response.body_mut().read_to_vec().unwrap();
        assert_eq!(body, expected[100..200]);
        let response = agent.head(&url(path)).call().unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-length"].to_str().unwrap(),
            total.to_string()
        );
        let response = agent
            .get(&url(path))
            .header("Range", format!("bytes={total}-"))
            .call()
            .unwrap();
        assert_eq!(response.status(), 416, "{path}");
    }

    let stats = cli(&home, &daemon, &["stats"]);
    assert!(
        stats.contains("L2_RAM") && stats.contains("l1_hit_rate"),
        "{stats}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&cli(&home, &daemon, &["stats", "--json"])).unwrap();
    assert!(
        json["tiers"]["L3_DISK"]["n_entries"].as_u64().unwrap() >= 3,
        "{json}"
    );
    let (status, metrics) = http_get(&daemon.addr, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("vbus_cache_hits_total{tier=\"l2\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE vbus_l1_hit_rate gauge"),
        "{metrics}"
    );

    cli(&home, &daemon, &["rm", "models/small.bin"]);
    let result = run(vbus(&home).args(["--addr", &daemon.addr, "get", "models/small.bin", "-"]));
    assert!(!result.success);
    assert!(
        result.stderr.contains("404") && result.stderr.contains("no object models/small.bin"),
        "{}",
        result.stderr
    );
    // stdin in, stdout out.
    let mut child = vbus(&home)
        .args(["--addr", &daemon.addr, "put", "piped/value", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin")
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(cli(&home, &daemon, &["get", "piped/value"]), "from stdin");
}

#[test]
fn pages_edges_checkpoint_and_replay_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("VBUS");
    let daemon = Daemon::start(&home);
    let a: u64 = cli(&home, &daemon, &["page", "create", "16"])
        .trim()
        .parse()
        .unwrap();
    let b: u64 = cli(&home, &daemon, &["page", "create", "16"])
        .trim()
        .parse()
        .unwrap();
    let sum: u64 = cli(&home, &daemon, &["page", "create", "16", "--gpu"])
        .trim()
        .parse()
        .unwrap();
    for (source, target) in [(a, sum), (b, sum)] {
        cli(
            &home,
            &daemon,
            &[
                "page",
                "edge",
                &source.to_string(),
                &target.to_string(),
                "--rule",
                "add:i64",
            ],
        );
    }
    let run_bytes = dir.path().join("run.bin");
    let values: Vec<u8> = [5i64, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&run_bytes, &values).unwrap();
    let out = cli(
        &home,
        &daemon,
        &[
            "page",
            "update",
            &a.to_string(),
            run_bytes.to_str().unwrap(),
        ],
    );
    assert!(out.starts_with("seq "), "{out}");
    let seq_after_first: u64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    cli(
        &home,
        &daemon,
        &[
            "page",
            "update",
            &b.to_string(),
            run_bytes.to_str().unwrap(),
            "--op",
            "add",
            "--elem",
            "i64",
        ],
    );
    let page = dir.path().join("page.bin");
    cli(
        &home,
        &daemon,
        &["page", "get", &sum.to_string(), page.to_str().unwrap()],
    );
    let values: Vec<i64> = std::fs::read(&page)
        .unwrap()
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(values, [10, 14]);
    let listing = cli(&home, &daemon, &["page", "ls"]);
    assert!(
        listing.contains("gpu") && listing.lines().count() == 3,
        "{listing}"
    );

    let checkpoint = cli(&home, &daemon, &["checkpoint"]);
    assert!(checkpoint.starts_with("checkpoint at"), "{checkpoint}");
    // The sum right after the first update: only a's values.
    cli(
        &home,
        &daemon,
        &[
            "page",
            "get",
            &sum.to_string(),
            page.to_str().unwrap(),
            "--at",
            &seq_after_first.to_string(),
        ],
    );
    let values: Vec<i64> = std::fs::read(&page)
        .unwrap()
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(values, [5, 7]);
    let replay = cli(
        &home,
        &daemon,
        &["replay", "--to", &seq_after_first.to_string()],
    );
    assert!(
        replay.starts_with(&format!("state at {seq_after_first}: hash ")),
        "{replay}"
    );
    cli(
        &home,
        &daemon,
        &["page", "edge", &b.to_string(), &sum.to_string(), "--remove"],
    );
    cli(&home, &daemon, &["page", "rm", &b.to_string()]);
    let listing = cli(&home, &daemon, &["page", "ls"]);
    assert_eq!(listing.lines().count(), 2, "{listing}");
}

#[test]
fn bad_requests_get_a_4xx_that_says_why_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("VBUS");
    let daemon = Daemon::start(&home);
    let value = dir.path().join("v.bin");
    std::fs::write(&value, b"keep me").unwrap();
    cli(&home, &daemon, &["put", "ds/keep", value.to_str().unwrap()]);
    let page: u64 = cli(&home, &daemon, &["page", "create", "8"])
        .trim()
        .parse()
        .unwrap();
    let before_objects = cli(&home, &daemon, &["ls", "ds"]);
    let before_state = http_get(&daemon.addr, "/v1/stats").1;
    let before_seq =
        serde_json::from_str::<serde_json::Value>(&before_state).unwrap()["state"]["last_seq"]
            .clone();

    let addr = &daemon.addr;
    let big_json = format!("{{\"size\": 8, \"pad\": \"{}\"}}", "x".repeat(2 << 20));
    let cases: Vec<BadCase<'_>> = vec![
        (
            "PUT",
            "/v1/objects/ds/../escape".into(),
            vec![],
            b"x".to_vec(),
            400,
            "invalid path",
        ),
        (
            "PUT",
            "/v1/objects/ds/a/%2e%2e/b".into(),
            vec![],
            b"x".to_vec(),
            400,
            "invalid path",
        ),
        (
            "PUT",
            "/v1/objects/ds//etc/passwd".into(),
            vec![],
            b"x".to_vec(),
            400,
            "invalid path",
        ),
        (
            "PUT",
            "/v1/objects/ds/nul%00byte".into(),
            vec![],
            b"x".to_vec(),
            400,
            "invalid path",
        ),
        (
            "PUT",
            "/v1/objects/..%2F/x".into(),
            vec![],
            b"x".to_vec(),
            400,
            "invalid dataset",
        ),
        (
            "GET",
            "/v1/objects/ds/missing".into(),
            vec![],
            vec![],
            404,
            "no object ds/missing",
        ),
        (
            "PUT",
            "/v1/objects/ds/huge".into(),
            vec![("Content-Length", "1000000000000000")],
            vec![],
            413,
            "more than L3's capacity",
        ),
        (
            "DELETE",
            "/v1/objects/ds/missing".into(),
            vec![],
            vec![],
            404,
            "no object",
        ),
        (
            "GET",
            "/v1/objects/ds/keep".into(),
            vec![("Range", "bytes=5-2")],
            vec![],
            416,
            "not a single satisfiable",
        ),
        (
            "POST",
            "/v1/pages".into(),
            vec![("Content-Type", "application/json")],
            b"{not json".to_vec(),
            400,
            "bad JSON",
        ),
        (
            "POST",
            "/v1/pages".into(),
            vec![("Content-Type", "application/json")],
            big_json.into_bytes(),
            413,
            "at most",
        ),
        (
            "POST",
            "/v1/pages".into(),
            vec![],
            br#"{"size": 8, "location": "tpu"}"#.to_vec(),
            400,
            "location \"tpu\"",
        ),
        (
            "POST",
            "/v1/pages".into(),
            vec![],
            br#"{"size": 8, "colour": 1}"#.to_vec(),
            400,
            "unknown field",
        ),
        (
            "PATCH",
            format!("/v1/pages/{page}"),
            vec![("Content-Type", "application/octet-stream")],
            vec![9, 9, 9],
            400,
            "cannot decode a delta",
        ),
        (
            "PATCH",
            format!("/v1/pages/{page}"),
            vec![("Content-Type", "application/json")],
            br#"{"runs": [{"offset": 4, "data": "AAAAAAAA"}]}"#.to_vec(),
            400,
            "ends past the page",
        ),
        (
            "PATCH",
            format!("/v1/pages/{page}"),
            vec![("Content-Type", "application/json")],
            br#"{"runs": [{"offset": 0, "data": "!!"}]}"#.to_vec(),
            400,
            "not base64",
        ),
        (
            "PATCH",
            "/v1/pages/77".into(),
            vec![("Content-Type", "application/json")],
            br#"{"runs": []}"#.to_vec(),
            404,
            "no page 77",
        ),
        (
            "PATCH",
            "/v1/pages/abc".into(),
            vec![("Content-Type", "application/json")],
            br#"{"runs": []}"#.to_vec(),
            400,
            "not a number",
        ),
        (
            "POST",
            "/v1/edges".into(),
            vec![],
            format!(r#"{{"source": {page}, "target": {page}, "rule": "add:i64"}}"#).into_bytes(),
            400,
            "cycle",
        ),
        (
            "POST",
            "/v1/edges".into(),
            vec![],
            format!(r#"{{"source": {page}, "target": 1, "rule": "sum:i64"}}"#).into_bytes(),
            400,
            "rule \"sum:i64\"",
        ),
        ("GET", "/v1/replay".into(), vec![], vec![], 400, "?to=SEQ"),
        (
            "GET",
            "/v1/replay?to=999999".into(),
            vec![],
            vec![],
            410,
            "cannot be rebuilt",
        ),
        (
            "GET",
            "/v2/anything".into(),
            vec![],
            vec![],
            404,
            "no route for GET /v2/anything",
        ),
    ];
    for (method, path, headers, body, status, fragment) in cases {
        let (got, answer) = http_raw(addr, method, &path, &headers, &body);
        assert_eq!(got, status, "{method} {path}: {answer}");
        let error = serde_json::from_str::<serde_json::Value>(&answer)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {answer}"))["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            error.contains(fragment),
            "{method} {path}: {error:?} lacks {fragment:?}"
        );
    }
    // Nothing changed.
    assert_eq!(cli(&home, &daemon, &["ls", "ds"]), before_objects);
    let after = http_get(&daemon.addr, "/v1/stats").1;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&after).unwrap()["state"]["last_seq"],
        before_seq
    );
    assert_eq!(cli(&home, &daemon, &["get", "ds/keep"]), "keep me");
}

#[test]
fn a_token_is_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("VBUS");
    run(vbus(&home).arg("init"));
    let config_path = home.join("CONFIG/vbus_config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let token = "s3cret-token-0123456789";
    config["api"]["token"] = serde_json::Value::String(token.to_owned());
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let daemon = Daemon::start(&home);
    let addr = &daemon.addr;
    let (status, body) = http_raw(addr, "GET", "/v1/stats", &[], &[]);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Authorization: Bearer"), "{body}");
    let (status, _) = http_raw(
        addr,
        "GET",
        "/v1/stats",
        &[("Authorization", "Bearer wrong-token-000000000")],
        &[],
    );
    assert_eq!(status, 401);
    let (status, _) = http_raw(
        addr,
        "PUT",
        "/v1/objects/ds/x",
        &[("Authorization", "Bearer nope")],
        b"x",
    );
    assert_eq!(status, 401);
    let bearer = format!("Bearer {token}");
    let (status, _) = http_raw(addr, "GET", "/v1/stats", &[("Authorization", &bearer)], &[]);
    assert_eq!(status, 200);
    // Issue 20, finding 7: the scheme's name is case-insensitive.
    let lower = format!("bearer {token}");
    let (status, _) = http_raw(addr, "GET", "/v1/stats", &[("Authorization", &lower)], &[]);
    assert_eq!(status, 200);
    // And a path that is not UTF-8 is refused in JSON, as every other refusal is.
    let (status, body) = http_raw(
        addr,
        "GET",
        "/v1/objects/ds/%FF%FE",
        &[("Authorization", &bearer)],
        &[],
    );
    assert_eq!(status, 400, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
    assert!(error["error"].is_string(), "{body}");
    // Health stays open; the CLI takes the token from the home's config.
    assert_eq!(http_get(addr, "/health").0, 200);
    let value = dir.path().join("v.bin");
    std::fs::write(&value, b"authorised").unwrap();
    cli(&home, &daemon, &["put", "ds/x", value.to_str().unwrap()]);
    assert_eq!(cli(&home, &daemon, &["get", "ds/x"]), "authorised");
    // The refused PUT stored nothing before the authorised one.
    assert_eq!(cli(&home, &daemon, &["ls", "ds"]).lines().count(), 1);
}

#[test]
fn the_audit_log_rotates_and_metrics_are_snapshotted() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("VBUS");
    run(vbus(&home).arg("init"));
    let config_path = home.join("CONFIG/vbus_config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["audit"] = serde_json::json!({
        "file_max_bytes": 4096,
        "files_kept": 2,
        "metrics_interval_seconds": 1
    });
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let daemon = Daemon::start(&home);
    for idx in 0..80 {
        let (status, _) = http_raw(
            &daemon.addr,
            "PUT",
            &format!("/v1/objects/audit/v{idx}"),
            &[],
            b"x",
        );
        assert_eq!(status, 201);
    }
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let logs = home.join("AUDIT/LOGS");
    let mut names: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["vbus_daemon.log", "vbus_daemon.log.1", "vbus_daemon.log.2"]
    );
    for name in &names {
        let text = std::fs::read_to_string(logs.join(name)).unwrap();
        assert!(text.len() <= 4096, "{name}: {} bytes", text.len());
    }
    // The changes are in the audit trail: method, path, status.
    let newest = std::fs::read_to_string(logs.join("vbus_daemon.log")).unwrap()
        + &std::fs::read_to_string(logs.join("vbus_daemon.log.1")).unwrap();
    assert!(
        newest.contains("method=PUT path=\"/v1/objects/audit/v79\" status=201"),
        "{newest}"
    );
    // Snapshots of 2-3 KiB each: one a file at this rotation size; the newest is the current.
    let metrics = home.join("AUDIT/METRICS");
    let snapshots = ["vbus_metrics.jsonl.1", "vbus_metrics.jsonl"]
        .iter()
        .map(|name| std::fs::read_to_string(metrics.join(name)).unwrap_or_default())
        .collect::<String>();
    let lines: Vec<serde_json::Value> = snapshots
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(lines.len() >= 2, "{snapshots}");
    let last = lines.last().unwrap();
    assert!(
        last["l1_hit_rate"].is_number() && last["unix_time"].as_f64().unwrap() > 1.6e9,
        "{last}"
    );
    assert_eq!(last["tiers"]["L3_DISK"]["n_entries"].as_u64(), Some(80));
}
