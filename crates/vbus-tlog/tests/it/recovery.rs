//! Damage on disk: a torn tail is zeroed on open; damage anywhere else is an error naming the
//! segment and the offset, on open (the newest segment) or on read (older ones).

use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use vbus_tlog::record::encoded_len;
use vbus_tlog::{Durability, Error, Log, LogOptions};

use crate::payload;

/// Bytes of a segment header.
const SEGMENT_HEADER: u64 = 32;

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    paths.sort();
    paths
}

/// A log of records `1..=n` in one segment; returns the offset of each record.
fn one_segment_log(dir: &Path, n: u64) -> Vec<u64> {
    let (log, _) = Log::open(dir, LogOptions::default()).unwrap();
    let mut offsets = Vec::new();
    let mut offset = SEGMENT_HEADER;
    for seq in 1..=n {
        offsets.push(offset);
        offset += encoded_len(payload(seq).len()) as u64;
        log.append(7, &payload(seq), Durability::Fdatasync).unwrap();
    }
    offsets
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
}

/// The first of records `1..=n` (from `from`) whose frame crosses a 512-byte boundary, with its
/// offset and end.
fn record_across_a_sector(offsets: &[u64], from: usize) -> (usize, u64, u64) {
    (from..offsets.len() - 1)
        .map(|idx| (idx, offsets[idx], offsets[idx + 1]))
        .find(|&(_, start, end)| start.next_multiple_of(512) < end && start % 512 != 0)
        .expect("some record crosses a sector boundary")
}

#[test]
fn a_torn_tail_is_zeroed_kept_aside_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let offsets = one_segment_log(dir.path(), 100);
    let segment = &segments(dir.path())[0];
    // The log as a crash mid-append leaves it: the last record's first sectors written, the
    // rest still the zeros the segment was preallocated with.
    let (idx, start, end) = record_across_a_sector(&offsets, 60);
    let cut = start.next_multiple_of(512);
    let full = std::fs::read(segment).unwrap();
    let mut torn_bytes = full[start as usize..cut as usize].to_vec();
    while torn_bytes.last() == Some(&0) {
        torn_bytes.pop();
    }
    write_at(segment, cut, &vec![0u8; (end - cut) as usize]);
    let after_end = *offsets.last().unwrap() + encoded_len(payload(100).len()) as u64;
    write_at(segment, end, &vec![0u8; (after_end - end) as usize]);

    let (log, recovery) = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(recovery.last_seq, idx as u64);
    assert_eq!(recovery.n_torn_records, 1, "{recovery:?}");
    assert_eq!(
        recovery.torn_tail_bytes,
        torn_bytes.len() as u64,
        "{recovery:?}"
    );
    let kept = std::fs::read(dir.path().join("damaged").join(format!(
        "{}.{start}",
        segment.file_name().unwrap().to_string_lossy()
    )))
    .unwrap();
    assert_eq!(kept, torn_bytes, "the torn bytes are kept aside");
    let next = idx as u64 + 1;
    assert_eq!(log.append(1, b"new", Durability::Fdatasync).unwrap(), next);
    let mut last_payload = Vec::new();
    log.read_from(next, |record| {
        last_payload = record.payload.to_vec();
        Ok(true)
    })
    .unwrap();
    assert_eq!(last_payload, b"new");
    drop(log);
    let (_, recovery) = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!((recovery.last_seq, recovery.torn_tail_bytes), (next, 0));
}

/// Issue 20, finding 4: a damaged last record (an acknowledged `fdatasync` record, one byte
/// changed) was zeroed as a torn tail with only a WARN. Damage that is not a torn write is
/// refused, named, and its bytes kept; nothing is zeroed.
#[test]
fn a_damaged_last_record_is_refused_not_zeroed() {
    let dir = tempfile::tempdir().unwrap();
    let offsets = one_segment_log(dir.path(), 100);
    let segment = &segments(dir.path())[0];
    let last = offsets[99];
    write_at(segment, last + 17, &[0xEE]);
    let before = std::fs::read(segment).unwrap();
    let err = Log::open(dir.path(), LogOptions::default()).unwrap_err();
    match &err {
        Error::Corrupt { offset, reason, .. } => {
            assert_eq!(*offset, last);
            assert!(reason.contains("not end in zeros"), "{reason}");
            assert!(reason.contains("vbus state repair"), "{reason}");
        }
        other => panic!("expected corruption, got {other}"),
    }
    assert_eq!(
        std::fs::read(segment).unwrap(),
        before,
        "nothing was zeroed"
    );
    assert!(
        dir.path().join("damaged").read_dir().unwrap().count() >= 1,
        "the damaged bytes are kept aside"
    );
}

#[test]
fn damage_before_good_records_in_the_newest_segment_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let offsets = one_segment_log(dir.path(), 100);
    let segment = &segments(dir.path())[0];
    // One flipped bit in record 50's sequence number.
    write_at(segment, offsets[49] + 8, &[50 ^ 0x10]);
    let err = Log::open(dir.path(), LogOptions::default()).unwrap_err();
    match &err {
        Error::Corrupt {
            segment: named,
            offset,
            reason,
        } => {
            assert_eq!(named, segment);
            assert_eq!(*offset, offsets[49]);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected corruption, got {other}"),
    }
    // The message a user sees names both.
    let message = err.to_string();
    assert!(
        message.contains(&segment.display().to_string())
            && message.contains(&offsets[49].to_string())
    );
}

#[test]
fn damage_in_an_older_segment_is_reported_by_reads_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _) = Log::open(
            dir.path(),
            LogOptions {
                segment_bytes: 16 << 10,
            },
        )
        .unwrap();
        for seq in 1..=200u64 {
            log.append(3, &payload(seq), Durability::Buffered).unwrap();
        }
        log.sync().unwrap();
    }
    let paths = segments(dir.path());
    assert!(paths.len() >= 3);
    // Record 2 of the first segment: a byte of its payload changed.
    let offset = SEGMENT_HEADER + encoded_len(payload(1).len()) as u64;
    write_at(&paths[0], offset + 20, &[0x5a]);

    let (log, _) = Log::open(
        dir.path(),
        LogOptions {
            segment_bytes: 16 << 10,
        },
    )
    .unwrap();
    let mut seen = Vec::new();
    let err = log
        .read_from(1, |record| {
            seen.push(record.seq);
            Ok(true)
        })
        .unwrap_err();
    assert_eq!(seen, [1], "records after the damage were handed out");
    assert!(
        matches!(&err, Error::Corrupt { segment, offset: at, .. } if *segment == paths[0] && *at == offset),
        "{err}"
    );
    // Reads that start past the damaged segment are fine.
    let second_first: u64 = paths[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(log.read_from(second_first, |_| Ok(true)).is_ok());
}

/// Issue 20, formats: a segment whose magic names a later format (a newer release wrote it) is
/// refused by name, not taken for damage.
#[test]
fn a_segment_of_a_later_format_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    one_segment_log(dir.path(), 3);
    let segment = &segments(dir.path())[0];
    write_at(segment, 7, b"2");
    let err = Log::open(dir.path(), LogOptions::default()).unwrap_err();
    assert!(matches!(err, Error::UnsupportedFormat { .. }), "{err}");
    assert!(err.to_string().contains("VBUSTLG2"), "{err}");
}
