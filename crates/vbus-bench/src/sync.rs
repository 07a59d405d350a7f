//! `vbus-bench sync`: distributing a dataset to several agents, peer to peer against pulls from
//! the master alone, with every agent's upload and download, and the master's egress, limited to
//! the same rate.
//!
//! Everything runs in this process over loopback HTTP: a tracker, and per agent an L3 store, a
//! peer server (byte ranges behind the cluster token, paced by the agent's upload limit) and a
//! pull through `vbus_sync::pull_swarm` (paced by its download limit), the same code the daemon
//! runs. The master is a local directory whose piece reads share one egress limit. Each run
//! starts from empty stores, and every agent's pull is checked to account for the whole dataset.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use vbus_store::FileStore;
use vbus_sync::{Http, Origin, RateLimiter, Swarm, Tracker, TrackerClient};

use super::{Better, Device, Measurement, Mode, Reporter, Scratch};
use vbus_node::home::Home;
use vbus_node::scan;
use vbus_sync::serve::peer::{PeerFiles, peer_router};
use vbus_sync::serve::tracker::tracker_router;

const SUITE: &str = "sync";
const TOKEN: &str = "bench-sync-cluster-token";
const MIB: u64 = 1 << 20;

pub(super) fn run<W: Write>(
    mode: Mode,
    home: &Home,
    reporter: &mut Reporter<W>,
) -> anyhow::Result<()> {
    let (n_agents, dataset_bytes, n_files, rate) = match mode {
        Mode::Full => (8usize, 1024 * MIB, 16usize, 100_000_000u64),
        Mode::Quick => (4, 64 * MIB, 8, 40_000_000),
    };
    let scratch = Scratch(
        scan::nearest_existing_dir(home.root())
            .join(format!(".vbus-bench-sync-{}", std::process::id())),
    );
    std::fs::create_dir_all(&scratch.0)
        .with_context(|| format!("cannot create {}", scratch.0.display()))?;
    reporter.note(&format!(
        "bench sync: {} in {n_files} files to {n_agents} agents at {scratch}; every agent's \
         upload and download, and the master's egress, limited to {} MB/s; peer to peer through \
         a tracker against every agent pulling from the master alone; in one process over \
         loopback HTTP, every piece verified",
        scan::human_bytes(dataset_bytes),
        rate / 1_000_000,
        scratch = scratch.0.display(),
    ))?;

    let master = scratch.0.join("master");
    write_dataset(&master.join("bench"), dataset_bytes, n_files)?;
    let manifest = Origin::dir(&master).publish_version("bench")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("vbus-bench-sync")
        .build()
        .context("cannot start the async runtime")?;
    let tracker = Arc::new(Tracker::open(scratch.0.join("tracker"))?);
    let tracker_addr = serve(&runtime, tracker_router(tracker, TOKEN.to_owned()))?;

    let p2p = distribute(
        &runtime,
        &scratch.0.join("p2p"),
        &master,
        &manifest,
        n_agents,
        rate,
        Some(&tracker_addr),
    )?;
    let origin_only = distribute(
        &runtime,
        &scratch.0.join("origin_only"),
        &master,
        &manifest,
        n_agents,
        rate,
        None,
    )?;
    let size = scan::human_bytes(dataset_bytes).replace(' ', "");
    reporter.report(Measurement::new(
        SUITE,
        &format!("distribute_{size}_to_{n_agents}_agents"),
        "s",
        Better::Lower,
        p2p.seconds,
        "every agent from the master alone",
        origin_only.seconds,
        Some(3.0),
        Device::Cpu,
    ))?;
    // Egress at most 1.25x the dataset: the ratio (dataset over egress) at least 0.8.
    reporter.report(Measurement::new(
        SUITE,
        "master_egress_peer_to_peer",
        "bytes",
        Better::Lower,
        p2p.origin_bytes as f64,
        "the dataset's size",
        dataset_bytes as f64,
        Some(0.8),
        Device::Cpu,
    ))?;
    reporter.report(Measurement::new(
        SUITE,
        "master_egress_origin_only",
        "bytes",
        Better::Lower,
        origin_only.origin_bytes as f64,
        "the dataset's size",
        dataset_bytes as f64,
        None,
        Device::Cpu,
    ))?;
    Ok(())
}

/// `n_files` files of pseudo-random bytes, `total_bytes` in all.
fn write_dataset(dir: &Path, total_bytes: u64, n_files: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let file_bytes = total_bytes / n_files as u64;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut bytes = vec![0u8; file_bytes as usize];
    for idx in 0..n_files {
        rng.fill(&mut bytes);
        let path = dir.join(format!("shard-{idx:03}.bin"));
        std::fs::write(&path, &bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Serves `router` on a free loopback port; returns `host:port`.
fn serve(runtime: &tokio::runtime::Runtime, router: axum::Router) -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind loopback")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?.to_string();
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    runtime.spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            tracing::error!(error = %err, "a bench server failed");
        }
    });
    Ok(addr)
}

struct Distribution {
    seconds: f64,
    origin_bytes: u64,
}

/// Every agent pulls the dataset at once; returns when the last is done.
fn distribute(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    master: &Path,
    manifest: &vbus_sync::Manifest,
    n_agents: usize,
    rate: u64,
    tracker_addr: Option<&str>,
) -> anyhow::Result<Distribution> {
    let http = Http::new(Some(TOKEN.to_owned()));
    let tracker = tracker_addr.map(|addr| TrackerClient::new(addr, http.clone()));
    let origin = Origin::dir(master).with_egress_limit(Arc::new(
        RateLimiter::new(rate).context("a rate above zero")?,
    ));
    let mut agents = Vec::new();
    for idx in 0..n_agents {
        let store = FileStore::open(dir.join(format!("agent{idx}")))?;
        let staging = Arc::new(vbus_sync::Interconnect::open(
            dir.join(format!("agent{idx}-interconnect")),
        )?);
        let peer = Arc::new(PeerFiles::new(
            store.clone(),
            Some(Arc::clone(&staging)),
            None,
            Some(TOKEN.to_owned()),
            rate,
        ));
        let addr = serve(runtime, peer_router(Arc::clone(&peer)))?;
        let id = format!(
            "{}-agent{idx}",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("run")
        );
        if let Some(tracker) = &tracker {
            tracker.register(&id, &addr)?;
        }
        let download = RateLimiter::new(rate).context("a rate above zero")?;
        agents.push((id, store, peer, download, staging));
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    let started = Instant::now();
    let reports = std::thread::scope(|scope| -> anyhow::Result<Vec<vbus_sync::SwarmReport>> {
        // Heartbeats with each agent's upload load, as the daemon's agent thread sends them.
        if let Some(tracker) = &tracker {
            let (agents, done) = (&agents, &done);
            scope.spawn(move || {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    for (id, _, peer, _, _) in agents {
                        let _ = tracker.heartbeat(id, peer.uploads_now());
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            });
        }
        let pulls: Vec<_> = agents
            .iter()
            .map(|(id, store, _, download, staging)| {
                let tracker = tracker.as_ref().map(|t| t as &dyn vbus_sync::Directory);
                let (origin, http) = (&origin, &http);
                scope.spawn(move || {
                    vbus_sync::pull_swarm(
                        manifest,
                        origin,
                        store,
                        Swarm {
                            tracker,
                            http,
                            self_id: id,
                            workers: 4,
                            download: Some(download),
                        },
                        staging,
                        &|_| {},
                    )
                })
            })
            .collect();
        let reports: Result<Vec<_>, _> = pulls
            .into_iter()
            .map(|pull| {
                pull.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(reports?)
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let total = manifest.total_bytes();
    for (report, (id, ..)) in reports.iter().zip(&agents) {
        anyhow::ensure!(
            report.bytes_from_peers + report.bytes_from_origin == total
                && report.files_fetched == manifest.files.len(),
            "{id} pulled {} + {} bytes of {total}: {report:?}",
            report.bytes_from_peers,
            report.bytes_from_origin
        );
    }
    Ok(Distribution {
        seconds,
        origin_bytes: reports.iter().map(|r| r.bytes_from_origin).sum(),
    })
}
