//! `edgewatch check`'s I/O: the inventory, the TLS handshakes, a request and an upgrade
//! through the edge, the idle hold, and the hop probes watching meanwhile. The verdicts come
//! from the pure functions of `check`.
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
use tracing::Instrument as _;

use crate::check::{
    bind_step, http_step, idle_step, proxy_step,
    tls::{roots, tls_step, Connector},
    ws_step, ClientResponse, HopView, IdleEnd, Status, Step, WsClient,
};
use crate::{
    config::Config,
    exposure::{inventory::ChangeSource, inventory::Inventory, policy::Policy},
    hop::HopRecord,
    output::unix_ns,
    pipeline::{Mode, Pipeline, Sink},
    probe::{
        boot_ns,
        events::{decode, ProbeEvent},
        loader::Probes,
    },
    sources::{nat::read_nat_rules, snapshot::Attributor},
};

/// What to check (the command line of `edgewatch check`).
#[derive(Clone, Debug, clap::Args)]
pub struct CheckArgs {
    /// The public URL users open: https://HOST[:PORT][/PATH].
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// The Origin of the WebSocket upgrade (default: the URL's https origin, what a browser
    /// sends).
    #[arg(long, value_name = "ORIGIN")]
    pub origin: Option<String>,
    /// Connect to this address instead of resolving HOST (HOST:IP or HOST:IP:PORT), like
    /// curl's --resolve.
    #[arg(long, value_name = "HOST:ADDR")]
    pub resolve: Option<String>,
    /// Extra CA certificates (PEM) to trust, for a private CA.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Warn when the certificate expires within this many days.
    #[arg(long, default_value_t = 14, value_name = "DAYS")]
    pub expiry_warn_days: u32,
    /// Hold the WebSocket idle this long and report whether and by whom it was closed
    /// (reveals a too-short proxy read timeout), e.g. 90 or 90s.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub idle: Option<Duration>,
    /// The Gateway's port on the upstream side (default: the config's first hop port,
    /// 18789).
    #[arg(
        long = "port",
        short = 'p',
        value_name = "PORT",
        alias = "upstream-port"
    )]
    pub upstream_port: Option<u16>,
    /// Do not load the kernel probes (no root needed; failures are then not localised).
    #[arg(long)]
    pub no_passive: bool,
    /// Time limit of each network operation.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Seconds as a bare number (`90`) or a duration (`90s`, `2m`).
fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(s) => Ok(Duration::from_secs(s)),
        Err(_) => humantime::parse_duration(text).map_err(|e| e.to_string()),
    }
}

/// The URL's parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Target {
    /// Parses `--url` with the `url` crate: https only, no credentials; IPv6 literals,
    /// the query (kept in the path) and a fragment (dropped: never sent) as URLs have them.
    pub fn parse(raw: &str) -> anyhow::Result<Self> {
        let url = url::Url::parse(raw).with_context(|| format!("--url {raw:?} is not a URL"))?;
        anyhow::ensure!(
            url.scheme() == "https",
            "--url {raw:?} must start with https://"
        );
        anyhow::ensure!(
            url.username().is_empty() && url.password().is_none(),
            "--url must not carry credentials"
        );
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => anyhow::bail!("--url {raw:?} has no host"),
        };
        let mut path = url.path().to_owned();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        Ok(Self {
            host,
            port: url.port_or_known_default().unwrap_or(443),
            path,
        })
    }

    /// The `Host` header and the browser's origin (an IPv6 literal in brackets).
    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 443 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    pub fn origin(&self) -> String {
        format!("https://{}", self.authority())
    }

    /// The path with the check's marker added to the query (so the hop record is found).
    fn marked(&self, nonce: &str) -> String {
        let sep = if self.path.contains('?') { '&' } else { '?' };
        format!("{}{sep}edgewatch_check={nonce}", self.path)
    }
}

/// The address to connect to.
async fn address(t: &Target, resolve: Option<&str>) -> anyhow::Result<SocketAddr> {
    if let Some(r) = resolve {
        let (host, addr) = r
            .split_once(':')
            .with_context(|| format!("--resolve {r:?} must be HOST:ADDR"))?;
        anyhow::ensure!(
            host.eq_ignore_ascii_case(&t.host),
            "--resolve is for {host}, but the URL's host is {}",
            t.host
        );
        if let Ok(a) = addr.parse::<SocketAddr>() {
            return Ok(a);
        }
        let ip: std::net::IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .with_context(|| format!("--resolve address {addr:?} is not an IP address"))?;
        return Ok(SocketAddr::new(ip, t.port));
    }
    tokio::net::lookup_host((t.host.as_str(), t.port))
        .await
        .with_context(|| format!("resolving {}", t.host))?
        .next()
        .with_context(|| format!("{} has no address", t.host))
}

/// The kernel's hop probes, feeding a tracker, for the duration of the check.
struct HopWatch {
    records: Arc<Mutex<Vec<HopRecord>>>,
    task: tokio::task::JoinHandle<()>,
    _probes: Probes,
}

impl HopWatch {
    fn start(config: &Config, port: u16) -> anyhow::Result<Self> {
        let mut hop = config.hop.clone();
        hop.enabled = true;
        hop.ports = vec![port];
        let (probes, streams) =
            Probes::load(&config.probes, &hop).context("loading the kernel probes")?;
        let mut ring = streams.events;
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = records.clone();
        let boot_to_unix = unix_ns(SystemTime::now()).saturating_sub(boot_ns());
        let mut settings = config.pipeline();
        settings.hop_ports = vec![port];
        settings.join = false;
        let task = tokio::spawn(async move {
            // The same pipeline as the live watch, its hop records only.
            struct Records(Vec<HopRecord>);
            impl Sink for Records {
                fn hop(&mut self, r: &HopRecord) {
                    self.0.push(r.clone());
                }
            }
            let mut pipeline = Pipeline::new(&settings, Mode::Live);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tick.tick().await;
                let mut out = Records(Vec::new());
                while let Some(item) = ring.next() {
                    match decode(&item) {
                        Ok(ProbeEvent::Hop(packet)) => {
                            let ts = packet.ts_boot_ns.saturating_add(boot_to_unix);
                            pipeline.hop_packet(&packet, ts);
                        }
                        Ok(ProbeEvent::Conn(trace)) => {
                            let ts = trace.ts_boot_ns.saturating_add(boot_to_unix);
                            pipeline.conn_trace(&trace, ts, &mut out);
                        }
                        _ => {}
                    }
                }
                // No kernel frame follower to arm here.
                drop(pipeline.take_follow_hints());
                pipeline.end_batch(unix_ns(SystemTime::now()), &mut out);
                if !out.0.is_empty() {
                    if let Ok(mut r) = sink.lock() {
                        r.extend(out.0);
                    }
                }
            }
        });
        Ok(Self {
            records,
            task,
            _probes: probes,
        })
    }

    fn snapshot(&self) -> Vec<HopRecord> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Waits (bounded) until `pred` holds for what the hop saw.
    async fn wait(&self, within: Duration, pred: impl Fn(&[HopRecord]) -> bool) {
        let deadline = Instant::now() + within;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while Instant::now() < deadline {
            tick.tick().await;
            if self.records.lock().map(|r| pred(&r)).unwrap_or(false) {
                return;
            }
        }
    }
}

impl Drop for HopWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn view(watch: &Option<HopWatch>, why: &Option<String>) -> HopView {
    HopView {
        available: watch.is_some(),
        why: why.clone(),
        records: watch.as_ref().map(HopWatch::snapshot).unwrap_or_default(),
        ..HopView::default()
    }
}

/// Waits (bounded) until the hop saw the request marked `nonce`, or a refused connect.
async fn seen_on_hop(watch: &Option<HopWatch>, nonce: &str) {
    if let Some(w) = watch {
        w.wait(Duration::from_secs(3), |r| {
            r.iter().any(|x| match x {
                HopRecord::Http(e) => e.path.contains(nonce),
                HopRecord::Conn(c) => c.kind == crate::hop::ConnEventKind::Refused,
                _ => false,
            })
        })
        .await;
    }
}

/// What the hop saw, where the proxy's log says it sent the request marked `nonce`, and
/// where the Gateway listens.
fn view_of(
    watch: &Option<HopWatch>,
    why: &Option<String>,
    config: &Config,
    nonce: &str,
    gateway: &[String],
) -> HopView {
    HopView {
        proxied_to: proxied_to(config, nonce),
        gateway: gateway.to_vec(),
        ..view(watch, why)
    }
}

/// Bytes read from the end of each access log when looking for the check's requests.
const LOG_TAIL: u64 = 1 << 20;

/// Where the proxy sent the request marked `nonce`, from the end of the configured access
/// logs (`[edge] access_logs`): (nonce, `upstream_addr`).
fn proxied_to(config: &Config, nonce: &str) -> Vec<(String, String)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut out = Vec::new();
    let parser = crate::edge::LineParser::new(config.edge.json_fields.clone());
    for path in &config.edge.access_logs {
        // As the live tailer opens it: a regular file, a link only where root alone writes.
        let Ok(mut f) = crate::sources::open_log(path) else {
            continue;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL)))
            .is_err()
        {
            continue;
        }
        let mut bytes = Vec::new();
        if f.take(LOG_TAIL).read_to_end(&mut bytes).is_err() {
            continue;
        }
        for line in String::from_utf8_lossy(&bytes).lines() {
            let Ok(rec) = parser.parse(line) else {
                continue;
            };
            let (Some(p), Some(to)) = (rec.path.as_deref(), rec.upstream_addr.as_deref()) else {
                continue;
            };
            if p.contains(nonce) {
                out.push((nonce.to_owned(), to.to_owned()));
            }
        }
    }
    out
}

/// The steps after TLS, skipped for `why`.
fn skipped(why: &str) -> Vec<Step> {
    ["http", "websocket", "idle"]
        .into_iter()
        .map(|step| Step::new(step, Status::Skip, why.to_owned(), serde_json::Value::Null))
        .collect()
}

fn nonce() -> String {
    let t = unix_ns(SystemTime::now());
    format!("{:016x}{:08x}", t, std::process::id())
}

/// Runs the golden path; each step is reported through `report` as it completes.
/// Long because the golden path is one sequence of steps, each reported as it completes and
/// each deciding whether the next can run.
pub async fn check(
    config: &Config,
    args: &CheckArgs,
    mut report: impl FnMut(&Step),
) -> anyhow::Result<Vec<Step>> {
    let target = Target::parse(&args.url)?;
    let addr = address(&target, args.resolve.as_deref()).await?;
    let port = args
        .upstream_port
        .or_else(|| config.hop.ports.first().copied())
        .unwrap_or(crate::exposure::config::GATEWAY_PORT);
    let roots = roots(args.ca_file.as_deref())?;
    let mut steps = Vec::new();
    let mut push = |s: Step, steps: &mut Vec<Step>| {
        report(&s);
        steps.push(s);
    };

    let (watch, why) = if !args.no_passive {
        match HopWatch::start(config, port) {
            Ok(w) => (Some(w), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        }
    } else {
        (None, Some("--no-passive".to_owned()))
    };

    // 1. Bind.
    let mut exposure = config.exposure.clone();
    exposure.watched_ports = vec![port];
    let policy = Policy::new(&exposure);
    let mut inventory = Inventory::default();
    let listeners = Attributor::new()
        .host_listeners()
        .context("reading the socket inventory (sock_diag)")?;
    inventory.replace_host_listeners(listeners, ChangeSource::Rescan);
    if config.nat.enabled {
        inventory.replace_publishes(read_nat_rules().publishes);
    }
    push(bind_step(port, &inventory.exposures(), &policy), &mut steps);
    push(
        proxy_step(port, &super::proxies::check_facts(config, port, addr)),
        &mut steps,
    );

    // 2. TLS (first: can the edge be reached at all).
    let reach = tokio::time::timeout(args.timeout, tokio::net::TcpStream::connect(addr))
        .instrument(step_span("reach"))
        .await;
    let unreachable = match reach {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {:?}", args.timeout)),
    };
    if let Some(e) = unreachable {
        push(
            Step::new(
                "tls",
                Status::Fail,
                format!("cannot reach the edge at {addr}: {e}"),
                serde_json::json!({ "address": addr.to_string() }),
            )
            .with_move(
                "Is the reverse proxy running and listening there (`edgewatch exposure`), does \
                 the host name resolve to this machine, and does a firewall let it through?",
            ),
            &mut steps,
        );
        for s in skipped("the edge is unreachable") {
            push(s, &mut steps);
        }
        return Ok(steps);
    }
    let connector = Connector::new(roots.clone(), true)?;
    let tls = tokio::time::timeout(args.timeout, connector.connect(addr, &target.host))
        .instrument(step_span("tls"))
        .await;
    let (facts, tls_ok) = match tls {
        Ok(Ok(stream)) => (connector.facts(Some(&stream), None), true),
        Ok(Err(e)) => (connector.facts(None, Some(format!("{e:#}"))), false),
        Err(_) => (
            connector.facts(None, Some(format!("no answer within {:?}", args.timeout))),
            false,
        ),
    };
    let now = i64::try_from(unix_ns(SystemTime::now()) / 1_000_000_000).unwrap_or(i64::MAX);
    push(
        tls_step(&target.host, &facts, now, args.expiry_warn_days),
        &mut steps,
    );
    if !tls_ok {
        for s in skipped("no TLS connection") {
            push(s, &mut steps);
        }
        return Ok(steps);
    }

    // 3. HTTP through the edge.
    let n = nonce();
    let client = http_once(&connector, addr, &target, &target.marked(&n), args.timeout)
        .instrument(step_span("http"))
        .await;
    seen_on_hop(&watch, &n).await;
    // The proxy writes its log line when the request ends (it has: the answer came).
    let gateway: Vec<String> = inventory
        .exposures()
        .iter()
        .filter_map(|e| match e {
            crate::exposure::Exposure::Listener(l) if l.port == port => {
                Some(SocketAddr::new(l.addr, l.port).to_string())
            }
            _ => None,
        })
        .collect();
    let http_view = view_of(&watch, &why, config, &n, &gateway);
    push(http_step(&client, &http_view, &n, port), &mut steps);

    // 4. WebSocket through the edge.
    let origin = args.origin.clone().unwrap_or_else(|| target.origin());
    let wn = nonce() + "ws";
    let (ws_client, ws) = upgrade(
        &connector,
        addr,
        &target,
        &target.marked(&wn),
        &origin,
        args.timeout,
    )
    .instrument(step_span("websocket"))
    .await;
    seen_on_hop(&watch, &wn).await;
    let ws_view = view_of(&watch, &why, config, &wn, &gateway);
    let mut ws_client = ws_client;
    if ws_client.gateway && ws_client.status == Some(101) {
        ws_client.connect_probe = connect_probe(
            &connector,
            addr,
            &target,
            // Its own nonce: the idle step looks the main session up by `wn`.
            &target.marked(&(nonce() + "probe")),
            &origin,
            args.timeout,
        )
        .await;
    }
    let ws_verdict = ws_step(&ws_client, &ws_view, &wn, port);
    let upgraded = ws_verdict.status == Status::Pass;
    push(ws_verdict, &mut steps);

    // 5. Idle survival.
    match (args.idle, ws) {
        (Some(idle), Some(mut ws)) if upgraded => {
            let start = Instant::now();
            let mut close_code = None;
            let ended = loop {
                match tokio::time::timeout_at((start + idle).into(), ws.next())
                    .instrument(step_span("idle"))
                    .await
                {
                    Err(_) => break false,
                    Ok(Some(Ok(Message::Close(c)))) => {
                        close_code = c.map(|c| u16::from(c.code));
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(_))) | Ok(None) => break true,
                }
            };
            let end = if ended {
                let after_s = start.elapsed().as_secs_f64();
                if let Some(w) = &watch {
                    w.wait(Duration::from_secs(3), |r| {
                        r.iter()
                            .any(|x| matches!(x, HopRecord::Websocket(s) if s.path.contains(&wn)))
                    })
                    .await;
                }
                IdleEnd::Ended {
                    after_s,
                    close_code,
                }
            } else {
                let _ = ws.close(None).await;
                IdleEnd::Survived {
                    seconds: idle.as_secs_f64(),
                }
            };
            push(idle_step(&end, &view(&watch, &why), &wn), &mut steps);
        }
        (Some(_), _) => push(
            Step::new(
                "idle",
                Status::Skip,
                "no WebSocket session to hold".to_owned(),
                serde_json::Value::Null,
            ),
            &mut steps,
        ),
        (None, ws) => {
            if let Some(mut ws) = ws {
                let _ = ws.close(None).await;
            }
            push(
                Step::new(
                    "idle",
                    Status::Skip,
                    "not requested (--idle SECONDS)".to_owned(),
                    serde_json::Value::Null,
                ),
                &mut steps,
            );
        }
    }
    Ok(steps)
}

/// The span of one step's network work (its log lines carry `check_step{step=...}`).
fn step_span(step: &'static str) -> tracing::Span {
    tracing::info_span!("check_step", step)
}

/// One GET through the edge; the response head is read, the body is not kept.
async fn http_once(
    connector: &Connector,
    addr: SocketAddr,
    t: &Target,
    path: &str,
    timeout: Duration,
) -> ClientResponse {
    // hyper over check's own handshake: the chain must be seen (and the step go on) even
    // when it does not verify, which no verifying client would allow.
    let attempt = async {
        let tls = connector.connect(addr, &t.host).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .context("HTTP/1.1 over TLS")?;
        let conn = tokio::spawn(conn);
        let request = http::Request::get(path)
            .header(http::header::HOST, t.authority())
            .header(http::header::USER_AGENT, "edgewatch-check")
            .header(http::header::ACCEPT, "*/*")
            .header(http::header::CONNECTION, "close")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .with_context(|| format!("{path:?} is not a request path"))?;
        let response = sender
            .send_request(request)
            .await
            .context("the edge closed without answering")?;
        conn.abort();
        let rid = response
            .headers()
            .get("x-request-id")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        Ok::<_, anyhow::Error>((Some(response.status().as_u16()), rid))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok((status, request_id))) => ClientResponse {
            status,
            error: None,
            request_id,
        },
        Ok(Err(e)) => ClientResponse {
            status: None,
            error: Some(format!("{e:#}")),
            request_id: None,
        },
        Err(_) => ClientResponse {
            status: None,
            error: Some(format!("no answer within {timeout:?}")),
            request_id: None,
        },
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A real upgrade through the edge with `origin`; after a 101, a heartbeat (ping), and what the
/// server says first (the Gateway speaks first; a refused origin is closed with 1008).
async fn upgrade(
    connector: &Connector,
    addr: SocketAddr,
    t: &Target,
    path: &str,
    origin: &str,
    timeout: Duration,
) -> (WsClient, Option<Ws>) {
    let mut client = WsClient {
        origin: origin.to_owned(),
        ..WsClient::default()
    };
    let attempt = async {
        let stream = connector.connect(addr, &t.host).await?;
        let mut req = format!("wss://{}{path}", t.authority()).into_client_request()?;
        req.headers_mut().insert(
            "Origin",
            origin
                .parse()
                .context("--origin is not a valid header value")?,
        );
        Ok::<_, anyhow::Error>(tokio_tungstenite::client_async(req, stream).await)
    };
    let ws = match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(Ok((ws, resp)))) => {
            client.status = Some(resp.status().as_u16());
            ws
        }
        Ok(Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp)))) => {
            client.status = Some(resp.status().as_u16());
            return (client, None);
        }
        Ok(Ok(Err(e))) => {
            client.error = Some(e.to_string());
            return (client, None);
        }
        Ok(Err(e)) => {
            client.error = Some(format!("{e:#}"));
            return (client, None);
        }
        Err(_) => {
            client.error = Some(format!("no answer within {timeout:?}"));
            return (client, None);
        }
    };
    let mut ws = ws;
    let _ = ws.send(Message::Ping(b"edgewatch".to_vec().into())).await;
    // Up to 2 s (or the pong) for an early close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains("\"connect.challenge\"") => {
                client.gateway = true;
            }
            Ok(Some(Ok(Message::Close(c)))) => {
                client.closed_with = Some(
                    c.map(|c| (u16::from(c.code), c.reason.to_string()))
                        .unwrap_or((1005, String::new())),
                );
                return (client, None);
            }
            Ok(Some(Ok(Message::Pong(_)))) | Err(_) => break,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => {
                client.closed_with = Some((1006, e.to_string()));
                return (client, None);
            }
            Ok(None) => {
                client.closed_with = Some((1006, "the connection ended".to_owned()));
                return (client, None);
            }
        }
    }
    (client, Some(ws))
}

/// The first request a Control UI sends, without credentials: the Gateway judges the Origin
/// before anything else, and ends the session with 1008 either way (the reason says why).
const CONTROL_UI_CONNECT: &str = r#"{"type":"req","id":"edgewatch-check","method":"connect","params":{"minProtocol":4,"maxProtocol":4,"client":{"id":"openclaw-control-ui","version":"edgewatch-check","platform":"linux","mode":"ui"},"role":"operator","scopes":[],"caps":[],"commands":[],"permissions":{}}}"#;

/// A second session with the same Origin in which the check answers the Gateway's challenge
/// with a Control UI's first request: how the Gateway ends it (code, reason), if it does
/// within the timeout.
async fn connect_probe(
    connector: &Connector,
    addr: SocketAddr,
    t: &Target,
    path: &str,
    origin: &str,
    timeout: Duration,
) -> Option<(u16, String)> {
    let attempt = async {
        let stream = connector.connect(addr, &t.host).await.ok()?;
        let mut req = format!("wss://{}{path}", t.authority())
            .into_client_request()
            .ok()?;
        req.headers_mut().insert("Origin", origin.parse().ok()?);
        let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.ok()?;
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Text(t) if t.contains("\"connect.challenge\"") => {
                    ws.send(Message::text(CONTROL_UI_CONNECT)).await.ok()?;
                }
                Message::Close(c) => {
                    return c.map(|c| (u16::from(c.code), c.reason.to_string()));
                }
                _ => {}
            }
        }
        None
    };
    // The Gateway answers at once; an upstream that does not speak its protocol is not
    // waited for long.
    tokio::time::timeout(timeout.min(Duration::from_secs(3)), attempt)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_with_their_port_and_path() {
        let t = Target::parse("https://gw.example.com").expect("url");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("gw.example.com", 443, "/")
        );
        assert_eq!(t.origin(), "https://gw.example.com");
        let t = Target::parse("https://gw.test:8443/ui?x=1").expect("url");
        assert_eq!((t.port, t.path.as_str()), (8443, "/ui?x=1"));
        assert_eq!(t.origin(), "https://gw.test:8443");
        assert_eq!(t.marked("n"), "/ui?x=1&edgewatch_check=n");
        assert!(Target::parse("http://gw.test").is_err());
        // An IPv6 literal, with and without a port.
        let t = Target::parse("https://[::1]").expect("url");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 443, "/")
        );
        assert_eq!(t.origin(), "https://[::1]");
        let t = Target::parse("https://[::1]:8443/x").expect("url");
        assert_eq!((t.host.as_str(), t.port), ("::1", 8443));
        assert_eq!(t.authority(), "[::1]:8443");
        // A query without a path is the query, not part of the host; a fragment is dropped.
        let t = Target::parse("https://gw.test?x=1#frag").expect("url");
        assert_eq!((t.host.as_str(), t.path.as_str()), ("gw.test", "/?x=1"));
        assert!(Target::parse("https://user@gw.test").is_err());
        assert!(Target::parse("https://u:p@gw.test").is_err());
        assert!(Target::parse("https://gw.test:x").is_err());
    }
}
