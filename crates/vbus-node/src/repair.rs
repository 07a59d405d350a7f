//! `vbus state repair`: cuts a damaged transaction log back to its last good record, after
//! showing what goes and asking.
//!
//! The daemon refuses to open a log with damage that is not a torn tail (the records from the
//! damage on may have been acknowledged), and serves objects on while pages answer 503. This
//! command is the way out: with `--dry-run` it only says what it would cut; otherwise it asks
//! (or takes `--yes`), keeps every cut byte in `DATA/TLOG/damaged/`, and cuts. When a checkpoint
//! is newer than the last good record, it holds every change up to its own sequence number: the
//! log then starts again right after that checkpoint, so nothing it holds is lost.

use std::io::{BufRead as _, IsTerminal as _, Write};

use anyhow::Context as _;

use crate::Home;

/// Runs the command for `home`.
pub fn run(home: &Home, dry_run: bool, yes: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    anyhow::ensure!(
        home.root().is_dir(),
        "the home {} does not exist",
        home.root().display()
    );
    anyhow::ensure!(
        home.running_daemon_addr()?.is_none(),
        "a vbus daemon is running on the home {}; stop it (SIGTERM) first",
        home.root().display()
    );
    let config = home.load_config()?;
    let data = home.root().join("DATA");
    let log_dir = data.join("TLOG");
    let checkpoint_dir = data.join("CHECKPOINTS");
    let locked = |err: vbus_tlog::Error| match err {
        vbus_tlog::Error::Locked { .. } => anyhow::anyhow!(
            "the transaction log at {} is open in a running daemon; stop it (SIGTERM) first",
            log_dir.display()
        ),
        err => anyhow::Error::new(err),
    };
    let Some(plan) = vbus_tlog::repair_plan(&log_dir).map_err(locked)? else {
        writeln!(
            out,
            "the transaction log at {} has no damage",
            log_dir.display()
        )?;
        return Ok(());
    };
    let newest_checkpoint = vbus_state::checkpoint_seqs(&checkpoint_dir)
        .with_context(|| format!("cannot list {}", checkpoint_dir.display()))?
        .last()
        .copied()
        .filter(|&seq| seq > plan.last_good_seq);
    writeln!(
        out,
        "damage in {} at byte {}: {}",
        plan.segment.display(),
        plan.offset,
        plan.reason
    )?;
    writeln!(
        out,
        "a repair cuts {} bytes (kept in {}): the log ends at record {}{}",
        plan.cut_bytes,
        log_dir.join("damaged").display(),
        plan.last_good_seq,
        if plan.later_segments.is_empty() {
            String::new()
        } else {
            format!(
                ", and {} later segment(s) are moved aside",
                plan.later_segments.len()
            )
        }
    )?;
    if let Some(seq) = newest_checkpoint {
        writeln!(
            out,
            "checkpoint {seq} holds every change up to record {seq}: the log starts again after \
             it, and only changes after record {seq} are lost"
        )?;
    } else {
        writeln!(out, "changes after record {} are lost", plan.last_good_seq)?;
    }
    if dry_run {
        writeln!(out, "dry run: nothing was changed")?;
        return Ok(());
    }
    if !yes {
        anyhow::ensure!(
            std::io::stdin().is_terminal(),
            "not cut: pass --yes to confirm (or --dry-run to only look)"
        );
        write!(out, "cut the log? [y/N] ")?;
        out.flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            writeln!(out, "not cut")?;
            return Ok(());
        }
    }
    vbus_tlog::repair(&log_dir).map_err(locked)?;
    if let Some(seq) = newest_checkpoint {
        vbus_tlog::restart_after(&log_dir, seq, config.state.segment_size_mb << 20)
            .map_err(locked)?;
    }
    writeln!(
        out,
        "repaired: the state bus opens at the next start (`vbus --home {} up`)",
        home.root().display()
    )?;
    Ok(())
}
