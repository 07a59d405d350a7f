//! Loads of a missing key (the dirty values, L3, then the source), once for all concurrent
//! gets, and the prefetch thread.

use super::*;

impl Inner {
    /// Loads `key` from the dirty values, L3 or the source, once for all concurrent callers.
    pub(super) fn load(&self, key: &CacheKey) -> Result<Option<Value>> {
        for _ in 0..SHARED_LOAD_ATTEMPTS_MAX {
            let (load, leader) = {
                let mut loads = self.loads.lock();
                match loads.get(key) {
                    Some(load) => (Arc::clone(load), false),
                    None => {
                        let load = Arc::new(Load::default());
                        loads.insert(key.clone(), Arc::clone(&load));
                        (load, true)
                    }
                }
            };
            if leader {
                let result = self.load_uncached(key);
                *load.outcome.lock() = Some(
                    result
                        .as_ref()
                        .map(Clone::clone)
                        .map_err(ToString::to_string),
                );
                load.done.notify_all();
                self.loads.lock().remove(key);
                return result;
            }
            let shared = {
                let mut outcome = load.outcome.lock();
                while outcome.is_none() {
                    load.done.wait(&mut outcome);
                }
                outcome.clone().expect("checked")
            };
            let shared = shared.map_err(|message| Error::SharedLoad {
                dataset: key.dataset().to_owned(),
                path: key.path().to_owned(),
                message,
            })?;
            // The load may have read L3 before this get began: use its outcome only if it still
            // describes the key, else load again (a get never answers older than what preceded
            // it).
            let current = {
                let stripe = self.stripe(key);
                self.current(&stripe, key)?
            };
            let still_current = match (&shared, current) {
                (Some(value), Some(current)) => value.version() == current.version,
                (None, None) => true,
                _ => false,
            };
            if still_current {
                return Ok(shared);
            }
        }
        self.load_uncached(key)
    }

    pub(super) fn load_uncached(&self, key: &CacheKey) -> Result<Option<Value>> {
        // A dirty value L2 evicted and a write-back has not finished with.
        if let Some(dirty) = self.stripe(key).get(key) {
            return Ok(Some(dirty.value.clone()));
        }
        let from_l3 = match self
            .l3
            .get_file_into(key.dataset(), key.path(), |len| self.value_bytes(len))
        {
            // The file failed its checksum and was quarantined: a source has a good copy.
            Err(err @ vbus_store::Error::ChecksumMismatch { .. }) if self.source.is_some() => {
                tracing::warn!(key = %key, error = %err, "L3's copy is damaged; fetching it again");
                None
            }
            found => found?,
        };
        if let Some((bytes, meta)) = from_l3 {
            self.counters.l3_hits.fetch_add(1, Ordering::Relaxed);
            let value = Value::from_bytes(bytes, meta.version).with_kind(meta.kind);
            let victims = {
                let stripe = self.stripe(key);
                self.fill_l2(&stripe, key, &value)?
            };
            if let Some(victims) = victims {
                self.counters.promotions.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .bytes_l3_to_l2
                    .fetch_add(value.len() as u64, Ordering::Relaxed);
                self.write_back_victims(victims);
            }
            return Ok(Some(value));
        }
        self.counters.l3_misses.fetch_add(1, Ordering::Relaxed);
        let Some(source) = &self.source else {
            return Ok(None);
        };
        let fetched = source.fetch(key).map_err(|err| Error::Source {
            source_name: source.name().to_owned(),
            dataset: key.dataset().to_owned(),
            path: key.path().to_owned(),
            source: err,
        })?;
        let Some(bytes) = fetched else {
            return Ok(None);
        };
        self.counters.source_fetches.fetch_add(1, Ordering::Relaxed);
        let (value, victims) = {
            let stripe = self.stripe(key);
            // A put that landed meanwhile wins: keep its value.
            if let Some(dirty) = stripe.get(key) {
                return Ok(Some(dirty.value.clone()));
            }
            if self.l3.has_file_by_path(key.dataset(), key.path()) {
                drop(stripe);
                return Ok(self
                    .l3
                    .get_file_into(key.dataset(), key.path(), |len| self.value_bytes(len))?
                    .map(|(bytes, meta)| {
                        Value::from_bytes(bytes, meta.version).with_kind(meta.kind)
                    }));
            }
            let meta = self.l3.store_file(key.dataset(), key.path(), &bytes)?;
            self.refetchable.lock().insert(key.clone());
            let value = Value::new(bytes, meta.version);
            let victims = self.fill_l2(&stripe, key, &value)?;
            (value, victims)
        };
        self.write_back_victims(victims.unwrap_or_default());
        Ok(Some(value))
    }
}

impl Drop for Inner {
    /// Dirty values reach L3 when the last handle goes.
    fn drop(&mut self) {
        if let Err(err) = self.flush() {
            tracing::error!(error = %err, "write-back at close failed; dirty values were lost");
        }
    }
}

/// Loads prefetched keys until the cache is dropped.
pub(super) fn prefetch_worker(inner: Weak<Inner>, requests: mpsc::Receiver<CacheKey>) {
    while let Ok(key) = requests.recv() {
        let Some(inner) = inner.upgrade() else { return };
        let cached = inner.l2.as_ref().is_some_and(|l2| l2.contains(&key));
        if !cached && let Err(err) = inner.load(&key) {
            tracing::debug!(key = %key, error = %err, "prefetch failed");
        }
    }
}
