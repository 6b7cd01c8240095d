//! The `edgewatch` command line.
use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use edgewatch::{
    config::Config,
    output::{Format, Printer},
};

// The product's allocator: mimalloc, no transparent huge pages (see `edgewatch::allocator`).
edgewatch::product_allocator!();

/// Exit status of `edgewatch exposure` when it found drift (and of `proxies` with findings).
const EXIT_DRIFT: u8 = 3;

#[derive(Parser)]
#[command(
    name = "edgewatch",
    version,
    propagate_version = true,
    max_term_width = 100,
    about = "eBPF sidecar that watches a WebSocket gateway behind a TLS-terminating reverse proxy",
    long_about = "eBPF sidecar that watches a WebSocket gateway (the OpenClaw Gateway on \
        127.0.0.1:18789 by default) behind a TLS-terminating reverse proxy (Caddy or nginx).\n\n\
        Kernel probes watch which ports are reachable from outside (wildcard listeners, and \
        ports Docker publishes through DNAT with no socket at all), the proxy-to-upstream hop \
        (connects, HTTP exchanges, WebSocket upgrades and frames, resets, latency), and the \
        edge's access logs are joined with it by request id. Alerts name the failure (exposure \
        drift, half-configured upgrades, stale upstream ports, proxy timeouts, rejected \
        origins, an upstream that is down); everything goes to ClickHouse (an embedded, \
        locked-down one by default) for timelines.\n\n\
        Run it as root (or with CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_PTRACE, plus \
        CAP_SETUID, CAP_SETGID, CAP_CHOWN and CAP_KILL for the embedded store) in the host's \
        network and PID namespaces; once the probes are loaded it keeps only what watching \
        needs. `exposure`, `replay`, `timeline --pcap`, `health` and `check-config` need no \
        privilege.",
    after_help = "Logs go to stderr at level info: -v for debug (-vv trace), -q for warnings \
        only (-qq errors). EDGEWATCH_LOG (a tracing filter, e.g. `debug` or \
        `edgewatch=debug,info`) wins over both; a value that is not one is refused (exit 2)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// TOML config file, for every command (without one: the embedded default, which watches
    /// port 18789).
    #[arg(
        long,
        short,
        global = true,
        env = "EDGEWATCH_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    /// More log detail on stderr (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Less log detail on stderr (-q warnings, -qq errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    quiet: u8,
}

#[derive(Args)]
struct OutputArg {
    /// Output format on stdout.
    #[arg(long, short, value_enum, default_value = "text")]
    output: Format,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    out: OutputArg,
    /// Also print every hop record (connect, HTTP exchange, WebSocket session) and joined
    /// request on stdout. Without it, stdout (in a container, the log pipeline) carries the
    /// inventory, its changes, alerts and status lines; the store gets every record either
    /// way.
    #[arg(long)]
    records: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Watch live: exposure, the hop, alerts, and the store (the main job).
    ///
    /// Loads the kernel probes and prints the exposure inventory, then one line per change and
    /// an alert line when an incident starts or ends (--records adds every hop record and
    /// joined request). Every record also goes to ClickHouse (`[store]`): by default a local
    /// ClickHouse 26.7 that edgewatch fetches once (~178 MB), starts on 127.0.0.1:18123
    /// (password-protected, see the README's "The embedded store") and stops; set `store.url`
    /// for your own server, `store.enabled = false` for none. Stops on SIGINT/SIGTERM.
    Run(RunArgs),
    /// Print the exposure inventory once and exit (exit status 3: drift).
    ///
    /// Every listening socket and Docker DNAT publish, classified (loopback, private,
    /// wildcard, public), with the process behind it and whether it is drift for a watched
    /// port. No BPF needed. Exit status 0: no drift; 3: drift found; 1: error.
    Exposure(OutputArg),
    /// Read the edge proxy's configuration: routes and what in them will break the Gateway.
    ///
    /// Finds the running nginx masters (their -c/-p, files read through /proc/PID/root,
    /// includes followed) and Caddy (its admin API's running configuration, or its JSON config
    /// file), or reads --proxy-config FILE (nginx, or Caddy's JSON), resolves every location
    /// that proxies (listen -> location -> upstream -> who listens there) and reports
    /// `config.*` findings, each citing file:line (Caddy: the JSON path) with the first move:
    /// a stale upstream port, a WebSocket half-path, a read or send timeout under
    /// --min-read-timeout, X-Request-ID not forwarded or not logged, the Gateway proxied on a
    /// non-loopback address. Exit status 0: no finding; 3: findings; 1: a configuration could
    /// not be read (said with where).
    Proxies {
        #[command(flatten)]
        args: edgewatch::cmd::proxies::ProxiesArgs,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Run a capture of the hop (and access logs) through the live pipeline, offline.
    ///
    /// A packet capture of the proxy-to-upstream hop (pcap or pcapng, as `tcpdump -w` writes
    /// it) goes through the same pipeline as the live probes: HTTP exchanges, WebSocket
    /// sessions, connection events, joined requests, alerts, and what could not be seen.
    /// Deterministic.
    Replay {
        /// The capture file.
        capture: PathBuf,
        /// Upstream port(s): the server side of the hop (default: the config's watched
        /// ports, 18789).
        #[arg(long = "port", short, value_name = "PORT")]
        ports: Vec<u16>,
        /// The edge proxy's access log(s) of the same period (nginx JSON, edgewatch_combined,
        /// or Caddy JSON; detected per line): each request is joined with the hop by request
        /// id and printed as a `request` record.
        #[arg(long = "access-log", value_name = "FILE")]
        access_logs: Vec<PathBuf>,
        /// The edge proxy's configuration of the same machine (nginx, or Caddy's JSON;
        /// repeatable): its findings are reported and the diagnoses cite its lines, as live.
        #[arg(long = "proxy-config", value_name = "FILE")]
        proxy_config: Vec<PathBuf>,
        /// How long a record waits for its other half, in the data's time.
        #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = humantime::parse_duration)]
        join_window: std::time::Duration,
        /// Also ship every record (hop, access-log and joined) to the store configured in
        /// `[store]` (the embedded ClickHouse by default), wait until it has them, and print a
        /// `store_summary`. Uses its own spool (`<store.spool_dir>-replay`).
        #[arg(long)]
        store: bool,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Internal: the embedded ClickHouse server process that `run` starts and stops. Started
    /// as root; verifies the library, writes the locked-down configuration, then drops to
    /// `--run-as` before loading it.
    #[command(hide = true)]
    EmbeddedClickhouse(edgewatch::store::embedded::ServerArgs),
    /// Walk the golden path through the edge; a deploy gate (exit 0/2/1).
    ///
    /// Walks bind, the proxy's configuration, TLS, HTTP, WebSocket and (with --idle) idle survival
    /// through the edge, each step pass/warn/fail with its evidence and the first move, while the
    /// kernel probes watch the hop to say which layer failed (run as root for that; without the
    /// probes the active steps still run). Exit status 0 only when every step passes, 2 with
    /// warnings only, 1 when a step fails.
    Check {
        #[command(flatten)]
        args: edgewatch::cmd::check::CheckArgs,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Reconstruct what happened in a time range or to one request.
    ///
    /// Exposure changes, alerts, edge log records, hop exchanges, WebSocket sessions, refused
    /// connects, resets and slow connects, in order and grouped by request and connection,
    /// with a summary on top. From ClickHouse (`[store]`, the embedded one by default), or
    /// offline from a capture and access logs with --pcap.
    Timeline(edgewatch::cmd::timeline::TimelineArgs),
    /// Ask a running sidecar whether it is up (the container's healthcheck).
    ///
    /// Asks its loopback /healthz: exit 0 when it answers, 1 when not.
    Health {
        /// The sidecar's metrics address (default: `metrics.listen` of the config,
        /// 127.0.0.1:9464).
        #[arg(long, value_name = "ADDR")]
        addr: Option<std::net::SocketAddr>,
    },
    /// Validate the config file and print the effective configuration.
    ///
    /// Defaults are filled in; secrets in webhook URLs are hidden. Exit status 1 with the
    /// offending key named when the file is not valid.
    CheckConfig,
    /// Internal: write shell completions and man pages generated from this command line
    /// (`cargo xtask docs` and the container image call it).
    #[command(hide = true)]
    GenerateDocs {
        /// Directory to write `completions/` and `man/` into.
        dir: PathBuf,
    },
}

/// `edgewatch health`: the running sidecar's loopback /healthz.
fn health(addr: Option<std::net::SocketAddr>, config: &Config) -> anyhow::Result<ExitCode> {
    let addr = addr.unwrap_or(config.metrics.listen);
    let url = format!("http://{addr}/healthz");
    let http = edgewatch::outbound::Http::new(None, std::time::Duration::from_secs(3))?;
    match edgewatch::outbound::block_on(http.get_text(&url))? {
        Ok(a) if (200..300).contains(&a.status) => {
            println!("edgewatch at {addr} is up");
            Ok(ExitCode::SUCCESS)
        }
        Ok(a) => anyhow::bail!("{url} answered {}", a.status),
        Err(e) => anyhow::bail!("{url}: {e:#}"),
    }
}

/// `edgewatch check-config`: the effective configuration, webhook secrets hidden.
fn check_config(mut config: Config) -> anyhow::Result<ExitCode> {
    for w in &mut config.alerts.webhooks {
        w.url = w.display_url();
    }
    print!("{}", toml::to_string_pretty(&config)?);
    Ok(ExitCode::SUCCESS)
}

/// Shell completions (bash, zsh, fish) and one man page per visible command, from the clap
/// definition above.
fn generate_docs(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use clap::CommandFactory as _;
    let completions = dir.join("completions");
    let man = dir.join("man");
    for d in [&completions, &man] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut cmd = Cli::command();
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        let path = clap_complete::generate_to(shell, &mut cmd, "edgewatch", &completions)
            .with_context(|| format!("writing {shell} completions"))?;
        println!("{}", path.display());
    }
    cmd.build();
    let usage = dir.join("usage.txt");
    std::fs::write(&usage, synopsis(&cmd))
        .with_context(|| format!("writing {}", usage.display()))?;
    println!("{}", usage.display());
    let mut pages = vec![(String::from("edgewatch"), cmd.clone())];
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("edgewatch-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in pages {
        let path = man.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut out)
            .with_context(|| format!("rendering {name}.1"))?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// One line per visible command with its flags (the README's usage block is this text, and a
/// test keeps the two equal).
fn synopsis(cmd: &clap::Command) -> String {
    let shown =
        |a: &&clap::Arg| !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version");
    let mut out = String::from("edgewatch [--config FILE] [-v|-q] COMMAND\n");
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        let mut line = format!("edgewatch {}", sub.get_name());
        for arg in sub
            .get_arguments()
            .filter(shown)
            .filter(|a| !a.is_global_set())
        {
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_owned())
                .collect();
            let value = if !values.is_empty() {
                values.join("|")
            } else {
                arg.get_value_names()
                    .map(|n| n.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(" "))
                    .unwrap_or_else(|| arg.get_id().as_str().to_uppercase())
            };
            let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
            let text = match arg.get_long() {
                None => value,
                Some(long) if takes_value => format!("--{long} {value}"),
                Some(long) => format!("--{long}"),
            };
            let repeat = if matches!(arg.get_action(), clap::ArgAction::Append) {
                "..."
            } else {
                ""
            };
            if arg.is_required_set()
                || arg.is_positional() && !matches!(arg.get_action(), clap::ArgAction::Append)
            {
                line.push_str(&format!(" {text}{repeat}"));
            } else {
                line.push_str(&format!(" [{text}]{repeat}"));
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
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
    use std::io::IsTerminal as _;
    // Colour only on a terminal: in a container or under systemd stderr is a log pipeline,
    // where escape codes are noise.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
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
        Command::Run(RunArgs { out, records }) => {
            let config = load_config(cli.config.as_ref())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            // Spawned, not run by `block_on` itself: a future given to `block_on` runs on
            // this thread while the workers drive the timers and the ring buffer's fd, so
            // every drain tick would wake a worker and then this thread. A task wakes once.
            let span = tracing::info_span!(
                "run",
                hop_ports = ?config.hop.ports,
                watched = ?config.exposure.watched_ports
            );
            let printer =
                Printer::stdout(out.output).with_node(edgewatch::store::node_name(&config.store));
            runtime.block_on(async move {
                tokio::spawn(tracing::Instrument::instrument(
                    edgewatch::cmd::run::run(config, printer, records),
                    span,
                ))
                .await
                .map_err(|e| anyhow::anyhow!("the watch loop failed: {e}"))?
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Exposure(out) => {
            let config = load_config(cli.config.as_ref())?;
            let drift = edgewatch::cmd::exposure::run(&config, Printer::stdout(out.output))?;
            Ok(if drift > 0 {
                ExitCode::from(EXIT_DRIFT)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Replay {
            capture,
            ports,
            access_logs,
            proxy_config,
            join_window,
            store,
            out,
        } => {
            let config = load_config(cli.config.as_ref())?;
            let _span =
                tracing::info_span!("replay", capture = %capture.display(), store).entered();
            let ports = if ports.is_empty() {
                config.exposure.watched_ports.clone()
            } else {
                ports
            };
            let proxy = edgewatch::sources::proxies::offline_model(
                &proxy_config,
                &ports,
                config.proxy.min_read_timeout,
            )?;
            edgewatch::cmd::replay::run(
                &capture,
                &edgewatch::cmd::replay::Inputs {
                    ports: &ports,
                    access_logs: &access_logs,
                    join_window,
                    proxy,
                },
                &config,
                store,
                out.output,
            )
        }
        Command::Proxies { args, out } => {
            let config = load_config(cli.config.as_ref())?;
            let outcome = edgewatch::cmd::proxies::run(&config, &args, out.output)?;
            Ok(if outcome.unreadable > 0 {
                ExitCode::FAILURE
            } else if outcome.findings > 0 {
                ExitCode::from(EXIT_DRIFT)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::EmbeddedClickhouse(args) => {
            edgewatch::store::embedded::run_server(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { args, out } => {
            let config = load_config(cli.config.as_ref())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let mut printer = Printer::stdout(out.output);
            let span = tracing::info_span!("check", url = %args.url);
            let steps = runtime.block_on(tracing::Instrument::instrument(
                edgewatch::cmd::check::check(&config, &args, |s| printer.check_step(s)),
                span,
            ))?;
            let code = edgewatch::check::exit_code(&steps);
            printer.check_summary(&args.url, &steps, code);
            Ok(ExitCode::from(code))
        }
        Command::Timeline(args) => {
            let _span = tracing::info_span!("timeline").entered();
            edgewatch::cmd::timeline::run(&args, &load_config(cli.config.as_ref())?)
        }
        Command::Health { addr } => health(addr, &load_config(cli.config.as_ref())?),
        Command::CheckConfig => check_config(load_config(cli.config.as_ref())?),
        Command::GenerateDocs { dir } => {
            generate_docs(&dir)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
