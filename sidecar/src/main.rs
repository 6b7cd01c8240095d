//! The `edgewatch` command line.
use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use edgewatch::{
    config::Config,
    live,
    output::{Format, Printer},
};

/// Exit status of `edgewatch exposure` when it found drift.
const EXIT_DRIFT: u8 = 3;

#[derive(Parser)]
#[command(
    name = "edgewatch",
    version,
    about = "eBPF sidecar that watches a WebSocket gateway behind a reverse proxy",
    long_about = "edgewatch watches which ports are reachable from outside (listening sockets on \
        wildcard or public addresses, and ports Docker publishes through netfilter DNAT with no \
        socket at all) and alerts within a second when the Gateway's port (18789 by default) \
        drifts off loopback.\n\nRun it as root (or with CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and \
        CAP_SYS_PTRACE) in the host's network and PID namespaces.",
    after_help = "Logs go to stderr; set EDGEWATCH_LOG (e.g. debug) to change their level."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Common {
    /// TOML config file; without one the embedded default watches port 18789.
    #[arg(long, short, env = "EDGEWATCH_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Output format on stdout.
    #[arg(long, short, value_enum, default_value = "text")]
    output: Format,
}

#[derive(Subcommand)]
enum Command {
    /// Load the kernel probes and watch live: print the exposure inventory, then one line per
    /// change and an alert line when a drift starts or ends. Stops on SIGINT/SIGTERM.
    Run(Common),
    /// Print the classified exposure inventory once and exit (no BPF needed). Exit status 0:
    /// no drift; 3: drift found; 1: error.
    Exposure(Common),
    /// Validate a config file and print the effective configuration (defaults filled in).
    CheckConfig {
        /// The config file to check.
        #[arg(long, short, env = "EDGEWATCH_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EDGEWATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgewatch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(common) => {
            let config = load_config(common.config.as_ref())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(live::run(config, Printer::stdout(common.output)))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Exposure(common) => {
            let config = load_config(common.config.as_ref())?;
            let drift = live::exposure_once(&config, Printer::stdout(common.output))?;
            Ok(if drift > 0 {
                ExitCode::from(EXIT_DRIFT)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::CheckConfig { config } => {
            let config = load_config(config.as_ref())?;
            print!("{}", toml::to_string_pretty(&config)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
