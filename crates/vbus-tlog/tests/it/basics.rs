use std::sync::Arc;

use vbus_tlog::{Durability, Error, Log, LogOptions, MAX_BODY_BYTES};

use crate::payload;

fn small_segments() -> LogOptions {
    LogOptions {
        segment_bytes: 64 << 10,
    }
}

fn read_all(log: &Log, from: u64) -> Vec<(u64, u8, Vec<u8>)> {
    let mut records = Vec::new();
    log.read_from(from, |record| {
        records.push((record.seq, record.kind, record.payload.to_vec()));
        Ok(true)
    })
    .unwrap();
    records
}

#[test]
fn appends_read_back_across_segments_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let (log, recovery) = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!((recovery.last_seq, recovery.n_segments), (0, 1));
    for seq in 1..=500u64 {
        let durability = [
            Durability::Buffered,
            Durability::Fdatasync,
            Durability::Fsync,
        ][seq as usize % 3];
        assert_eq!(
            log.append(seq as u8, &payload(seq), durability).unwrap(),
            seq
        );
    }
    let range = log
        .append_batch(
            &[(1, &payload(501)), (2, &payload(502))],
            Durability::Fdatasync,
        )
        .unwrap();
    assert_eq!(range, 501..503);
    let stats = log.stats();
    assert!(stats.n_segments >= 3, "{} segments", stats.n_segments);
    assert_eq!((stats.last_seq, stats.synced_seq), (502, 502));
    assert_eq!(stats.append.count, 501);

    let records = read_all(&log, 1);
    assert_eq!(records.len(), 502);
    for (at, (seq, _, bytes)) in records.iter().enumerate() {
        assert_eq!(*seq, at as u64 + 1);
        assert_eq!(*bytes, payload(*seq));
    }
    // From the middle, and stopping early.
    assert_eq!(read_all(&log, 250)[0].0, 250);
    let mut seen = 0;
    log.read_from(10, |_| {
        seen += 1;
        Ok(seen < 5)
    })
    .unwrap();
    assert_eq!(seen, 5);
    drop(log);

    let (log, recovery) = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!((recovery.last_seq, recovery.torn_tail_bytes), (502, 0));
    assert_eq!(log.append(9, b"after", Durability::Fdatasync).unwrap(), 503);
    let records = read_all(&log, 500);
    assert_eq!(records.last().unwrap(), &(503, 9, b"after".to_vec()));
}

#[test]
fn released_segments_are_gone_and_reads_before_them_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(dir.path(), small_segments()).unwrap();
    for seq in 1..=400u64 {
        log.append(0, &payload(seq), Durability::Buffered).unwrap();
    }
    let before = log.stats().n_segments;
    let released = log.release_before(300).unwrap();
    assert!(released > 0);
    let stats = log.stats();
    assert_eq!(stats.n_segments, before - released);
    assert!(stats.first_seq <= 300, "record 300 must stay");
    assert_eq!(read_all(&log, 300)[0].0, 300);
    let err = log.read_from(1, |_| Ok(true)).unwrap_err();
    assert!(matches!(err, Error::NotRetained { seq: 1, .. }), "{err}");
    let err = log.read_from(402, |_| Ok(true)).unwrap_err();
    assert!(matches!(err, Error::NotRetained { seq: 402, .. }), "{err}");
    drop(log);
    let (log, recovery) = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!(recovery.last_seq, 400);
    assert_eq!(log.stats().first_seq, stats.first_seq);
}

#[test]
fn concurrent_writers_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(dir.path(), small_segments()).unwrap();
    let log = Arc::new(log);
    const N_THREADS: u64 = 8;
    const PER_THREAD: u64 = 200;
    let mut handles = Vec::new();
    for thread_idx in 0..N_THREADS {
        let log = Arc::clone(&log);
        handles.push(std::thread::spawn(move || {
            let mut seqs = Vec::new();
            for op_idx in 0..PER_THREAD {
                let tag = (thread_idx << 32 | op_idx).to_le_bytes();
                seqs.push(log.append(1, &tag, Durability::Fdatasync).unwrap());
            }
            seqs
        }));
    }
    let mut seqs: Vec<u64> = handles
        .into_iter()
        .flat_map(|handle| handle.join().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=N_THREADS * PER_THREAD).collect::<Vec<_>>());
    let stats = log.stats();
    assert_eq!(stats.synced_seq, N_THREADS * PER_THREAD);
    assert!(
        stats.n_syncs < N_THREADS * PER_THREAD,
        "{} syncs for {} appends: no group commit",
        stats.n_syncs,
        N_THREADS * PER_THREAD
    );
    // Every record carries its writer's tag, each exactly once.
    let mut tags: Vec<u64> = read_all(&log, 1)
        .into_iter()
        .map(|(_, _, bytes)| u64::from_le_bytes(bytes.try_into().unwrap()))
        .collect();
    tags.sort_unstable();
    tags.dedup();
    assert_eq!(tags.len() as u64, N_THREADS * PER_THREAD);
}

#[test]
fn a_second_open_is_refused_and_so_are_oversized_records() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(dir.path(), LogOptions::default()).unwrap();
    let err = Log::open(dir.path(), LogOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    let too_big = vec![0u8; MAX_BODY_BYTES];
    let err = log.append(0, &too_big, Durability::Buffered).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert_eq!(log.next_seq(), 1, "a refused record takes no number");
}

#[test]
fn a_record_larger_than_a_segment_gets_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(dir.path(), small_segments()).unwrap();
    let big = vec![0xabu8; 200 << 10];
    log.append(0, b"small", Durability::Fdatasync).unwrap();
    log.append(1, &big, Durability::Fdatasync).unwrap();
    log.append(2, b"after", Durability::Fdatasync).unwrap();
    drop(log);
    let (log, recovery) = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!(recovery.last_seq, 3);
    let records = read_all(&log, 1);
    assert_eq!(records[1].2, big);
    assert_eq!(records[2].2, b"after");
}

#[test]
fn after_a_failure_writes_are_refused_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(dir.path(), LogOptions::default()).unwrap();
    log.append(0, b"kept", Durability::Fdatasync).unwrap();
    log.inject_failure("fdatasync: EIO");
    let err = log.append(0, b"refused", Durability::Buffered).unwrap_err();
    assert!(
        matches!(&err, Error::Failed { reason } if reason.contains("EIO")),
        "{err}"
    );
    assert!(log.sync().is_err());
    drop(log);
    let (log, recovery) = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(recovery.last_seq, 1);
    assert_eq!(log.append(0, b"again", Durability::Fdatasync).unwrap(), 2);
}

#[test]
fn async_appends_are_written_by_the_flusher_and_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(dir.path(), LogOptions::default()).unwrap();
    let seq = log.append(1, b"queued", Durability::Async).unwrap();
    // Written without any further call on the log.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while read_all(&log, 1).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the flusher never wrote record {seq}"
        );
        std::thread::sleep(vbus_tlog::FLUSH_INTERVAL);
    }
    assert_eq!(read_all(&log, 1), [(1, 1, b"queued".to_vec())]);
    // Queued at drop: written by the drop.
    for seq in 2..=100u64 {
        log.append(2, &payload(seq), Durability::Async).unwrap();
    }
    drop(log);
    let (log, recovery) = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(recovery.last_seq, 100);
    assert_eq!(read_all(&log, 100)[0].2, payload(100));
}

/// 1 B to ~9 KiB, varying with `seq`.
fn big_payload(seq: u64) -> Vec<u8> {
    let len = (seq * 97 % 9000 + 1) as usize;
    (0..len).map(|at| (seq as usize + at) as u8).collect()
}

#[test]
fn records_encoded_in_place_read_back_across_rotations_and_refuse_oversize() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(dir.path(), small_segments()).unwrap();
    // Payloads of 1 to ~9 KiB in 64 KiB segments: many records land where the one before them
    // filled a segment, so the in-place frame is moved to a new segment.
    for seq in 1..=300u64 {
        let durability = [
            Durability::Async,
            Durability::Buffered,
            Durability::Fdatasync,
        ][seq as usize % 3];
        let body = big_payload(seq);
        let logged = log
            .enqueue_with(durability, |buf| {
                buf.extend_from_slice(&body);
                (seq % 7) as u8
            })
            .unwrap();
        assert_eq!(logged, seq);
        log.wait_durable(seq, durability).unwrap();
    }
    // Too large: refused, nothing queued, and the log goes on.
    let err = log
        .enqueue_with(Durability::Buffered, |buf| {
            buf.resize(buf.len() + MAX_BODY_BYTES, 0);
            1
        })
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert_eq!(log.append(3, b"after", Durability::Fdatasync).unwrap(), 301);
    assert!(
        log.stats().n_segments >= 10,
        "{} segments",
        log.stats().n_segments
    );
    drop(log);
    let (log, recovery) = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!(recovery.last_seq, 301);
    let records = read_all(&log, 1);
    assert_eq!(records.len(), 301);
    for (seq, kind, bytes) in &records[..300] {
        assert_eq!((*kind, bytes), ((seq % 7) as u8, &big_payload(*seq)));
    }
    assert_eq!(records[300], (301, 3, b"after".to_vec()));
}
