//! The `edgewatch` command line.
use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use edgewatch::{
    config::Config,
    output::{Format, Printer},
};

/// mimalloc instead of glibc's malloc: the live path allocates a few short strings per
/// HTTP exchange and frees them a batch later, a pattern on which glibc leaves its per-thread
/// cache and takes its slow path (the largest share of the sidecar's own CPU in profiles).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        CAP_SYS_PTRACE, plus CAP_SETUID, CAP_SETGID, CAP_CHOWN and CAP_KILL for the embedded \
        store) in the host's network and PID namespaces; once the probes are loaded it keeps \
        only what watching needs.",
    after_help = "Logs go to stderr at level info: -v for debug (-vv trace), -q for warnings \
        only (-qq errors). EDGEWATCH_LOG (a tracing filter, e.g. `debug` or \
        `edgewatch=debug,info`) wins over both; a value that is not one is refused."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log detail on stderr (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Less log detail on stderr (-q warnings, -qq errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    quiet: u8,
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

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Also print every hop record (connect, HTTP exchange, WebSocket session) and joined
    /// request on stdout. Without it, stdout (in a container, the log pipeline) carries the
    /// inventory, its changes, alerts and status lines; the store gets every record either
    /// way.
    #[arg(long)]
    records: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Load the kernel probes and watch live: print the exposure inventory, then one line per
    /// change and an alert line when a drift starts or ends, and the hop's records. Every
    /// record also goes to ClickHouse (`[store]`): by default a local ClickHouse 26.7 that
    /// edgewatch fetches once (~178 MB), starts on 127.0.0.1:18123 (password-protected, see
    /// the README's "The embedded store") and stops; set `store.url`
    /// for your own server, `store.enabled = false` for none. Stops on SIGINT/SIGTERM.
    Run(RunArgs),
    /// Print the classified exposure inventory once and exit (no BPF needed). Exit status 0:
    /// no drift; 3: drift found; 1: error.
    Exposure(Common),
    /// Run a packet capture of the proxy-to-upstream hop (pcap or pcapng, as `tcpdump -w`
    /// writes it) through the same tracker as the live probes: HTTP exchanges, WebSocket
    /// sessions, connection events, and what could not be seen. Deterministic.
    Replay {
        /// The capture file.
        capture: PathBuf,
        /// Upstream port(s): the server side of the hop (default: the config's watched
        /// ports, 18789).
        #[arg(long = "port", short, value_name = "PORT")]
        ports: Vec<u16>,
        /// TOML config file (for its watched ports).
        #[arg(long, short, env = "EDGEWATCH_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// The edge proxy's access log(s) of the same period (nginx JSON, edgewatch_combined,
        /// or Caddy JSON; detected per line): each request is joined with the hop by request
        /// id and printed as a `request` record.
        #[arg(long = "access-log", value_name = "FILE")]
        access_logs: Vec<PathBuf>,
        /// How long a record waits for its other half, in the data's time.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        join_window: std::time::Duration,
        /// Also ship every record (hop, access-log and joined) to the store configured in
        /// `[store]` (the embedded ClickHouse by default), wait until it has them, and print a
        /// `store_summary`. Uses its own spool (`<store.spool_dir>-replay`).
        #[arg(long)]
        store: bool,
        /// Output format on stdout.
        #[arg(long, short, value_enum, default_value = "text")]
        output: Format,
    },
    /// Internal: the embedded ClickHouse server process that `run` starts and stops. Started
    /// as root; verifies the library, writes the locked-down configuration, then drops to
    /// `--run-as` before loading it.
    #[command(hide = true)]
    EmbeddedClickhouse(edgewatch::store::embedded::ServerArgs),
    /// The runbook's golden path as one command: walks bind, TLS, HTTP, WebSocket and (with
    /// --idle) idle survival through the edge, each step pass/warn/fail with its evidence and
    /// the first move, while the kernel probes watch the hop to say which layer failed (run
    /// as root for that; without the probes the active steps still run). Exit status 0 only
    /// when every step passes, 2 with warnings only, 1 when a step fails: usable as a deploy
    /// gate.
    Check {
        #[command(flatten)]
        args: edgewatch::cmd::check::CheckArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Reconstruct what happened in a time range (or to one request): exposure changes,
    /// alerts, edge log records, hop exchanges, WebSocket sessions, refused connects, resets
    /// and slow connects, in order and grouped by request and connection, with a summary on
    /// top. From ClickHouse (`[store]`, the embedded one by default), or offline from a
    /// capture and access logs with --pcap.
    Timeline(edgewatch::cmd::timeline::TimelineArgs),
    /// Ask a running sidecar whether it is up (its loopback /healthz): exit 0 when it
    /// answers, 1 when not. The container's healthcheck.
    Health {
        /// The sidecar's metrics address (default: `metrics.listen` of the config,
        /// 127.0.0.1:9464).
        #[arg(long, value_name = "ADDR")]
        addr: Option<std::net::SocketAddr>,
        /// TOML config file (for `metrics.listen`).
        #[arg(long, short, env = "EDGEWATCH_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
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

/// The log filter: EDGEWATCH_LOG when set (refused, with the reason, when it is not a filter),
/// else the level -v/-q ask for.
fn log_filter(env: Option<&str>, verbose: u8, quiet: u8) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    if let Some(text) = env {
        // A bare word must be a level: `loud` would otherwise be taken as a target name and
        // silently log nothing new.
        for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let bare = !directive.contains(['=', '[', ':']);
            if bare && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
                return Err(format!(
                    "EDGEWATCH_LOG={text:?}: {directive:?} is not a level (one of {})",
                    LEVELS.join(", ")
                ));
            }
        }
        tracing_subscriber::EnvFilter::try_new(text)
            .map_err(|e| format!("EDGEWATCH_LOG={text:?} is not a log filter: {e}"))?;
        return Ok(text.to_owned());
    }
    let level = (3 + i32::from(verbose) - i32::from(quiet)).clamp(1, 5);
    Ok(LEVELS[usize::try_from(level).unwrap_or(3)].to_owned())
}

fn init_logging(filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = std::env::var("EDGEWATCH_LOG").ok();
    match log_filter(env.as_deref(), cli.verbose, cli.quiet) {
        Ok(filter) => init_logging(&filter),
        Err(e) => {
            eprintln!("edgewatch: error: {e}");
            return ExitCode::from(2);
        }
    }
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
        Command::Run(RunArgs { common, records }) => {
            let config = load_config(common.config.as_ref())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            // Spawned, not run by `block_on` itself: a future given to `block_on` runs on
            // this thread while the workers drive the timers and the ring buffer's fd, so
            // every drain tick would wake a worker and then this thread. A task wakes once.
            runtime.block_on(async move {
                tokio::spawn(edgewatch::cmd::run::run(
                    config,
                    Printer::stdout(common.output),
                    records,
                ))
                .await
                .map_err(|e| anyhow::anyhow!("the watch loop failed: {e}"))?
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Exposure(common) => {
            let config = load_config(common.config.as_ref())?;
            let drift = edgewatch::cmd::exposure::run(&config, Printer::stdout(common.output))?;
            Ok(if drift > 0 {
                ExitCode::from(EXIT_DRIFT)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Replay {
            capture,
            ports,
            config,
            access_logs,
            join_window,
            store,
            output,
        } => {
            let config = load_config(config.as_ref())?;
            let ports = if ports.is_empty() {
                config.exposure.watched_ports.clone()
            } else {
                ports
            };
            edgewatch::cmd::replay::run(
                &capture,
                &ports,
                &access_logs,
                join_window,
                &config,
                store,
                output,
            )
        }
        Command::EmbeddedClickhouse(args) => {
            edgewatch::store::embedded::run_server(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { args, common } => {
            let config = load_config(common.config.as_ref())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let mut printer = Printer::stdout(common.output);
            let steps = runtime.block_on(edgewatch::cmd::check::check(&config, &args, |s| {
                printer.check_step(s)
            }))?;
            let code = edgewatch::check::exit_code(&steps);
            printer.check_summary(&args.url, &steps, code);
            Ok(ExitCode::from(code))
        }
        Command::Timeline(args) => edgewatch::cmd::timeline::run(&args),
        Command::Health { addr, config } => {
            let config = load_config(config.as_ref())?;
            let addr = addr.unwrap_or(config.metrics.listen);
            let url = format!("http://{addr}/healthz");
            let http = edgewatch::outbound::Http::new(None, std::time::Duration::from_secs(3))?;
            let answer = edgewatch::outbound::block_on(http.get_text(&url))?;
            match answer {
                Ok(a) if (200..300).contains(&a.status) => {
                    println!("edgewatch at {addr} is up");
                    Ok(ExitCode::SUCCESS)
                }
                Ok(a) => anyhow::bail!("{url} answered {}", a.status),
                Err(e) => anyhow::bail!("{url}: {e:#}"),
            }
        }
        Command::CheckConfig { config } => {
            let mut config = load_config(config.as_ref())?;
            // Printed, so with the webhooks' secrets hidden (tokens in paths and queries).
            for w in &mut config.alerts.webhooks {
                w.url = w.display_url();
            }
            print!("{}", toml::to_string_pretty(&config)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
