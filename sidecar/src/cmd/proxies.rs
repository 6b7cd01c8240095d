//! `edgewatch proxies`: the running nginx masters' and Caddy's routes (edge listener -> location ->
//! upstream -> who listens there) and the configuration findings (`config.*`), each citing
//! `file:line`. Or, with `--proxy-config`, a configuration file sent in by a user.
use std::{io::Write as _, net::IpAddr, path::PathBuf, time::Duration};

use edgewatch_core::proxy::{self, Facts, Finding, Route};
use serde_json::json;

use crate::{
    config::Config,
    output::{escape_controls, Format},
    sources::{proxies, sockdiag},
};

/// The command line of `edgewatch proxies`.
#[derive(Clone, Debug, clap::Args)]
pub struct ProxiesArgs {
    /// Read this configuration file instead of the running proxies': nginx (with its
    /// includes, relative to its directory) or Caddy's JSON (`caddy adapt` output); repeatable.
    #[arg(long = "proxy-config", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Only this nginx master or Caddy (by PID).
    #[arg(long, value_name = "PID", conflicts_with = "files")]
    pub pid: Option<u32>,
    /// A read or send timeout under this cuts idle WebSockets (`config.short_timeout`;
    /// default: `proxy.min_read_timeout` of the config, 600 s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub min_read_timeout: Option<Duration>,
}

/// One configuration read: where from, and its routes or why not.
struct Read {
    source: String,
    routes: Result<Vec<Route>, String>,
}

/// What a run found: findings (exit status 3) and configurations that could not be read
/// (exit status 1, after everything readable was reported).
#[derive(Debug, Default)]
pub struct Outcome {
    pub findings: usize,
    pub unreadable: usize,
}

pub fn run(config: &Config, args: &ProxiesArgs, format: Format) -> anyhow::Result<Outcome> {
    let reads: Vec<Read> = if args.files.is_empty() {
        proxies::running_proxies()
            .into_iter()
            .filter(|p| args.pid.is_none_or(|pid| pid == p.pid))
            .map(|p| Read {
                source: p.source,
                routes: p.routes,
            })
            .collect()
    } else {
        args.files
            .iter()
            .map(|f| Read {
                source: f.display().to_string(),
                routes: proxies::offline_model(std::slice::from_ref(f), &[], Duration::MAX)
                    .map(|m| m.map(|(r, _)| r).unwrap_or_default())
                    .map_err(|e| format!("{e:#}")),
            })
            .collect()
    };
    if reads.is_empty() {
        anyhow::bail!(
            "no running nginx master or Caddy found{} (give its configuration with --proxy-config FILE)",
            args.pid
                .map(|p| format!(" with PID {p}"))
                .unwrap_or_default()
        );
    }
    let listeners =
        sockdiag::tcp_listening().map_err(|e| anyhow::anyhow!("listing listening sockets: {e}"))?;
    let facts = Facts {
        listeners: Some(&listeners),
        gateway_ports: &config.hop.ports,
        min_read_timeout: args
            .min_read_timeout
            .unwrap_or(config.proxy.min_read_timeout),
    };
    let mut out = std::io::stdout().lock();
    let mut outcome = Outcome::default();
    for read in &reads {
        let routes = match &read.routes {
            Ok(r) => r,
            Err(e) => {
                outcome.unreadable += 1;
                // A configuration nginx itself would refuse is said, not skipped.
                print(
                    &mut out,
                    format,
                    "proxy_error",
                    &json!({ "source": read.source, "error": e }),
                    &format!("{}: cannot read: {e}", read.source),
                )?;
                continue;
            }
        };
        let found = proxy::findings(routes, &facts);
        outcome.findings += found.len();
        write_routes(&mut out, format, &read.source, routes, &listeners, &found)?;
        for f in &found {
            write_finding(&mut out, format, f)?;
        }
        if format == Format::Text && found.is_empty() {
            writeln!(out, "no configuration findings")?;
        }
    }
    Ok(outcome)
}

fn print(
    out: &mut impl std::io::Write,
    format: Format,
    ty: &str,
    value: &serde_json::Value,
    text: &str,
) -> std::io::Result<()> {
    match format {
        Format::Json => {
            let mut v = value.clone();
            v["type"] = ty.into();
            writeln!(out, "{v}")
        }
        Format::Text => writeln!(out, "{}", escape_controls(text)),
    }
}

/// The rules of the findings about this route: its verdict.
fn verdict(r: &Route, found: &[Finding]) -> Vec<&'static str> {
    let mut rules: Vec<&'static str> = found
        .iter()
        .filter(|f| f.route == r.location_at)
        .map(|f| f.rule)
        .collect();
    rules.dedup();
    rules
}

fn write_routes(
    out: &mut impl std::io::Write,
    format: Format,
    source: &str,
    routes: &[Route],
    listeners: &[(IpAddr, u16)],
    found: &[Finding],
) -> std::io::Result<()> {
    let who = |host: &str, port: u16| {
        let listens = listeners.iter().any(|(a, p)| {
            *p == port
                && (a.is_unspecified()
                    || host.parse::<IpAddr>().is_ok_and(|h| h == *a)
                    || host == "localhost" && a.is_loopback())
        });
        if listens {
            "listening"
        } else {
            "nothing listens"
        }
    };
    if format == Format::Json {
        for r in routes {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["source"] = source.into();
            v["verdict"] = verdict(r, found).into();
            v["type"] = "route".into();
            for t in v["targets"].as_array_mut().into_iter().flatten() {
                let (host, port) = (
                    t["host"].as_str().unwrap_or_default().to_owned(),
                    t["port"].as_u64().unwrap_or(0),
                );
                t["listener"] = who(&host, u16::try_from(port).unwrap_or(0)).into();
            }
            writeln!(out, "{v}")?;
        }
        return Ok(());
    }
    writeln!(out, "{source}:")?;
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header([
        "listen",
        "location",
        "upstream",
        "who listens",
        "read timeout",
        "at",
        "verdict",
    ]);
    for r in routes {
        let targets = if r.targets.is_empty() {
            vec![(r.proxy_pass.clone(), "known at run time".to_owned())]
        } else {
            r.targets
                .iter()
                .map(|t| {
                    (
                        format!("{}:{}", t.host, t.port),
                        who(&t.host, t.port).to_owned(),
                    )
                })
                .collect()
        };
        for (target, listener) in targets {
            table.add_row([
                escape_controls(&r.listen.join(",")).into_owned(),
                escape_controls(&r.location).into_owned(),
                escape_controls(&target).into_owned(),
                listener,
                if r.read_timeout.value == Duration::MAX {
                    "none".to_owned()
                } else {
                    format!("{}s", r.read_timeout.value.as_secs_f64())
                },
                r.location_at.to_string(),
                match verdict(r, found).as_slice() {
                    [] => "ok".to_owned(),
                    rules => rules.join(", "),
                },
            ]);
        }
    }
    writeln!(out, "{table}")
}

fn write_finding(
    out: &mut impl std::io::Write,
    format: Format,
    f: &Finding,
) -> std::io::Result<()> {
    let value = json!({
        "rule": f.rule,
        "severity": f.severity.as_str(),
        "at": f.at.to_string(),
        "file": f.at.file,
        "line": f.at.line,
        "summary": f.summary,
        "first_move": f.first_move,
        "evidence": f.evidence,
    });
    let text = format!(
        "{} {} at {}: {}\n  first move: {}",
        f.severity.as_str().to_uppercase(),
        f.rule,
        f.at,
        f.summary,
        f.first_move
    );
    print(out, format, "config_finding", &value, &text)
}

/// The running nginx masters' configuration, its routes to `port` and its findings.
/// The configuration of the proxy that serves `edge` (the nginx master or Caddy holding its
/// listening socket, on this machine), its routes to `port` and its findings. Other proxies on
/// the machine are not this check's business.
pub(crate) fn check_facts(
    config: &Config,
    port: u16,
    edge: std::net::SocketAddr,
) -> crate::check::ProxyFacts {
    let mut facts = crate::check::ProxyFacts::default();
    let owners = edge_owners(edge);
    let mut routes = Vec::new();
    for p in proxies::running_proxies()
        .into_iter()
        .filter(|p| owners.contains(&p.pid))
    {
        match p.routes {
            Ok(r) => routes.extend(r),
            Err(e) => facts.unreadable.push(e),
        }
        facts.sources.push(p.source);
    }
    facts.routes_to_port = routes
        .iter()
        .filter(|r| r.targets.iter().any(|t| t.port == port))
        .map(|r| format!("location {} ({})", r.location, r.location_at))
        .collect();
    let listeners = sockdiag::tcp_listening().ok();
    facts.findings = edgewatch_core::proxy::findings(
        &routes,
        &edgewatch_core::proxy::Facts {
            listeners: listeners.as_deref(),
            gateway_ports: &[port],
            min_read_timeout: config.proxy.min_read_timeout,
        },
    );
    facts
}

/// The processes holding the listening socket of `edge` (and their parents: nginx's workers
/// share the master's socket).
fn edge_owners(edge: std::net::SocketAddr) -> Vec<u32> {
    let Ok(listeners) = sockdiag::listeners() else {
        return Vec::new();
    };
    let owners = crate::sources::procs::SocketOwners::scan();
    let mut out = Vec::new();
    for l in listeners.iter().filter(|l| {
        l.proto == edgewatch_core::exposure::Proto::Tcp
            && l.port == edge.port()
            && (l.addr == edge.ip() || l.addr.is_unspecified())
    }) {
        if let Some(pid) = owners.owner(l.inode) {
            out.push(pid);
            let parent = procfs::process::Process::new(i32::try_from(pid).unwrap_or(0))
                .and_then(|p| p.stat())
                .ok()
                .and_then(|st| u32::try_from(st.ppid).ok());
            out.extend(parent);
        }
    }
    out
}
