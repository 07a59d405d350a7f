//! [`Log`]: the handle the state bus holds; it owns the core and the flusher thread of `Async`
//! appends.

use super::*;

/// The transaction log. Share it behind an `Arc`; every method takes `&self`. A flusher thread
/// writes `Async` appends within [`FLUSH_INTERVAL`]; dropping the log writes what is queued.
#[derive(Debug)]
pub struct Log {
    core: Arc<LogCore>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

impl Log {
    /// Opens (or creates) the log in `dir`: takes its lock, checks the newest segment, zeroes a
    /// torn tail, removes a segment an interrupted rotation left empty, and refuses any other
    /// damage with [`Error::Corrupt`].
    pub fn open(dir: impl Into<PathBuf>, options: LogOptions) -> Result<(Self, Recovery)> {
        let (core, recovery) = LogCore::open(dir, options)?;
        let core = Arc::new(core);
        let stop = Arc::clone(&core.flusher);
        let dir = core.dir().to_path_buf();
        let flusher = {
            let core = Arc::downgrade(&core);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("vbus-tlog-flush".to_owned())
                .spawn(move || flush_periodically(&core, &stop))
                .map_err(Error::io("start the flusher thread of the log at", dir))?
        };
        Ok((
            Self {
                core,
                stop,
                flusher: Some(flusher),
            },
            recovery,
        ))
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        self.core.dir()
    }

    /// Appends one record; returns its sequence number once it is as durable as asked.
    pub fn append(&self, kind: u8, payload: &[u8], durability: Durability) -> Result<u64> {
        self.core.append(kind, payload, durability)
    }

    /// Appends records with consecutive sequence numbers; returns their range once the last is
    /// as durable as asked.
    pub fn append_batch(
        &self,
        records: &[(u8, &[u8])],
        durability: Durability,
    ) -> Result<std::ops::Range<u64>> {
        self.core.append_batch(records, durability)
    }

    /// Numbers and queues records without waiting for them to be written: the caller's order of
    /// `enqueue` calls is the log's order. [`Log::wait_durable`] then waits (a caller applying
    /// changes in memory enqueues under its own lock and waits outside it, so writers share
    /// syncs). `durability` says what the later wait will ask for.
    pub fn enqueue(
        &self,
        records: &[(u8, &[u8])],
        durability: Durability,
    ) -> Result<std::ops::Range<u64>> {
        self.core.enqueue(records, durability)
    }

    /// [`Log::enqueue`] of one record whose payload `write_payload` appends in place to the
    /// queue's buffer (no copy of its own), returning the record's kind; returns its sequence
    /// number. The closure runs under the log's lock: keep it to encoding.
    pub fn enqueue_with(
        &self,
        durability: Durability,
        write_payload: impl FnOnce(&mut Vec<u8>) -> u8,
    ) -> Result<u64> {
        self.core.enqueue_with(durability, write_payload)
    }

    /// Waits until record `seq` (queued earlier) is as durable as asked.
    pub fn wait_durable(&self, seq: u64, durability: Durability) -> Result<()> {
        self.core.wait_durable(seq, durability)
    }

    /// Writes and syncs everything appended so far; returns the last sequence number.
    pub fn sync(&self) -> Result<u64> {
        self.core.sync()
    }

    /// Calls `visit` with every record from `from_seq` to the last one written when the call
    /// began, in order; `visit` returns `false` to stop early. Damage anywhere is an error
    /// naming the segment and offset. Returns how many records were visited.
    pub fn read_from(
        &self,
        from_seq: u64,
        visit: impl FnMut(RecordRef<'_>) -> Result<bool>,
    ) -> Result<u64> {
        self.core.read_from(from_seq, visit)
    }

    /// Deletes the segments whose records all precede `seq` (never the active one). Returns how
    /// many were deleted.
    pub fn release_before(&self, seq: u64) -> Result<usize> {
        self.core.release_before(seq)
    }

    /// The figures so far.
    pub fn stats(&self) -> LogStats {
        self.core.stats()
    }

    /// The next sequence number an append will get.
    pub fn next_seq(&self) -> u64 {
        self.core.next_seq()
    }

    /// Puts the log in the state a failed write or sync leaves it in (for tests of callers'
    /// error paths; a real failure cannot be provoked on demand).
    #[doc(hidden)]
    pub fn inject_failure(&self, reason: &str) {
        self.core.inject_failure(reason);
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        {
            let (stopped, wake) = &*self.stop;
            *stopped.lock() = true;
            wake.notify_all();
        }
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
        if let Err(err) = self.core.flush_queued() {
            tracing::error!(error = %err, "writing the log's queued records at close failed");
        }
    }
}

/// The flusher: every [`FLUSH_INTERVAL`], or sooner when [`ASYNC_WAKE_BYTES`] are queued,
/// writes what `Async` appends queued.
fn flush_periodically(core: &std::sync::Weak<LogCore>, stop: &(Mutex<bool>, Condvar)) {
    let (stopped, wake) = stop;
    let mut due = false;
    loop {
        {
            let mut guard = stopped.lock();
            if !due && !*guard {
                wake.wait_for(&mut guard, FLUSH_INTERVAL);
            }
            if *guard {
                break;
            }
        }
        // The stop lock is not held while writing: an appender's wake-up never waits on a write.
        let Some(core) = core.upgrade() else { break };
        if let Err(err) = core.flush_queued() {
            tracing::debug!(error = %err, "the log's flusher could not write");
        }
        due = core.flush_due();
    }
}
