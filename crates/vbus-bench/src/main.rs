//! The `vbus-bench` command: `vbus-bench SUITE [--quick] [--json]`.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use vbus_bench::{Format, Mode, Reporter};
use vbus_node::home::Home;

/// Runs a VBUS benchmark suite; every figure is printed beside its same-run reference and the
/// ratio (above 1 is better).
#[derive(Debug, Parser)]
#[command(name = "vbus-bench", version, about, max_term_width = 100)]
struct Cli {
    /// The suite to run (`list` names them)
    suite: String,
    /// Where scratch files go: the home's L3 disk [default: $VBUS_HOME, else ./VBUS]
    #[arg(long, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Small sizes, a few seconds (CI smoke test)
    #[arg(long)]
    quick: bool,
    /// One JSON object per line instead of a table
    #[arg(long)]
    json: bool,
    /// `cache` only: replay this access trace (one access per line: KEY or KEY SIZE_BYTES)
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// `cache --trace` only: the tier's capacity in bytes [default: a tenth of the trace's
    /// distinct bytes]
    #[arg(long, value_name = "BYTES")]
    capacity: Option<u64>,
}

fn main() -> ExitCode {
    // The `api` suite starts the daemon as this executable: `vbus-bench __daemon HOME LISTEN`.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let result = if args.get(1).is_some_and(|arg| arg == vbus_bench::DAEMON_ARG) {
        run_daemon(&args[2..])
    } else {
        run(Cli::parse())
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_daemon(args: &[std::ffi::OsString]) -> anyhow::Result<()> {
    let [home, listen] = args else {
        anyhow::bail!("usage: vbus-bench {} HOME LISTEN", vbus_bench::DAEMON_ARG);
    };
    let home = Home::resolve(Some(std::path::Path::new(home)))?;
    let listen = listen.to_str().context("LISTEN is not UTF-8")?;
    vbus::daemon::up(&home, Some(listen))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    if cli.suite == "list" {
        use std::io::Write as _;
        for (name, what) in vbus_bench::SUITES {
            writeln!(stdout, "{name:<10} {what}")?;
        }
        return Ok(());
    }
    let home = Home::resolve(cli.home.as_deref())?;
    let mode = if cli.quick { Mode::Quick } else { Mode::Full };
    let format = if cli.json {
        Format::Json
    } else {
        Format::Table
    };
    let mut reporter = Reporter::new(stdout, format);
    let options = vbus_bench::Options {
        trace: cli.trace,
        capacity_bytes: cli.capacity,
    };
    vbus_bench::run(&cli.suite, mode, &options, &home, &mut reporter)
        .with_context(|| format!("bench {} failed", cli.suite))
}
