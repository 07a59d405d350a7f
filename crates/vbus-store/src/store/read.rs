//! Reading a file of the store: whole into a Vec or a caller's buffer, or as a stream, each
//! version checked as [`Verify`] says, with reads retried when a publish replaces the file.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::*;

impl FileStore {
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
        self.inner.quarantined.lock().drain(..).collect()
    }

    /// Called by a [`FileReader`] whose piece at `offset` failed its checksum (or could not be
    /// read whole): quarantines the file when the index still describes `inode`. Returns the
    /// error to report.
    pub(crate) fn reject_read(&self, key: &str, inode: u64, version: u64, offset: u64) -> Error {
        self.inner
            .quarantine_if_current(key, inode, version, offset)
            .unwrap_or_else(|| {
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
            })
    }
}
