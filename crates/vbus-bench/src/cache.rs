//! `vbus-bench cache`: the memory tier (L2) against `quick_cache` and `moka` on the same key
//! streams: operations per second, hit ratio per policy, and index bytes per entry. With
//! `--trace FILE`, a replay of a recorded access trace through each policy.

use std::io::{BufRead as _, Read as _, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use vbus_cache::replay::Zipf;
use vbus_cache::{MemoryTier, PolicyKind};

use super::{Better, Device, Measurement, Mode, Reporter, gbps, median};

const SUITE: &str = "cache";

/// DESIGN.md: index overhead at most this many bytes per entry beyond the value.
const INDEX_BYTES_PER_ENTRY_MAX: f64 = 256.0;

/// One of the caches compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contender {
    Ours(PolicyKind),
    QuickCache,
    Moka,
    /// foyer's in-memory cache with the same policy as ours.
    Foyer(PolicyKind),
}

impl Contender {
    fn name(self) -> String {
        match self {
            Self::Ours(kind) => format!("vbus {}", kind.as_str()),
            Self::QuickCache => "quick_cache 0.7".to_owned(),
            Self::Moka => "moka 0.12 (sync)".to_owned(),
            Self::Foyer(kind) => format!("foyer-memory 0.22 {}", kind.as_str()),
        }
    }
}

/// A cache behind the get-then-insert-on-miss loop. Six are built per run, so the size of the
/// largest (our tier holds its per-thread counters' bucket table inline) does not matter, while
/// boxing it would add a load to every one of our operations that the references do not pay.
#[allow(clippy::large_enum_variant)]
enum Built {
    Ours(MemoryTier<u64, u64>),
    QuickCache(quick_cache::sync::Cache<u64, u64>),
    Moka(moka::sync::Cache<u64, u64>),
    Foyer(foyer_memory::Cache<u64, u64>),
}

impl Built {
    fn new(contender: Contender, capacity_entries: u64) -> Self {
        match contender {
            Contender::Ours(kind) => {
                let tier =
                    MemoryTier::new(kind, capacity_entries, vbus_cache::memory::default_shards());
                // The same hint quick_cache's `new` takes: how many entries it will hold.
                tier.reserve(capacity_entries as usize);
                Self::Ours(tier)
            }
            Contender::QuickCache => {
                Self::QuickCache(quick_cache::sync::Cache::new(capacity_entries as usize))
            }
            Contender::Moka => Self::Moka(moka::sync::Cache::new(capacity_entries)),
            Contender::Foyer(kind) => {
                let eviction: foyer_memory::EvictionConfig = match kind {
                    PolicyKind::Lru => foyer_memory::LruConfig::default().into(),
                    PolicyKind::S3Fifo => foyer_memory::S3FifoConfig::default().into(),
                    PolicyKind::Sieve => foyer_memory::SieveConfig.into(),
                };
                Self::Foyer(
                    foyer_memory::CacheBuilder::new(capacity_entries as usize)
                        .with_eviction_config(eviction)
                        .build(),
                )
            }
        }
    }

    /// Get, and insert on a miss; returns whether it hit.
    #[inline]
    fn get_or_insert(&self, key: u64) -> bool {
        match self {
            Self::Ours(tier) => {
                if tier.get(&key).is_some() {
                    return true;
                }
                tier.insert_with(key, key, 1, |_, _, _| {});
                false
            }
            Self::QuickCache(cache) => {
                if cache.get(&key).is_some() {
                    return true;
                }
                cache.insert(key, key);
                false
            }
            Self::Moka(cache) => {
                if cache.get(&key).is_some() {
                    return true;
                }
                cache.insert(key, key);
                false
            }
            Self::Foyer(cache) => {
                if cache.get(&key).is_some() {
                    return true;
                }
                cache.insert(key, key);
                false
            }
        }
    }
}

pub(super) fn run<W: Write>(
    mode: Mode,
    trace: Option<(&Path, Option<u64>)>,
    reporter: &mut Reporter<W>,
) -> anyhow::Result<()> {
    if let Some((path, capacity)) = trace {
        return replay_trace(path, capacity, reporter);
    }
    // Full: DESIGN.md's 1 M keys and 100 k capacity. Quick: ten times smaller, so the short
    // stream still cycles the cache many times.
    let (n_keys, capacity_entries, n_ops_per_thread): (u64, u64, usize) = match mode {
        Mode::Full => (1_000_000, 100_000, 4_000_000),
        Mode::Quick => (100_000, 10_000, 400_000),
    };
    reporter.note(&format!(
        "bench cache: Zipf over {n_keys} keys, capacity {capacity_entries} entries, get then insert on a miss, \
         {n_ops_per_thread} operations per thread in chunks taking turns across contenders, medians of passes; ours is the L2 memory tier \
         ({} shards, as the daemon's: 4 per core) with each policy",
        vbus_cache::memory::default_shards()
    ))?;

    // Operations per second, Zipf 1.0, 1 and 2 threads.
    let streams: Vec<Vec<u64>> = (0..2)
        .map(|thread_idx| {
            let mut zipf = Zipf::new(n_keys, 1.0, 17 + thread_idx);
            (0..n_ops_per_thread).map(|_| zipf.next_key()).collect()
        })
        .collect();
    // Every contender is built and warmed, then the stream runs in short chunks that take turns
    // across contenders (in rotating order): the machine's drift over seconds, which moved whole
    // rounds by up to 2x on shared VMs, falls on every contender alike. Each pass over the
    // stream gives one rate per contender; medians of the passes.
    let n_passes = match mode {
        Mode::Full => 5,
        Mode::Quick => 3,
    };
    // Ours with each policy (LRU is the default), then the references.
    let contenders = [
        Contender::Ours(PolicyKind::Lru),
        Contender::Ours(PolicyKind::S3Fifo),
        Contender::Ours(PolicyKind::Sieve),
        Contender::QuickCache,
        Contender::Moka,
        Contender::Foyer(PolicyKind::S3Fifo),
    ];
    for n_threads in [1usize, 2] {
        let samples = interleaved_ops_per_s(
            &contenders,
            capacity_entries,
            &streams[..n_threads],
            n_passes,
        );
        let [lru, s3fifo, sieve, quick, moka, foyer] = samples.map(|mut rates| median(&mut rates));
        for (kind, ours) in [
            (PolicyKind::Lru, lru),
            (PolicyKind::S3Fifo, s3fifo),
            (PolicyKind::Sieve, sieve),
        ] {
            for (reference, reference_ops, target) in [
                (Contender::QuickCache, quick, Some(1.0)),
                (Contender::Moka, moka, Some(5.0)),
                (Contender::Foyer(PolicyKind::S3Fifo), foyer, None),
            ] {
                reporter.report(Measurement::new(
                    SUITE,
                    &format!(
                        "ops_per_s_zipf1.0_{n_threads}_thread{}_{}",
                        if n_threads > 1 { "s" } else { "" },
                        kind.as_str()
                    ),
                    "ops/s",
                    Better::Higher,
                    ours,
                    &reference.name(),
                    reference_ops,
                    target,
                    Device::Cpu,
                ))?;
            }
        }
    }

    // Hit ratio of each policy beside each reference, on the same single-threaded streams.
    for exponent in [0.9, 1.0] {
        let mut zipf = Zipf::new(n_keys, exponent, 5);
        let stream: Vec<u64> = (0..n_ops_per_thread).map(|_| zipf.next_key()).collect();
        let references: Vec<(Contender, f64)> = [Contender::QuickCache, Contender::Moka]
            .into_iter()
            .map(|contender| (contender, hit_ratio(contender, capacity_entries, &stream)))
            .collect();
        for kind in PolicyKind::ALL {
            let ours = hit_ratio(Contender::Ours(kind), capacity_entries, &stream);
            let foyer = Contender::Foyer(kind);
            let same_policy = [(foyer, hit_ratio(foyer, capacity_entries, &stream))];
            for (reference, reference_ratio) in references.iter().chain(&same_policy) {
                reporter.report(Measurement::new(
                    SUITE,
                    &format!("hit_ratio_zipf{exponent:.1}_{}", kind.as_str()),
                    "hit ratio",
                    Better::Higher,
                    ours,
                    &reference.name(),
                    *reference_ratio,
                    None,
                    Device::Cpu,
                ))?;
            }
        }
    }

    movement(mode, reporter)?;

    // Index bytes per entry: what the tier's structures allocate per entry beyond the value.
    let n_entries = match mode {
        Mode::Full => 1_000_000u64,
        Mode::Quick => 100_000,
    };
    let tier: MemoryTier<u64, u64> = MemoryTier::new(
        PolicyKind::S3Fifo,
        n_entries,
        vbus_cache::memory::default_shards(),
    );
    let mut zipf = Zipf::new(n_entries * 10, 0.9, 3);
    for _ in 0..n_entries * 3 {
        let key = zipf.next_key();
        let _ = tier.insert(key, key, 1);
    }
    let held = tier.stats().n_entries.max(1);
    let bytes_per_entry =
        tier.index_bytes() as f64 / held as f64 - std::mem::size_of::<u64>() as f64;
    reporter.report(Measurement::new(
        SUITE,
        "index_bytes_per_entry_s3fifo_u64_keys",
        "bytes",
        Better::Lower,
        bytes_per_entry,
        "DESIGN.md limit",
        INDEX_BYTES_PER_ENTRY_MAX,
        Some(1.0),
        Device::Cpu,
    ))?;
    Ok(())
}

/// Moves values between the tiers of a `CacheManager` and times each move beside a plain copy
/// of the same bytes: L3 → L2 (a get after a reopen, which checks each MiB against its XXH3)
/// beside `std::fs::read` of the same files; L2 → L1 (a device get) beside a raw host→device
/// copy; and L1 → host (a get that only L1 can answer) beside a raw device→host copy.
fn movement<W: Write>(mode: Mode, reporter: &mut Reporter<W>) -> anyhow::Result<()> {
    let (n_values, value_bytes) = match mode {
        Mode::Full => (64u64, 16u64 << 20),
        Mode::Quick => (16, 4 << 20),
    };
    let total_bytes = n_values * value_bytes;
    let scratch = super::Scratch(
        std::env::temp_dir().join(format!(".vbus-bench-cache-{}", std::process::id())),
    );
    let l3_dir = scratch.0.join("L3_DISK");
    let device = vbus_gpu::Device::open(&vbus_gpu::DeviceOptions {
        capacity_bytes: 2 * total_bytes + (64 << 20),
        host_capacity_bytes: total_bytes + (64 << 20),
        ..vbus_gpu::DeviceOptions::default()
    })?;
    let on = match device.kind() {
        vbus_gpu::BackendKind::Cuda => Device::Cuda,
        vbus_gpu::BackendKind::Simulated => Device::Simulated,
    };
    let keys: Vec<String> = (0..n_values)
        .map(|value_idx| format!("bench/v{value_idx}"))
        .collect();
    {
        let cache = vbus_cache::CacheManager::builder()
            .l3_dir(&l3_dir)
            .l2_capacity_bytes(0)
            .build()?;
        let bytes = vbus_node::scan::pattern(value_bytes as usize);
        for key in &keys {
            cache.put(key.as_str(), &bytes)?;
        }
    }
    let rate = |started: Instant| gbps(total_bytes, started);
    // Reference first: the page cache is as warm for both. It keeps what it reads, as a RAM tier
    // must (dropping each buffer would let the allocator reuse warm pages the tier cannot). On a
    // GPU our values land in the page-locked pool, grown (and so faulted in) before the clock
    // starts, as a running daemon's is; the reference's buffers are then faulted in beforehand
    // too, so neither side counts first-touch page faults (about 1.5 GB/s on the lent H100
    // machine). On the simulated device both read into fresh heap memory.
    let prefaulted = on == Device::Cuda;
    let mut kept: Vec<Vec<u8>> = Vec::with_capacity(keys.len());
    if prefaulted {
        for _ in &keys {
            kept.push(vec![1u8; value_bytes as usize]);
        }
    }
    let started = Instant::now();
    for (key_idx, key) in keys.iter().enumerate() {
        let path = l3_dir.join(key);
        if prefaulted {
            std::fs::File::open(&path)?.read_exact(&mut kept[key_idx])?;
        } else {
            kept.push(std::fs::read(&path)?);
        }
    }
    let plain_read = rate(started);
    drop(kept);
    let cache = vbus_cache::CacheManager::builder()
        .l3_dir(&l3_dir)
        .l2_capacity_bytes(total_bytes + (1 << 20))
        .l2_shards(1)
        .l1_device(device.clone())
        .l1_capacity_bytes(total_bytes)
        .build()?;
    // The page-locked pool holds L2's chunks, as a running daemon's has long done.
    device.grow_host_pool(total_bytes)?;
    let started = Instant::now();
    for key in &keys {
        cache.get(key.as_str())?.context("a value vanished")?;
    }
    let l3_to_l2 = rate(started);
    // The device pool takes its chunks once, as a running daemon's has long done.
    drop(device.alloc(total_bytes)?);
    let started = Instant::now();
    for key in &keys {
        cache
            .get_device(key.as_str())?
            .context("a value vanished")?;
    }
    let l2_to_l1 = rate(started);
    drop(cache);
    // L1 alone: L2 off, so a host get is answered by copying back from the device.
    let cache = vbus_cache::CacheManager::builder()
        .l3_dir(&l3_dir)
        .l2_capacity_bytes(0)
        .l1_device(device.clone())
        .l1_capacity_bytes(total_bytes)
        .build()?;
    for key in &keys {
        cache
            .get_device(key.as_str())?
            .context("a value vanished")?;
    }
    let started = Instant::now();
    for key in &keys {
        cache.get(key.as_str())?.context("a value vanished")?;
    }
    let l1_to_host = rate(started);
    anyhow::ensure!(
        cache.get_stats().l1.hits >= n_values,
        "the host gets were not answered by L1"
    );
    drop(cache);
    let (l2_to_l3, plain_write) = write_back_flush(&scratch.0, n_values, value_bytes)?;
    // The raw copies move as many bytes as the tiers did, not one buffer again and again.
    let (raw_h2d, raw_d2h) = vbus_gpu::reference::raw_copy_gbps(&device, total_bytes, 2)?;
    for (metric, ours, reference, reference_value) in [
        (
            "move_l3_to_l2",
            l3_to_l2,
            if prefaulted {
                "std::fs read of the L3 files into faulted-in buffers (ours checks XXH3 per MiB)"
            } else {
                "std::fs::read of the L3 files (ours checks XXH3 per MiB)"
            },
            plain_read,
        ),
        (
            "move_l2_to_l3 (write-back flush)",
            l2_to_l3,
            "std::fs::write + sync_all of the same files",
            plain_write,
        ),
        ("move_l2_to_l1", l2_to_l1, "raw host→device copy", raw_h2d),
        (
            "move_l1_to_host",
            l1_to_host,
            "raw device→host copy",
            raw_d2h,
        ),
    ] {
        let on_host = metric.starts_with("move_l3") || metric.starts_with("move_l2_to_l3");
        let metric = match on {
            Device::Simulated if !on_host => format!("{metric} (simulated)"),
            _ => metric.to_owned(),
        };
        reporter.report(Measurement::new(
            SUITE,
            &metric,
            "GB/s",
            Better::Higher,
            ours,
            reference,
            reference_value,
            None,
            if on_host { Device::Cpu } else { on },
        ))?;
    }
    Ok(())
}

/// GB/s of a write-back cache's flush of `n_values` dirty values to L3, and of writing the same
/// files with `std::fs::write` + `sync_all`; four rounds with the order alternating (this VM's disk
/// is faster in bursts), the median of each.
fn write_back_flush(scratch: &Path, n_values: u64, value_bytes: u64) -> anyhow::Result<(f64, f64)> {
    let bytes = vbus_node::scan::pattern(value_bytes as usize);
    let (mut ours, mut plain) = (Vec::new(), Vec::new());
    for round_idx in 0..4usize {
        for first in [round_idx % 2 == 0, round_idx % 2 == 1] {
            if first {
                ours.push(flush_once(scratch, round_idx, n_values, &bytes)?);
            } else {
                plain.push(plain_writes_once(scratch, round_idx, n_values, &bytes)?);
            }
        }
    }
    Ok((median(&mut ours), median(&mut plain)))
}

fn flush_once(
    scratch: &Path,
    round_idx: usize,
    n_values: u64,
    bytes: &[u8],
) -> anyhow::Result<f64> {
    let total_bytes = n_values * bytes.len() as u64;
    let l3_dir = scratch.join(format!("WB_L3_{round_idx}"));
    let cache = vbus_cache::CacheManager::builder()
        .l3_dir(&l3_dir)
        .l2_capacity_bytes(total_bytes + (1 << 20))
        .l2_shards(1)
        .write_mode(vbus_cache::WriteMode::Back)
        .build()?;
    for value_idx in 0..n_values {
        cache.put(format!("wb/v{value_idx}").as_str(), bytes)?;
    }
    anyhow::ensure!(
        cache.get_stats().dirty_entries == n_values,
        "the write-back puts did not stay in memory"
    );
    let started = Instant::now();
    cache.flush()?;
    let rate = gbps(total_bytes, started);
    drop(cache);
    std::fs::remove_dir_all(&l3_dir)?;
    Ok(rate)
}

fn plain_writes_once(
    scratch: &Path,
    round_idx: usize,
    n_values: u64,
    bytes: &[u8],
) -> anyhow::Result<f64> {
    let plain_dir = scratch.join(format!("PLAIN_{round_idx}"));
    std::fs::create_dir_all(&plain_dir)?;
    let started = Instant::now();
    for value_idx in 0..n_values {
        let path = plain_dir.join(format!("v{value_idx}"));
        let mut file = std::fs::File::create(&path)?;
        std::io::Write::write_all(&mut file, bytes)?;
        file.sync_all()?;
    }
    let rate = gbps(n_values * bytes.len() as u64, started);
    std::fs::remove_dir_all(&plain_dir)?;
    Ok(rate)
}

/// Chunks a pass over the streams is cut into; each contender runs one chunk per turn.
const CHUNKS_PER_PASS: usize = 20;

/// Operations per second of `streams.len()` threads running get-then-insert-on-miss, for each
/// contender and each of `n_passes` passes over the streams. All contenders are built and warmed
/// with the first stream first; then each chunk of a pass runs on every contender in turn (the
/// first contender of a turn rotates), each timed alone, and a pass's rate is its operations
/// over its chunks' summed time.
fn interleaved_ops_per_s<const N: usize>(
    contenders: &[Contender; N],
    capacity_entries: u64,
    streams: &[Vec<u64>],
    n_passes: usize,
) -> [Vec<f64>; N] {
    let caches: Vec<Built> = contenders
        .iter()
        .map(|&contender| {
            let cache = Built::new(contender, capacity_entries);
            for &key in &streams[0] {
                cache.get_or_insert(key);
            }
            cache
        })
        .collect();
    let stream_len = streams.iter().map(Vec::len).min().unwrap_or(0);
    let chunk_len = stream_len.div_ceil(CHUNKS_PER_PASS).max(1);
    let mut rates: [Vec<f64>; N] = std::array::from_fn(|_| Vec::with_capacity(n_passes));
    for _ in 0..n_passes {
        let mut elapsed = [std::time::Duration::ZERO; N];
        for (chunk_idx, start) in (0..stream_len).step_by(chunk_len).enumerate() {
            let end = (start + chunk_len).min(stream_len);
            for offset in 0..N {
                let idx = (chunk_idx + offset) % N;
                elapsed[idx] += run_chunk(&caches[idx], streams, start..end);
            }
        }
        let n_ops = (stream_len * streams.len()) as f64;
        for (rate, took) in rates.iter_mut().zip(elapsed) {
            rate.push(n_ops / took.as_secs_f64().max(1e-9));
        }
    }
    rates
}

/// Runs `range` of each stream on a thread of its own against `cache`; returns the time taken.
fn run_chunk(
    cache: &Built,
    streams: &[Vec<u64>],
    range: std::ops::Range<usize>,
) -> std::time::Duration {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for stream in streams {
            let keys = &stream[range.clone()];
            scope.spawn(move || {
                let mut hits = 0u64;
                for &key in keys {
                    hits += u64::from(cache.get_or_insert(key));
                }
                std::hint::black_box(hits);
            });
        }
    });
    started.elapsed()
}

/// Hits over accesses after a warm-up pass of the same stream.
fn hit_ratio(contender: Contender, capacity_entries: u64, stream: &[u64]) -> f64 {
    let cache = Built::new(contender, capacity_entries);
    let warm_up = stream.len() / 4;
    for &key in &stream[..warm_up] {
        cache.get_or_insert(key);
        if let Built::Moka(moka) = &cache {
            moka.run_pending_tasks();
        }
    }
    let mut hits = 0u64;
    for &key in &stream[warm_up..] {
        hits += u64::from(cache.get_or_insert(key));
        // moka applies evictions in batches; running them keeps its hit ratio its own, not an
        // artefact of a temporarily oversized cache.
        if let Built::Moka(moka) = &cache {
            moka.run_pending_tasks();
        }
    }
    hits as f64 / (stream.len() - warm_up) as f64
}

/// Replays a trace (one access per line: `KEY` or `KEY SIZE_BYTES`) through each policy of the
/// memory tier, at `capacity` (bytes; default a tenth of the distinct keys' bytes).
fn replay_trace<W: Write>(
    path: &Path,
    capacity: Option<u64>,
    reporter: &mut Reporter<W>,
) -> anyhow::Result<()> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open the trace {}", path.display()))?;
    let mut accesses: Vec<(u64, u64)> = Vec::new();
    let mut sizes = std::collections::HashMap::new();
    let hasher =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
    for (line_idx, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        let mut fields = line.split_whitespace();
        let Some(key) = fields.next() else { continue };
        let size_bytes = match fields.next() {
            Some(size) => size.parse::<u64>().with_context(|| {
                format!(
                    "{}:{}: size {size:?} is not a byte count",
                    path.display(),
                    line_idx + 1
                )
            })?,
            None => 1,
        };
        anyhow::ensure!(
            fields.next().is_none(),
            "{}:{}: expected `KEY` or `KEY SIZE_BYTES`",
            path.display(),
            line_idx + 1
        );
        let key = std::hash::BuildHasher::hash_one(&hasher, key);
        sizes.insert(key, size_bytes);
        accesses.push((key, size_bytes));
    }
    anyhow::ensure!(
        !accesses.is_empty(),
        "the trace {} holds no access",
        path.display()
    );
    let distinct_bytes: u64 = sizes.values().sum();
    let capacity = capacity.unwrap_or((distinct_bytes / 10).max(1));
    reporter.note(&format!(
        "bench cache --trace {}: {} accesses, {} distinct keys ({} bytes), capacity {capacity} bytes",
        path.display(),
        accesses.len(),
        sizes.len(),
        distinct_bytes
    ))?;
    let lru =
        vbus_cache::replay::replay(PolicyKind::Lru, capacity, accesses.iter().copied()).hit_ratio();
    for kind in PolicyKind::ALL {
        let stats = vbus_cache::replay::replay(kind, capacity, accesses.iter().copied());
        reporter.report(Measurement::new(
            SUITE,
            &format!("trace_hit_ratio_{}", kind.as_str()),
            "hit ratio",
            Better::Higher,
            stats.hit_ratio(),
            "vbus lru on the same trace",
            lru,
            None,
            Device::Cpu,
        ))?;
    }
    Ok(())
}
