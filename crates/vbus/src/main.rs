//! The `vbus` command.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use vbus::client::Client;
use vbus::daemon;
use vbus_node::Config;
use vbus_node::home::{self, Home, Overwrite};
use vbus_node::scan::{Measure, SystemScan};

/// VBUS keeps ML data hot in GPU VRAM (L1), warm in host RAM (L2) and cold as complete files on
/// disk (L3), and moves it between tiers and machines.
#[derive(Debug, Parser)]
#[command(name = "vbus", version, about, max_term_width = 100)]
struct Cli {
    /// The VBUS home [default: $VBUS_HOME, else ./VBUS]
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    /// The daemon's address for client commands [default: $VBUS_ADDR, else the home's
    /// `api.listen`]
    #[arg(long, global = true, value_name = "HOST:PORT")]
    addr: Option<String>,
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
    /// Offline care of the state bus (the daemon must be stopped)
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Store a value from FILE (or stdin) under KEY (DATASET/PATH, or a name in `default`)
    Put {
        /// DATASET/PATH, or a name in `default`
        key: String,
        /// The bytes [default: stdin; `-` also means stdin]
        file: Option<PathBuf>,
    },
    /// Write the value of KEY to FILE (or stdout)
    Get {
        /// DATASET/PATH, or a name in `default`
        key: String,
        /// Where to write [default: stdout; `-` also means stdout]
        file: Option<PathBuf>,
    },
    /// Remove KEY from every tier
    Rm {
        /// DATASET/PATH, or a name in `default`
        key: String,
    },
    /// List the datasets, or the values of DATASET
    Ls {
        /// The dataset to list
        dataset: Option<String>,
    },
    /// The daemon's tier statistics (a table, or the JSON of /v1/stats)
    Stats {
        /// Print /v1/stats as JSON
        #[arg(long)]
        json: bool,
    },
    /// Pages and edges of the state bus
    Page {
        #[command(subcommand)]
        command: PageCommand,
    },
    /// Checkpoint the state bus now; prints the sequence number
    Checkpoint,
    /// Rebuild the state bus as it was right after sequence number SEQ; prints its pages
    Replay {
        /// The sequence number
        #[arg(long, value_name = "SEQ")]
        to: u64,
    },
    /// Dataset versions between the master, this daemon and its peers
    Sync {
        #[command(subcommand)]
        command: SyncCommand,
    },
    /// Run the cluster's tracker in the foreground (its state in the home's BUS/CONTROL_PLANE)
    Tracker {
        /// Listen address
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7879")]
        listen: String,
        /// The cluster token [default: $VBUS_CLUSTER_TOKEN, else bus_config.cluster_token]
        #[arg(long, value_name = "TOKEN")]
        token: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum SyncCommand {
    /// Fetch DATASET[@VERSION] (default: the newest) into this daemon's L3, from peers and the
    /// master, every piece verified
    Pull {
        /// DATASET or DATASET@VERSION
        spec: String,
    },
    /// Record the master's current content of DATASET as a new version; prints its name
    Push {
        /// The dataset (a directory of the master)
        dataset: String,
    },
    /// This agent: its id, tracker, and the versions it holds
    Status,
}

#[derive(Debug, Subcommand)]
enum PageCommand {
    /// Create a zeroed page; prints its id
    Create {
        /// Size in bytes
        size: u64,
        /// Keep its bytes in GPU memory (the simulated device without a GPU)
        #[arg(long)]
        gpu: bool,
    },
    /// Apply a delta: the bytes of FILE (or stdin) at OFFSET, combined by OP over ELEM
    Update {
        /// The page's id
        id: u64,
        /// The bytes of the run [default: stdin]
        file: Option<PathBuf>,
        /// Byte offset of the run
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// overwrite, add, max, min or or
        #[arg(long, default_value = "overwrite")]
        op: String,
        /// u8, i32, i64, f32 or f64
        #[arg(long, default_value = "u8")]
        elem: String,
    },
    /// Write a page's bytes to FILE (or stdout); its epoch goes to stderr
    Get {
        /// The page's id
        id: u64,
        /// Where to write [default: stdout]
        file: Option<PathBuf>,
        /// The page as it was right after this sequence number (rebuilt by replay)
        #[arg(long, value_name = "SEQ")]
        at: Option<u64>,
    },
    /// Delete a page and its edges
    Rm {
        /// The page's id
        id: u64,
    },
    /// Add (or with --remove, remove) the edge SOURCE → TARGET
    Edge {
        /// The source page
        source: u64,
        /// The target page, recomputed from its sources by the rule
        target: u64,
        /// OP:ELEM (add:i64, max:f32, ...) or function:NAME
        #[arg(long, default_value = "add:i64")]
        rule: String,
        /// Remove the edge instead
        #[arg(long)]
        remove: bool,
    },
    /// List pages (id, size, location, epoch)
    Ls,
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// Cut a damaged transaction log back to its last good record (every cut byte is kept in
    /// DATA/TLOG/damaged); asks before it cuts
    Repair {
        /// Only say what would be cut
        #[arg(long)]
        dry_run: bool,
        /// Cut without asking
        #[arg(long)]
        yes: bool,
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
        Command::Tracker { listen, token } => {
            drop(stdout);
            vbus::run_tracker(&home, &listen, token)?;
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let path = file.unwrap_or_else(|| home.config_path());
            Config::load(&path)?;
            writeln!(stdout, "{}: ok", path.display())?;
        }
        Command::State {
            command: StateCommand::Repair { dry_run, yes },
        } => {
            vbus_node::repair::run(&home, dry_run, yes, &mut stdout)?;
        }
        Command::Config {
            command: ConfigCommand::Defaults,
        } => {
            write!(stdout, "{}", Config::default().to_json_pretty())?;
        }
        command => {
            let home_given = cli.home.is_some()
                || std::env::var_os("VBUS_HOME").is_some_and(|home| !home.is_empty());
            let client = Client::new(&home, home_given, cli.addr.as_deref())?;
            run_client(&client, command, &mut stdout)?;
        }
    }
    Ok(())
}

/// Opens FILE, or stdin for `None` and `-`; returns it and its length when known.
fn input(file: Option<&std::path::Path>) -> anyhow::Result<(Box<dyn std::io::Read>, Option<u64>)> {
    match file.filter(|path| path.as_os_str() != "-") {
        Some(path) => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let len = file.metadata().ok().map(|meta| meta.len());
            Ok((Box::new(file), len))
        }
        None => Ok((Box::new(std::io::stdin().lock()), None)),
    }
}

fn run_client(
    client: &Client,
    command: Command,
    stdout: &mut std::io::StdoutLock<'_>,
) -> anyhow::Result<()> {
    match command {
        Command::Put { key, file } => {
            let (mut reader, len) = input(file.as_deref())?;
            let answer = client.put(&key, &mut reader, len)?;
            let name = format!(
                "{}/{}",
                answer["dataset"].as_str().unwrap_or("?"),
                answer["path"].as_str().unwrap_or("?")
            );
            if answer["durable"] == false {
                writeln!(
                    stdout,
                    "accepted {name} version {} in RAM (write_back: not yet durable; it reaches \
                     L3 when L2 evicts it or the daemon stops, and is lost if the daemon is killed \
                     first)",
                    answer["version"]
                )?;
            } else {
                writeln!(stdout, "stored {name} version {}", answer["version"])?;
            }
        }
        Command::Get { key, file } => match file.filter(|path| path.as_os_str() != "-") {
            Some(path) => {
                // Written whole: a failed transfer leaves no torn file.
                let options = vbus_store::atomic::WholeWrite {
                    temp: vbus_store::atomic::TempName::Hidden,
                    ..Default::default()
                };
                let mut failure = None;
                let written = vbus_store::atomic::replace_with(&path, options, |out| {
                    client.get(&key, out).map_err(|err| {
                        let text = format!("{err:#}");
                        failure = Some(err);
                        std::io::Error::other(text)
                    })
                });
                if let Some(err) = failure {
                    return Err(err);
                }
                written?;
            }
            None => {
                client.get(&key, stdout)?;
            }
        },
        Command::Rm { key } => {
            client.rm(&key)?;
            writeln!(stdout, "removed {key}")?;
        }
        Command::Ls { dataset: None } => {
            let answer = client.get_json("/v1/objects")?;
            for dataset in answer["datasets"].as_array().into_iter().flatten() {
                writeln!(stdout, "{}", dataset.as_str().unwrap_or("?"))?;
            }
        }
        Command::Ls {
            dataset: Some(dataset),
        } => {
            let answer = client.get_json(&vbus::client::objects_path(&dataset))?;
            let objects = answer["objects"].as_array().cloned().unwrap_or_default();
            anyhow::ensure!(
                !objects.is_empty(),
                "the dataset {dataset:?} holds no objects (`vbus ls` lists the datasets)"
            );
            for object in &objects {
                writeln!(
                    stdout,
                    "{:>14} v{:<8} {}{}{}",
                    object["size_bytes"],
                    object["version"],
                    object["path"].as_str().unwrap_or("?"),
                    if object["pinned"] == true {
                        "  (pinned)"
                    } else {
                        ""
                    },
                    if object["dirty"] == true {
                        "  (not yet in L3)"
                    } else {
                        ""
                    },
                )?;
            }
        }
        Command::Stats { json } => {
            let stats = client.get_json("/v1/stats")?;
            if json {
                serde_json::to_writer_pretty(&mut *stdout, &stats)?;
                writeln!(stdout)?;
            } else {
                write!(stdout, "{}", stats_table(&stats))?;
            }
        }
        Command::Page { command } => run_page(client, command, stdout)?,
        Command::Checkpoint => {
            let answer = client.post_json("/v1/checkpoint", None)?;
            writeln!(stdout, "checkpoint at {}", answer["seq"])?;
        }
        Command::Replay { to } => {
            let answer = client.get_json(&format!("/v1/replay?to={to}"))?;
            writeln!(
                stdout,
                "state at {}: hash {}",
                answer["seq"],
                answer["state_hash"].as_str().unwrap_or("?")
            )?;
            print_pages(stdout, &answer)?;
        }
        Command::Sync { command } => run_sync(client, command, stdout)?,
        other => anyhow::bail!("not a client command: {other:?}"),
    }
    Ok(())
}

fn run_sync(
    client: &Client,
    command: SyncCommand,
    stdout: &mut std::io::StdoutLock<'_>,
) -> anyhow::Result<()> {
    match command {
        SyncCommand::Pull { spec } => {
            let (dataset, version) = vbus_sync::split_version(&spec);
            let r = client.sync_pull(dataset, version)?;
            writeln!(
                stdout,
                "{}@{}: {} files, {} bytes ({} fetched, {} already held) in {:.2} s; \
                 {} bytes from peers, {} from the master; {} pieces rejected",
                r["dataset"].as_str().unwrap_or("?"),
                r["version"].as_str().unwrap_or("?"),
                r["files"],
                r["bytes"],
                r["files_fetched"],
                r["files_skipped"],
                r["seconds"].as_f64().unwrap_or(0.0),
                r["bytes_from_peers"],
                r["bytes_from_origin"],
                r["pieces_rejected"],
            )?;
        }
        SyncCommand::Push { dataset } => {
            let body = serde_json::json!({ "dataset": dataset });
            let r = client.post_json("/v1/sync/push", Some(&body))?;
            writeln!(
                stdout,
                "{}@{}: {} files, {} bytes",
                r["dataset"].as_str().unwrap_or("?"),
                r["version"].as_str().unwrap_or("?"),
                r["files"],
                r["bytes"]
            )?;
        }
        SyncCommand::Status => {
            let r = client.get_json("/v1/sync/status")?;
            serde_json::to_writer_pretty(&mut *stdout, &r)?;
            writeln!(stdout)?;
        }
    }
    Ok(())
}

fn run_page(
    client: &Client,
    command: PageCommand,
    stdout: &mut std::io::StdoutLock<'_>,
) -> anyhow::Result<()> {
    match command {
        PageCommand::Create { size, gpu } => {
            let body =
                serde_json::json!({ "size": size, "location": if gpu { "gpu" } else { "cpu" } });
            let answer = client.post_json("/v1/pages", Some(&body))?;
            writeln!(stdout, "{}", answer["id"])?;
        }
        PageCommand::Update {
            id,
            file,
            offset,
            op,
            elem,
        } => {
            let op = vbus::api::parse_op(&op).with_context(|| {
                format!("--op {op:?} is not one of overwrite, add, max, min, or")
            })?;
            let elem = vbus::api::parse_elem(&elem)
                .with_context(|| format!("--elem {elem:?} is not one of u8, i32, i64, f32, f64"))?;
            let (mut reader, _) = input(file.as_deref())?;
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut reader, &mut bytes)?;
            let delta = vbus_state::Delta::with_op(op, elem, vec![(offset, bytes)]);
            let mut encoded = Vec::new();
            vbus_state::delta::encode(&delta, &mut encoded);
            let answer = client.patch_delta(id, &encoded)?;
            writeln!(stdout, "seq {} epoch {}", answer["seq"], answer["epoch"])?;
        }
        PageCommand::Get { id, file, at } => {
            let (bytes, epoch) = client.page_bytes(id, at)?;
            match file.filter(|path| path.as_os_str() != "-") {
                Some(path) => std::fs::write(&path, &bytes)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => stdout.write_all(&bytes)?,
            }
            eprintln!("page {id}: {} bytes, epoch {epoch}", bytes.len());
        }
        PageCommand::Rm { id } => {
            let answer = client.delete_json(&format!("/v1/pages/{id}"))?;
            writeln!(stdout, "seq {}", answer["seq"])?;
        }
        PageCommand::Edge {
            source,
            target,
            rule,
            remove,
        } => {
            let answer = if remove {
                client.delete_json(&format!("/v1/edges/{source}/{target}"))?
            } else {
                let body = serde_json::json!({ "source": source, "target": target, "rule": rule });
                client.post_json("/v1/edges", Some(&body))?
            };
            writeln!(stdout, "seq {}", answer["seq"])?;
        }
        PageCommand::Ls => {
            let answer = client.get_json("/v1/pages")?;
            print_pages(stdout, &answer)?;
        }
    }
    Ok(())
}

/// The `pages` of an answer, one line each.
fn print_pages(out: &mut impl std::io::Write, answer: &serde_json::Value) -> std::io::Result<()> {
    for page in answer["pages"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "page {:>6}  {:>10} bytes  {}  epoch {}",
            page["id"],
            page["size"],
            page["location"].as_str().unwrap_or("?"),
            page["epoch"]
        )?;
    }
    Ok(())
}

/// `vbus stats` as a table.
fn stats_table(stats: &serde_json::Value) -> String {
    let mut out = format!(
        "{:<8} {:>10} {:>10} {:>8} {:>16} {:>16} {:>9}\n",
        "tier", "hits", "misses", "hit %", "used bytes", "capacity", "entries"
    );
    for tier in ["L1_VRAM", "L2_RAM", "L3_DISK"] {
        let t = &stats["tiers"][tier];
        out.push_str(&format!(
            "{:<8} {:>10} {:>10} {:>8.1} {:>16} {:>16} {:>9}\n",
            tier,
            t["hits"].as_u64().unwrap_or(0),
            t["misses"].as_u64().unwrap_or(0),
            t["hit_rate_percent"].as_f64().unwrap_or(0.0),
            t["used_bytes"].as_u64().unwrap_or(0),
            t["capacity_bytes"].as_u64().unwrap_or(0),
            t["n_entries"].as_u64().unwrap_or(0),
        ));
    }
    out.push_str(&format!(
        "l1_hit_rate {:.1}%  l2_hit_rate {:.1}%  l3_hit_rate {:.1}%  write mode {}  state bus at seq {}\n",
        stats["l1_hit_rate"].as_f64().unwrap_or(0.0),
        stats["l2_hit_rate"].as_f64().unwrap_or(0.0),
        stats["l3_hit_rate"].as_f64().unwrap_or(0.0),
        stats["write_mode"].as_str().unwrap_or("?"),
        stats["state"]["last_seq"],
    ));
    out
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
