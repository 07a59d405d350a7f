//! `vbus-bench gpu`: the copy engine and the pools against raw driver operations, and a model
//! file into VRAM against `dd` and `safetensors`. Without a GPU it runs on the simulated device
//! and every line says so.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context as _;
use vbus_gpu::{BackendChoice, BackendKind, DeviceOptions, reference};

use super::{Better, Device, Measurement, Mode, Reporter, Scratch, gbps, median, time_dd};
use vbus_node::home::Home;
use vbus_node::scan::{self, IO_BLOCK_BYTES};

const SUITE: &str = "gpu";
const MIB: u64 = 1 << 20;

pub(super) fn run<W: Write>(
    mode: Mode,
    home: &Home,
    reporter: &mut Reporter<W>,
) -> anyhow::Result<()> {
    let (copy_bytes, file_bytes, large_alloc_bytes, n_rounds) = match mode {
        Mode::Full => (1024 * MIB, 4096 * MIB, 1024 * MIB, 3),
        Mode::Quick => (64 * MIB, 128 * MIB, 64 * MIB, 2),
    };
    let device = vbus_gpu::Device::open(&DeviceOptions {
        backend: BackendChoice::Auto,
        capacity_bytes: file_bytes + 256 * MIB,
        host_capacity_bytes: copy_bytes + 256 * MIB,
        reserve_bytes: 1024 * MIB,
        ..DeviceOptions::default()
    })?;
    let on = match device.kind() {
        BackendKind::Cuda => Device::Cuda,
        BackendKind::Simulated => Device::Simulated,
    };
    let tag = |metric: &str| match on {
        Device::Simulated => format!("{metric} (simulated)"),
        _ => metric.to_owned(),
    };
    reporter.note(&format!(
        "bench gpu on the {} device: copies of {}, a {} file, medians of {n_rounds} rounds after a \
         warm-up{}",
        device.kind().as_str(),
        scan::human_bytes(copy_bytes),
        scan::human_bytes(file_bytes),
        if on == Device::Simulated {
            "; no GPU: host memory stands in for VRAM, so these are not PCIe figures"
        } else {
            ""
        }
    ))?;

    // Page-locked L2 buffers straight to the device, and pageable memory through the staging
    // ring, each against a raw page-locked copy.
    let (raw_h2d, raw_d2h) = reference::raw_copy_gbps(&device, copy_bytes, n_rounds)?;
    let mut on_device = device.alloc(copy_bytes)?;
    let mut pinned = device.alloc_host(copy_bytes)?;
    pinned.copy_from_slice(&scan::pattern(copy_bytes as usize));
    let pinned_rates = round_trips(&device, &mut pinned, &mut on_device, n_rounds)?;
    drop(pinned);
    let mut pageable = scan::pattern(copy_bytes as usize);
    let pageable_rates = round_trips(&device, &mut pageable, &mut on_device, n_rounds)?;
    drop((pageable, on_device));
    for (kind, (h2d, d2h), target) in [
        ("pinned", pinned_rates, Some(0.9)),
        ("pageable_staged", pageable_rates, None),
    ] {
        for (direction, ours, raw) in [
            ("host_to_device", h2d, raw_h2d),
            ("device_to_host", d2h, raw_d2h),
        ] {
            reporter.report(Measurement::new(
                SUITE,
                &tag(&format!("{direction}_{kind}")),
                "GB/s",
                Better::Higher,
                ours,
                "raw page-locked copy",
                raw,
                target,
                on,
            ))?;
        }
    }

    file_to_vram(&device, home, file_bytes, n_rounds, on, &tag, reporter)?;

    // Pool allocation and free, warm, against the driver's own.
    for size_bytes in [MIB, large_alloc_bytes] {
        let mut ours = Vec::new();
        for _ in 0..2000 {
            let started = Instant::now();
            let buffer = device.alloc(size_bytes)?;
            drop(buffer);
            ours.push(started.elapsed().as_nanos() as f64);
        }
        let raw_rounds = if size_bytes > 64 * MIB { 20 } else { 200 };
        let raw = reference::raw_alloc_free_ns(&device, size_bytes, raw_rounds)?;
        reporter.report(Measurement::new(
            SUITE,
            &tag(&format!(
                "alloc_free_{}",
                scan::human_bytes(size_bytes)
                    .replace(".0 ", "")
                    .replace(' ', "")
            )),
            "ns",
            Better::Lower,
            median(&mut ours),
            if on == Device::Cuda {
                "cuMemAlloc + cuMemFree"
            } else {
                "heap alloc + zero + free"
            },
            raw,
            None,
            on,
        ))?;
    }
    Ok(())
}

/// Medians of upload and download rates between `host` and `on_device`, after a warm-up round
/// (as the raw reference does).
fn round_trips(
    device: &vbus_gpu::Device,
    host: &mut [u8],
    on_device: &mut vbus_gpu::DeviceBuffer,
    n_rounds: usize,
) -> anyhow::Result<(f64, f64)> {
    let n_bytes = host.len() as u64;
    let (mut h2d, mut d2h) = (Vec::new(), Vec::new());
    for round in 0..=n_rounds {
        let started = Instant::now();
        device.upload(host, on_device, 0)?;
        let up = gbps(n_bytes, started);
        let started = Instant::now();
        device.download(on_device, 0, host)?;
        if round > 0 {
            h2d.push(up);
            d2h.push(gbps(n_bytes, started));
        }
    }
    Ok((median(&mut h2d), median(&mut d2h)))
}

/// A safetensors file of `file_bytes` into VRAM through the reader threads and the staging slots,
/// cold and warm, against `dd` reading it and (with torch and a GPU) `safetensors.torch.load_file`.
#[allow(clippy::too_many_arguments)]
fn file_to_vram<W: Write>(
    device: &vbus_gpu::Device,
    home: &Home,
    file_bytes: u64,
    n_rounds: usize,
    on: Device,
    tag: &dyn Fn(&str) -> String,
    reporter: &mut Reporter<W>,
) -> anyhow::Result<()> {
    let dir = scan::nearest_existing_dir(home.root());
    let file = Scratch(dir.join(format!(
        ".vbus-bench-gpu-{}.safetensors",
        std::process::id()
    )));
    write_safetensors(&file.0, file_bytes)?;
    let input = format!("if={}", file.0.display());
    let block = format!("bs={}M", IO_BLOCK_BYTES >> 20);
    let drop_cache = |path: &Path| -> anyhow::Result<()> {
        let opened = std::fs::File::open(path)?;
        anyhow::ensure!(
            scan::drop_from_page_cache(&opened),
            "the OS refused to drop {} from the page cache",
            path.display()
        );
        Ok(())
    };
    let safetensors = safetensors_available();
    for (label, cold) in [("cold", true), ("warm", false)] {
        if !cold {
            scan::read_file_gbps(&file.0, scan::PageCache::Kept)?;
        }
        let (mut ours, mut dd, mut torch) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n_rounds {
            if cold {
                drop_cache(&file.0)?;
            }
            let started = Instant::now();
            let loaded = device.load_file(&file.0)?;
            ours.push(gbps(file_bytes, started));
            drop(loaded);
            if cold {
                drop_cache(&file.0)?;
            }
            dd.push(time_dd(&[&input, "of=/dev/null", &block], file_bytes)?);
            if safetensors.is_ok() {
                if cold {
                    drop_cache(&file.0)?;
                }
                torch.push(file_bytes as f64 / safetensors_load_s(&file.0)? / 1e9);
            }
        }
        let ours = median(&mut ours);
        reporter.report(Measurement::new(
            SUITE,
            &tag(&format!("file_to_vram_{label}")),
            "GB/s",
            Better::Higher,
            ours,
            &format!("dd {block}, page cache {label}"),
            median(&mut dd),
            cold.then_some(0.9),
            on,
        ))?;
        if !torch.is_empty() {
            reporter.report(Measurement::new(
                SUITE,
                &tag(&format!("file_to_vram_{label}_vs_safetensors")),
                "GB/s",
                Better::Higher,
                ours,
                "safetensors.torch.load_file(device='cuda')",
                median(&mut torch),
                (!cold).then_some(2.0),
                on,
            ))?;
        }
    }
    if let Err(why) = safetensors {
        reporter.note(&format!("safetensors reference not run: {why}"))?;
    }
    Ok(())
}

/// A valid safetensors file: one `U8` tensor filling `file_bytes` minus the header.
fn write_safetensors(path: &Path, file_bytes: u64) -> anyhow::Result<()> {
    let template = "{\"weights\":{\"dtype\":\"U8\",\"shape\":[N],\"data_offsets\":[0,N]}}";
    // Room for both numbers at the file's own digit count, padded to 8 bytes as the format wants.
    let digits = file_bytes.to_string().len();
    let header_len = (template.len() - 2 + 2 * digits).next_multiple_of(8) as u64;
    anyhow::ensure!(
        file_bytes > 8 + header_len,
        "a safetensors file needs more than {header_len} bytes"
    );
    let data_len = file_bytes - 8 - header_len;
    let mut header = template.replace('N', &data_len.to_string());
    assert!(
        header.len() as u64 <= header_len,
        "the header fits the room made for it"
    );
    while (header.len() as u64) < header_len {
        header.push(' ');
    }
    let mut file = std::io::BufWriter::with_capacity(IO_BLOCK_BYTES, std::fs::File::create(path)?);
    file.write_all(&header_len.to_le_bytes())?;
    file.write_all(header.as_bytes())?;
    let block = scan::pattern(IO_BLOCK_BYTES);
    let mut written = 0u64;
    while written < data_len {
        let n = (data_len - written).min(block.len() as u64) as usize;
        file.write_all(&block[..n])?;
        written += n as u64;
    }
    file.into_inner()
        .map_err(|err| err.into_error())?
        .sync_all()?;
    Ok(())
}

/// Whether `python3` has torch with a CUDA device and safetensors; the reason when not.
fn safetensors_available() -> Result<(), String> {
    let output = Command::new("python3")
        .args(["-c", "import torch, safetensors.torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'"])
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("cannot run python3: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(stderr
            .lines()
            .last()
            .unwrap_or("python3 failed")
            .trim()
            .to_owned())
    }
}

/// Seconds `safetensors.torch.load_file(path, device='cuda')` takes in a subprocess, timed inside
/// Python around the load and a device synchronize (interpreter and import time excluded).
fn safetensors_load_s(path: &Path) -> anyhow::Result<f64> {
    let script = "import sys, time, torch, safetensors.torch as st\n\
                  torch.cuda.init(); torch.zeros(1, device='cuda'); torch.cuda.synchronize()\n\
                  t = time.perf_counter(); d = st.load_file(sys.argv[1], device='cuda'); torch.cuda.synchronize()\n\
                  print(time.perf_counter() - t)";
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .context("cannot run python3 for the safetensors reference")?;
    anyhow::ensure!(
        output.status.success(),
        "safetensors load failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let seconds: f64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("the safetensors reference printed no time")?;
    Ok(seconds.max(1e-9))
}
