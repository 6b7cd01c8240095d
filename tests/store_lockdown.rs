//! The embedded store is locked down (issue: "the default store must not open the machine"):
//! against the real embedded ClickHouse, started the way edgewatch starts it, nobody gets in
//! without the secret, the secret opens edgewatch's database and nothing else, the server runs
//! unprivileged with an empty environment, a foreign listener on its port gets neither the
//! secret nor rows, a corrupted library is refused before it is loaded, and a data directory
//! an earlier (root-run) edgewatch left is handed over without losing rows.
#![allow(
    clippy::unwrap_used,
    reason = "integration tests: a panic is the failure"
)]
mod support;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
    process::{Command, Stdio},
};

use edgewatch::store::embedded::{self, USER};
use support::{store::ClickHouse, Sidecar};

/// A field of a /proc status text, parsed as hex (capability sets) or as the first number.
fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {key} in {status}"))
}

/// The checks every embedded server must pass, from /proc and the file system.
fn assert_unprivileged(pid: u32, data_dir: &Path, secret: &str) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let run_as = embedded::lookup_user(support::store::RUN_AS).map(|u| u.uid);
    for uid in status_field(&status, "Uid:").split_whitespace() {
        let uid: u32 = uid.parse().expect("uid");
        assert_ne!(uid, 0, "the server runs as root: {status}");
        if let Some(want) = run_as {
            assert_eq!(uid, want, "{status}");
        }
    }
    for gid in status_field(&status, "Gid:").split_whitespace() {
        assert_ne!(gid, "0", "{status}");
    }
    assert_eq!(
        status_field(&status, "Groups:"),
        "",
        "no supplementary groups"
    );
    for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(
            status_field(&status, set),
            "0000000000000000",
            "{set} {status}"
        );
    }
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(secret),
        "the secret is in argv"
    );
    let meta = std::fs::metadata(data_dir).expect("data dir");
    assert_eq!(meta.mode() & 0o7777, 0o700, "data dir mode");
    if let Some(want) = run_as {
        assert_eq!(meta.uid(), want, "data dir owner");
    }
    // Only the secret's hash reaches the server's files.
    let etc = embedded::etc_dir(data_dir);
    let users = std::fs::read_to_string(etc.join("users.xml")).expect("users.xml");
    assert!(!users.contains(secret), "the secret itself is in users.xml");
    let etc_meta = std::fs::metadata(&etc).expect("etc");
    assert_eq!(etc_meta.uid(), 0, "the server's configuration is root's");
    assert_eq!(etc_meta.mode() & 0o022, 0, "and only root may change it");
}

/// The three requests, and the same as user `default` in every way HTTP allows.
fn assert_refused_without_the_secret(ch_url: &str, request: impl Fn(&str, &str) -> (u16, String)) {
    let marker = std::env::temp_dir().join(format!("ew-lockdown-{}", std::process::id()));
    let attempts = [
        "SELECT * FROM file('/etc/shadow','LineAsString') LIMIT 2".to_owned(),
        format!(
            "INSERT INTO FUNCTION file('{}','LineAsString') SELECT 'x'",
            marker.display()
        ),
        "SELECT * FROM url('http://127.0.0.1:9464/metrics','LineAsString') LIMIT 1".to_owned(),
        "SELECT currentUser()".to_owned(),
    ];
    for sql in &attempts {
        for (how, url) in [
            ("no credentials", ch_url.to_owned()),
            ("?user=default", format!("{ch_url}/?user=default&password=")),
            (
                "?user=edgewatch without password",
                format!("{ch_url}/?user={USER}"),
            ),
        ] {
            let (status, body) = request(&url, sql);
            assert_eq!(status, 403, "{how}: {sql}: {body}");
            assert!(body.contains("authenticate as user edgewatch"), "{body}");
        }
    }
    // Basic credentials of another user are refused before ClickHouse sees them; the right
    // user with no password gets as far as ClickHouse, which refuses it.
    let basic = |user: &str| {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
        let mut resp = ureq::post(ch_url)
            .header("Authorization", &format!("Basic {token}"))
            .config()
            .http_status_as_error(false)
            .build()
            .send("SELECT currentUser()")
            .expect("answers");
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap_or_default())
    };
    for other in ["default", "edgewatchx"] {
        let (status, body) = basic(other);
        assert_eq!(status, 403, "{other}: {body}");
        assert!(body.contains("authenticate as user edgewatch"), "{body}");
    }
    let (status, body) = basic(USER);
    assert_ne!(status, 200, "{body}");
    assert!(body.contains("AUTHENTICATION_FAILED"), "{body}");
    assert!(!marker.exists(), "a file was written through the server");
}

#[test]
fn without_the_secret_nothing_gets_in() {
    let ch = support::store::shared();
    assert_refused_without_the_secret(&ch.url(), |url, sql| ch.request(url, sql, None, None));
    // X-ClickHouse-User: default (no key), and edgewatch with a wrong key.
    let (status, body) = ch.try_query("SELECT currentUser()", Some("default"), None);
    assert_eq!(status, 403, "{body}");
    let (status, body) = ch.try_query("SELECT currentUser()", Some(USER), Some("wrong"));
    assert_ne!(status, 200, "{body}");
    assert!(body.contains("AUTHENTICATION_FAILED"), "{body}");
    // /ping answers anyone (readiness), and says nothing else.
    let ping = ureq::get(&format!("{}/ping", ch.url()))
        .call()
        .expect("ping")
        .body_mut()
        .read_to_string()
        .expect("body");
    assert_eq!(ping, "Ok.\n");
    // With the secret: in.
    assert_eq!(ch.query("SELECT currentUser()").trim(), USER);
}

#[test]
fn with_the_secret_there_is_no_way_out_of_the_tables() {
    let ch = support::store::shared();
    let db = "t_lockdown";
    ch.query(&format!("CREATE DATABASE IF NOT EXISTS {db}"));
    ch.query(&format!(
        "CREATE TABLE IF NOT EXISTS {db}.own (s String) ENGINE = MergeTree ORDER BY s"
    ));
    ch.query(&format!("INSERT INTO {db}.own VALUES ('mine')"));
    assert_eq!(ch.query(&format!("SELECT s FROM {db}.own")).trim(), "mine");
    let out = std::env::temp_dir().join(format!("ew-lockdown-out-{}", std::process::id()));
    let refused: Vec<(String, &str)> = vec![
        (
            "SELECT * FROM file('/etc/shadow','LineAsString') LIMIT 2".into(),
            "READ ON FILE",
        ),
        (
            format!(
                "INSERT INTO FUNCTION file('{}','LineAsString') SELECT 'x'",
                out.display()
            ),
            "WRITE ON FILE",
        ),
        (
            "SELECT * FROM url('http://127.0.0.1:9464/metrics','LineAsString') LIMIT 1".into(),
            "READ ON URL",
        ),
        (
            "SELECT * FROM remote('127.0.0.1:9000', system.one)".into(),
            "READ ON REMOTE",
        ),
        (
            "SELECT * FROM s3('http://127.0.0.1:1/bucket/x.csv', 'CSV')".into(),
            "READ ON S3",
        ),
        (
            "SELECT * FROM mysql('127.0.0.1:3306', 'a', 'b', 'c', 'd')".into(),
            "READ ON MYSQL",
        ),
        (
            "SELECT * FROM executable('sh', 'TSV', 'x String')".into(),
            "does not exist inside user scripts folder",
        ),
        (
            format!("SELECT 1 INTO OUTFILE '{}'", out.display()),
            "INTO OUTFILE is not allowed",
        ),
        (
            format!(
                "CREATE DICTIONARY {db}.d (k UInt64, v String) PRIMARY KEY k \
                 SOURCE(FILE(path '/etc/passwd' format 'TSV')) LAYOUT(FLAT()) LIFETIME(0)"
            ),
            "CREATE DICTIONARY",
        ),
        (
            format!("CREATE TABLE {db}.f (s String) ENGINE = File(TSV, '/etc/passwd')"),
            "TABLE ENGINE ON File",
        ),
        (
            format!("CREATE TABLE {db}.u (s String) ENGINE = URL('http://127.0.0.1:1/', CSV)"),
            "TABLE ENGINE ON URL",
        ),
        ("SYSTEM SHUTDOWN".into(), "SYSTEM SHUTDOWN"),
        ("SYSTEM STOP LISTEN HTTP".into(), "SYSTEM LISTEN"),
        ("SYSTEM DROP DNS CACHE".into(), "SYSTEM DROP DNS CACHE"),
        (
            "SELECT * FROM system.users".into(),
            "SELECT ON system.users",
        ),
        (
            "SELECT * FROM system.processes".into(),
            "SELECT ON system.processes",
        ),
        (
            "CREATE USER intruder IDENTIFIED BY 'x'".into(),
            "CREATE USER",
        ),
        ("GRANT ALL ON *.* TO edgewatch".into(), "GRANT"),
        ("CREATE DATABASE other".into(), "CREATE DATABASE ON other"),
    ];
    for (sql, why) in &refused {
        let (status, body) = ch.try_query(sql, Some(USER), Some(&ch.secret));
        assert_ne!(status, 200, "allowed: {sql}: {body}");
        assert!(body.contains(why), "{sql}: expected {why:?} in {body}");
    }
    assert!(!out.exists(), "a file was written through the server");
    // Still serving after all that.
    assert_eq!(
        ch.query(&format!("SELECT count() FROM {db}.own")).trim(),
        "1"
    );
}

#[test]
fn the_server_runs_unprivileged() {
    let ch = support::store::shared();
    let pid = ch.pid().expect("running");
    assert_unprivileged(pid, &ch.data_dir(), &ch.secret);
    let secret = std::fs::metadata(ch.secret_file()).expect("secret file");
    assert_eq!(secret.mode() & 0o777, 0o600);
    assert_eq!(secret.uid(), 0);
    assert!(ch.secret.len() >= 32, "at least 128 bits, hex");
}

#[test]
fn a_corrupted_library_is_refused_before_it_is_loaded() {
    support::require_root();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    // The real library with one byte changed would do the same; a small stand-in keeps the
    // test light: what is checked is the hash, before anything is loaded.
    let bad = dir.path().join("libchdb.so");
    std::fs::write(&bad, b"\x7fELF not the pinned ClickHouse build").unwrap();
    let secret = dir.path().join("secret");
    embedded::load_or_create_secret(&secret).unwrap();
    let port = support::free_port();
    let out = Command::new(support::edgewatch_bin())
        .arg("embedded-clickhouse")
        .arg("--library")
        .arg(&bad)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--http-port", &port.to_string()])
        .arg("--secret-file")
        .arg(&secret)
        .args([
            "--database",
            "edgewatch",
            "--run-as",
            support::store::RUN_AS,
        ])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("is not the pinned build"), "{stderr}");
    assert!(stderr.contains("not loading it"), "{stderr}");
    assert!(!embedded::ping(port), "nothing listens");
    // Refused before anything else happened: no data directory was made.
    assert!(!dir.path().join("data").exists());
}

#[test]
fn a_root_owned_data_directory_is_handed_over_without_losing_rows() {
    support::require_root();
    let mut ch = ClickHouse::start();
    ch.query("CREATE DATABASE t_handover");
    ch.query("CREATE TABLE t_handover.x (n UInt32) ENGINE = MergeTree ORDER BY n");
    ch.query("INSERT INTO t_handover.x SELECT number FROM numbers(1000)");
    ch.stop();
    // What an earlier edgewatch left: the server ran as root, so root owns everything.
    let status = Command::new("chown")
        .args(["-R", "root:root"])
        .arg(ch.data_dir())
        .status()
        .expect("chown");
    assert!(status.success());
    std::fs::set_permissions(ch.data_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    ch.restart();
    assert_eq!(ch.count("SELECT count() FROM t_handover.x"), 1000);
    assert_eq!(ch.count("SELECT sum(n) FROM t_handover.x"), 499_500);
    assert_unprivileged(ch.pid().expect("running"), &ch.data_dir(), &ch.secret);
    // Nothing inside is root's any more.
    let found = Command::new("find")
        .arg(ch.data_dir())
        .args(["-user", "root"])
        .output()
        .expect("find");
    assert_eq!(
        String::from_utf8_lossy(&found.stdout),
        "",
        "root-owned entries left"
    );
}

/// A config for the default store (no `url`) in `dir`, on `port`.
fn default_store_config(dir: &Path, port: u16, watched: u16) -> String {
    format!(
        "[hop]\nenabled = false\n[nat]\nenabled = false\n\
         [exposure]\nwatched_ports = [{watched}]\nrescan_interval = \"1h\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\
         [store]\ndatabase = \"t_default\"\nspool_dir = {:?}\nbatch_max_age = \"50ms\"\n\
         snapshot_interval = \"1h\"\n\
         [store.embedded]\ndata_dir = {:?}\ncache_dir = {:?}\nhttp_port = {port}\nsecret_file = {:?}\n",
        dir.join("spool").display().to_string(),
        dir.join("state/clickhouse").display().to_string(),
        support::store::CACHE_DIR,
        dir.join("state/clickhouse.secret").display().to_string(),
    )
}

#[test]
fn the_default_store_end_to_end_and_a_foreign_listener() {
    support::require_root();
    support::store::library();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let port = support::free_port();
    let watched = support::free_port();
    let config = default_store_config(dir.path(), port, watched);
    let mut sidecar = Sidecar::start(&config);
    sidecar.lines.wait_for("the store", |v| {
        v["type"] == "store" && v["event"] == "ready"
    });
    // The secret was made on first start: root's alone.
    let secret_file = dir.path().join("state/clickhouse.secret");
    let meta = std::fs::metadata(&secret_file).expect("secret file");
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), 0);
    let secret = embedded::read_secret(&secret_file).expect("secret");
    // The server edgewatch started: unprivileged, empty environment, nothing of the secret in
    // argv.
    let child = std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| e.ok()?.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            ppid == Some(sidecar.pid())
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("embedded-clickhouse"))
        })
        .expect("the embedded server, a child of the sidecar");
    assert_unprivileged(child, &dir.path().join("state/clickhouse"), &secret);
    let environ = std::fs::read(format!("/proc/{child}/environ")).expect("environ");
    assert!(environ.is_empty(), "the server's environment: {environ:?}");
    // The sidecar itself kept only what watching needs, and said so.
    let kept = &sidecar.ready["privileges"]["kept"];
    assert_eq!(
        kept,
        &serde_json::json!([
            "CAP_DAC_READ_SEARCH",
            "CAP_KILL",
            "CAP_NET_ADMIN",
            "CAP_SYS_PTRACE"
        ]),
        "{}",
        sidecar.ready
    );
    assert_eq!(sidecar.ready["privileges"]["no_new_privs"], true);
    // From outside, the requests are refused.
    let url = format!("http://127.0.0.1:{port}");
    assert_refused_without_the_secret(&url, |u, sql| {
        let mut resp = ureq::post(u)
            .config()
            .http_status_as_error(false)
            .build()
            .send(sql)
            .expect("answers");
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap_or_default())
    });
    // A drift, so there is something to read back.
    let holder = support::SocketHolder::tcp("0.0.0.0", watched);
    sidecar.lines.wait_for("the drift alert", |v| {
        v["type"] == "alert" && v["state"] == "firing" && v["evidence"]["port"] == watched
    });
    holder.close();
    sidecar.lines.wait_for("the resolution", |v| {
        v["type"] == "alert" && v["state"] == "resolved" && v["evidence"]["port"] == watched
    });
    let mut cfg = tempfile::NamedTempFile::new().expect("config");
    cfg.write_all(config.as_bytes()).unwrap();
    // `edgewatch timeline` reuses the running server: its listener belongs to the server's
    // account and it accepts the secret from the same file.
    let wait_rows = std::time::Instant::now();
    let timeline = loop {
        let out = Command::new(support::edgewatch_bin())
            .args([
                "timeline",
                "--since",
                "-10m",
                "--port",
                &watched.to_string(),
            ])
            .args(["--output", "json", "--config"])
            .arg(cfg.path())
            .output()
            .expect("timeline");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("using the embedded ClickHouse that is already running"),
            "{stderr}"
        );
        let t: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let alerts = t["events"]
            .as_array()
            .map(|e| e.iter().filter(|e| e["kind"] == "alert").count())
            .unwrap_or(0);
        if alerts >= 2 || wait_rows.elapsed() > support::wait_limit() {
            break t;
        }
    };
    let alerts = timeline["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "alert")
        .count();
    assert!(alerts >= 2, "firing and resolved read back: {timeline:#}");
    sidecar.signal("TERM");
    sidecar
        .lines
        .wait_for("the store summary", |v| v["type"] == "store_summary");
    drop(sidecar);

    // A foreign program on the embedded port (root's, not the server's account): it answers
    // /ping like ClickHouse, and would log any request it gets.
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free again");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { break };
            let mut head = String::new();
            let mut reader = BufReader::new(s.try_clone().expect("clone"));
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let _ = tx.send(head);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nOk.\n",
            );
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        }
    });
    let out = Command::new(support::edgewatch_bin())
        .args(["timeline", "--since", "-10m", "--config"])
        .arg(cfg.path())
        .stdin(Stdio::null())
        .output()
        .expect("timeline");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("held by another program"), "{stderr}");
    assert!(
        stderr.contains("not sending it the secret or any rows"),
        "{stderr}"
    );
    let heads: Vec<String> = rx.try_iter().collect();
    assert!(
        heads.iter().all(|h| h.starts_with("GET /ping")),
        "only the readiness probe reached it: {heads:?}"
    );
    assert!(
        heads.iter().all(|h| !h.contains(&secret)),
        "the secret reached a foreign listener"
    );
}
