//! The MESI side of the agent: writes ordered at the coherence directory, reads that fetch the
//! newest version first, and write-backs of Modified lines to the master.

use std::io::Write as _;

use vbus_cache::{CacheKey, CacheManager};

use super::{BusAgent, COHERENT_FETCH_BYTES};
use crate::directory::{Directory, DirectoryError};
use crate::error::BusError;

impl BusAgent {
    /// After a local write of `key` (published in L3): orders it at the coherence directory,
    /// which makes this agent the `Modified` owner of the new version and invalidates every
    /// other holder. `None` outside a cluster.
    pub fn coherent_write(
        &self,
        cache: &CacheManager,
        key: &CacheKey,
    ) -> Result<Option<crate::Line>, BusError> {
        let Some(tracker) = self.directory() else {
            return Ok(None);
        };
        let meta = cache
            .store()
            .meta(key.dataset(), key.path())?
            .ok_or_else(|| {
                BusError::Conflict(format!(
                    "{key} was removed before the directory ordered the write"
                ))
            })?;
        let blake3 = meta.hash_hex().unwrap_or_default();
        let line = self
            .with_registration(tracker, || {
                tracker.write(
                    &self.id,
                    key.dataset(),
                    key.path(),
                    &blake3,
                    meta.size_bytes,
                )
            })
            .map_err(|err| {
                BusError::Unavailable(format!(
                    "{key} is stored here, but the coherence directory did not order the write, \
                     so it is not acknowledged (a later read takes the directory's newest \
                     version): {err}"
                ))
            })?;
        // This copy is the only one of the new version until it is written back: L3 must not
        // evict it.
        if !meta.pinned {
            match cache.pin(key.clone()) {
                Ok(_) => {
                    self.coherence_pins.lock().insert(key.to_string());
                }
                Err(err) => tracing::warn!(error = %err, "cannot pin {key} until written back"),
            }
        }
        // Copies pulled as part of dataset versions no longer match: stop offering them (the
        // versions are listed first: no lock is held across the tracker calls).
        let stale: Vec<String> = self
            .holdings
            .lock()
            .values()
            .filter(|holding| {
                holding.dataset == key.dataset()
                    && holding
                        .files
                        .get(key.path())
                        .is_some_and(|hash| *hash != blake3)
            })
            .map(|holding| holding.version.clone())
            .collect();
        for version in stale {
            if let Err(err) = tracker.withdraw(&self.id, key.dataset(), &version, key.path()) {
                tracing::warn!(error = %err, "cannot withdraw the pulled copy of {key}");
            }
        }
        Ok(Some(line))
    }

    /// Before a read of `key`: asks the coherence directory for its newest version and, when
    /// this agent's copy is older (Invalid), fetches the newest from an agent holding it (the
    /// owner first) or, once written back, from the master, verifies it and publishes it in
    /// L3. A read is refused (503) rather than served stale when the directory or every
    /// holder of the newest version cannot be reached. Outside a cluster, or for a file no
    /// clustered write touched, nothing is done.
    pub fn coherent_read(&self, cache: &CacheManager, key: &CacheKey) -> Result<(), BusError> {
        let Some(tracker) = self.directory() else {
            return Ok(());
        };
        let unavailable = BusError::Unavailable;
        let view = tracker.line(key.dataset(), key.path()).map_err(|err| {
            unavailable(format!(
                "cannot ask the coherence directory about {key}, so a read could be stale: {err}"
            ))
        })?;
        let Some(view) = view else {
            return Ok(());
        };
        let line = &view.line;
        let held = cache
            .store()
            .meta(key.dataset(), key.path())
            .ok()
            .flatten()
            .and_then(|meta| meta.hash_hex());
        if held.as_deref() != Some(line.blake3.as_str()) {
            self.fetch_newest(cache, key, &view)?;
        }
        let listed = line.holders.get(&self.id).copied();
        if line.owner != self.id
            && !matches!(listed, Some(crate::LineState::Shared))
            && let Err(err) = self.with_registration(tracker, || tracker.shared(&self.id, line))
        {
            tracing::debug!(error = %err, "cannot report holding {key} at version {}", line.version);
        }
        Ok(())
    }

    /// Fetches the newest version of a line into L3, whole and verified.
    fn fetch_newest(
        &self,
        cache: &CacheManager,
        key: &CacheKey,
        view: &crate::LineView,
    ) -> Result<(), BusError> {
        let line = &view.line;
        let mut failures = Vec::new();
        let sources = view
            .holders
            .iter()
            .filter(|agent| agent.id != self.id)
            .map(Some)
            // Once written back, the master has the newest version too.
            .chain((!line.dirty).then_some(None));
        for source in sources {
            let name = source.map_or("the master".to_owned(), |agent| agent.id.clone());
            let fetched = (|| -> Result<vbus_store::FileWriter, BusError> {
                let mut writer = cache.writer(key.clone())?;
                let mut hasher = blake3::Hasher::new();
                let mut offset = 0;
                while offset < line.size_bytes {
                    let len = (line.size_bytes - offset).min(COHERENT_FETCH_BYTES);
                    let bytes = match source {
                        Some(agent) => crate::peer::fetch_range(
                            &self.http,
                            &agent.addr,
                            key.dataset(),
                            key.path(),
                            &line.blake3,
                            offset,
                            len,
                        )
                        .map_err(|e| BusError::Unavailable(e.to_string()))?,
                        None => self
                            .origin
                            .read_range(key.dataset(), key.path(), offset, len)?,
                    };
                    hasher.update(&bytes);
                    writer
                        .write_all(&bytes)
                        .map_err(|e| BusError::Internal(format!("cannot stage {key}: {e}")))?;
                    offset += len;
                }
                let got = hasher.finalize().to_hex();
                if got.as_str() != line.blake3 {
                    return Err(BusError::Unavailable(format!(
                        "its copy has BLAKE3 {got}, not {}",
                        line.blake3
                    )));
                }
                Ok(writer)
            })();
            match fetched {
                Ok(writer) => {
                    cache.commit(key.clone(), writer)?;
                    return Ok(());
                }
                Err(why) => failures.push(format!("{name}: {why}")),
            }
        }
        Err(BusError::Unavailable(format!(
            "the newest version ({}) of {key} is owned by {} and could not be fetched: {}",
            line.version,
            line.owner,
            if failures.is_empty() {
                "no holder is known".to_owned()
            } else {
                failures.join("; ")
            }
        )))
    }

    /// Writes back one dirty line to the master: leased at the directory (so versions land in
    /// order), fetched first if this agent's copy is not the newest, then the directory is told.
    /// Returns whether the master has the line's newest version now.
    fn write_back(
        &self,
        tracker: &dyn Directory,
        cache: &CacheManager,
        dataset: &str,
        path: &str,
    ) -> Result<bool, BusError> {
        let unavailable = |err: DirectoryError| BusError::Unavailable(err.to_string());
        let leased = match tracker.begin_writeback(&self.id, dataset, path) {
            Ok(Ok(line)) => line,
            Ok(Err(crate::coherence::WritebackRefused::Clean { .. })) => return Ok(true),
            Ok(Err(refused)) => {
                tracing::debug!(%refused, "write-back not started");
                return Ok(false);
            }
            Err(err) => return Err(unavailable(err)),
        };
        let key = CacheKey::new(dataset, path);
        let written = (|| -> Result<(), BusError> {
            let current = |cache: &CacheManager| {
                cache.store().file_reader(dataset, path).map(|reader| {
                    reader
                        .filter(|r| r.meta().hash_hex().as_deref() == Some(leased.blake3.as_str()))
                })
            };
            let reader = match current(cache)? {
                Some(reader) => reader,
                None => {
                    let view = crate::LineView {
                        line: leased.clone(),
                        holders: tracker
                            .line(dataset, path)
                            .map_err(unavailable)?
                            .map(|view| view.holders)
                            .unwrap_or_default(),
                    };
                    self.fetch_newest(cache, &key, &view)?;
                    current(cache)?.ok_or_else(|| {
                        BusError::Conflict(format!("{key}: the fetched copy was replaced at once"))
                    })?
                }
            };
            let size = reader.meta().size_bytes;
            let mut reader = reader;
            self.origin
                .write_file(dataset, path, &mut reader, size)
                .map_err(|err| BusError::Unavailable(format!("the master: {err}")))
        })();
        let ok = written.is_ok();
        let clean = tracker
            .end_writeback(&self.id, &leased, ok)
            .map_err(unavailable)?;
        written.map(|()| {
            tracing::info!(%dataset, %path, version = leased.version, "written back to the master");
            clean
        })
    }

    /// The write-back timer: every dirty line this agent owns goes to the master.
    pub(super) fn write_back_owned(&self, tracker: &dyn Directory, cache: &CacheManager) {
        let lines = match tracker.dirty(Some(&self.id), None) {
            Ok(lines) => lines,
            Err(err) => {
                tracing::debug!(error = %err, "cannot list dirty lines");
                return;
            }
        };
        for line in lines {
            if let Err(err) = self.write_back(tracker, cache, &line.dataset, &line.path) {
                tracing::warn!(error = %err, "cannot write back {}/{}", line.dataset, line.path);
            }
        }
        // Unpin what no longer needs this agent's copy: written back (by anyone), or owned
        // by another writer now.
        let pinned: Vec<String> = self.coherence_pins.lock().iter().cloned().collect();
        for name in pinned {
            let Some((dataset, path)) = name.split_once('/') else {
                continue;
            };
            let needed = match tracker.line(dataset, path) {
                Ok(view) => view.is_some_and(|v| v.line.dirty && v.line.owner == self.id),
                Err(_) => continue,
            };
            if !needed {
                if let Err(err) = cache.unpin(CacheKey::new(dataset, path)) {
                    tracing::warn!(error = %err, "cannot unpin {name} after its write-back");
                }
                self.coherence_pins.lock().remove(&name);
            }
        }
    }

    /// Before a push: every dirty line of `dataset`, whoever owns it, is written back (fetched
    /// from its owner when needed). Errors name the files that could not be.
    pub(super) fn write_back_dataset(
        &self,
        cache: &CacheManager,
        dataset: &str,
    ) -> Result<usize, BusError> {
        let Some(tracker) = self.directory() else {
            return Ok(0);
        };
        let lines = tracker.dirty(None, Some(dataset)).map_err(|err| {
            BusError::Unavailable(format!("cannot list the dirty files of {dataset}: {err}"))
        })?;
        let mut failed = Vec::new();
        for line in &lines {
            match self.write_back(tracker, cache, &line.dataset, &line.path) {
                Ok(true) => {}
                Ok(false) => failed.push(format!("{}: another write-back is running", line.path)),
                Err(err) => failed.push(format!("{}: {err}", line.path)),
            }
        }
        if failed.is_empty() {
            Ok(lines.len())
        } else {
            Err(BusError::Unavailable(format!(
                "cannot write back every modified file of {dataset}: {}",
                failed.join("; ")
            )))
        }
    }
}
