//! `FileWriter`: a file being written, published on `commit`, discarded if dropped.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::store::{FileMeta, FileStore, IO_BLOCK_BYTES};
use crate::sums::SumsBuilder;
use crate::{Error, Result};

/// Writes a file into the store's staging directory while hashing it. [`FileWriter::commit`]
/// makes it durable and publishes it atomically at its final path; dropping the writer without
/// committing removes the staged bytes, and the final path never sees them.
#[derive(Debug)]
pub struct FileWriter {
    store: FileStore,
    key: String,
    staging_path: PathBuf,
    final_path: PathBuf,
    file: Option<BufWriter<File>>,
    hasher: blake3::Hasher,
    sums: SumsBuilder,
    size_bytes: u64,
    /// Bytes were written without hashing; the caller supplies the hash at the commit.
    prehashed: bool,
    /// The version to publish as, from [`FileStore::reserve_version`]; `None` takes the next.
    version: Option<u64>,
    /// What the contents are, recorded in the index ([`FileWriter::set_kind`]).
    kind: u8,
}

impl FileWriter {
    pub(crate) fn create(
        store: FileStore,
        key: String,
        staging_path: PathBuf,
        final_path: PathBuf,
    ) -> Result<Self> {
        let file = File::create_new(&staging_path).map_err(Error::io("create", &staging_path))?;
        Ok(Self {
            store,
            key,
            staging_path,
            final_path,
            file: Some(BufWriter::with_capacity(IO_BLOCK_BYTES, file)),
            hasher: blake3::Hasher::new(),
            sums: SumsBuilder::default(),
            size_bytes: 0,
            prehashed: false,
            version: None,
            kind: 0,
        })
    }

    /// Bytes written so far.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Where the bytes are staged until the commit.
    pub fn staging_path(&self) -> &Path {
        &self.staging_path
    }

    /// Where the file will be published.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Publishes as `version`, taken earlier from [`FileStore::reserve_version`], instead of the
    /// next version. The commit fails with [`Error::StaleVersion`] when the store already holds
    /// this version of the file or a newer one.
    pub fn set_version(&mut self, version: u64) {
        self.version = Some(version);
    }

    /// Records `kind` in the index with the file: an opaque byte saying what the contents are
    /// (0, the default, is plain bytes; the Python package records a value's type). The store
    /// keeps it while the file is unchanged; a file adopted from the directory has kind 0.
    pub fn set_kind(&mut self, kind: u8) {
        self.kind = kind;
    }

    /// Flushes and fsyncs the staged file, then publishes it: readers see the old version or this
    /// one, never a part. Returns once the publish is durable.
    pub fn commit(self) -> Result<FileMeta> {
        assert!(
            !self.prehashed,
            "a prehashed writer is committed with its hash"
        );
        self.finish(None)
    }

    /// Writes bytes whose hash the caller computes (on other threads).
    pub(crate) fn write_all_unhashed(&mut self, bytes: &[u8]) -> Result<()> {
        self.prehashed = true;
        let file = self.file.as_mut().expect("not committed");
        file.write_all(bytes)
            .map_err(Error::io("write", &self.staging_path))?;
        self.sums.update(bytes);
        self.size_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Commits with the hash of everything written.
    pub(crate) fn commit_prehashed(self, hash: [u8; 32]) -> Result<FileMeta> {
        self.finish(Some(hash))
    }

    fn finish(mut self, hash: Option<[u8; 32]>) -> Result<FileMeta> {
        let buffered = self.file.take().expect("a writer is committed once");
        let file = buffered
            .into_inner()
            .map_err(|err| Error::io("write", &self.staging_path)(err.into_error()))?;
        file.sync_all()
            .map_err(Error::io("fsync", &self.staging_path))?;
        drop(file);
        let hash = hash.unwrap_or_else(|| *self.hasher.finalize().as_bytes());
        let result = self.store.publish(
            &self.key,
            &self.staging_path,
            &self.final_path,
            self.size_bytes,
            (hash, std::mem::take(&mut self.sums).finish()),
            crate::store::Stamp {
                version: self.version,
                kind: self.kind,
            },
        );
        // On success the staging file was renamed away; on failure `Drop` removes it.
        result
    }
}

impl Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("writer already committed"))?;
        let n = file.write(buf)?;
        crate::store::hash_update(&mut self.hasher, &buf[..n]);
        self.sums.update(&buf[..n]);
        self.size_bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        drop(self.file.take());
        match std::fs::remove_file(&self.staging_path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(path = %self.staging_path.display(), error = %err, "cannot remove a staging file")
            }
        }
    }
}
