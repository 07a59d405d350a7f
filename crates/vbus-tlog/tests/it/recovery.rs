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

#[test]
fn a_torn_tail_is_zeroed_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let offsets = one_segment_log(dir.path(), 100);
    let segment = &segments(dir.path())[0];
    // Record 100 half written: its header and part of its payload, the rest garbage-free zeros
    // replaced by a few stray bytes, as a write cut by a kill leaves it.
    let last = offsets[99];
    let mut frame = std::fs::read(segment).unwrap()[last as usize..last as usize + 24].to_vec();
    frame[20] ^= 0xff;
    write_at(segment, last, &frame);
    // And a stray header of a record that never finished, after it.
    write_at(segment, last + 400, &[9, 0, 0, 0, 1, 2, 3, 4]);

    let (log, recovery) = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(recovery.last_seq, 99);
    assert!(recovery.torn_tail_bytes >= 24, "{recovery:?}");
    assert_eq!(
        log.append(1, b"new 100", Durability::Fdatasync).unwrap(),
        100
    );
    let mut last_payload = Vec::new();
    log.read_from(99, |record| {
        last_payload = record.payload.to_vec();
        Ok(true)
    })
    .unwrap();
    assert_eq!(last_payload, b"new 100");
    drop(log);
    let (_, recovery) = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!((recovery.last_seq, recovery.torn_tail_bytes), (100, 0));
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
