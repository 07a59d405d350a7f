//! The directory scan that reconciles the index with the files on open.

use parking_lot::{Condvar, Mutex};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::name;

/// A regular file found under the root, with what identifies its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FoundFile {
    pub key: String,
    pub size_bytes: u64,
    pub inode: u64,
    pub mtime_ns: i64,
}

/// What the scan found, and what it left alone.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub files: Vec<FoundFile>,
    /// Files whose names the store would refuse (left on disk, not served).
    pub n_skipped: u64,
}

/// Lists every regular file under `root`, in parallel over directories. Entries at the root whose
/// names begin with `.vbus` are the store's own and are skipped; symbolic links are never followed.
pub(crate) fn scan(root: &Path, n_threads: usize) -> Scan {
    struct Queue {
        pending: Vec<(PathBuf, String)>,
        n_busy: usize,
    }
    let queue = Mutex::new(Queue {
        pending: vec![(root.to_owned(), String::new())],
        n_busy: 0,
    });
    let wakeup = Condvar::new();
    let results = Mutex::new(Scan::default());
    std::thread::scope(|scope| {
        for _ in 0..n_threads.max(1) {
            scope.spawn(|| {
                let mut local = Scan::default();
                loop {
                    let (dir, prefix) = {
                        let mut queue = queue.lock();
                        loop {
                            if let Some(next) = queue.pending.pop() {
                                queue.n_busy += 1;
                                break next;
                            }
                            if queue.n_busy == 0 {
                                wakeup.notify_all();
                                let mut results = results.lock();
                                results.files.append(&mut local.files);
                                results.n_skipped += local.n_skipped;
                                return;
                            }
                            wakeup.wait(&mut queue);
                        }
                    };
                    let subdirs = scan_dir(&dir, &prefix, &mut local);
                    let mut queue = queue.lock();
                    queue.n_busy -= 1;
                    queue.pending.extend(subdirs);
                    wakeup.notify_all();
                }
            });
        }
    });
    results.into_inner()
}

/// Lists one directory: files go to `scan`, subdirectories are returned.
fn scan_dir(dir: &Path, prefix: &str, scan: &mut Scan) -> Vec<(PathBuf, String)> {
    let mut subdirs = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            tracing::warn!(path = %dir.display(), error = %err, "cannot list a directory of the store");
            return subdirs;
        }
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            tracing::warn!(path = %entry.path().display(), "skipping a name that is not UTF-8");
            scan.n_skipped += 1;
            continue;
        };
        if prefix.is_empty() && file_name.starts_with(name::RESERVED_PREFIX) {
            continue;
        }
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        let relative = if prefix.is_empty() {
            file_name.to_owned()
        } else {
            format!("{prefix}/{file_name}")
        };
        if file_type.is_dir() {
            subdirs.push((entry.path(), relative));
        } else if file_type.is_file() {
            let (dataset, path) = name::split_key(&relative);
            if name::key(dataset, path).is_err() {
                tracing::warn!(path = %entry.path().display(), "skipping a file whose name the store refuses");
                scan.n_skipped += 1;
                continue;
            }
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            scan.files.push(FoundFile {
                key: relative,
                size_bytes: metadata.len(),
                inode: metadata.ino(),
                mtime_ns: mtime_ns(&metadata),
            });
        } else {
            tracing::warn!(path = %entry.path().display(), "skipping something that is neither a file nor a directory");
            scan.n_skipped += 1;
        }
    }
    subdirs
}

/// Modification time in nanoseconds since the epoch.
pub(crate) fn mtime_ns(metadata: &std::fs::Metadata) -> i64 {
    metadata
        .mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(metadata.mtime_nsec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_files_skips_the_stores_own_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (path, bytes) in [
            ("d/a", "1"),
            ("d/x/y/z", "22"),
            ("e/b", ""),
            (".vbus-index/journal", "j"),
        ] {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        std::fs::write(root.join("top-level-file"), "no dataset").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("d/link")).unwrap();
        let mut found = scan(root, 3);
        found.files.sort_by(|a, b| a.key.cmp(&b.key));
        let keys: Vec<(&str, u64)> = found
            .files
            .iter()
            .map(|f| (f.key.as_str(), f.size_bytes))
            .collect();
        assert_eq!(keys, [("d/a", 1), ("d/x/y/z", 2), ("e/b", 0)]);
        assert_eq!(found.n_skipped, 2, "the top-level file and the link");
    }
}
