//! Checkpoints: `ckpt-{seq:020}.bin`, an image of every page and the graph at a sequence number,
//! written to a temporary file, fsynced, renamed into place and the directory fsynced.
//!
//! `magic (8) | seq u64 | next_page_id u64 | n_pages u64 | (id u64 | location u8 | epoch u64 |
//! size u64 | bytes)* | n_edges u64 | (source u64 | target u64 | rule)* | crc32c u32` over
//! everything before the CRC.

use std::fs;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use crate::graph::Rule;
use crate::page::Location;
use crate::state::{Context, State};
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"VBUSCKP1";
const PREFIX: &str = "ckpt-";
const SUFFIX: &str = ".bin";

/// A checkpoint file on disk.
#[derive(Debug, Clone)]
pub(crate) struct CheckpointInfo {
    pub seq: u64,
    pub path: PathBuf,
}

/// The checkpoints in `dir`, oldest first (temporary leftovers removed).
/// The sequence numbers of the checkpoints in `dir`, oldest first (by their names; a damaged
/// one is found out only when it is read).
pub fn checkpoint_seqs(dir: &Path) -> Result<Vec<u64>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    Ok(list(dir)?.into_iter().map(|info| info.seq).collect())
}

pub(crate) fn list(dir: &Path) -> Result<Vec<CheckpointInfo>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(Error::io("list", dir))? {
        let entry = entry.map_err(Error::io("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            fs::remove_file(entry.path()).map_err(Error::io("remove", entry.path()))?;
            continue;
        }
        if let Some(seq) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.strip_suffix(SUFFIX))
            .and_then(|seq| seq.parse::<u64>().ok())
        {
            found.push(CheckpointInfo {
                seq,
                path: entry.path(),
            });
        }
    }
    found.sort_by_key(|info| info.seq);
    Ok(found)
}

/// A writer hashing everything it passes on.
struct CrcWriter<W> {
    inner: W,
    crc: u32,
}

impl<W: std::io::Write> std::io::Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the state's image as the checkpoint at `state.last_seq`; returns it.
pub(crate) fn write(
    dir: &Path,
    state: &State,
    device: Option<&vbus_gpu::Device>,
) -> Result<CheckpointInfo> {
    let seq = state.last_seq;
    let path = dir.join(format!("{PREFIX}{seq:020}{SUFFIX}"));
    // The temporary name is `{name}.tmp`, removed by `list`.
    let options = vbus_store::atomic::WholeWrite::default();
    vbus_store::atomic::replace_with(&path, options, |file| {
        let mut out = CrcWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            crc: 0,
        };
        out.write_all(MAGIC)?;
        out.write_all(&seq.to_le_bytes())?;
        out.write_all(&state.next_page_id.to_le_bytes())?;
        out.write_all(&(state.n_pages() as u64).to_le_bytes())?;
        for id in state.page_ids() {
            let page = state.page(id).map_err(std::io::Error::other)?;
            let bytes = page.read(device).map_err(std::io::Error::other)?;
            out.write_all(&id.to_le_bytes())?;
            out.write_all(&[page.location.code()])?;
            out.write_all(&page.epoch.to_le_bytes())?;
            out.write_all(&page.size.to_le_bytes())?;
            out.write_all(&bytes)?;
        }
        let edges = state.graph.edges();
        out.write_all(&(edges.len() as u64).to_le_bytes())?;
        let mut rule_bytes = Vec::new();
        for (source, target, rule) in edges {
            out.write_all(&source.to_le_bytes())?;
            out.write_all(&target.to_le_bytes())?;
            rule_bytes.clear();
            rule.encode(&mut rule_bytes);
            out.write_all(&rule_bytes)?;
        }
        let crc = out.crc;
        out.inner.write_all(&crc.to_le_bytes())?;
        out.inner.flush()
    })?;
    Ok(CheckpointInfo { seq, path })
}

/// The bytes a checkpoint of pages of `page_bytes` takes at most (their bytes, plus a generous
/// allowance for the headers, edges and rules).
pub(crate) fn estimated_bytes(page_bytes: u64) -> u64 {
    page_bytes
        .saturating_add(page_bytes / 64)
        .saturating_add(1 << 20)
}

/// The free bytes of the file system holding `dir` (for an unprivileged writer).
pub(crate) fn free_bytes(dir: &Path) -> Result<u64> {
    let stats = rustix::fs::statvfs(dir)
        .map_err(|err| Error::io("statvfs", dir)(std::io::Error::from(err)))?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Reads a checkpoint into a fresh state (pages placed as `ctx.device` allows).
pub(crate) fn read(info: &CheckpointInfo, ctx: &Context<'_>) -> Result<State> {
    let bytes = fs::read(&info.path).map_err(Error::io("read", &info.path))?;
    let corrupt = |reason: String| Error::CorruptCheckpoint {
        path: info.path.clone(),
        reason,
    };
    if bytes.len() >= 8
        && bytes[..7] == MAGIC[..7]
        && bytes[7] != MAGIC[7]
        && bytes[7].is_ascii_digit()
    {
        return Err(Error::UnsupportedFormat {
            path: info.path.clone(),
            found: String::from_utf8_lossy(&bytes[..8]).into_owned(),
            supported: String::from_utf8_lossy(MAGIC).into_owned(),
        });
    }
    if bytes.len() < MAGIC.len() + 4 || &bytes[..8] != MAGIC {
        return Err(corrupt("not a checkpoint (bad magic)".to_owned()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if stored != crc32c::crc32c(body) {
        return Err(corrupt("checksum mismatch".to_owned()));
    }
    let mut at = 8usize;
    let u64_next = |at: &mut usize| -> Result<u64> {
        let value = body
            .get(*at..*at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| corrupt("cut short".to_owned()))?;
        *at += 8;
        Ok(value)
    };
    let seq = u64_next(&mut at)?;
    if seq != info.seq {
        return Err(corrupt(format!(
            "holds sequence number {seq}, its name says {}",
            info.seq
        )));
    }
    let mut state = State::new();
    state.next_page_id = u64_next(&mut at)?;
    let n_pages = u64_next(&mut at)?;
    for _ in 0..n_pages {
        let id = u64_next(&mut at)?;
        let location = body
            .get(at)
            .and_then(|&code| Location::from_code(code))
            .ok_or_else(|| corrupt("bad location".to_owned()))?;
        at += 1;
        let epoch = u64_next(&mut at)?;
        let size = u64_next(&mut at)? as usize;
        let page_bytes = at
            .checked_add(size)
            .and_then(|end| body.get(at..end))
            .ok_or_else(|| corrupt("page cut short".to_owned()))?
            .to_vec();
        at += size;
        state.restore_page(id, location, epoch, page_bytes, ctx.device)?;
    }
    let n_edges = u64_next(&mut at)?;
    for _ in 0..n_edges {
        let source = u64_next(&mut at)?;
        let target = u64_next(&mut at)?;
        let rule = Rule::decode(body, &mut at).ok_or_else(|| corrupt("bad rule".to_owned()))?;
        state.graph.add(source, target, rule);
    }
    state.last_seq = seq;
    Ok(state)
}
