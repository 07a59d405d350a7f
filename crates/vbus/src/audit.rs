//! The daemon's files under `AUDIT/`: a writer that rotates by size (the daemon log, the metric
//! snapshots), and the access log of the HTTP API.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A file appended to until it would pass `max_bytes`, then renamed `NAME.1` (older rotations
/// shift to `.2`, ... up to `kept`; the oldest is dropped) and started afresh.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    kept: u32,
    file: File,
    size: u64,
}

impl RotatingFile {
    /// Opens (appending) or creates `path`.
    pub fn open(path: impl Into<PathBuf>, max_bytes: u64, kept: u32) -> io::Result<Self> {
        let path = path.into();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path,
            max_bytes,
            kept: kept.max(1),
            file,
            size,
        })
    }

    fn rotated(path: &Path, idx: u32) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{idx}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let _ = std::fs::remove_file(Self::rotated(&self.path, self.kept));
        for idx in (1..self.kept).rev() {
            let from = Self::rotated(&self.path, idx);
            if from.exists() {
                std::fs::rename(&from, Self::rotated(&self.path, idx + 1))?;
            }
        }
        std::fs::rename(&self.path, Self::rotated(&self.path, 1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.size > 0 && self.size + buf.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Stderr that never blocks the daemon: each log event is handed to a writer thread through a
/// bounded queue, and dropped (counted) when the queue is full, as when nobody reads the pipe.
#[derive(Debug, Clone)]
pub struct NonBlockingStderr {
    lines: std::sync::mpsc::SyncSender<Vec<u8>>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Events queued for stderr at most.
const STDERR_QUEUE_LINES: usize = 4096;

impl NonBlockingStderr {
    /// Starts the writer thread.
    pub fn start() -> io::Result<Self> {
        let (lines, queue) = std::sync::mpsc::sync_channel::<Vec<u8>>(STDERR_QUEUE_LINES);
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = std::sync::Arc::clone(&dropped);
        std::thread::Builder::new()
            .name("vbus-stderr".to_owned())
            .spawn(move || {
                let mut reported = 0;
                while let Ok(line) = queue.recv() {
                    let mut stderr = io::stderr().lock();
                    let now = seen.load(std::sync::atomic::Ordering::Relaxed);
                    if now > reported {
                        let _ = writeln!(
                            stderr,
                            "({} log lines dropped: stderr was not read)",
                            now - reported
                        );
                        reported = now;
                    }
                    let _ = stderr.write_all(&line);
                }
            })?;
        Ok(Self { lines, dropped })
    }
}

/// One event's bytes, queued when dropped.
#[derive(Debug)]
pub struct StderrEvent {
    sink: NonBlockingStderr,
    bytes: Vec<u8>,
}

impl Write for StderrEvent {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for StderrEvent {
    fn drop(&mut self) {
        if !self.bytes.is_empty()
            && self
                .sink
                .lines
                .try_send(std::mem::take(&mut self.bytes))
                .is_err()
        {
            self.sink
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for NonBlockingStderr {
    type Writer = StderrEvent;

    fn make_writer(&'a self) -> StderrEvent {
        StderrEvent {
            sink: self.clone(),
            bytes: Vec::new(),
        }
    }
}

/// Logs every request: changes at `info` (the audit trail), reads at `debug`.
pub(crate) async fn access_log(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if matches!(method, axum::http::Method::GET | axum::http::Method::HEAD) {
        tracing::debug!(%method, path, status, ms, "request");
    } else {
        tracing::info!(%method, path, status, ms, "request");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_a_bounded_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let mut file = RotatingFile::open(&path, 100, 2).unwrap();
        for line in 0..30 {
            writeln!(file, "line {line:04} of the log").unwrap();
        }
        file.flush().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["x.log", "x.log.1", "x.log.2"]);
        for name in &names {
            let len = std::fs::metadata(dir.path().join(name)).unwrap().len();
            assert!(len <= 100, "{name}: {len} bytes");
        }
        // The newest lines are in the current file, the next older in .1.
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(current.ends_with("line 0029 of the log\n"), "{current}");
        let older = std::fs::read_to_string(dir.path().join("x.log.1")).unwrap();
        assert!(older < current, "rotation order");
    }
}
