use crate::support::{run, run_ok, vbus};

/// Each bad config is refused by `vbus config check` with exit code 1 and an error that names
/// the offending key and, where there is one, the value.
#[test]
fn bad_configs_are_refused_naming_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"{"cache_hierarchy": {"L1_VRAM": {"max_size_mb": 64, "eviction_policy": "fifo"}}}"#,
            "cache_hierarchy.L1_VRAM.eviction_policy",
            "fifo",
        ),
        (
            r#"{"cache_hierarchy": {"L2_RAM": {"max_size_mb": 0}}}"#,
            "cache_hierarchy.L2_RAM.max_size_mb",
            "value 0",
        ),
        (
            r#"{"cache_hierarchy": {"L3_DISK": {"max_size_mb": -5}}}"#,
            "cache_hierarchy.L3_DISK.max_size_mb",
            "-5",
        ),
        (
            r#"{"cache_hierarchy": {"L3_DISK": {"max_size_mb": 99999999999}}}"#,
            "cache_hierarchy.L3_DISK.max_size_mb",
            "99999999999",
        ),
        (
            r#"{"cache_hierarchy": {"L2_RAM": {"max_size_mb": "8GB"}}}"#,
            "cache_hierarchy.L2_RAM.max_size_mb",
            "8GB",
        ),
        (
            r#"{"cache_hierarchy": {"L1_VRAM": {"enabled": "yes", "max_size_mb": 64}}}"#,
            "cache_hierarchy.L1_VRAM.enabled",
            "yes",
        ),
        (
            r#"{"cache_hierarchy": {"L1_VRAM": {"eviction_policy": "LRU "}}}"#,
            "cache_hierarchy.L1_VRAM.eviction_policy",
            "LRU ",
        ),
        (
            r#"{"cache_hierarchy": {"L0_REGISTERS": {}}}"#,
            "cache_hierarchy.L0_REGISTERS",
            "expected one of `L1_VRAM`",
        ),
        (
            r#"{"cache_hierarchy": {"L2_RAM": {"max_size_mb": 64, "colour": "blue"}}}"#,
            "cache_hierarchy.L2_RAM.colour",
            "unknown field",
        ),
        (
            r#"{"bus_config": {"coherency_protocol": "moesi"}}"#,
            "bus_config.coherency_protocol",
            "moesi",
        ),
        (
            r#"{"bus_config": {"sync_interval_seconds": 0}}"#,
            "bus_config.sync_interval_seconds",
            "value 0",
        ),
        (
            r#"{"bus_config": {"repositories": "/one/repo"}}"#,
            "bus_config.repositories",
            "/one/repo",
        ),
        (
            r#"{"bus_config": {"repositories": ["/ok", ""]}}"#,
            "bus_config.repositories[1]",
            "\"\"",
        ),
        (
            r#"{"bus_config": {"master_db": ""}}"#,
            "bus_config.master_db",
            "\"\"",
        ),
        (
            r#"{"api": {"listen": "0.0.0.0:7878"}}"#,
            "api.listen",
            "0.0.0.0:7878",
        ),
        (
            r#"{"api": {"listen": "localhost:http"}}"#,
            "api.listen",
            "localhost:http",
        ),
        (r#"{"api": {"token": "short"}}"#, "api.token", "5 bytes"),
        (
            r#"{"state": {"durability": "sometimes"}}"#,
            "state.durability",
            "sometimes",
        ),
        (
            r#"{"state": {"segment_size_mb": 100000}}"#,
            "state.segment_size_mb",
            "100000",
        ),
        (
            r#"{"state": {"checkpoints_retained": 1}}"#,
            "state.checkpoints_retained",
            "value 1",
        ),
        (r#"{"gpu": {"backend": "opencl"}}"#, "gpu.backend", "opencl"),
        (
            r#"{"telemetry": true}"#,
            "telemetry",
            "expected one of `cache_hierarchy`",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (case_idx, (text, key, value)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{case_idx}.json"));
        std::fs::write(&path, text).unwrap();
        let result = run(vbus(dir.path()).args(["config", "check"]).arg(&path));
        assert_eq!(result.code, Some(1), "{text} was accepted: {result:?}");
        assert!(
            result.stderr.contains(&format!("`{key}`")),
            "{text}: error does not name `{key}`: {}",
            result.stderr
        );
        assert!(
            result.stderr.contains(value),
            "{text}: error does not name {value:?}: {}",
            result.stderr
        );
    }
}

#[test]
fn syntax_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.json");
    std::fs::write(&path, "{\n  \"api\": {\n    \"listen\": \n}\n").unwrap();
    let result = run(vbus(dir.path()).args(["config", "check"]).arg(&path));
    assert_eq!(result.code, Some(1));
    assert!(
        result.stderr.contains("not valid JSON at line 4"),
        "{}",
        result.stderr
    );
}

#[test]
fn a_missing_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let result = run(vbus(dir.path()).args(["config", "check", "/nonexistent/vbus_config.json"]));
    assert_eq!(result.code, Some(1));
    assert!(
        result.stderr.contains("/nonexistent/vbus_config.json"),
        "{}",
        result.stderr
    );
}

/// `docs/CONFIG.md` holds the defaults in one JSON block; it must equal what the code uses.
#[test]
fn documented_defaults_match_the_code() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = run_ok(dir.path(), &["config", "defaults"]).stdout;
    let doc_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/CONFIG.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    let start = doc
        .find("```json\n")
        .expect("docs/CONFIG.md has a json block")
        + "```json\n".len();
    let end = start + doc[start..].find("```").unwrap();
    assert_eq!(
        &doc[start..end],
        defaults,
        "docs/CONFIG.md's default block differs from `vbus config defaults`"
    );
    let path = dir.path().join("defaults.json");
    std::fs::write(&path, &defaults).unwrap();
    run_ok(dir.path(), &["config", "check", path.to_str().unwrap()]);
}
