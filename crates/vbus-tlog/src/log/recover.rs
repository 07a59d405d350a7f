//! Opening a log directory: its lock, and the recovery of its last segment's tail (a torn tail
//! is cut and kept aside in `damaged/`; any other damage is refused by segment and offset).

use super::*;

/// Checks the newest segment and repairs what a crash mid-append leaves: a torn tail is zeroed,
/// and a newest segment without records whose predecessor stops short of it (the rotation made
/// it, the records meant for the end of the old one were never written, and none of them was
/// acknowledged) is removed. Damage followed by good records is corruption. Returns where the
/// newest segment's records end and its size.
pub(super) fn recover_tail(
    dir: &Path,
    segments: &mut Vec<SegmentInfo>,
    recovery: &mut Recovery,
) -> Result<(segment::ScanEnd, u64)> {
    loop {
        let last = segments.last().expect("called with a segment").clone();
        let bytes = segment::read(&last)?;
        let mut end = segment::scan(&last, &bytes, |_| Ok(true))?;
        if let Some((offset, damage)) = end.damage.take() {
            let dirty_end = bytes.iter().rposition(|&b| b != 0).map_or(0, |at| at + 1);
            let kept_aside = keep_aside(dir, &last, offset, &bytes[offset as usize..dirty_end]);
            if segment::any_record_after(&bytes, offset as usize) {
                tracing::error!(segment = %last.path.display(), offset, kept_aside = %kept_aside, "the transaction log is damaged: {damage}, and good records follow it");
                return Err(Error::Corrupt {
                    segment: last.path.clone(),
                    offset,
                    reason: format!(
                        "{damage}, and good records follow it (its bytes are kept in \
                         {kept_aside}; `vbus state repair` truncates the log there)"
                    ),
                });
            }
            // A crash mid-append leaves the record's first sectors written and zeros (the
            // preallocated file) after them; any other bad record was damaged after it was
            // written, and may have been acknowledged: never zeroed silently.
            if !segment::is_torn_write(&bytes, offset as usize, &damage) {
                tracing::error!(segment = %last.path.display(), offset, kept_aside = %kept_aside, "the transaction log's last record is damaged, not torn: {damage}");
                return Err(Error::Corrupt {
                    segment: last.path.clone(),
                    offset,
                    reason: format!(
                        "{damage} in the last record, which does not end in zeros as a torn write \
                         does (its bytes are kept in {kept_aside}; `vbus state repair` truncates \
                         the log there)"
                    ),
                });
            }
            recovery.n_torn_records += 1;
            let zeros = vec![0u8; dirty_end.saturating_sub(offset as usize)];
            let file = OpenOptions::new()
                .write(true)
                .open(&last.path)
                .map_err(Error::io("open", &last.path))?;
            file.write_all_at(&zeros, offset)
                .and_then(|()| file.sync_data())
                .map_err(Error::io("truncate the torn tail of", &last.path))?;
            recovery.torn_tail_bytes += zeros.len() as u64;
            tracing::warn!(
                segment = %last.path.display(),
                offset,
                bytes = zeros.len(),
                kept_aside = %kept_aside,
                "zeroed a torn tail: {damage}"
            );
        }
        let empty = end.next_seq == last.first_seq;
        if empty && segments.len() > 1 {
            let previous = &segments[segments.len() - 2];
            let previous_bytes = segment::read(previous)?;
            let previous_end = segment::scan(previous, &previous_bytes, |_| Ok(true))?;
            if previous_end.next_seq < last.first_seq {
                std::fs::remove_file(&last.path).map_err(Error::io("remove", &last.path))?;
                segment::sync_dir(dir)?;
                tracing::warn!(
                    segment = %last.path.display(),
                    "removed a segment begun by a rotation the crash interrupted"
                );
                segments.pop();
                continue;
            }
        }
        return Ok((end, bytes.len() as u64));
    }
}

/// Folder of the log where bytes cut from it (torn tails, damaged records) are kept.
pub(crate) const DAMAGED_DIR: &str = "damaged";

/// Copies bytes about to be cut from a segment (or refused in it) to
/// `DIR/damaged/{segment}.{offset}`, for inspection; returns that path (or why it could not).
pub(super) fn keep_aside(dir: &Path, segment: &SegmentInfo, offset: u64, bytes: &[u8]) -> String {
    let name = segment
        .path
        .file_name()
        .map_or_else(|| "segment".into(), |name| name.to_string_lossy());
    let path = dir.join(DAMAGED_DIR).join(format!("{name}.{offset}"));
    let written = std::fs::create_dir_all(dir.join(DAMAGED_DIR))
        .and_then(|()| std::fs::write(&path, bytes))
        .and_then(|()| File::open(&path)?.sync_all());
    match written {
        Ok(()) => path.display().to_string(),
        Err(err) => format!("nowhere: cannot write {}: {err}", path.display()),
    }
}

/// Takes the exclusive lock of the log in `dir` (`DIR/LOCK`), held as long as the file is. A busy
/// lock is retried for a moment: a `fork` in another thread of this process briefly holds a copy
/// of a just-released lock until its `exec`.
pub(crate) fn lock_dir(dir: &Path) -> Result<File> {
    let lock_path = dir.join("LOCK");
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(Error::io("open", &lock_path))?;
    let deadline = Instant::now() + LOCK_WAIT;
    while rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        if Instant::now() >= deadline {
            return Err(Error::Locked {
                path: dir.to_owned(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(lock)
}
