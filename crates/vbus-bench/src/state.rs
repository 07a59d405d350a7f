//! `vbus-bench state`: the state bus against the published baselines of the origin documents (page alloc, sparse
//! delta, propagation), and its transaction log against `okaywal` and a raw `fdatasync` loop on
//! the same disk, plus replay speed.

use std::io::Write;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use vbus_state::{Delta, Durability, ElemType, Location, MergeOp, Rule, StateBus};
use vbus_tlog::{Log, LogOptions};

use super::{Better, Device, Measurement, Mode, Reporter, Scratch, median};
use vbus_node::home::Home;
use vbus_node::scan;

const SUITE: &str = "state";
/// MMSB's published figures (its README, "Known hotspots").
const SEED_ALLOC_US: f64 = 5.0;
const SEED_SPARSE_DELTA_US: f64 = 200.0;
const SEED_PROPAGATION_US: f64 = 500.0;
/// Bytes of each record in the append and replay figures.
const RECORD_BYTES: usize = 64;

pub(super) fn run<W: Write>(
    mode: Mode,
    home: &Home,
    reporter: &mut Reporter<W>,
) -> anyhow::Result<()> {
    let (n_allocs, n_deltas, n_waves, append_secs, n_replay) = match mode {
        Mode::Full => (100_000, 20_000, 2_000, 3.0, 10_000_000),
        Mode::Quick => (20_000, 2_000, 200, 0.5, 1_000_000),
    };
    let scratch = Scratch(
        scan::nearest_existing_dir(home.root())
            .join(format!(".vbus-bench-state-{}", std::process::id())),
    );
    std::fs::create_dir_all(&scratch.0)
        .with_context(|| format!("cannot create {}", scratch.0.display()))?;
    reporter.note(&format!(
        "bench state at {}: the bus against the published baselines of the origin documents, its log in async mode \
         (changes queued in memory, written within 5 ms), then in buffered mode (each change \
         written to the OS before it returns: metrics ending _buffered_log); durable appends ({RECORD_BYTES}-byte \
         records, fdatasync) against okaywal 0.3 and a raw write + fdatasync loop; medians of 3",
        scratch.0.display()
    ))?;
    for durability in [Durability::Async, Durability::Buffered] {
        bus_figures(
            &scratch.0, durability, n_allocs, n_deltas, n_waves, reporter,
        )?;
    }

    // Durable appends per second, 1 and 8 writers: ours, okaywal, and a raw fdatasync loop.
    let raw = raw_fdatasync_per_s(&scratch.0.join("raw.bin"), append_secs)?;
    for n_writers in [1usize, 8] {
        let ours = ours_appends_per_s(
            &scratch.0.join(format!("ours{n_writers}")),
            n_writers,
            append_secs,
        )?;
        let okay = okaywal_appends_per_s(
            &scratch.0.join(format!("okaywal{n_writers}")),
            n_writers,
            append_secs,
        )?;
        let metric = format!("durable_appends_{n_writers}_writers");
        reporter.report(Measurement::new(
            SUITE,
            &metric,
            "appends/s",
            Better::Higher,
            ours,
            "okaywal 0.3",
            okay,
            Some(5.0),
            Device::Cpu,
        ))?;
        reporter.report(Measurement::new(
            SUITE,
            &metric,
            "appends/s",
            Better::Higher,
            ours,
            "raw write + fdatasync loop, 1 thread",
            raw,
            None,
            Device::Cpu,
        ))?;
    }

    // Replay: records per second read back through the log (checksums checked).
    let dir = scratch.0.join("replay");
    let (log, _) = Log::open(&dir, LogOptions::default())?;
    let payload = [7u8; RECORD_BYTES];
    let batch: Vec<(u8, &[u8])> = (0..1000).map(|_| (1u8, &payload[..])).collect();
    for _ in 0..n_replay / 1000 {
        log.append_batch(&batch, Durability::Buffered)?;
    }
    log.sync()?;
    let mut samples = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let mut n = 0u64;
        log.read_from(1, |record| {
            n += u64::from(record.payload.len() == RECORD_BYTES);
            Ok(true)
        })?;
        anyhow::ensure!(
            n as usize == n_replay,
            "replay read {n} records of {n_replay}"
        );
        samples.push(n as f64 / started.elapsed().as_secs_f64());
    }
    let replay = median(&mut samples);
    reporter.report(Measurement::new(
        SUITE,
        "replay_records_per_s",
        "records/s",
        Better::Higher,
        replay,
        "DESIGN.md target",
        10_000_000.0,
        Some(1.0),
        Device::Cpu,
    ))?;
    Ok(())
}

/// Page alloc, sparse delta and propagation through the bus with its log in `durability` mode.
fn bus_figures<W: Write>(
    scratch: &Path,
    durability: Durability,
    n_allocs: usize,
    n_deltas: usize,
    n_waves: usize,
    reporter: &mut Reporter<W>,
) -> anyhow::Result<()> {
    let scratch = scratch.join(durability.as_str());
    let suffix = match durability {
        Durability::Async => String::new(),
        other => format!("_{}_log", other.as_str()),
    };
    let us = |started: Instant, n: usize| started.elapsed().as_secs_f64() * 1e6 / n as f64;
    // Page alloc, 4 KiB: create_page end to end (logged), from an arena the bus pre-faulted at
    // open (pooled, pre-faulted arenas; the open is not timed).
    let mut samples = Vec::new();
    for round in 0..3 {
        let bus = StateBus::builder(scratch.join(format!("alloc{round}")))
            .durability(durability)
            .reserve_pages(4096, n_allocs)
            .open()?;
        let started = Instant::now();
        for _ in 0..n_allocs {
            bus.create_page(4096, Location::Cpu)?;
        }
        samples.push(us(started, n_allocs));
    }
    report_vs_seed(
        reporter,
        &format!("page_alloc_4KiB{suffix}"),
        median(&mut samples),
        SEED_ALLOC_US,
        50.0,
    )?;

    // Sparse delta: 1% of a 2 MiB page, in 64-byte runs spread over the page. Each round is
    // followed by the floor the log sets: each delta's record (~21 KB) must reach the page
    // cache, so the same bytes written with plain `write` calls on the same disk, in the same
    // state of the page cache (rounds alternate).
    let mut record = Vec::new();
    vbus_state::delta::encode(&sparse_delta(0), &mut record);
    let (mut samples, mut apply_only, mut floors) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..3 {
        let bus = open_bus(&scratch.join(format!("delta{round}")), durability)?;
        let page = bus.create_page(2 << 20, Location::Cpu)?;
        let deltas: Vec<Delta> = (0..16u64).map(sparse_delta).collect();
        let started = Instant::now();
        for delta_idx in 0..n_deltas {
            bus.update_page(page, &deltas[delta_idx % deltas.len()])?;
        }
        samples.push(us(started, n_deltas));
        apply_only.push(bus.metrics().delta_apply.mean_ns / 1e3);
        drop(bus);
        floors.push(raw_write_us(
            &scratch.join(format!("raw_writes{round}.bin")),
            record.len(),
            n_deltas,
        )?);
    }
    let sparse_us = median(&mut samples);
    report_vs_seed(
        reporter,
        &format!("sparse_delta_1pct_of_2MiB{suffix}"),
        sparse_us,
        SEED_SPARSE_DELTA_US,
        40.0,
    )?;
    let floor_us = median(&mut floors);
    reporter.report(Measurement::new(
        SUITE,
        &format!("sparse_delta_1pct_of_2MiB{suffix}"),
        "µs",
        Better::Lower,
        sparse_us,
        &format!("plain write() of its {} delta bytes", record.len()),
        floor_us,
        None,
        Device::Cpu,
    ))?;
    if suffix.is_empty() {
        // The same updates' in-memory part alone (the bus's own timer, without the log).
        report_vs_seed(
            reporter,
            "sparse_delta_1pct_of_2MiB_apply_only",
            median(&mut apply_only),
            SEED_SPARSE_DELTA_US,
            40.0,
        )?;
    }

    // Propagation: a root feeding a 1,000-page cone (a tree of fan-out 10, i64 sums).
    let (mut samples, mut wave_only) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let bus = open_bus(&scratch.join(format!("cone{round}")), durability)?;
        let root = bus.create_page(64, Location::Cpu)?;
        let mut frontier = vec![root];
        let mut n_cone = 0;
        let rule = Rule::Semiring {
            op: MergeOp::Add,
            elem: ElemType::I64,
        };
        'build: while n_cone < 1000 {
            let mut next = Vec::new();
            for &parent in &frontier {
                for _ in 0..10 {
                    let child = bus.create_page(64, Location::Cpu)?;
                    bus.add_edge(parent, child, rule.clone())?;
                    next.push(child);
                    n_cone += 1;
                    if n_cone == 1000 {
                        break 'build;
                    }
                }
            }
            frontier = next;
        }
        let started = Instant::now();
        for wave in 0..n_waves {
            let delta = Delta::with_op(
                MergeOp::Add,
                ElemType::I64,
                vec![(0, (wave as i64 + 1).to_le_bytes().to_vec())],
            );
            bus.update_page(root, &delta)?;
        }
        samples.push(us(started, n_waves));
        let metrics = bus.metrics();
        anyhow::ensure!(
            metrics.propagation.count as usize >= n_waves,
            "the waves did not propagate"
        );
        wave_only.push(metrics.propagation.mean_ns / 1e3);
    }
    report_vs_seed(
        reporter,
        &format!("propagate_1000_page_cone{suffix}"),
        median(&mut samples),
        SEED_PROPAGATION_US,
        10.0,
    )?;
    if suffix.is_empty() {
        report_vs_seed(
            reporter,
            "propagate_1000_page_cone_wave_only",
            median(&mut wave_only),
            SEED_PROPAGATION_US,
            10.0,
        )?;
    }
    Ok(())
}

/// One of the sparse deltas: 1% of a 2 MiB page, in 64-byte runs spread over the page.
fn sparse_delta(variant: u64) -> Delta {
    let runs = (0..328u64)
        .map(|run| (run * 6392 + variant * 8, vec![variant as u8 + 1; 64]))
        .collect();
    Delta::sparse(runs)
}

/// Microseconds per `write` of `record_bytes` to a new file, `n` of them. The file stays (its
/// dirty pages weigh on the next round as the log's do).
fn raw_write_us(path: &Path, record_bytes: usize, n: usize) -> anyhow::Result<f64> {
    let record = vec![7u8; record_bytes];
    let mut file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let started = Instant::now();
    for _ in 0..n {
        file.write_all(&record)?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / n as f64)
}

fn open_bus(dir: &Path, durability: Durability) -> anyhow::Result<StateBus> {
    Ok(StateBus::builder(dir).durability(durability).open()?)
}

fn report_vs_seed<W: Write>(
    reporter: &mut Reporter<W>,
    metric: &str,
    ours_us: f64,
    seed_us: f64,
    target: f64,
) -> anyhow::Result<()> {
    reporter.report(Measurement::new(
        SUITE,
        metric,
        "µs",
        Better::Lower,
        ours_us,
        "MMSB's published baseline",
        seed_us,
        Some(target),
        Device::Cpu,
    ))?;
    Ok(())
}

/// Runs `n_writers` threads appending for `secs`; returns appends per second (median of 3).
fn threads_per_s(
    n_writers: usize,
    secs: f64,
    append: impl Fn() -> anyhow::Result<()> + Sync,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let counts = super::on_threads(n_writers, |_| {
        let mut n = 0u64;
        while started.elapsed().as_secs_f64() < secs {
            append()?;
            n += 1;
        }
        Ok(n)
    })?;
    Ok(counts.iter().sum::<u64>() as f64 / started.elapsed().as_secs_f64())
}

fn ours_appends_per_s(dir: &Path, n_writers: usize, secs: f64) -> anyhow::Result<f64> {
    let mut samples = Vec::new();
    for round in 0..3 {
        let (log, _) = Log::open(dir.join(round.to_string()), LogOptions::default())?;
        let payload = [1u8; RECORD_BYTES];
        samples.push(threads_per_s(n_writers, secs, || {
            log.append(1, &payload, Durability::Fdatasync)?;
            Ok(())
        })?);
    }
    Ok(median(&mut samples))
}

fn okaywal_appends_per_s(dir: &Path, n_writers: usize, secs: f64) -> anyhow::Result<f64> {
    let mut samples = Vec::new();
    for round in 0..3 {
        let wal = okaywal::WriteAheadLog::recover(dir.join(round.to_string()), okaywal::LogVoid)
            .context("okaywal: cannot open its log")?;
        let payload = [1u8; RECORD_BYTES];
        samples.push(threads_per_s(n_writers, secs, || {
            let mut entry = wal.begin_entry()?;
            entry.write_chunk(&payload)?;
            entry.commit()?;
            Ok(())
        })?);
        wal.shutdown().context("okaywal: shutdown")?;
    }
    Ok(median(&mut samples))
}

/// One thread writing a record at the end of a file and fdatasyncing it, as fast as it can.
fn raw_fdatasync_per_s(path: &Path, secs: f64) -> anyhow::Result<f64> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.set_len(64 << 20)?;
    file.sync_all()?;
    let payload = [1u8; RECORD_BYTES];
    let mut samples = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed().as_secs_f64() < secs {
            file.write_all_at(&payload, (n % 1_000_000) * RECORD_BYTES as u64)?;
            file.sync_data()?;
            n += 1;
        }
        samples.push(n as f64 / started.elapsed().as_secs_f64());
    }
    Ok(median(&mut samples))
}
