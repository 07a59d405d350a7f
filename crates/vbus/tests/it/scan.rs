use crate::support::{run, run_ok, vbus};

fn has_nvidia_driver() -> bool {
    std::path::Path::new("/proc/driver/nvidia").exists()
}

#[test]
fn scan_json_reports_the_machine_and_no_gpu_here() {
    let dir = tempfile::tempdir().unwrap();
    let result = run_ok(dir.path(), &["scan", "--json"]);
    let scan: serde_json::Value =
        serde_json::from_str(&result.stdout).expect("scan --json prints JSON");
    assert!(scan["cpu"]["cores_logical"].as_u64().unwrap() >= 1);
    assert!(scan["memory"]["total_bytes"].as_u64().unwrap() > 0);
    assert!(scan["disk"]["free_bytes"].as_u64().is_some());
    let packages = scan["software"]["python"]["packages"].as_array().unwrap();
    for name in [
        "torch",
        "cudf",
        "cuml",
        "xgboost",
        "scikit-learn",
        "catboost",
        "RAPIDS",
    ] {
        assert!(
            packages.iter().any(|package| package["name"] == name),
            "{name} missing"
        );
    }
    let throughput = &scan["throughput"];
    assert!(throughput["ram_copy_gbps"].as_f64().unwrap() > 0.0);
    assert!(
        throughput["disk"]["write_gbps"].as_f64().unwrap() > 0.0,
        "{throughput}"
    );
    assert!(
        throughput["disk"]["read_gbps"].as_f64().unwrap() > 0.0,
        "{throughput}"
    );
    if !has_nvidia_driver() {
        assert_eq!(scan["gpu"]["devices"].as_array().unwrap().len(), 0);
        assert_eq!(
            scan["gpu"]["note"],
            "no GPU: L1 runs on the simulated device"
        );
        assert!(throughput["host_to_device_gbps"].is_null());
    }
    // The scratch file of the disk measurement is gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn scan_table_says_where_l1_runs() {
    let dir = tempfile::tempdir().unwrap();
    let result = run_ok(dir.path(), &["scan", "--no-measure"]);
    assert!(result.stdout.contains("VBUS system scan"));
    if !has_nvidia_driver() {
        assert!(
            result
                .stdout
                .contains("no GPU: L1 runs on the simulated device"),
            "{}",
            result.stdout
        );
    }
    assert!(
        !result.stdout.contains("throughput"),
        "--no-measure measured: {}",
        result.stdout
    );
}

#[test]
fn a_missing_python_is_a_line_not_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let result = run(vbus(dir.path())
        .args(["scan", "--json", "--no-measure"])
        .env("VBUS_PYTHON", "/nonexistent/python3"));
    assert!(result.success, "{result:?}");
    let scan: serde_json::Value = serde_json::from_str(&result.stdout).unwrap();
    let python = &scan["software"]["python"];
    assert!(python["version"].is_null());
    assert!(
        python["problem"]
            .as_str()
            .unwrap()
            .starts_with("cannot run"),
        "{python}"
    );
}
