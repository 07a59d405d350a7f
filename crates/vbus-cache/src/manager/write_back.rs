//! Puts (write-through and write-back), the dirty values of each key stripe, and their
//! publication to L3.

use super::*;

impl Inner {
    pub(super) fn stripe(&self, key: &CacheKey) -> Stripe<'_> {
        let hash = foldhash::fast::FixedState::default().hash_one(key);
        self.stripes[hash as usize % self.stripes.len()].lock()
    }

    /// The key's newest version: its dirty value, else L3's file. Called with its stripe held.
    pub(super) fn current(&self, stripe: &Stripe<'_>, key: &CacheKey) -> Result<Option<Current>> {
        if let Some(dirty) = stripe.get(key) {
            return Ok(Some(Current {
                version: dirty.value.version(),
                pinned: dirty.pinned,
            }));
        }
        Ok(self
            .l3
            .meta(key.dataset(), key.path())?
            .map(|meta| Current {
                version: meta.version,
                pinned: meta.pinned,
            }))
    }

    /// True while `version` is the key's newest. Puts keep L1 in step under the key's stripe;
    /// this check on L1 hits is a second line of defence, cheap beside a device copy.
    pub(super) fn is_current(&self, key: &CacheKey, version: u64) -> Result<bool> {
        let stripe = self.stripe(key);
        Ok(self
            .current(&stripe, key)?
            .is_some_and(|current| current.version == version))
    }

    /// A write-through put: publishes to L3, then keeps the value in L2. A dirty value of the
    /// key is superseded only once L3 holds the new one (it stays readable if the publish fails).
    pub(super) fn put_through(
        &self,
        stripe: &mut Stripe<'_>,
        key: &CacheKey,
        bytes: &[u8],
        kind: u8,
    ) -> Result<(Value, Victims)> {
        let dirty_pinned = stripe.get(key).is_some_and(|dirty| dirty.pinned);
        let mut meta = self
            .l3
            .store_file_with(key.dataset(), key.path(), bytes, None, kind)?;
        self.forget_dirty(stripe, key);
        if dirty_pinned && !meta.pinned {
            self.l3.pin(key.dataset(), key.path())?;
            meta.pinned = true;
        }
        // A put's value has no other copy: L3 must never evict it.
        self.refetchable.lock().remove(key);
        let value = self.value_from_slice(bytes, meta.version).with_kind(kind);
        let current = Current {
            version: meta.version,
            pinned: meta.pinned,
        };
        let victims = self.fill_l2_at(key, &value, current).unwrap_or_default();
        Ok((value, victims))
    }

    /// A write-back put: keeps the value in L2 and records it as dirty, at a version reserved in
    /// L3. `None` when it cannot stay in memory alone (no L2, too large, L2 full of pinned values,
    /// or the dirty bytes would pass twice L2's capacity): the caller writes it through.
    pub(super) fn put_dirty(
        &self,
        stripe: &mut Stripe<'_>,
        key: &CacheKey,
        bytes: &[u8],
        kind: u8,
    ) -> Result<Option<(Value, Victims)>> {
        let Some(l2) = &self.l2 else { return Ok(None) };
        let size_bytes = bytes.len() as u64;
        let replaced_bytes = stripe.get(key).map_or(0, |dirty| dirty.value.len() as u64);
        let dirty_bytes =
            (self.counters.dirty_bytes.load(Ordering::Relaxed)).saturating_sub(replaced_bytes);
        // Dirty values in L2 take at most its capacity; those outside it (being written back, or
        // whose write-back failed) may take as much again, and no more.
        if size_bytes > l2.capacity_bytes()
            || dirty_bytes + size_bytes > l2.capacity_bytes().saturating_mul(2)
        {
            return Ok(None);
        }
        let pinned = self.current(stripe, key)?.is_some_and(|c| c.pinned);
        let version = self.l3.reserve_version();
        let value = self.value_from_slice(bytes, version).with_kind(kind);
        let evicted =
            match l2.insert_unless(key.clone(), value.clone(), size_bytes, pinned, |held| {
                held.version() >= version
            }) {
                Inserted::Stored { evicted } => evicted,
                Inserted::Refused(_) => return Ok(None),
            };
        self.forget_dirty(stripe, key);
        stripe.insert(
            key.clone(),
            Dirty {
                value: value.clone(),
                pinned,
            },
        );
        self.counters.dirty_entries.fetch_add(1, Ordering::Relaxed);
        self.counters
            .dirty_bytes
            .fetch_add(size_bytes, Ordering::Relaxed);
        Ok(Some((value, evicted)))
    }

    /// Drops the key's dirty value (superseded or removed); returns it.
    pub(super) fn forget_dirty(&self, stripe: &mut Stripe<'_>, key: &CacheKey) -> Option<Dirty> {
        let dirty = stripe.remove(key)?;
        self.counters.dirty_entries.fetch_sub(1, Ordering::Relaxed);
        self.counters
            .dirty_bytes
            .fetch_sub(dirty.value.len() as u64, Ordering::Relaxed);
        Some(dirty)
    }

    /// Publishes the key's dirty value to L3 at its version; it stays dirty if that fails.
    pub(super) fn publish_dirty(&self, stripe: &mut Stripe<'_>, key: &CacheKey) -> Result<()> {
        let Some(dirty) = stripe.get(key).cloned() else {
            return Ok(());
        };
        let meta = self.l3.store_file_with(
            key.dataset(),
            key.path(),
            dirty.value.bytes(),
            Some(dirty.value.version()),
            dirty.value.kind(),
        )?;
        if dirty.pinned && !meta.pinned {
            self.l3.pin(key.dataset(), key.path())?;
        }
        self.refetchable.lock().remove(key);
        self.forget_dirty(stripe, key);
        self.counters.write_backs.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_written_back
            .fetch_add(dirty.value.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Writes L2 victims that are dirty to L3, each under its own stripe (taken after the
    /// evicting key's stripe is released: holding both could deadlock). Until then a victim
    /// stays readable from its stripe map. A failure is logged and counted; the value stays dirty.
    pub(super) fn write_back_victims(&self, victims: Victims) {
        if self.write_mode == WriteMode::Through {
            return;
        }
        for (key, value, _) in victims {
            let mut stripe = self.stripe(&key);
            // A newer put of the key is in L2 (dirty or not): nothing to write.
            if stripe
                .get(&key)
                .is_none_or(|dirty| dirty.value.version() != value.version())
            {
                continue;
            }
            if let Err(err) = self.publish_dirty(&mut stripe, &key) {
                self.counters
                    .write_back_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %key, error = %err, "write-back to L3 failed; the value stays dirty in memory");
            }
        }
    }

    /// Writes every dirty value, stripe by stripe. (Several threads were tried: on this 2-core
    /// machine they were slower, the BLAKE3 hashing competing for the cores.)
    pub(super) fn flush(&self) -> Result<()> {
        let mut first_err = None;
        for stripe in self.stripes.iter() {
            let mut stripe = stripe.lock();
            let keys: Vec<CacheKey> = stripe.keys().cloned().collect();
            for key in keys {
                if let Err(err) = self.publish_dirty(&mut stripe, &key) {
                    self.counters
                        .write_back_failures
                        .fetch_add(1, Ordering::Relaxed);
                    first_err.get_or_insert(err);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
