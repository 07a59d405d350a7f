//! Reads from any retained record, release of old segments, and the log's figures.

use super::*;

impl LogCore {
    /// Calls `visit` with every record from `from_seq` to the last one written when the call
    /// began, in order; `visit` returns `false` to stop early. Damage anywhere is an error
    /// naming the segment and offset.
    pub(super) fn read_from(
        &self,
        from_seq: u64,
        mut visit: impl FnMut(RecordRef<'_>) -> Result<bool>,
    ) -> Result<u64> {
        let (segments, last) = {
            let state = self.state.lock();
            (state.segments.clone(), state.written_seq)
        };
        let first = segments.first().map_or(1, |s| s.first_seq);
        if from_seq < first || from_seq > last + 1 {
            return Err(Error::NotRetained {
                seq: from_seq,
                first,
                last,
            });
        }
        let start_idx = segments
            .iter()
            .rposition(|segment| segment.first_seq <= from_seq)
            .unwrap_or(0);
        let mut n_visited = 0u64;
        let mut bytes = Vec::new();
        for (idx, segment) in segments.iter().enumerate().skip(start_idx) {
            if segment.first_seq > last {
                break;
            }
            segment::read_into(segment, &mut bytes)?;
            let mut stop = false;
            let end = segment::scan(segment, &bytes, |record| {
                if record.seq > last {
                    stop = true;
                    return Ok(false);
                }
                if record.seq >= from_seq {
                    n_visited += 1;
                    if !visit(record)? {
                        stop = true;
                        return Ok(false);
                    }
                }
                Ok(true)
            })?;
            if stop {
                break;
            }
            if let Some((offset, damage)) = end.damage {
                return Err(Error::Corrupt {
                    segment: segment.path.clone(),
                    offset,
                    reason: damage.to_string(),
                });
            }
            // A segment must end where the next begins.
            let expected_next = segments
                .get(idx + 1)
                .map_or(last + 1, |next| next.first_seq);
            if end.next_seq < expected_next.min(last + 1) {
                return Err(Error::Corrupt {
                    segment: segment.path.clone(),
                    offset: end.end_offset,
                    reason: format!(
                        "records end at {} but the log continues at {expected_next}",
                        end.next_seq
                    ),
                });
            }
        }
        Ok(n_visited)
    }

    /// Deletes the segments whose records all precede `seq` (never the active one). Returns how
    /// many were deleted.
    pub(super) fn release_before(&self, seq: u64) -> Result<usize> {
        let doomed: Vec<SegmentInfo> = {
            let mut state = self.state.lock();
            let n_doomed = state
                .segments
                .windows(2)
                .take_while(|pair| pair[1].first_seq <= seq)
                .count();
            state.segments.drain(..n_doomed).collect()
        };
        for segment in &doomed {
            std::fs::remove_file(&segment.path).map_err(Error::io("remove", &segment.path))?;
        }
        if !doomed.is_empty() {
            segment::sync_dir(&self.dir)?;
        }
        Ok(doomed.len())
    }

    /// The figures so far.
    pub(super) fn stats(&self) -> LogStats {
        let state = self.state.lock();
        LogStats {
            first_seq: state.segments.first().map_or(1, |s| s.first_seq),
            last_seq: state.next_seq - 1,
            synced_seq: state.synced_seq,
            appended_bytes: state.appended_bytes,
            n_group_writes: state.n_group_writes,
            n_syncs: state.n_syncs,
            n_segments: state.segments.len(),
            append: self.append_latency.summary(),
            sync: self.sync_latency.summary(),
        }
    }

    /// The next sequence number an append will get.
    pub(super) fn next_seq(&self) -> u64 {
        self.state.lock().next_seq
    }

    /// Puts the log in the state a failed write or sync leaves it in (for tests of callers'
    /// error paths; a real failure cannot be provoked on demand).
    #[doc(hidden)]
    pub(super) fn inject_failure(&self, reason: &str) {
        self.state.lock().failed = Some(reason.to_owned());
    }
}
