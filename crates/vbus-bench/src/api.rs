//! `vbus-bench api`: the daemon's HTTP API against the library underneath, in the same run: small
//! object gets at 64 connections (rate, p50, p99), and a large object's PUT and GET throughput.
//!
//! The daemon is `vbus up` run by this binary (`vbus-bench __daemon HOME LISTEN`) on a scratch
//! home and a free loopback port.

use std::io::{BufRead as _, BufReader, Read as _, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{Better, Device, Measurement, Mode, Reporter, Scratch, gbps};
use vbus_node::home::Home;
use vbus_node::scan;

const SUITE: &str = "api";
const N_CONNECTIONS: usize = 64;
const SMALL_OBJECT_BYTES: usize = 4096;
const N_SMALL_OBJECTS: usize = 1000;

/// The daemon child, killed when dropped.
struct DaemonChild {
    child: Child,
    addr: String,
}

impl Drop for DaemonChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_daemon(home: &std::path::Path) -> anyhow::Result<DaemonChild> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut child = Command::new(exe)
        .arg(super::DAEMON_ARG)
        .arg(home)
        .arg("127.0.0.1:0")
        .env_remove("VBUS_HOME")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start the daemon")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut daemon = DaemonChild {
        child,
        addr: String::new(),
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(64);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                // Keep draining so the daemon never blocks on a full pipe.
                continue;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while daemon.addr.is_empty() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .context("the daemon did not say where it listens within 60 s")?;
        if let Some(rest) = line.split("listening on http://").nth(1) {
            daemon.addr = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
    }
    Ok(daemon)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections_per_host(N_CONNECTIONS)
        .build()
        .into()
}

pub(super) fn run<W: Write>(
    mode: Mode,
    home: &Home,
    reporter: &mut Reporter<W>,
) -> anyhow::Result<()> {
    let (secs, large_bytes) = match mode {
        Mode::Full => (10.0, 1u64 << 30),
        Mode::Quick => (2.0, 64u64 << 20),
    };
    let scratch = Scratch(
        scan::nearest_existing_dir(home.root())
            .join(format!(".vbus-bench-api-{}", std::process::id())),
    );
    std::fs::create_dir_all(&scratch.0)
        .with_context(|| format!("cannot create {}", scratch.0.display()))?;
    reporter.note(&format!(
        "bench api: a daemon on loopback with its home in {}; {N_CONNECTIONS} connections getting \
         {SMALL_OBJECT_BYTES}-byte objects for {secs} s; a {} object PUT and GET; references: the \
         library (CacheManager) doing the same in this process",
        scratch.0.display(),
        scan::human_bytes(large_bytes)
    ))?;
    let daemon_home = scratch.0.join("VBUS");
    let daemon = start_daemon(&daemon_home)?;
    let base = format!("http://{}", daemon.addr);

    // Small objects: put them, then 64 connections get them at random.
    let setup = agent();
    let small = vbus_node::scan::pattern(SMALL_OBJECT_BYTES);
    for idx in 0..N_SMALL_OBJECTS {
        let response = setup
            .put(format!("{base}/v1/objects/bench/s{idx}"))
            .send(&small[..])
            .context("cannot put a small object")?;
        anyhow::ensure!(
            response.status() == 201,
            "put answered {}",
            response.status()
        );
    }
    let (rate, p50_us, p99_us) = concurrent_gets(secs, |thread_idx| {
        let agent = agent();
        let mut latencies = Vec::new();
        let mut rng = fastrand::Rng::with_seed(thread_idx as u64);
        let started = Instant::now();
        let mut buffer = Vec::with_capacity(SMALL_OBJECT_BYTES);
        while started.elapsed().as_secs_f64() < secs {
            let idx = rng.usize(..N_SMALL_OBJECTS);
            let t = Instant::now();
            let mut response = agent
                .get(format!("{base}/v1/objects/bench/s{idx}"))
                .call()
                .context("a get failed")?;
            anyhow::ensure!(
                response.status() == 200,
                "get answered {}",
                response.status()
            );
            buffer.clear();
            response.body_mut().as_reader().read_to_end(&mut buffer)?;
            anyhow::ensure!(buffer.len() == SMALL_OBJECT_BYTES, "a short body");
            latencies.push(t.elapsed());
        }
        Ok(latencies)
    })?;
    // The library: the same gets on a cache in this process.
    let library = vbus_cache::CacheManager::builder()
        .l3_dir(scratch.0.join("LIB_L3"))
        .l2_capacity_bytes(1 << 30)
        .build()?;
    for idx in 0..N_SMALL_OBJECTS {
        library.put(format!("bench/s{idx}").as_str(), &small)?;
    }
    let (library_rate, library_p50_us, library_p99_us) = concurrent_gets(secs, |thread_idx| {
        let mut latencies = Vec::new();
        let mut rng = fastrand::Rng::with_seed(thread_idx as u64);
        let started = Instant::now();
        while started.elapsed().as_secs_f64() < secs {
            let key = format!("bench/s{}", rng.usize(..N_SMALL_OBJECTS));
            let t = Instant::now();
            let value = library.get(key.as_str())?.context("a value vanished")?;
            anyhow::ensure!(value.len() == SMALL_OBJECT_BYTES, "a short value");
            latencies.push(t.elapsed());
        }
        Ok(latencies)
    })?;
    for (metric, unit, better, ours, reference) in [
        (
            "small_gets_per_s_64_conns",
            "gets/s",
            Better::Higher,
            rate,
            library_rate,
        ),
        (
            "small_get_p50_64_conns",
            "µs",
            Better::Lower,
            p50_us,
            library_p50_us,
        ),
        (
            "small_get_p99_64_conns",
            "µs",
            Better::Lower,
            p99_us,
            library_p99_us,
        ),
    ] {
        reporter.report(Measurement::new(
            SUITE,
            metric,
            unit,
            better,
            ours,
            "CacheManager::get in process, 64 threads",
            reference,
            None,
            Device::Cpu,
        ))?;
    }

    // A large object through the API (streamed both ways) and through the library.
    let large = vbus_node::scan::pattern(large_bytes as usize);
    let started = Instant::now();
    let response = setup
        .put(format!("{base}/v1/objects/bench/large"))
        .send(ureq::SendBody::from_reader(&mut &large[..]))
        .context("the large put failed")?;
    anyhow::ensure!(
        response.status() == 201,
        "the large put answered {}",
        response.status()
    );
    let api_put = gbps(large_bytes, started);
    let started = Instant::now();
    let mut response = setup
        .get(format!("{base}/v1/objects/bench/large"))
        .call()
        .context("the large get failed")?;
    let mut reader = response.body_mut().as_reader();
    let mut chunk = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let api_get = gbps(large_bytes, started);
    anyhow::ensure!(total == large_bytes, "the large get returned {total} bytes");
    drop(daemon);

    let started = Instant::now();
    library.put("bench/large", &large)?;
    let library_put = gbps(large_bytes, started);
    // A fresh cache, so the get reads L3 as the daemon's did (the value is beyond its promotion
    // limit, so it never sat in the daemon's memory).
    drop(library);
    let library = vbus_cache::CacheManager::builder()
        .l3_dir(scratch.0.join("LIB_L3"))
        .l2_capacity_bytes(0)
        .build()?;
    let started = Instant::now();
    let value = library
        .get("bench/large")?
        .context("the large value vanished")?;
    let library_get = gbps(large_bytes, started);
    anyhow::ensure!(
        value.len() as u64 == large_bytes,
        "the library get is short"
    );
    for (metric, ours, reference, what) in [
        (
            "large_put_through_api",
            api_put,
            library_put,
            "CacheManager::put (L3 write-through)",
        ),
        (
            "large_get_through_api",
            api_get,
            library_get,
            "CacheManager::get from L3",
        ),
    ] {
        reporter.report(Measurement::new(
            SUITE,
            &format!(
                "{metric}_{}",
                scan::human_bytes(large_bytes).replace(' ', "")
            ),
            "GB/s",
            Better::Higher,
            ours,
            what,
            reference,
            None,
            Device::Cpu,
        ))?;
    }
    Ok(())
}

/// Runs `N_CONNECTIONS` threads of `work` (given its index; returning the latency of each
/// request it completed); returns requests per second, p50 and p99 in µs.
fn concurrent_gets(
    secs: f64,
    work: impl Fn(usize) -> anyhow::Result<Vec<Duration>> + Sync,
) -> anyhow::Result<(f64, f64, f64)> {
    let started = Instant::now();
    let results = super::on_threads(N_CONNECTIONS, work)?;
    let elapsed = started.elapsed().as_secs_f64().max(secs);
    let mut latencies: Vec<Duration> = results.into_iter().flatten().collect();
    anyhow::ensure!(!latencies.is_empty(), "no request completed");
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    // One latency per completed request: their count is the rate's numerator.
    Ok((latencies.len() as f64 / elapsed, at(0.50), at(0.99)))
}
