//! VBUS benchmarks, `vbus-bench SUITE [--quick] [--json]`: every figure beside its reference
//! measured in the same run, and the ratio (oriented so that above 1 is better). The reference
//! crates (quick_cache, moka, foyer-memory, okaywal) are linked here only, not into `vbus`.

mod api;
mod cache;
mod gpu;
mod scan;
mod state;
mod store;
mod sync;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context as _;

use serde::Serialize;

use vbus_node::home::Home;

/// The first argument that makes `vbus-bench` run the daemon (`vbus up`) for the `api` suite.
pub const DAEMON_ARG: &str = "__daemon";

/// The suites `vbus-bench` knows, with one line each.
pub const SUITES: [(&str, &str); 7] = [
    (
        "api",
        "the daemon's HTTP API (64 connections, a large object) against the library in process",
    ),
    (
        "cache",
        "the L2 memory tier against quick_cache and moka: ops/s, hit ratio per policy, index bytes",
    ),
    (
        "gpu",
        "copies, a model file into VRAM and pool allocation against raw driver operations",
    ),
    (
        "scan",
        "disk read and write at the home against dd on the same file",
    ),
    (
        "state",
        "the state bus against MMSB's published baselines; its log against okaywal and raw fdatasync",
    ),
    (
        "store",
        "the L3 store's writes, reads and reopen against plain std::fs",
    ),
    (
        "sync",
        "a dataset to several rate-limited agents, peer to peer against the master alone",
    ),
];

/// Full run or a smoke test of a few seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Sizes and rounds that give stable figures.
    Full,
    /// Small sizes, for CI.
    Quick,
}

/// Table for people, or one JSON object per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned table.
    Table,
    /// JSON lines with the keys of STYLE.md.
    Json,
}

/// Where the measured code ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// A real CUDA device.
    Cuda,
    /// The simulated device (host memory).
    Simulated,
    /// No device involved.
    Cpu,
}

/// One figure beside its same-run reference.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// The suite's name.
    pub suite: &'static str,
    /// What was measured, snake case.
    pub metric: String,
    /// Our figure.
    pub ours: f64,
    /// Unit of `ours` and `reference_value`.
    pub unit: &'static str,
    /// What the reference is.
    pub reference: String,
    /// The reference's figure, from the same run.
    pub reference_value: f64,
    /// Ours over the reference, or the reference over ours when lower is better: above 1 is better.
    pub ratio: f64,
    /// The ratio DESIGN.md asks for, if any.
    pub target: Option<f64>,
    /// Where it ran.
    pub device: Device,
}

/// Whether a larger figure is better (rates) or a smaller one (latencies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Rates, operations per second.
    Higher,
    /// Latencies, times.
    Lower,
}

impl Measurement {
    /// A figure and its reference; the ratio is oriented by `better`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        suite: &'static str,
        metric: &str,
        unit: &'static str,
        better: Better,
        ours: f64,
        reference: &str,
        reference_value: f64,
        target: Option<f64>,
        device: Device,
    ) -> Self {
        let ratio = match better {
            Better::Higher => ours / reference_value,
            Better::Lower => reference_value / ours,
        };
        Self {
            suite,
            metric: metric.to_owned(),
            ours,
            unit,
            reference: reference.to_owned(),
            reference_value,
            ratio: if ratio.is_finite() { ratio } else { 0.0 },
            target,
            device,
        }
    }
}

/// Prints measurements as they arrive, so long suites show progress.
#[derive(Debug)]
pub struct Reporter<W: Write> {
    out: W,
    format: Format,
    header_printed: bool,
    measurements: Vec<Measurement>,
}

impl<W: Write> Reporter<W> {
    /// A reporter writing to `out`.
    pub fn new(out: W, format: Format) -> Self {
        Self {
            out,
            format,
            header_printed: false,
            measurements: Vec::new(),
        }
    }

    /// A line of context before the figures (table format only).
    pub fn note(&mut self, text: &str) -> std::io::Result<()> {
        if self.format == Format::Table {
            writeln!(self.out, "{text}")?;
        }
        Ok(())
    }

    /// Prints one measurement.
    pub fn report(&mut self, measurement: Measurement) -> std::io::Result<()> {
        match self.format {
            Format::Json => {
                let line = serde_json::to_string(&measurement).map_err(std::io::Error::other)?;
                writeln!(self.out, "{line}")?;
            }
            Format::Table => {
                if !self.header_printed {
                    writeln!(
                        self.out,
                        "{:<34} {:>14}  {:<34} {:>14}  {:>8}  {:>7}",
                        "metric", "ours", "reference", "reference", "ratio", "target"
                    )?;
                    self.header_printed = true;
                }
                let target = match measurement.target {
                    Some(target) => {
                        let verdict = if measurement.ratio >= target {
                            "met"
                        } else {
                            "MISSED"
                        };
                        format!("{target:.2}x {verdict}")
                    }
                    None => "-".to_owned(),
                };
                writeln!(
                    self.out,
                    "{:<34} {:>14}  {:<34} {:>14}  {:>7.2}x  {:>7}",
                    measurement.metric,
                    format!("{:.3} {}", measurement.ours, measurement.unit),
                    measurement.reference,
                    format!("{:.3} {}", measurement.reference_value, measurement.unit),
                    measurement.ratio,
                    target
                )?;
            }
        }
        self.out.flush()?;
        self.measurements.push(measurement);
        Ok(())
    }

    /// Everything reported so far.
    pub fn measurements(&self) -> &[Measurement] {
        &self.measurements
    }
}

/// Options some suites take.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `cache` only: replay this trace (one access per line, `KEY` or `KEY SIZE_BYTES`).
    pub trace: Option<std::path::PathBuf>,
    /// `cache --trace` only: the tier's capacity in bytes.
    pub capacity_bytes: Option<u64>,
}

/// Runs one suite.
pub fn run<W: Write>(
    suite: &str,
    mode: Mode,
    options: &Options,
    home: &Home,
    reporter: &mut Reporter<W>,
) -> anyhow::Result<()> {
    if suite != "cache" && (options.trace.is_some() || options.capacity_bytes.is_some()) {
        anyhow::bail!("--trace and --capacity belong to `vbus-bench cache`, not {suite:?}");
    }
    if options.capacity_bytes.is_some() && options.trace.is_none() {
        anyhow::bail!("--capacity sets the capacity of a --trace replay; give --trace FILE too");
    }
    match suite {
        "cache" => {
            let trace = options
                .trace
                .as_deref()
                .map(|path| (path, options.capacity_bytes));
            cache::run(mode, trace, reporter)
        }
        "api" => api::run(mode, home, reporter),
        "scan" => scan::run(mode, home, reporter),
        "state" => state::run(mode, home, reporter),
        "store" => store::run(mode, home, reporter),
        "sync" => sync::run(mode, home, reporter),
        "gpu" => gpu::run(mode, home, reporter),
        _ => {
            let known: Vec<&str> = SUITES.iter().map(|(name, _)| *name).collect();
            anyhow::bail!(
                "unknown bench suite {suite:?}; suites: {}",
                known.join(", ")
            )
        }
    }
}

/// Runs `work(thread_idx)` on `n_threads` threads at once; returns their results in thread order,
/// or the first error (a panic in one is resumed here).
fn on_threads<T: Send>(
    n_threads: usize,
    work: impl Fn(usize) -> anyhow::Result<T> + Sync,
) -> anyhow::Result<Vec<T>> {
    let results: Vec<anyhow::Result<T>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n_threads)
            .map(|thread_idx| {
                let work = &work;
                scope.spawn(move || work(thread_idx))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    results.into_iter().collect()
}

/// A file or directory a suite works in, removed when dropped (also on error or panic).
#[derive(Debug)]
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn remove(&self) {
        let _ = std::fs::remove_file(&self.0).or_else(|_| std::fs::remove_dir_all(&self.0));
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Runs `dd` with `args` and returns `n_bytes` over its wall time, in GB/s.
pub(crate) fn time_dd(args: &[&str], n_bytes: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let status = Command::new("dd")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run dd, a reference of `vbus-bench` (install coreutils)")?;
    let rate = gbps(n_bytes, started);
    anyhow::ensure!(status.success(), "dd {} failed: {status}", args.join(" "));
    Ok(rate)
}

/// `n_bytes` moved since `started`, in GB/s (10^9 bytes per second).
pub(crate) fn gbps(n_bytes: u64, started: Instant) -> f64 {
    n_bytes as f64 / started.elapsed().as_secs_f64().max(1e-9) / 1e9
}

/// The median of some samples (upper median for an even count); 0 for none.
pub fn median(samples: &mut [f64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_is_oriented_so_that_above_one_is_better() {
        let faster = Measurement::new(
            "t",
            "rate",
            "GB/s",
            Better::Higher,
            2.0,
            "ref",
            1.0,
            None,
            Device::Cpu,
        );
        assert_eq!(faster.ratio, 2.0);
        let quicker = Measurement::new(
            "t",
            "latency",
            "us",
            Better::Lower,
            1.0,
            "ref",
            4.0,
            Some(2.0),
            Device::Cpu,
        );
        assert_eq!(quicker.ratio, 4.0);
    }

    #[test]
    fn json_lines_carry_the_style_keys() {
        let mut reporter = Reporter::new(Vec::new(), Format::Json);
        let measurement = Measurement::new(
            "t",
            "rate",
            "GB/s",
            Better::Higher,
            3.0,
            "dd",
            2.0,
            Some(0.9),
            Device::Cpu,
        );
        reporter.report(measurement).unwrap();
        let line: serde_json::Value = serde_json::from_slice(&reporter.out).unwrap();
        for key in [
            "suite",
            "metric",
            "ours",
            "unit",
            "reference",
            "reference_value",
            "ratio",
            "target",
            "device",
        ] {
            assert!(line.get(key).is_some(), "missing {key}");
        }
        assert_eq!(line["ratio"], 1.5);
        assert_eq!(line["device"], "cpu");
    }

    #[test]
    fn table_marks_missed_targets() {
        let mut reporter = Reporter::new(Vec::new(), Format::Table);
        let measurement = Measurement::new(
            "t",
            "rate",
            "GB/s",
            Better::Higher,
            1.0,
            "dd",
            2.0,
            Some(0.9),
            Device::Cpu,
        );
        reporter.report(measurement).unwrap();
        let text = String::from_utf8(reporter.out).unwrap();
        assert!(text.contains("0.50x") && text.contains("MISSED"), "{text}");
    }

    #[test]
    fn median_of_samples() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut []), 0.0);
    }

    #[test]
    fn unknown_suite_lists_the_known_ones() {
        let home = Home::resolve(Some(std::path::Path::new("/nonexistent"))).unwrap();
        let mut reporter = Reporter::new(Vec::new(), Format::Table);
        let err = run(
            "nope",
            Mode::Quick,
            &Options::default(),
            &home,
            &mut reporter,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("suites: api, cache, gpu, scan, state, store"),
            "{err}"
        );
    }
}
