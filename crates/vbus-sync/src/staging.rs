//! `BUS/INTERCONNECT`: files in flight. A pulled file is staged at
//! `{dir}/{dataset}/{blake3}.part`, its full size from the start, each verified piece written at
//! its offset. The stage is named by the file's hash, so a pull interrupted by a restart (of any
//! version listing that file) resumes from it: the pieces already there are hashed again and
//! those that match the manifest are kept, so a torn write costs only its piece. While a file is
//! in flight its verified pieces are served to peers ([`Interconnect::read_in_flight`]); when
//! every piece is there the whole is hashed and published into L3, and the stage is gone. A stage
//! nobody has written for [`STALE_STAGE_AGE`] (a pull given up, of a version no longer wanted) is
//! removed when the staging area is opened, so abandoned pulls do not fill the disk.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::manifest::{FileEntry, Manifest, ManifestError, piece_len};

/// How long a stage may sit unwritten before opening the staging area removes it.
pub const STALE_STAGE_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// The staging area of one agent.
#[derive(Debug)]
pub struct Interconnect {
    dir: PathBuf,
    /// `dataset/blake3` → the file in flight.
    in_flight: Mutex<HashMap<String, Arc<Partial>>>,
}

/// One file in flight.
#[derive(Debug)]
pub struct Partial {
    path: PathBuf,
    file: File,
    size_bytes: u64,
    piece_bytes: u64,
    done: Vec<AtomicBool>,
    key: String,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ManifestError + use<> {
    let path = path.to_owned();
    move |source| ManifestError::Io { op, path, source }
}

/// What a peer asking for a range of a file in flight gets.
#[derive(Debug, PartialEq, Eq)]
pub enum InFlight {
    /// Not in flight here.
    Absent,
    /// In flight, but not every piece of the range is verified yet.
    NotYet,
    /// The bytes.
    Bytes(Vec<u8>),
}

impl Interconnect {
    /// The staging area in `dir` (created); stages unwritten for [`STALE_STAGE_AGE`] are
    /// removed.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, ManifestError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let staging = Self {
            dir,
            in_flight: Mutex::new(HashMap::new()),
        };
        staging.remove_stale(STALE_STAGE_AGE)?;
        Ok(staging)
    }

    /// Removes every stage not in flight whose last write is older than `age`; returns how many
    /// it removed. (A pull writes its stage at every piece, so only abandoned ones qualify.)
    pub fn remove_stale(&self, age: std::time::Duration) -> Result<usize, ManifestError> {
        let now = std::time::SystemTime::now();
        let mut n_removed = 0;
        for dataset in std::fs::read_dir(&self.dir).map_err(io("list", &self.dir))? {
            let dataset = dataset.map_err(io("list", &self.dir))?.path();
            if !dataset.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(&dataset).map_err(io("list", &dataset))? {
                let path = entry.map_err(io("list", &dataset))?.path();
                if path.extension().is_none_or(|ext| ext != "part") {
                    continue;
                }
                let modified = std::fs::metadata(&path)
                    .and_then(|meta| meta.modified())
                    .map_err(io("stat", &path))?;
                let idle = now.duration_since(modified).unwrap_or_default();
                let in_flight = self
                    .in_flight
                    .lock()
                    .values()
                    .any(|partial| partial.path == path);
                if idle >= age && !in_flight {
                    std::fs::remove_file(&path).map_err(io("remove", &path))?;
                    tracing::info!(
                        stage = %path.display(),
                        idle_days = idle.as_secs() / 86_400,
                        "removed a stage no pull has written for a long time"
                    );
                    n_removed += 1;
                }
            }
        }
        Ok(n_removed)
    }

    /// Stages `file` of `manifest`, resuming a stage left by an earlier pull: returns it with
    /// the bytes of the pieces already verified there.
    pub fn begin(
        &self,
        manifest: &Manifest,
        file: &FileEntry,
    ) -> Result<(Arc<Partial>, u64), ManifestError> {
        let key = format!("{}/{}", manifest.dataset, file.blake3);
        if let Some(partial) = self.in_flight.lock().get(&key) {
            // Another pull on this agent stages the same file: share it.
            return Ok((Arc::clone(partial), partial.bytes_done()));
        }
        let dir = self.dir.join(&manifest.dataset);
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let path = dir.join(format!("{}.part", file.blake3));
        let file_handle = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open", &path))?;
        let existing = file_handle.metadata().map_err(io("stat", &path))?.len();
        if existing != file.size_bytes {
            file_handle
                .set_len(file.size_bytes)
                .map_err(io("size", &path))?;
        }
        let done: Vec<AtomicBool> = (0..file.pieces.len())
            .map(|_| AtomicBool::new(false))
            .collect();
        let partial = Partial {
            path,
            file: file_handle,
            size_bytes: file.size_bytes,
            piece_bytes: manifest.piece_bytes,
            done,
            key: key.clone(),
        };
        if existing > 0 {
            // Resume: keep every piece that still matches the manifest.
            for index in 0..file.pieces.len() {
                let Some(bytes) = partial.read_piece(index)? else {
                    continue;
                };
                if manifest.verify_piece(file, index, &bytes).is_ok() {
                    partial.done[index].store(true, Ordering::Release);
                }
            }
        }
        let resumed = partial.bytes_done();
        let partial = Arc::new(partial);
        let mut in_flight = self.in_flight.lock();
        let partial = Arc::clone(in_flight.entry(key).or_insert(partial));
        Ok((partial, resumed))
    }

    /// Ends `partial`'s flight (published, or given up: its stage stays for a later resume
    /// unless it was published).
    pub fn end(&self, partial: &Partial) {
        self.in_flight.lock().remove(&partial.key);
    }

    /// `len` bytes at `offset` of the file of `dataset` whose BLAKE3 is `blake3`, if it is in
    /// flight here and every piece the range touches is verified.
    pub fn read_in_flight(
        &self,
        dataset: &str,
        blake3: &str,
        offset: u64,
        len: u64,
    ) -> Result<InFlight, ManifestError> {
        let Some(partial) = self
            .in_flight
            .lock()
            .get(&format!("{dataset}/{blake3}"))
            .cloned()
        else {
            return Ok(InFlight::Absent);
        };
        let end = offset.saturating_add(len);
        if len == 0 || end > partial.size_bytes {
            return Ok(InFlight::NotYet);
        }
        let first = (offset / partial.piece_bytes) as usize;
        let last = ((end - 1) / partial.piece_bytes) as usize;
        if !(first..=last).all(|index| partial.is_done(index)) {
            return Ok(InFlight::NotYet);
        }
        let mut bytes = vec![0u8; len as usize];
        partial
            .file
            .read_exact_at(&mut bytes, offset)
            .map_err(io("read", &partial.path))?;
        Ok(InFlight::Bytes(bytes))
    }
}

impl Partial {
    /// Whether piece `index` is written and verified.
    pub fn is_done(&self, index: usize) -> bool {
        self.done
            .get(index)
            .is_some_and(|done| done.load(Ordering::Acquire))
    }

    /// Bytes of the verified pieces.
    pub fn bytes_done(&self) -> u64 {
        (0..self.done.len())
            .filter(|&index| self.is_done(index))
            .map(|index| piece_len(self.size_bytes, self.piece_bytes, index))
            .sum()
    }

    /// Piece `index` as staged (`None` past the end).
    fn read_piece(&self, index: usize) -> Result<Option<Vec<u8>>, ManifestError> {
        let len = piece_len(self.size_bytes, self.piece_bytes, index);
        if len == 0 && self.size_bytes > 0 {
            return Ok(None);
        }
        let mut bytes = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut bytes, index as u64 * self.piece_bytes)
            .map_err(io("read", &self.path))?;
        Ok(Some(bytes))
    }

    /// Writes verified piece `index`; peers may read it from now on.
    pub fn write_piece(&self, index: usize, bytes: &[u8]) -> Result<(), ManifestError> {
        self.file
            .write_all_at(bytes, index as u64 * self.piece_bytes)
            .map_err(io("write", &self.path))?;
        self.done[index].store(true, Ordering::Release);
        Ok(())
    }

    /// The staged file (complete once every piece is done).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs the staged file; its BLAKE3: `hashed` when the caller hashed every piece as it
    /// wrote them in order, else read back and hashed whole.
    pub fn finish(&self, hashed: Option<[u8; 32]>) -> Result<[u8; 32], ManifestError> {
        self.file.sync_all().map_err(io("sync", &self.path))?;
        if let Some(hash) = hashed {
            return Ok(hash);
        }
        let mut hasher = blake3::Hasher::new();
        let mut buffer = vec![0u8; 8 << 20];
        let mut offset = 0;
        while offset < self.size_bytes {
            let len = (self.size_bytes - offset).min(buffer.len() as u64) as usize;
            self.file
                .read_exact_at(&mut buffer[..len], offset)
                .map_err(io("read", &self.path))?;
            hasher.update_rayon(&buffer[..len]);
            offset += len as u64;
        }
        Ok(*hasher.finalize().as_bytes())
    }

    /// Removes the staged file (it turned out wrong as a whole).
    pub fn discard(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_stage_resumes_from_its_verified_pieces_and_serves_them_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let origin_dir = dir.path().join("origin");
        std::fs::create_dir_all(origin_dir.join("ds")).unwrap();
        let bytes: Vec<u8> = (0..(200u64 << 10) + 7).map(|i| (i % 251) as u8).collect();
        std::fs::write(origin_dir.join("ds/f.bin"), &bytes).unwrap();
        let manifest = crate::Origin::dir(&origin_dir)
            .manifest_with("ds", "v", 64 << 10)
            .unwrap();
        let file = &manifest.files[0];
        assert_eq!(file.pieces.len(), 4);
        let piece = |i: usize| {
            let start = i * (64 << 10);
            &bytes[start..(start + (64 << 10)).min(bytes.len())]
        };

        let stage = Interconnect::open(dir.path().join("INTERCONNECT")).unwrap();
        let (partial, resumed) = stage.begin(&manifest, file).unwrap();
        assert_eq!(resumed, 0);
        partial.write_piece(0, piece(0)).unwrap();
        partial.write_piece(2, piece(2)).unwrap();
        // Served in flight: whole pieces that are there; not yet for the others.
        assert_eq!(
            stage
                .read_in_flight("ds", &file.blake3, 0, 64 << 10)
                .unwrap(),
            InFlight::Bytes(piece(0).to_vec())
        );
        assert_eq!(
            stage
                .read_in_flight("ds", &file.blake3, 64 << 10, 64 << 10)
                .unwrap(),
            InFlight::NotYet
        );
        assert_eq!(
            stage.read_in_flight("ds", "other", 0, 10).unwrap(),
            InFlight::Absent
        );
        // The pull stops (a restart): piece 2 is torn on disk.
        let path = partial.path().to_owned();
        stage.end(&partial);
        drop(partial);
        let file_handle = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file_handle
            .write_all_at(b"torn", (2 * (64 << 10)) + 100)
            .unwrap();
        drop(file_handle);

        let stage = Interconnect::open(dir.path().join("INTERCONNECT")).unwrap();
        let (partial, resumed) = stage.begin(&manifest, file).unwrap();
        assert_eq!(resumed, 64 << 10, "piece 0 kept, torn piece 2 not");
        assert!(partial.is_done(0) && !partial.is_done(2));
        for index in 1..4 {
            partial.write_piece(index, piece(index)).unwrap();
        }
        assert_eq!(
            blake3::Hash::from(partial.finish(None).unwrap())
                .to_hex()
                .as_str(),
            file.blake3
        );
        assert_eq!(std::fs::read(partial.path()).unwrap(), bytes);
    }

    #[test]
    fn stages_left_unwritten_for_long_are_removed_at_open_and_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("INTERCONNECT");
        std::fs::create_dir_all(root.join("ds")).unwrap();
        let old = root.join("ds/aaaa.part");
        let fresh = root.join("ds/bbbb.part");
        let other = root.join("ds/notes.txt");
        for path in [&old, &fresh, &other] {
            std::fs::write(path, b"bytes").unwrap();
        }
        let long_ago = std::time::SystemTime::now() - STALE_STAGE_AGE - Duration::from_secs(60);
        for path in [&old, &other] {
            File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }

        let stage = Interconnect::open(&root).unwrap();
        assert!(!old.exists(), "an abandoned stage is removed");
        assert!(fresh.exists(), "a recent stage stays for its resume");
        assert!(other.exists(), "only stages are touched");
        // A stage in flight is never removed, whatever its age.
        let origin_dir = dir.path().join("origin");
        std::fs::create_dir_all(origin_dir.join("ds")).unwrap();
        std::fs::write(origin_dir.join("ds/f.bin"), b"some bytes").unwrap();
        let manifest = crate::Origin::dir(&origin_dir)
            .manifest_with("ds", "v", 64 << 10)
            .unwrap();
        let (partial, _) = stage.begin(&manifest, &manifest.files[0]).unwrap();
        assert_eq!(
            stage.remove_stale(Duration::ZERO).unwrap(),
            1,
            "only the other stage"
        );
        assert!(partial.path().exists());
        assert!(!fresh.exists());
    }
}
