//! Load: 64 concurrent clients doing mixed puts and gets for 30 s against one daemon, with zero
//! errors and every get returning exactly the bytes of the client's latest acknowledged put; and
//! a SIGKILL during such a load, after which every acknowledged put is there and intact.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::support::Daemon;

const N_CLIENTS: u64 = 64;
const KEYS_PER_CLIENT: u64 = 4;

/// A value that names its client, key and tag: a torn or mixed value is told apart.
fn value(client: u64, key: u64, tag: u64, len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len.max(24));
    bytes.extend_from_slice(&client.to_le_bytes());
    bytes.extend_from_slice(&key.to_le_bytes());
    bytes.extend_from_slice(&tag.to_le_bytes());
    while bytes.len() < len {
        bytes.push((bytes.len() as u64 ^ tag ^ client) as u8);
    }
    bytes
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// The state of one key as its only writer knows it.
#[derive(Debug, Clone, Default)]
struct Known {
    acked: Option<Vec<u8>>,
    in_flight: Option<Vec<u8>>,
}

/// One client's loop until `stop`; returns what it knows of its keys and its error count.
fn client_loop(
    addr: &str,
    client: u64,
    stop: &AtomicBool,
    ops: &AtomicU64,
    tolerate_errors: bool,
) -> (HashMap<u64, Known>, Vec<String>) {
    let agent = agent();
    let mut rng = fastrand::Rng::with_seed(client);
    let mut known: HashMap<u64, Known> = HashMap::new();
    let mut errors = Vec::new();
    let mut tag = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = rng.u64(..KEYS_PER_CLIENT);
        let url = format!("http://{addr}/v1/objects/load/c{client}/k{key}");
        if rng.bool() {
            tag += 1;
            let len = if rng.u32(..400) == 0 {
                9 << 20
            } else {
                rng.usize(24..65_536)
            };
            let bytes = value(client, key, tag, len);
            known.entry(key).or_default().in_flight = Some(bytes.clone());
            match agent.put(&url).send(&bytes[..]) {
                Ok(response) if response.status() == 201 => {
                    let entry = known.entry(key).or_default();
                    entry.acked = entry.in_flight.take();
                }
                Ok(response) => errors.push(format!("PUT {url}: {}", response.status())),
                Err(err) => {
                    errors.push(format!("PUT {url}: {err}"));
                    if tolerate_errors {
                        return (known, errors);
                    }
                }
            }
        } else {
            match agent.get(&url).call() {
                Ok(mut response) => {
                    let expected = known.get(&key).and_then(|k| k.acked.clone());
                    match (response.status().as_u16(), expected) {
                        (200, Some(expected)) => {
                            let body = response
                                .body_mut()
                                .with_config()
                                .limit(16 << 20)
                                .read_to_vec()
                                .unwrap_or_default();
                            if body != expected {
                                errors.push(format!(
                                    "GET {url}: {} bytes, not the {} of the last acknowledged put",
                                    body.len(),
                                    expected.len()
                                ));
                            }
                        }
                        (404, None) => {}
                        (status, expected) => errors.push(format!(
                            "GET {url}: {status}, expected {}",
                            if expected.is_some() { "200" } else { "404" }
                        )),
                    }
                }
                Err(err) => {
                    errors.push(format!("GET {url}: {err}"));
                    if tolerate_errors {
                        return (known, errors);
                    }
                }
            }
        }
        ops.fetch_add(1, Ordering::Relaxed);
    }
    (known, errors)
}

#[test]
fn sixty_four_clients_for_thirty_seconds_without_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("VBUS");
    let daemon = Daemon::start(&home);
    let stop = AtomicBool::new(false);
    let ops = AtomicU64::new(0);
    let started = Instant::now();
    let results: Vec<(HashMap<u64, Known>, Vec<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..N_CLIENTS)
            .map(|client| {
                let (addr, stop, ops) = (&daemon.addr, &stop, &ops);
                scope.spawn(move || client_loop(addr, client, stop, ops, false))
            })
            .collect();
        std::thread::sleep(Duration::from_secs(30));
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let errors: Vec<&String> = results.iter().flat_map(|(_, errors)| errors).collect();
    let n_ops = ops.load(Ordering::Relaxed);
    eprintln!(
        "{n_ops} operations in {:.1} s by {N_CLIENTS} clients, {} errors",
        started.elapsed().as_secs_f64(),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(n_ops > 1000, "only {n_ops} operations");
}

#[test]
fn sigkill_during_load_keeps_every_acknowledged_put() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("VBUS");
    let mut daemon = Daemon::start(&home);
    let addr = daemon.addr.clone();
    let stop = AtomicBool::new(false);
    let ops = AtomicU64::new(0);
    let results: Vec<(HashMap<u64, Known>, Vec<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..N_CLIENTS)
            .map(|client| {
                let (addr, stop, ops) = (&addr, &stop, &ops);
                scope.spawn(move || client_loop(addr, client, stop, ops, true))
            })
            .collect();
        std::thread::sleep(Duration::from_secs(4));
        daemon.signal(Signal::KILL);
        let _ = daemon.wait();
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    drop(daemon);
    let daemon = Daemon::start(&home);
    let agent = agent();
    let mut n_checked = 0;
    for (client, (known, _)) in results.iter().enumerate() {
        for (key, state) in known {
            let url = format!("http://{}/v1/objects/load/c{client}/k{key}", daemon.addr);
            let mut response = agent.get(&url).call().unwrap();
            let got = match response.status().as_u16() {
                200 => Some(
                    response
                        .body_mut()
                        .with_config()
                        .limit(16 << 20)
                        .read_to_vec()
                        .unwrap(),
                ),
                404 => None,
                status => panic!("GET {url}: {status}"),
            };
            let ok = got == state.acked || (state.in_flight.is_some() && got == state.in_flight);
            assert!(
                ok,
                "{url}: holds {:?} bytes; acknowledged {:?}, in flight {:?}",
                got.as_ref().map(Vec::len),
                state.acked.as_ref().map(Vec::len),
                state.in_flight.as_ref().map(Vec::len)
            );
            n_checked += usize::from(state.acked.is_some());
        }
    }
    assert!(
        n_checked > 50,
        "only {n_checked} acknowledged keys to check"
    );
    eprintln!(
        "{} operations before the kill; {n_checked} acknowledged keys intact",
        ops.load(Ordering::Relaxed)
    );
}

/// The daemon's resident set, from `/proc`.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line["VmRSS:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Generates `len` pattern bytes without holding them.
struct Generated {
    len: u64,
    at: u64,
}

impl std::io::Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.len - self.at).min(buf.len() as u64) as usize;
        for (idx, byte) in buf[..n].iter_mut().enumerate() {
            *byte = ((self.at + idx as u64) % 251) as u8;
        }
        self.at += n as u64;
        Ok(n)
    }
}

#[test]
fn a_large_value_streams_through_in_bounded_memory() {
    // 1 GiB by default (10 GiB with VBUS_STREAM_TEST_GIB=10): in and out of the daemon, whose
    // resident set must stay within 64 MiB of what it was idle, and idle under 64 MiB.
    let gib: u64 = std::env::var("VBUS_STREAM_TEST_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let len = gib << 30;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("VBUS");
    let daemon = Daemon::start(&home);
    let pid = daemon.child.id();
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss_bytes(pid);
    assert!(idle < 64 << 20, "an idle daemon takes {} MiB", idle >> 20);
    let peak = AtomicU64::new(idle);
    let done = AtomicBool::new(false);
    let url = format!("http://{}/v1/objects/big/value.bin", daemon.addr);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let agent = agent();
        let response = agent
            .put(&url)
            .send(ureq::SendBody::from_reader(&mut Generated { len, at: 0 }))
            .unwrap();
        assert_eq!(response.status(), 201);
        let mut response = agent.get(&url).call().unwrap();
        assert_eq!(response.status(), 200);
        let mut reader = response.body_mut().as_reader();
        let mut buffer = vec![0u8; 1 << 20];
        let (mut total, mut mismatches) = (0u64, 0u64);
        loop {
            let n = std::io::Read::read(&mut reader, &mut buffer).unwrap();
            if n == 0 {
                break;
            }
            for (idx, &byte) in buffer[..n].iter().enumerate() {
                mismatches += u64::from(byte != ((total + idx as u64) % 251) as u8);
            }
            total += n as u64;
        }
        done.store(true, Ordering::Relaxed);
        assert_eq!((total, mismatches), (len, 0));
    });
    let growth = peak.load(Ordering::Relaxed).saturating_sub(idle);
    eprintln!(
        "{gib} GiB in and out: idle RSS {} MiB, peak growth {} MiB",
        idle >> 20,
        growth >> 20
    );
    assert!(growth < 64 << 20, "the daemon grew by {} MiB", growth >> 20);
}

#[test]
fn a_daemon_whose_stderr_nobody_reads_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("VBUS");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    // stderr is a pipe this test never reads: it fills after 64 KiB.
    let mut child = crate::support::vbus(&home)
        .args(["up", "--listen", &addr])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "the daemon did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let agent = agent();
    // Each change logs a line of about 100 bytes: far more than the pipe holds.
    for idx in 0..3000 {
        let response = agent
            .put(&format!("http://{addr}/v1/objects/quiet/k{}", idx % 10))
            .send(&b"v"[..])
            .unwrap();
        assert_eq!(response.status(), 201, "put {idx}");
    }
    let _ = child.kill();
    let _ = child.wait();
}
