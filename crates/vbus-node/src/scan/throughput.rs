//! What the hierarchy can move: RAM copy, disk write and read at the home, host↔device.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Size of one read or write call in the disk measurement, and of `dd`'s block in `bench scan`.
pub const IO_BLOCK_BYTES: usize = 8 << 20;
/// The most the scan writes to disk.
const DISK_TEST_BYTES_MAX: u64 = 256 << 20;
/// The scan stops writing after this long (a slow disk gets a smaller file, not a slow scan).
const DISK_WRITE_BUDGET: Duration = Duration::from_millis(600);
/// Size of each RAM-copy buffer; the copy runs [`RAM_COPY_ROUNDS`] times and the best counts.
const RAM_COPY_BYTES: usize = 64 << 20;
const RAM_COPY_ROUNDS: usize = 6;
/// Size of the host↔device test copy.
const GPU_COPY_BYTES: usize = 256 << 20;

/// Measured rates. GB/s are 10^9 bytes per second.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    /// Wall time of the whole measurement.
    pub elapsed_ms: u64,
    /// `memcpy` between two 64 MiB buffers, best of six.
    pub ram_copy_gbps: f64,
    /// Sequential write and read at the home.
    pub disk: Option<DiskThroughput>,
    /// Why the disk could not be measured.
    pub disk_problem: Option<String>,
    /// Host→device from page-locked memory, with a GPU.
    pub host_to_device_gbps: Option<f64>,
    /// Device→host into page-locked memory, with a GPU.
    pub device_to_host_gbps: Option<f64>,
    /// Why host↔device was not measured.
    pub gpu_problem: Option<String>,
}

/// Sequential disk rates at one directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskThroughput {
    /// Directory written to.
    pub path: PathBuf,
    /// Bytes written, then read back.
    pub size_bytes: u64,
    /// Write rate, the closing `fsync` included.
    pub write_gbps: f64,
    /// Read rate after the file's pages were dropped from the page cache.
    pub read_gbps: f64,
    /// Whether the OS accepted the request to drop the file's cached pages (when not, the read
    /// figure is a page-cache figure).
    pub page_cache_dropped: bool,
}

/// Whether a read starts from the page cache or from the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCache {
    /// The file's pages are dropped first (`fsync` + `POSIX_FADV_DONTNEED`).
    Dropped,
    /// Whatever the OS has cached stays.
    Kept,
}

impl Throughput {
    pub(super) fn write_table(&self, out: &mut String) {
        let _ = writeln!(out, "  throughput (measured in {} ms)", self.elapsed_ms);
        let _ = writeln!(out, "    {:<16}{:.1} GB/s", "RAM copy", self.ram_copy_gbps);
        match (&self.disk, &self.disk_problem) {
            (Some(disk), _) => {
                let cold = if disk.page_cache_dropped {
                    "page cache dropped"
                } else {
                    "page cache kept"
                };
                let size = super::human_bytes(disk.size_bytes);
                let _ = writeln!(
                    out,
                    "    {:<16}{:.2} GB/s ({size}, fsync)",
                    "disk write", disk.write_gbps
                );
                let _ = writeln!(
                    out,
                    "    {:<16}{:.2} GB/s ({size}, {cold})",
                    "disk read", disk.read_gbps
                );
            }
            (None, problem) => {
                let why = problem.as_deref().unwrap_or("not measured");
                let _ = writeln!(out, "    {:<16}{why}", "disk");
            }
        }
        match (self.host_to_device_gbps, self.device_to_host_gbps) {
            (Some(h2d), Some(d2h)) => {
                let _ = writeln!(out, "    {:<16}{h2d:.1} GB/s (page-locked)", "host→device");
                let _ = writeln!(out, "    {:<16}{d2h:.1} GB/s (page-locked)", "device→host");
            }
            _ => {
                let why = self.gpu_problem.as_deref().unwrap_or("no GPU");
                let _ = writeln!(out, "    {:<16}not measured: {why}", "host↔device");
            }
        }
    }
}

pub(super) fn measure(disk_dir: &Path, gpu_device_idx: Option<usize>) -> Throughput {
    let started = Instant::now();
    let ram_copy_gbps = ram_copy_gbps();
    let (disk, disk_problem) = match measure_disk(disk_dir) {
        Ok(disk) => (Some(disk), None),
        Err(err) => (
            None,
            Some(format!(
                "cannot measure the disk at {}: {err}",
                disk_dir.display()
            )),
        ),
    };
    let (host_to_device_gbps, device_to_host_gbps, gpu_problem) = match gpu_device_idx {
        None => (None, None, Some("no GPU".to_owned())),
        Some(device_idx) => {
            match vbus_gpu::measure_host_device_bandwidth(device_idx, GPU_COPY_BYTES as u64, 2) {
                Ok(rates) => (
                    Some(rates.host_to_device_gbps),
                    Some(rates.device_to_host_gbps),
                    None,
                ),
                Err(err) => (None, None, Some(err.to_string())),
            }
        }
    };
    Throughput {
        elapsed_ms: started.elapsed().as_millis() as u64,
        ram_copy_gbps,
        disk,
        disk_problem,
        host_to_device_gbps,
        device_to_host_gbps,
        gpu_problem,
    }
}

fn ram_copy_gbps() -> f64 {
    let source = pattern(RAM_COPY_BYTES);
    // Touch every page of the destination before timing, so page faults are not measured.
    let mut destination = vec![1u8; RAM_COPY_BYTES];
    let mut best = 0.0f64;
    for _ in 0..RAM_COPY_ROUNDS {
        let started = Instant::now();
        destination.copy_from_slice(&source);
        best = best.max(gbps(RAM_COPY_BYTES as u64, started.elapsed()));
    }
    std::hint::black_box(&destination);
    best
}

/// Writes up to 256 MiB (or what fits in 600 ms) to a scratch file in `dir`, `fsync`s it, drops
/// it from the page cache, reads it back and removes it.
fn measure_disk(dir: &Path) -> io::Result<DiskThroughput> {
    let path = dir.join(format!(".vbus-scan-{}.tmp", std::process::id()));
    let result = measure_disk_at(&path);
    let _ = std::fs::remove_file(&path);
    result
}

fn measure_disk_at(path: &Path) -> io::Result<DiskThroughput> {
    let (size_bytes, write_gbps) =
        write_file_gbps(path, DISK_TEST_BYTES_MAX, Some(DISK_WRITE_BUDGET))?;
    let (read_gbps, page_cache_dropped) = read_file_gbps(path, PageCache::Dropped)?;
    Ok(DiskThroughput {
        path: path.parent().map(Path::to_owned).unwrap_or_default(),
        size_bytes,
        write_gbps,
        read_gbps,
        page_cache_dropped,
    })
}

/// Creates `path` and writes [`pattern`] bytes in [`IO_BLOCK_BYTES`] blocks up to `size_bytes_max`
/// (stopping early once `budget` has passed, if given), then `fsync`s. Returns the bytes written
/// and the rate, the `fsync` included.
pub fn write_file_gbps(
    path: &Path,
    size_bytes_max: u64,
    budget: Option<Duration>,
) -> io::Result<(u64, f64)> {
    let block = pattern(IO_BLOCK_BYTES);
    let started = Instant::now();
    let mut file = File::create_new(path)?;
    let mut size_bytes = 0u64;
    while size_bytes < size_bytes_max {
        if size_bytes > 0 && budget.is_some_and(|budget| started.elapsed() >= budget) {
            break;
        }
        let n = (size_bytes_max - size_bytes).min(block.len() as u64) as usize;
        file.write_all(&block[..n])?;
        size_bytes += n as u64;
    }
    file.sync_all()?;
    Ok((size_bytes, gbps(size_bytes, started.elapsed())))
}

/// Reads a whole file sequentially in [`IO_BLOCK_BYTES`] blocks; returns GB/s and whether the page
/// cache was dropped as asked. This is the disk-read figure of `vbus scan`.
pub fn read_file_gbps(path: &Path, page_cache: PageCache) -> io::Result<(f64, bool)> {
    let mut file = File::open(path)?;
    let dropped = match page_cache {
        PageCache::Dropped => drop_from_page_cache(&file),
        PageCache::Kept => false,
    };
    let mut buffer = vec![0u8; IO_BLOCK_BYTES];
    let started = Instant::now();
    let mut n_bytes = 0u64;
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n_bytes += n as u64,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok((gbps(n_bytes, started.elapsed()), dropped))
}

/// Asks the OS to forget the file's cached pages. Dirty pages cannot be dropped, so the file is
/// synced first. Returns whether the OS accepted.
pub fn drop_from_page_cache(file: &File) -> bool {
    if file.sync_all().is_err() {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed).is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Bytes that no file system or link compresses away (xorshift64).
pub fn pattern(n_bytes: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut bytes = Vec::with_capacity(n_bytes + 8);
    while bytes.len() < n_bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(n_bytes);
    bytes
}

fn gbps(n_bytes: u64, elapsed: Duration) -> f64 {
    n_bytes as f64 / elapsed.as_secs_f64().max(1e-9) / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_disk_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let disk = measure_disk(dir.path()).unwrap();
        assert!(disk.size_bytes >= IO_BLOCK_BYTES as u64);
        assert!(disk.write_gbps > 0.0 && disk.read_gbps > 0.0);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "scratch file left behind"
        );
    }

    #[test]
    fn pattern_is_deterministic_and_not_constant() {
        let bytes = pattern(1000);
        assert_eq!(bytes, pattern(1000));
        assert!(bytes.windows(2).any(|pair| pair[0] != pair[1]));
    }
}
