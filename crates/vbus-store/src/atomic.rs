//! The one atomic whole-file write of VBUS: a temporary file beside the target, filled, synced,
//! renamed over the target, the directory synced. A crash at any point leaves the old file or the
//! new one, never a part; on an error the temporary file is removed. Every crate that replaces a
//! file whole (the store's index snapshot, log segments, checkpoints, the home's config and
//! launchers, manifests, repositories) calls it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// How the temporary file is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TempName {
    /// `{name}.tmp` beside the target: for directories one writer owns, whose open removes such
    /// leftovers (the store's index, the log, checkpoints).
    #[default]
    Suffix,
    /// `.{name}.{pid}.vbus-tmp`: hidden, and unique per process, for directories people and other
    /// processes also write (a home, the master, a repository).
    Hidden,
}

/// How [`replace_with`] writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct WholeWrite {
    /// The temporary file's name.
    pub temp: TempName,
    /// Make the file executable (`0o755`): the home's launchers.
    pub executable: bool,
    /// Create the parent directory (and its parents) when missing.
    pub create_parent: bool,
}

/// A failed whole-file write: which step, on which path.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}: {source}", path.display())]
pub struct WholeWriteError {
    /// The step that failed: `create`, `write`, `sync`, `rename into`, ...
    pub op: &'static str,
    /// The file (or directory) the step worked on.
    pub path: PathBuf,
    /// The operating system's error.
    #[source]
    pub source: io::Error,
}

impl WholeWriteError {
    fn at(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self { op, path, source }
    }
}

/// A file written whole by [`replace_with`].
#[derive(Debug)]
pub struct Written<T> {
    /// The file, open for reading and writing, now under the target's name.
    pub file: File,
    /// Its metadata as synced, before it took the name (a write by someone else after the rename
    /// shows as a change of size or modification time).
    pub metadata: fs::Metadata,
    /// What `fill` returned.
    pub value: T,
}

/// Replaces `path` whole with the bytes `fill` writes into the temporary file.
pub fn replace_with<T>(
    path: &Path,
    options: WholeWrite,
    fill: impl FnOnce(&mut File) -> io::Result<T>,
) -> Result<Written<T>, WholeWriteError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| {
            WholeWriteError::at("name", path)(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the path has no file name",
            ))
        })?
        .to_string_lossy();
    if options.create_parent {
        fs::create_dir_all(dir).map_err(WholeWriteError::at("create the directory", dir))?;
    }
    let tmp = match options.temp {
        TempName::Suffix => dir.join(format!("{name}.tmp")),
        TempName::Hidden => dir.join(format!(".{name}.{}.vbus-tmp", std::process::id())),
    };
    let result = (|| {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(WholeWriteError::at("create", &tmp))?;
        let value = fill(&mut file).map_err(WholeWriteError::at("write", &tmp))?;
        if options.executable {
            use std::os::unix::fs::PermissionsExt as _;
            file.set_permissions(fs::Permissions::from_mode(0o755))
                .map_err(WholeWriteError::at("make executable", &tmp))?;
        }
        file.sync_all().map_err(WholeWriteError::at("sync", &tmp))?;
        let metadata = file.metadata().map_err(WholeWriteError::at("stat", &tmp))?;
        fs::rename(&tmp, path).map_err(WholeWriteError::at("rename into", path))?;
        sync_dir(dir).map_err(WholeWriteError::at("sync the directory", dir))?;
        Ok(Written {
            file,
            metadata,
            value,
        })
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Replaces `path` whole with `bytes` (hidden temporary file, parent created when missing).
pub fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), WholeWriteError> {
    let options = WholeWrite {
        temp: TempName::Hidden,
        create_parent: true,
        ..WholeWrite::default()
    };
    replace_with(path, options, |file| file.write_all(bytes)).map(drop)
}

/// Replaces `path` whole with what `from` gives, exactly `expected_len` bytes when given (hidden
/// temporary file, parent created when missing); returns the metadata as synced.
pub fn write_whole_from(
    path: &Path,
    from: &mut dyn io::Read,
    expected_len: Option<u64>,
) -> Result<fs::Metadata, WholeWriteError> {
    let options = WholeWrite {
        temp: TempName::Hidden,
        create_parent: true,
        ..WholeWrite::default()
    };
    let written = replace_with(path, options, |file| {
        let written = io::copy(from, file)?;
        match expected_len {
            Some(expected) if written != expected => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{written} of {expected} bytes"),
            )),
            _ => Ok(()),
        }
    })?;
    Ok(written.metadata)
}

/// Implements `From<WholeWriteError>` for an error enum that has an
/// `Io { op: &'static str, path: PathBuf, source: std::io::Error }` variant, so `?` carries a failed
/// whole-file write's step and path into it.
#[macro_export]
macro_rules! impl_from_whole_write_error {
    ($error:ty) => {
        impl From<$crate::atomic::WholeWriteError> for $error {
            fn from(err: $crate::atomic::WholeWriteError) -> Self {
                Self::Io {
                    op: err.op,
                    path: err.path,
                    source: err.source,
                }
            }
        }
    };
}

/// fsyncs a directory, making renames and creations in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/a.json");
        write_whole(&path, b"one").unwrap();
        write_whole(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.json"]);
    }

    #[test]
    fn a_failed_fill_keeps_the_old_file_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        write_whole(&path, b"old").unwrap();
        let err = replace_with(&path, WholeWrite::default(), |file| {
            file.write_all(b"new, half")?;
            Err::<(), _>(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.op, "write");
        assert!(err.to_string().contains("seg.tmp: disk full"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert!(!dir.path().join("seg.tmp").exists());
    }

    #[test]
    fn a_short_source_is_refused_and_nothing_is_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let err = write_whole_from(&path, &mut &b"abc"[..], Some(4)).unwrap_err();
        assert!(err.to_string().contains("3 of 4 bytes"), "{err}");
        assert!(!path.exists());
        let meta = write_whole_from(&path, &mut &b"abcd"[..], Some(4)).unwrap();
        assert_eq!(meta.len(), 4);
    }

    #[test]
    fn an_executable_whole_write_is_executable() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.sh");
        let options = WholeWrite {
            executable: true,
            ..WholeWrite::default()
        };
        replace_with(&path, options, |file| file.write_all(b"#!/bin/sh\n")).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }
}
