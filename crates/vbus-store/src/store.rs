//! `FileStore`: complete files at `{root}/{dataset}/{path}`, published atomically, indexed and
//! verified.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::index::{Entry, Index};
use crate::persist::{self, Journal, Record};
use crate::reader::{FileReader, PieceCheck};
use crate::sums::{self, PIECE_BYTES, Sums, SumsBuilder};
use crate::walk;
use crate::writer::FileWriter;
use crate::{Error, Result, name};

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

/// What a read needs from the index, copied out so the lock is not held during I/O.
struct Lookup {
    key: String,
    /// The entry as it was: the file opened must be its inode, so its version and hash describe
    /// exactly the bytes read.
    entry: Entry,
    check: Check,
}

/// How a read checks the bytes it reads.
enum Check {
    /// Not at all ([`Verify::FirstRead`], after the first read).
    Trusted,
    /// Piece by piece against these checksums.
    Pieces(Sums),
    /// In full against the BLAKE3 (or hashed to learn it, for an adopted file), computing the
    /// piece checksums on the way.
    Full,
}

/// What opening the file of an index entry found.
enum Opened {
    File(File),
    /// The path holds another file now, or none: look it up again.
    Changed,
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

    fn open_with(builder: StoreBuilder) -> Result<Self> {
        let started = Instant::now();
        let root = builder.root;
        let index_dir = root.join(INDEX_DIR);
        for dir in [
            &root,
            &index_dir,
            &root.join(STAGING_DIR),
            &root.join(QUARANTINE_DIR),
        ] {
            fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
        }
        let lock = lock_root(&root, &index_dir)?;
        clean_staging(&root.join(STAGING_DIR))?;

        let (index_entries, mut next_version, journal, migrate) = load_index(&index_dir)?;
        fs::create_dir_all(index_dir.join(sums::SUMS_DIR))
            .map_err(Error::io("create", index_dir.join(sums::SUMS_DIR)))?;
        let scan = walk::scan(&root, builder.scan_threads);
        let now = now_ms();
        let mut index = Index::default();
        let mut changes = Vec::new();
        let mut known = index_entries;
        // Each found file with its known entry, in the recorded LRU order (adopted files last),
        // so the order survives the reopen.
        let mut found: Vec<(Option<Entry>, walk::FoundFile)> = scan
            .files
            .into_iter()
            .map(|file| (known.remove(&file.key), file))
            .collect();
        found.sort_unstable_by_key(|(previous, _)| {
            previous.as_ref().map_or(u64::MAX, |entry| entry.tick)
        });
        let mut n_adopted = 0u64;
        let mut n_changed = 0u64;
        let mut quarantined = std::collections::VecDeque::new();
        for (previous, file) in found {
            let matches = previous.as_ref().is_some_and(|entry| {
                entry.inode == file.inode
                    && entry.size_bytes == file.size_bytes
                    && entry.mtime_ns == file.mtime_ns
            });
            let entry = match previous {
                Some(entry) if matches => entry,
                // Known with a hash, and its stat changed: only its bytes tell whether it did.
                Some(previous) if previous.hash.is_some() => {
                    let path = root.join(&file.key);
                    let hashed = File::open(&path).and_then(|mut opened| hash_file(&mut opened));
                    match hashed {
                        Ok((hash, size_bytes, sums)) if Some(hash) == previous.hash => {
                            let entry = Entry {
                                size_bytes,
                                inode: file.inode,
                                mtime_ns: file.mtime_ns,
                                sums: Some(sums.digest()),
                                verified: true,
                                ..previous
                            };
                            write_side_file(&index_dir, &file.key, &sums);
                            changes.push(put_record(&file.key, &entry));
                            entry
                        }
                        Ok((hash, size_bytes, sums)) => {
                            n_changed += 1;
                            tracing::warn!(
                                path = %path.display(),
                                old_blake3 = %hex(previous.hash),
                                new_blake3 = %hex(Some(hash)),
                                action = match builder.on_change {
                                    OnChange::Adopt => "adopted as a new version",
                                    OnChange::Quarantine => "quarantined",
                                },
                                "a file of the store changed outside VBUS"
                            );
                            if builder.on_change == OnChange::Quarantine {
                                move_to_quarantine(&root, &file.key, previous.version);
                                changes.push(Record::Remove {
                                    key: file.key.clone(),
                                    version: previous.version,
                                });
                                let (dataset, path) = name::split_key(&file.key);
                                quarantined.push_back(QuarantinedFile {
                                    dataset: dataset.to_owned(),
                                    path: path.to_owned(),
                                    version: previous.version,
                                });
                                continue;
                            }
                            let entry = Entry {
                                version: next_version,
                                size_bytes,
                                hash: Some(hash),
                                inode: file.inode,
                                mtime_ns: file.mtime_ns,
                                last_access_ms: now,
                                pinned: previous.pinned,
                                sums: Some(sums.digest()),
                                verified: true,
                                tick: 0,
                            };
                            next_version += 1;
                            write_side_file(&index_dir, &file.key, &sums);
                            journal_new_entry(&mut changes, &file.key, &entry);
                            entry
                        }
                        Err(err) => {
                            tracing::warn!(path = %path.display(), error = %err, "a file of the store changed outside VBUS and cannot be read; adopted unhashed");
                            n_adopted += 1;
                            let entry = adopted_entry(&file, next_version, now, previous.pinned);
                            next_version += 1;
                            journal_new_entry(&mut changes, &file.key, &entry);
                            entry
                        }
                    }
                }
                previous => {
                    n_adopted += 1;
                    let pinned = previous.is_some_and(|entry| entry.pinned);
                    let entry = adopted_entry(&file, next_version, now, pinned);
                    next_version += 1;
                    journal_new_entry(&mut changes, &file.key, &entry);
                    entry
                }
            };
            index.insert(&file.key, entry);
        }
        let n_dropped = known.len() as u64;
        for (key, entry) in known {
            changes.push(Record::Remove {
                key,
                version: entry.version,
            });
        }
        let mut state = State {
            index,
            journal,
            next_version,
        };
        if let Some(format) = migrate {
            // The index was read in an older format: write it at once in this build's, so the
            // journal never mixes formats.
            tracing::info!(
                root = %root.display(),
                from_format = format,
                to_format = persist::FORMAT,
                "migrating the store's index"
            );
            state.compact(&index_dir)?;
        }
        for record in &changes {
            state.journal.append(record)?;
        }
        if !changes.is_empty() {
            state.journal.sync()?;
        }
        let n_quarantined = quarantined.len() as u64;
        let open_stats = StoreStats {
            n_changed_on_open: n_changed,
            n_adopted_on_open: n_adopted,
            n_dropped_on_open: n_dropped,
            n_skipped_on_open: scan.n_skipped,
            open_ms: started.elapsed().as_millis() as u64,
            ..StoreStats::default()
        };
        tracing::info!(
            root = %root.display(),
            n_files = state.index.len(),
            n_adopted,
            n_changed,
            n_dropped,
            open_ms = open_stats.open_ms,
            "file store opened"
        );
        let inner = Inner {
            root,
            index_dir,
            capacity_bytes: builder.capacity_bytes,
            verify: builder.verify,
            state: Mutex::new(state),
            hook: RwLock::new(None),
            staging_seq: AtomicU64::new(0),
            n_evictions: AtomicU64::new(0),
            evicted_bytes: AtomicU64::new(0),
            n_checksum_failures: AtomicU64::new(n_quarantined),
            n_missing: AtomicU64::new(0),
            quarantined: Mutex::new(quarantined),
            open_stats,
            _lock: lock,
        };
        let store = Self {
            inner: Arc::new(inner),
        };
        store.inner.enforce_capacity();
        Ok(store)
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
        self.store_file_versioned(dataset, path, bytes, None)
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
        self.store_file_versioned(dataset, path, bytes, Some(version))
    }

    /// A version no publish has used or will use by itself: every later publish without a
    /// version gets a higher one.
    pub fn reserve_version(&self) -> u64 {
        let mut state = self.inner.lock();
        let version = state.next_version;
        state.next_version += 1;
        version
    }

    fn store_file_versioned(
        &self,
        dataset: &str,
        path: &str,
        bytes: &[u8],
        version: Option<u64>,
    ) -> Result<FileMeta> {
        let mut writer = self.file_writer(dataset, path)?;
        if let Some(version) = version {
            writer.set_version(version);
        }
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
            None,
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

    /// The whole file, verified as [`Verify`] says; `None` when it is not in the store.
    pub fn get_file_by_path(&self, dataset: &str, path: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .get_file_with_meta(dataset, path)?
            .map(|(bytes, _)| bytes))
    }

    /// The whole file and the metadata of exactly that version (a publish racing the read cannot
    /// pair old bytes with a new version).
    pub fn get_file_with_meta(
        &self,
        dataset: &str,
        path: &str,
    ) -> Result<Option<(Vec<u8>, FileMeta)>> {
        // Read into the Vec's spare capacity, as `std::fs::read` does: a zeroed Vec of a few MiB
        // comes from the heap and is written twice (a quarter of a warm read's time here).
        let key = name::key(dataset, path)?;
        self.read_current(&key, |mut file, lookup, final_path| {
            let size_bytes = lookup.entry.size_bytes;
            let len = usize::try_from(size_bytes).map_err(|_| {
                Error::io("read", final_path)(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!("{size_bytes} bytes do not fit in this address space"),
                ))
            })?;
            let mut bytes = Vec::with_capacity(len);
            let mut entry = lookup.entry.clone();
            let read = |file: &mut File, bytes: &mut Vec<u8>, n: u64| {
                file.take(n)
                    .read_to_end(bytes)
                    .map_err(Error::io("read", final_path))
            };
            match &lookup.check {
                Check::Trusted => {
                    file.read_to_end(&mut bytes)
                        .map_err(Error::io("read", final_path))?;
                }
                Check::Full => {
                    file.read_to_end(&mut bytes)
                        .map_err(Error::io("read", final_path))?;
                    let hash = hash_bytes(&bytes);
                    let sums = Sums::of(&bytes);
                    if !self
                        .inner
                        .record_check(lookup, hash, bytes.len() as u64, &sums)?
                    {
                        return Ok(None);
                    }
                    entry.hash = Some(hash);
                }
                // Each piece is hashed as soon as it is read, while it is still in cache.
                Check::Pieces(sums) => {
                    for index in 0..Sums::n_pieces(size_bytes) as usize {
                        let start = bytes.len();
                        let want = (len - start).min(PIECE_BYTES);
                        let got = read(&mut file, &mut bytes, want as u64)?;
                        if got != want
                            || Some(sums::piece_sum(&bytes[start..])) != sums.piece(index)
                        {
                            return self.inner.reject(lookup, start as u64);
                        }
                    }
                    // Longer than its entry: changed in place.
                    if read(&mut file, &mut bytes, 1)? != 0 {
                        return self.inner.reject(lookup, size_bytes);
                    }
                }
            }
            Ok(Some((bytes, FileMeta::new(&key, &entry))))
        })
    }

    /// As [`Self::get_file_with_meta`], but the bytes are read into the buffer `alloc` returns
    /// for the file's size (page-locked memory, say), so they need no second copy. `alloc` may be
    /// called again when a publish races the read.
    pub fn get_file_into<B: AsMut<[u8]>>(
        &self,
        dataset: &str,
        path: &str,
        mut alloc: impl FnMut(usize) -> B,
    ) -> Result<Option<(B, FileMeta)>> {
        let key = name::key(dataset, path)?;
        self.read_current(&key, |mut file, lookup, final_path| {
            let len = file
                .metadata()
                .map_err(Error::io("stat", final_path))?
                .len();
            if len != lookup.entry.size_bytes && !matches!(lookup.check, Check::Trusted) {
                return self.inner.reject(lookup, len.min(lookup.entry.size_bytes));
            }
            let len = usize::try_from(len).map_err(|_| {
                Error::io("read", final_path)(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!("{len} bytes do not fit in this address space"),
                ))
            })?;
            let mut buffer = alloc(len);
            let mut entry = lookup.entry.clone();
            match &lookup.check {
                Check::Full => {
                    let (hash, sums) = read_hashed(&mut file, buffer.as_mut())
                        .map_err(Error::io("read", final_path))?;
                    if !self.inner.record_check(lookup, hash, len as u64, &sums)? {
                        return Ok(None);
                    }
                    entry.hash = Some(hash);
                }
                Check::Pieces(sums) => {
                    let bad = read_checked(&mut file, buffer.as_mut(), sums)
                        .map_err(Error::io("read", final_path))?;
                    if let Some(piece) = bad {
                        return self.inner.reject(lookup, (piece * PIECE_BYTES) as u64);
                    }
                }
                Check::Trusted => file
                    .read_exact(buffer.as_mut())
                    .map_err(Error::io("read", final_path))?,
            }
            Ok(Some((buffer, FileMeta::new(&key, &entry))))
        })
    }

    /// A reader (Read + Seek) of the file as it is now; a later publish does not change what it
    /// reads. Each piece is checked against its checksum before any of its bytes is handed out
    /// (the first piece before the reader is returned), and a damaged piece ends the read with an
    /// [`io::ErrorKind::InvalidData`] error wrapping [`Error::ChecksumMismatch`]. A file whose
    /// checksums are not known yet is hashed in full before the reader is returned.
    pub fn file_reader(&self, dataset: &str, path: &str) -> Result<Option<FileReader>> {
        let key = name::key(dataset, path)?;
        self.read_current(&key, |mut file, lookup, final_path| {
            let mut entry = lookup.entry.clone();
            let sums = match &lookup.check {
                Check::Trusted => {
                    return Ok(Some(FileReader::new(
                        file,
                        FileMeta::new(&key, &entry),
                        None,
                    )));
                }
                Check::Full => {
                    let (hash, size_bytes, sums) =
                        hash_file(&mut file).map_err(Error::io("read", final_path))?;
                    if !self.inner.record_check(lookup, hash, size_bytes, &sums)? {
                        return Ok(None);
                    }
                    entry.hash = Some(hash);
                    sums
                }
                Check::Pieces(sums) => sums.clone(),
            };
            let check = PieceCheck::new(self.clone(), lookup.entry.inode, sums);
            let mut reader = FileReader::new(file, FileMeta::new(&key, &entry), Some(check));
            match reader.check_first_piece() {
                Ok(()) => Ok(Some(reader)),
                // The version read was replaced meanwhile: read the new one.
                Err(Error::Damaged { .. }) => Ok(None),
                Err(err) => Err(err),
            }
        })
    }

    /// Opens the version of `key` the index describes and hands it to `read`, which returns
    /// `None` when the entry changed under it (a publish or a removal raced the read); then the
    /// key is looked up and opened again, a bounded number of times. `None` when the key is absent
    /// (or its file was deleted behind the store's back: then its entry is dropped).
    fn read_current<T>(
        &self,
        key: &str,
        mut read: impl FnMut(File, &Lookup, &Path) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        let final_path = self.inner.root.join(key);
        for _ in 0..OPEN_ATTEMPTS_MAX {
            let Some(lookup) = self.inner.lookup(key) else {
                return Ok(None);
            };
            let file = match self.inner.open_checked(&lookup)? {
                Opened::File(file) => file,
                Opened::Changed => continue,
            };
            if let Some(value) = read(file, &lookup, &final_path)? {
                return Ok(Some(value));
            }
        }
        Err(contended(key))
    }

    /// Files quarantined since the last call (at most the latest 1,024), oldest first, so that
    /// a cluster agent can stop offering them.
    pub fn take_quarantined(&self) -> Vec<QuarantinedFile> {
        lock_list(&self.inner.quarantined).drain(..).collect()
    }

    /// Called by a [`FileReader`] whose piece at `offset` failed its checksum (or could not be
    /// read whole): quarantines the file when the index still describes `inode`. Returns the
    /// error to report.
    pub(crate) fn reject_read(&self, key: &str, inode: u64, offset: u64) -> Error {
        let mut state = self.inner.lock();
        match state.index.get(key).cloned() {
            Some(entry) if entry.inode == inode => {
                self.inner.quarantine(&mut state, key, &entry, offset)
            }
            _ => {
                let (dataset, path) = name::split_key(key);
                tracing::error!(
                    dataset,
                    path,
                    offset,
                    "a replaced version's bytes failed their checksum while read"
                );
                Error::Damaged {
                    dataset: dataset.to_owned(),
                    path: path.to_owned(),
                    offset,
                }
            }
        }
    }

    /// True when `dataset/path` is in the store.
    pub fn has_file_by_path(&self, dataset: &str, path: &str) -> bool {
        name::key(dataset, path).is_ok_and(|key| self.inner.lock().index.get(&key).is_some())
    }

    /// The metadata of `dataset/path`, if present.
    pub fn meta(&self, dataset: &str, path: &str) -> Result<Option<FileMeta>> {
        let key = name::key(dataset, path)?;
        Ok(self
            .inner
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
            let mut state = self.inner.lock();
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
        let state = self.inner.lock();
        Ok(state
            .index
            .dataset(dataset)
            .map(|(key, entry)| FileMeta::new(key, entry))
            .collect())
    }

    /// The names of the datasets that hold at least one file, sorted.
    pub fn datasets(&self) -> Vec<String> {
        let state = self.inner.lock();
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
        let mut state = self.inner.lock();
        if !state.index.set_pinned(&key, pinned) {
            return Ok(false);
        }
        state.journal.append(&Record::Pin { key, pinned })?;
        Ok(true)
    }

    /// Installs the hook asked before each eviction (replacing any earlier one).
    pub fn set_eviction_hook(&self, hook: Arc<dyn EvictionHook>) {
        *self.inner.hook.write().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// Counters and gauges.
    pub fn stats(&self) -> StoreStats {
        let state = self.inner.lock();
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
        self.inner.lock().journal.sync()
    }

    /// Folds the journal into a fresh snapshot, so the next open reads one file.
    pub fn compact(&self) -> Result<()> {
        let mut state = self.inner.lock();
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
        version: Option<u64>,
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
            let mut state = self.inner.lock();
            let replaced_bytes = state.index.get(key).map_or(0, |entry| entry.size_bytes);
            let held_version = state.index.get(key).map(|entry| entry.version);
            if let (Some(version), Some(held_version)) = (version, held_version)
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
            let version = version.unwrap_or(state.next_version);
            let entry = Entry {
                version,
                size_bytes,
                hash: Some(hash),
                inode: staged.ino(),
                mtime_ns: walk::mtime_ns(&staged),
                last_access_ms: now_ms(),
                pinned,
                sums: Some(sums.digest()),
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
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held leaves the index consistent with the journal (each
        // change is one insert or remove), so a poisoned lock is taken over.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lookup(&self, key: &str) -> Option<Lookup> {
        let entry = {
            let mut state = self.lock();
            let entry = state.index.get(key)?.clone();
            state.index.touch(key, now_ms());
            entry
        };
        let check = self.plan_check(key, &entry);
        Some(Lookup {
            key: key.to_owned(),
            entry,
            check,
        })
    }

    /// How a read of `entry` is checked (reads the side file of its piece checksums).
    fn plan_check(&self, key: &str, entry: &Entry) -> Check {
        if entry.hash.is_none() {
            return Check::Full;
        }
        if self.verify == Verify::FirstRead {
            return if entry.verified {
                Check::Trusted
            } else {
                Check::Full
            };
        }
        let Some(digest) = entry.sums else {
            return Check::Full;
        };
        match Sums::n_pieces(entry.size_bytes) {
            0 => Check::Pieces(Sums::default()),
            1 => Check::Pieces(Sums::single(digest)),
            _ => sums::read_side_file(
                &sums::side_file(&self.index_dir, key),
                entry.size_bytes,
                digest,
            )
            .map_or(Check::Full, Check::Pieces),
        }
    }

    /// Opens the file and checks it is the inode the index describes. A path that holds no file,
    /// or another one, while the index still describes the entry looked up was changed behind the
    /// store's back: a missing file's entry is dropped, a foreign file is quarantined (it is not
    /// the version the index names); either way the caller looks the key up again.
    fn open_checked(&self, lookup: &Lookup) -> Result<Opened> {
        let final_path = self.root.join(&lookup.key);
        let file = match File::open(&final_path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let mut state = self.lock();
                if state
                    .index
                    .get(&lookup.key)
                    .is_some_and(|entry| entry.inode == lookup.entry.inode)
                    && !final_path.exists()
                {
                    tracing::warn!(path = %final_path.display(), version = lookup.entry.version, "a file of the store was deleted outside VBUS; dropped from the index");
                    self.n_missing.fetch_add(1, Ordering::Relaxed);
                    state.index.remove(&lookup.key);
                    state.journal.append(&Record::Remove {
                        key: lookup.key.clone(),
                        version: lookup.entry.version,
                    })?;
                    sums::remove_side_file(&sums::side_file(&self.index_dir, &lookup.key));
                }
                return Ok(Opened::Changed);
            }
            Err(err) => return Err(Error::io("open", &final_path)(err)),
        };
        let metadata = file.metadata().map_err(Error::io("stat", &final_path))?;
        if metadata.ino() == lookup.entry.inode {
            return Ok(Opened::File(file));
        }
        drop(file);
        let mut state = self.lock();
        if let Some(entry) = state.index.get(&lookup.key).cloned()
            && entry.inode == lookup.entry.inode
            && fs::metadata(&final_path).is_ok_and(|now| now.ino() != entry.inode)
        {
            tracing::warn!(path = %final_path.display(), "a file of the store was replaced outside VBUS");
            let _ = self.quarantine(&mut state, &lookup.key, &entry, 0);
        }
        Ok(Opened::Changed)
    }

    /// Records the hash and piece checksums of what was read: adopts them when the index had no
    /// hash, marks the entry verified when it matches, quarantines the file when it does not.
    /// Returns false when the entry changed meanwhile (read again).
    fn record_check(
        &self,
        lookup: &Lookup,
        hash: [u8; 32],
        size_bytes: u64,
        sums: &Sums,
    ) -> Result<bool> {
        let staged_sums = self.stage_side_file(sums)?;
        let mut state = self.lock();
        let Some(entry) = state.index.get(&lookup.key).cloned() else {
            return Ok(false);
        };
        if entry.inode != lookup.entry.inode {
            return Ok(false);
        }
        let digest = Some(sums.digest());
        let matches = size_bytes == entry.size_bytes && entry.hash.is_none_or(|h| h == hash);
        if !matches {
            return Err(self.quarantine(&mut state, &lookup.key, &entry, 0));
        }
        self.place_side_file(&lookup.key, staged_sums);
        if entry.hash.is_none() || entry.sums != digest {
            let entry = Entry {
                hash: Some(hash),
                sums: digest,
                verified: true,
                ..entry
            };
            state.journal.append(&put_record(&lookup.key, &entry))?;
        }
        state.index.update(&lookup.key, |current| {
            current.hash = Some(hash);
            current.sums = digest;
            current.verified = true;
        });
        Ok(true)
    }

    /// Writes the side file of `sums` into staging (only files of more than one piece have one).
    fn stage_side_file(&self, sums: &Sums) -> Result<StagedSums> {
        if !sums.needs_side_file() {
            return Ok(StagedSums(None));
        }
        let seq = self.staging_seq.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join(STAGING_DIR)
            .join(format!("{}-{seq}.sums", std::process::id()));
        fs::write(&path, sums.encode()).map_err(Error::io("write", &path))?;
        Ok(StagedSums(Some(path)))
    }

    /// Moves a staged side file to `key`'s place (called with the index locked, as the file or
    /// entry it describes takes its place). A failure only costs a full check at the next read.
    fn place_side_file(&self, key: &str, mut staged: StagedSums) {
        let target = sums::side_file(&self.index_dir, key);
        match staged.0.take() {
            Some(path) => {
                if let Err(err) = fs::rename(&path, &target) {
                    tracing::warn!(path = %target.display(), error = %err, "cannot place a piece-checksum file");
                    let _ = fs::remove_file(&path);
                }
            }
            None => sums::remove_side_file(&target),
        }
    }

    /// Quarantines the file `lookup` read when the index still describes it (its bytes failed
    /// their check at `offset`): the error to return. `Ok(None)` when the entry changed
    /// meanwhile (read again).
    fn reject<T>(&self, lookup: &Lookup, offset: u64) -> Result<Option<T>> {
        let mut state = self.lock();
        match state.index.get(&lookup.key).cloned() {
            Some(entry) if entry.inode == lookup.entry.inode => {
                Err(self.quarantine(&mut state, &lookup.key, &entry, offset))
            }
            _ => Ok(None),
        }
    }

    /// Moves a file whose bytes do not match their checksums out of the store, so it is never
    /// served; counts it and lists it for [`FileStore::take_quarantined`].
    fn quarantine(&self, state: &mut State, key: &str, entry: &Entry, offset: u64) -> Error {
        let (dataset, path) = name::split_key(key);
        self.n_checksum_failures.fetch_add(1, Ordering::Relaxed);
        let quarantined_to = move_to_quarantine(&self.root, key, entry.version);
        sums::remove_side_file(&sums::side_file(&self.index_dir, key));
        state.index.remove(key);
        if let Err(err) = state.journal.append(&Record::Remove {
            key: key.to_owned(),
            version: entry.version,
        }) {
            tracing::error!(error = %err, "cannot journal a quarantine");
        }
        {
            let mut list = lock_list(&self.quarantined);
            if list.len() >= QUARANTINED_LIST_MAX {
                list.pop_front();
            }
            list.push_back(QuarantinedFile {
                dataset: dataset.to_owned(),
                path: path.to_owned(),
                version: entry.version,
            });
        }
        tracing::error!(dataset, path, version = entry.version, offset, quarantined_to = %quarantined_to.display(), "checksum mismatch: file quarantined");
        Error::ChecksumMismatch {
            dataset: dataset.to_owned(),
            path: path.to_owned(),
            offset,
            quarantined_to,
        }
    }

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
        let hook = self.hook.read().unwrap_or_else(|p| p.into_inner()).clone();
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
        let mut state = self.lock();
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
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
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
    }
}

/// Journals a new version of `key` found on open: its put, and its pin when it keeps one.
fn journal_new_entry(changes: &mut Vec<Record>, key: &str, entry: &Entry) {
    changes.push(put_record(key, entry));
    if entry.pinned {
        changes.push(Record::Pin {
            key: key.to_owned(),
            pinned: true,
        });
    }
}

/// The entry of a file found on open that the index did not describe (or could not vouch for):
/// its hash and piece checksums are computed on its first read.
fn adopted_entry(file: &walk::FoundFile, version: u64, now: u64, pinned: bool) -> Entry {
    Entry {
        version,
        size_bytes: file.size_bytes,
        hash: None,
        inode: file.inode,
        mtime_ns: file.mtime_ns,
        last_access_ms: now,
        pinned,
        sums: None,
        verified: false,
        tick: 0,
    }
}

/// Writes `key`'s side file directly (on open, before any reader runs).
fn write_side_file(index_dir: &Path, key: &str, sums: &Sums) {
    let path = sums::side_file(index_dir, key);
    if !sums.needs_side_file() {
        sums::remove_side_file(&path);
    } else if let Err(err) = fs::write(&path, sums.encode()) {
        tracing::warn!(path = %path.display(), error = %err, "cannot write a piece-checksum file");
    }
}

/// A side file written to staging and not yet placed; removed if dropped.
struct StagedSums(Option<PathBuf>);

impl Drop for StagedSums {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Moves `key`'s file to `{root}/.vbus-quarantine/{key}.v{version}` (removing it when it
/// cannot be moved); returns where it went.
fn move_to_quarantine(root: &Path, key: &str, version: u64) -> PathBuf {
    let final_path = root.join(key);
    let quarantined_to = root.join(QUARANTINE_DIR).join(format!("{key}.v{version}"));
    let moved = quarantined_to
        .parent()
        .map_or(Ok(()), fs::create_dir_all)
        .and_then(|()| fs::rename(&final_path, &quarantined_to));
    if let Err(err) = moved {
        tracing::error!(path = %final_path.display(), error = %err, "cannot move a corrupt file to quarantine; removing it");
        let _ = fs::remove_file(&final_path);
    }
    quarantined_to
}

fn lock_list<T>(list: &Mutex<T>) -> MutexGuard<'_, T> {
    list.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A BLAKE3 as hex, or `none`.
fn hex(hash: Option<[u8; 32]>) -> String {
    hash.map_or_else(
        || "none".to_owned(),
        |hash| blake3::Hash::from_bytes(hash).to_hex().to_string(),
    )
}

/// Loads snapshot and journal into entries by key, the next version, and the open journal.
/// The index as loaded: entries by key, the next version, the open journal, and the older
/// format the index was read in, when it must be migrated.
type LoadedIndex = (
    std::collections::HashMap<String, Entry>,
    u64,
    Journal,
    Option<u8>,
);

fn load_index(index_dir: &Path) -> Result<LoadedIndex> {
    let snapshot = persist::read_snapshot(index_dir)?;
    let (journal, contents) = Journal::open(index_dir)?;
    let formats = [
        snapshot.as_ref().map(|snapshot| snapshot.format),
        contents.as_ref().map(|contents| contents.format),
    ];
    let migrate = formats
        .into_iter()
        .flatten()
        .filter(|f| *f < persist::FORMAT)
        .min();
    // Snapshots list entries least recently used first; `tick` keeps that order, and journal
    // records (writes, so most recent) continue it.
    let (mut generation, mut next_version, mut entries) = match snapshot {
        Some(snapshot) => (
            snapshot.generation,
            snapshot.next_version,
            snapshot
                .entries
                .into_iter()
                .enumerate()
                .map(|(position, (key, entry))| {
                    (
                        key,
                        Entry {
                            tick: position as u64,
                            ..entry
                        },
                    )
                })
                .collect::<std::collections::HashMap<_, _>>(),
        ),
        None => (0, 0, std::collections::HashMap::new()),
    };
    let mut tick = entries.len() as u64;
    if let Some(contents) = contents
        && contents.generation >= generation
    {
        generation = contents.generation;
        next_version = next_version.max(contents.next_version);
        for record in contents.records {
            match record {
                Record::Put {
                    key,
                    version,
                    size_bytes,
                    hash,
                    inode,
                    mtime_ns,
                    sums,
                } => {
                    next_version = next_version.max(version + 1);
                    let (pinned, last_access_ms) = entries
                        .get(&key)
                        .map_or((false, now_ms()), |e| (e.pinned, e.last_access_ms));
                    entries.insert(
                        key,
                        Entry {
                            version,
                            size_bytes,
                            hash,
                            inode,
                            mtime_ns,
                            last_access_ms,
                            pinned,
                            sums,
                            verified: false,
                            tick,
                        },
                    );
                    tick += 1;
                }
                Record::Remove { key, version } => {
                    next_version = next_version.max(version + 1);
                    entries.remove(&key);
                }
                Record::Pin { key, pinned } => {
                    if let Some(entry) = entries.get_mut(&key) {
                        entry.pinned = pinned;
                    }
                }
            }
        }
    }
    // A journal older than the snapshot is stale: start one of the snapshot's generation.
    let journal = if journal.generation() == generation {
        journal
    } else {
        Journal::create(index_dir, generation, next_version)?
    };
    Ok((entries, next_version, journal, migrate))
}

/// Takes an exclusive `flock` on the store, so no second process opens it. A lock that is busy is
/// retried for [`LOCK_WAIT`]: a `fork` in another thread briefly holds a copy of a just-released
/// lock until its `exec`.
fn lock_root(root: &Path, index_dir: &Path) -> Result<File> {
    let path = index_dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(Error::io("open", &path))?;
    let deadline = Instant::now() + LOCK_WAIT;
    while rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        if Instant::now() >= deadline {
            return Err(Error::Locked {
                root: root.to_owned(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(file)
}

/// Removes what a crash left in the staging directory.
fn clean_staging(staging_dir: &Path) -> Result<()> {
    let mut n_removed = 0u64;
    for entry in fs::read_dir(staging_dir).map_err(Error::io("list", staging_dir))? {
        let entry = entry.map_err(Error::io("list", staging_dir))?;
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(Error::io("remove", &path))?;
        n_removed += 1;
    }
    if n_removed > 0 {
        tracing::info!(n_removed, "removed staging leftovers of an earlier run");
        persist::sync_dir(staging_dir)?;
    }
    Ok(())
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

/// Fills `buffer` from `file` and returns the BLAKE3 of the bytes and their piece checksums. A
/// large buffer is hashed by another thread as it fills, one block behind the reads (a bounded
/// hand-off of finished blocks), so a verified read takes about as long as the read alone, and
/// each block is hashed while it is still in cache.
fn read_hashed(file: &mut File, buffer: &mut [u8]) -> io::Result<([u8; 32], Sums)> {
    if buffer.len() < PIPELINED_READ_BYTES_MIN {
        file.read_exact(buffer)?;
        return Ok((hash_bytes(buffer), Sums::of(buffer)));
    }
    std::thread::scope(|scope| {
        let (finished, to_hash) = std::sync::mpsc::sync_channel::<&[u8]>(PIPELINED_BLOCKS_AHEAD);
        let hashing = scope.spawn(move || {
            let mut hasher = blake3::Hasher::new();
            let mut sums = SumsBuilder::default();
            for block in to_hash {
                hash_update(&mut hasher, block);
                sums.update(block);
            }
            (*hasher.finalize().as_bytes(), sums.finish())
        });
        for block in buffer.chunks_mut(IO_BLOCK_BYTES) {
            file.read_exact(block)?;
            let block: &[u8] = block;
            if finished.send(block).is_err() {
                break;
            }
        }
        drop(finished);
        Ok(hashing
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    })
}

/// Fills `buffer` from `file`, checking each piece against `sums`; returns the index of the
/// first piece that fails. A large buffer is checked on another thread (the second core) one
/// piece behind the reads, so the check costs about nothing beside the read; the reads stop at
/// the first bad piece.
fn read_checked(file: &mut File, buffer: &mut [u8], sums: &Sums) -> io::Result<Option<usize>> {
    if buffer.len() < PIPELINED_READ_BYTES_MIN {
        file.read_exact(buffer)?;
        return Ok(sums.first_mismatch(buffer));
    }
    std::thread::scope(|scope| {
        let (finished, to_check) =
            std::sync::mpsc::sync_channel::<(usize, &[u8])>(PIPELINED_BLOCKS_AHEAD);
        let checking = scope.spawn(move || {
            to_check
                .into_iter()
                .find(|(index, piece)| Some(sums::piece_sum(piece)) != sums.piece(*index))
                .map(|(index, _)| index)
        });
        for (index, piece) in buffer.chunks_mut(PIECE_BYTES).enumerate() {
            file.read_exact(piece)?;
            let piece: &[u8] = piece;
            if finished.send((index, piece)).is_err() {
                break;
            }
        }
        drop(finished);
        Ok(checking
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    })
}

/// The BLAKE3, size and piece checksums of everything `file` yields from where it stands.
fn hash_file(file: &mut File) -> io::Result<([u8; 32], u64, Sums)> {
    let mut hasher = blake3::Hasher::new();
    let mut sums = SumsBuilder::default();
    let mut buffer = vec![0u8; 8 * IO_BLOCK_BYTES];
    let mut size_bytes = 0u64;
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                hash_update(&mut hasher, &buffer[..n]);
                sums.update(&buffer[..n]);
                size_bytes += n as u64;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok((*hasher.finalize().as_bytes(), size_bytes, sums.finish()))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A home written before piece checksums (index format 1) opens: its files are known (not
    /// re-adopted), the index is rewritten in format 2 at once, and the first read of each file
    /// checks its BLAKE3 and records its checksums.
    #[test]
    fn an_index_of_format_1_is_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = vec![5u8; 3 * PIECE_BYTES];
        let path = dir.path().join("d/f");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, &bytes).unwrap();
        let stat = fs::metadata(&path).unwrap();
        let index_dir = dir.path().join(INDEX_DIR);
        fs::create_dir_all(&index_dir).unwrap();
        fs::write(
            index_dir.join("journal"),
            persist::tests::format_1_journal(&[Record::Put {
                key: "d/f".to_owned(),
                version: 4,
                size_bytes: bytes.len() as u64,
                hash: Some(*blake3::hash(&bytes).as_bytes()),
                inode: stat.ino(),
                mtime_ns: walk::mtime_ns(&stat),
                sums: None,
            }]),
        )
        .unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let stats = store.stats();
        assert_eq!(
            (
                stats.n_files,
                stats.n_adopted_on_open,
                stats.n_changed_on_open
            ),
            (1, 0, 0)
        );
        assert_eq!(
            &fs::read(index_dir.join("journal")).unwrap()[..8],
            b"VBUSJRN2"
        );
        assert_eq!(
            &fs::read(index_dir.join("snapshot")).unwrap()[..8],
            b"VBUSSNP2"
        );
        assert_eq!(store.meta("d", "f").unwrap().unwrap().version, 4);
        assert_eq!(store.get_file_by_path("d", "f").unwrap().unwrap(), bytes);
        let digest = store.inner.lock().index.get("d/f").unwrap().sums;
        assert_eq!(digest, Some(Sums::of(&bytes).digest()));
    }
}
