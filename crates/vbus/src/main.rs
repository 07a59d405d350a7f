//! The `vbus` command.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use vbus::bench::{self, Format, Mode, Reporter};
use vbus::home::{self, Home, Overwrite};
use vbus::scan::{Measure, SystemScan};
use vbus::{Config, daemon};

/// VBUS keeps ML data hot in GPU VRAM (L1), warm in host RAM (L2) and cold as complete files on
/// disk (L3), and moves it between tiers and machines.
#[derive(Debug, Parser)]
#[command(name = "vbus", version, about, max_term_width = 100)]
struct Cli {
    /// The VBUS home [default: $VBUS_HOME, else ./VBUS]
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Report CPU, RAM, disk, GPUs and ML software, and measure what the hierarchy can move
    Scan {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
        /// Skip the throughput measurement (about a second)
        #[arg(long)]
        no_measure: bool,
    },
    /// Create the home: directory layout, a config sized from the scan, launchers
    Init {
        /// Rewrite an existing config and launchers
        #[arg(long)]
        force: bool,
    },
    /// Run the daemon in the foreground (initialising the home first if needed)
    Up {
        /// Listen address, overriding `api.listen` (port 0 picks a free port)
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Inspect the configuration
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run a benchmark suite; every figure is printed beside its same-run reference
    Bench {
        /// The suite to run (`vbus bench list` names them)
        suite: String,
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
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a config file [default: the home's CONFIG/vbus_config.json]
    Check {
        /// The file to check
        file: Option<PathBuf>,
    },
    /// Print the default configuration (every key, documented in docs/CONFIG.md)
    Defaults,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let home = Home::resolve(cli.home.as_deref())?;
    if !matches!(cli.command, Command::Up { .. }) {
        daemon::install_cli_logging()?;
    }
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        Command::Scan { json, no_measure } => {
            let measure = if no_measure {
                Measure::InventoryOnly
            } else {
                Measure::Throughput
            };
            let scan = SystemScan::run(home.root(), measure);
            if json {
                serde_json::to_writer_pretty(&mut stdout, &scan)?;
                writeln!(stdout)?;
            } else {
                write!(stdout, "{}", scan.to_table())?;
            }
        }
        Command::Init { force } => {
            let overwrite = if force {
                Overwrite::Force
            } else {
                Overwrite::Keep
            };
            let report = home::init(&home, overwrite)?;
            write!(stdout, "{}", report.to_text(&home))?;
        }
        Command::Up { listen } => {
            drop(stdout);
            daemon::up(&home, listen.as_deref())?;
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let path = file.unwrap_or_else(|| home.config_path());
            Config::load(&path)?;
            writeln!(stdout, "{}: ok", path.display())?;
        }
        Command::Config {
            command: ConfigCommand::Defaults,
        } => {
            write!(stdout, "{}", Config::default().to_json_pretty())?;
        }
        Command::Bench {
            suite,
            quick,
            json,
            trace,
            capacity,
        } => {
            if suite == "list" {
                for (name, what) in bench::SUITES {
                    writeln!(stdout, "{name:<10} {what}")?;
                }
                return Ok(());
            }
            let mode = if quick { Mode::Quick } else { Mode::Full };
            let format = if json { Format::Json } else { Format::Table };
            let mut reporter = Reporter::new(stdout, format);
            let options = bench::Options {
                trace,
                capacity_bytes: capacity,
            };
            bench::run(&suite, mode, &options, &home, &mut reporter)
                .with_context(|| format!("bench {suite} failed"))?;
        }
    }
    Ok(())
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
