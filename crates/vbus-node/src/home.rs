//! The VBUS home: its layout, `vbus init`, and the rule that sizes the tiers.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;

use crate::config::Config;
use crate::scan::{Measure, SystemScan};

/// The home used when neither `--home` nor `$VBUS_HOME` is given.
pub const DEFAULT_HOME: &str = "VBUS";
/// Environment variable naming the home.
pub const HOME_ENV: &str = "VBUS_HOME";

/// Every directory of the home, relative to its root, as DESIGN.md lays it out.
pub const LAYOUT_DIRS: [&str; 13] = [
    "BUS/CONTROL_PLANE",
    "BUS/INTERCONNECT",
    "BUS/AI_ROUTER",
    "CACHE/L1_VRAM",
    "CACHE/L2_RAM",
    "CACHE/L3_DISK",
    "AUDIT/LOGS",
    "AUDIT/METRICS",
    "DATA/MASTER_DB",
    "DATA/REPOS",
    "DATA/TLOG",
    "DATA/CHECKPOINTS",
    "CONFIG",
];

/// The configuration file, relative to the home.
pub const CONFIG_FILE: &str = "CONFIG/vbus_config.json";
/// The daemon log, relative to the home.
pub const DAEMON_LOG_FILE: &str = "AUDIT/LOGS/vbus_daemon.log";
/// The launchers `init` writes at the home's root.
pub const LAUNCHERS: [&str; 3] = ["START_VBUS.sh", "START_VBUS.bat", "START_VBUS.ps1"];

/// Tier sizes are multiples of this many MiB.
const SIZE_STEP_MB: u64 = 64;
/// The smallest L1 or L2 that `init` chooses.
const MEMORY_TIER_MB_MIN: u64 = 64;
/// The smallest L3 that `init` chooses.
const DISK_TIER_MB_MIN: u64 = 256;
/// The largest simulated L1 that `init` chooses without a GPU.
const SIMULATED_L1_MB_MAX: u64 = 1024;

/// A VBUS home directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// The home from `--home`, else `$VBUS_HOME`, else `./VBUS`; made absolute.
    pub fn resolve(home_arg: Option<&Path>) -> anyhow::Result<Self> {
        let path = match home_arg {
            Some(path) => path.to_owned(),
            None => match std::env::var_os(HOME_ENV) {
                Some(path) if !path.is_empty() => PathBuf::from(path),
                _ => PathBuf::from(DEFAULT_HOME),
            },
        };
        let root = std::path::absolute(&path)
            .with_context(|| format!("cannot resolve the home directory {}", path.display()))?;
        Ok(Self { root })
    }

    /// The home's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `CONFIG/vbus_config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    /// `AUDIT/LOGS/vbus_daemon.log`.
    pub fn daemon_log_path(&self) -> PathBuf {
        self.root.join(DAEMON_LOG_FILE)
    }

    /// `CACHE/L3_DISK`.
    pub fn l3_dir(&self) -> PathBuf {
        self.root.join("CACHE/L3_DISK")
    }

    /// The lock file a running daemon holds.
    pub fn lock_path(&self) -> PathBuf {
        self.root.join(".vbus.lock")
    }

    /// `.vbus.addr`: the address the home's daemon listens on, written once it has bound it.
    pub fn addr_path(&self) -> PathBuf {
        self.root.join(".vbus.addr")
    }

    /// The address of the daemon running on this home, when one is: the daemon holds the home's
    /// lock for its whole life, so an address file without a lock holder is stale and ignored.
    pub fn running_daemon_addr(&self) -> anyhow::Result<Option<String>> {
        let lock = match std::fs::File::open(self.lock_path()) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("cannot open {}", self.lock_path().display()));
            }
        };
        // A shared lock is refused while the daemon holds its exclusive one (and held for an
        // instant otherwise: a daemon starting just then retries its lock).
        if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockShared).is_ok() {
            return Ok(None);
        }
        match std::fs::read_to_string(self.addr_path()) {
            Ok(addr) if !addr.trim().is_empty() => Ok(Some(addr.trim().to_owned())),
            Ok(_) => Ok(None),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => {
                Err(err).with_context(|| format!("cannot read {}", self.addr_path().display()))
            }
        }
    }

    /// True when the home has a configuration file.
    pub fn is_initialised(&self) -> bool {
        self.config_path().is_file()
    }

    /// Loads and validates the home's configuration.
    pub fn load_config(&self) -> anyhow::Result<Config> {
        if !self.is_initialised() {
            anyhow::bail!(
                "{} has no {CONFIG_FILE}; run `vbus init --home {}` first",
                self.root.display(),
                self.root.display()
            );
        }
        Config::load(&self.config_path())
    }
}

/// Whether `init` may replace an existing configuration and launchers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    /// Keep what exists (the default): a second `init` changes nothing.
    Keep,
    /// Rewrite the configuration (sized from a fresh scan) and the launchers.
    Force,
}

/// What `init` did to one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// It did not exist and was made.
    Created,
    /// It existed and was left alone.
    Kept,
    /// It existed and was rewritten (`--force`).
    Replaced,
}

/// The outcome of `init`.
#[derive(Debug)]
pub struct InitReport {
    /// Each directory and file of the home, relative to it, with what was done.
    pub entries: Vec<(String, Action)>,
    /// The configuration now in force.
    pub config: Config,
    /// The scan that sized the tiers.
    pub scan: SystemScan,
}

impl InitReport {
    /// True when `init` changed nothing.
    pub fn changed_nothing(&self) -> bool {
        self.entries
            .iter()
            .all(|(_, action)| *action == Action::Kept)
    }

    /// What `init` prints.
    pub fn to_text(&self, home: &Home) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "VBUS home {}", home.root().display());
        for (path, action) in &self.entries {
            let verb = match action {
                Action::Created => "created ",
                Action::Kept => "kept    ",
                Action::Replaced => "replaced",
            };
            let _ = writeln!(out, "  {verb} {path}");
        }
        let tiers = &self.config.cache_hierarchy;
        let l1_device = if self.scan.gpu.devices.is_empty() {
            "simulated device".to_owned()
        } else {
            format!("GPU {}", self.config.gpu.device_index)
        };
        let _ = writeln!(
            out,
            "  tiers    L1_VRAM {} MiB ({l1_device}), L2_RAM {} MiB, L3_DISK {} MiB",
            tiers.l1_vram.max_size_mb, tiers.l2_ram.max_size_mb, tiers.l3_disk.max_size_mb
        );
        if self.changed_nothing() {
            let _ = writeln!(
                out,
                "nothing changed: the home is complete (--force rewrites the config and launchers)"
            );
        } else {
            let _ = writeln!(
                out,
                "start it with: {}",
                home.root().join("START_VBUS.sh").display()
            );
        }
        out
    }
}

/// Creates the home layout, the sized configuration and the launchers. Existing files are kept
/// unless `overwrite` is [`Overwrite::Force`]; a second run changes nothing.
pub fn init(home: &Home, overwrite: Overwrite) -> anyhow::Result<InitReport> {
    let vbus_binary = std::env::current_exe().context("cannot locate the running vbus binary")?;
    init_for(home, overwrite, &vbus_binary)
}

/// [`init`] with launchers that start `vbus_binary` (else `vbus` on `PATH`): a process that is
/// not the `vbus` binary (the Python package) passes `vbus`.
pub fn init_for(
    home: &Home,
    overwrite: Overwrite,
    vbus_binary: &Path,
) -> anyhow::Result<InitReport> {
    let scan = SystemScan::run(home.root(), Measure::InventoryOnly);
    let mut entries = Vec::new();
    for dir in LAYOUT_DIRS {
        let path = home.root().join(dir);
        let action = if path.is_dir() {
            Action::Kept
        } else {
            Action::Created
        };
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        entries.push((format!("{dir}/"), action));
    }

    let config_path = home.config_path();
    let config_exists = config_path.exists();
    let config = if config_exists && overwrite == Overwrite::Keep {
        entries.push((CONFIG_FILE.to_owned(), Action::Kept));
        Config::load(&config_path).context("the existing config is kept, but it is not valid")?
    } else {
        let config = sized_config(&scan);
        write_atomic(
            &config_path,
            config.to_json_pretty().as_bytes(),
            FileMode::Regular,
        )?;
        let action = if config_exists {
            Action::Replaced
        } else {
            Action::Created
        };
        entries.push((CONFIG_FILE.to_owned(), action));
        config
    };

    for (name, text, mode) in launchers(vbus_binary) {
        let path = home.root().join(name);
        let exists = path.exists();
        if exists && overwrite == Overwrite::Keep {
            entries.push((name.to_owned(), Action::Kept));
            continue;
        }
        write_atomic(&path, text.as_bytes(), mode)?;
        entries.push((
            name.to_owned(),
            if exists {
                Action::Replaced
            } else {
                Action::Created
            },
        ));
    }
    tracing::info!(home = %home.root().display(), "home initialised");
    Ok(InitReport {
        entries,
        config,
        scan,
    })
}

/// The configuration `init` writes: the defaults, with the tiers sized from the scan.
///
/// The rule (also in `docs/CONFIG.md`):
/// - `L1_VRAM`: with a GPU, the smaller of half the device's total VRAM and its free VRAM less
///   `gpu.reserve_mb`; without one, the simulated device gets 1/16 of total RAM, at most 1 GiB.
/// - `L2_RAM`: a quarter of total RAM, at most half of the RAM available at scan time.
/// - `L3_DISK`: half of the free space of the file system holding the home.
/// - Each is rounded down to a multiple of 64 MiB, with a floor of 64 MiB (256 MiB for L3).
/// - `state.pages_max_mb`: an eighth of total RAM, at most an eighth of the free disk (same
///   rounding); `state.checkpoints_max_mb`: that times `checkpoints_retained + 1`.
pub fn sized_config(scan: &SystemScan) -> Config {
    const MIB: u64 = 1024 * 1024;
    let mut config = Config::default();
    let reserve_bytes = config.gpu.reserve_mb * MIB;
    let l1_bytes = match scan.gpu.devices.get(config.gpu.device_index as usize) {
        Some(device) => {
            (device.vram_total_bytes / 2).min(device.vram_free_bytes.saturating_sub(reserve_bytes))
        }
        None => (scan.memory.total_bytes / 16).min(SIMULATED_L1_MB_MAX * MIB),
    };
    let l2_bytes = (scan.memory.total_bytes / 4).min(scan.memory.available_bytes / 2);
    let l3_bytes = scan.disk.free_bytes / 2;
    let step =
        |bytes: u64, floor_mb: u64| (bytes / MIB / SIZE_STEP_MB * SIZE_STEP_MB).max(floor_mb);
    let tiers = &mut config.cache_hierarchy;
    tiers.l1_vram.max_size_mb = step(l1_bytes, MEMORY_TIER_MB_MIN);
    tiers.l2_ram.max_size_mb = step(l2_bytes, MEMORY_TIER_MB_MIN);
    tiers.l3_disk.max_size_mb = step(l3_bytes, DISK_TIER_MB_MIN);
    // The state bus: pages up to an eighth of RAM (they live in memory) and of the free disk;
    // room on disk for the checkpoints kept plus the one being written.
    let state = &mut config.state;
    let pages_bytes = (scan.memory.total_bytes / 8).min(scan.disk.free_bytes / 8);
    state.pages_max_mb = step(pages_bytes, MEMORY_TIER_MB_MIN);
    state.checkpoints_max_mb = state.pages_max_mb * (u64::from(state.checkpoints_retained) + 1);
    config
}

/// How a written file may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileMode {
    Regular,
    Executable,
}

fn launchers(vbus_binary: &Path) -> [(&'static str, String, FileMode); 3] {
    let binary = vbus_binary.display();
    let sh = format!(
        "#!/bin/sh\n\
         # Starts the VBUS daemon on this home. Written by `vbus init`.\n\
         # VBUS_BIN overrides the binary; without it the one that ran init, else `vbus` on PATH.\n\
         home=\"$(cd \"$(dirname \"$0\")\" && pwd)\" || exit 1\n\
         bin=\"${{VBUS_BIN:-{binary}}}\"\n\
         [ -x \"$bin\" ] || bin=vbus\n\
         exec \"$bin\" up --home \"$home\" \"$@\"\n"
    );
    let bat = format!(
        "@echo off\r\n\
         rem Starts the VBUS daemon on this home. Written by `vbus init`.\r\n\
         set \"VBUS_BIN_DEFAULT={binary}\"\r\n\
         if \"%VBUS_BIN%\"==\"\" set \"VBUS_BIN=%VBUS_BIN_DEFAULT%\"\r\n\
         if not exist \"%VBUS_BIN%\" set \"VBUS_BIN=vbus\"\r\n\
         \"%VBUS_BIN%\" up --home \"%~dp0.\" %*\r\n"
    );
    let ps1 = format!(
        "# Starts the VBUS daemon on this home. Written by `vbus init`.\r\n\
         $bin = if ($env:VBUS_BIN) {{ $env:VBUS_BIN }} else {{ '{binary}' }}\r\n\
         if (-not (Test-Path $bin)) {{ $bin = 'vbus' }}\r\n\
         & $bin up --home $PSScriptRoot @args\r\n\
         exit $LASTEXITCODE\r\n"
    );
    [
        ("START_VBUS.sh", sh, FileMode::Executable),
        ("START_VBUS.bat", bat, FileMode::Regular),
        ("START_VBUS.ps1", ps1, FileMode::Regular),
    ]
}

/// Writes a file whole (see [`vbus_store::atomic`]): readers see the old version or the new one.
fn write_atomic(path: &Path, bytes: &[u8], mode: FileMode) -> anyhow::Result<()> {
    let options = vbus_store::atomic::WholeWrite {
        temp: vbus_store::atomic::TempName::Hidden,
        executable: mode == FileMode::Executable,
        create_parent: false,
    };
    vbus_store::atomic::replace_with(path, options, |file| file.write_all(bytes))?;
    Ok(())
}

/// An exclusive `flock` on `.vbus.lock` at the home's root, held for a node's life (two never share a home); the file
/// names the holder's pid.
#[derive(Debug)]
pub struct HomeLock {
    _file: File,
}

impl HomeLock {
    /// Takes the lock; refused, naming the holder's pid, while another node holds it.
    pub fn acquire(home: &Home) -> anyhow::Result<Self> {
        let path = home.lock_path();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        // Retried briefly: a client probing whether a daemon runs holds a shared lock for an
        // instant.
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        while rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .is_err()
        {
            if Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
                continue;
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            anyhow::bail!(
                "another vbus daemon (pid {}) is running on the home {}",
                holder.trim(),
                home.root().display()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{CpuInfo, DiskInfo, GpuDevice, GpuReport, MemoryInfo, SoftwareReport};

    fn scan(
        ram_gib: u64,
        available_gib: u64,
        disk_free_gib: u64,
        gpu: Option<(u64, u64)>,
    ) -> SystemScan {
        const GIB: u64 = 1 << 30;
        SystemScan {
            vbus_version: "test".to_owned(),
            os: "linux x86_64".to_owned(),
            cpu: CpuInfo {
                model: "test".to_owned(),
                cores_logical: 2,
                cores_physical: None,
            },
            memory: MemoryInfo {
                total_bytes: ram_gib * GIB,
                available_bytes: available_gib * GIB,
            },
            disk: DiskInfo {
                path: PathBuf::from("/"),
                free_bytes: disk_free_gib * GIB,
                total_bytes: 2 * disk_free_gib * GIB,
            },
            gpu: GpuReport {
                driver_cuda_version: None,
                devices: gpu
                    .map(|(total_gib, free_gib)| GpuDevice {
                        index: 0,
                        name: "test".to_owned(),
                        vram_total_bytes: total_gib * GIB,
                        vram_free_bytes: free_gib * GIB,
                        compute_capability: "9.0".to_owned(),
                    })
                    .into_iter()
                    .collect(),
                note: String::new(),
            },
            software: SoftwareReport {
                cuda_toolkit: None,
                python: crate::scan::PythonReport {
                    interpreter: "python3".to_owned(),
                    version: None,
                    problem: None,
                    packages: Vec::new(),
                },
            },
            throughput: None,
        }
    }

    fn check(scan: &SystemScan, l1_mb: u64, l2_mb: u64, l3_mb: u64) {
        let config = sized_config(scan);
        config.validate().unwrap();
        let tiers = &config.cache_hierarchy;
        assert_eq!(
            (
                tiers.l1_vram.max_size_mb,
                tiers.l2_ram.max_size_mb,
                tiers.l3_disk.max_size_mb
            ),
            (l1_mb, l2_mb, l3_mb)
        );
    }

    #[test]
    fn sizing_rule() {
        // This machine's shape: no GPU, 24 GiB RAM, 80 GiB free.
        check(&scan(24, 23, 80, None), 1024, 6144, 40_960);
        // An H100 box: half of 80 GiB VRAM; L2 capped by half of what is available.
        check(
            &scan(256, 40, 1000, Some((80, 79))),
            40_960,
            20_480,
            512_000,
        );
        // VRAM mostly taken: free less the 1 GiB reserve.
        check(&scan(16, 16, 100, Some((24, 5))), 4096, 4096, 51_200);
        // A tiny machine gets the floors.
        check(&scan(0, 0, 0, None), 64, 64, 256);
    }
}
