//! Pulls from peers: each file of a manifest is fetched piece by piece from the agents the
//! tracker names (least loaded first, each piece starting at a different peer so that the load
//! spreads), falling back to the origin per piece. Every piece is verified against the manifest
//! before it is used. A peer that does not answer is skipped for the rest of that file; a peer
//! that sends a piece that fails verification is skipped too and its copy is withdrawn at the
//! tracker (flagged: no one is sent to it for that file again until it announces it anew).
//! Each file is staged in [`Interconnect`] (`BUS/INTERCONNECT`), its verified pieces written at
//! their offsets and served to peers while it is in flight, a stage left by an interrupted pull
//! resumed from its verified pieces, and the whole hashed and published into the store when
//! complete. Every fetcher claims its file at the tracker, so a peer may take a
//! file no one holds yet piece by piece from those fetching it ([`PARTIAL_WAIT`] for a piece they
//! do not have yet, then the origin). Each file is announced as soon as it is published; at the end the agent announces every file of the version it holds. Agents
//! start at different files (by a hash of their id) and prefer files a peer already holds, so
//! that the origin serves each file about once.

use parking_lot::Mutex;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::directory::Directory;
use crate::error::BusError;
use crate::manifest::{FileEntry, Manifest, ManifestError, piece_len};
use crate::origin::{Origin, PullError};
use crate::peer::{Http, NOT_YET, PeerError, fetch_range};
use crate::rate::{self, RateLimiter};
use crate::staging::{Interconnect, Partial};
use crate::tracker::Agent;

/// Where pulled files go: the L3 store itself, or a cache over it (which must drop its memory
/// copies of a path when a new file is published there).
pub trait Sink: Sync {
    /// The size and BLAKE3 (hex) of the file held at `dataset/path`, if any.
    fn held(&self, dataset: &str, path: &str) -> Result<Option<(u64, String)>, PullError>;
    /// Publishes the complete staged file at `src`, whose BLAKE3 the caller computed, as
    /// `dataset/path` (renamed into place when it can be).
    fn adopt(&self, dataset: &str, path: &str, src: &Path, hash: [u8; 32])
    -> Result<(), PullError>;
}

impl Sink for vbus_store::FileStore {
    fn held(&self, dataset: &str, path: &str) -> Result<Option<(u64, String)>, PullError> {
        Ok(self
            .meta(dataset, path)?
            .and_then(|meta| Some((meta.size_bytes, meta.hash_hex()?))))
    }

    fn adopt(
        &self,
        dataset: &str,
        path: &str,
        src: &Path,
        hash: [u8; 32],
    ) -> Result<(), PullError> {
        vbus_store::FileStore::adopt(self, dataset, path, src, hash)?;
        Ok(())
    }
}

/// The manifest of `dataset@version` from a peer that holds files of it (when the origin cannot
/// give it), checked against the version's name.
pub fn manifest_from_peers(
    tracker: &dyn Directory,
    http: &Http,
    self_id: &str,
    dataset: &str,
    version: &str,
) -> Result<Manifest, BusError> {
    let unavailable = |err: crate::DirectoryError| BusError::Unavailable(err.to_string());
    let availability = tracker
        .availability(dataset, version)
        .map_err(unavailable)?;
    let mut last_error = format!("no peer holds {dataset}@{version}");
    for held in availability.iter().filter(|a| a.holders > 0).take(8) {
        let holders = tracker
            .holders(dataset, version, &held.path)
            .map_err(unavailable)?;
        for peer in holders.iter().filter(|peer| peer.id != self_id) {
            match crate::peer::fetch_manifest(http, &peer.addr, dataset, version) {
                Ok(manifest) => return Ok(manifest),
                Err(err) => last_error = err.to_string(),
            }
        }
    }
    Err(BusError::NotFound(last_error))
}

/// One file of `manifest` into memory (for a cache miss), from its holders and the origin,
/// every piece verified and then the whole; files over `max_bytes` are refused.
pub fn fetch_file_bytes(
    manifest: &Manifest,
    file: &FileEntry,
    origin: &Origin,
    swarm: Swarm<'_>,
    max_bytes: u64,
) -> Result<Vec<u8>, PullError> {
    if file.size_bytes > max_bytes {
        return Err(ManifestError::Invalid(format!(
            "{}/{} is {} bytes, over the {max_bytes} a get fetches whole; pull it with `vbus sync pull`",
            manifest.dataset, file.path, file.size_bytes
        ))
        .into());
    }
    let counters = Counters::default();
    let sources = sources_of(manifest, file, Pick::Held, swarm, &counters);
    let mut bytes = Vec::with_capacity(file.size_bytes as usize);
    let all: Vec<usize> = (0..file.pieces.len()).collect();
    for_each_piece(
        manifest,
        file,
        &all,
        &sources,
        origin,
        swarm,
        &counters,
        |_, piece| {
            bytes.extend_from_slice(&piece);
            Ok(())
        },
    )?;
    let whole = blake3::hash(&bytes).to_hex().to_string();
    if whole != file.blake3 {
        return Err(ManifestError::Mismatch {
            path: file.path.clone(),
            what: "the file".to_owned(),
            expected: file.blake3.clone(),
            actual: whole,
        }
        .into());
    }
    Ok(bytes)
}

/// Who to ask, besides the origin.
#[derive(Debug, Clone, Copy)]
pub struct Swarm<'a> {
    /// The tracker; `None` pulls from the origin alone.
    pub tracker: Option<&'a dyn Directory>,
    /// The client for peers (with the cluster token).
    pub http: &'a Http,
    /// This agent's id (never asked for its own files).
    pub self_id: &'a str,
    /// Pieces fetched at once (at least 1).
    pub workers: usize,
    /// This agent's download limit, shared by every piece it fetches.
    pub download: Option<&'a RateLimiter>,
}

/// What a swarm pull did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwarmReport {
    /// Files fetched and published.
    pub files_fetched: usize,
    /// Files the store already held with the manifest's hash.
    pub files_skipped: usize,
    /// Bytes of verified pieces from peers.
    pub bytes_from_peers: u64,
    /// Bytes of verified pieces from the origin.
    pub bytes_from_origin: u64,
    /// Pieces from peers that failed verification.
    pub pieces_rejected: u64,
    /// Requests to peers that failed (no answer or a refusal).
    pub peer_errors: u64,
    /// Tracker requests that failed (the pull went on without it).
    pub tracker_errors: u64,
}

#[derive(Default)]
struct Counters {
    from_peers: AtomicU64,
    from_origin: AtomicU64,
    rejected: AtomicU64,
    peer_errors: AtomicU64,
    tracker_errors: AtomicU64,
}

/// Pulls every file of `manifest` into `sink`, from peers where it can and from `origin`
/// otherwise, each file staged in `staging` (`BUS/INTERCONNECT`: resumed from there after a
/// restart, its verified pieces served to peers while in flight); `progress` gets the bytes of
/// each verified piece.
pub fn pull_swarm(
    manifest: &Manifest,
    origin: &Origin,
    sink: &dyn Sink,
    swarm: Swarm<'_>,
    staging: &Interconnect,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<SwarmReport, PullError> {
    let counters = Counters::default();
    let mut report = SwarmReport::default();
    let mut wanted: Vec<&FileEntry> = Vec::new();
    for file in &manifest.files {
        let held = sink.held(&manifest.dataset, &file.path)?;
        if held.is_some_and(|(size, hash)| size == file.size_bytes && hash == file.blake3) {
            report.files_skipped += 1;
        } else {
            wanted.push(file);
        }
    }
    // Agents start at different files (by their id), so that early on they fetch different
    // files from the origin and then have something to give each other.
    if !wanted.is_empty() {
        let start =
            (blake3::hash(swarm.self_id.as_bytes()).as_bytes()[0] as usize * wanted.len()) / 256;
        wanted.rotate_left(start);
    }
    let wanted = Mutex::new(wanted);
    let fetched = AtomicU64::new(0);
    let failure: Mutex<Option<PullError>> = Mutex::new(None);
    // Two tracks with a tracker: one fetches what no one has yet from the origin, the other
    // what peers already hold, so the origin and the peers are both kept busy.
    let tracks: &[Track] = if swarm.tracker.is_some() {
        &[Track::OriginFirst, Track::PeersOnly]
    } else {
        &[Track::OriginFirst]
    };
    std::thread::scope(|scope| {
        for &track in tracks {
            let (wanted, fetched, failure, counters) = (&wanted, &fetched, &failure, &counters);
            scope.spawn(move || {
                let run = || -> Result<(), PullError> {
                    while let Some((file, pick)) =
                        next_file(manifest, wanted, track, swarm, counters)
                    {
                        if failure.lock().is_some() {
                            return Ok(());
                        }
                        fetch_file(
                            manifest, file, pick, origin, sink, swarm, staging, counters, progress,
                        )?;
                        fetched.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                };
                if let Err(err) = run() {
                    failure.lock().get_or_insert(err);
                }
            });
        }
    });
    if let Some(err) = failure.into_inner() {
        return Err(err);
    }
    report.files_fetched = fetched.into_inner() as usize;
    if let Some(tracker) = swarm.tracker {
        let paths = manifest.files.iter().map(|f| f.path.clone()).collect();
        if let Err(err) =
            tracker.announce(swarm.self_id, &manifest.dataset, &manifest.version, paths)
        {
            tracing::warn!(error = %err, "cannot announce {}@{}", manifest.dataset, manifest.version);
            counters.tracker_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    report.bytes_from_peers = counters.from_peers.into_inner();
    report.bytes_from_origin = counters.from_origin.into_inner();
    report.pieces_rejected = counters.rejected.into_inner();
    report.peer_errors = counters.peer_errors.into_inner();
    report.tracker_errors = counters.tracker_errors.into_inner();
    Ok(report)
}

/// How long a track waits for files that others are fetching from the origin before it
/// fetches one from the origin itself.
const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Why a file was taken, which says where its pieces may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    /// No one held or fetched it: from the origin (and holders that appear meanwhile).
    Free,
    /// A peer holds it whole.
    Held,
    /// Only peers fetching it have pieces of it: they serve those as they arrive, and a piece
    /// none has yet is waited for ([`PARTIAL_WAIT`]) before the origin is asked.
    InFlight,
}

/// How long a piece is waited for from peers that fetch it before the origin is asked.
const PARTIAL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What a pull thread prefers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Track {
    /// A file no one holds or fetches (from the origin), else one a peer holds, else wait for
    /// one being fetched.
    OriginFirst,
    /// Only files a peer holds; waits for them.
    PeersOnly,
}

/// Takes the next file for `track` out of `wanted`, and why; `None` when none is left. Without
/// a tracker, simply the next one.
fn next_file<'m>(
    manifest: &Manifest,
    wanted: &Mutex<Vec<&'m FileEntry>>,
    track: Track,
    swarm: Swarm<'_>,
    counters: &Counters,
) -> Option<(&'m FileEntry, Pick)> {
    let Some(tracker) = swarm.tracker else {
        let mut wanted = wanted.lock();
        return (!wanted.is_empty()).then(|| (wanted.remove(0), Pick::Free));
    };
    let deadline = std::time::Instant::now() + CLAIM_WAIT;
    loop {
        if wanted.lock().is_empty() {
            return None;
        }
        let availability = match tracker.availability(&manifest.dataset, &manifest.version) {
            Ok(availability) => availability,
            Err(err) => {
                tracing::debug!(error = %err, "no availability from the tracker");
                counters.tracker_errors.fetch_add(1, Ordering::Relaxed);
                Vec::new()
            }
        };
        let of = |path: &str| {
            availability
                .binary_search_by(|a| a.path.as_str().cmp(path))
                .ok()
                .map_or((0, 0), |at| {
                    (availability[at].holders, availability[at].fetchers)
                })
        };
        let mut wanted = wanted.lock();
        let position =
            |want: fn((u32, u32)) -> bool| wanted.iter().position(|file| want(of(&file.path)));
        let held = position(|(holders, _)| holders > 0).map(|at| (at, Pick::Held));
        let free = position(|counts| counts == (0, 0)).map(|at| (at, Pick::Free));
        let in_flight = position(|(holders, fetchers)| holders == 0 && fetchers > 0)
            .map(|at| (at, Pick::InFlight));
        let pick = match track {
            Track::OriginFirst => free.or(held).or(in_flight),
            Track::PeersOnly => held.or(in_flight),
        }
        .or_else(|| {
            (std::time::Instant::now() >= deadline && !wanted.is_empty()).then_some((0, Pick::Free))
        });
        if let Some((at, pick)) = pick {
            let file = wanted.remove(at);
            drop(wanted);
            // Claimed whatever the pick: peers see who fetches it (and may take its pieces).
            if tracker
                .claim(
                    swarm.self_id,
                    &manifest.dataset,
                    &manifest.version,
                    &file.path,
                )
                .is_err()
            {
                counters.tracker_errors.fetch_add(1, Ordering::Relaxed);
            }
            return Some((file, pick));
        }
        drop(wanted);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// One file: from its holders and the origin, published, then announced at once (peers may
/// fetch it from here while this pull goes on).
#[allow(clippy::too_many_arguments)]
fn fetch_file(
    manifest: &Manifest,
    file: &FileEntry,
    pick: Pick,
    origin: &Origin,
    sink: &dyn Sink,
    swarm: Swarm<'_>,
    staging: &Interconnect,
    counters: &Counters,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), PullError> {
    let sources = sources_of(manifest, file, pick, swarm, counters);
    let (partial, resumed) = staging.begin(manifest, file)?;
    let staged = stage_and_publish(
        manifest, file, &sources, origin, sink, swarm, &partial, resumed, counters, progress,
    );
    staging.end(&partial);
    staged?;
    if let Some(tracker) = swarm.tracker
        && let Err(err) = tracker.announce(
            swarm.self_id,
            &manifest.dataset,
            &manifest.version,
            vec![file.path.clone()],
        )
    {
        tracing::debug!(error = %err, "cannot announce {}", file.path);
        counters.tracker_errors.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Where the pieces of a file may come from besides the origin.
#[derive(Debug, Default)]
struct Sources {
    /// Live agents holding the file whole.
    holders: Vec<Agent>,
    /// Live agents fetching it (for a file picked [`Pick::InFlight`]): they serve the pieces
    /// they have verified, and are waited for.
    fetchers: Vec<Agent>,
}

/// The sources of `file` other than this agent; none without a tracker, or when the tracker
/// does not answer.
fn sources_of(
    manifest: &Manifest,
    file: &FileEntry,
    pick: Pick,
    swarm: Swarm<'_>,
    counters: &Counters,
) -> Sources {
    let Some(tracker) = swarm.tracker else {
        return Sources::default();
    };
    let others = |agents: Vec<Agent>| -> Vec<Agent> {
        agents
            .into_iter()
            .filter(|agent| agent.id != swarm.self_id)
            .collect()
    };
    let (dataset, version) = (&manifest.dataset, &manifest.version);
    let holders = match tracker.holders(dataset, version, &file.path) {
        Ok(holders) => others(holders),
        Err(err) => {
            tracing::warn!(error = %err, "no holders from the tracker; using the origin");
            counters.tracker_errors.fetch_add(1, Ordering::Relaxed);
            return Sources::default();
        }
    };
    let fetchers = match pick {
        Pick::InFlight => tracker
            .fetchers(dataset, version, &file.path)
            .map(others)
            .unwrap_or_else(|_| {
                counters.tracker_errors.fetch_add(1, Ordering::Relaxed);
                Vec::new()
            }),
        Pick::Free | Pick::Held => Vec::new(),
    };
    Sources { holders, fetchers }
}

/// One file staged in `BUS/INTERCONNECT` (`partial`, `resumed` bytes of it already there and
/// verified): the missing pieces fetched (and served to peers as they are verified), then the
/// whole hashed and published. A failed pull leaves its stage for the next.
#[allow(clippy::too_many_arguments)]
fn stage_and_publish(
    manifest: &Manifest,
    file: &FileEntry,
    sources: &Sources,
    origin: &Origin,
    sink: &dyn Sink,
    swarm: Swarm<'_>,
    partial: &Partial,
    resumed: u64,
    counters: &Counters,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), PullError> {
    if resumed > 0 {
        tracing::info!(
            "resuming {}/{} from {resumed} staged bytes",
            manifest.dataset,
            file.path
        );
        progress(resumed);
    }
    let missing: Vec<usize> = (0..file.pieces.len())
        .filter(|&index| !partial.is_done(index))
        .collect();
    // Pieces arrive in order: a stage fetched whole is hashed as it is written, not read back.
    let mut whole = (missing.len() == file.pieces.len()).then(blake3::Hasher::new);
    for_each_piece(
        manifest,
        file,
        &missing,
        sources,
        origin,
        swarm,
        counters,
        |index, piece| {
            partial.write_piece(index, &piece)?;
            if let Some(whole) = &mut whole {
                whole.update_rayon(&piece);
            }
            progress(piece.len() as u64);
            Ok(())
        },
    )?;
    let hash = partial.finish(whole.map(|whole| *whole.finalize().as_bytes()))?;
    let actual = blake3::Hash::from(hash).to_hex().to_string();
    if actual != file.blake3 {
        // Every piece matched but the whole does not: the manifest contradicts itself.
        partial.discard();
        return Err(ManifestError::Mismatch {
            path: file.path.clone(),
            what: "the file".to_owned(),
            expected: file.blake3.clone(),
            actual,
        }
        .into());
    }
    sink.adopt(&manifest.dataset, &file.path, partial.path(), hash)
}

/// The pieces `indices` of `file`, verified, to `each` in that order: fetched `swarm.workers`
/// at a time, a peer that fails or sends a bad piece skipped for the rest of the file.
#[allow(clippy::too_many_arguments)]
fn for_each_piece(
    manifest: &Manifest,
    file: &FileEntry,
    indices: &[usize],
    sources: &Sources,
    origin: &Origin,
    swarm: Swarm<'_>,
    counters: &Counters,
    mut each: impl FnMut(usize, Vec<u8>) -> Result<(), PullError>,
) -> Result<(), PullError> {
    let skipped: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
    let workers = swarm.workers.max(1);
    for window in indices.chunks(workers) {
        let pieces: Vec<Result<Vec<u8>, PullError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = window
                .iter()
                .map(|&index| {
                    let skipped = &skipped;
                    scope.spawn(move || {
                        fetch_piece(
                            manifest, file, index, sources, skipped, origin, swarm, counters,
                        )
                    })
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
        for (&index, piece) in window.iter().zip(pieces) {
            each(index, piece?)?;
        }
    }
    Ok(())
}

/// Piece `index`: from the holders in turn (starting at a different one for each piece), then
/// from the fetchers, waiting up to [`PARTIAL_WAIT`] for one of them to have it, then from the
/// origin.
#[allow(clippy::too_many_arguments)]
fn fetch_piece(
    manifest: &Manifest,
    file: &FileEntry,
    index: usize,
    sources: &Sources,
    skipped: &Mutex<HashSet<String>>,
    origin: &Origin,
    swarm: Swarm<'_>,
    counters: &Counters,
) -> Result<Vec<u8>, PullError> {
    let offset = index as u64 * manifest.piece_bytes;
    let len = piece_len(file.size_bytes, manifest.piece_bytes, index);
    rate::acquire(swarm.download, len);
    let is_skipped = |id: &str| skipped.lock().contains(id);
    let skip = |id: &str| {
        skipped.lock().insert(id.to_owned());
    };
    let rotated = |agents: &[Agent]| -> Vec<Agent> {
        (0..agents.len())
            .map(|turn| agents[(index + turn) % agents.len()].clone())
            .collect()
    };
    let mut peers = rotated(&sources.holders);
    peers.extend(rotated(&sources.fetchers));
    let deadline = std::time::Instant::now() + PARTIAL_WAIT;
    loop {
        let mut not_yet = false;
        for peer in &peers {
            if is_skipped(&peer.id) {
                continue;
            }
            match fetch_range(
                swarm.http,
                &peer.addr,
                &manifest.dataset,
                &file.path,
                &file.blake3,
                offset,
                len,
            ) {
                Ok(bytes) => {
                    if manifest.verify_piece(file, index, &bytes).is_ok() {
                        counters.from_peers.fetch_add(len, Ordering::Relaxed);
                        return Ok(bytes);
                    }
                    counters.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        peer = %peer.id,
                        "piece {index} of {}/{} from {} failed verification; withdrawing its copy",
                        manifest.dataset,
                        file.path,
                        peer.addr
                    );
                    skip(&peer.id);
                    if let Some(tracker) = swarm.tracker
                        && tracker
                            .withdraw(&peer.id, &manifest.dataset, &manifest.version, &file.path)
                            .is_err()
                    {
                        counters.tracker_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(PeerError::Refused {
                    status: NOT_YET, ..
                }) => not_yet = true,
                Err(err) => {
                    counters.peer_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(peer = %peer.id, error = %err, "peer failed; trying the next");
                    skip(&peer.id);
                }
            }
        }
        if !not_yet || std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let bytes = origin.read_piece(manifest, file, index)?;
    manifest.verify_piece(file, index, &bytes)?;
    counters.from_origin.fetch_add(len, Ordering::Relaxed);
    Ok(bytes)
}
