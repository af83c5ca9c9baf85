//! `isnad`: the sovereign AI gateway and its operator and auditor tools.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use isnad_api::{admin_cli, config::Config, journal_cli};

/// mimalloc instead of the system allocator: the request path allocates and frees many small
/// buffers across threads, where glibc's allocator spent about a fifth of the gateway's CPU
/// (benches/RESULTS.md). Built without transparent huge pages (feature `no_thp`): with them, a
/// page fault could stall for milliseconds compacting memory, which tripled the p99.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "isnad",
    version,
    about = "Sovereign AI gateway with a signed, verifiable activity journal"
)]
struct Cli {
    /// Configuration file (TOML); built-in defaults when absent.
    #[arg(long, env = "ISNAD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Data directory (journal, node key).
    #[arg(long, env = "ISNAD_DATA_DIR", default_value = "./data", global = true)]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Address to listen on (overrides the configuration).
        #[arg(long, env = "ISNAD_LISTEN")]
        listen: Option<SocketAddr>,
        /// Admin API key (overrides the configuration; generated on first start when unset).
        #[arg(long, env = "ISNAD_ADMIN_KEY", hide_env_values = true)]
        admin_key: Option<String>,
    },
    /// Check a configuration without serving it.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Teams: list, create, show, rename, budget, limits (against a running server).
    Teams {
        #[command(flatten)]
        remote: admin_cli::Remote,
        #[command(subcommand)]
        command: admin_cli::TeamsCommand,
    },
    /// API keys: list, create, show, rotate, revoke, budget, limits (against a running server).
    Keys {
        #[command(flatten)]
        remote: admin_cli::Remote,
        #[command(subcommand)]
        command: admin_cli::KeysCommand,
    },
    /// Usage per team, key, model and day (against a running server).
    Usage {
        #[command(flatten)]
        remote: admin_cli::Remote,
        #[command(flatten)]
        filters: admin_cli::UsageArgs,
    },
    /// Audit the activity journal offline.
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// The local models: what the models directory holds, and whether its files match their
    /// manifests.
    Models {
        /// Models directory (default: `[local] models_dir` of the configuration, `models`).
        #[arg(long, env = "ISNAD_MODELS_DIR", global = true)]
        models_dir: Option<PathBuf>,
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Runs every check `serve` makes of the configuration, without loading a model or opening
    /// the data directory, and prints what would be served (exit 1 when it is refused).
    Check {
        /// The file (default: `--config` / `ISNAD_CONFIG`, else the built-in defaults).
        file: Option<PathBuf>,
        /// Address `serve` would listen on (overrides the configuration).
        #[arg(long, env = "ISNAD_LISTEN")]
        listen: Option<SocketAddr>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Lists the installed models.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Hashes every model file against its manifest (exit 3 on a mismatch).
    Verify {
        /// Models to check (default: all).
        names: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Verify every entry, signature and checkpoint of the data directory's journal.
    Verify {
        /// The node's public key as obtained out of band (defaults to the data directory's node.pub).
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Write the journal as self-contained JSONL (entries, public key, checkpoints).
    Export {
        /// Output file ("-" or absent: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Verify an export file with nothing else.
    VerifyExport {
        /// The export ("-" for standard input).
        file: PathBuf,
        /// The node's public key as obtained out of band.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// A signed checkpoint obtained independently, which the export must match.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Produce an inclusion proof bundle for one entry.
    Prove {
        /// Sequence number of the entry.
        #[arg(long)]
        seq: u64,
        /// Prove from an export file instead of the data directory.
        #[arg(long)]
        export: Option<PathBuf>,
        /// Output file ("-" or absent: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Check an inclusion proof bundle against the node's public key.
    VerifyProof {
        /// The bundle.
        file: PathBuf,
        /// The node's public key.
        #[arg(long)]
        public_key: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild teams, keys, budgets and usage from the log alone and print them (what
    /// `/v1/usage` serves, to the token).
    Replay {
        #[command(flatten)]
        filters: admin_cli::UsageArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show the latest entries.
    Tail {
        /// Start at this seq instead of the last entries.
        #[arg(long)]
        from: Option<u64>,
        /// How many of the last entries.
        #[arg(short = 'n', long, default_value_t = 10)]
        count: u64,
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Read an export file instead of the data directory.
        #[arg(long)]
        export: Option<PathBuf>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// `isnad config check`: the summary on standard output, or the error on standard error (and
/// as JSON on standard output with `--json`); exit 1 when the configuration is refused.
fn config_check(
    file: Option<&Path>,
    listen: Option<SocketAddr>,
    json: bool,
) -> anyhow::Result<i32> {
    let checked = Config::read(file).and_then(|mut config| {
        if let Some(listen) = listen {
            config.server.listen = listen;
        }
        // As `serve` would take it, so that a key with the admin token's hash is found.
        if let Some(token) = std::env::var("ISNAD_ADMIN_KEY")
            .ok()
            .filter(|t| !t.is_empty())
        {
            config.server.admin_token = Some(token);
        }
        config.check()
    });
    match checked {
        Ok(summary) if json => println!("{}", serde_json::to_string_pretty(&summary)?),
        Ok(summary) => println!("{summary}"),
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({ "error": e }));
            }
            eprintln!("isnad: {e}");
            return Ok(1);
        }
    }
    Ok(0)
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let path = cli.config.as_deref();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { file, listen, json },
        } => config_check(file.as_deref().or(path), listen, json),
        Command::Serve { listen, admin_key } => {
            // Every check of the configuration before anything is opened or loaded.
            let mut config = Config::load(path)?;
            init_tracing("info");
            if admin_key.is_some() {
                config.server.admin_token = admin_key;
            }
            let listen = listen.unwrap_or(config.server.listen);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(isnad_api::server::serve(config, &cli.data_dir, listen))?;
            Ok(0)
        }
        Command::Models {
            models_dir,
            command,
        } => {
            // Only the TOML: listing and verifying models must work when one is missing.
            let config = Config::read(path)?;
            init_tracing("warn");
            let dir = models_dir.unwrap_or_else(|| config.local.models_dir());
            match command {
                ModelsCommand::List { json } => isnad_api::models_cli::list(&dir, json),
                ModelsCommand::Verify { names, json } => {
                    isnad_api::models_cli::verify(&dir, &names, json)
                }
            }
        }
        Command::Teams { remote, command } => admin_cli::teams(remote, command),
        Command::Keys { remote, command } => admin_cli::keys(remote, command),
        Command::Usage { remote, filters } => admin_cli::usage(remote, filters),
        Command::Journal { command } => {
            // The journal tools need nothing of the configuration, but refuse a file that is
            // not one.
            Config::read(path)?;
            init_tracing("warn");
            let dir = &cli.data_dir;
            match command {
                JournalCommand::Verify { public_key, json } => {
                    journal_cli::verify(dir, public_key.as_deref(), json)
                }
                JournalCommand::Export { output } => journal_cli::export(dir, output.as_deref()),
                JournalCommand::VerifyExport {
                    file,
                    public_key,
                    checkpoint,
                    json,
                } => journal_cli::verify_export_file(
                    &file,
                    public_key.as_deref(),
                    checkpoint.as_deref(),
                    json,
                ),
                JournalCommand::Prove {
                    seq,
                    export,
                    output,
                } => journal_cli::prove(dir, export.as_deref(), seq, output.as_deref()),
                JournalCommand::VerifyProof {
                    file,
                    public_key,
                    json,
                } => journal_cli::verify_proof(&file, &public_key, json),
                JournalCommand::Replay { filters, json } => {
                    let q = isnad_api::admin::UsageQuery {
                        team: filters.team,
                        key: filters.key,
                        model: filters.model,
                        from: filters.from,
                        to: filters.to,
                        group_by: filters.group_by,
                    };
                    journal_cli::replay(dir, &q, json)
                }
                JournalCommand::Tail {
                    from,
                    count,
                    kind,
                    export,
                    json,
                } => {
                    let source = match export {
                        Some(f) => journal_cli::TailSource::Export(f),
                        None => journal_cli::TailSource::Dir(dir.clone()),
                    };
                    journal_cli::tail(source, from, count, kind.as_deref(), json)
                }
            }
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("isnad: {e:#}");
            ExitCode::FAILURE
        }
    }
}
