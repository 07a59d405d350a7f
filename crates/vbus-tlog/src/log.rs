//! [`Log`]: appends with group commit, recovery on open, reads from any retained record.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::histogram::{Histogram, LatencySummary};
use crate::record::{self, MAX_BODY_BYTES, RecordRef};
use crate::segment::{self, SegmentInfo};
use crate::{Error, Result};

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

/// Checks the newest segment and repairs what a crash mid-append leaves: a torn tail is zeroed,
/// and a newest segment without records whose predecessor stops short of it (the rotation made
/// it, the records meant for the end of the old one were never written, and none of them was
/// acknowledged) is removed. Damage followed by good records is corruption. Returns where the
/// newest segment's records end and its size.
fn recover_tail(
    dir: &Path,
    segments: &mut Vec<SegmentInfo>,
    recovery: &mut Recovery,
) -> Result<(segment::ScanEnd, u64)> {
    loop {
        let last = segments.last().expect("called with a segment").clone();
        let bytes = segment::read(&last)?;
        let mut end = segment::scan(&last, &bytes, |_| Ok(true))?;
        if let Some((offset, damage)) = end.damage.take() {
            let dirty_end = bytes.iter().rposition(|&b| b != 0).map_or(0, |at| at + 1);
            let kept_aside = keep_aside(dir, &last, offset, &bytes[offset as usize..dirty_end]);
            if segment::any_record_after(&bytes, offset as usize) {
                tracing::error!(segment = %last.path.display(), offset, kept_aside = %kept_aside, "the transaction log is damaged: {damage}, and good records follow it");
                return Err(Error::Corrupt {
                    segment: last.path.clone(),
                    offset,
                    reason: format!(
                        "{damage}, and good records follow it (its bytes are kept in \
                         {kept_aside}; `vbus state repair` truncates the log there)"
                    ),
                });
            }
            // A crash mid-append leaves the record's first sectors written and zeros (the
            // preallocated file) after them; any other bad record was damaged after it was
            // written, and may have been acknowledged: never zeroed silently.
            if !segment::is_torn_write(&bytes, offset as usize, &damage) {
                tracing::error!(segment = %last.path.display(), offset, kept_aside = %kept_aside, "the transaction log's last record is damaged, not torn: {damage}");
                return Err(Error::Corrupt {
                    segment: last.path.clone(),
                    offset,
                    reason: format!(
                        "{damage} in the last record, which does not end in zeros as a torn write \
                         does (its bytes are kept in {kept_aside}; `vbus state repair` truncates \
                         the log there)"
                    ),
                });
            }
            recovery.n_torn_records += 1;
            let zeros = vec![0u8; dirty_end.saturating_sub(offset as usize)];
            let file = OpenOptions::new()
                .write(true)
                .open(&last.path)
                .map_err(Error::io("open", &last.path))?;
            file.write_all_at(&zeros, offset)
                .and_then(|()| file.sync_data())
                .map_err(Error::io("truncate the torn tail of", &last.path))?;
            recovery.torn_tail_bytes += zeros.len() as u64;
            tracing::warn!(
                segment = %last.path.display(),
                offset,
                bytes = zeros.len(),
                kept_aside = %kept_aside,
                "zeroed a torn tail: {damage}"
            );
        }
        let empty = end.next_seq == last.first_seq;
        if empty && segments.len() > 1 {
            let previous = &segments[segments.len() - 2];
            let previous_bytes = segment::read(previous)?;
            let previous_end = segment::scan(previous, &previous_bytes, |_| Ok(true))?;
            if previous_end.next_seq < last.first_seq {
                std::fs::remove_file(&last.path).map_err(Error::io("remove", &last.path))?;
                segment::sync_dir(dir)?;
                tracing::warn!(
                    segment = %last.path.display(),
                    "removed a segment begun by a rotation the crash interrupted"
                );
                segments.pop();
                continue;
            }
        }
        return Ok((end, bytes.len() as u64));
    }
}

/// Folder of the log where bytes cut from it (torn tails, damaged records) are kept.
pub(crate) const DAMAGED_DIR: &str = "damaged";

/// Copies bytes about to be cut from a segment (or refused in it) to
/// `DIR/damaged/{segment}.{offset}`, for inspection; returns that path (or why it could not).
fn keep_aside(dir: &Path, segment: &SegmentInfo, offset: u64, bytes: &[u8]) -> String {
    let name = segment
        .path
        .file_name()
        .map_or_else(|| "segment".into(), |name| name.to_string_lossy());
    let path = dir.join(DAMAGED_DIR).join(format!("{name}.{offset}"));
    let written = std::fs::create_dir_all(dir.join(DAMAGED_DIR))
        .and_then(|()| std::fs::write(&path, bytes))
        .and_then(|()| File::open(&path)?.sync_all());
    match written {
        Ok(()) => path.display().to_string(),
        Err(err) => format!("nowhere: cannot write {}: {err}", path.display()),
    }
}

/// Takes the exclusive lock of the log in `dir` (`DIR/LOCK`), held as long as the file is. A busy
/// lock is retried for a moment: a `fork` in another thread of this process briefly holds a copy
/// of a just-released lock until its `exec`.
pub(crate) fn lock_dir(dir: &Path) -> Result<File> {
    let lock_path = dir.join("LOCK");
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(Error::io("open", &lock_path))?;
    let deadline = Instant::now() + LOCK_WAIT;
    while rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        if Instant::now() >= deadline {
            return Err(Error::Locked {
                path: dir.to_owned(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(lock)
}

impl LogCore {
    /// Opens (or creates) the log in `dir`: takes its lock, checks the newest segment, zeroes a
    /// torn tail, and refuses any other damage with [`Error::Corrupt`].
    fn open(dir: impl Into<PathBuf>, options: LogOptions) -> Result<(Self, Recovery)> {
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
    fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one record; returns its sequence number once it is as durable as asked.
    fn append(&self, kind: u8, payload: &[u8], durability: Durability) -> Result<u64> {
        self.append_batch(&[(kind, payload)], durability)
            .map(|range| range.end - 1)
    }

    /// Appends records with consecutive sequence numbers, all or none visible to a reader after
    /// a crash up to a torn tail; returns their range once the last is as durable as asked.
    fn append_batch(
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
    fn enqueue(
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
        let mut state = self.lock();
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
    fn enqueue_with(
        &self,
        durability: Durability,
        write_payload: impl FnOnce(&mut Vec<u8>) -> u8,
    ) -> Result<u64> {
        let mut state = self.lock();
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
    fn after_enqueue(
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
    fn flush_queued(&self) -> Result<()> {
        let mut state = self.lock();
        state.flusher_woken = false;
        if state.pending.is_empty() || state.leader_active {
            return Ok(());
        }
        let last = state.next_seq - 1;
        self.wait_for(state, last, Durability::Buffered)
    }

    /// Whether enough is queued again that the flusher should go on without waiting.
    fn flush_due(&self) -> bool {
        let state = self.lock();
        state.pending_bytes >= ASYNC_WAKE_BYTES && !state.leader_active
    }

    /// Waits until record `seq` (enqueued earlier) is as durable as asked.
    fn wait_durable(&self, seq: u64, durability: Durability) -> Result<()> {
        let mut state = self.lock();
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
    fn sync(&self) -> Result<u64> {
        let mut state = self.lock();
        let last = state.next_seq - 1;
        state.want_sync_seq = state.want_sync_seq.max(last);
        self.wait_for(state, last, Durability::Fdatasync)?;
        Ok(last)
    }

    /// Encodes one record at the tail, starting a new segment when it does not fit.
    fn encode_into(&self, state: &mut State, kind: u8, payload: &[u8]) -> Result<()> {
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
    fn tail_chunk(state: &mut State) -> &mut Chunk {
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
    fn rotate(&self, state: &mut State, record_len: u64) -> Result<()> {
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
    fn wait_for<'a>(
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
                state = self.done.wait(state).unwrap_or_else(|p| p.into_inner());
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
                    state = self.lock();
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
            state = self.lock();
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

    fn write_and_sync(
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

    /// Calls `visit` with every record from `from_seq` to the last one written when the call
    /// began, in order; `visit` returns `false` to stop early. Damage anywhere is an error
    /// naming the segment and offset.
    fn read_from(
        &self,
        from_seq: u64,
        mut visit: impl FnMut(RecordRef<'_>) -> Result<bool>,
    ) -> Result<u64> {
        let (segments, last) = {
            let state = self.lock();
            (state.segments.clone(), state.written_seq)
        };
        let first = segments.first().map_or(1, |s| s.first_seq);
        if from_seq < first || from_seq > last + 1 {
            return Err(Error::NotRetained {
                seq: from_seq,
                first,
                last,
            });
        }
        let start_idx = segments
            .iter()
            .rposition(|segment| segment.first_seq <= from_seq)
            .unwrap_or(0);
        let mut n_visited = 0u64;
        let mut bytes = Vec::new();
        for (idx, segment) in segments.iter().enumerate().skip(start_idx) {
            if segment.first_seq > last {
                break;
            }
            segment::read_into(segment, &mut bytes)?;
            let mut stop = false;
            let end = segment::scan(segment, &bytes, |record| {
                if record.seq > last {
                    stop = true;
                    return Ok(false);
                }
                if record.seq >= from_seq {
                    n_visited += 1;
                    if !visit(record)? {
                        stop = true;
                        return Ok(false);
                    }
                }
                Ok(true)
            })?;
            if stop {
                break;
            }
            if let Some((offset, damage)) = end.damage {
                return Err(Error::Corrupt {
                    segment: segment.path.clone(),
                    offset,
                    reason: damage.to_string(),
                });
            }
            // A segment must end where the next begins.
            let expected_next = segments
                .get(idx + 1)
                .map_or(last + 1, |next| next.first_seq);
            if end.next_seq < expected_next.min(last + 1) {
                return Err(Error::Corrupt {
                    segment: segment.path.clone(),
                    offset: end.end_offset,
                    reason: format!(
                        "records end at {} but the log continues at {expected_next}",
                        end.next_seq
                    ),
                });
            }
        }
        Ok(n_visited)
    }

    /// Deletes the segments whose records all precede `seq` (never the active one). Returns how
    /// many were deleted.
    fn release_before(&self, seq: u64) -> Result<usize> {
        let doomed: Vec<SegmentInfo> = {
            let mut state = self.lock();
            let n_doomed = state
                .segments
                .windows(2)
                .take_while(|pair| pair[1].first_seq <= seq)
                .count();
            state.segments.drain(..n_doomed).collect()
        };
        for segment in &doomed {
            std::fs::remove_file(&segment.path).map_err(Error::io("remove", &segment.path))?;
        }
        if !doomed.is_empty() {
            segment::sync_dir(&self.dir)?;
        }
        Ok(doomed.len())
    }

    /// The figures so far.
    fn stats(&self) -> LogStats {
        let state = self.lock();
        LogStats {
            first_seq: state.segments.first().map_or(1, |s| s.first_seq),
            last_seq: state.next_seq - 1,
            synced_seq: state.synced_seq,
            appended_bytes: state.appended_bytes,
            n_group_writes: state.n_group_writes,
            n_syncs: state.n_syncs,
            n_segments: state.segments.len(),
            append: self.append_latency.summary(),
            sync: self.sync_latency.summary(),
        }
    }

    /// The next sequence number an append will get.
    fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// Puts the log in the state a failed write or sync leaves it in (for tests of callers'
    /// error paths; a real failure cannot be provoked on demand).
    #[doc(hidden)]
    fn inject_failure(&self, reason: &str) {
        self.lock().failed = Some(reason.to_owned());
    }
}

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
            *stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
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
            let mut guard = stopped.lock().unwrap_or_else(|p| p.into_inner());
            if !due && !*guard {
                guard = wake
                    .wait_timeout(guard, FLUSH_INTERVAL)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
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
