//! Local-directory repositories kept coherent with the master (`bus_config.repositories`): folders on this machine laid out as the master is
//! (`REPO/{dataset}/{path}`), which users and tools read and write directly.
//!
//! Every `bus_config.sync_interval_seconds` the daemon makes one round:
//! 1. every file of every repository that changed since the last round (size or modification
//!    time, then its BLAKE3) is a write: outside a cluster it is written to the master whole; in
//!    a cluster it is published in L3 and ordered by the coherence directory like a `PUT` (the
//!    owner's write-back takes it to the master). Repositories are taken in the configured
//!    order, so two that changed the same file in one round end with the later one's version in
//!    all;
//! 2. the newest version of every file (the master's, or the directory's newest in a cluster)
//!    is copied into every repository whose copy is older and unchanged since the last round,
//!    written to a hidden temporary file, synced and renamed, so no reader sees a torn file.
//!
//! A file changed while it is being hashed is left for the next round. A copy's stamp is taken
//! from the file as it was synced, before it took its name, so a write that lands just after
//! the copy is a change; a stamp recorded within two seconds of its modification time is not
//! trusted alone (a write of the same size in the same clock tick leaves it as it was), and such
//! a file is hashed again before it counts as unchanged. What each repository and
//! the master held at the last round is kept in `BUS/CONTROL_PLANE/repositories.json`. Deletes
//! are not propagated: a file removed from a repository comes back from the master.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use vbus_cache::{CacheKey, CacheManager};

use crate::Origin;

use crate::agent::BusAgent;
use crate::error::BusError;

/// The state file, under `BUS/CONTROL_PLANE`.
const STATE_FILE: &str = "repositories.json";

/// A modification time younger than this when it was recorded is not trusted: a second write
/// of the same size in the same tick of the file system's clock (a few milliseconds, or whole
/// seconds on some file systems) leaves size and time as they were, so such a copy is hashed
/// again before its stamp counts (as Git treats a "racily clean" index entry).
const RACY: Duration = Duration::from_secs(2);

/// What a copy held when last synced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Synced {
    /// The size and modification time (`SIZE:SECONDS.NANOS`), or the master's size and stamp
    /// (`SIZE:STAMP`).
    stamp: String,
    /// BLAKE3 (hex) of the content.
    blake3: String,
    /// Whether the modification time was within [`RACY`] of the time it was recorded: the
    /// stamp alone does not say the copy is unchanged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    racy: bool,
}

impl Synced {
    /// A repository's copy with this metadata and content, recorded now.
    fn of(meta: &std::fs::Metadata, blake3: String) -> Self {
        let age = meta
            .modified()
            .ok()
            .and_then(|modified| SystemTime::now().duration_since(modified).ok());
        Self {
            stamp: stamp(meta),
            blake3,
            racy: age.is_none_or(|age| age < RACY),
        }
    }

    /// The master's copy with this stamp and content.
    fn master(stamp: String, blake3: String) -> Self {
        Self {
            stamp,
            blake3,
            racy: false,
        }
    }

    /// Whether the file at `path`, whose metadata is `meta`, still holds what was recorded.
    fn holds(&self, path: &Path, meta: &std::fs::Metadata) -> bool {
        self.stamp == stamp(meta)
            && (!self.racy || hash_file(path).is_ok_and(|blake3| blake3 == self.blake3))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    /// Repository → `dataset/path` → its copy at the last round.
    repos: BTreeMap<String, BTreeMap<String, Synced>>,
    /// `dataset/path` → the master's copy when last read.
    master: BTreeMap<String, Synced>,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Round {
    /// Changed repository files taken as writes.
    pub writes: usize,
    /// Files copied into repositories.
    pub copies: usize,
}

/// The local repositories of one daemon.
#[derive(Debug)]
pub(crate) struct Repositories {
    dirs: Vec<PathBuf>,
    state_path: PathBuf,
    state: Mutex<State>,
    /// The last round's outcome, for `/v1/sync/status`.
    pub(crate) last: Mutex<Option<Result<Round, String>>>,
}

/// Whether a `repositories` entry names an agent (`host:port`) rather than a directory.
fn is_address(entry: &str) -> bool {
    !entry.contains('/')
        && entry
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
}

/// `SIZE:SECONDS.NANOS` of a file's metadata (size and modification time).
fn stamp(meta: &std::fs::Metadata) -> String {
    format!("{}:{}.{}", meta.len(), meta.mtime(), meta.mtime_nsec())
}

fn hash_reader(reader: &mut impl std::io::Read) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    std::io::copy(reader, &mut hasher)?;
    Ok(hasher.finalize().to_hex().to_string())
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    hash_reader(&mut std::fs::File::open(path)?)
}

/// Every file under `root` as `dataset/path`, hidden entries and top-level files left out.
fn walk(root: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && dir == root => {
                return Ok(out);
            }
            Err(err) => return Err(err),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let relative: Vec<String> = path
                    .strip_prefix(root)
                    .expect("walked from the root")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if relative.len() >= 2 {
                    out.push((relative.join("/"), path));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Replaces `path` whole with what `from` gives (hidden temporary file, sync, rename); returns
/// the new file's metadata from before it took the name, so a write there after the rename is
/// seen as a change.
fn write_whole_from(
    path: &Path,
    from: &mut dyn std::io::Read,
) -> std::io::Result<std::fs::Metadata> {
    vbus_store::atomic::write_whole_from(path, from, None)
        .map_err(|err| std::io::Error::new(err.source.kind(), err.to_string()))
}

/// Adds what was being done to a failure, as a [`BusError::Internal`].
trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, BusError>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, BusError> {
        self.map_err(|err| BusError::Internal(format!("{}: {err}", what())))
    }
}

impl Repositories {
    /// The directory repositories among `entries` (relative paths from `home`); `None` when
    /// there are none.
    pub(crate) fn open(home: &Path, entries: &[String]) -> Result<Option<Self>, BusError> {
        let dirs: Vec<PathBuf> = entries
            .iter()
            .filter(|entry| {
                let address = is_address(entry);
                if address {
                    tracing::info!(
                        "repository {entry} is an agent: it joins the cluster through its own tracker setting"
                    );
                }
                !address
            })
            .map(|entry| home.join(entry))
            .collect();
        if dirs.is_empty() {
            return Ok(None);
        }
        let state_path = home.join("BUS/CONTROL_PLANE").join(STATE_FILE);
        let state = match std::fs::read_to_string(&state_path) {
            Ok(text) => serde_json::from_str(&text)
                .context(|| format!("{} is damaged", state_path.display()))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(err) => {
                return Err(BusError::Internal(format!(
                    "cannot read {}: {err}",
                    state_path.display()
                )));
            }
        };
        Ok(Some(Self {
            dirs,
            state_path,
            state: Mutex::new(state),
            last: Mutex::new(None),
        }))
    }

    /// The repositories' directories.
    pub(crate) fn dirs(&self) -> Vec<String> {
        self.dirs
            .iter()
            .map(|dir| dir.display().to_string())
            .collect()
    }

    /// One round: local changes become writes, then the newest versions reach every
    /// repository.
    pub(crate) fn sync_once(
        &self,
        bus: &BusAgent,
        cache: &CacheManager,
    ) -> Result<Round, BusError> {
        let mut state = self.state.lock();
        let mut round = Round::default();
        let origin = bus.origin();

        // 1. Changes in the repositories, in order.
        for dir in &self.dirs {
            let repo = dir.display().to_string();
            let files = walk(dir).context(|| format!("cannot list {repo}"))?;
            for (key, path) in files {
                let before = std::fs::metadata(&path)
                    .context(|| format!("cannot stat {}", path.display()))?;
                let now = stamp(&before);
                let recorded = state.repos.get(&repo).and_then(|r| r.get(&key)).cloned();
                if recorded.as_ref().is_some_and(|r| r.stamp == now && !r.racy) {
                    continue;
                }
                let blake3 =
                    hash_file(&path).context(|| format!("cannot read {}", path.display()))?;
                let after = std::fs::metadata(&path)
                    .context(|| format!("cannot stat {}", path.display()))?;
                if stamp(&after) != now {
                    continue; // Being written: the next round takes it.
                }
                let synced = Synced::of(&before, blake3.clone());
                if recorded.is_some_and(|r| r.blake3 == blake3) {
                    state
                        .repos
                        .entry(repo.clone())
                        .or_default()
                        .insert(key, synced);
                    continue;
                }
                let (dataset, inner) = key.split_once('/').expect("walk gives dataset/path");
                let unchanged_master = state.master.get(&key).is_some_and(|m| m.blake3 == blake3);
                if !unchanged_master {
                    self.write(bus, cache, dataset, inner, &path, before.len())
                        .context(|| format!("cannot take {} as a write", path.display()))?;
                    // The master's copy is re-read when its stamp moves; until then it is this.
                    state
                        .master
                        .insert(key.clone(), Synced::master(String::new(), blake3.clone()));
                    round.writes += 1;
                    tracing::info!(repository = %repo, %key, "a repository's change taken as a write");
                }
                state
                    .repos
                    .entry(repo.clone())
                    .or_default()
                    .insert(key, synced);
            }
        }

        // 2. The newest version of every file.
        let mut newest: BTreeMap<String, (String, Source)> = BTreeMap::new();
        for object in origin.objects()? {
            let key = object.path.clone();
            // The size too: a directory master's stamp is the modification time alone.
            let master_stamp = format!("{}:{}", object.size_bytes, object.stamp);
            let known = state
                .master
                .get(&key)
                .filter(|m| m.stamp == master_stamp)
                .map(|m| m.blake3.clone());
            let blake3 = match known {
                Some(blake3) => blake3,
                None => {
                    let (dataset, path) = key.split_once('/').expect("objects are dataset/path");
                    let blake3 = hash_reader(&mut OriginReader::new(
                        origin,
                        dataset,
                        path,
                        object.size_bytes,
                    ))
                    .context(|| format!("cannot read {key} at the master"))?;
                    state
                        .master
                        .insert(key.clone(), Synced::master(master_stamp, blake3.clone()));
                    blake3
                }
            };
            newest.insert(key, (blake3, Source::Master(object.size_bytes)));
        }
        for line in bus.dirty_lines()? {
            let key = format!("{}/{}", line.dataset, line.path);
            newest.insert(key, (line.blake3.clone(), Source::Cluster));
        }
        for dir in &self.dirs {
            let repo = dir.display().to_string();
            for (key, (blake3, source)) in &newest {
                let recorded = state.repos.get(&repo).and_then(|r| r.get(key)).cloned();
                if recorded.as_ref().is_some_and(|r| r.blake3 == *blake3) {
                    continue;
                }
                let target = dir.join(key);
                let on_disk = std::fs::metadata(&target).ok();
                let changed_since = match (&recorded, &on_disk) {
                    (Some(r), Some(meta)) => !r.holds(&target, meta),
                    (None, Some(_)) => true,
                    (_, None) => false,
                };
                if changed_since {
                    continue; // A write in progress there: the next round decides.
                }
                let (dataset, path) = key.split_once('/').expect("keys are dataset/path");
                let written = match source {
                    Source::Master(size) => write_whole_from(
                        &target,
                        &mut OriginReader::new(origin, dataset, path, *size),
                    ),
                    Source::Cluster => {
                        let cache_key = CacheKey::new(dataset, path);
                        bus.coherent_read(cache, &cache_key)?;
                        let mut reader =
                            cache.store().file_reader(dataset, path)?.ok_or_else(|| {
                                BusError::Conflict(format!(
                                    "{key}: the newest version vanished from L3"
                                ))
                            })?;
                        write_whole_from(&target, &mut reader)
                    }
                }
                .context(|| format!("cannot write {}", target.display()))?;
                state
                    .repos
                    .entry(repo.clone())
                    .or_default()
                    .insert(key.clone(), Synced::of(&written, blake3.clone()));
                round.copies += 1;
            }
        }
        let json = serde_json::to_vec_pretty(&*state).map_err(|err| {
            BusError::Internal(format!("cannot encode the repositories' state: {err}"))
        })?;
        vbus_store::atomic::write_whole(&self.state_path, &json)?;
        Ok(round)
    }

    /// Takes a repository's changed file as a write: to the master outside a cluster, through
    /// L3 and the coherence directory in one.
    fn write(
        &self,
        bus: &BusAgent,
        cache: &CacheManager,
        dataset: &str,
        path: &str,
        file: &Path,
        size: u64,
    ) -> Result<(), BusError> {
        let mut reader =
            std::fs::File::open(file).context(|| format!("cannot open {}", file.display()))?;
        if !bus.in_cluster() {
            bus.origin().write_file(dataset, path, &mut reader, size)?;
            return Ok(());
        }
        let key = CacheKey::new(dataset, path);
        let mut writer = cache.writer(key.clone())?;
        std::io::copy(&mut reader, &mut writer)
            .context(|| format!("cannot copy {} into L3", file.display()))?;
        cache.commit(key.clone(), writer)?;
        bus.coherent_write(cache, &key)?;
        Ok(())
    }
}

/// Where the newest version of a file is.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// The master, this many bytes.
    Master(u64),
    /// A dirty line of the coherence directory (fetched through L3).
    Cluster,
}

/// A whole origin file as a reader, 8 MiB per request.
struct OriginReader<'a> {
    origin: &'a Origin,
    dataset: &'a str,
    path: &'a str,
    size: u64,
    offset: u64,
    buffer: Vec<u8>,
    at: usize,
}

impl<'a> OriginReader<'a> {
    fn new(origin: &'a Origin, dataset: &'a str, path: &'a str, size: u64) -> Self {
        Self {
            origin,
            dataset,
            path,
            size,
            offset: 0,
            buffer: Vec::new(),
            at: 0,
        }
    }
}

impl std::io::Read for OriginReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.buffer.len() {
            if self.offset >= self.size {
                return Ok(0);
            }
            let len = (self.size - self.offset).min(8 << 20);
            self.buffer = self
                .origin
                .read_range(self.dataset, self.path, self.offset, len)
                .map_err(std::io::Error::other)?;
            self.offset += len;
            self.at = 0;
        }
        let n = out.len().min(self.buffer.len() - self.at);
        out[..n].copy_from_slice(&self.buffer[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write of the same size in the same tick as the recorded one leaves the stamp as it
    /// was: a copy recorded that young is hashed before its stamp counts, an older one is not.
    #[test]
    fn a_racily_stamped_copy_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.txt");
        std::fs::write(&path, b"first").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let recorded = Synced::of(&meta, hash_file(&path).unwrap());
        assert!(recorded.racy);
        assert!(recorded.holds(&path, &meta));

        // Same size, same modification time, other bytes.
        std::fs::write(&path, b"other").unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(meta.modified().unwrap()).unwrap();
        let now = std::fs::metadata(&path).unwrap();
        assert_eq!(stamp(&now), recorded.stamp);
        assert!(!recorded.holds(&path, &now));

        // Modified long before it was recorded: the stamp is trusted, and the file is not read
        // (a same-size write that kept the time goes unseen, as it would without the rule).
        let old = SystemTime::now() - Duration::from_secs(60);
        file.set_modified(old).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let recorded = Synced::of(&meta, hash_file(&path).unwrap());
        assert!(!recorded.racy);
        assert!(recorded.holds(&path, &meta));
        std::fs::write(&path, b"third").unwrap();
        file.set_modified(old).unwrap();
        let now = std::fs::metadata(&path).unwrap();
        assert_eq!(stamp(&now), recorded.stamp);
        assert!(recorded.holds(&path, &now));
    }

    /// The stamp of a replaced file is the one it was synced with (the rename leaves it as it
    /// was, so the copy is not taken for a change), and a write after the rename changes it.
    #[test]
    fn a_copy_is_stamped_before_it_takes_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ds/f.txt");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"an older copy").unwrap();
        let written = write_whole_from(&path, &mut &b"from the master"[..]).unwrap();
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(stamp(&written), stamp(&after));
        assert_eq!(written.ino(), after.ino());
        assert_eq!(std::fs::read(&path).unwrap(), b"from the master");
        std::fs::write(&path, b"a user's write").unwrap();
        let recorded = Synced::of(&written, hash_reader(&mut &b"from the master"[..]).unwrap());
        assert!(!recorded.holds(&path, &std::fs::metadata(&path).unwrap()));
    }
}
