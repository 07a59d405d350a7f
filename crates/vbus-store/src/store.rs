//! `FileStore`: complete files at `{root}/{dataset}/{path}`, published atomically, indexed and
//! verified.

use parking_lot::{Mutex, RwLock};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::index::{Entry, Index};
use crate::persist::{self, Journal, Record};
use crate::reader::{FileReader, PieceCheck};
use crate::sums::{self, PIECE_BYTES, Sums, SumsBuilder};
use crate::walk;
use crate::writer::FileWriter;
use crate::{Error, Result, name};

mod check;
mod open;
mod read;

use check::{Check, Lookup, Opened, hash_file, read_checked, read_hashed};

/// Staging files of writes in flight; emptied on open.
pub(crate) const STAGING_DIR: &str = ".vbus-staging";
/// Snapshot, journal and lock of the index.
const INDEX_DIR: &str = ".vbus-index";
/// Files whose bytes no longer matched their hash.
const QUARANTINE_DIR: &str = ".vbus-quarantine";
/// The journal is folded into a new snapshot once it holds this many records (or twice as many
/// as there are files, whichever is more).
const COMPACT_RECORDS_MIN: u64 = 100_000;
/// How many times an open retries when the file is replaced between lookup and open.
const OPEN_ATTEMPTS_MAX: usize = 16;
/// How long `open` waits for a busy lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// Buffers at least this large are hashed on every core (BLAKE3's tree splits across threads).
const PARALLEL_HASH_BYTES_MIN: usize = 1 << 20;
/// Read and hash block.
pub(crate) const IO_BLOCK_BYTES: usize = 1 << 20;
/// Verified reads of at least this many bytes hash on another thread as they read.
const PIPELINED_READ_BYTES_MIN: usize = 4 * IO_BLOCK_BYTES;
/// Blocks read and not yet hashed, at most (the hand-off's bound).
const PIPELINED_BLOCKS_AHEAD: usize = 4;

/// Files quarantined and not yet taken by [`FileStore::take_quarantined`], at most (older ones
/// are dropped from that list, not from the quarantine).
const QUARANTINED_LIST_MAX: usize = 1024;

/// When reads check the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// Every read, piece by piece against the XXH3-64 piece checksums kept beside the index (the
    /// default): no byte that fails its checksum leaves the store. A file whose checksums are not
    /// known yet (adopted, or from an older index) is checked in full against its BLAKE3 once,
    /// which records them.
    #[default]
    EveryRead,
    /// Only the first read of each file after the store opens, in full against its BLAKE3; later
    /// reads are not checked. An explicit opt-out.
    FirstRead,
}

/// What the open does with a file whose bytes changed on disk behind the store's back (its size,
/// inode or modification time differ from the index and its BLAKE3 differs too). Either way the
/// change is logged at WARN with the path and the old and new hashes, and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnChange {
    /// The changed file becomes the file's next version (a machine of its own).
    #[default]
    Adopt,
    /// The changed file is moved to the quarantine and left out of the index (a cluster, where
    /// only writes ordered by the coherence directory make versions).
    Quarantine,
}

/// A file the store moved to its quarantine (its bytes failed their checksum, or it changed
/// on disk in a cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedFile {
    /// The dataset.
    pub dataset: String,
    /// The path inside the dataset.
    pub path: String,
    /// The version the index described.
    pub version: u64,
}

/// Asked before a file is evicted to make room. The tiered cache implements it to keep the only
/// copy of a value; the store knows nothing about why.
pub trait EvictionHook: Send + Sync {
    /// False keeps the file. Called with the store's index locked: it must not call the store.
    fn may_evict(&self, dataset: &str, path: &str, version: u64) -> bool;
}

/// How a publish is recorded: the version it takes (`None`: the next) and the kind its writer
/// gave.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stamp {
    pub version: Option<u64>,
    pub kind: u8,
}

/// What the store knows about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// The dataset.
    pub dataset: String,
    /// The path inside the dataset.
    pub path: String,
    /// Size of the contents.
    pub size_bytes: u64,
    /// BLAKE3 of the contents; `None` for a file adopted from the directory and not read since.
    pub hash: Option<[u8; 32]>,
    /// Monotonic per path.
    pub version: u64,
    /// Milliseconds since the Unix epoch of the last read or write.
    pub last_access_ms: u64,
    /// Pinned files are never evicted.
    pub pinned: bool,
    /// What its writer said it holds ([`FileWriter::set_kind`]; 0: plain bytes).
    pub kind: u8,
}

impl FileMeta {
    fn new(key: &str, entry: &Entry) -> Self {
        let (dataset, path) = name::split_key(key);
        Self {
            dataset: dataset.to_owned(),
            path: path.to_owned(),
            size_bytes: entry.size_bytes,
            hash: entry.hash,
            version: entry.version,
            last_access_ms: entry.last_access_ms,
            pinned: entry.pinned,
            kind: entry.kind,
        }
    }

    /// The hash as 64 lower-case hex digits, when known.
    pub fn hash_hex(&self) -> Option<String> {
        self.hash
            .map(|hash| blake3::Hash::from_bytes(hash).to_hex().to_string())
    }
}

/// Counters and gauges of the store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Files in the index.
    pub n_files: u64,
    /// Their total size.
    pub used_bytes: u64,
    /// The capacity the store enforces.
    pub capacity_bytes: u64,
    /// Pinned files and their size.
    pub n_pinned: u64,
    /// Size of the pinned files.
    pub pinned_bytes: u64,
    /// Files evicted to make room since open.
    pub n_evictions: u64,
    /// Their size.
    pub evicted_bytes: u64,
    /// Reads that found bytes not matching the hash (each file quarantined).
    pub n_checksum_failures: u64,
    /// Files found missing at a read (deleted by hand) and dropped from the index.
    pub n_missing: u64,
    /// Files found on open whose contents changed behind the store's back (adopted as a new
    /// version or quarantined, as [`OnChange`] says).
    pub n_changed_on_open: u64,
    /// Files found on open that the index did not describe (copied in by hand, or published just
    /// before a crash); their hashes are computed on first read.
    pub n_adopted_on_open: u64,
    /// Index entries dropped on open because their files were gone.
    pub n_dropped_on_open: u64,
    /// Files under the root left alone because their names are refused.
    pub n_skipped_on_open: u64,
    /// Wall time of the last open, reconciliation included.
    pub open_ms: u64,
}

/// Builds a [`FileStore`].
#[derive(Debug, Clone)]
pub struct StoreBuilder {
    root: PathBuf,
    capacity_bytes: u64,
    verify: Verify,
    on_change: OnChange,
    scan_threads: usize,
}

impl StoreBuilder {
    /// The most bytes the store holds; older unpinned files are evicted to make room.
    /// Default: `u64::MAX` (no limit).
    pub fn capacity_bytes(mut self, capacity_bytes: u64) -> Self {
        self.capacity_bytes = capacity_bytes;
        self
    }

    /// When reads check bytes. Default: [`Verify::EveryRead`].
    pub fn verify(mut self, verify: Verify) -> Self {
        self.verify = verify;
        self
    }

    /// What the open does with files that changed behind the store's back. Default:
    /// [`OnChange::Adopt`].
    pub fn on_change(mut self, on_change: OnChange) -> Self {
        self.on_change = on_change;
        self
    }

    /// Threads that scan the directory on open, 1 to 64. Default: the available cores, at most 8.
    pub fn scan_threads(mut self, scan_threads: usize) -> Self {
        self.scan_threads = scan_threads.clamp(1, 64);
        self
    }

    /// Opens (creating if needed) the store: locks it against other processes, removes staging
    /// leftovers, loads the index and reconciles it with the directory.
    pub fn open(self) -> Result<FileStore> {
        FileStore::open_with(self)
    }
}

/// The L3 store. Cheap to clone; clones share one index.
#[derive(Debug, Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    index_dir: PathBuf,
    capacity_bytes: u64,
    verify: Verify,
    state: Mutex<State>,
    hook: RwLock<Option<Arc<dyn EvictionHook>>>,
    staging_seq: AtomicU64,
    n_evictions: AtomicU64,
    evicted_bytes: AtomicU64,
    n_checksum_failures: AtomicU64,
    n_missing: AtomicU64,
    quarantined: Mutex<std::collections::VecDeque<QuarantinedFile>>,
    open_stats: StoreStats,
    _lock: File,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("root", &self.root)
            .field("capacity_bytes", &self.capacity_bytes)
            .finish_non_exhaustive()
    }
}

struct State {
    index: Index,
    journal: Journal,
    next_version: u64,
}

impl FileStore {
    /// A builder for the store at `root`.
    pub fn builder(root: impl Into<PathBuf>) -> StoreBuilder {
        StoreBuilder {
            root: root.into(),
            capacity_bytes: u64::MAX,
            verify: Verify::EveryRead,
            on_change: OnChange::Adopt,
            scan_threads: std::thread::available_parallelism()
                .map_or(2, usize::from)
                .min(8),
        }
    }

    /// Opens the store at `root` with the defaults.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        Self::builder(root).open()
    }

    /// The store's root directory (`CACHE/L3_DISK` in a VBUS home).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Where the file of `dataset/path` lives (whether or not it exists). Validates the names.
    pub fn file_path(&self, dataset: &str, path: &str) -> Result<PathBuf> {
        name::key(dataset, path)?;
        Ok(self.inner.root.join(dataset).join(path))
    }

    /// Publishes `bytes` as `dataset/path`; returns its metadata once it is durable.
    pub fn store_file(&self, dataset: &str, path: &str, bytes: &[u8]) -> Result<FileMeta> {
        self.store_file_versioned(dataset, path, bytes, Stamp::default())
    }

    /// [`FileStore::store_file`] publishing as `version`, taken earlier from
    /// [`FileStore::reserve_version`] (a write-back cache gives a value its version when it
    /// accepts it and publishes it later). Fails with [`Error::StaleVersion`] when the store
    /// already holds that version of the file or a newer one.
    pub fn store_file_as(
        &self,
        dataset: &str,
        path: &str,
        bytes: &[u8],
        version: u64,
    ) -> Result<FileMeta> {
        self.store_file_with(dataset, path, bytes, Some(version), 0)
    }

    /// [`FileStore::store_file`] publishing as `version` (when given, as
    /// [`FileStore::store_file_as`] does) with `kind` recorded in the index
    /// ([`FileWriter::set_kind`]).
    pub fn store_file_with(
        &self,
        dataset: &str,
        path: &str,
        bytes: &[u8],
        version: Option<u64>,
        kind: u8,
    ) -> Result<FileMeta> {
        self.store_file_versioned(dataset, path, bytes, Stamp { version, kind })
    }

    /// A version no publish has used or will use by itself: every later publish without a
    /// version gets a higher one.
    pub fn reserve_version(&self) -> u64 {
        let mut state = self.inner.state.lock();
        let version = state.next_version;
        state.next_version += 1;
        version
    }

    fn store_file_versioned(
        &self,
        dataset: &str,
        path: &str,
        bytes: &[u8],
        stamp: Stamp,
    ) -> Result<FileMeta> {
        let mut writer = self.file_writer(dataset, path)?;
        if let Some(version) = stamp.version {
            writer.set_version(version);
        }
        writer.set_kind(stamp.kind);
        if bytes.len() < PARALLEL_HASH_BYTES_MIN {
            io::Write::write_all(&mut writer, bytes)
                .map_err(Error::io("write", writer.staging_path()))?;
            return writer.commit();
        }
        // A large file is hashed on the other cores while this thread writes it.
        let hash = std::thread::scope(|scope| {
            let hashing = scope.spawn(|| hash_bytes(bytes));
            let written = writer.write_all_unhashed(bytes);
            let hash = hashing
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            written.map(|()| hash)
        })?;
        writer.commit_prehashed(hash)
    }

    /// Publishes the complete file at `src` (outside the store, written and hashed by the
    /// caller, whose BLAKE3 is `hash`) as `dataset/path`: synced, then renamed into place when
    /// it is on the store's file system, else copied through a staged writer (which hashes it
    /// again). `src` is gone afterwards when renamed; on an error nothing is published.
    pub fn adopt(&self, dataset: &str, path: &str, src: &Path, hash: [u8; 32]) -> Result<FileMeta> {
        use std::os::unix::fs::MetadataExt as _;
        let key = name::key(dataset, path)?;
        let file = fs::File::open(src).map_err(Error::io("open", src))?;
        file.sync_all().map_err(Error::io("fsync", src))?;
        let meta = file.metadata().map_err(Error::io("stat", src))?;
        let store_dev = fs::metadata(&self.inner.root)
            .map_err(Error::io("stat", &self.inner.root))?
            .dev();
        if meta.dev() != store_dev {
            let mut file = file;
            let copied = self.store_from_reader(dataset, path, &mut file)?;
            let _ = fs::remove_file(src);
            return Ok(copied);
        }
        // The piece checksums come from the bytes as they are now (in the page cache, at memory
        // speed); they must describe the bytes the caller hashed, so a file shorter or longer
        // than it was hashed is refused.
        let mut builder = SumsBuilder::default();
        let mut buffer = vec![0u8; IO_BLOCK_BYTES];
        let mut size_bytes = 0u64;
        let mut file = file;
        loop {
            match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    builder.update(&buffer[..n]);
                    size_bytes += n as u64;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(Error::io("read", src)(err)),
            }
        }
        drop(file);
        if size_bytes != meta.len() {
            return Err(Error::io("read", src)(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{size_bytes} bytes read of {} (the file changed)",
                    meta.len()
                ),
            )));
        }
        let final_path = self.inner.root.join(dataset).join(path);
        self.publish(
            &key,
            src,
            &final_path,
            meta.len(),
            (hash, builder.finish()),
            Stamp::default(),
        )
    }

    /// Publishes everything `reader` yields as `dataset/path`, in constant memory.
    pub fn store_from_reader(
        &self,
        dataset: &str,
        path: &str,
        reader: &mut dyn Read,
    ) -> Result<FileMeta> {
        let mut writer = self.file_writer(dataset, path)?;
        let mut buffer = vec![0u8; IO_BLOCK_BYTES];
        loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(Error::io("read the source of", writer.final_path())(err)),
            };
            io::Write::write_all(&mut writer, &buffer[..n])
                .map_err(Error::io("write", writer.staging_path()))?;
        }
        writer.commit()
    }

    /// A writer for `dataset/path`: the file is published on [`FileWriter::commit`] and discarded
    /// if the writer is dropped first.
    pub fn file_writer(&self, dataset: &str, path: &str) -> Result<FileWriter> {
        let key = name::key(dataset, path)?;
        let seq = self.inner.staging_seq.fetch_add(1, Ordering::Relaxed);
        let staging_path = self
            .inner
            .root
            .join(STAGING_DIR)
            .join(format!("{}-{seq}.tmp", std::process::id()));
        let final_path = self.inner.root.join(dataset).join(path);
        FileWriter::create(self.clone(), key, staging_path, final_path)
    }

    /// True when `dataset/path` is in the store.
    pub fn has_file_by_path(&self, dataset: &str, path: &str) -> bool {
        name::key(dataset, path).is_ok_and(|key| self.inner.state.lock().index.get(&key).is_some())
    }

    /// The metadata of `dataset/path`, if present.
    pub fn meta(&self, dataset: &str, path: &str) -> Result<Option<FileMeta>> {
        let key = name::key(dataset, path)?;
        Ok(self
            .inner
            .state
            .lock()
            .index
            .get(&key)
            .map(|entry| FileMeta::new(&key, entry)))
    }

    /// Removes `dataset/path`; returns whether it was there.
    pub fn remove(&self, dataset: &str, path: &str) -> Result<bool> {
        let key = name::key(dataset, path)?;
        let final_path = self.inner.root.join(&key);
        {
            let mut state = self.inner.state.lock();
            let Some(entry) = state.index.get(&key).cloned() else {
                return Ok(false);
            };
            remove_file_if_present(&final_path)?;
            sums::remove_side_file(&sums::side_file(&self.inner.index_dir, &key));
            state.index.remove(&key);
            state.journal.append(&Record::Remove {
                key: key.clone(),
                version: entry.version,
            })?;
        }
        if let Some(parent) = final_path.parent() {
            persist::sync_dir(parent)?;
        }
        Ok(true)
    }

    /// Every file of `dataset`, in path order.
    pub fn list(&self, dataset: &str) -> Result<Vec<FileMeta>> {
        name::validate_dataset(dataset)?;
        let state = self.inner.state.lock();
        Ok(state
            .index
            .dataset(dataset)
            .map(|(key, entry)| FileMeta::new(key, entry))
            .collect())
    }

    /// The names of the datasets that hold at least one file, sorted.
    pub fn datasets(&self) -> Vec<String> {
        let state = self.inner.state.lock();
        let mut names: Vec<String> = Vec::new();
        for (key, _) in state.index.iter() {
            let (dataset, _) = name::split_key(key);
            if names.last().map(String::as_str) != Some(dataset) {
                names.push(dataset.to_owned());
            }
        }
        names
    }

    /// Pins `dataset/path`: it is never evicted. Returns false when it is not in the store.
    pub fn pin(&self, dataset: &str, path: &str) -> Result<bool> {
        self.set_pinned(dataset, path, true)
    }

    /// Unpins `dataset/path`. Returns false when it is not in the store.
    pub fn unpin(&self, dataset: &str, path: &str) -> Result<bool> {
        self.set_pinned(dataset, path, false)
    }

    fn set_pinned(&self, dataset: &str, path: &str, pinned: bool) -> Result<bool> {
        let key = name::key(dataset, path)?;
        let mut state = self.inner.state.lock();
        if !state.index.set_pinned(&key, pinned) {
            return Ok(false);
        }
        state.journal.append(&Record::Pin { key, pinned })?;
        Ok(true)
    }

    /// Installs the hook asked before each eviction (replacing any earlier one).
    pub fn set_eviction_hook(&self, hook: Arc<dyn EvictionHook>) {
        *self.inner.hook.write() = Some(hook);
    }

    /// Counters and gauges.
    pub fn stats(&self) -> StoreStats {
        let state = self.inner.state.lock();
        let (n_pinned, pinned_bytes) = state.index.pinned();
        StoreStats {
            n_files: state.index.len() as u64,
            used_bytes: state.index.used_bytes(),
            capacity_bytes: self.inner.capacity_bytes,
            n_pinned,
            pinned_bytes,
            n_evictions: self.inner.n_evictions.load(Ordering::Relaxed),
            evicted_bytes: self.inner.evicted_bytes.load(Ordering::Relaxed),
            n_checksum_failures: self.inner.n_checksum_failures.load(Ordering::Relaxed),
            n_missing: self.inner.n_missing.load(Ordering::Relaxed),
            ..self.inner.open_stats.clone()
        }
    }

    /// Makes the index journal durable (publishes are durable without it; see `persist`).
    pub fn sync(&self) -> Result<()> {
        self.inner.state.lock().journal.sync()
    }

    /// Folds the journal into a fresh snapshot, so the next open reads one file.
    pub fn compact(&self) -> Result<()> {
        let mut state = self.inner.state.lock();
        state.compact(&self.inner.index_dir)
    }

    /// Publishes a staged, fsynced file. Called by [`FileWriter::commit`].
    pub(crate) fn publish(
        &self,
        key: &str,
        staging_path: &Path,
        final_path: &Path,
        size_bytes: u64,
        (hash, sums): ([u8; 32], Sums),
        stamp: Stamp,
    ) -> Result<FileMeta> {
        let (dataset, path) = name::split_key(key);
        if size_bytes > self.inner.capacity_bytes {
            return Err(Error::TooLarge {
                dataset: dataset.to_owned(),
                path: path.to_owned(),
                size_bytes,
                capacity_bytes: self.inner.capacity_bytes,
            });
        }
        let parent = final_path
            .parent()
            .expect("a final path has a dataset directory");
        create_dirs_durably(&self.inner.root, parent)?;
        let staged = fs::metadata(staging_path).map_err(Error::io("stat", staging_path))?;
        let staged_sums = self.inner.stage_side_file(&sums)?;
        let meta = {
            let mut state = self.inner.state.lock();
            let replaced_bytes = state.index.get(key).map_or(0, |entry| entry.size_bytes);
            let held_version = state.index.get(key).map(|entry| entry.version);
            if let (Some(version), Some(held_version)) = (stamp.version, held_version)
                && held_version >= version
            {
                return Err(Error::StaleVersion {
                    dataset: dataset.to_owned(),
                    path: path.to_owned(),
                    version,
                    held_version,
                });
            }
            self.inner
                .make_room(&mut state, key, size_bytes, replaced_bytes)?;
            if let Err(err) = fs::rename(staging_path, final_path) {
                if err.kind() != io::ErrorKind::NotFound {
                    return Err(Error::io("rename", final_path)(err));
                }
                // A parent directory vanished (removed by hand): make it again, once.
                create_dirs_durably(&self.inner.root, parent)?;
                fs::rename(staging_path, final_path).map_err(Error::io("rename", final_path))?;
            }
            self.inner.place_side_file(key, staged_sums);
            let pinned = state.index.get(key).is_some_and(|entry| entry.pinned);
            let version = stamp.version.unwrap_or(state.next_version);
            let entry = Entry {
                version,
                size_bytes,
                hash: Some(hash),
                inode: staged.ino(),
                mtime_ns: walk::mtime_ns(&staged),
                last_access_ms: now_ms(),
                pinned,
                sums: Some(sums.digest()),
                kind: stamp.kind,
                verified: true,
                tick: 0,
            };
            state.next_version = state.next_version.max(version + 1);
            state.journal.append(&put_record(key, &entry))?;
            let meta = FileMeta::new(key, &entry);
            state.index.insert(key, entry);
            self.inner.compact_if_due(&mut state)?;
            meta
        };
        persist::sync_dir(parent)?;
        Ok(meta)
    }
}

impl Inner {
    /// Evicts least recently used files until `size_bytes` more fit (`replaced_bytes` is what the
    /// same key frees). Pinned files, the key itself and files the hook vetoes stay.
    fn make_room(
        &self,
        state: &mut State,
        key: &str,
        size_bytes: u64,
        replaced_bytes: u64,
    ) -> Result<()> {
        let needed = |state: &State| {
            (state.index.used_bytes() - replaced_bytes).saturating_add(size_bytes)
                > self.capacity_bytes
        };
        if !needed(state) {
            return Ok(());
        }
        let hook = self.hook.read().clone();
        let candidates: Vec<Arc<str>> = state.index.lru_keys().cloned().collect();
        for candidate in candidates {
            if !needed(state) {
                break;
            }
            let Some(entry) = state.index.get(&candidate) else {
                continue;
            };
            if entry.pinned || &*candidate == key {
                continue;
            }
            let (dataset, path) = name::split_key(&candidate);
            if hook
                .as_ref()
                .is_some_and(|hook| !hook.may_evict(dataset, path, entry.version))
            {
                continue;
            }
            self.evict(state, &candidate)?;
        }
        if needed(state) {
            let (dataset, path) = name::split_key(key);
            return Err(Error::CapacityExhausted {
                dataset: dataset.to_owned(),
                path: path.to_owned(),
                size_bytes,
                used_bytes: state.index.used_bytes(),
                capacity_bytes: self.capacity_bytes,
            });
        }
        Ok(())
    }

    fn evict(&self, state: &mut State, key: &str) -> Result<()> {
        let Some(entry) = state.index.get(key).cloned() else {
            return Ok(());
        };
        remove_file_if_present(&self.root.join(key))?;
        sums::remove_side_file(&sums::side_file(&self.index_dir, key));
        state.index.remove(key);
        state.journal.append(&Record::Remove {
            key: key.to_owned(),
            version: entry.version,
        })?;
        self.n_evictions.fetch_add(1, Ordering::Relaxed);
        self.evicted_bytes
            .fetch_add(entry.size_bytes, Ordering::Relaxed);
        tracing::debug!(key, size_bytes = entry.size_bytes, "evicted from L3");
        Ok(())
    }

    /// After open: a capacity lowered since the last run is enforced at once.
    fn enforce_capacity(&self) {
        let mut state = self.state.lock();
        if state.index.used_bytes() > self.capacity_bytes
            && let Err(err) = self.make_room(&mut state, "", 0, 0)
        {
            tracing::warn!(error = %err, "the store is over capacity and cannot evict enough");
        }
    }

    fn compact_if_due(&self, state: &mut State) -> Result<()> {
        if state.journal.n_records() > COMPACT_RECORDS_MIN.max(2 * state.index.len() as u64) {
            state.compact(&self.index_dir)?;
        }
        Ok(())
    }
}

impl State {
    /// Writes a snapshot of the next generation, then starts that generation's empty journal.
    fn compact(&mut self, index_dir: &Path) -> Result<()> {
        let generation = self.journal.generation() + 1;
        persist::write_snapshot(
            index_dir,
            generation,
            self.next_version,
            self.index.len(),
            self.index.iter_lru(),
        )?;
        self.journal = Journal::create(index_dir, generation, self.next_version)?;
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let state = self.state.get_mut();
        if let Err(err) = state.compact(&self.index_dir) {
            tracing::warn!(error = %err, "cannot write the index snapshot on close; the next open replays the journal");
        }
    }
}

fn put_record(key: &str, entry: &Entry) -> Record {
    Record::Put {
        key: key.to_owned(),
        version: entry.version,
        size_bytes: entry.size_bytes,
        hash: entry.hash,
        inode: entry.inode,
        mtime_ns: entry.mtime_ns,
        sums: entry.sums,
        kind: entry.kind,
    }
}

/// A BLAKE3 as hex, or `none`.
fn hex(hash: Option<[u8; 32]>) -> String {
    hash.map_or_else(
        || "none".to_owned(),
        |hash| blake3::Hash::from_bytes(hash).to_hex().to_string(),
    )
}

/// Creates `dir` and its missing ancestors below `root`, fsyncing each new directory's parent so
/// the new entries survive a power cut.
fn create_dirs_durably(root: &Path, dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut current = dir;
    while current != root && !current.is_dir() {
        missing.push(current.to_owned());
        current = match current.parent() {
            Some(parent) => parent,
            None => break,
        };
    }
    for new_dir in missing.iter().rev() {
        match fs::create_dir(new_dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists && new_dir.is_dir() => continue,
            Err(err) => return Err(Error::io("create", new_dir)(err)),
        }
        if let Some(parent) = new_dir.parent() {
            persist::sync_dir(parent)?;
        }
    }
    Ok(())
}

fn remove_file_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(Error::io("remove", path)(err)),
    }
}

/// Adds `bytes` to a hash, on every core when the buffer is large.
pub(crate) fn hash_update(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    if bytes.len() >= PARALLEL_HASH_BYTES_MIN {
        hasher.update_rayon(bytes);
    } else {
        hasher.update(bytes);
    }
}

fn hash_bytes(bytes: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hash_update(&mut hasher, bytes);
    *hasher.finalize().as_bytes()
}

fn contended(key: &str) -> Error {
    let (dataset, path) = name::split_key(key);
    Error::Contended {
        dataset: dataset.to_owned(),
        path: path.to_owned(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}
