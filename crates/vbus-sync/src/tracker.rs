//! The tracker (the controller): which agents exist, where they answer, and which complete
//! files each holds, per dataset version. Agents register, heartbeat (with their current upload
//! load) and announce; an agent silent for [`AGENT_TTL`] is not named to others until it speaks
//! again. Registrations and holdings persist in `CONTROL_PLANE/tracker.json` (written whole under
//! a temporary name, synced, renamed): a restarted tracker knows its cluster at once. Loads and
//! liveness are not persisted; every agent is given a fresh [`AGENT_TTL`] after a restart.
//!
//! This is the state machine; the `vbus tracker` command serves it over HTTP.

use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::coherence::{Directory, Line, Sharing, WritebackRefused};

/// How often agents heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// An agent not heard from for this long is left out of holder lists.
pub const AGENT_TTL: Duration = Duration::from_secs(5);
/// Most agents a tracker knows.
pub const AGENTS_MAX: usize = 10_000;
/// Most paths in one announce.
pub const ANNOUNCE_PATHS_MAX: usize = 100_000;
/// Longest agent id, address, dataset, version or path accepted.
pub const NAME_BYTES_MAX: usize = 1024;

/// The file the tracker's state lives in, under its directory.
pub const STATE_FILE: &str = "tracker.json";

/// What the tracker refuses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrackerError {
    /// The agent never registered, or left (it should register again).
    #[error("unknown agent {0:?}: register first")]
    UnknownAgent(String),
    /// A name or address is empty, too long or has characters the tracker does not take.
    #[error("bad {what} {value:?}: {why}")]
    BadInput {
        /// Which field.
        what: &'static str,
        /// The value, cut to 64 characters.
        value: String,
        /// What is wrong.
        why: &'static str,
    },
    /// Too many agents or paths.
    #[error("too many {what}: at most {max}")]
    TooMany {
        /// Of what.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// Reading or writing the state file failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The state file is not a tracker state.
    #[error("{path} is not a tracker state: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        why: String,
    },
}

/// An agent as the tracker names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    /// Its id (unique in the cluster).
    pub id: String,
    /// Where its peer API answers (`host:port`).
    pub addr: String,
    /// Uploads it is serving, as its last heartbeat said.
    #[serde(default)]
    pub load: u32,
}

/// The tracker state's format this build writes and reads.
const STATE_FORMAT: u32 = 1;

fn state_format_1() -> u32 {
    1
}

/// The persisted part of the state.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Persisted {
    /// The state file's format (absent, so 1, from builds before it was written).
    #[serde(default = "state_format_1")]
    format: u32,
    agents: BTreeMap<String, Agent>,
    /// `dataset@version` → path → ids of the agents holding that complete file.
    holdings: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    /// The coherence directory (absent from states written before it existed).
    #[serde(default)]
    directory: Directory,
}

vbus_store::impl_from_whole_write_error!(TrackerError);

impl Default for Persisted {
    fn default() -> Self {
        Self {
            format: STATE_FORMAT,
            agents: BTreeMap::new(),
            holdings: BTreeMap::new(),
            directory: Directory::default(),
        }
    }
}

struct Inner {
    persisted: Persisted,
    last_seen: HashMap<String, Instant>,
    /// `dataset@version` → path → agents fetching it now (not persisted: a claim lapses when
    /// its agent announces the file, leaves, or falls silent).
    claims: HashMap<String, HashMap<String, BTreeSet<String>>>,
}

impl Inner {
    /// Refuses an agent that never registered (or left).
    fn known(&self, id: &str) -> Result<(), TrackerError> {
        if self.persisted.agents.contains_key(id) {
            Ok(())
        } else {
            Err(TrackerError::UnknownAgent(id.chars().take(64).collect()))
        }
    }

    /// The agents of `ids` heard from within [`AGENT_TTL`] of now, least loaded first (ties in
    /// a random order, so that equal peers share the work).
    fn live_agents<'a>(&self, ids: impl IntoIterator<Item = &'a String>) -> Vec<Agent> {
        let now = Instant::now();
        let mut agents: Vec<Agent> = ids
            .into_iter()
            .filter(|id| self.alive(id, now))
            .filter_map(|id| self.persisted.agents.get(id).cloned())
            .collect();
        fastrand::shuffle(&mut agents);
        agents.sort_by_key(|agent| agent.load);
        agents
    }

    /// Whether `id` was heard from within [`AGENT_TTL`] of `now`.
    fn alive(&self, id: &str, now: Instant) -> bool {
        self.last_seen
            .get(id)
            .is_some_and(|seen| now.duration_since(*seen) < AGENT_TTL)
    }
}

/// What the tracker knows of one file of a version, for an agent choosing what to fetch next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Availability {
    /// The file.
    pub path: String,
    /// Live agents holding it whole.
    pub holders: u32,
    /// Live agents fetching it now.
    pub fetchers: u32,
}

/// A directory line with the agents that hold its newest version, the owner first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineView {
    /// The line.
    pub line: Line,
    /// Who to fetch the newest version from.
    pub holders: Vec<Agent>,
}

/// The tracker's state, shared by its request handlers.
pub struct Tracker {
    path: PathBuf,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn check_name(what: &'static str, value: &str) -> Result<(), TrackerError> {
    let bad = |why| TrackerError::BadInput {
        what,
        value: value.chars().take(64).collect(),
        why,
    };
    if value.is_empty() {
        return Err(bad("empty"));
    }
    if value.len() > NAME_BYTES_MAX {
        return Err(bad("too long"));
    }
    if value.chars().any(char::is_control) {
        return Err(bad("control characters"));
    }
    Ok(())
}

fn holding_key(dataset: &str, version: &str) -> String {
    format!("{dataset}@{version}")
}

impl Tracker {
    /// The tracker whose state lives in `dir` (created if missing; its state file read if
    /// present).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, TrackerError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| TrackerError::Io {
            op: "create",
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(STATE_FILE);
        let persisted = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let persisted: Persisted =
                    serde_json::from_str(&text).map_err(|err| TrackerError::Corrupt {
                        path: path.clone(),
                        why: err.to_string(),
                    })?;
                if persisted.format != STATE_FORMAT {
                    return Err(TrackerError::Corrupt {
                        path,
                        why: format!(
                            "it is in format {}, which this build cannot read (it reads format \
                             {STATE_FORMAT}); run the release that wrote it",
                            persisted.format
                        ),
                    });
                }
                persisted
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(source) => {
                return Err(TrackerError::Io {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        let now = Instant::now();
        let last_seen = persisted
            .agents
            .keys()
            .map(|id| (id.clone(), now))
            .collect();
        Ok(Self {
            path,
            inner: Mutex::new(Inner {
                persisted,
                last_seen,
                claims: HashMap::new(),
            }),
        })
    }

    /// Writes the persisted state whole: temporary file, sync, rename, directory sync.
    fn save(&self, inner: &Inner) -> Result<(), TrackerError> {
        let text = serde_json::to_vec(&inner.persisted).expect("the state serialises");
        vbus_store::atomic::write_whole(&self.path, &text)?;
        Ok(())
    }

    /// Registers (or re-registers) agent `id` answering at `addr`.
    pub fn register(&self, id: &str, addr: &str) -> Result<(), TrackerError> {
        check_name("agent id", id)?;
        check_name("address", addr)?;
        let mut inner = self.inner.lock();
        if !inner.persisted.agents.contains_key(id) && inner.persisted.agents.len() >= AGENTS_MAX {
            return Err(TrackerError::TooMany {
                what: "agents",
                max: AGENTS_MAX,
            });
        }
        let agent = Agent {
            id: id.to_owned(),
            addr: addr.to_owned(),
            load: 0,
        };
        let changed = inner.persisted.agents.get(id) != Some(&agent);
        inner.persisted.agents.insert(id.to_owned(), agent);
        inner.last_seen.insert(id.to_owned(), Instant::now());
        if changed {
            self.save(&inner)?;
        }
        Ok(())
    }

    /// A heartbeat from `id`, serving `load` uploads now.
    pub fn heartbeat(&self, id: &str, load: u32) -> Result<(), TrackerError> {
        let mut inner = self.inner.lock();
        let Some(agent) = inner.persisted.agents.get_mut(id) else {
            return Err(TrackerError::UnknownAgent(id.chars().take(64).collect()));
        };
        agent.load = load;
        inner.last_seen.insert(id.to_owned(), Instant::now());
        Ok(())
    }

    /// `id` holds these complete files of `dataset@version`.
    pub fn announce(
        &self,
        id: &str,
        dataset: &str,
        version: &str,
        paths: &[String],
    ) -> Result<(), TrackerError> {
        check_name("dataset", dataset)?;
        check_name("version", version)?;
        if paths.len() > ANNOUNCE_PATHS_MAX {
            return Err(TrackerError::TooMany {
                what: "paths in one announce",
                max: ANNOUNCE_PATHS_MAX,
            });
        }
        for path in paths {
            check_name("path", path)?;
        }
        let mut inner = self.inner.lock();
        inner.known(id)?;
        inner.last_seen.insert(id.to_owned(), Instant::now());
        let key = holding_key(dataset, version);
        if let Some(claims) = inner.claims.get_mut(&key) {
            for path in paths {
                if let Some(fetchers) = claims.get_mut(path) {
                    fetchers.remove(id);
                }
            }
        }
        let files = inner.persisted.holdings.entry(key).or_default();
        let mut changed = false;
        for path in paths {
            changed |= files.entry(path.clone()).or_default().insert(id.to_owned());
        }
        if changed {
            self.save(&inner)?;
        }
        Ok(())
    }

    /// `id` no longer holds this file (it failed verification there, or was removed).
    pub fn withdraw(
        &self,
        id: &str,
        dataset: &str,
        version: &str,
        path: &str,
    ) -> Result<(), TrackerError> {
        let mut inner = self.inner.lock();
        let key = holding_key(dataset, version);
        let removed = inner
            .persisted
            .holdings
            .get_mut(&key)
            .and_then(|files| files.get_mut(path))
            .is_some_and(|holders| holders.remove(id));
        if removed {
            self.save(&inner)?;
        }
        Ok(())
    }

    /// `id` leaves the cluster: it and its holdings are forgotten.
    pub fn leave(&self, id: &str) -> Result<(), TrackerError> {
        let mut inner = self.inner.lock();
        if inner.persisted.agents.remove(id).is_none() {
            return Ok(());
        }
        inner.last_seen.remove(id);
        for files in inner.claims.values_mut() {
            for fetchers in files.values_mut() {
                fetchers.remove(id);
            }
        }
        for files in inner.persisted.holdings.values_mut() {
            for holders in files.values_mut() {
                holders.remove(id);
            }
        }
        inner.persisted.directory.forget(id);
        self.save(&inner)
    }

    /// `id` is fetching `path` of `dataset@version` (until it announces it): others prefer
    /// files no one is fetching, so that the origin serves each file about once.
    pub fn claim(
        &self,
        id: &str,
        dataset: &str,
        version: &str,
        path: &str,
    ) -> Result<(), TrackerError> {
        check_name("dataset", dataset)?;
        check_name("version", version)?;
        check_name("path", path)?;
        let mut inner = self.inner.lock();
        inner.known(id)?;
        let files = inner
            .claims
            .entry(holding_key(dataset, version))
            .or_default();
        if !files.contains_key(path) && files.len() >= ANNOUNCE_PATHS_MAX {
            return Err(TrackerError::TooMany {
                what: "files being fetched in one version",
                max: ANNOUNCE_PATHS_MAX,
            });
        }
        files
            .entry(path.to_owned())
            .or_default()
            .insert(id.to_owned());
        Ok(())
    }

    /// For every file of `dataset@version` someone holds or fetches: how many live agents
    /// hold it and how many fetch it.
    pub fn availability(&self, dataset: &str, version: &str) -> Vec<Availability> {
        let inner = self.inner.lock();
        let now = Instant::now();
        let alive = |id: &String| inner.alive(id, now);
        let key = holding_key(dataset, version);
        let mut out: BTreeMap<&str, Availability> = BTreeMap::new();
        let holdings = inner.persisted.holdings.get(&key).into_iter().flatten();
        let claims = inner.claims.get(&key).into_iter().flatten();
        for (is_holding, (path, agents)) in holdings
            .map(|entry| (true, entry))
            .chain(claims.map(|entry| (false, entry)))
        {
            let n = agents.iter().filter(|id| alive(id)).count() as u32;
            let entry = out.entry(path.as_str()).or_insert_with(|| Availability {
                path: path.clone(),
                holders: 0,
                fetchers: 0,
            });
            if is_holding {
                entry.holders = n;
            } else {
                entry.fetchers = n;
            }
        }
        out.into_values().collect()
    }

    /// The live agents holding `path` of `dataset@version`, least loaded first (ties in a
    /// random order, so that equal peers share the work).
    pub fn holders(&self, dataset: &str, version: &str, path: &str) -> Vec<Agent> {
        let inner = self.inner.lock();
        let ids = inner
            .persisted
            .holdings
            .get(&holding_key(dataset, version))
            .and_then(|files| files.get(path));
        inner.live_agents(ids.into_iter().flatten())
    }

    /// The live agents fetching `path` of `dataset@version` now (they serve the pieces they have
    /// verified), least loaded first.
    pub fn fetchers(&self, dataset: &str, version: &str, path: &str) -> Vec<Agent> {
        let inner = self.inner.lock();
        let ids = inner
            .claims
            .get(&holding_key(dataset, version))
            .and_then(|files| files.get(path));
        inner.live_agents(ids.into_iter().flatten())
    }

    /// Agent `id` wrote a new version of `dataset/path` (`blake3`, `size_bytes`): the
    /// directory orders it after every earlier write, makes `id` its `Modified` owner and every
    /// other holder, including agents holding the file from a pull, `Invalid`.
    pub fn write(
        &self,
        id: &str,
        dataset: &str,
        path: &str,
        blake3: &str,
        size_bytes: u64,
    ) -> Result<Line, TrackerError> {
        check_name("dataset", dataset)?;
        check_name("path", path)?;
        check_name("blake3", blake3)?;
        let mut inner = self.inner.lock();
        inner.known(id)?;
        let prefix = format!("{dataset}@");
        let pulled: BTreeSet<String> = inner
            .persisted
            .holdings
            .iter()
            .filter(|(key, _)| key.starts_with(&prefix))
            .filter_map(|(_, files)| files.get(path))
            .flatten()
            .filter(|holder| *holder != id)
            .cloned()
            .collect();
        let line = inner
            .persisted
            .directory
            .write(id, dataset, path, blake3, size_bytes, pulled)
            .clone();
        self.save(&inner)?;
        Ok(line)
    }

    /// The directory's line for `dataset/path` and the agents holding its newest version (the
    /// owner first), if any write made one.
    pub fn line(&self, dataset: &str, path: &str) -> Option<LineView> {
        let inner = self.inner.lock();
        let line = inner.persisted.directory.line(dataset, path)?.clone();
        let holders = line
            .valid_holders()
            .into_iter()
            .filter_map(|id| inner.persisted.agents.get(id).cloned())
            .collect();
        Some(LineView { line, holders })
    }

    /// Agent `id` holds `version` of `dataset/path` now; whether that is the newest.
    pub fn shared(
        &self,
        id: &str,
        dataset: &str,
        path: &str,
        version: u64,
    ) -> Result<bool, TrackerError> {
        let mut inner = self.inner.lock();
        inner.known(id)?;
        let sharing = inner.persisted.directory.shared(id, dataset, path, version);
        if sharing == Sharing::Changed {
            self.save(&inner)?;
        }
        Ok(sharing != Sharing::NotNewest)
    }

    /// Agent `id` starts writing back the newest version of `dataset/path` to the master.
    pub fn begin_writeback(
        &self,
        id: &str,
        dataset: &str,
        path: &str,
    ) -> Result<Line, WritebackRefused> {
        self.inner
            .lock()
            .persisted
            .directory
            .begin_writeback(id, dataset, path, Instant::now())
    }

    /// Agent `id` ended its write-back of `version` (`written`: the master has it whole);
    /// whether the line is clean now.
    pub fn end_writeback(
        &self,
        id: &str,
        dataset: &str,
        path: &str,
        version: u64,
        written: bool,
    ) -> Result<bool, TrackerError> {
        let mut inner = self.inner.lock();
        let clean = inner
            .persisted
            .directory
            .end_writeback(id, dataset, path, version, written);
        // Only a write-back of the newest version changes what is persisted.
        if written && clean {
            self.save(&inner)?;
        }
        Ok(clean)
    }

    /// The dirty lines owned by `owner` (or, with `None`, of `dataset`; or all).
    pub fn dirty(&self, owner: Option<&str>, dataset: Option<&str>) -> Vec<Line> {
        let inner = self.inner.lock();
        let directory = &inner.persisted.directory;
        match (owner, dataset) {
            (Some(owner), _) => directory.dirty_of(owner),
            (None, Some(dataset)) => directory.dirty_in(dataset),
            (None, None) => directory.lines().filter(|l| l.dirty).cloned().collect(),
        }
    }

    /// Every agent, with whether it is alive.
    pub fn agents(&self) -> Vec<(Agent, bool)> {
        let inner = self.inner.lock();
        let now = Instant::now();
        inner
            .persisted
            .agents
            .values()
            .map(|agent| (agent.clone(), inner.alive(&agent.id, now)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_announces_orders_by_load_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let tracker = Tracker::open(dir.path()).unwrap();
        assert!(matches!(
            tracker.heartbeat("a", 0),
            Err(TrackerError::UnknownAgent(_))
        ));
        tracker.register("a", "127.0.0.1:1").unwrap();
        tracker.register("b", "127.0.0.1:2").unwrap();
        let paths = vec!["x/1.bin".to_owned(), "2.bin".to_owned()];
        tracker.announce("a", "ds", "v1", &paths).unwrap();
        tracker.announce("b", "ds", "v1", &paths[..1]).unwrap();
        tracker.heartbeat("a", 5).unwrap();
        tracker.heartbeat("b", 1).unwrap();
        let ids = |holders: Vec<Agent>| holders.into_iter().map(|a| a.id).collect::<Vec<_>>();
        assert_eq!(ids(tracker.holders("ds", "v1", "x/1.bin")), ["b", "a"]);
        assert_eq!(ids(tracker.holders("ds", "v1", "2.bin")), ["a"]);
        assert!(tracker.holders("ds", "v2", "2.bin").is_empty());
        tracker.withdraw("a", "ds", "v1", "2.bin").unwrap();
        assert!(tracker.holders("ds", "v1", "2.bin").is_empty());
        assert!(matches!(
            tracker.announce("zz", "ds", "v1", &paths),
            Err(TrackerError::UnknownAgent(_))
        ));
        assert!(matches!(
            tracker.register("", "x"),
            Err(TrackerError::BadInput { .. })
        ));
        drop(tracker);

        // A restart keeps agents and holdings (loads start at 0, in random order).
        let tracker = Tracker::open(dir.path()).unwrap();
        let mut holders = ids(tracker.holders("ds", "v1", "x/1.bin"));
        holders.sort();
        assert_eq!(holders, ["a", "b"]);
        tracker.leave("b").unwrap();
        assert_eq!(ids(tracker.holders("ds", "v1", "x/1.bin")), ["a"]);
        assert_eq!(tracker.agents().len(), 1);
        drop(tracker);
        let tracker = Tracker::open(dir.path()).unwrap();
        assert_eq!(tracker.agents().len(), 1);
    }

    #[test]
    fn claims_show_as_fetchers_until_the_file_is_announced() {
        let dir = tempfile::tempdir().unwrap();
        let tracker = Tracker::open(dir.path()).unwrap();
        tracker.register("a", "127.0.0.1:1").unwrap();
        tracker.register("b", "127.0.0.1:2").unwrap();
        assert!(tracker.availability("ds", "v1").is_empty());
        tracker.claim("a", "ds", "v1", "f1").unwrap();
        tracker.claim("b", "ds", "v1", "f1").unwrap();
        tracker.claim("b", "ds", "v1", "f2").unwrap();
        let avail = |path: &str| {
            let all = tracker.availability("ds", "v1");
            all.into_iter()
                .find(|a| a.path == path)
                .map(|a| (a.holders, a.fetchers))
        };
        assert_eq!(avail("f1"), Some((0, 2)));
        assert_eq!(tracker.fetchers("ds", "v1", "f1").len(), 2);
        tracker
            .announce("a", "ds", "v1", &["f1".to_owned()])
            .unwrap();
        assert_eq!(avail("f1"), Some((1, 1)));
        tracker.leave("b").unwrap();
        assert_eq!(avail("f1"), Some((1, 0)));
        assert_eq!(avail("f2"), Some((0, 0)));
        assert!(matches!(
            tracker.claim("zz", "ds", "v1", "f1"),
            Err(TrackerError::UnknownAgent(_))
        ));
    }

    #[test]
    fn the_directory_invalidates_pullers_and_survives_a_restart() {
        use crate::coherence::LineState;
        let dir = tempfile::tempdir().unwrap();
        let tracker = Tracker::open(dir.path()).unwrap();
        for (id, port) in [("a", 1), ("b", 2), ("c", 3)] {
            tracker.register(id, &format!("127.0.0.1:{port}")).unwrap();
        }
        // b and c hold x from a pull of some version.
        tracker
            .announce("b", "ds", "v1", &["x".to_owned()])
            .unwrap();
        tracker
            .announce("c", "ds", "v1", &["x".to_owned()])
            .unwrap();
        let line = tracker.write("a", "ds", "x", "h1", 5).unwrap();
        assert_eq!(line.version, 1);
        assert_eq!(line.holders["b"], LineState::Invalid);
        assert_eq!(line.holders["c"], LineState::Invalid);
        assert!(tracker.shared("b", "ds", "x", 1).unwrap());
        let view = tracker.line("ds", "x").unwrap();
        let ids: Vec<&str> = view.holders.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(tracker.write("zz", "ds", "x", "h", 1).is_err());
        assert_eq!(tracker.dirty(Some("a"), None).len(), 1);
        drop(tracker);

        let tracker = Tracker::open(dir.path()).unwrap();
        let line = tracker.line("ds", "x").unwrap().line;
        assert_eq!((line.version, line.dirty), (1, true));
        let leased = tracker.begin_writeback("a", "ds", "x").unwrap();
        assert!(
            tracker
                .end_writeback("a", "ds", "x", leased.version, true)
                .unwrap()
        );
        assert!(tracker.dirty(None, Some("ds")).is_empty());
        tracker.leave("c").unwrap();
        assert!(
            !tracker
                .line("ds", "x")
                .unwrap()
                .line
                .holders
                .contains_key("c")
        );
    }

    #[test]
    fn a_damaged_state_file_is_refused_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
        assert!(matches!(
            Tracker::open(dir.path()),
            Err(TrackerError::Corrupt { .. })
        ));
    }

    /// Issue 20, formats: a state file carries its format; one without it (an older build's) is
    /// format 1, a later one is refused by name.
    #[test]
    fn the_state_file_carries_its_format() {
        let dir = tempfile::tempdir().unwrap();
        {
            let tracker = Tracker::open(dir.path()).unwrap();
            tracker.register("a", "127.0.0.1:1").unwrap();
        }
        let path = dir.path().join(STATE_FILE);
        let mut state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(state["format"], 1);
        state.as_object_mut().unwrap().remove("format");
        std::fs::write(&path, state.to_string()).unwrap();
        assert!(
            Tracker::open(dir.path()).is_ok(),
            "an older build's state opens"
        );
        state["format"] = 2.into();
        std::fs::write(&path, state.to_string()).unwrap();
        let Err(err) = Tracker::open(dir.path()) else {
            panic!("a later format is refused");
        };
        assert!(err.to_string().contains("format 2"), "{err}");
    }
}
