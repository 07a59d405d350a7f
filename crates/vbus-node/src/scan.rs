//! `vbus scan`: what this machine has (CPU, RAM, disk, GPUs, ML software) and what its memory
//! hierarchy can move, measured in under two seconds.

mod software;
mod throughput;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use software::{CudaToolkit, PythonPackage, PythonReport, SoftwareReport};
pub use throughput::{
    DiskThroughput, IO_BLOCK_BYTES, PageCache, Throughput, drop_from_page_cache, pattern,
    read_file_gbps, write_file_gbps,
};

/// Whether `scan` measures throughput (about a second of work) or only takes the inventory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// RAM copy, disk write and read at the home, host↔device when a GPU exists.
    Throughput,
    /// Inventory only (what `init` needs to size the tiers).
    InventoryOnly,
}

/// Everything `vbus scan` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SystemScan {
    /// Version of the `vbus` that made the scan.
    pub vbus_version: String,
    /// Operating system and architecture.
    pub os: String,
    /// The CPU.
    pub cpu: CpuInfo,
    /// Host memory.
    pub memory: MemoryInfo,
    /// The file system holding the home.
    pub disk: DiskInfo,
    /// GPUs and the CUDA driver.
    pub gpu: GpuReport,
    /// CUDA toolkit and Python ML packages.
    pub software: SoftwareReport,
    /// Measured rates, when asked for.
    pub throughput: Option<Throughput>,
}

/// The CPU.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CpuInfo {
    /// Model name from the OS, or `unknown`.
    pub model: String,
    /// Logical cores this process may use.
    pub cores_logical: usize,
    /// Physical cores, when the OS says.
    pub cores_physical: Option<usize>,
}

/// Host memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryInfo {
    /// Installed memory.
    pub total_bytes: u64,
    /// Memory available to new work without swapping.
    pub available_bytes: u64,
}

/// The file system that holds (or will hold) the home.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskInfo {
    /// The directory measured: the home, or its nearest existing ancestor.
    pub path: PathBuf,
    /// Bytes an unprivileged user may still write.
    pub free_bytes: u64,
    /// Size of the file system.
    pub total_bytes: u64,
}

/// GPUs as the CUDA driver reports them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GpuReport {
    /// CUDA version supported by the driver, when a driver loaded.
    pub driver_cuda_version: Option<String>,
    /// Every device, in ordinal order.
    pub devices: Vec<GpuDevice>,
    /// One line for the report: the device count, or why there is none.
    pub note: String,
}

/// One GPU.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GpuDevice {
    /// Driver ordinal.
    pub index: usize,
    /// Device name.
    pub name: String,
    /// Total VRAM.
    pub vram_total_bytes: u64,
    /// Free VRAM at scan time.
    pub vram_free_bytes: u64,
    /// Compute capability as `major.minor`.
    pub compute_capability: String,
}

impl SystemScan {
    /// Runs the scan. `home` need not exist: disk figures are taken at its nearest existing
    /// ancestor.
    pub fn run(home: &Path, measure: Measure) -> Self {
        let disk_dir = nearest_existing_dir(home);
        let gpu = gpu_report();
        let throughput = match measure {
            Measure::Throughput => Some(throughput::measure(
                &disk_dir,
                gpu.devices.first().map(|d| d.index),
            )),
            Measure::InventoryOnly => None,
        };
        Self {
            vbus_version: env!("CARGO_PKG_VERSION").to_owned(),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            cpu: cpu_info(),
            memory: memory_info(),
            disk: disk_info(&disk_dir),
            gpu,
            software: software::probe(),
            throughput,
        }
    }

    /// The report as a table for people.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "VBUS system scan (vbus {})", self.vbus_version);
        let physical = self
            .cpu
            .cores_physical
            .map(|n| format!(" ({n} physical)"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<14}{}, {} logical cores{physical}, {}",
            "cpu", self.os, self.cpu.cores_logical, self.cpu.model
        );
        let _ = writeln!(
            out,
            "  {:<14}{} total, {} available",
            "memory",
            human_bytes(self.memory.total_bytes),
            human_bytes(self.memory.available_bytes)
        );
        let _ = writeln!(
            out,
            "  {:<14}{} free of {} at {}",
            "disk",
            human_bytes(self.disk.free_bytes),
            human_bytes(self.disk.total_bytes),
            self.disk.path.display()
        );
        let _ = writeln!(out, "  {:<14}{}", "gpu", self.gpu.note);
        for device in &self.gpu.devices {
            let _ = writeln!(
                out,
                "    [{}] {}: {} VRAM, {} free, compute {}",
                device.index,
                device.name,
                human_bytes(device.vram_total_bytes),
                human_bytes(device.vram_free_bytes),
                device.compute_capability
            );
        }
        self.software.write_table(&mut out);
        if let Some(throughput) = &self.throughput {
            throughput.write_table(&mut out);
        }
        out
    }
}

fn gpu_report() -> GpuReport {
    let inventory = vbus_gpu::discover();
    let devices: Vec<GpuDevice> = inventory
        .devices
        .iter()
        .map(|device| GpuDevice {
            index: device.device_idx,
            name: device.name.clone(),
            vram_total_bytes: device.vram_total_bytes,
            vram_free_bytes: device.vram_free_bytes,
            compute_capability: format!(
                "{}.{}",
                device.compute_capability.0, device.compute_capability.1
            ),
        })
        .collect();
    let note = match (&inventory.driver, devices.len(), &inventory.problem) {
        (_, 0, Some(problem)) => format!(
            "{}; the CUDA driver failed: {problem}",
            vbus_gpu::NO_GPU_NOTE
        ),
        (_, 0, None) => vbus_gpu::NO_GPU_NOTE.to_owned(),
        (Some(driver), n, _) => format!(
            "{n} device(s), driver supports CUDA {}",
            driver.cuda_version
        ),
        (None, n, _) => format!("{n} device(s)"),
    };
    GpuReport {
        driver_cuda_version: inventory.driver.map(|driver| driver.cuda_version),
        devices,
        note,
    }
}

/// The directory itself if it exists, else its nearest existing ancestor, else `.`.
pub fn nearest_existing_dir(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    absolute
        .ancestors()
        .find(|ancestor| ancestor.is_dir())
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cpu_info() -> CpuInfo {
    let cores_logical = std::thread::available_parallelism().map_or(1, usize::from);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name.trim() == "model name").then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    // Physical cores: distinct (physical id, core id) pairs.
    let mut cores = std::collections::BTreeSet::new();
    let (mut physical_id, mut core_id) = (None, None);
    for line in cpuinfo.lines().chain(std::iter::once("")) {
        match line
            .split_once(':')
            .map(|(name, value)| (name.trim(), value.trim()))
        {
            Some(("physical id", value)) => physical_id = Some(value.to_owned()),
            Some(("core id", value)) => core_id = Some(value.to_owned()),
            _ if line.trim().is_empty() => {
                if let (Some(physical), Some(core)) = (physical_id.take(), core_id.take()) {
                    cores.insert((physical, core));
                }
            }
            _ => {}
        }
    }
    CpuInfo {
        model,
        cores_logical,
        cores_physical: (!cores.is_empty()).then_some(cores.len()),
    }
}

fn memory_info() -> MemoryInfo {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field_bytes = |field: &str| -> Option<u64> {
        meminfo.lines().find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kib * 1024)
        })
    };
    let total_bytes = field_bytes("MemTotal").unwrap_or(0);
    MemoryInfo {
        total_bytes,
        available_bytes: field_bytes("MemAvailable").unwrap_or(total_bytes),
    }
}

fn disk_info(dir: &Path) -> DiskInfo {
    let (free_bytes, total_bytes) = match rustix::fs::statvfs(dir) {
        Ok(stat) => (
            stat.f_bavail.saturating_mul(stat.f_frsize),
            stat.f_blocks.saturating_mul(stat.f_frsize),
        ),
        Err(err) => {
            tracing::warn!(path = %dir.display(), error = %err, "statvfs failed");
            (0, 0)
        }
    };
    DiskInfo {
        path: dir.to_owned(),
        free_bytes,
        total_bytes,
    }
}

/// `12.3 GiB`, `512 MiB`, `900 B`.
pub fn human_bytes(n_bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n_bytes as f64;
    let mut unit_idx = 0;
    while value >= 1024.0 && unit_idx + 1 < UNITS.len() {
        value /= 1024.0;
        unit_idx += 1;
    }
    if unit_idx == 0 {
        format!("{n_bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit_idx])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_picks_the_unit() {
        assert_eq!(human_bytes(900), "900 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn nearest_existing_dir_walks_up() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("a/b/c");
        assert_eq!(nearest_existing_dir(&missing), dir.path());
    }

    #[test]
    fn inventory_reads_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let scan = SystemScan::run(dir.path(), Measure::InventoryOnly);
        assert!(scan.cpu.cores_logical >= 1);
        if cfg!(target_os = "linux") {
            assert!(scan.memory.total_bytes > 0);
            assert!(scan.memory.available_bytes <= scan.memory.total_bytes);
            assert!(scan.disk.free_bytes <= scan.disk.total_bytes && scan.disk.total_bytes > 0);
        }
        assert!(scan.throughput.is_none());
    }
}
