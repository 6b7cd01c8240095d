//! From nginx's directive tree to routes: each `location` with a `proxy_pass`, with what it
//! inherits applied the way nginx applies it. Array directives (`proxy_set_header`,
//! `access_log`) are inherited from the enclosing level only when a level has none of its own;
//! the others are inherited unless set. Every value keeps where it was written, or says it is
//! nginx's default.
use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

use super::nginx::{Directive, Source};

/// A value and where it comes from (`at: None`: nginx's default).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Setting<T> {
    pub value: T,
    pub at: Option<Source>,
}

/// A `proxy_set_header`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Header {
    pub name: String,
    pub value: String,
    pub at: Option<Source>,
}

/// An `access_log` in effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccessLog {
    pub path: String,
    pub format: String,
    /// The format's text (None: a format not defined in this configuration, or Caddy's JSON).
    pub format_text: Option<String>,
    /// Whether its lines carry the request id (None: not known, the format is not here).
    pub request_id: Option<bool>,
    /// JSON lines (the join reads nginx's JSON formats and Caddy's).
    pub json: bool,
    pub at: Option<Source>,
}

impl AccessLog {
    /// An nginx `access_log` with the text of its format.
    pub fn nginx(
        path: String,
        format: String,
        format_text: Option<String>,
        at: Option<Source>,
    ) -> Self {
        Self {
            request_id: format_text.as_deref().map(|t| t.contains("$request_id")),
            json: format_text
                .as_deref()
                .is_some_and(|t| t.trim_start().starts_with('{')),
            path,
            format,
            format_text,
            at,
        }
    }
}

/// Where a `proxy_pass` sends requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// The `proxy_pass`, or the `server` line of its `upstream {}` block.
    pub at: Source,
}

/// One location that proxies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Route {
    pub proxy: &'static str,
    /// The server's `listen` addresses and `server_name`s.
    pub listen: Vec<String>,
    pub server_names: Vec<String>,
    pub location: String,
    pub location_at: Source,
    pub proxy_pass: String,
    pub proxy_pass_at: Source,
    /// Empty when the address is only known at run time (a variable) or is a socket file.
    pub targets: Vec<Target>,
    pub http_version: Setting<String>,
    pub headers: Vec<Header>,
    pub read_timeout: Setting<Duration>,
    pub send_timeout: Setting<Duration>,
    pub access_logs: Vec<AccessLog>,
}

impl Route {
    /// The effective header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&Header> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
    }
}

/// nginx's time syntax: `600`, `5s`, `10m`, `1h30m`, `500ms` (a bare number is seconds).
pub fn parse_time(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let d = match unit {
            "" | "s" => Duration::from_secs(n),
            "ms" => Duration::from_millis(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            "d" => Duration::from_secs(n.checked_mul(86_400)?),
            "w" => Duration::from_secs(n.checked_mul(604_800)?),
            _ => return None,
        };
        total = total.checked_add(d)?;
    }
    Some(total)
}

/// What a level passes down.
#[derive(Clone)]
struct Inherited {
    headers: Option<Vec<Header>>,
    access_logs: Option<Vec<AccessLog>>,
    http_version: Setting<String>,
    read_timeout: Setting<Duration>,
    send_timeout: Setting<Duration>,
}

impl Inherited {
    fn defaults() -> Self {
        Self {
            headers: None,
            access_logs: None,
            http_version: Setting {
                value: "1.0".into(),
                at: None,
            },
            read_timeout: Setting {
                value: Duration::from_secs(60),
                at: None,
            },
            send_timeout: Setting {
                value: Duration::from_secs(60),
                at: None,
            },
        }
    }

    /// This level's own settings over what it inherited.
    fn apply(&self, level: &[Directive], formats: &BTreeMap<String, String>) -> Self {
        let mut out = self.clone();
        let headers: Vec<Header> = level
            .iter()
            .filter(|d| d.name == "proxy_set_header" && d.args.len() >= 2)
            .map(|d| Header {
                name: d.args[0].clone(),
                value: d.args[1..].join(" "),
                at: Some(d.at.clone()),
            })
            .collect();
        if !headers.is_empty() {
            out.headers = Some(headers);
        }
        let logs: Vec<AccessLog> = level
            .iter()
            .filter(|d| d.name == "access_log")
            .filter_map(|d| {
                let path = d.args.first()?.clone();
                let format = d.args.get(1).cloned().unwrap_or_else(|| "combined".into());
                Some(AccessLog::nginx(
                    path,
                    format.clone(),
                    format_text(&format, formats),
                    Some(d.at.clone()),
                ))
            })
            .collect();
        if !logs.is_empty() {
            out.access_logs = Some(logs);
        }
        for d in level {
            let arg = || d.args.first().cloned().unwrap_or_default();
            match d.name.as_str() {
                "proxy_http_version" => {
                    out.http_version = Setting {
                        value: arg(),
                        at: Some(d.at.clone()),
                    }
                }
                "proxy_read_timeout" | "proxy_send_timeout" => {
                    if let Some(t) = parse_time(&arg()) {
                        let s = Setting {
                            value: t,
                            at: Some(d.at.clone()),
                        };
                        if d.name == "proxy_read_timeout" {
                            out.read_timeout = s;
                        } else {
                            out.send_timeout = s;
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }
}

/// nginx's predefined `combined` format, or one defined by `log_format`.
fn format_text(name: &str, formats: &BTreeMap<String, String>) -> Option<String> {
    formats.get(name).cloned().or_else(|| {
        (name == "combined").then(|| {
            "$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \
             \"$http_referer\" \"$http_user_agent\""
                .to_owned()
        })
    })
}

/// The routes of a loaded configuration (`nginx::load`).
pub fn routes(tree: &[Directive]) -> Vec<Route> {
    let mut out = Vec::new();
    for http in tree.iter().filter(|d| d.name == "http") {
        let Some(body) = &http.block else { continue };
        let formats: BTreeMap<String, String> = body
            .iter()
            .filter(|d| d.name == "log_format" && d.args.len() >= 2)
            .map(|d| {
                // `log_format name [escape=...] text...`
                let text: Vec<&str> = d.args[1..]
                    .iter()
                    .filter(|a| !a.starts_with("escape="))
                    .map(String::as_str)
                    .collect();
                (d.args[0].clone(), text.concat())
            })
            .collect();
        let upstreams: BTreeMap<&str, Vec<Target>> = body
            .iter()
            .filter(|d| d.name == "upstream" && !d.args.is_empty())
            .map(|d| {
                let servers = d
                    .block
                    .iter()
                    .flatten()
                    .filter(|s| s.name == "server")
                    .filter_map(|s| host_port(s.args.first()?, 80, &s.at))
                    .collect();
                (d.args[0].as_str(), servers)
            })
            .collect();
        let http_level = Inherited::defaults().apply(body, &formats);
        for server in body.iter().filter(|d| d.name == "server") {
            let Some(sbody) = &server.block else { continue };
            let listen = sbody
                .iter()
                .filter(|d| d.name == "listen")
                .filter_map(|d| d.args.first().cloned())
                .collect();
            let server_names = sbody
                .iter()
                .filter(|d| d.name == "server_name")
                .flat_map(|d| d.args.clone())
                .collect();
            let context = Context {
                listen,
                server_names,
                formats: &formats,
                upstreams: &upstreams,
            };
            let level = http_level.apply(sbody, &formats);
            locations(sbody, &level, &context, &mut out);
        }
    }
    out
}

struct Context<'a> {
    listen: Vec<String>,
    server_names: Vec<String>,
    formats: &'a BTreeMap<String, String>,
    upstreams: &'a BTreeMap<&'a str, Vec<Target>>,
}

fn locations(level: &[Directive], inherited: &Inherited, cx: &Context<'_>, out: &mut Vec<Route>) {
    for loc in level.iter().filter(|d| d.name == "location") {
        let Some(body) = &loc.block else { continue };
        let mine = inherited.apply(body, cx.formats);
        if let Some(pass) = body.iter().find(|d| d.name == "proxy_pass") {
            let url = pass.args.first().cloned().unwrap_or_default();
            out.push(Route {
                proxy: "nginx",
                listen: cx.listen.clone(),
                server_names: cx.server_names.clone(),
                location: loc.args.join(" "),
                location_at: loc.at.clone(),
                targets: targets(&url, &pass.at, cx.upstreams),
                proxy_pass: url,
                proxy_pass_at: pass.at.clone(),
                http_version: mine.http_version.clone(),
                headers: mine.headers.clone().unwrap_or_else(default_headers),
                read_timeout: mine.read_timeout.clone(),
                send_timeout: mine.send_timeout.clone(),
                access_logs: mine.access_logs.clone().unwrap_or_else(|| {
                    vec![AccessLog::nginx(
                        "logs/access.log".into(),
                        "combined".into(),
                        format_text("combined", cx.formats),
                        None,
                    )]
                }),
            });
        }
        // Nested locations inherit from this one.
        locations(body, &mine, cx, out);
    }
}

/// What nginx sends when no `proxy_set_header` is in effect.
fn default_headers() -> Vec<Header> {
    vec![
        Header {
            name: "Host".into(),
            value: "$proxy_host".into(),
            at: None,
        },
        Header {
            name: "Connection".into(),
            value: "close".into(),
            at: None,
        },
    ]
}

/// The address(es) a `proxy_pass` URL reaches.
fn targets(url: &str, at: &Source, upstreams: &BTreeMap<&str, Vec<Target>>) -> Vec<Target> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('$') || authority.starts_with("unix:") {
        return Vec::new();
    }
    if let Some(servers) = upstreams.get(authority) {
        return servers.clone();
    }
    let default = if scheme == "https" { 443 } else { 80 };
    host_port(authority, default, at).into_iter().collect()
}

/// `host[:port]`, `[v6][:port]`.
fn host_port(text: &str, default: u16, at: &Source) -> Option<Target> {
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, rest) = v6.split_once(']')?;
        let port = match rest.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default,
        };
        (host.to_owned(), port)
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().ok()?),
            None => (text.to_owned(), default),
        }
    };
    if host.is_empty() || host.starts_with("unix") {
        return None;
    }
    Some(Target {
        host,
        port,
        at: at.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::nginx::parse;

    #[test]
    fn times() {
        assert_eq!(parse_time("600"), Some(Duration::from_secs(600)));
        assert_eq!(parse_time("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_time("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_time("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_time("5x"), None);
        assert_eq!(parse_time(""), None);
        assert_eq!(parse_time("99999999999999999999h"), None);
    }

    const SITE: &str = r#"http {
    log_format edgewatch escape=json '{"rid":"$request_id",'
                                     '"status":$status}';
    access_log /var/log/nginx/access.log edgewatch;
    proxy_read_timeout 3600s;
    upstream gw { server 127.0.0.1:18789; keepalive 4; }
    map $http_upgrade $connection_upgrade { default upgrade; '' close; }
    server {
        listen 443 ssl;
        server_name gw.example.com;
        proxy_set_header X-Request-ID $request_id;
        location / {
            proxy_pass http://gw;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            location /api/ {
                proxy_pass http://127.0.0.1:18790/;
                proxy_read_timeout 5s;
            }
        }
        location /static/ { root /srv; }
    }
}"#;

    #[test]
    fn routes_with_inheritance() {
        let tree = parse(SITE, "site.conf").unwrap_or_default();
        let r = routes(&tree);
        assert_eq!(r.len(), 2, "{r:#?}");
        let root = &r[0];
        assert_eq!(root.location, "/");
        assert_eq!(root.listen, ["443"]);
        assert_eq!(root.server_names, ["gw.example.com"]);
        assert_eq!(root.targets.len(), 1);
        assert_eq!(
            (root.targets[0].host.as_str(), root.targets[0].port),
            ("127.0.0.1", 18789)
        );
        assert_eq!(root.targets[0].at.line, 6, "the upstream's server line");
        assert_eq!(root.http_version.value, "1.1");
        // The location's own headers replace the server's: X-Request-ID is not inherited.
        assert!(root.header("upgrade").is_some());
        assert!(root.header("x-request-id").is_none(), "{:?}", root.headers);
        assert_eq!(root.read_timeout.value, Duration::from_secs(3600));
        assert_eq!(root.read_timeout.at.as_ref().map(|a| a.line), Some(5));
        let log = &root.access_logs[0];
        assert_eq!(log.path, "/var/log/nginx/access.log");
        assert!(log
            .format_text
            .as_deref()
            .is_some_and(|t| t.contains("$request_id")));
        let api = &r[1];
        assert_eq!(api.location, "/api/");
        assert_eq!(api.targets[0].port, 18790);
        assert_eq!(api.read_timeout.value, Duration::from_secs(5));
        assert_eq!(api.read_timeout.at.as_ref().map(|a| a.line), Some(19));
        // Inherited from the enclosing location: its headers, since it sets none.
        assert!(api.header("upgrade").is_some());
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let tree = parse(
            "http { server { listen 80; location / { proxy_pass http://localhost; } } }",
            "d.conf",
        )
        .unwrap_or_default();
        let r = routes(&tree);
        assert_eq!(
            r[0].http_version,
            Setting {
                value: "1.0".into(),
                at: None
            }
        );
        assert_eq!(r[0].read_timeout.value, Duration::from_secs(60));
        assert_eq!(
            r[0].header("connection").map(|h| h.value.as_str()),
            Some("close")
        );
        assert_eq!(
            (r[0].targets[0].host.as_str(), r[0].targets[0].port),
            ("localhost", 80)
        );
        assert!(r[0].access_logs[0]
            .format_text
            .as_deref()
            .is_some_and(|t| !t.contains("$request_id")));
        let v = parse(
            "http { server { location / { proxy_pass http://[::1]:9000; } location /v { proxy_pass http://$backend; } } }",
            "v.conf",
        )
        .unwrap_or_default();
        let r = routes(&v);
        assert_eq!(
            (r[0].targets[0].host.as_str(), r[0].targets[0].port),
            ("::1", 9000)
        );
        assert!(
            r[1].targets.is_empty(),
            "a variable is only known at run time"
        );
    }
}
