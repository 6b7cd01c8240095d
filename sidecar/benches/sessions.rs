//! `cargo bench --bench sessions` (as root): the sidecar's memory while it follows many
//! concurrent WebSocket sessions, as deployed (no `--records`, rows to a real ClickHouse).
//!
//! Real WebSocket clients (this process) hold up to 10,000 sessions through real nginx to a
//! WebSocket upstream (a child process: the clients' and the upstream's sockets together would
//! pass this machine's per-process limit of open files). Every session sends a text frame every
//! few seconds and reads its echo. The sidecar's RSS is printed at 0, 1k, 5k and 10k sessions
//! and after holding 10k for a while (`EDGEWATCH_BENCH_HOLD_SECS`, default 180), with the
//! memory per session, the kernel's drop counters (goal: zero) and, once every session has
//! closed, the WebSocket records the sidecar produced (it must have seen every session: a
//! small RSS from a sidecar that missed them would be no figure). Goal: RSS <= 64 MiB at 10k.
#![allow(
    clippy::unwrap_used,
    reason = "a benchmark: a failure is a panic with a message"
)]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::{
    io::BufRead as _,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use support::{hop::ws_connect, rss_kib, store::ClickHouse, Sidecar};
use tokio_tungstenite::tungstenite::Message;

const STEPS: [usize; 3] = [1_000, 5_000, 10_000];
/// Each session sends a frame this often (with a per-session offset, so they spread).
const FRAME_EVERY: Duration = Duration::from_secs(5);
const GOAL_MIB: f64 = 64.0;

/// The value of one metric line (`name{labels}`), 0 when absent.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// The soft limit of open files raised to the hard one (20,000 here): 10,000 client sockets.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid resource and a pointer to an rlimit we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

/// The upstream, in this binary re-run as a child (`EDGEWATCH_BENCH_UPSTREAM=1`): prints its
/// port, serves until its stdin closes.
fn upstream_child() {
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let addr = support::hop::start_upstream().await;
        println!("{}", addr.port());
        let _ = tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            while std::io::stdin().read_line(&mut s).is_ok_and(|n| n > 0) {}
        })
        .await;
    });
}

/// nginx with enough workers and descriptors for 10,000 proxied sessions (each holds two).
struct BigNginx {
    dir: tempfile::TempDir,
    port: u16,
}

impl BigNginx {
    fn start(upstreams: &[u16]) -> Self {
        let servers: String = upstreams
            .iter()
            .map(|p| format!("server 127.0.0.1:{p}; "))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let port = support::free_listen_port();
        let d = dir.path().display();
        let conf = format!(
            "worker_processes 4;\nworker_rlimit_nofile 19000;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 16000; }}\n\
             http {{\n access_log off;\n upstream up {{ {servers}}}\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               server {{ listen 127.0.0.1:{port};\n\
                 location / {{ proxy_pass http://up; proxy_http_version 1.1;\n\
                   proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\";\n\
                   proxy_set_header X-Request-ID $request_id; proxy_read_timeout 1h; }}\n\
               }}\n}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let ok = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "nginx did not start; see {d}/error.log");
        let deadline = Instant::now() + support::wait_limit();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::yield_now();
        }
        Self { dir, port }
    }
}

impl Drop for BigNginx {
    fn drop(&mut self) {
        let _ = Command::new("nginx")
            .arg("-p")
            .arg(self.dir.path())
            .arg("-c")
            .arg(self.dir.path().join("nginx.conf"))
            .args(["-s", "stop"])
            .status();
    }
}

/// One session: connect, read the challenge, then a frame every [`FRAME_EVERY`] and its echo,
/// until `stop`; then a clean close.
async fn session(
    port: u16,
    i: usize,
    stop: Arc<AtomicBool>,
    up: Arc<AtomicU64>,
    frames: Arc<AtomicU64>,
) {
    let mut ws = ws_connect(port, "/ws").await.unwrap();
    ws.next().await.unwrap().unwrap();
    up.fetch_add(1, Ordering::Relaxed);
    // Spread the sessions' frames over the period.
    let offset = FRAME_EVERY.mul_f64((i % 1000) as f64 / 1000.0);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, FRAME_EVERY);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        ws.send(Message::text(r#"{"type":"event","event":"tick","seq":1}"#))
            .await
            .unwrap();
        ws.next().await.unwrap().unwrap();
        frames.fetch_add(1, Ordering::Relaxed);
    }
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
}

fn main() {
    if std::env::var_os("EDGEWATCH_BENCH_UPSTREAM").is_some() {
        upstream_child();
        return;
    }
    support::require_root();
    let nofile = raise_nofile();
    assert!(
        nofile > 10_500,
        "10,000 client sockets need more open files than {nofile}"
    );
    let hold = Duration::from_secs(
        std::env::var("EDGEWATCH_BENCH_HOLD_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(180),
    );
    // Two upstream processes (nginx balances between them): each holds two descriptors per
    // session, and one process may open at most 20,000 here.
    let mut upstreams: Vec<(std::process::Child, u16)> = (0..2)
        .map(|_| {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .env("EDGEWATCH_BENCH_UPSTREAM", "1")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut port_line = String::new();
            std::io::BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut port_line)
                .unwrap();
            (child, port_line.trim().parse().unwrap())
        })
        .collect();
    let ports: Vec<u16> = upstreams.iter().map(|u| u.1).collect();
    let nginx = BigNginx::start(&ports);

    // As deployed: rows to a real ClickHouse (a server of its own, not counted), no records
    // on stdout.
    let ch = ClickHouse::start();
    let spool = tempfile::tempdir().unwrap();
    let config = format!(
        "[hop]\nports = {ports:?}\ndocker_bridges = false\n\
         [exposure]\nrescan_interval = \"1h\"\n[nat]\nenabled = false\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n{}",
        ch.store_config("t_bench_sessions", spool.path())
    );
    let sidecar = Sidecar::start_quiet(&config);
    sidecar.lines.discard_from_now();
    let pid = sidecar.pid();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let up = Arc::new(AtomicU64::new(0));
    let frames = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    // Read after the settling time each step below gets too: a sidecar just started still
    // holds what starting freed until its allocator's next purge.
    std::thread::sleep(FRAME_EVERY * 2);
    let mut rss = vec![(0usize, rss_kib(pid))];
    println!("== sidecar memory with concurrent WebSocket sessions (nginx -> test upstream)");
    println!("sessions      0: RSS {:6.1} MiB", rss[0].1 as f64 / 1024.0);
    for target in STEPS {
        while tasks.len() < target {
            let i = tasks.len();
            tasks.push(rt.spawn(session(
                nginx.port,
                i,
                stop.clone(),
                up.clone(),
                frames.clone(),
            )));
            // Connects in waves of 100, each waited for (nginx's accept queue stays short).
            if tasks.len() % 100 == 0 {
                let want = tasks.len() as u64;
                let deadline = Instant::now() + Duration::from_secs(60);
                while up.load(Ordering::Relaxed) < want {
                    if let Some(t) = tasks.iter_mut().find(|t| t.is_finished()) {
                        // A session ended early: its panic says why.
                        rt.block_on(t).unwrap();
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{} of {want} sessions came up",
                        up.load(Ordering::Relaxed)
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        // A few frame periods at this level: every session has sent and been followed.
        std::thread::sleep(FRAME_EVERY * 2);
        let r = rss_kib(pid);
        println!("sessions {target:6}: RSS {:6.1} MiB", r as f64 / 1024.0);
        rss.push((target, r));
    }
    let frames_before = frames.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut peak = rss.last().unwrap().1;
    while started.elapsed() < hold {
        std::thread::sleep(Duration::from_secs(5));
        peak = peak.max(rss_kib(pid));
    }
    let held = rss_kib(pid);
    let sent = frames.load(Ordering::Relaxed) - frames_before;
    println!(
        "held {} sessions for {} s ({sent} frames echoed, {:.0} frames/s): RSS {:.1} MiB, peak {:.1} MiB",
        STEPS[2],
        hold.as_secs(),
        sent as f64 / hold.as_secs_f64(),
        held as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    // Every session ended: the sidecar must have one WebSocket record for each.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut metrics;
    loop {
        metrics = sidecar.metrics();
        if metric(&metrics, "edgewatch_records_total{kind=\"websocket\"}") >= STEPS[2] as u64
            || Instant::now() > deadline
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let ws_records = metric(&metrics, "edgewatch_records_total{kind=\"websocket\"}");
    let drops = support::metric_sum(&metrics, "edgewatch_kernel_drops_total") as u64;
    let limit_drops = support::metric_sum(&metrics, "edgewatch_limit_drops_total") as u64;
    let at_10k = rss.last().unwrap().1 as f64 / 1024.0;
    let per_session = (rss[3].1 as f64 - rss[0].1 as f64) * 1024.0 / STEPS[2] as f64;
    println!(
        "websocket records after the sessions closed: {ws_records} (of {})",
        STEPS[2]
    );
    println!("kernel drops: {drops} (goal: 0); tracker/join limit drops: {limit_drops}");
    println!("memory per session: {per_session:.0} bytes (RSS at 10k minus RSS at 0, / 10k)");
    println!(
        "RSS at 10k sessions: {at_10k:.1} MiB (goal: <= {GOAL_MIB} MiB): {}",
        if at_10k <= GOAL_MIB && peak as f64 / 1024.0 <= GOAL_MIB {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "summary: sessions rss_10k_mib={at_10k:.1} peak_mib={:.1} per_session_bytes={per_session:.0} kernel_drops={drops} ws_records={ws_records}",
        peak as f64 / 1024.0
    );
    assert_eq!(
        ws_records, STEPS[2] as u64,
        "the sidecar did not report every session"
    );
    drop(sidecar);
    drop(nginx);
    for (child, _) in &mut upstreams {
        drop(child.stdin.take());
        let _ = child.wait();
    }
}
