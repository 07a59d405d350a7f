//! [`Log`]: appends with group commit, recovery on open, reads from any retained record.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::histogram::{Histogram, LatencySummary};
use crate::record::{self, MAX_BODY_BYTES, RecordRef};
use crate::segment::{self, SegmentInfo};
use crate::{Error, Result};

mod handle;
mod read;
mod recover;

pub use handle::Log;
use recover::recover_tail;
pub(crate) use recover::{DAMAGED_DIR, lock_dir};

/// What an append has survived when it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Queued in the log's memory: written by the next append that waits, by the log's flusher
    /// within [`FLUSH_INTERVAL`], or when queued bytes pass [`ASYNC_PENDING_MAX_BYTES`]. A
    /// process crash loses at most that window; what is written is never torn.
    Async,
    /// Written to the operating system: survives the process, not a power cut.
    Buffered,
    /// `fdatasync`ed: survives a power cut (the default).
    #[default]
    Fdatasync,
    /// `fsync`ed, metadata included.
    Fsync,
}

impl Durability {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Async => "async",
            Self::Buffered => "buffered",
            Self::Fdatasync => "fdatasync",
            Self::Fsync => "fsync",
        }
    }
}

/// Scheduler yields a sync leader gives other writers to queue their records first, at most (it
/// stops as soon as a yield brings none).
const GATHER_STEPS_MAX: usize = 8;

/// How long an open waits for a busy lock before it reports [`Error::Locked`].
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How long an `Async` append waits, at most, for its write.
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(5);
/// Queued `Async` bytes beyond which the appender writes them itself.
pub const ASYNC_PENDING_MAX_BYTES: u64 = 4 << 20;
/// Queued `Async` bytes at which the flusher is woken before its tick, so that large appends are
/// written by the flusher on another core while the appender goes on.
pub const ASYNC_WAKE_BYTES: u64 = 1 << 20;

/// How a log is opened.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Bytes preallocated per segment (a larger record gets a segment of its own size). Default
    /// 64 MiB.
    pub segment_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
        }
    }
}

/// What the open found and repaired.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovery {
    /// Segments on disk.
    pub n_segments: usize,
    /// The last record found (0 when the log is empty).
    pub last_seq: u64,
    /// Bytes of a torn tail (a record cut by a crash mid-write) zeroed; 0 when there was none.
    /// They are kept in `DIR/damaged/`.
    pub torn_tail_bytes: u64,
    /// Torn records found (0 or 1).
    pub n_torn_records: u64,
}

/// Counters and latencies of a log.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LogStats {
    /// The first retained record.
    pub first_seq: u64,
    /// The last record appended (0 when none).
    pub last_seq: u64,
    /// The last record known durable.
    pub synced_seq: u64,
    /// Bytes appended since open, frames included.
    pub appended_bytes: u64,
    /// Group commits: writes of the pending records by one leader.
    pub n_group_writes: u64,
    /// Syncs (fdatasync or fsync) done.
    pub n_syncs: u64,
    /// Segments on disk.
    pub n_segments: usize,
    /// Append latency, from the call to its durability.
    pub append: LatencySummary,
    /// Sync latency.
    pub sync: LatencySummary,
}

/// Encoded records waiting for a leader to write them, in one file at one offset.
struct Chunk {
    file: Arc<File>,
    path: PathBuf,
    offset: u64,
    bytes: Vec<u8>,
}

struct State {
    segments: Vec<SegmentInfo>,
    active: Arc<File>,
    active_path: PathBuf,
    active_bytes: u64,
    /// Where the next record goes in the active segment.
    tail_offset: u64,
    pending: Vec<Chunk>,
    pending_bytes: u64,
    /// Files written since their last sync.
    unsynced: Vec<Arc<File>>,
    next_seq: u64,
    written_seq: u64,
    synced_seq: u64,
    /// The highest record some waiter wants synced, and whether it wants a full fsync.
    want_sync_seq: u64,
    want_fsync: bool,
    leader_active: bool,
    /// Records the last group sync made durable (more than one: other writers are about).
    last_sync_batch: u64,
    /// The flusher was woken early and has not taken the queue since.
    flusher_woken: bool,
    failed: Option<String>,
    appended_bytes: u64,
    n_group_writes: u64,
    n_syncs: u64,
    /// Encoded-bytes buffers kept for reuse.
    spare: Vec<Vec<u8>>,
}

/// The log itself, shared with the flusher thread.
#[derive(Debug)]
struct LogCore {
    dir: PathBuf,
    options: LogOptions,
    state: Mutex<State>,
    done: Condvar,
    /// The flusher's stop flag and wake-up (shared with [`Log`]).
    flusher: Arc<(Mutex<bool>, Condvar)>,
    append_latency: Histogram,
    sync_latency: Histogram,
    _lock: File,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("next_seq", &self.next_seq)
            .field("synced_seq", &self.synced_seq)
            .finish_non_exhaustive()
    }
}

impl LogCore {
    /// Opens (or creates) the log in `dir`: takes its lock, checks the newest segment, zeroes a
    /// torn tail, and refuses any other damage with [`Error::Corrupt`].
    pub(super) fn open(dir: impl Into<PathBuf>, options: LogOptions) -> Result<(Self, Recovery)> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        let lock = lock_dir(&dir)?;
        let options = LogOptions {
            segment_bytes: options.segment_bytes.max(segment::HEADER_BYTES + 4096),
        };
        let mut segments = segment::list(&dir)?;
        for pair in segments.windows(2) {
            if pair[1].first_seq <= pair[0].first_seq {
                return Err(Error::Corrupt {
                    segment: pair[1].path.clone(),
                    offset: 0,
                    reason: "segments out of order".to_owned(),
                });
            }
        }
        let mut recovery = Recovery::default();
        let (active, active_path, active_bytes, tail_offset, next_seq) = match segments.last() {
            None => {
                let (info, file) = segment::create(&dir, 1, options.segment_bytes)?;
                let path = info.path.clone();
                segments.push(info);
                (file, path, options.segment_bytes, segment::HEADER_BYTES, 1)
            }
            Some(_) => {
                let (end, size_bytes) = recover_tail(&dir, &mut segments, &mut recovery)?;
                let last = segments.last().expect("recovery keeps one segment");
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&last.path)
                    .map_err(Error::io("open", &last.path))?;
                let path = last.path.clone();
                (file, path, size_bytes, end.end_offset, end.next_seq)
            }
        };
        recovery.n_segments = segments.len();
        recovery.last_seq = next_seq - 1;
        let state = State {
            segments,
            active: Arc::new(active),
            active_path,
            active_bytes,
            tail_offset,
            pending: Vec::new(),
            pending_bytes: 0,
            unsynced: Vec::new(),
            next_seq,
            written_seq: next_seq - 1,
            synced_seq: next_seq - 1,
            want_sync_seq: 0,
            want_fsync: false,
            leader_active: false,
            last_sync_batch: 0,
            flusher_woken: false,
            failed: None,
            appended_bytes: 0,
            n_group_writes: 0,
            n_syncs: 0,
            spare: Vec::new(),
        };
        Ok((
            Self {
                dir,
                options,
                state: Mutex::new(state),
                done: Condvar::new(),
                flusher: Arc::new((Mutex::new(false), Condvar::new())),
                append_latency: Histogram::default(),
                sync_latency: Histogram::default(),
                _lock: lock,
            },
            recovery,
        ))
    }

    /// The log's directory.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one record; returns its sequence number once it is as durable as asked.
    pub(super) fn append(&self, kind: u8, payload: &[u8], durability: Durability) -> Result<u64> {
        self.append_batch(&[(kind, payload)], durability)
            .map(|range| range.end - 1)
    }

    /// Appends records with consecutive sequence numbers, all or none visible to a reader after
    /// a crash up to a torn tail; returns their range once the last is as durable as asked.
    pub(super) fn append_batch(
        &self,
        records: &[(u8, &[u8])],
        durability: Durability,
    ) -> Result<std::ops::Range<u64>> {
        let started = Instant::now();
        let range = self.enqueue(records, durability)?;
        self.wait_durable(range.end - 1, durability)?;
        self.append_latency.record(started.elapsed());
        Ok(range)
    }

    /// Numbers and encodes records without waiting for them to be written: the caller's order of
    /// `enqueue` calls is the log's order. [`Log::wait_durable`] then waits (a caller applying
    /// changes in memory enqueues under its own lock and waits outside it, so writers share
    /// syncs). `durability` says what the later wait will ask for.
    pub(super) fn enqueue(
        &self,
        records: &[(u8, &[u8])],
        durability: Durability,
    ) -> Result<std::ops::Range<u64>> {
        for (_, payload) in records {
            if 1 + payload.len() > MAX_BODY_BYTES {
                return Err(Error::TooLarge {
                    body_bytes: 1 + payload.len(),
                    max_bytes: MAX_BODY_BYTES,
                });
            }
        }
        let mut state = self.state.lock();
        if let Some(reason) = &state.failed {
            return Err(Error::Failed {
                reason: reason.clone(),
            });
        }
        let first = state.next_seq;
        for &(kind, payload) in records {
            self.encode_into(&mut state, kind, payload)?;
        }
        let last = state.next_seq - 1;
        self.after_enqueue(state, last, durability)?;
        Ok(first..last + 1)
    }

    /// [`LogCore::enqueue`] of one record whose payload `write_payload` encodes straight into
    /// the queue (returning the record's kind): a large payload is copied once, not twice.
    pub(super) fn enqueue_with(
        &self,
        durability: Durability,
        write_payload: impl FnOnce(&mut Vec<u8>) -> u8,
    ) -> Result<u64> {
        let mut state = self.state.lock();
        if let Some(reason) = &state.failed {
            return Err(Error::Failed {
                reason: reason.clone(),
            });
        }
        let seq = state.next_seq;
        let chunk = Self::tail_chunk(&mut state);
        let start = chunk.bytes.len();
        let payload_len = record::encode_with(&mut chunk.bytes, seq, write_payload);
        if 1 + payload_len > MAX_BODY_BYTES {
            chunk.bytes.truncate(start);
            return Err(Error::TooLarge {
                body_bytes: 1 + payload_len,
                max_bytes: MAX_BODY_BYTES,
            });
        }
        let len = (chunk.bytes.len() - start) as u64;
        if state.tail_offset + len > state.active_bytes {
            // It does not fit the active segment: take the frame back and put it at the start
            // of a new one (a copy, once per segment).
            let chunk = state.pending.last_mut().expect("the tail chunk");
            let frame = chunk.bytes.split_off(start);
            self.rotate(&mut state, len)?;
            Self::tail_chunk(&mut state).bytes.extend_from_slice(&frame);
        }
        state.tail_offset += len;
        state.next_seq += 1;
        state.appended_bytes += len;
        state.pending_bytes += len;
        self.after_enqueue(state, seq, durability)?;
        Ok(seq)
    }

    /// What follows queuing records up to `last`: noting the sync a later wait will want, and
    /// for `Async` records bounding the queue (the appender writes past the limit) or waking the
    /// flusher early.
    pub(super) fn after_enqueue(
        &self,
        mut state: MutexGuard<'_, State>,
        last: u64,
        durability: Durability,
    ) -> Result<()> {
        if matches!(durability, Durability::Fdatasync | Durability::Fsync) {
            state.want_sync_seq = state.want_sync_seq.max(last);
            state.want_fsync |= durability == Durability::Fsync;
        }
        if durability == Durability::Async {
            if state.pending_bytes > ASYNC_PENDING_MAX_BYTES {
                // Bounded memory: past the limit the appender writes the queue itself.
                self.wait_for(state, last, Durability::Buffered)?;
            } else if state.pending_bytes >= ASYNC_WAKE_BYTES
                && !state.flusher_woken
                && !state.leader_active
            {
                state.flusher_woken = true;
                drop(state);
                self.flusher.1.notify_one();
            }
        }
        Ok(())
    }

    /// Writes whatever is queued, if no leader is writing already (the flusher's tick).
    pub(super) fn flush_queued(&self) -> Result<()> {
        let mut state = self.state.lock();
        state.flusher_woken = false;
        if state.pending.is_empty() || state.leader_active {
            return Ok(());
        }
        let last = state.next_seq - 1;
        self.wait_for(state, last, Durability::Buffered)
    }

    /// Whether enough is queued again that the flusher should go on without waiting.
    pub(super) fn flush_due(&self) -> bool {
        let state = self.state.lock();
        state.pending_bytes >= ASYNC_WAKE_BYTES && !state.leader_active
    }

    /// Waits until record `seq` (enqueued earlier) is as durable as asked.
    pub(super) fn wait_durable(&self, seq: u64, durability: Durability) -> Result<()> {
        let mut state = self.state.lock();
        if seq >= state.next_seq {
            return Err(Error::NotRetained {
                seq,
                first: state.segments.first().map_or(1, |s| s.first_seq),
                last: state.next_seq - 1,
            });
        }
        if matches!(durability, Durability::Fdatasync | Durability::Fsync) {
            state.want_sync_seq = state.want_sync_seq.max(seq);
            state.want_fsync |= durability == Durability::Fsync;
        }
        self.wait_for(state, seq, durability)
    }

    /// Writes and syncs everything appended so far.
    pub(super) fn sync(&self) -> Result<u64> {
        let mut state = self.state.lock();
        let last = state.next_seq - 1;
        state.want_sync_seq = state.want_sync_seq.max(last);
        self.wait_for(state, last, Durability::Fdatasync)?;
        Ok(last)
    }

    /// Encodes one record at the tail, starting a new segment when it does not fit.
    pub(super) fn encode_into(&self, state: &mut State, kind: u8, payload: &[u8]) -> Result<()> {
        let len = record::encoded_len(payload.len()) as u64;
        if state.tail_offset + len > state.active_bytes {
            self.rotate(state, len)?;
        }
        let seq = state.next_seq;
        record::encode(&mut Self::tail_chunk(state).bytes, seq, kind, payload);
        state.tail_offset += len;
        state.next_seq += 1;
        state.appended_bytes += len;
        state.pending_bytes += len;
        Ok(())
    }

    /// The pending chunk that ends at the tail of the active segment (a new one when the last
    /// pending chunk does not).
    pub(super) fn tail_chunk(state: &mut State) -> &mut Chunk {
        let contiguous = state.pending.last().is_some_and(|chunk| {
            Arc::ptr_eq(&chunk.file, &state.active)
                && chunk.offset + chunk.bytes.len() as u64 == state.tail_offset
        });
        if !contiguous {
            let bytes = state.spare.pop().unwrap_or_default();
            let chunk = Chunk {
                file: Arc::clone(&state.active),
                path: state.active_path.clone(),
                offset: state.tail_offset,
                bytes,
            };
            state.pending.push(chunk);
        }
        state.pending.last_mut().expect("pushed above")
    }

    /// Starts the segment whose first record is the next one. The old segment keeps its
    /// pending chunks and is synced with them.
    pub(super) fn rotate(&self, state: &mut State, record_len: u64) -> Result<()> {
        let size_bytes = self
            .options
            .segment_bytes
            .max(segment::HEADER_BYTES + record_len);
        let (info, file) =
            segment::create(&self.dir, state.next_seq, size_bytes).inspect_err(|err| {
                state.failed = Some(err.to_string());
            })?;
        let old = std::mem::replace(&mut state.active, Arc::new(file));
        if !state.unsynced.iter().any(|f| Arc::ptr_eq(f, &old)) {
            state.unsynced.push(old);
        }
        state.active_path = info.path.clone();
        state.active_bytes = size_bytes;
        state.tail_offset = segment::HEADER_BYTES;
        state.segments.push(info);
        Ok(())
    }

    /// Waits until record `seq` is as durable as asked, leading a group write when no one else
    /// is.
    pub(super) fn wait_for<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        seq: u64,
        durability: Durability,
    ) -> Result<()> {
        loop {
            if let Some(reason) = &state.failed {
                return Err(Error::Failed {
                    reason: reason.clone(),
                });
            }
            let reached = match durability {
                Durability::Async => true,
                Durability::Buffered => state.written_seq >= seq,
                Durability::Fdatasync | Durability::Fsync => state.synced_seq >= seq,
            };
            if reached {
                return Ok(());
            }
            if state.leader_active {
                self.done.wait(&mut state);
                continue;
            }
            // Lead: take everything pending, write it and (when asked) sync it, unlocked.
            state.leader_active = true;
            if state.want_sync_seq > state.synced_seq && state.last_sync_batch > 1 {
                // Other writers are about: the ones the last sync released are on their way
                // back. Let them queue before syncing, while each step brings more.
                let mut seen = state.next_seq;
                for _ in 0..GATHER_STEPS_MAX {
                    drop(state);
                    std::thread::yield_now();
                    state = self.state.lock();
                    if state.next_seq == seen {
                        break;
                    }
                    seen = state.next_seq;
                }
            }
            let chunks = std::mem::take(&mut state.pending);
            state.pending_bytes = 0;
            let upto = state.next_seq - 1;
            let sync = state.want_sync_seq > state.synced_seq;
            let full = std::mem::take(&mut state.want_fsync);
            let mut files = if sync {
                std::mem::take(&mut state.unsynced)
            } else {
                Vec::new()
            };
            drop(state);
            let outcome = self.write_and_sync(&chunks, &mut files, sync, full);
            state = self.state.lock();
            state.leader_active = false;
            state.n_group_writes += 1;
            match outcome {
                Ok(()) => {
                    state.written_seq = upto;
                    if sync {
                        state.last_sync_batch = upto - state.synced_seq;
                        state.synced_seq = upto;
                        state.n_syncs += 1;
                    } else {
                        for chunk in &chunks {
                            if !state.unsynced.iter().any(|f| Arc::ptr_eq(f, &chunk.file)) {
                                state.unsynced.push(Arc::clone(&chunk.file));
                            }
                        }
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "log write failed; the log refuses writes until reopened");
                    state.failed = Some(err.to_string());
                }
            }
            for mut chunk in chunks {
                if state.spare.len() < 4 && chunk.bytes.capacity() <= (8 << 20) {
                    chunk.bytes.clear();
                    state.spare.push(chunk.bytes);
                }
            }
            self.done.notify_all();
        }
    }

    pub(super) fn write_and_sync(
        &self,
        chunks: &[Chunk],
        files: &mut Vec<Arc<File>>,
        sync: bool,
        full: bool,
    ) -> Result<()> {
        for chunk in chunks {
            chunk
                .file
                .write_all_at(&chunk.bytes, chunk.offset)
                .map_err(Error::io("write", &chunk.path))?;
            if sync && !files.iter().any(|f| Arc::ptr_eq(f, &chunk.file)) {
                files.push(Arc::clone(&chunk.file));
            }
        }
        if sync {
            let started = Instant::now();
            for file in files.iter() {
                if full {
                    file.sync_all()
                } else {
                    file.sync_data()
                }
                .map_err(Error::io("sync", &self.dir))?;
            }
            self.sync_latency.record(started.elapsed());
        }
        Ok(())
    }
}
