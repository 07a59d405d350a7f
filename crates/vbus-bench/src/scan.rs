//! `vbus-bench scan`: the scan's disk figures at the home against `dd` on the same file.

use std::io::Write;

use anyhow::Context as _;

use super::{Better, Device, Measurement, Mode, Reporter, Scratch, median, time_dd};
use vbus_node::home::Home;
use vbus_node::scan::{self, IO_BLOCK_BYTES, PageCache};

const SUITE: &str = "scan";

pub(super) fn run<W: Write>(
    mode: Mode,
    home: &Home,
    reporter: &mut Reporter<W>,
) -> anyhow::Result<()> {
    let (size_bytes, n_rounds) = match mode {
        Mode::Full => (1u64 << 30, 3),
        Mode::Quick => (128u64 << 20, 2),
    };
    let dir = scan::nearest_existing_dir(home.root());
    let ours_path = Scratch(dir.join(format!(".vbus-bench-ours-{}.tmp", std::process::id())));
    let dd_path = Scratch(dir.join(format!(".vbus-bench-dd-{}.tmp", std::process::id())));
    let block_mib = IO_BLOCK_BYTES >> 20;
    let dd_block = format!("bs={block_mib}M");
    reporter.note(&format!(
        "bench scan: {} file at {}, {n_rounds} rounds, medians; reference: coreutils dd {dd_block}",
        scan::human_bytes(size_bytes),
        dir.display()
    ))?;

    let mut write_ours = Vec::new();
    let mut write_dd = Vec::new();
    for _ in 0..n_rounds {
        ours_path.remove();
        write_ours.push(
            scan::write_file_gbps(&ours_path.0, size_bytes, None)
                .context("write test failed")?
                .1,
        );
        dd_path.remove();
        let count = format!("count={}", size_bytes / IO_BLOCK_BYTES as u64);
        let of = format!("of={}", dd_path.0.display());
        write_dd.push(time_dd(
            &["if=/dev/zero", &of, &dd_block, &count, "conv=fsync"],
            size_bytes,
        )?);
    }
    dd_path.remove();
    reporter.report(Measurement::new(
        SUITE,
        "disk_write_fsync",
        "GB/s",
        Better::Higher,
        median(&mut write_ours),
        &format!("dd {dd_block} conv=fsync"),
        median(&mut write_dd),
        None,
        Device::Cpu,
    ))?;

    for (page_cache, metric, label) in [
        (PageCache::Dropped, "disk_read_cold", "page cache dropped"),
        (PageCache::Kept, "disk_read_warm", "page cache warm"),
    ] {
        let mut ours = Vec::new();
        let mut reference = Vec::new();
        let input = format!("if={}", ours_path.0.display());
        if page_cache == PageCache::Kept {
            scan::read_file_gbps(&ours_path.0, PageCache::Kept)?;
        }
        for _ in 0..n_rounds {
            let (rate, dropped) = scan::read_file_gbps(&ours_path.0, page_cache)?;
            if page_cache == PageCache::Dropped && !dropped {
                anyhow::bail!(
                    "the OS refused to drop {} from the page cache",
                    ours_path.0.display()
                );
            }
            ours.push(rate);
            if page_cache == PageCache::Dropped {
                let file = std::fs::File::open(&ours_path.0)?;
                scan::drop_from_page_cache(&file);
            }
            reference.push(time_dd(&[&input, "of=/dev/null", &dd_block], size_bytes)?);
        }
        reporter.report(Measurement::new(
            SUITE,
            metric,
            "GB/s",
            Better::Higher,
            median(&mut ours),
            &format!("dd {dd_block}, {label}"),
            median(&mut reference),
            None,
            Device::Cpu,
        ))?;
    }
    Ok(())
}
