//! Test harness: runs the real `edgewatch` binary, real child processes and real network
//! namespaces, and synchronises on the lines they print, never on sleeps. The timeouts here
//! are only safety nets that turn a hang into a failure with the lines seen so far.
#![allow(
    dead_code,
    clippy::unwrap_used,
    reason = "test harness: panics are the failures"
)]

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod cluster;
pub mod gateway;
pub mod hop;
pub mod store;
pub mod tls;

/// Longest a test waits for one expected line before failing: 30 s, or
/// `EDGEWATCH_TEST_WAIT_SECS` (the qemu guest runs under software emulation, many times slower).
pub fn wait_limit() -> Duration {
    std::env::var("EDGEWATCH_TEST_WAIT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(30), Duration::from_secs)
}

pub fn edgewatch_bin() -> PathBuf {
    // `EDGEWATCH_BIN` where the test binary runs away from its build tree (the qemu guest of
    // `cargo xtask vm-test`); otherwise the binary cargo built beside the tests.
    if let Some(bin) = std::env::var_os("EDGEWATCH_BIN") {
        return PathBuf::from(bin);
    }
    PathBuf::from(env!("CARGO_BIN_EXE_edgewatch"))
}

/// The integration tests load eBPF programs and create namespaces: they need root. They fail
/// (not skip) without it, so a green run always means the probes ran.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests load the real probes and need root: run `cargo xtask test` as root"
    );
}

/// A port that is free on loopback right now.
///
/// Never one it gave this process before: the kernel may give a later bind the port of an
/// earlier one that is closed, and a test's "two free ports" were once one (its watched port
/// was also its dead upstream, and the upstream-down alert came before the test looked).
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if given(port) {
            return port;
        }
    }
}

/// Whether `port` was not given out before in this process (and is now).
fn given(port: u16) -> bool {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    GIVEN.lock().unwrap_or_else(|p| p.into_inner()).insert(port)
}

/// A port for a dead or stale upstream: nothing listens on it, and nothing takes it by
/// chance. A [`free_port`] is in the ephemeral range, so once released any `bind(0)` (a
/// metrics endpoint, a server) may get it; CI on 3c466b2 found one listening. This one is a
/// [`free_listen_port`], below that range, that no test of this process is given again.
pub fn closed_port() -> u16 {
    free_listen_port()
}

/// A port that is free on loopback now and lies below the kernel's ephemeral range, so no
/// outgoing connection can take it before a server binds it (a [`free_port`] can be taken by
/// any connect in between). Still only free *now*: callers retry when the bind fails.
pub fn free_listen_port() -> u16 {
    let lo: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let span = lo.saturating_sub(10_000).max(1);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let mut x = seed ^ std::process::id().rotate_left(16);
    for _ in 0..1000 {
        // xorshift32: a spread of candidates, different per call and per process.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let port = 10_000 + u16::try_from(x % u32::from(span)).unwrap();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && given(port) {
            return port;
        }
    }
    free_port()
}

/// Lines read from a child's stdout, parsed as JSON where possible.
pub struct Lines {
    rx: Receiver<String>,
    seen: Vec<String>,
    discard: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Lines {
    pub fn new(stdout: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        let discard = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = discard.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Keep draining, cheaply, so the child never blocks on a full pipe.
                    let _ = std::io::copy(&mut reader, &mut std::io::sink());
                    break;
                }
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx.send(line.trim_end_matches('\n').to_owned()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
            discard,
        }
    }

    /// From now on the output is drained and thrown away (benchmarks: the consumer of the
    /// sidecar's output is not the sidecar's cost).
    pub fn discard_from_now(&self) {
        self.discard
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits for the next JSON line matching `pred`; earlier lines are kept in `seen`.
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + wait_limit();
        loop {
            let line = self.next_line(what, deadline);
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if pred(&v) {
                    return v;
                }
            }
        }
    }

    /// Watches the output for `within`: the first JSON line matching `pred`, or `None` when
    /// none came in that time (the output going on, or ending, meanwhile). For asserting that
    /// something does not happen during a stated period.
    pub fn wait_for_within(
        &mut self,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if pred(&v) {
                            return Some(v);
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "output ended while watching; lines seen:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for a plain-text line (a server's log) that satisfies `pred`.
    pub fn wait_for_text(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + wait_limit();
        loop {
            let line = self.next_line(what, deadline);
            if pred(&line) {
                return line;
            }
        }
    }

    fn next_line(&mut self, what: &str, deadline: Instant) -> String {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "timed out waiting for {what}; lines seen:\n{}",
                    self.seen.join("\n")
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!(
                    "output ended before {what}; lines seen:\n{}",
                    self.seen.join("\n")
                )
            }
        }
    }

    /// Every line received so far, parsed.
    pub fn seen_json(&self) -> Vec<Value> {
        self.seen
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// A running `edgewatch run --output json`.
pub struct Sidecar {
    child: Child,
    pub lines: Lines,
    pub ready: Value,
    /// Scrapes over one kept-alive connection, as Prometheus does (a connection per scrape
    /// costs the sidecar an accept and a new HTTP connection each time: tests and benchmarks
    /// that poll the metrics would measure that).
    scraper: ureq::Agent,
    _config: tempfile::NamedTempFile,
}

impl Sidecar {
    /// Starts the sidecar with this config (TOML) and waits for its `ready` line.
    pub fn start(config: &str) -> Self {
        Self::start_in(None, config)
    }

    /// The same, inside a network namespace (through nsenter, which keeps tracefs).
    pub fn start_in(netns: Option<&Netns>, config: &str) -> Self {
        Self::start_with(netns, config, &["--records"])
    }

    /// As users run it: without `--records` (no hop records or joined requests on stdout).
    pub fn start_quiet(config: &str) -> Self {
        Self::start_with(None, config, &[])
    }

    /// With extra arguments to `run` (e.g. `--records`).
    pub fn start_with_args(config: &str, extra: &[&str]) -> Self {
        Self::start_with(None, config, extra)
    }

    fn start_with(netns: Option<&Netns>, config: &str, extra: &[&str]) -> Self {
        require_root();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(config.as_bytes()).unwrap();
        // Tests of other parts run without the ClickHouse store unless they configure one.
        if !config.contains("[store]") {
            file.write_all(b"\n[store]\nenabled = false\n").unwrap();
        }
        // The probes see every process: another test's nginx failing to connect to its own
        // dead port would be a stale port here too. Only tests about that judge proxies.
        if !config.contains("stale_upstream_port") {
            file.write_all(b"\n[alerts.stale_upstream_port]\nproxies = []\n")
                .unwrap();
        }
        // Likewise the proxy configuration: every nginx master on the machine (another
        // test's) would be read. Only tests about that read it.
        if !config.contains("[proxy]") {
            file.write_all(b"\n[proxy]\nenabled = false\n").unwrap();
        }
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.path())).arg(edgewatch_bin());
                c
            }
            None => Command::new(edgewatch_bin()),
        };
        // With --records, every record on stdout: the tests read them.
        cmd.args(["run", "--output", "json"])
            .args(extra)
            .arg("--config")
            .arg(file.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let mut lines = Lines::new(child.stdout.take().unwrap());
        let ready = lines.wait_for("the ready line", |v| v["type"] == "ready");
        Self {
            child,
            lines,
            ready,
            scraper: ureq::Agent::new_with_defaults(),
            _config: file,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the metric `name` (see [`metric_sum`]) passes `above`, and returns its
    /// value. The scrapes are 10 ms apart: each takes CPU the sidecar needs to get there.
    pub fn wait_metric_above(&self, name: &str, above: f64) -> f64 {
        let deadline = Instant::now() + wait_limit();
        loop {
            let value = metric_sum(&self.metrics(), name);
            if value > above {
                return value;
            }
            assert!(Instant::now() < deadline, "{name} stayed at {value}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The metrics endpoint's `/metrics` text.
    pub fn metrics(&self) -> String {
        let addr = self.ready["metrics"].as_str().expect("metrics address");
        self.scraper
            .get(&format!("http://{addr}/metrics"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    }

    /// The CPU (user + system) the sidecar has used so far, in seconds, from its own
    /// `process_cpu_seconds_total` (`getrusage`: microseconds, every thread's, where
    /// `/proc/PID/stat` counts 10 ms ticks: a tenth of what a 4-second run at 10,000 requests
    /// a second costs it).
    pub fn cpu_seconds(&self) -> f64 {
        let m = self.metrics();
        assert!(
            m.contains("\nprocess_cpu_seconds_total "),
            "no process_cpu_seconds_total in the metrics:\n{m}"
        );
        metric_sum(&m, "process_cpu_seconds_total")
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        // SIGTERM so it detaches cleanly; fall back to SIGKILL.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::yield_now();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process (python3) holding a socket, until dropped or `close`d.
pub struct SocketHolder {
    child: Child,
    stdin: Option<ChildStdin>,
    pub pid: u32,
    pub comm: String,
}

/// What the holder binds; passed in the environment so its argv can look like anything.
const HOLDER: &str = r#"
import os, socket, sys
kind, host, port = os.environ["EW_KIND"], os.environ["EW_HOST"], int(os.environ["EW_PORT"])
v6only = os.environ.get("EW_V6ONLY") == "1"
cgroup = os.environ.get("EW_CGROUP")
if cgroup:
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if fam == socket.AF_INET6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
s.bind((host, port))
if kind == "tcp":
    s.listen(8)
print("bound", flush=True)
sys.stdin.read()
s.close()
print("closed", flush=True)
"#;

/// How to start a [`SocketHolder`].
#[derive(Default)]
pub struct HolderSpec<'a> {
    pub kind: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub v6only: bool,
    pub netns: Option<&'a Netns>,
    /// Run the interpreter through this path (a symlink, to get another `comm`).
    pub program: Option<&'a std::path::Path>,
    /// Extra arguments after the script (they only change the command line).
    pub args: &'a [&'a str],
    /// A cgroup v2 directory to move into before binding.
    pub cgroup: Option<&'a std::path::Path>,
}

impl SocketHolder {
    pub fn spawn(spec: HolderSpec<'_>) -> Self {
        let python = PathBuf::from("python3");
        let program = spec.program.unwrap_or(&python);
        let mut cmd = match spec.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.path())).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(["-c", HOLDER])
            .args(spec.args)
            .env("EW_KIND", spec.kind)
            .env("EW_HOST", spec.host)
            .env("EW_PORT", spec.port.to_string())
            .env("EW_V6ONLY", if spec.v6only { "1" } else { "0" });
        if let Some(cg) = spec.cgroup {
            cmd.env("EW_CGROUP", cg);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(
            line.trim(),
            "bound",
            "the socket holder could not bind {}:{}",
            spec.host,
            spec.port
        );
        let pid = child.id();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim()
            .to_owned();
        // Keep reading so `closed` does not block on a full pipe.
        std::thread::spawn(move || for _ in out.lines() {});
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            pid,
            comm,
        }
    }

    pub fn tcp(host: &str, port: u16) -> Self {
        Self::spawn(HolderSpec {
            kind: "tcp",
            host,
            port,
            ..Default::default()
        })
    }

    pub fn tcp6_only(host: &str, port: u16) -> Self {
        Self::spawn(HolderSpec {
            kind: "tcp",
            host,
            port,
            v6only: true,
            ..Default::default()
        })
    }

    pub fn udp(host: &str, port: u16) -> Self {
        Self::spawn(HolderSpec {
            kind: "udp",
            host,
            port,
            ..Default::default()
        })
    }

    pub fn tcp_in(ns: &Netns, host: &str, port: u16) -> Self {
        Self::spawn(HolderSpec {
            kind: "tcp",
            host,
            port,
            netns: Some(ns),
            ..Default::default()
        })
    }

    /// Closes the socket (the process exits after closing it).
    pub fn close(mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for SocketHolder {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real python3 interpreter (not a shim script), so a symlink to it changes `comm`.
pub fn python_executable() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Where the cgroup v2 hierarchy is mounted (pure v2 or hybrid).
pub fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .expect("a cgroup2 mount")
}

/// A network namespace made for one test, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        require_root();
        let name = format!("ew-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Runs a command inside the namespace; panics if it fails.
    pub fn exec(&self, args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.path()))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?} in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs edgewatch inside the namespace and returns (exit code, stdout, stderr).
    pub fn edgewatch(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.path()))
            .arg(edgewatch_bin())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Parses JSON lines (one object per line).
/// A committed recording of the hop (tests/fixtures/hop/NAME).
pub fn fixture(name: &str) -> String {
    format!(
        "{}/../tests/fixtures/hop/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// A config that watches these ports, with a free loopback metrics port.
/// Runs `edgewatch ARGS [--config CONFIG]`, asserts it succeeded and returns its stdout.
pub fn edgewatch_stdout(args: &[&str], config: Option<&std::path::Path>) -> String {
    let mut cmd = Command::new(edgewatch_bin());
    cmd.args(args);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let out = cmd.output().expect("edgewatch");
    assert!(
        out.status.success(),
        "edgewatch {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A config file holding `text` (removed when dropped).
pub fn config_file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("config");
    std::fs::write(f.path(), text).expect("write config");
    f
}

pub fn config_watching(ports: &[u16], extra: &str) -> String {
    format!(
        "[exposure]\nwatched_ports = {ports:?}\nrescan_interval = \"1h\"\n{extra}\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n"
    )
}

/// `sidecar/deploy/compose.example.yaml` as JSON, read with Python's YAML (Debian's
/// python3-yaml): the file must parse.
pub fn compose_example() -> serde_json::Value {
    let compose =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/compose.example.yaml");
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(&compose)
        .output()
        .expect("python3 (cargo xtask test installs python3-yaml)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// A metric of a `/metrics` scrape: the sum of its series (`name` alone or `name{labels}`),
/// 0 when absent.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// User + system clock ticks from a `/proc/.../stat` line (a process's or a thread's).
pub fn stat_ticks(stat: &str) -> Option<u64> {
    // Fields after the parenthesised comm: state is field 3; utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A process's resident set (VmRSS), in KiB, from /proc/PID/status.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// CPU seconds (user + system) a process has used so far, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ticks = stat_ticks(&stat).unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}
