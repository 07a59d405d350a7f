//! How reads are checked: what a read checks (piece checksums, or the whole BLAKE3), opening the
//! file the index describes, recording what a full check learnt, and quarantining what fails.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::*;

/// What a read needs from the index, copied out so the lock is not held during I/O.
pub(super) struct Lookup {
    pub(super) key: String,
    /// The entry as it was: the file opened must be its inode, so its version and hash describe
    /// exactly the bytes read.
    pub(super) entry: Entry,
    pub(super) check: Check,
}

/// How a read checks the bytes it reads.
pub(super) enum Check {
    /// Not at all ([`Verify::FirstRead`], after the first read).
    Trusted,
    /// Piece by piece against these checksums.
    Pieces(Sums),
    /// In full against the BLAKE3 (or hashed to learn it, for an adopted file), computing the
    /// piece checksums on the way.
    Full,
}

/// What opening the file of an index entry found.
pub(super) enum Opened {
    File(File),
    /// The path holds another file now, or none: look it up again.
    Changed,
}

impl Inner {
    pub(super) fn lookup(&self, key: &str) -> Option<Lookup> {
        let entry = {
            let mut state = self.state.lock();
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
    pub(super) fn plan_check(&self, key: &str, entry: &Entry) -> Check {
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
    pub(super) fn open_checked(&self, lookup: &Lookup) -> Result<Opened> {
        let final_path = self.root.join(&lookup.key);
        let file = match File::open(&final_path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let mut state = self.state.lock();
                if state.index.get(&lookup.key).is_some_and(|entry| {
                    entry.is_same_file(lookup.entry.inode, lookup.entry.version)
                }) && !final_path.exists()
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
        // The bytes of an inode that is not the indexed version's (an inode number freed by a
        // replaced file and taken by a newer one) fail their check against the looked-up
        // version's sums, and `reject` then finds that version gone and reads again.
        if metadata.ino() == lookup.entry.inode {
            return Ok(Opened::File(file));
        }
        drop(file);
        // Publishes change the path and the index together under the lock: if the index still
        // describes the file looked up, another inode at the path was put there behind the
        // store's back; it is not the version the index names.
        let mut state = self.state.lock();
        if let Some(entry) = state.index.get(&lookup.key).cloned()
            && entry.is_same_file(lookup.entry.inode, lookup.entry.version)
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
    pub(super) fn record_check(
        &self,
        lookup: &Lookup,
        hash: [u8; 32],
        size_bytes: u64,
        sums: &Sums,
    ) -> Result<bool> {
        let staged_sums = self.stage_side_file(sums)?;
        let mut state = self.state.lock();
        let Some(entry) = state.index.get(&lookup.key).cloned() else {
            return Ok(false);
        };
        if !entry.is_same_file(lookup.entry.inode, lookup.entry.version) {
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
    pub(super) fn stage_side_file(&self, sums: &Sums) -> Result<StagedSums> {
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
    pub(super) fn place_side_file(&self, key: &str, mut staged: StagedSums) {
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
    pub(super) fn reject<T>(&self, lookup: &Lookup, offset: u64) -> Result<Option<T>> {
        match self.quarantine_if_current(
            &lookup.key,
            lookup.entry.inode,
            lookup.entry.version,
            offset,
        ) {
            Some(err) => Err(err),
            None => Ok(None),
        }
    }

    /// Quarantines `key` when the index still describes file `inode` of `version` (what was read),
    /// returning
    /// the error; `None` when a publish or removal replaced it meanwhile.
    pub(super) fn quarantine_if_current(
        &self,
        key: &str,
        inode: u64,
        version: u64,
        offset: u64,
    ) -> Option<Error> {
        let mut state = self.state.lock();
        let entry = state
            .index
            .get(key)
            .filter(|entry| entry.is_same_file(inode, version))
            .cloned()?;
        Some(self.quarantine(&mut state, key, &entry, offset))
    }

    /// Moves a file whose bytes do not match their checksums out of the store, so it is never
    /// served; counts it and lists it for [`FileStore::take_quarantined`].
    pub(super) fn quarantine(
        &self,
        state: &mut State,
        key: &str,
        entry: &Entry,
        offset: u64,
    ) -> Error {
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
            let mut list = self.quarantined.lock();
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
}

/// A side file written to staging and not yet placed; removed if dropped.
pub(super) struct StagedSums(Option<PathBuf>);

impl Drop for StagedSums {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Moves `key`'s file to `{root}/.vbus-quarantine/{key}.v{version}` (removing it when it
/// cannot be moved); returns where it went.
pub(super) fn move_to_quarantine(root: &Path, key: &str, version: u64) -> PathBuf {
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

/// Fills `buffer` from `file` and returns the BLAKE3 of the bytes and their piece checksums. A
/// large buffer is hashed by another thread as it fills, one block behind the reads (a bounded
/// hand-off of finished blocks), so a verified read takes about as long as the read alone, and
/// each block is hashed while it is still in cache.
pub(super) fn read_hashed(file: &mut File, buffer: &mut [u8]) -> io::Result<([u8; 32], Sums)> {
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
pub(super) fn read_checked(
    file: &mut File,
    buffer: &mut [u8],
    sums: &Sums,
) -> io::Result<Option<usize>> {
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
pub(super) fn hash_file(file: &mut File) -> io::Result<([u8; 32], u64, Sums)> {
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
