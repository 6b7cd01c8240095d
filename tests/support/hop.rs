//! Real parts for hop tests: a WebSocket upstream (tungstenite framing), real nginx in front
//! of it, real WebSocket clients, and tcpdump recording the upstream hop on `lo`.
#![allow(
    dead_code,
    clippy::unwrap_used,
    reason = "test harness: panics are the failures"
)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Instant,
};

use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_tungstenite::{
    tungstenite::{handshake::derive_accept_key, protocol::Role, Message},
    WebSocketStream,
};

/// The WebSocket upstream: speaks first like the Gateway (a `connect.challenge` event),
/// echoes text, and on request ends the connection the way a crash would.
/// - text `die`: drop the socket (FIN, no close frame);
/// - text `reset`: drop it with SO_LINGER 0 (RST);
/// - text `split`: answer `split-ok` with its frame header split across two TCP segments.
///
/// Plain HTTP: `/health` answers 200 (keep-alive), `/slow` the same after 300 ms (a slow
/// upstream); anything else that is not an upgrade answers 426.
///
/// Origins, like the Gateway's allowedOrigins: an upgrade whose Origin contains `forbidden`
/// is answered 403 with a JSON error body whose code is `origin_not_allowed`; one whose Origin contains `blocked` gets its 101, and the client's first
/// message is answered with close code 1008 ("origin not allowed"), as the Gateway does.
pub async fn start_upstream() -> SocketAddr {
    start_upstream_on(0).await
}

/// The same on a given loopback port (0: any).
pub async fn start_upstream_on(port: u16) -> SocketAddr {
    start_upstream_at(SocketAddr::from(([127, 0, 0, 1], port))).await
}

/// The same on any address (`0.0.0.0:PORT` reproduces an exposed Gateway).
pub async fn start_upstream_at(addr: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    Some(head)
}

async fn serve(mut stream: TcpStream) {
    loop {
        let Some(head) = read_head(&mut stream).await else {
            return;
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if req.parse(&head).is_err() {
            return;
        }
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let key = header("sec-websocket-key");
        let origin = header("origin").unwrap_or_default();
        match (upgrade, key) {
            (true, Some(_)) if origin.contains("forbidden") => {
                // A JSON error body whose code says why, as upstreams that refuse an Origin
                // at the handshake do.
                let body =
                    r#"{"error":{"message":"origin not allowed","type":"origin_not_allowed"}}"#;
                let _ = stream
                    .write_all(
                        format!(
                            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            }
            (true, Some(key)) => {
                let response = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    derive_accept_key(key.as_bytes())
                );
                stream.write_all(response.as_bytes()).await.unwrap();
                websocket(stream, origin.contains("blocked")).await;
                return;
            }
            _ if req.path.and_then(|p| p.split('?').next()) == Some("/slow") => {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
            _ if matches!(
                req.path.and_then(|p| p.split('?').next()),
                Some("/bytes" | "/chunked")
            ) =>
            {
                // A long body of `n` bytes: with a Content-Length, or as one chunk.
                let path = req.path.unwrap_or_default();
                let n: usize = path
                    .split_once("n=")
                    .and_then(|(_, n)| n.parse().ok())
                    .unwrap_or(0);
                let chunked = path.starts_with("/chunked");
                let head = if chunked {
                    format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{n:x}\r\n")
                } else {
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n")
                };
                if stream.write_all(head.as_bytes()).await.is_err()
                    || stream.write_all(&vec![b'b'; n]).await.is_err()
                    || (chunked && stream.write_all(b"\r\n0\r\n\r\n").await.is_err())
                {
                    return;
                }
            }
            _ if req.path.and_then(|p| p.split('?').next()) == Some("/upload") => {
                // Reads the request body (Content-Length) and says how long it was.
                let n: usize = header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; n];
                if stream.read_exact(&mut body).await.is_err() {
                    return;
                }
                let text = n.to_string();
                let _ = stream
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
                            text.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            }
            _ if req.path.and_then(|p| p.split('?').next()) == Some("/health") => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
            _ => {
                let _ = stream
                    .write_all(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        }
    }
}

async fn websocket(stream: TcpStream, origin_blocked: bool) {
    let raw = stream.into_std().unwrap();
    let keep = raw.try_clone().unwrap();
    let stream = TcpStream::from_std(raw).unwrap();
    let mut ws = WebSocketStream::from_raw_socket(stream, Role::Server, None).await;
    let challenge = r#"{"type":"event","event":"connect.challenge","payload":{"nonce":"n"}}"#;
    if ws.send(Message::text(challenge)).await.is_err() {
        return;
    }
    while let Some(Ok(msg)) = ws.next().await {
        if origin_blocked && matches!(msg, Message::Text(_)) {
            use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
            let _ = ws
                .send(Message::text(
                    r#"{"type":"res","ok":false,"error":{"message":"origin not allowed"}}"#,
                ))
                .await;
            let _ = ws
                .close(Some(CloseFrame {
                    code: CloseCode::Policy,
                    reason: "origin not allowed".into(),
                }))
                .await;
            continue;
        }
        match msg {
            // A Control UI's first request without credentials: refused with 1008, as the
            // Gateway does once the Origin passed.
            Message::Text(t) if t.contains("\"method\":\"connect\"") => {
                use tokio_tungstenite::tungstenite::protocol::{
                    frame::coding::CloseCode, CloseFrame,
                };
                let _ = ws
                    .close(Some(CloseFrame {
                        code: CloseCode::Policy,
                        reason: "control ui requires device identity".into(),
                    }))
                    .await;
            }
            Message::Text(t) if t.as_str() == "die" => {
                drop(ws);
                drop(keep);
                return;
            }
            Message::Text(t) if t.as_str() == "split" => {
                // A text frame whose header is split across two TCP segments: two writes
                // with Nagle off, each sent at once on loopback.
                use std::io::Write;
                let payload = b"split-ok";
                let mut raw = &keep;
                raw.set_nodelay(true).unwrap();
                raw.write_all(&[0x81]).unwrap();
                let mut rest = vec![payload.len() as u8];
                rest.extend_from_slice(payload);
                raw.write_all(&rest).unwrap();
            }
            Message::Text(t) if t.as_str() == "reset" => {
                socket2_linger_zero(&keep);
                drop(ws);
                drop(keep);
                return;
            }
            Message::Text(t) => {
                let echo = Message::text(t.as_str().to_owned());
                if ws.send(echo).await.is_err() {
                    return;
                }
            }
            Message::Binary(b) => {
                let echo = Message::binary(b);
                if ws.send(echo).await.is_err() {
                    return;
                }
            }
            Message::Close(_) => {}
            _ => {}
        }
    }
}

/// Sets SO_LINGER 0: closing the socket then sends RST instead of FIN.
pub fn socket2_linger_zero(stream: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
}

/// What nginx puts in front of the upstream.
pub struct NginxSite<'a> {
    pub upstream: SocketAddr,
    /// Forward Upgrade/Connection (the runbook's correct config); false reproduces the
    /// "WebSocket half-path".
    pub websocket_headers: bool,
    pub read_timeout: &'a str,
    /// Keep up to this many idle upstream connections alive between requests (nginx's
    /// `keepalive N`); with more clients at once than that, nginx closes the surplus after
    /// each request and opens new ones.
    pub upstream_keepalive: Option<u32>,
    /// Serve HTTPS for `gw.test` with this certificate file (what the server sends) and key.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The address nginx listens on (127.0.0.1 when unset; a veth address for clients in
    /// another namespace).
    pub listen: Option<std::net::IpAddr>,
}

impl NginxSite<'static> {
    /// The runbook's correct location: WebSocket headers, 60 s read timeout, plain HTTP.
    pub fn new(upstream: SocketAddr) -> Self {
        Self {
            upstream,
            websocket_headers: true,
            read_timeout: "60s",
            upstream_keepalive: None,
            tls: None,
            listen: None,
        }
    }
}

/// A configuration snippet from README.md (the block after `<!-- snippet:NAME -->`), so the
/// tests run exactly what the documentation tells users to write.
pub fn readme_snippet(name: &str) -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let marker = format!("<!-- snippet:{name} -->");
    let after = readme
        .split_once(&marker)
        .unwrap_or_else(|| panic!("README.md has no {marker}"))
        .1;
    let block = after.split_once("```").unwrap().1;
    let body = block.split_once('\n').unwrap().1;
    body.split_once("```").unwrap().0.to_owned()
}

/// A real nginx (Debian's), in its own prefix, in the foreground.
pub struct Nginx {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(site: &NginxSite<'_>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let ip = site.listen.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
        // `[::1]:port` for an IPv6 address.
        let addr = std::net::SocketAddr::new(ip, port);
        let d = dir.path().display();
        let ws_headers = if site.websocket_headers {
            "proxy_set_header Upgrade $http_upgrade;\n        proxy_set_header Connection \"upgrade\";"
        } else if site.upstream_keepalive.is_some() {
            "proxy_set_header Connection \"\";"
        } else {
            ""
        };
        let (upstream_block, pass) = if let Some(pool) = site.upstream_keepalive {
            (
                format!(
                    "upstream gw {{ server {}; keepalive {pool}; }}",
                    site.upstream
                ),
                "http://gw".to_owned(),
            )
        } else {
            (String::new(), format!("http://{}", site.upstream))
        };
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
               {log_format}\n\
               access_log {d}/access.log edgewatch;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               {upstream_block}\n\
               server {{\n\
                 {listen}\n\
                 location / {{\n\
                   proxy_pass {pass};\n\
                   proxy_http_version 1.1;\n\
                   {ws_headers}\n\
                   proxy_set_header Host $host;\n\
                   proxy_set_header X-Request-ID $request_id;\n\
                   proxy_set_header X-Forwarded-For $remote_addr;\n\
                   proxy_set_header X-Forwarded-Proto $scheme;\n\
                   proxy_read_timeout {timeout};\n\
                 }}\n\
               }}\n\
             }}\n",
            timeout = site.read_timeout,
            listen = match &site.tls {
                Some((cert, key)) => format!(
                    "listen {addr} ssl; server_name gw.test; ssl_certificate {}; ssl_certificate_key {};",
                    cert.display(),
                    key.display()
                ),
                None => format!("listen {addr};"),
            },
            log_format = readme_snippet("nginx-log-format"),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off; master_process off;"])
            .stdin(Stdio::null())
            .spawn()
            .expect("nginx (cargo xtask setup installs nginx-light)");
        // Ready when its port accepts a connection.
        let deadline = Instant::now() + super::wait_limit();
        while std::net::TcpStream::connect((ip, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start; see {d}/error.log"
            );
            std::thread::yield_now();
        }
        Self { child, port, dir }
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.access_log_path()).unwrap_or_default()
    }

    /// Waits until the access log has `n` lines (nginx writes a WebSocket request's line when
    /// the tunnel closes, about when the client sees the close).
    pub fn wait_log_lines(&self, n: usize) -> PathBuf {
        let deadline = Instant::now() + super::wait_limit();
        while self.access_log().lines().count() < n {
            assert!(Instant::now() < deadline, "nginx did not log {n} lines");
            std::thread::yield_now();
        }
        self.access_log_path()
    }

    /// What logrotate's postrotate does: USR1, nginx reopens its logs.
    pub fn reopen_logs(&self) {
        let status = Command::new("kill")
            .args(["-USR1", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        // Reopened once the new file exists.
        let deadline = Instant::now() + super::wait_limit();
        while !self.access_log_path().exists() {
            assert!(Instant::now() < deadline, "nginx did not reopen its log");
            std::thread::yield_now();
        }
    }

    pub fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Caddy (Debian's 2.6), configured with the README's Caddyfile (site address, upstream
/// and log path substituted; plain HTTP and no admin endpoint for the test).
pub struct Caddy {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Caddy {
    pub fn start(upstream: SocketAddr) -> Self {
        Self::start_site(upstream, false, None, std::net::Ipv4Addr::LOCALHOST).0
    }

    /// With its admin endpoint on a port of its own, so the test can `caddy reload` it.
    pub fn start_reloadable(upstream: SocketAddr) -> (Self, u16) {
        let (caddy, admin) = Self::start_site(upstream, true, None, std::net::Ipv4Addr::LOCALHOST);
        (caddy, admin.expect("an admin port"))
    }

    /// `caddy reload --force` through the admin endpoint (what a deploy does).
    pub fn reload(&self, admin: u16) {
        let out = Command::new("caddy")
            .args(["reload", "--force", "--adapter", "caddyfile", "--address"])
            .arg(format!("127.0.0.1:{admin}"))
            .arg("--config")
            .arg(self.dir.path().join("Caddyfile"))
            .env("HOME", self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "caddy reload: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// HTTPS for `gw.test` on loopback with this certificate file and key (no ACME).
    pub fn start_tls(upstream: SocketAddr, cert: &Path, key: &Path) -> Self {
        Self::start_site(
            upstream,
            false,
            Some((cert, key)),
            std::net::Ipv4Addr::LOCALHOST,
        )
        .0
    }

    /// The same, listening on `bind` (a veth address for clients in another namespace).
    pub fn start_tls_on(
        upstream: SocketAddr,
        cert: &Path,
        key: &Path,
        bind: std::net::Ipv4Addr,
    ) -> Self {
        Self::start_site(upstream, false, Some((cert, key)), bind).0
    }

    /// Starts Caddy on fresh ports (`free_listen_port`s, below the ephemeral range): its site
    /// on `bind`, and its admin endpoint when `admin`. One that another server binds first
    /// makes Caddy exit with "address already in use": then again with fresh ports, at most
    /// three times (see [`run_caddy`]).
    fn start_site(
        upstream: SocketAddr,
        admin: bool,
        tls: Option<(&Path, &Path)>,
        bind: std::net::Ipv4Addr,
    ) -> (Self, Option<u16>) {
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let port = super::free_listen_port();
            let admin = admin.then(super::free_listen_port);
            let caddyfile = Self::write_caddyfile(dir.path(), upstream, port, admin, tls, bind);
            match run_caddy(dir.path(), &caddyfile, true, (bind.into(), port)) {
                Ok(child) => return (Self { child, port, dir }, admin),
                Err(said) if said.contains("address already in use") => last = said,
                Err(said) => panic!("caddy exited before it listened on {port}: {said}"),
            }
        }
        panic!("caddy found its ports taken three times: {last}")
    }

    /// The README's Caddyfile for this test in `dir`: site address, upstream and log path
    /// substituted; no admin endpoint unless `admin`. Returns its path.
    fn write_caddyfile(
        dir: &Path,
        upstream: SocketAddr,
        port: u16,
        admin: Option<u16>,
        tls: Option<(&Path, &Path)>,
        bind: std::net::Ipv4Addr,
    ) -> PathBuf {
        let address = match tls {
            Some(_) => format!("https://gw.test:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        let mut site = readme_snippet("caddyfile")
            .replace("gw.example.com", &address)
            .replace("127.0.0.1:18789", &upstream.to_string())
            .replace(
                "/var/log/caddy/access.log",
                &dir.join("access.log").display().to_string(),
            );
        if let Some((cert, key)) = tls {
            site = site.replacen(
                "{\n",
                &format!(
                    "{{\n\tbind {bind}\n\ttls {} {}\n",
                    cert.display(),
                    key.display()
                ),
                1,
            );
        }
        let admin = admin.map_or("off".to_owned(), |p| format!("127.0.0.1:{p}"));
        let globals = if tls.is_some() {
            "\tauto_https disable_redirects\n"
        } else {
            ""
        };
        let caddyfile = dir.join("Caddyfile");
        std::fs::write(
            &caddyfile,
            format!("{{\n\tadmin {admin}\n{globals}}}\n{site}"),
        )
        .unwrap();
        caddyfile
    }

    /// Waits until the access log has `n` lines and returns its path.
    pub fn wait_log_lines(&self, n: usize) -> PathBuf {
        let path = self.dir.path().join("access.log");
        let deadline = Instant::now() + super::wait_limit();
        while std::fs::read_to_string(&path)
            .map(|t| t.lines().count())
            .unwrap_or(0)
            < n
        {
            assert!(
                Instant::now() < deadline,
                "caddy did not log {n} lines: {:?}",
                std::fs::read_to_string(&path)
            );
            std::thread::yield_now();
        }
        path
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `caddy run` on `config` (a Caddyfile when `caddyfile`, else JSON) with `dir` as its
/// home and its stderr in `dir/caddy.err`, and waits until it listens on `listen`. `Err` with
/// its exit status and last lines if it exits first (say, "address already in use": a port
/// another server bound between the test's choice and Caddy's bind). A Caddy that neither
/// listens nor exits within the wait limit fails the test, with its last lines.
pub fn run_caddy(
    dir: &Path,
    config: &Path,
    caddyfile: bool,
    listen: (std::net::IpAddr, u16),
) -> Result<Child, String> {
    let log = dir.join("caddy.err");
    let mut cmd = Command::new("caddy");
    cmd.args(["run", "--config"]).arg(config);
    if caddyfile {
        cmd.args(["--adapter", "caddyfile"]);
    }
    let mut child = cmd
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir)
        .env("XDG_DATA_HOME", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("caddy.err"))
        .spawn()
        .expect("caddy (cargo xtask setup installs it)");
    let said = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    };
    let deadline = Instant::now() + super::wait_limit();
    while std::net::TcpStream::connect(listen).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{status}: {}", said()));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("caddy did not listen on {listen:?}: {}", said());
        }
        std::thread::yield_now();
    }
    Ok(child)
}

/// tcpdump recording one upstream port on `lo` into a pcap file.
pub struct Capture {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    marker_port: u16,
    /// Where the end marker is sent: an address whose packets cross the captured interface.
    marker_to: std::net::IpAddr,
    pub path: PathBuf,
}

impl Capture {
    /// Starts recording on `lo` and returns once tcpdump is listening.
    pub fn start(dir: &Path, name: &str, upstream_port: u16) -> Self {
        Self::start_on(dir, name, upstream_port, "lo", [127, 0, 0, 1].into())
    }

    /// The same on another interface (the host's end of a veth pair); `marker_to` is an
    /// address reached through it (the peer's).
    pub fn start_on(
        dir: &Path,
        name: &str,
        upstream_port: u16,
        interface: &str,
        marker_to: std::net::IpAddr,
    ) -> Self {
        let path = dir.join(format!("{name}.pcap"));
        let marker_port = super::free_port();
        let mut child = Command::new("tcpdump")
            // A 128 MiB capture buffer: bursts on loopback must not be dropped by the capture.
            .args([
                "-i", interface, "-n", "-U", "-l", "--print", "-B", "131072", "-w",
            ])
            .arg(&path)
            .arg(format!(
                "tcp port {upstream_port} or udp port {marker_port}"
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (cargo xtask setup installs it)");
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx2.send(l);
            }
        });
        let capture = Self {
            child,
            lines: rx,
            marker_port,
            marker_to,
            path,
        };
        capture.wait_line("listening on", |l| l.contains("listening on"));
        capture
    }

    fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + super::wait_limit();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if pred(&l) => return,
                Ok(_) => {}
                Err(_) => panic!("tcpdump: timed out waiting for {what}"),
            }
        }
    }

    /// Stops after every packet so far is written: a marker datagram goes through the same
    /// capture, and tcpdump printing it means everything before it is in the file.
    pub fn stop(mut self) -> PathBuf {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.send_to(
            b"edgewatch-capture-marker",
            (self.marker_to, self.marker_port),
        )
        .unwrap();
        let port = self.marker_port.to_string();
        self.wait_line("the marker", |l| l.contains("UDP") && l.contains(&port));
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        // `EDGEWATCH_SAVE_CAPTURES=tests/fixtures/hop cargo test --test hop_replay` refreshes
        // the committed fixtures.
        if let Some(dir) = std::env::var_os("EDGEWATCH_SAVE_CAPTURES") {
            let dest = Path::new(&dir).join(self.path.file_name().unwrap());
            std::fs::copy(&self.path, &dest).unwrap();
        }
        std::mem::take(&mut self.path)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real WebSocket client through nginx.
pub async fn ws_connect(
    port: u16,
    path: &str,
) -> Result<
    WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    let url = format!("ws://127.0.0.1:{port}{path}");
    tokio_tungstenite::connect_async(url)
        .await
        .map(|(ws, _)| ws)
}

/// A real WebSocket client through the proxy, sending this Origin (as a browser does).
pub async fn ws_connect_origin(
    port: u16,
    path: &str,
    origin: &str,
) -> Result<
    WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://127.0.0.1:{port}{path}")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("Origin", origin.parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

/// A real WebSocket client over `stream` (connected from wherever the test chose, e.g. a
/// client namespace) to `host` (the Host header and URL), sending `origin` when given.
pub async fn ws_over(
    stream: TcpStream,
    host: &str,
    path: &str,
    origin: Option<&str>,
) -> Result<WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{host}{path}").into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    tokio_tungstenite::client_async(req, stream)
        .await
        .map(|(ws, _)| ws)
}

/// Replays a capture through the real binary and returns its JSON records.
pub fn replay_json(capture: &Path, upstream_port: u16) -> Vec<serde_json::Value> {
    replay_with_logs(capture, upstream_port, &[])
}

/// The same, joined with access logs.
pub fn replay_with_logs(
    capture: &Path,
    upstream_port: u16,
    logs: &[&Path],
) -> Vec<serde_json::Value> {
    let mut cmd = Command::new(super::edgewatch_bin());
    cmd.arg("replay")
        .arg(capture)
        .args(["--port", &upstream_port.to_string(), "--output", "json"]);
    for log in logs {
        cmd.arg("--access-log").arg(log);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    super::json_lines(&String::from_utf8_lossy(&out.stdout))
}
