//! Opening a store: the lock, staging leftovers, the index (snapshot and journal, migrated from
//! an older format), and its reconciliation with the directory (adopted, changed, and vanished
//! files).

use parking_lot::{Mutex, RwLock};
use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use super::check::{hash_file, move_to_quarantine};
use super::*;

impl FileStore {
    pub(super) fn open_with(builder: StoreBuilder) -> Result<Self> {
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
                                kind: previous.kind,
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
            n_checksum_failures: AtomicU64::new(0),
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
        kind: 0,
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
                    kind,
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
                            kind,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A home written before piece checksums (index format 1) opens: its files are known (not
    /// re-adopted), the index is rewritten in the current format at once, and the first read of each file
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
                kind: 0,
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
            b"VBUSJRN3"
        );
        assert_eq!(
            &fs::read(index_dir.join("snapshot")).unwrap()[..8],
            b"VBUSSNP3"
        );
        assert_eq!(store.meta("d", "f").unwrap().unwrap().version, 4);
        assert_eq!(store.get_file_by_path("d", "f").unwrap().unwrap(), bytes);
        let digest = store.inner.state.lock().index.get("d/f").unwrap().sums;
        assert_eq!(digest, Some(Sums::of(&bytes).digest()));
    }
}
