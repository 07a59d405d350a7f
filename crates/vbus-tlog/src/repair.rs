//! `repair`: cuts a damaged log back to its last good record, after the user saw what goes.
//!
//! The open refuses a log with damage that is not a torn tail (see `log`), because the records
//! at and after the damage may have been acknowledged: only a person may decide to drop them.
//! [`plan`] finds the first bad record; [`repair`] keeps every byte it cuts in `DIR/damaged/`,
//! zeroes the damaged segment from the bad record on and moves the later segments there too.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use crate::log::{DAMAGED_DIR, lock_dir};
use crate::segment;
use crate::{Error, Result};

/// What a repair cuts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairPlan {
    /// The segment holding the first bad record.
    pub segment: PathBuf,
    /// Where in it the bad record starts.
    pub offset: u64,
    /// Why it is bad.
    pub reason: String,
    /// The last good record (the log ends there after the repair; 0 when none is left).
    pub last_good_seq: u64,
    /// Later segments, moved aside whole.
    pub later_segments: Vec<PathBuf>,
    /// Bytes cut: the damaged segment's from `offset` to its last non-zero byte, and the later
    /// segments'.
    pub cut_bytes: u64,
}

/// Finds the first bad record of the log in `dir`; `None` when every record is good (a torn
/// tail, which the open repairs by itself, counts as good here). Takes the log's lock, so it
/// fails while a daemon has the log open.
pub fn plan(dir: &Path) -> Result<Option<RepairPlan>> {
    let _lock = lock_dir(dir)?;
    find(dir)
}

/// Carries out [`plan`]'s cut; returns it (`None`: nothing to repair).
pub fn repair(dir: &Path) -> Result<Option<RepairPlan>> {
    let _lock = lock_dir(dir)?;
    let Some(plan) = find(dir)? else {
        return Ok(None);
    };
    let aside = dir.join(DAMAGED_DIR);
    std::fs::create_dir_all(&aside).map_err(Error::io("create", &aside))?;
    let bytes = std::fs::read(&plan.segment).map_err(Error::io("read", &plan.segment))?;
    let offset = plan.offset as usize;
    let dirty_end = bytes.iter().rposition(|&b| b != 0).map_or(0, |at| at + 1);
    if dirty_end > offset {
        let name = file_name(&plan.segment);
        let kept = aside.join(format!("{name}.{offset}.repair"));
        std::fs::write(&kept, &bytes[offset..dirty_end]).map_err(Error::io("write", &kept))?;
        File::open(&kept)
            .and_then(|file| file.sync_all())
            .map_err(Error::io("fsync", &kept))?;
        let file = OpenOptions::new()
            .write(true)
            .open(&plan.segment)
            .map_err(Error::io("open", &plan.segment))?;
        file.write_all_at(&vec![0u8; dirty_end - offset], plan.offset)
            .and_then(|()| file.sync_data())
            .map_err(Error::io("cut", &plan.segment))?;
    }
    for later in &plan.later_segments {
        let to = aside.join(file_name(later));
        std::fs::rename(later, &to).map_err(Error::io("move aside", later))?;
    }
    segment::sync_dir(dir)?;
    tracing::warn!(
        segment = %plan.segment.display(),
        offset = plan.offset,
        last_good_seq = plan.last_good_seq,
        cut_bytes = plan.cut_bytes,
        "the transaction log was cut back to its last good record; the cut bytes are in {}",
        aside.display()
    );
    Ok(Some(plan))
}

/// Moves every segment of the log in `dir` aside and starts it again empty, its next record
/// `seq + 1`: for a log cut back behind a checkpoint at `seq`, which holds every record the log
/// held up to it.
pub fn restart_after(dir: &Path, seq: u64, segment_bytes: u64) -> Result<()> {
    let _lock = lock_dir(dir)?;
    let aside = dir.join(DAMAGED_DIR);
    std::fs::create_dir_all(&aside).map_err(Error::io("create", &aside))?;
    for old in segment::list(dir)? {
        let to = aside.join(file_name(&old.path));
        std::fs::rename(&old.path, &to).map_err(Error::io("move aside", &old.path))?;
    }
    segment::create(
        dir,
        seq + 1,
        segment_bytes.max(segment::HEADER_BYTES + 4096),
    )?;
    segment::sync_dir(dir)
}

fn find(dir: &Path) -> Result<Option<RepairPlan>> {
    let segments = segment::list(dir)?;
    for (idx, info) in segments.iter().enumerate() {
        let bytes = segment::read(info)?;
        // The scan visits only good records in sequence: the last it saw is the last good one.
        let mut last_good_seq = info.first_seq.saturating_sub(1);
        let scanned = segment::scan(info, &bytes, |record| {
            last_good_seq = record.seq;
            Ok(true)
        });
        let (offset, reason) = match scanned {
            Ok(end) => match end.damage {
                None => continue,
                // A torn tail of the newest segment is the open's to repair.
                Some((offset, damage))
                    if idx + 1 == segments.len()
                        && !segment::any_record_after(&bytes, offset as usize)
                        && segment::is_torn_write(&bytes, offset as usize, &damage) =>
                {
                    return Ok(None);
                }
                Some((offset, damage)) => (offset, damage.to_string()),
            },
            Err(Error::Corrupt { offset, reason, .. }) => (offset, reason),
            Err(err) => return Err(err),
        };
        let later_segments: Vec<PathBuf> = segments[idx + 1..]
            .iter()
            .map(|later| later.path.clone())
            .collect();
        let dirty_end = bytes.iter().rposition(|&b| b != 0).map_or(0, |at| at + 1);
        let mut cut_bytes = dirty_end.saturating_sub(offset as usize) as u64;
        for later in &later_segments {
            cut_bytes += std::fs::metadata(later).map_or(0, |meta| meta.len());
        }
        return Ok(Some(RepairPlan {
            segment: info.path.clone(),
            offset,
            reason,
            last_good_seq,
            later_segments,
            cut_bytes,
        }));
    }
    Ok(None)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || "segment".to_owned(),
        |name| name.to_string_lossy().into_owned(),
    )
}
