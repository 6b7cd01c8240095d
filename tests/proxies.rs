//! The proxy's configuration, read from a real running nginx (Debian's, its master started by
//! the test with its own files and an `include` glob): each `config.*` finding with the right
//! file and line, none on a corrected configuration after a reload, and the same from the
//! files offline (`--proxy-config`).
mod support;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
};

use serde_json::Value;
use support::{edgewatch_bin, free_port, json_lines};

/// A real nginx master (not `master_process off`: the command line must be the master's).
struct Master {
    child: Child,
    dir: tempfile::TempDir,
    edge: u16,
}

impl Master {
    fn start(site: &str, log_format: &str) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path().display().to_string();
        std::fs::create_dir(dir.path().join("conf.d")).expect("conf.d");
        let edge = free_port();
        write(dir.path(), log_format, site, edge);
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&d)
            .arg("-c")
            .arg(format!("{d}/nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .spawn()
            .expect("nginx (cargo xtask setup installs nginx-light)");
        let deadline = std::time::Instant::now() + support::wait_limit();
        while std::net::TcpStream::connect(("127.0.0.1", edge)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nginx did not start: {d}/error.log"
            );
            std::thread::yield_now();
        }
        Self { child, dir, edge }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// New files, then SIGHUP (nginx -s reload), waiting until the new site answers.
    fn reload(&self, site: &str, log_format: &str) {
        write(self.dir.path(), log_format, site, self.edge);
        let status = Command::new("kill")
            .args(["-HUP", &self.pid()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// `nginx.conf` (its access_log on line 7) including `conf.d/*.conf`.
fn write(dir: &Path, log_format: &str, site: &str, edge: u16) {
    let d = dir.display();
    let main = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 16; }}\n\
         http {{\n  {log_format}\n  access_log {d}/access.log{fmt};\n\
           client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
           include conf.d/*.conf;\n}}\n",
        fmt = if log_format.is_empty() { "" } else { " edgewatch" },
    );
    std::fs::write(dir.join("nginx.conf"), main).expect("nginx.conf");
    std::fs::write(
        dir.join("conf.d/gw.conf"),
        site.replace("EDGE", &edge.to_string()),
    )
    .expect("gw.conf");
}

fn proxies(args: &[&str], gateway: u16) -> (i32, Vec<Value>) {
    let config = tempfile::NamedTempFile::new().expect("config");
    std::fs::write(config.path(), format!("[hop]\nports = [{gateway}]\n")).expect("write");
    let out = Command::new(edgewatch_bin())
        .args(["proxies", "--output", "json", "--config"])
        .arg(config.path())
        .args(args)
        .output()
        .expect("edgewatch proxies");
    let stdout = String::from_utf8_lossy(&out.stdout);
    (out.status.code().unwrap_or(-1), json_lines(&stdout))
}

fn findings(lines: &[Value]) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = lines
        .iter()
        .filter(|v| v["type"] == "config_finding")
        .map(|v| {
            let file = v["file"].as_str().unwrap_or_default();
            let name = Path::new(file)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            (
                v["rule"].as_str().unwrap_or_default().to_owned(),
                format!("{name}:{}", v["line"]),
            )
        })
        .collect();
    f.sort();
    f
}

const BROKEN: &str = "server {
    listen 127.0.0.1:EDGE;
    location / {
        proxy_pass http://127.0.0.1:GATEWAY;
        proxy_read_timeout 5s;
    }
    location /old/ {
        proxy_pass http://127.0.0.1:STALE;
    }
}
";

const FIXED: &str = "server {
    listen 127.0.0.1:EDGE;
    location / {
        proxy_pass http://127.0.0.1:GATEWAY;
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection \"upgrade\";
        proxy_set_header X-Request-ID $request_id;
        proxy_read_timeout 3600s;
        proxy_send_timeout 3600s;
    }
}
";

const LOG_FORMAT: &str = "log_format edgewatch '$remote_addr $request_id $status';";

#[test]
fn findings_from_a_running_nginx_cite_their_lines_and_go_after_a_fixing_reload() {
    support::require_root();
    // The Gateway's stand-in: something listening on its port.
    let gateway = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gw = gateway.local_addr().expect("addr").port();
    let stale = free_port();
    let site = |t: &str| {
        t.replace("GATEWAY", &gw.to_string())
            .replace("STALE", &stale.to_string())
    };
    let nginx = Master::start(&site(BROKEN), "");
    let (code, lines) = proxies(&["--pid", &nginx.pid()], gw);
    assert_eq!(code, 3, "findings are exit status 3: {lines:#?}");
    assert_eq!(
        findings(&lines),
        [
            (
                "config.request_id_not_forwarded".to_owned(),
                "gw.conf:3".to_owned()
            ),
            (
                "config.request_id_not_logged".to_owned(),
                "nginx.conf:7".to_owned()
            ),
            ("config.short_timeout".to_owned(), "gw.conf:3".to_owned()),
            ("config.short_timeout".to_owned(), "gw.conf:5".to_owned()),
            (
                "config.stale_upstream_port".to_owned(),
                "gw.conf:8".to_owned()
            ),
            (
                "config.websocket_half_path".to_owned(),
                "gw.conf:3".to_owned()
            ),
        ],
        "{lines:#?}"
    );
    let stale_finding = lines
        .iter()
        .find(|v| v["rule"] == "config.stale_upstream_port")
        .expect("stale");
    assert!(
        stale_finding["summary"]
            .as_str()
            .is_some_and(|s| s.contains(&format!("the Gateway listens on 127.0.0.1:{gw}"))),
        "{stale_finding}"
    );
    // The file is named as nginx sees it (its include resolved against the conf directory).
    assert_eq!(
        stale_finding["file"],
        nginx
            .dir
            .path()
            .join("conf.d/gw.conf")
            .display()
            .to_string()
    );
    // The routes: listen -> location -> upstream -> who listens.
    let routes: Vec<&Value> = lines.iter().filter(|v| v["type"] == "route").collect();
    assert_eq!(routes.len(), 2, "{routes:#?}");
    assert_eq!(routes[0]["targets"][0]["listener"], "listening");
    assert_eq!(routes[1]["targets"][0]["listener"], "nothing listens");

    // Offline, from the files: the same findings.
    let conf = nginx.dir.path().join("nginx.conf");
    let (code, offline) = proxies(&["--proxy-config", conf.to_str().expect("path")], gw);
    assert_eq!(code, 3);
    assert_eq!(findings(&offline), findings(&lines));

    // Fixed and reloaded: nothing left.
    nginx.reload(&site(FIXED), LOG_FORMAT);
    let (code, lines) = proxies(&["--pid", &nginx.pid()], gw);
    assert_eq!(findings(&lines), [], "{lines:#?}");
    assert_eq!(code, 0);
    drop(gateway);
}

#[test]
fn a_configuration_nginx_would_refuse_is_an_error_with_its_line() {
    let dir = tempfile::tempdir().expect("dir");
    let conf = dir.path().join("bad.conf");
    std::fs::write(&conf, "http {\n  server {\n    listen 80\n  }\n}\n").expect("write");
    let (code, lines) = proxies(&["--proxy-config", conf.to_str().expect("path")], 18789);
    assert_eq!(code, 1, "{lines:#?}");
    let err = lines
        .iter()
        .find(|v| v["type"] == "proxy_error")
        .expect("an error line");
    assert!(
        err["error"]
            .as_str()
            .is_some_and(|e| e.contains("bad.conf:4") && e.contains("not terminated")),
        "{err}"
    );
}
