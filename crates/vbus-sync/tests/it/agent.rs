//! The MESI protocol between BUS agents, in one process over loopback HTTP: a tracker (served
//! over HTTP, or embedded as the agents' `Directory`), two agents with their own L3 and peer
//! routes, and a directory master. A write orders a new version at
//! the directory and makes the writer its Modified owner; a read elsewhere fetches that version
//! from the owner (verified) before it is served; a push writes the Modified line back to the
//! master first.

use std::sync::Arc;
use std::time::Duration;

use vbus_cache::{CacheKey, CacheManager};
use vbus_sync::serve::peer::peer_router;
use vbus_sync::serve::tracker::tracker_router;
use vbus_sync::{
    AgentOptions, BusAgent, Directory, ErrorKind, Http, LineState, Origin, Tracker, TrackerClient,
};

const TOKEN: &str = "a-cluster-token-for-tests";

/// Serves `router` on a free loopback port of `runtime`; returns `host:port`.
fn serve(runtime: &tokio::runtime::Runtime, listener: std::net::TcpListener, router: axum::Router) {
    listener.set_nonblocking(true).unwrap();
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener).unwrap()
    };
    runtime.spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
}

struct Node {
    cache: CacheManager,
    agent: Arc<BusAgent>,
}

fn node(
    runtime: &tokio::runtime::Runtime,
    root: &std::path::Path,
    id: &str,
    directory: Arc<dyn Directory>,
    master: &std::path::Path,
) -> Node {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cache = CacheManager::builder()
        .l3_dir(root.join("L3"))
        .l3_capacity_bytes(1 << 30)
        .l2_capacity_bytes(16 << 20)
        .build()
        .unwrap();
    let options = AgentOptions {
        home: root.to_owned(),
        id: id.to_owned(),
        addr,
        directory: Some(directory),
        cluster_token: Some(TOKEN.to_owned()),
        pull_workers: 2,
        upload_bytes_per_second: 0,
        sync_interval: Duration::from_secs(3600),
        repositories: Vec::new(),
    };
    let agent =
        Arc::new(BusAgent::new(options, cache.store().clone(), Origin::dir(master), None).unwrap());
    serve(
        runtime,
        listener,
        peer_router(Arc::clone(agent.peer_files())),
    );
    Node { cache, agent }
}

fn write(node: &Node, key: &CacheKey, bytes: &[u8]) -> vbus_sync::Line {
    node.cache.put(key.clone(), bytes).unwrap();
    node.agent
        .coherent_write(&node.cache, key)
        .unwrap()
        .expect("in a cluster, the directory orders the write")
}

fn read(node: &Node, key: &CacheKey) -> Vec<u8> {
    node.agent.coherent_read(&node.cache, key).unwrap();
    node.cache
        .get(key.clone())
        .unwrap()
        .unwrap()
        .bytes()
        .to_vec()
}

#[test]
fn a_write_invalidates_the_other_copy_and_a_read_fetches_the_newest_from_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tracker_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tracker_addr = tracker_listener.local_addr().unwrap().to_string();
    let tracker = Arc::new(Tracker::open(dir.path().join("tracker")).unwrap());
    serve(
        &runtime,
        tracker_listener,
        tracker_router(Arc::clone(&tracker), TOKEN.to_owned()),
    );
    let master = dir.path().join("master");
    std::fs::create_dir_all(master.join("ds")).unwrap();
    let client = || -> Arc<dyn Directory> {
        Arc::new(TrackerClient::new(
            &tracker_addr,
            Http::new(Some(TOKEN.to_owned())),
        ))
    };
    let a = node(&runtime, &dir.path().join("a"), "a", client(), &master);
    let b = node(&runtime, &dir.path().join("b"), "b", client(), &master);
    let key = CacheKey::new("ds", "weights.bin");

    // A writes: A owns the line, Modified; nothing at the master yet.
    let first = write(&a, &key, b"version one");
    assert_eq!(first.owner, "a");
    assert!(first.dirty);
    assert!(!master.join("ds/weights.bin").exists());

    // B reads: fetched from A, verified, and B is listed Shared.
    assert_eq!(read(&b, &key), b"version one");
    let view = tracker.line("ds", "weights.bin").unwrap();
    assert_eq!(view.line.holders.get("b"), Some(&LineState::Shared));

    // B writes: B owns the newer version, A's copy is Invalid; A's next read takes B's bytes.
    let second = write(&b, &key, b"version two, from b");
    assert_eq!(second.owner, "b");
    assert!(second.version > first.version);
    let view = tracker.line("ds", "weights.bin").unwrap();
    assert_ne!(view.line.holders.get("a"), Some(&LineState::Shared));
    assert_eq!(read(&a, &key), b"version two, from b");

    // A push of the dataset writes the Modified line back to the master first.
    let pushed = a.agent.push(&a.cache, "ds").unwrap();
    assert_eq!(pushed.written_back, 1);
    assert_eq!(
        std::fs::read(master.join("ds/weights.bin")).unwrap(),
        b"version two, from b"
    );
    assert!(!tracker.line("ds", "weights.bin").unwrap().line.dirty);
}

#[test]
fn a_read_is_refused_rather_than_served_stale_when_the_owner_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The embedded tracker is the agents' directory itself, in process.
    let tracker: Arc<dyn Directory> = Arc::new(Tracker::open(dir.path().join("tracker")).unwrap());
    let master = dir.path().join("master");
    std::fs::create_dir_all(&master).unwrap();
    let a = node(
        &runtime,
        &dir.path().join("a"),
        "a",
        Arc::clone(&tracker),
        &master,
    );
    let b = node(&runtime, &dir.path().join("b"), "b", tracker, &master);
    let key = CacheKey::new("ds", "only-on-a");
    write(&a, &key, b"never written back");
    // A's copy disappears (its disk is lost): the newest version has no reachable holder, and
    // the master does not have it yet.
    assert!(a.cache.remove(key.clone()).unwrap());
    let refused = b.agent.coherent_read(&b.cache, &key).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Unavailable, "{refused}");
    assert!(
        refused.to_string().contains("could not be fetched"),
        "{refused}"
    );
    assert!(b.cache.get(key).unwrap().is_none());
}
