//! `FileReader`: Read + Seek over one version of a file, each piece checked before it is read.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt as _;

use crate::Error;
use crate::store::{FileMeta, FileStore};
use crate::sums::{PIECE_BYTES, Sums};

/// Reads the version of a file that was current when it was opened; a later publish or removal
/// of the same path does not change what it reads. Unless the store's verification is off, each
/// 1 MiB piece is read whole and checked against its checksum before any of its bytes is
/// returned; a bad piece ends the read with [`io::ErrorKind::InvalidData`] (its inner error is
/// the store's [`Error`]) and quarantines the file.
#[derive(Debug)]
pub struct FileReader {
    file: File,
    meta: FileMeta,
    position: u64,
    check: Option<PieceCheck>,
}

/// The checked piece buffer of a reader.
#[derive(Debug)]
pub(crate) struct PieceCheck {
    store: FileStore,
    inode: u64,
    sums: Sums,
    piece: Vec<u8>,
    /// Which piece `piece` holds, checked.
    loaded: Option<u64>,
}

impl PieceCheck {
    pub(crate) fn new(store: FileStore, inode: u64, sums: Sums) -> Self {
        Self {
            store,
            inode,
            sums,
            piece: Vec::new(),
            loaded: None,
        }
    }
}

impl FileReader {
    pub(crate) fn new(file: File, meta: FileMeta, check: Option<PieceCheck>) -> Self {
        Self {
            file,
            meta,
            position: 0,
            check,
        }
    }

    /// The metadata of the version being read.
    pub fn meta(&self) -> &FileMeta {
        &self.meta
    }

    /// Reads and checks the first piece, so that a small damaged file fails before anything is
    /// sent.
    pub(crate) fn check_first_piece(&mut self) -> Result<(), Error> {
        if self.meta.size_bytes == 0 {
            return Ok(());
        }
        self.load(0)
    }

    /// Loads piece `index` into the buffer and checks it.
    fn load(&mut self, index: u64) -> Result<(), Error> {
        let Some(check) = self.check.as_mut() else {
            return Ok(());
        };
        if check.loaded == Some(index) {
            return Ok(());
        }
        check.loaded = None;
        let start = index * PIECE_BYTES as u64;
        let len = (self.meta.size_bytes - start).min(PIECE_BYTES as u64) as usize;
        check.piece.resize(len, 0);
        let key = format!("{}/{}", self.meta.dataset, self.meta.path);
        match self.file.read_exact_at(&mut check.piece, start) {
            Ok(()) => {}
            // Shorter than its index entry: truncated in place.
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(check
                    .store
                    .reject_read(&key, check.inode, self.meta.version, start));
            }
            Err(err) => {
                return Err(Error::Io {
                    op: "read",
                    path: check.store.root().join(&key),
                    source: err,
                });
            }
        }
        if Some(crate::sums::piece_sum(&check.piece)) != check.sums.piece(index as usize) {
            return Err(check
                .store
                .reject_read(&key, check.inode, self.meta.version, start));
        }
        check.loaded = Some(index);
        Ok(())
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.meta.size_bytes;
        if buf.is_empty() || self.position >= size {
            return Ok(0);
        }
        let n = match self.check.is_some() {
            false => {
                let want = buf.len().min((size - self.position) as usize);
                self.file.read_at(&mut buf[..want], self.position)?
            }
            true => {
                let index = self.position / PIECE_BYTES as u64;
                self.load(index).map_err(|err| match err {
                    Error::Io { source, .. } => source,
                    err => io::Error::new(io::ErrorKind::InvalidData, err),
                })?;
                let piece = &self.check.as_ref().expect("checked above").piece;
                let start = (self.position - index * PIECE_BYTES as u64) as usize;
                let n = (piece.len() - start).min(buf.len());
                buf[..n].copy_from_slice(&piece[start..start + n]);
                n
            }
        };
        self.position += n as u64;
        Ok(n)
    }
}

impl Seek for FileReader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.meta.size_bytes.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        let target = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing position",
            )
        })?;
        self.position = target;
        Ok(target)
    }
}
