//! The coherence directory (`coherency_protocol: "mesi"`), kept by the tracker.
//!
//! For every `(dataset, path)` written through a clustered daemon the directory holds a *line*:
//! the newest version (a counter the directory alone advances, so concurrent writers end in one
//! order), its BLAKE3 and size, the agent that owns it, whether it still has to be written back
//! to the master, and each holder's MESI state:
//!
//! - a write takes a new version: the writer is `Modified`, every other holder `Invalid`;
//! - a reader that fetched the newest version becomes `Shared`, and so does a `Modified` or
//!   `Exclusive` owner (which keeps the duty to write back while the line is dirty);
//! - a write-back of the newest version cleans the line: a `Modified` owner becomes
//!   `Exclusive`.
//!
//! Write-backs to the master are serialised per line by a lease ([`WRITEBACK_LEASE`]), so an
//! older version can never land on the master after a newer one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long a write-back may hold a line before another may start one.
pub const WRITEBACK_LEASE: Duration = Duration::from_secs(120);

/// A holder's state for one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineState {
    /// Holds the newest version, which the master does not have yet.
    Modified,
    /// Holds the newest version alone, and the master has it.
    Exclusive,
    /// Holds the newest version, as others may.
    Shared,
    /// Holds an older version (or none): must fetch before reading.
    Invalid,
}

/// The directory's entry for one `(dataset, path)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    /// The dataset.
    pub dataset: String,
    /// The file in it.
    pub path: String,
    /// The newest version: 1 for the first write, one more for each after.
    pub version: u64,
    /// BLAKE3 (hex) of the newest version.
    pub blake3: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// The agent that wrote it.
    pub owner: String,
    /// Whether the master still lacks it.
    pub dirty: bool,
    /// Agent id → state.
    pub holders: BTreeMap<String, LineState>,
}

impl Line {
    /// The agents holding the newest version (every state but `Invalid`), the owner first.
    pub fn valid_holders(&self) -> Vec<&str> {
        let mut out = vec![self.owner.as_str()];
        out.extend(
            self.holders
                .iter()
                .filter(|(id, state)| **state != LineState::Invalid && **id != self.owner)
                .map(|(id, _)| id.as_str()),
        );
        out
    }
}

/// What [`Directory::shared`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// The version is not the newest: nothing changed.
    NotNewest,
    /// The newest, and the states were already so.
    Unchanged,
    /// The newest; a state changed (the directory must be saved).
    Changed,
}

/// What refuses a write-back (sent over the wire as it is, so agents match on the kind).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WritebackRefused {
    /// No line for that file.
    #[error("no directory line for {0}")]
    NoLine(String),
    /// The line is clean at that version or newer: nothing to write.
    #[error("{key} is already at the master (version {version})")]
    Clean {
        /// `dataset/path`.
        key: String,
        /// The line's version.
        version: u64,
    },
    /// Another write-back of the line is running.
    #[error("{key} is being written back by {by}")]
    Busy {
        /// `dataset/path`.
        key: String,
        /// Its writer.
        by: String,
    },
}

/// The directory: lines, and the write-backs running now (leases are not persisted: after a
/// restart a write-back starts over, which is safe because each writes a whole version).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    lines: BTreeMap<String, Line>,
    #[serde(skip)]
    leases: BTreeMap<String, (String, u64, Instant)>,
}

/// The directory's key of a file.
pub fn line_key(dataset: &str, path: &str) -> String {
    format!("{dataset}/{path}")
}

impl Directory {
    /// The line of `dataset/path`, if any write made one.
    pub fn line(&self, dataset: &str, path: &str) -> Option<&Line> {
        self.lines.get(&line_key(dataset, path))
    }

    /// Every line.
    pub fn lines(&self) -> impl Iterator<Item = &Line> {
        self.lines.values()
    }

    /// `writer` wrote a new version of `dataset/path` (`blake3`, `size_bytes`): it takes the
    /// next version and is `Modified`; every other holder, and every agent in `also_holding`
    /// (holders of the file from pulls), is `Invalid`. Returns the line.
    pub fn write(
        &mut self,
        writer: &str,
        dataset: &str,
        path: &str,
        blake3: &str,
        size_bytes: u64,
        also_holding: impl IntoIterator<Item = String>,
    ) -> &Line {
        let line = self
            .lines
            .entry(line_key(dataset, path))
            .or_insert_with(|| Line {
                dataset: dataset.to_owned(),
                path: path.to_owned(),
                version: 0,
                blake3: String::new(),
                size_bytes: 0,
                owner: writer.to_owned(),
                dirty: true,
                holders: BTreeMap::new(),
            });
        line.version += 1;
        line.blake3 = blake3.to_owned();
        line.size_bytes = size_bytes;
        line.owner = writer.to_owned();
        line.dirty = true;
        for id in also_holding {
            line.holders.entry(id).or_insert(LineState::Invalid);
        }
        for state in line.holders.values_mut() {
            *state = LineState::Invalid;
        }
        line.holders.insert(writer.to_owned(), LineState::Modified);
        line
    }

    /// `reader` holds `version` of `dataset/path` now: `Shared` if that is the newest (and an
    /// owner in `Modified` or `Exclusive` becomes `Shared` too).
    pub fn shared(&mut self, reader: &str, dataset: &str, path: &str, version: u64) -> Sharing {
        let Some(line) = self.lines.get_mut(&line_key(dataset, path)) else {
            return Sharing::NotNewest;
        };
        if line.version != version {
            return Sharing::NotNewest;
        }
        if reader == line.owner {
            return Sharing::Unchanged;
        }
        let before = line.holders.insert(reader.to_owned(), LineState::Shared);
        let mut changed = before != Some(LineState::Shared);
        if let Some(owner) = line.holders.get_mut(&line.owner)
            && matches!(owner, LineState::Modified | LineState::Exclusive)
        {
            *owner = LineState::Shared;
            changed = true;
        }
        if changed {
            Sharing::Changed
        } else {
            Sharing::Unchanged
        }
    }

    /// `by` starts writing back `dataset/path` at the newest version, which it returns with
    /// the line; refused while the line is clean or another write-back runs.
    pub fn begin_writeback(
        &mut self,
        by: &str,
        dataset: &str,
        path: &str,
        now: Instant,
    ) -> Result<Line, WritebackRefused> {
        let key = line_key(dataset, path);
        let line = self
            .lines
            .get(&key)
            .ok_or_else(|| WritebackRefused::NoLine(key.clone()))?;
        if !line.dirty {
            return Err(WritebackRefused::Clean {
                key,
                version: line.version,
            });
        }
        if let Some((holder, _, since)) = self.leases.get(&key)
            && now.duration_since(*since) < WRITEBACK_LEASE
        {
            return Err(WritebackRefused::Busy {
                key,
                by: holder.clone(),
            });
        }
        self.leases.insert(key, (by.to_owned(), line.version, now));
        Ok(line.clone())
    }

    /// `by` finished (or abandoned, `written == false`) the write-back of `version`: the lease
    /// is released, and if that version is still the newest the line is clean. Returns whether
    /// the line is clean now.
    pub fn end_writeback(
        &mut self,
        by: &str,
        dataset: &str,
        path: &str,
        version: u64,
        written: bool,
    ) -> bool {
        let key = line_key(dataset, path);
        if self
            .leases
            .get(&key)
            .is_some_and(|(holder, leased, _)| holder == by && *leased == version)
        {
            self.leases.remove(&key);
        }
        let Some(line) = self.lines.get_mut(&key) else {
            return false;
        };
        if written && line.version == version {
            line.dirty = false;
            if let Some(owner) = line.holders.get_mut(&line.owner)
                && *owner == LineState::Modified
            {
                *owner = LineState::Exclusive;
            }
        }
        !line.dirty
    }

    /// The dirty lines `owner` wrote, for its write-back timer.
    pub fn dirty_of(&self, owner: &str) -> Vec<Line> {
        self.lines
            .values()
            .filter(|line| line.dirty && line.owner == owner)
            .cloned()
            .collect()
    }

    /// The dirty lines of `dataset`, whoever owns them (for a push).
    pub fn dirty_in(&self, dataset: &str) -> Vec<Line> {
        self.lines
            .values()
            .filter(|line| line.dirty && line.dataset == dataset)
            .cloned()
            .collect()
    }

    /// Forgets `id` as a holder (it left the cluster); lines it owns stay, dirty ones
    /// included, until it comes back to write them back.
    pub fn forget(&mut self, id: &str) {
        for line in self.lines.values_mut() {
            if line.owner != id {
                line.holders.remove(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(line: &Line) -> Vec<(&str, LineState)> {
        line.holders
            .iter()
            .map(|(id, state)| (id.as_str(), *state))
            .collect()
    }

    #[test]
    fn a_write_invalidates_a_read_shares_a_writeback_cleans() {
        use LineState::*;
        let mut dir = Directory::default();
        let line = dir.write("a", "ds", "x", "h1", 3, ["b".to_owned(), "c".to_owned()]);
        assert_eq!(line.version, 1);
        assert_eq!(
            states(line),
            [("a", Modified), ("b", Invalid), ("c", Invalid)]
        );
        assert_eq!(dir.shared("b", "ds", "x", 1), Sharing::Changed);
        assert_eq!(dir.shared("b", "ds", "x", 1), Sharing::Unchanged);
        assert_eq!(
            dir.shared("c", "ds", "x", 0),
            Sharing::NotNewest,
            "an older version"
        );
        let line = dir.line("ds", "x").unwrap();
        assert_eq!(states(line), [("a", Shared), ("b", Shared), ("c", Invalid)]);
        assert_eq!(line.valid_holders(), ["a", "b"]);

        // c writes: v2, owned by c; a and b are invalid.
        let line = dir.write("c", "ds", "x", "h2", 4, []);
        assert_eq!((line.version, line.owner.as_str()), (2, "c"));
        assert_eq!(
            states(line),
            [("a", Invalid), ("b", Invalid), ("c", Modified)]
        );

        let now = Instant::now();
        let leased = dir.begin_writeback("c", "ds", "x", now).unwrap();
        assert_eq!(leased.version, 2);
        assert!(matches!(
            dir.begin_writeback("a", "ds", "x", now),
            Err(WritebackRefused::Busy { .. })
        ));
        assert!(dir.end_writeback("c", "ds", "x", 2, true));
        assert_eq!(dir.line("ds", "x").unwrap().holders["c"], Exclusive);
        assert!(matches!(
            dir.begin_writeback("c", "ds", "x", now),
            Err(WritebackRefused::Clean { version: 2, .. })
        ));
    }

    #[test]
    fn a_writeback_overtaken_by_a_write_leaves_the_line_dirty_and_serialises_the_next() {
        let mut dir = Directory::default();
        dir.write("a", "ds", "x", "h1", 1, []);
        let now = Instant::now();
        let first = dir.begin_writeback("a", "ds", "x", now).unwrap();
        // b writes while a's write-back of v1 runs.
        dir.write("b", "ds", "x", "h2", 1, []);
        // b's write-back waits for a's to end, so v1 cannot land after v2.
        assert!(matches!(
            dir.begin_writeback("b", "ds", "x", now),
            Err(WritebackRefused::Busy { .. })
        ));
        assert!(!dir.end_writeback("a", "ds", "x", first.version, true));
        assert!(dir.line("ds", "x").unwrap().dirty);
        assert_eq!(dir.dirty_of("b").len(), 1);
        assert!(dir.dirty_of("a").is_empty());
        let second = dir.begin_writeback("b", "ds", "x", now).unwrap();
        assert_eq!(second.version, 2);
        assert!(dir.end_writeback("b", "ds", "x", 2, true));
        // A lease left by a crashed writer expires.
        dir.write("a", "ds", "x", "h3", 1, []);
        dir.begin_writeback("a", "ds", "x", now).unwrap();
        assert!(dir.begin_writeback("b", "ds", "x", now).is_err());
        assert!(
            dir.begin_writeback("b", "ds", "x", now + WRITEBACK_LEASE)
                .is_ok()
        );
    }
}
