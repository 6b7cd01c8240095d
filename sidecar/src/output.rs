//! How the sidecar talks to its operator on stdout: a table and plain lines for people, or
//! one JSON object per line for tools. Diagnostics go to stderr through `tracing`.
use std::{
    io::Write,
    time::{SystemTime, UNIX_EPOCH},
};

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde::Serialize;

use crate::exposure::{
    inventory::{Change, ChangeKind, ChangeSource},
    policy::{AlertState, Policy, Verdict},
    Exposure, Family,
};
use crate::hop::{ConnEventKind, HopRecord, SessionEnd, Side};

/// Output format chosen on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned tables and one line per event, for a terminal.
    Text,
    /// One JSON object per line (`type` says which kind), for tools.
    Json,
}

/// Unix time in nanoseconds.
pub fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub use edgewatch_core::time::rfc3339;

#[derive(Serialize)]
struct ExposureLine<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    change: Option<ChangeKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<ChangeSource>,
    exposure: &'a Exposure,
    watched: bool,
    verdict: &'a Verdict,
}

/// Writes everything the sidecar reports.
pub struct Printer {
    format: Format,
    out: Box<dyn Write + Send>,
    /// One JSON line being built (reused).
    buf: Vec<u8>,
    /// This machine's name (`store.node`), carried by every JSON alert line.
    node: Option<String>,
}

fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Ok => "ok (loopback)".to_owned(),
        Verdict::Internal => "internal".to_owned(),
        Verdict::Allowed { reason } => match reason {
            Some(r) => format!("allowed: {r}"),
            None => "allowed".to_owned(),
        },
        Verdict::Drift(f) => format!("drift {} ({})", f.rule, f.severity.as_str()),
    }
}

fn family_text(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "ipv4",
        Family::Ipv6Only => "ipv6-only",
        Family::DualStack => "dual-stack",
        Family::Ipv6 => "ipv6",
    }
}

fn who(e: &Exposure) -> (String, String) {
    match e {
        Exposure::Listener(l) => {
            let process = l
                .process
                .as_ref()
                .map(|p| {
                    let mut s = format!("{} ({})", p.comm, p.pid);
                    if let Some(d) = &p.docker_proxy {
                        s.push_str(&format!(" -> {}:{}", d.container_ip, d.container_port));
                    }
                    s
                })
                .unwrap_or_else(|| "?".to_owned());
            let container = l
                .process
                .as_ref()
                .and_then(|p| p.container.as_ref())
                .map(|c| format!("{} {}", c.runtime, c.short_id()))
                .unwrap_or_else(|| {
                    if l.host_netns {
                        "-".to_owned()
                    } else {
                        format!("netns {}", l.netns.unwrap_or_default())
                    }
                });
            (process, container)
        }
        Exposure::NatPublish(p) => (
            format!("{:?} {} {}", p.backend, p.table, p.chain).to_lowercase(),
            p.in_iface
                .as_deref()
                .map(|i| format!("iif {i}"))
                .unwrap_or_else(|| "-".to_owned()),
        ),
    }
}

impl Drop for Printer {
    fn drop(&mut self) {
        self.flush();
    }
}

impl Printer {
    pub fn new(format: Format, out: Box<dyn Write + Send>) -> Self {
        Self {
            format,
            out,
            buf: Vec::new(),
            node: None,
        }
    }

    /// Alerts name this node (`store.node`, the host name by default): in a fleet, the
    /// machine an alert is about.
    #[must_use]
    pub fn with_node(mut self, node: String) -> Self {
        self.node = Some(node);
        self
    }

    /// Buffered stdout: lines go out in batches; [`Printer::flush`] (called after each batch,
    /// and by alerts and status lines themselves) pushes them.
    pub fn stdout(format: Format) -> Self {
        Self::new(
            format,
            Box::new(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::io::stdout(),
            )),
        )
    }

    fn line(&mut self, text: &str) {
        // Paths, Origins, close reasons and log fields are chosen by strangers: a raw ESC
        // could rewrite the operator's terminal. Control characters are shown escaped.
        let text = escape_controls(text);
        // stdout closed (a pipe that went away): nothing sensible left to do with the line.
        if writeln!(self.out, "{text}").is_err() {
            tracing::debug!("stdout closed; output line dropped");
        }
    }

    /// Writes out every buffered line.
    pub fn flush(&mut self) {
        if self.out.flush().is_err() {
            tracing::debug!("stdout closed; output dropped");
        }
    }

    /// One JSON line `{"type": ty, ...value}`.
    fn tagged<T: Serialize>(&mut self, ty: &'static str, value: &T) {
        #[derive(Serialize)]
        struct Tagged<'a, T> {
            #[serde(rename = "type")]
            ty: &'static str,
            #[serde(flatten)]
            value: &'a T,
        }
        self.json(&Tagged { ty, value });
    }

    fn json<T: Serialize>(&mut self, value: &T) {
        // Serialised into a buffer kept from line to line (one line per HTTP exchange on a
        // busy hop: no allocation and no `fmt` pass each), then written whole.
        self.buf.clear();
        match serde_json::to_writer(&mut self.buf, value) {
            Ok(()) => {
                self.buf.push(b'\n');
                if self.out.write_all(&self.buf).is_err() {
                    tracing::debug!("stdout closed; output line dropped");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot serialise output line"),
        }
    }

    /// The classified inventory: a table, or one `exposure` object per line.
    pub fn inventory(&mut self, exposures: &[Exposure], policy: &Policy, now_ns: u64) {
        match self.format {
            Format::Json => {
                for e in exposures {
                    let verdict = policy.assess(e);
                    self.json(&ExposureLine {
                        ty: "exposure",
                        time: rfc3339(now_ns),
                        change: None,
                        source: None,
                        exposure: e,
                        watched: policy.touches_watched(e).is_some(),
                        verdict: &verdict,
                    });
                }
            }
            Format::Text => {
                let mut table = Table::new();
                table.load_preset(UTF8_BORDERS_ONLY).set_header([
                    "PROTO",
                    "ADDRESS",
                    "PORT",
                    "SCOPE",
                    "FAMILY",
                    "PROCESS",
                    "CONTAINER",
                    "VERDICT",
                ]);
                for e in exposures {
                    let (addr, family) = match e {
                        Exposure::Listener(l) => (l.addr.to_string(), family_text(l.family)),
                        Exposure::NatPublish(p) => (
                            format!(
                                "dnat {} -> {}",
                                p.dest.as_deref().unwrap_or("*"),
                                p.key().to_string().rsplit(" -> ").next().unwrap_or("?")
                            ),
                            match p.family.as_str() {
                                "ipv4" => "ipv4",
                                "ipv6" => "ipv6",
                                _ => "inet",
                            },
                        ),
                    };
                    let port = match e {
                        Exposure::NatPublish(p) if p.port != p.port_end => {
                            format!("{}-{}", p.port, p.port_end)
                        }
                        _ => e.port().to_string(),
                    };
                    let (process, container) = who(e);
                    table.add_row([
                        e.proto().to_string(),
                        addr,
                        port,
                        e.scope().to_string(),
                        family.to_owned(),
                        process,
                        container,
                        verdict_text(&policy.assess(e)),
                    ]);
                }
                let text = format!("{table}");
                self.line(&text);
                let drift = exposures
                    .iter()
                    .filter(|e| matches!(policy.assess(e), Verdict::Drift(_)))
                    .count();
                self.line(&format!("{} exposure(s), {} drift", exposures.len(), drift));
            }
        }
    }

    /// One inventory change.
    pub fn change(&mut self, change: &Change, policy: &Policy, now_ns: u64) {
        let verdict = policy.assess(&change.exposure);
        match self.format {
            Format::Json => self.json(&ExposureLine {
                ty: "change",
                time: rfc3339(now_ns),
                change: Some(change.change),
                source: Some(change.source),
                exposure: &change.exposure,
                watched: policy.touches_watched(&change.exposure).is_some(),
                verdict: &verdict,
            }),
            Format::Text => {
                let sign = match change.change {
                    ChangeKind::Added => "+",
                    ChangeKind::Removed => "-",
                };
                let (process, container) = who(&change.exposure);
                let family = match &change.exposure {
                    Exposure::Listener(l) => family_text(l.family),
                    Exposure::NatPublish(_) => "dnat",
                };
                let source = match change.source {
                    ChangeSource::Probe => "probe",
                    ChangeSource::Rescan => "rescan",
                    ChangeSource::Nat => "nat",
                };
                self.line(&format!(
                    "{} {sign} {} {} {family} process={process} container={container} [{}] via {source}",
                    rfc3339(now_ns),
                    change.exposure.key(),
                    change.exposure.scope(),
                    verdict_text(&verdict),
                ));
            }
        }
    }

    /// One alert transition, any rule (written out at once).
    pub fn alert(&mut self, a: &crate::alerts::Alert) {
        match self.format {
            Format::Json => {
                #[derive(Serialize)]
                struct Timed<'a> {
                    time: String,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    node: Option<&'a str>,
                    #[serde(flatten)]
                    alert: &'a crate::alerts::Alert,
                }
                let node = self.node.take();
                self.tagged(
                    "alert",
                    &Timed {
                        time: rfc3339(a.at_ns),
                        node: node.as_deref(),
                        alert: a,
                    },
                );
                self.node = node;
            }
            Format::Text => {
                let text = alert_text(
                    a.at_ns,
                    a.state,
                    a.severity,
                    a.rule,
                    &a.summary,
                    a.first_move,
                );
                self.line(&text);
            }
        }
        self.flush();
    }

    /// An incident still open at the end of an offline run, as it stands then: its evidence
    /// and counts so far, every distinct value kept (`type: incident`).
    pub fn incident(&mut self, a: &crate::alerts::Alert) {
        match self.format {
            Format::Json => {
                #[derive(Serialize)]
                struct Open<'a> {
                    time: String,
                    fired: String,
                    #[serde(flatten)]
                    alert: &'a crate::alerts::Alert,
                }
                self.tagged(
                    "incident",
                    &Open {
                        time: rfc3339(a.at_ns),
                        fired: rfc3339(a.fired_at_ns),
                        alert: a,
                    },
                );
            }
            Format::Text => {
                let text = format!(
                    "{} still open at the end (since {}): {}",
                    a.rule,
                    rfc3339(a.fired_at_ns),
                    alert_text(
                        a.at_ns,
                        a.state,
                        a.severity,
                        a.rule,
                        &a.summary,
                        a.first_move
                    )
                );
                self.line(&text);
            }
        }
        self.flush();
    }

    /// One record of the hop (HTTP exchange, WebSocket session, connection event, loss).
    pub fn hop(&mut self, record: &HopRecord) {
        match self.format {
            Format::Json => self.json(record),
            Format::Text => {
                let text = hop_text(record);
                self.line(&text);
            }
        }
    }

    /// One joined request (edge log + hop).
    pub fn request(&mut self, r: &crate::edge::join::JoinedRequest) {
        match self.format {
            Format::Json => self.tagged("request", r),
            Format::Text => {
                let edge = r.edge.as_ref();
                let hop = r.hop.as_ref();
                let text = format!(
                    "{} request {} {:?} rid={} edge={} {} {} total={} wire: status={} ttfb={} total={}{}{}",
                    edge.map(|e| rfc3339(e.end_ts_ns))
                        .or_else(|| hop.map(|h| rfc3339(h.request_ts_ns)))
                        .unwrap_or_default(),
                    edge.and_then(|e| e.client.as_deref()).unwrap_or("-"),
                    r.matched,
                    r.request_id.as_deref().unwrap_or("-"),
                    edge.map(|e| e.status.to_string()).unwrap_or_else(|| "-".into()),
                    edge.and_then(|e| e.method.as_deref())
                        .or(hop.map(|h| h.method.as_str()))
                        .unwrap_or("-"),
                    edge.and_then(|e| e.path.as_deref())
                        .or(hop.map(|h| h.path.as_str()))
                        .unwrap_or("-"),
                    edge.and_then(|e| e.request_time_ns).map(dur).unwrap_or_else(|| "-".into()),
                    hop.and_then(|h| h.status).map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                    hop.and_then(|h| h.ttfb_ns).map(dur).unwrap_or_else(|| "-".into()),
                    hop.and_then(|h| h.total_ns).map(dur).unwrap_or_else(|| "-".into()),
                    if r.websocket.is_some() { " +websocket" } else { "" },
                    r.reason.as_deref().map(|x| format!(" ({x})")).unwrap_or_default(),
                );
                self.line(&text);
            }
        }
    }

    /// One step of `edgewatch check`, as it completes (JSON: a `check_step` object).
    pub fn check_step(&mut self, step: &crate::check::Step) {
        match self.format {
            Format::Json => self.tagged("check_step", step),
            Format::Text => {
                let mut text = format!(
                    "{:<6} {:<10} {}",
                    step.status.as_str().to_uppercase(),
                    step.step,
                    step.summary
                );
                if let Some(m) = &step.first_move {
                    text.push_str("\n                  first move: ");
                    text.push_str(m);
                }
                self.line(&text);
            }
        }
        self.flush();
    }

    /// The end of `edgewatch check` (JSON: a `check` object with every step).
    pub fn check_summary(&mut self, url: &str, steps: &[crate::check::Step], exit: u8) {
        let count = |st: crate::check::Status| steps.iter().filter(|s| s.status == st).count();
        let (pass, warn, fail, skip) = (
            count(crate::check::Status::Pass),
            count(crate::check::Status::Warn),
            count(crate::check::Status::Fail),
            count(crate::check::Status::Skip),
        );
        let text = format!(
            "{url}: {pass} passed, {warn} warning(s), {fail} failed, {skip} skipped{}",
            match exit {
                0 => "",
                2 => " (exit 2: warnings)",
                _ => " (exit 1: failed)",
            }
        );
        self.status(
            "check",
            &text,
            &serde_json::json!({ "url": url, "exit": exit, "pass": pass, "warn": warn, "fail": fail, "skip": skip }),
        );
    }

    /// A status object (`ready`, `problem`, `stopped`, ...), written out at once.
    pub fn status<T: Serialize>(&mut self, ty: &'static str, text: &str, detail: &T) {
        self.status_line(ty, text, detail);
        self.flush();
    }

    fn status_line<T: Serialize>(&mut self, ty: &'static str, text: &str, detail: &T) {
        match self.format {
            Format::Json => {
                #[derive(Serialize)]
                struct Status<'a, T> {
                    #[serde(rename = "type")]
                    ty: &'static str,
                    time: String,
                    message: &'a str,
                    #[serde(flatten)]
                    detail: &'a T,
                }
                self.json(&Status {
                    ty,
                    time: rfc3339(unix_ns(SystemTime::now())),
                    message: text,
                    detail,
                });
            }
            Format::Text => self.line(&format!(
                "{} {ty}: {text}",
                rfc3339(unix_ns(SystemTime::now()))
            )),
        }
    }
}

/// `text` with every control character (C0 but newline and tab, DEL, C1) written as `\x1b`
/// or `\u{9b}`; borrowed when there is none (the common case).
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    let is_control =
        |c: char| (c.is_control() && c != '\n' && c != '\t') || ('\u{80}'..='\u{9f}').contains(&c);
    if !text.chars().any(is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_control(c) {
            let n = u32::from(c);
            if n < 0x80 {
                out.push_str(&format!("\\x{n:02x}"));
            } else {
                out.push_str(&format!("\\u{{{n:x}}}"));
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn side_name(s: Side) -> &'static str {
    match s {
        Side::Client => "client (proxy)",
        Side::Server => "server (upstream)",
    }
}

/// An alert transition for a terminal (exposure drift and hop rules alike).
fn alert_text(
    at_ns: u64,
    state: AlertState,
    severity: crate::exposure::policy::Severity,
    rule: &str,
    summary: &str,
    first_move: &str,
) -> String {
    let mut text = format!(
        "{} ALERT {} {} {rule}: {summary}",
        rfc3339(at_ns),
        state.as_str().to_uppercase(),
        severity.as_str(),
    );
    if state == AlertState::Firing {
        text.push_str("\n    first move: ");
        text.push_str(first_move);
    }
    text
}

fn dur(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.2}s", ns as f64 / 1e9)
    } else {
        format!("{:.2}ms", ns as f64 / 1e6)
    }
}

fn hop_text(record: &HopRecord) -> String {
    match record {
        HopRecord::Http(x) => format!(
            "{} http {} -> {} #{} {} {} {} ttfb={} total={} rid={} upgrade={} {}",
            rfc3339(x.request_ts_ns),
            x.conn.client,
            x.conn.server,
            x.index,
            x.method,
            x.path,
            x.status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            x.ttfb_ns.map(dur).unwrap_or_else(|| "-".into()),
            x.total_ns.map(dur).unwrap_or_else(|| "-".into()),
            x.request_id.as_deref().unwrap_or("-"),
            if x.upgrade_websocket {
                "websocket"
            } else {
                "no"
            },
            x.outcome.as_str(),
        ),
        HopRecord::Websocket(s) => {
            let end = match &s.end {
                SessionEnd::CloseHandshake { first_close_from } => {
                    format!(
                        "close handshake (first close from {})",
                        side_name(*first_close_from)
                    )
                }
                SessionEnd::FinWithoutClose { from } => {
                    format!("FIN without close frame from {}", side_name(*from))
                }
                SessionEnd::Reset { from } => format!("reset by {}", side_name(*from)),
                SessionEnd::Open => "still open".to_owned(),
            };
            let closes: Vec<String> = s
                .closes
                .iter()
                .map(|c| {
                    format!(
                        "{} {}{}",
                        side_name(c.from),
                        c.code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                        if c.reason.is_empty() {
                            String::new()
                        } else {
                            format!(" {:?}", c.reason)
                        }
                    )
                })
                .collect();
            format!(
                "{} websocket {} -> {} {} rid={} duration={} frames client={}t/{}b/{}p server={}t/{}b/{}p closes=[{}] end={} longest_idle={} idle_before_end={}{}",
                rfc3339(s.upgraded_ts_ns),
                s.conn.client,
                s.conn.server,
                s.path,
                s.request_id.as_deref().unwrap_or("-"),
                dur(s.duration_ns),
                s.client_frames.text,
                s.client_frames.binary,
                s.client_frames.ping,
                s.server_frames.text,
                s.server_frames.binary,
                s.server_frames.ping,
                closes.join(", "),
                end,
                dur(s.longest_idle_ns),
                dur(s.idle_before_end_ns),
                if s.lost_sync { " (frame sync lost: counts are lower bounds)" } else { "" },
            )
        }
        HopRecord::Conn(c) => {
            let what = match &c.kind {
                ConnEventKind::Connected { latency_ns } => {
                    format!("connected in {}", dur(*latency_ns))
                }
                ConnEventKind::Refused => {
                    "REFUSED (SYN answered by RST: nothing listens)".to_owned()
                }
                ConnEventKind::Reset { from } => format!("reset by {}", side_name(*from)),
            };
            format!(
                "{} conn {} -> {} {what}",
                rfc3339(c.ts_ns),
                c.conn.client,
                c.conn.server
            )
        }
        HopRecord::Loss(l) => format!(
            "{} loss {} -> {} {} side: {} bytes unseen; {}",
            rfc3339(l.ts_ns),
            l.conn.client,
            l.conn.server,
            side_name(l.side),
            l.bytes,
            l.effect
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn control_characters_reach_the_terminal_escaped() {
        assert_eq!(escape_controls("plain /path\tx"), "plain /path\tx");
        assert_eq!(escape_controls("a\u{1b}[31mred\u{7}"), "a\\x1b[31mred\\x07");
        assert_eq!(escape_controls("csi\u{9b}2J é"), "csi\\u{9b}2J é");
        let shared = Shared::default();
        {
            let mut p = Printer::new(Format::Text, Box::new(shared.clone()));
            p.status(
                "store",
                "closed: \u{1b}]0;owned\u{7} reason",
                &serde_json::json!({}),
            );
        }
        let text = String::from_utf8(shared.0.lock().expect("lock").clone()).expect("utf-8");
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
        assert!(text.contains("\\x1b]0;owned\\x07"), "{text:?}");
    }
}
