//! Moves between the memory tiers: fills of L2, page-locked value bytes, copies to and from the
//! device (L1) and its demotions.

use super::*;

impl Inner {
    /// Puts `value` in L2 unless the key has moved on (a newer put, or a remove) or L2 holds a
    /// newer value. Called with the key's stripe held. `None` when it was not stored; the victims
    /// when it was.
    pub(super) fn fill_l2(
        &self,
        stripe: &Stripe<'_>,
        key: &CacheKey,
        value: &Value,
    ) -> Result<Option<Victims>> {
        Ok(match self.current(stripe, key)? {
            Some(current) if current.version == value.version() => {
                self.fill_l2_at(key, value, current)
            }
            _ => None,
        })
    }

    /// [`Inner::fill_l2`] when the caller already knows the key's newest version (a put, which
    /// got it from the publish and holds the stripe).
    pub(super) fn fill_l2_at(
        &self,
        key: &CacheKey,
        value: &Value,
        current: Current,
    ) -> Option<Victims> {
        let l2 = self.l2.as_ref()?;
        let version = value.version();
        match l2.insert_unless(
            key.clone(),
            value.clone(),
            value.len() as u64,
            current.pinned,
            |held| held.version() >= version,
        ) {
            Inserted::Stored { evicted } => Some(evicted),
            Inserted::Refused(_) => None,
        }
    }

    /// Page-locked room for a value of `len` bytes: when L1 is on CUDA, the value is at least
    /// [`PAGE_LOCKED_MIN_BYTES`] and the pool has room now (it grows in the background, never
    /// while a caller waits). `None` means the heap.
    pub(super) fn page_locked_room(&self, len: usize) -> Option<vbus_gpu::HostBuffer> {
        if len < PAGE_LOCKED_MIN_BYTES {
            return None;
        }
        let l1 = self.l1.as_ref().filter(|l1| l1.page_locked)?;
        l1.device.alloc_host_ready(len as u64)
    }

    /// Room for a value of `len` bytes, to be filled: page-locked where
    /// [`Self::page_locked_room`] gives it, else zeroed heap.
    pub(super) fn value_bytes(&self, len: usize) -> ValueBytes {
        self.page_locked_room(len)
            .map_or_else(|| ValueBytes::Heap(vec![0; len]), ValueBytes::PageLocked)
    }

    /// A value holding a copy of `bytes` (a put's), placed as [`Self::value_bytes`] places it.
    pub(super) fn value_from_slice(&self, bytes: &[u8], version: u64) -> Value {
        let bytes = match self.page_locked_room(bytes.len()) {
            Some(mut room) => {
                room.copy_from_slice(bytes);
                ValueBytes::PageLocked(room)
            }
            None => ValueBytes::Heap(bytes.to_vec()),
        };
        Value::from_bytes(bytes, version)
    }

    /// An L1 value copied back to the host (by DMA when it lands in page-locked memory).
    pub(super) fn download(&self, l1: &L1, on_device: &DeviceValue) -> Result<Value> {
        let mut bytes = self.value_bytes(on_device.buffer.len() as usize);
        l1.device
            .download(&on_device.buffer, 0, bytes.as_mut())
            .map_err(Error::Device)?;
        Ok(Value::from_bytes(bytes, on_device.version).with_kind(on_device.kind))
    }

    /// Copies `value` to the device and keeps it in L1 (unless the key has moved on, or L1 holds
    /// this version or a newer one). L1 victims go back to L2 when L2 lacks them; none is ever
    /// the only copy, as L3 or the dirty values hold every value. Returns the device value, kept
    /// in L1 or not.
    pub(super) fn fill_l1(&self, key: &CacheKey, value: &Value) -> Result<Arc<DeviceValue>> {
        let l1 = self.l1.as_ref().ok_or(Error::NoL1)?;
        let mut buffer = l1.device.alloc(value.len() as u64).map_err(Error::Device)?;
        l1.device
            .upload(value.bytes(), &mut buffer, 0)
            .map_err(Error::Device)?;
        self.counters
            .promotions_to_l1
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_to_l1
            .fetch_add(value.len() as u64, Ordering::Relaxed);
        let on_device = Arc::new(DeviceValue {
            buffer,
            version: value.version(),
            kind: value.kind(),
        });
        let victims = {
            let stripe = self.stripe(key);
            let Some(current) = self
                .current(&stripe, key)?
                .filter(|current| current.version == value.version())
            else {
                return Ok(on_device);
            };
            let version = value.version();
            match l1.tier.insert_unless(
                key.clone(),
                Arc::clone(&on_device),
                value.len() as u64,
                current.pinned,
                |held| held.version >= version,
            ) {
                Inserted::Stored { evicted } => evicted,
                Inserted::Refused(_) => Vec::new(),
            }
        };
        // Each victim under its own stripe, after this key's is released (taking both at once
        // could deadlock with a fill of the victim's key).
        for (victim, victim_value, _) in victims {
            let l2_victims = self.demote_from_l1(l1, &victim, &victim_value)?;
            self.write_back_victims(l2_victims);
        }
        Ok(on_device)
    }

    /// Copies an L1 victim into L2 when L2 lacks it and it is still the key's newest version (so
    /// a demotion never brings back a value older than a completed put). Takes the victim's
    /// stripe; returns L2's victims.
    pub(super) fn demote_from_l1(
        &self,
        l1: &L1,
        key: &CacheKey,
        on_device: &DeviceValue,
    ) -> Result<Victims> {
        let Some(l2) = &self.l2 else {
            return Ok(Vec::new());
        };
        if l2.contains(key) || on_device.buffer.len() > l2.capacity_bytes() {
            return Ok(Vec::new());
        }
        let stripe = self.stripe(key);
        let Some(current) = self
            .current(&stripe, key)?
            .filter(|current| current.version == on_device.version)
        else {
            return Ok(Vec::new());
        };
        let value = self.download(l1, on_device)?;
        let Some(victims) = self.fill_l2_at(key, &value, current) else {
            return Ok(Vec::new());
        };
        self.counters
            .demotions_from_l1
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_from_l1
            .fetch_add(value.len() as u64, Ordering::Relaxed);
        Ok(victims)
    }
}
