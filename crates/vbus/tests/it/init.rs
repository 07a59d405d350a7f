use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use vbus_node::home::{CONFIG_FILE, LAUNCHERS, LAYOUT_DIRS};

use crate::support::{run, run_ok, vbus};

/// Every path under `root` with its type, length, modification time and (for files) contents.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (bool, u64, SystemTime, Vec<u8>)> {
    let mut entries = BTreeMap::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let metadata = entry.metadata().unwrap();
            let contents = if metadata.is_file() {
                std::fs::read(entry.path()).unwrap()
            } else {
                Vec::new()
            };
            if metadata.is_dir() {
                pending.push(entry.path());
            }
            entries.insert(
                entry.path(),
                (
                    metadata.is_dir(),
                    metadata.len(),
                    metadata.modified().unwrap(),
                    contents,
                ),
            );
        }
    }
    entries.insert(
        root.to_owned(),
        (
            true,
            0,
            std::fs::metadata(root).unwrap().modified().unwrap(),
            Vec::new(),
        ),
    );
    entries
}

#[test]
fn init_creates_the_whole_layout_and_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("VBUS");
    let result = run_ok(&home, &["init"]);
    for layout_dir in LAYOUT_DIRS {
        assert!(home.join(layout_dir).is_dir(), "{layout_dir} missing");
        assert!(
            result.stdout.contains(&format!("created  {layout_dir}/")),
            "{}",
            result.stdout
        );
    }
    assert!(home.join(CONFIG_FILE).is_file());
    for launcher in LAUNCHERS {
        assert!(home.join(launcher).is_file(), "{launcher} missing");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(home.join("START_VBUS.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "START_VBUS.sh is not executable");
    }
    let check = run_ok(&home, &["config", "check"]);
    assert!(check.stdout.trim_end().ends_with(": ok"), "{check:?}");
    // The tiers were sized from this machine, not left at the defaults.
    let config = vbus_node::Config::load(&home.join(CONFIG_FILE)).unwrap();
    let scan = vbus_node::SystemScan::run(&home, vbus_node::scan::Measure::InventoryOnly);
    let l2_mb = config.cache_hierarchy.l2_ram.max_size_mb;
    assert!(
        l2_mb.is_multiple_of(64) && l2_mb * (1 << 20) <= scan.memory.total_bytes / 4 + (64 << 20)
    );
}

#[test]
fn a_second_init_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("VBUS");
    run_ok(&home, &["init"]);
    let before = snapshot(&home);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let again = run_ok(&home, &["init"]);
    assert!(again.stdout.contains("nothing changed"), "{}", again.stdout);
    assert!(!again.stdout.contains("created"), "{}", again.stdout);
    assert_eq!(snapshot(&home), before);
}

#[test]
fn an_edited_config_is_kept_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("VBUS");
    run_ok(&home, &["init"]);
    let config_path = home.join(CONFIG_FILE);
    std::fs::write(
        &config_path,
        r#"{"bus_config": {"sync_interval_seconds": 5}}"#,
    )
    .unwrap();
    let kept = run_ok(&home, &["init"]);
    assert!(
        kept.stdout.contains(&format!("kept     {CONFIG_FILE}")),
        "{}",
        kept.stdout
    );
    assert_eq!(
        vbus_node::Config::load(&config_path)
            .unwrap()
            .bus_config
            .sync_interval_seconds,
        5
    );

    let forced = run_ok(&home, &["init", "--force"]);
    assert!(
        forced.stdout.contains(&format!("replaced {CONFIG_FILE}")),
        "{}",
        forced.stdout
    );
    assert_eq!(
        vbus_node::Config::load(&config_path)
            .unwrap()
            .bus_config
            .sync_interval_seconds,
        60
    );
}

#[test]
fn init_refuses_to_keep_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("VBUS");
    run_ok(&home, &["init"]);
    let config_path = home.join(CONFIG_FILE);
    std::fs::write(
        &config_path,
        r#"{"bus_config": {"sync_interval_seconds": 0}}"#,
    )
    .unwrap();
    let result = run(vbus(&home).arg("init"));
    assert_eq!(result.code, Some(1));
    assert!(
        result.stderr.contains("bus_config.sync_interval_seconds"),
        "{}",
        result.stderr
    );
    // Nothing was overwritten.
    assert!(
        std::fs::read_to_string(&config_path)
            .unwrap()
            .contains("\"sync_interval_seconds\": 0")
    );
}

#[test]
fn vbus_home_environment_variable_names_the_home() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("from-env");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_vbus"));
    command
        .env("VBUS_HOME", &home)
        .current_dir(dir.path())
        .arg("init");
    let result = run(&mut command);
    assert!(result.success, "{result:?}");
    assert!(home.join(CONFIG_FILE).is_file());
    assert!(!dir.path().join("VBUS").exists());
}
