//! Segment files: `{first_seq:020}.seg`, a 32-byte header, then records up to the preallocated
//! size. A segment is created whole (header written, space allocated, synced) under a temporary
//! name and renamed into place, so a crash never leaves a half-made segment.

use std::fs::{self, File};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use vbus_store::atomic::WholeWrite;

use crate::record::{self, DecodeError};
use crate::{Error, Result};

/// Bytes of the header; records start here.
pub(crate) const HEADER_BYTES: u64 = 32;
const MAGIC: &[u8; 8] = b"VBUSTLG1";
const SUFFIX: &str = ".seg";
const TMP_SUFFIX: &str = ".seg.tmp";

/// A segment on disk.
#[derive(Debug, Clone)]
pub(crate) struct SegmentInfo {
    pub first_seq: u64,
    pub path: PathBuf,
}

pub(crate) fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SUFFIX}")
}

/// The segments in `dir`, oldest first; leftover temporary files are removed.
pub(crate) fn list(dir: &Path) -> Result<Vec<SegmentInfo>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(Error::io("list", dir))? {
        let entry = entry.map_err(Error::io("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(TMP_SUFFIX) {
            fs::remove_file(entry.path()).map_err(Error::io("remove", entry.path()))?;
            continue;
        }
        let Some(stem) = name.strip_suffix(SUFFIX) else {
            continue;
        };
        if let Ok(first_seq) = stem.parse::<u64>()
            && stem.len() == 20
        {
            segments.push(SegmentInfo {
                first_seq,
                path: entry.path(),
            });
        }
    }
    segments.sort_by_key(|segment| segment.first_seq);
    Ok(segments)
}

fn header(first_seq: u64, size_bytes: u64) -> [u8; HEADER_BYTES as usize] {
    let mut header = [0u8; HEADER_BYTES as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..16].copy_from_slice(&first_seq.to_le_bytes());
    header[16..24].copy_from_slice(&size_bytes.to_le_bytes());
    let crc = crc32c::crc32c(&header[..24]);
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Creates the segment whose first record is `first_seq`, `size_bytes` long, durably.
pub(crate) fn create(dir: &Path, first_seq: u64, size_bytes: u64) -> Result<(SegmentInfo, File)> {
    let path = dir.join(file_name(first_seq));
    // The temporary name is `{name}.tmp` (`TMP_SUFFIX`), removed by `list`.
    let written = vbus_store::atomic::replace_with(&path, WholeWrite::default(), |file| {
        file.write_all(&header(first_seq, size_bytes))?;
        // Real blocks, so appends do not allocate (and an fdatasync need not write metadata);
        // file systems without fallocate get a sparse file of the same size.
        if rustix::fs::fallocate(&*file, rustix::fs::FallocateFlags::empty(), 0, size_bytes)
            .is_err()
        {
            file.set_len(size_bytes)?;
        }
        Ok(())
    })?;
    let file = written.file;
    Ok((SegmentInfo { first_seq, path }, file))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    vbus_store::atomic::sync_dir(dir).map_err(Error::io("fsync", dir))
}

/// The whole segment file, its header checked against the name.
pub(crate) fn read(segment: &SegmentInfo) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    read_into(segment, &mut bytes)?;
    Ok(bytes)
}

/// [`read`] into a buffer the caller reuses (its memory is already faulted in).
pub(crate) fn read_into(segment: &SegmentInfo, bytes: &mut Vec<u8>) -> Result<()> {
    bytes.clear();
    let mut file = File::open(&segment.path).map_err(Error::io("open", &segment.path))?;
    let len = file
        .metadata()
        .map_err(Error::io("stat", &segment.path))?
        .len();
    bytes.reserve(usize::try_from(len).unwrap_or(0));
    file.read_to_end(bytes)
        .map_err(Error::io("read", &segment.path))?;
    check_header(segment, bytes)
}

fn check_header(segment: &SegmentInfo, bytes: &[u8]) -> Result<()> {
    let corrupt = |reason: String| Error::Corrupt {
        segment: segment.path.clone(),
        offset: 0,
        reason,
    };
    if bytes.len() < HEADER_BYTES as usize {
        return Err(corrupt(format!(
            "the file is {} bytes, shorter than a header",
            bytes.len()
        )));
    }
    let stored = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    // The magic's last byte is the format version: a later one is a newer release's, refused by
    // name rather than taken for damage.
    if bytes[..7] == MAGIC[..7] && bytes[7] != MAGIC[7] && bytes[7].is_ascii_digit() {
        return Err(Error::UnsupportedFormat {
            path: segment.path.clone(),
            found: String::from_utf8_lossy(&bytes[..8]).into_owned(),
            supported: String::from_utf8_lossy(MAGIC).into_owned(),
        });
    }
    if &bytes[..8] != MAGIC || stored != crc32c::crc32c(&bytes[..24]) {
        return Err(corrupt("the segment header is damaged".to_owned()));
    }
    let mut first_seq = [0u8; 8];
    first_seq.copy_from_slice(&bytes[8..16]);
    let first_seq = u64::from_le_bytes(first_seq);
    if first_seq != segment.first_seq {
        return Err(corrupt(format!(
            "the header says the first record is {first_seq}, the name says {}",
            segment.first_seq
        )));
    }
    Ok(())
}

/// Where a scan of a segment's records stopped.
#[derive(Debug)]
pub(crate) struct ScanEnd {
    /// Offset after the last good record.
    pub end_offset: u64,
    /// The sequence number the next record must have.
    pub next_seq: u64,
    /// Set when the scan stopped at a damaged record rather than at the end of the records.
    pub damage: Option<(u64, DecodeError)>,
}

/// Walks the records of a segment's bytes from the header on, calling `visit` for each (records
/// must be numbered `segment.first_seq`, `+1`, ...). Stops at the end of the records or at the
/// first damaged one; a record out of sequence is corruption.
pub(crate) fn scan(
    segment: &SegmentInfo,
    bytes: &[u8],
    mut visit: impl FnMut(record::RecordRef<'_>) -> Result<bool>,
) -> Result<ScanEnd> {
    let mut offset = HEADER_BYTES as usize;
    let mut next_seq = segment.first_seq;
    loop {
        match record::decode(&bytes[offset.min(bytes.len())..]) {
            Ok((record, len)) => {
                if record.seq != next_seq {
                    return Err(Error::Corrupt {
                        segment: segment.path.clone(),
                        offset: offset as u64,
                        reason: format!("record {} where record {next_seq} should be", record.seq),
                    });
                }
                if !visit(record)? {
                    return Ok(ScanEnd {
                        end_offset: (offset + len) as u64,
                        next_seq: next_seq + 1,
                        damage: None,
                    });
                }
                offset += len;
                next_seq += 1;
            }
            Err(DecodeError::End) => {
                return Ok(ScanEnd {
                    end_offset: offset as u64,
                    next_seq,
                    damage: None,
                });
            }
            Err(err) => {
                return Ok(ScanEnd {
                    end_offset: offset as u64,
                    next_seq,
                    damage: Some((offset as u64, err)),
                });
            }
        }
    }
}

/// The unit a crash can cut a write at: a write reaches the disk in whole sectors.
const SECTOR_BYTES: usize = 512;

/// Whether the record at `offset`, which failed to decode with `damage`, is a torn write: a
/// record cut short by a crash, its written prefix followed by the zeros the segment was
/// preallocated with up to where it would end, from a sector boundary on. A record whose bytes
/// run (non-zero) to its end, or whose length field is impossible, was damaged after it was
/// written.
pub(crate) fn is_torn_write(bytes: &[u8], offset: usize, damage: &DecodeError) -> bool {
    match damage {
        DecodeError::End | DecodeError::BadLength(_) => false,
        DecodeError::Truncated { .. } => true,
        DecodeError::BadChecksum { .. } => {
            let Some(header) = bytes.get(offset..offset + 4) else {
                return false;
            };
            let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let end = (offset + record::encoded_len(body_len.saturating_sub(1) as usize))
                .min(bytes.len());
            let zeros_from = bytes[offset..end]
                .iter()
                .rposition(|&b| b != 0)
                .map_or(offset, |at| offset + at + 1);
            zeros_from.next_multiple_of(SECTOR_BYTES) < end
        }
    }
}

/// Whether any well-formed record lies at an 8-byte boundary at or after `from` (a damaged
/// record followed by good ones is corruption in the middle, not a torn tail).
pub(crate) fn any_record_after(bytes: &[u8], from: usize) -> bool {
    let mut offset = from.next_multiple_of(8) + 8;
    while offset + record::HEADER_BYTES < bytes.len() {
        if record::decode(&bytes[offset..]).is_ok() {
            return true;
        }
        offset += 8;
    }
    false
}
