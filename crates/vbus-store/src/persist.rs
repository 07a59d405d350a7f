//! The index on disk: a snapshot of every entry plus a journal of the changes since.
//!
//! Both live in `.vbus-index/` under the store's root. The directory is the truth and the index a
//! record of it: on open, whatever the snapshot and journal say is checked against the files, and
//! a damaged or missing index costs only re-hashing, never data. That is why the journal is not
//! fsynced on every append (it survives a process crash in the page cache; after a power cut, the
//! lost tail's files are re-adopted).
//!
//! Journal: `magic (8) | generation u64 | next_version u64`, then records
//! `payload_len u32 | crc32c(payload) u32 | payload`. Snapshot: `magic (8) | generation u64 |
//! next_version u64 | n_entries u64 | entries.. | crc32c u32` over everything before the CRC. All
//! integers are little-endian. A snapshot of generation G makes a journal of an older generation
//! stale; compaction writes the snapshot of G+1 first, then a fresh journal of G+1, each atomically.
//!
//! The magic's last byte is the format version. Format 2 adds each file's piece-checksum digest
//! (see `sums`); format 3 adds each file's kind byte (what its writer said it holds). Formats 1
//! and 2 are read (kind 0, plain bytes; no digests in format 1), and the store rewrites them in
//! the current format at once on open. A magic of a later format is refused with [`Error::UnsupportedFormat`], never guessed at.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::index::Entry;
use crate::{Error, Result};

const JOURNAL_MAGIC: &[u8; 8] = b"VBUSJRN3";
const SNAPSHOT_MAGIC: &[u8; 8] = b"VBUSSNP3";
/// The format this build writes.
pub(crate) const FORMAT: u8 = 3;
/// The oldest format this build reads.
const FORMAT_MIN: u8 = 1;
const JOURNAL_HEADER_BYTES: u64 = 24;
/// The largest record payload: a key at its longest plus the fixed fields.
const RECORD_PAYLOAD_BYTES_MAX: usize = 8 * 1024;

const KIND_PUT: u8 = 1;
const KIND_REMOVE: u8 = 2;
const KIND_PIN: u8 = 3;

/// One change to the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// A file was published (or hashed, or adopted) with this state.
    Put {
        key: String,
        version: u64,
        size_bytes: u64,
        hash: Option<[u8; 32]>,
        inode: u64,
        mtime_ns: i64,
        /// The digest of the file's piece checksums, when known.
        sums: Option<u64>,
        /// What its writer said it holds (0: plain bytes).
        kind: u8,
    },
    /// A file left the store (removed, evicted or quarantined).
    Remove { key: String, version: u64 },
    /// A file was pinned or unpinned.
    Pin { key: String, pinned: bool },
}

impl Record {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Put {
                key,
                version,
                size_bytes,
                hash,
                inode,
                mtime_ns,
                sums,
                kind,
            } => {
                out.push(KIND_PUT);
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&size_bytes.to_le_bytes());
                out.extend_from_slice(&inode.to_le_bytes());
                out.extend_from_slice(&mtime_ns.to_le_bytes());
                out.push(u8::from(hash.is_some()) | (u8::from(sums.is_some()) << 1));
                out.extend_from_slice(&hash.unwrap_or([0; 32]));
                out.extend_from_slice(&sums.unwrap_or(0).to_le_bytes());
                out.push(*kind);
                put_key(out, key);
            }
            Self::Remove { key, version } => {
                out.push(KIND_REMOVE);
                out.extend_from_slice(&version.to_le_bytes());
                put_key(out, key);
            }
            Self::Pin { key, pinned } => {
                out.push(KIND_PIN);
                out.push(u8::from(*pinned));
                put_key(out, key);
            }
        }
    }

    /// Decodes a record of journal format `format`.
    fn decode(payload: &[u8], format: u8) -> Option<Self> {
        let mut cursor = Cursor(payload);
        let record = match cursor.u8()? {
            KIND_PUT => {
                let version = cursor.u64()?;
                let size_bytes = cursor.u64()?;
                let inode = cursor.u64()?;
                let mtime_ns = cursor.u64()? as i64;
                let flags = cursor.u8()?;
                let hash = cursor.hash()?;
                let sums = if format >= 2 { cursor.u64()? } else { 0 };
                let kind = if format >= 3 { cursor.u8()? } else { 0 };
                Self::Put {
                    key: cursor.key()?,
                    version,
                    size_bytes,
                    hash: (flags & 1 != 0).then_some(hash),
                    inode,
                    mtime_ns,
                    sums: (format >= 2 && flags & 2 != 0).then_some(sums),
                    kind,
                }
            }
            KIND_REMOVE => {
                let version = cursor.u64()?;
                Self::Remove {
                    key: cursor.key()?,
                    version,
                }
            }
            KIND_PIN => {
                let pinned = cursor.u8()? != 0;
                Self::Pin {
                    key: cursor.key()?,
                    pinned,
                }
            }
            _ => return None,
        };
        cursor.0.is_empty().then_some(record)
    }
}

fn put_key(out: &mut Vec<u8>, key: &str) {
    let len = u16::try_from(key.len()).expect("keys are validated to fit in u16");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(key.as_bytes());
}

/// Reads fixed-width little-endian fields; `None` when the input is too short.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|bytes| bytes[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .map(|bytes| u16::from_le_bytes([bytes[0], bytes[1]]))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|bytes| bytes.try_into().ok())
            .map(u64::from_le_bytes)
    }
    fn hash(&mut self) -> Option<[u8; 32]> {
        self.take(32).and_then(|bytes| bytes.try_into().ok())
    }
    fn key(&mut self) -> Option<String> {
        let len = usize::from(self.u16()?);
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

/// The journal file, open for appending.
#[derive(Debug)]
pub(crate) struct Journal {
    file: File,
    path: PathBuf,
    generation: u64,
    n_records: u64,
    scratch: Vec<u8>,
}

/// What the journal held when it was opened.
#[derive(Debug)]
pub(crate) struct JournalContents {
    /// The format it was written in (an older one is rewritten on open).
    pub format: u8,
    pub generation: u64,
    pub next_version: u64,
    pub records: Vec<Record>,
}

impl Journal {
    /// Opens the journal in `dir`, returning its records up to the first torn or damaged one
    /// (the rest is truncated: the directory scan on open re-derives what it described).
    pub fn open(dir: &Path) -> Result<(Self, Option<JournalContents>)> {
        let path = dir.join("journal");
        let mut file = match OpenOptions::new().read(true).append(true).open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Self::create(dir, 0, 0)?, None));
            }
            Err(err) => return Err(Error::io("open", &path)(err)),
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(Error::io("read", &path))?;
        if bytes.len() >= 8 {
            check_format(&path, &bytes[..8], JOURNAL_MAGIC)?;
        }
        let header = (bytes.len() as u64 >= JOURNAL_HEADER_BYTES)
            .then(|| format_of(&bytes[..8], JOURNAL_MAGIC))
            .flatten()
            .map(|format| {
                let mut cursor = Cursor(&bytes[8..24]);
                (format, cursor.u64().unwrap_or(0), cursor.u64().unwrap_or(0))
            });
        let Some((format, generation, next_version)) = header else {
            tracing::warn!(path = %path.display(), "index journal has no valid header; starting a new one");
            return Ok((Self::create(dir, 0, 0)?, None));
        };
        let mut records = Vec::new();
        let mut offset = JOURNAL_HEADER_BYTES as usize;
        while let Some((record, next)) = read_record(&bytes, offset, format) {
            records.push(record);
            offset = next;
        }
        if offset < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                offset_bytes = offset,
                dropped_bytes = bytes.len() - offset,
                "index journal ends in a torn or damaged record; truncating it"
            );
            file.set_len(offset as u64)
                .map_err(Error::io("truncate", &path))?;
            file.sync_all().map_err(Error::io("fsync", &path))?;
        }
        let journal = Self {
            file,
            path,
            generation,
            n_records: records.len() as u64,
            scratch: Vec::new(),
        };
        Ok((
            journal,
            Some(JournalContents {
                format,
                generation,
                next_version,
                records,
            }),
        ))
    }

    /// Replaces the journal with an empty one of `generation`, atomically.
    pub fn create(dir: &Path, generation: u64, next_version: u64) -> Result<Self> {
        let path = dir.join("journal");
        let mut header = Vec::with_capacity(JOURNAL_HEADER_BYTES as usize);
        header.extend_from_slice(JOURNAL_MAGIC);
        header.extend_from_slice(&generation.to_le_bytes());
        header.extend_from_slice(&next_version.to_le_bytes());
        write_atomic(dir, "journal", &header)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(Error::io("open", &path))?;
        Ok(Self {
            file,
            path,
            generation,
            n_records: 0,
            scratch: Vec::new(),
        })
    }

    /// Appends one record with a single `write` (no fsync; see the module docs).
    pub fn append(&mut self, record: &Record) -> Result<()> {
        self.scratch.clear();
        self.scratch.extend_from_slice(&[0; 8]);
        record.encode(&mut self.scratch);
        let payload_len = self.scratch.len() - 8;
        let crc = crc32c::crc32c(&self.scratch[8..]);
        self.scratch[..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
        self.scratch[4..8].copy_from_slice(&crc.to_le_bytes());
        self.file
            .write_all(&self.scratch)
            .map_err(Error::io("append", &self.path))?;
        self.n_records += 1;
        Ok(())
    }

    /// Makes every appended record durable.
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(Error::io("fsync", &self.path))
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn n_records(&self) -> u64 {
        self.n_records
    }
}

/// The format version of a file whose first 8 bytes are `head`, when it is one this build reads.
fn format_of(head: &[u8], magic: &[u8; 8]) -> Option<u8> {
    let format = head.get(7)?.checked_sub(b'0')?;
    (head.get(..7)? == &magic[..7] && (FORMAT_MIN..=FORMAT).contains(&format)).then_some(format)
}

/// Refuses a file of this kind written in a format newer than this build's (a newer release
/// wrote it): guessing would lose its contents.
fn check_format(path: &Path, head: &[u8], magic: &[u8; 8]) -> Result<()> {
    if head.get(..7) == Some(&magic[..7])
        && format_of(head, magic).is_none()
        && head.get(7).is_some_and(|digit| digit.is_ascii_digit())
    {
        return Err(Error::UnsupportedFormat {
            path: path.to_owned(),
            found: String::from_utf8_lossy(head).into_owned(),
            supported: format!(
                "{}{FORMAT_MIN} to {}{FORMAT}",
                String::from_utf8_lossy(&magic[..7]),
                String::from_utf8_lossy(&magic[..7])
            ),
        });
    }
    Ok(())
}

fn read_record(bytes: &[u8], offset: usize, format: u8) -> Option<(Record, usize)> {
    let frame = bytes.get(offset..offset + 8)?;
    let payload_len = u32::from_le_bytes(frame[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(frame[4..8].try_into().ok()?);
    if payload_len == 0 || payload_len > RECORD_PAYLOAD_BYTES_MAX {
        return None;
    }
    let payload = bytes.get(offset + 8..offset + 8 + payload_len)?;
    if crc32c::crc32c(payload) != crc {
        return None;
    }
    Some((Record::decode(payload, format)?, offset + 8 + payload_len))
}

/// A snapshot as read back.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// The format it was written in.
    pub format: u8,
    pub generation: u64,
    pub next_version: u64,
    pub entries: Vec<(String, Entry)>,
}

/// Writes a snapshot of `entries` atomically.
pub(crate) fn write_snapshot<'a>(
    dir: &Path,
    generation: u64,
    next_version: u64,
    n_entries: usize,
    entries: impl Iterator<Item = (&'a str, &'a Entry)>,
) -> Result<()> {
    let mut bytes = Vec::with_capacity(32 + n_entries * 112);
    bytes.extend_from_slice(SNAPSHOT_MAGIC);
    bytes.extend_from_slice(&generation.to_le_bytes());
    bytes.extend_from_slice(&next_version.to_le_bytes());
    bytes.extend_from_slice(&(n_entries as u64).to_le_bytes());
    let mut written = 0usize;
    for (key, entry) in entries {
        bytes.extend_from_slice(&entry.version.to_le_bytes());
        bytes.extend_from_slice(&entry.size_bytes.to_le_bytes());
        bytes.extend_from_slice(&entry.inode.to_le_bytes());
        bytes.extend_from_slice(&entry.mtime_ns.to_le_bytes());
        bytes.extend_from_slice(&entry.last_access_ms.to_le_bytes());
        bytes.push(
            u8::from(entry.hash.is_some())
                | (u8::from(entry.pinned) << 1)
                | (u8::from(entry.sums.is_some()) << 2),
        );
        bytes.extend_from_slice(&entry.hash.unwrap_or([0; 32]));
        bytes.extend_from_slice(&entry.sums.unwrap_or(0).to_le_bytes());
        bytes.push(entry.kind);
        put_key(&mut bytes, key);
        written += 1;
    }
    assert_eq!(written, n_entries, "snapshot entry count");
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    write_atomic(dir, "snapshot", &bytes)
}

/// Reads the snapshot; `None` when there is none or it is damaged (then the index is rebuilt
/// from the directory).
pub(crate) fn read_snapshot(dir: &Path) -> Result<Option<Snapshot>> {
    let path = dir.join("snapshot");
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(Error::io("read", &path)(err)),
    };
    if bytes.len() >= 8 {
        check_format(&path, &bytes[..8], SNAPSHOT_MAGIC)?;
    }
    let parsed = parse_snapshot(&bytes);
    if parsed.is_none() {
        tracing::warn!(path = %path.display(), "index snapshot is damaged; rebuilding the index from the directory");
    }
    Ok(parsed)
}

fn parse_snapshot(bytes: &[u8]) -> Option<Snapshot> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let format = format_of(body.get(..8)?, SNAPSHOT_MAGIC)?;
    let mut cursor = Cursor(&body[8..]);
    let generation = cursor.u64()?;
    let next_version = cursor.u64()?;
    let n_entries = usize::try_from(cursor.u64()?).ok()?;
    let mut entries = Vec::with_capacity(n_entries.min(body.len() / 70));
    for _ in 0..n_entries {
        let version = cursor.u64()?;
        let size_bytes = cursor.u64()?;
        let inode = cursor.u64()?;
        let mtime_ns = cursor.u64()? as i64;
        let last_access_ms = cursor.u64()?;
        let flags = cursor.u8()?;
        let hash = cursor.hash()?;
        let sums = if format >= 2 { cursor.u64()? } else { 0 };
        let kind = if format >= 3 { cursor.u8()? } else { 0 };
        let key = cursor.key()?;
        entries.push((
            key,
            Entry {
                version,
                size_bytes,
                hash: (flags & 1 != 0).then_some(hash),
                inode,
                mtime_ns,
                last_access_ms,
                pinned: flags & 2 != 0,
                sums: (format >= 2 && flags & 4 != 0).then_some(sums),
                kind,
                verified: false,
                tick: 0,
            },
        ));
    }
    cursor.0.is_empty().then_some(Snapshot {
        format,
        generation,
        next_version,
        entries,
    })
}

/// Writes `dir/name` whole (see [`crate::atomic`]; the temporary `{name}.tmp` is removed on open).
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let options = crate::atomic::WholeWrite::default();
    crate::atomic::replace_with(&dir.join(name), options, |file| file.write_all(bytes))?;
    Ok(())
}

/// fsyncs a directory, making renames and creations in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    crate::atomic::sync_dir(dir).map_err(Error::io("fsync", dir))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn records() -> Vec<Record> {
        vec![
            Record::Put {
                key: "d/a/b.bin".to_owned(),
                version: 7,
                size_bytes: 1 << 40,
                hash: Some([9; 32]),
                inode: 123,
                mtime_ns: -5,
                sums: Some(0xDEAD_BEEF_0123_4567),
                kind: 2,
            },
            Record::Put {
                key: "d/x".to_owned(),
                version: 8,
                size_bytes: 0,
                hash: None,
                inode: 1,
                mtime_ns: 1_700_000_000_000_000_000,
                sums: None,
                kind: 0,
            },
            Record::Pin {
                key: "d/x".to_owned(),
                pinned: true,
            },
            Record::Remove {
                key: "d/a/b.bin".to_owned(),
                version: 9,
            },
        ]
    }

    #[test]
    fn journal_round_trips_and_truncates_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::create(dir.path(), 3, 42).unwrap();
        for record in records() {
            journal.append(&record).unwrap();
        }
        drop(journal);
        let (_, contents) = Journal::open(dir.path()).unwrap();
        let contents = contents.unwrap();
        assert_eq!((contents.generation, contents.next_version), (3, 42));
        assert_eq!(contents.records, records());

        // Tear the last record at every possible length: the earlier records survive.
        let path = dir.path().join("journal");
        let full = fs::read(&path).unwrap();
        let last_len = {
            let mut encoded = Vec::new();
            records().last().unwrap().encode(&mut encoded);
            encoded.len() + 8
        };
        for cut in 1..last_len {
            fs::write(&path, &full[..full.len() - cut]).unwrap();
            let (_, contents) = Journal::open(dir.path()).unwrap();
            assert_eq!(contents.unwrap().records, records()[..3]);
            assert_eq!(
                fs::metadata(&path).unwrap().len() as usize,
                full.len() - last_len
            );
        }
    }

    #[test]
    fn a_flipped_bit_ends_the_journal_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::create(dir.path(), 0, 0).unwrap();
        for record in records() {
            journal.append(&record).unwrap();
        }
        drop(journal);
        let path = dir.path().join("journal");
        let mut bytes = fs::read(&path).unwrap();
        let second_record = JOURNAL_HEADER_BYTES as usize + 8 + 70;
        bytes[second_record] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        let (_, contents) = Journal::open(dir.path()).unwrap();
        assert!(contents.unwrap().records.len() < records().len());
    }

    #[test]
    fn snapshot_round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let entry = Entry {
            version: 5,
            size_bytes: 10,
            hash: Some([1; 32]),
            inode: 77,
            mtime_ns: 99,
            last_access_ms: 1234,
            pinned: true,
            sums: Some(42),
            kind: 1,
            verified: true,
            tick: 3,
        };
        let entries = [
            ("d/a".to_owned(), entry.clone()),
            (
                "d/b".to_owned(),
                Entry {
                    hash: None,
                    sums: None,
                    ..entry
                },
            ),
        ];
        write_snapshot(
            dir.path(),
            4,
            6,
            2,
            entries.iter().map(|(key, entry)| (key.as_str(), entry)),
        )
        .unwrap();
        let snapshot = read_snapshot(dir.path()).unwrap().unwrap();
        assert_eq!((snapshot.generation, snapshot.next_version), (4, 6));
        assert_eq!(snapshot.entries.len(), 2);
        assert_eq!(snapshot.entries[0].1.hash, Some([1; 32]));
        assert!(snapshot.entries[0].1.pinned && !snapshot.entries[0].1.verified);
        assert_eq!(snapshot.entries[0].1.sums, Some(42));
        assert_eq!(snapshot.entries[1].1.hash, None);
        assert_eq!(snapshot.entries[1].1.sums, None);

        let path = dir.path().join("snapshot");
        let mut bytes = fs::read(&path).unwrap();
        bytes[40] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(read_snapshot(dir.path()).unwrap().is_none());
    }

    /// A format-1 journal (no piece-checksum digests), as releases before format 2 wrote it, of
    /// `puts` (other records are left out; a put's `sums` is not written).
    pub(crate) fn format_1_journal(puts: &[Record]) -> Vec<u8> {
        let mut bytes = b"VBUSJRN1".to_vec();
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&100u64.to_le_bytes());
        for record in puts {
            let Record::Put {
                key,
                version,
                size_bytes,
                hash,
                inode,
                mtime_ns,
                ..
            } = record
            else {
                continue;
            };
            let mut payload = vec![KIND_PUT];
            payload.extend_from_slice(&version.to_le_bytes());
            payload.extend_from_slice(&size_bytes.to_le_bytes());
            payload.extend_from_slice(&inode.to_le_bytes());
            payload.extend_from_slice(&mtime_ns.to_le_bytes());
            payload.push(u8::from(hash.is_some()));
            payload.extend_from_slice(&hash.unwrap_or([0; 32]));
            put_key(&mut payload, key);
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
            bytes.extend_from_slice(&payload);
        }
        bytes
    }

    #[test]
    fn a_format_1_journal_is_read_and_a_later_format_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        fs::write(
            &path,
            format_1_journal(&[Record::Put {
                key: "d/f".to_owned(),
                version: 4,
                size_bytes: 10,
                hash: Some([3; 32]),
                inode: 77,
                mtime_ns: 99,
                sums: Some(1),
                kind: 0,
            }]),
        )
        .unwrap();
        let (_, contents) = Journal::open(dir.path()).unwrap();
        let contents = contents.unwrap();
        assert_eq!(contents.format, 1);
        assert_eq!(
            contents.records,
            [Record::Put {
                key: "d/f".to_owned(),
                version: 4,
                size_bytes: 10,
                hash: Some([3; 32]),
                inode: 77,
                mtime_ns: 99,
                sums: None,
                kind: 0,
            }]
        );

        let mut later = fs::read(&path).unwrap();
        later[7] = b'9';
        fs::write(&path, &later).unwrap();
        let err = Journal::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::UnsupportedFormat { .. }), "{err}");
        assert!(err.to_string().contains("VBUSJRN9"), "{err}");
        assert_eq!(
            fs::read(&path).unwrap(),
            later,
            "a refused file is left as it was"
        );

        write_snapshot(dir.path(), 1, 1, 0, std::iter::empty()).unwrap();
        let snapshot_path = dir.path().join("snapshot");
        let mut snapshot = fs::read(&snapshot_path).unwrap();
        snapshot[7] = b'4';
        fs::write(&snapshot_path, &snapshot).unwrap();
        assert!(matches!(
            read_snapshot(dir.path()),
            Err(Error::UnsupportedFormat { .. })
        ));
    }

    /// A bounded fuzz of the index decoders (journal records, snapshots, piece-checksum side
    /// files): valid encodings with bytes flipped, cut and spliced, and random bytes, never panic,
    /// and whatever decodes from a journal frame whose CRC matches re-encodes to the same bytes.
    /// `VBUS_FUZZ_ITERATIONS` raises the count (default 20,000) for a longer run.
    #[test]
    fn fuzz_index_decoders_never_panic() {
        let iterations: usize = std::env::var("VBUS_FUZZ_ITERATIONS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(20_000);
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let mut seeds: Vec<Vec<u8>> = records()
            .iter()
            .map(|record| {
                let mut bytes = Vec::new();
                record.encode(&mut bytes);
                bytes
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let entry = Entry {
            version: 1,
            size_bytes: 3,
            hash: Some([7; 32]),
            inode: 2,
            mtime_ns: 3,
            last_access_ms: 4,
            pinned: true,
            sums: Some(5),
            kind: 3,
            verified: false,
            tick: 0,
        };
        write_snapshot(dir.path(), 1, 2, 1, std::iter::once(("d/k", &entry))).unwrap();
        seeds.push(fs::read(dir.path().join("snapshot")).unwrap());
        seeds.push(crate::sums::Sums::of(&vec![9u8; 3 << 20]).encode());
        for _ in 0..iterations {
            let mut bytes = seeds[rng.usize(..seeds.len())].clone();
            match rng.u8(..4) {
                0 => {
                    for _ in 0..rng.usize(1..4) {
                        if !bytes.is_empty() {
                            let at = rng.usize(..bytes.len());
                            bytes[at] ^= rng.u8(1..);
                        }
                    }
                }
                1 => bytes.truncate(rng.usize(..=bytes.len())),
                2 => {
                    let other = &seeds[rng.usize(..seeds.len())];
                    let at = rng.usize(..=bytes.len());
                    bytes.splice(at..at, other[..rng.usize(..=other.len())].iter().copied());
                }
                _ => bytes = (0..rng.usize(..200)).map(|_| rng.u8(..)).collect(),
            }
            for format in [1, 2, FORMAT] {
                if let Some(record) = Record::decode(&bytes, format)
                    && format == FORMAT
                {
                    let mut again = Vec::new();
                    record.encode(&mut again);
                    assert_eq!(Record::decode(&again, FORMAT), Some(record));
                }
            }
            let _ = parse_snapshot(&bytes);
            let _ = crate::sums::Sums::decode(&bytes, rng.u64(..8 << 20), rng.u64(..));
            let mut framed = Vec::new();
            framed.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            framed.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
            framed.extend_from_slice(&bytes);
            let _ = read_record(&framed, 0, FORMAT);
        }
    }
}
