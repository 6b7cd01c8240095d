//! Caddy's configuration (its JSON: the admin API's `/config/`, a JSON config file, or what
//! `caddy adapt` makes of a Caddyfile) to routes: every `reverse_proxy` handler with the
//! request headers set before it (`request_header`, `header_up`), the hosts and paths its
//! routes match, and the access log its server writes for those hosts. A position is the JSON
//! path of the object (`/config/apps/http/servers/srv0/routes/0/handle/0/...` on the admin API,
//! which is also where to GET or PATCH it). Only these fields are read; nothing else of the
//! configuration (which may hold credentials) is kept.
use std::time::Duration;

use serde_json::Value;

use super::{
    nginx::Source,
    routes::{AccessLog, Header, Route, Setting, Target},
};

fn at(path: &str) -> Source {
    Source {
        file: path.to_owned(),
        line: 0,
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// What the routes above a handler decided.
#[derive(Clone, Default)]
struct Context {
    hosts: Vec<String>,
    paths: Vec<String>,
    request_headers: Vec<Header>,
    /// A response header X-Request-Id is set (Caddy's access log records response headers).
    responds_request_id: bool,
}

/// Where a server's access log goes, by host.
struct Logs<'a> {
    config: &'a Value,
    server: &'a Value,
    prefix: &'a str,
}

impl Logs<'_> {
    fn for_hosts(&self, hosts: &[String], responds_request_id: bool) -> Vec<AccessLog> {
        let logs = &self.server["logs"];
        if logs.is_null() {
            return Vec::new();
        }
        let names = &logs["logger_names"];
        let mut wanted: Vec<String> = hosts
            .iter()
            .filter_map(|h| names[h.as_str()].as_str().map(str::to_owned))
            .collect();
        if wanted.is_empty() {
            wanted.push(
                logs["default_logger_name"]
                    .as_str()
                    .unwrap_or("default")
                    .to_owned(),
            );
        }
        wanted.sort();
        wanted.dedup();
        wanted
            .iter()
            .map(|name| {
                let log = &self.config["logging"]["logs"][name.as_str()];
                let writer = &log["writer"];
                let path = match writer["output"].as_str() {
                    Some("file") => writer["filename"].as_str().unwrap_or("?").to_owned(),
                    Some(other) => other.to_owned(),
                    None => "stderr".to_owned(),
                };
                let format = log["encoder"]["format"]
                    .as_str()
                    .unwrap_or("json")
                    .to_owned();
                AccessLog {
                    json: format == "json",
                    request_id: Some(responds_request_id),
                    format,
                    format_text: None,
                    path,
                    at: Some(at(&format!("{}/logging/logs/{name}", self.prefix))),
                }
            })
            .collect()
    }
}

/// A Go duration (`"30s"`, `"1m30s"`) or nanoseconds.
fn duration(v: &Value) -> Option<Duration> {
    match v {
        Value::Number(n) => n.as_u64().map(Duration::from_nanos),
        Value::String(s) => humantime::parse_duration(s).ok(),
        _ => None,
    }
}

/// The routes of a Caddy JSON configuration; `prefix` names its source and starts each path
/// (`caddy admin 127.0.0.1:2019 /config`, or `/etc/caddy/caddy.json#`).
pub fn routes(config: &Value, prefix: &str) -> Vec<Route> {
    let mut out = Vec::new();
    let Some(servers) = config["apps"]["http"]["servers"].as_object() else {
        return out;
    };
    for (name, server) in servers {
        let path = format!("{prefix}/apps/http/servers/{name}/routes");
        let logs = Logs {
            config,
            server,
            prefix,
        };
        let listen = strings(&server["listen"]);
        walk(
            &server["routes"],
            &path,
            &Context::default(),
            &listen,
            &logs,
            &mut out,
        );
    }
    out
}

fn walk(
    routes: &Value,
    path: &str,
    above: &Context,
    listen: &[String],
    logs: &Logs<'_>,
    out: &mut Vec<Route>,
) {
    for (i, route) in routes.as_array().into_iter().flatten().enumerate() {
        let route_path = format!("{path}/{i}");
        let mut cx = above.clone();
        for m in route["match"].as_array().into_iter().flatten() {
            cx.hosts.extend(strings(&m["host"]));
            cx.paths.extend(strings(&m["path"]));
        }
        for (j, h) in route["handle"].as_array().into_iter().flatten().enumerate() {
            let handler_path = format!("{route_path}/handle/{j}");
            match h["handler"].as_str() {
                Some("subroute") => walk(
                    &h["routes"],
                    &format!("{handler_path}/routes"),
                    &cx,
                    listen,
                    logs,
                    out,
                ),
                Some("headers") => {
                    cx.request_headers
                        .extend(set_headers(&h["request"]["set"], &handler_path));
                    if let Some(set) = h["response"]["set"].as_object() {
                        cx.responds_request_id |=
                            set.keys().any(|k| k.eq_ignore_ascii_case("x-request-id"));
                    }
                }
                Some("reverse_proxy") => out.push(proxy_route(
                    h,
                    &handler_path,
                    &route_path,
                    &cx,
                    listen,
                    logs,
                )),
                _ => {}
            }
        }
    }
}

fn set_headers(set: &Value, path: &str) -> Vec<Header> {
    set.as_object()
        .into_iter()
        .flatten()
        .map(|(name, values)| Header {
            name: name.clone(),
            value: strings(values).join(", "),
            at: Some(at(path)),
        })
        .collect()
}

fn proxy_route(
    h: &Value,
    path: &str,
    route_path: &str,
    cx: &Context,
    listen: &[String],
    logs: &Logs<'_>,
) -> Route {
    let mut headers = cx.request_headers.clone();
    headers.extend(set_headers(&h["headers"]["request"]["set"], path));
    let dials: Vec<String> = h["upstreams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u["dial"].as_str().map(str::to_owned))
        .collect();
    let targets = dials
        .iter()
        .enumerate()
        .filter_map(|(k, d)| {
            let (host, port) = d.rsplit_once(':')?;
            Some(Target {
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port: port.parse().ok()?,
                at: at(&format!("{path}/upstreams/{k}/dial")),
            })
        })
        .collect();
    // Caddy 2.6 proxies a WebSocket with no idle timeout; `stream_timeout` (2.7+) sets one.
    let stream = match duration(&h["stream_timeout"]) {
        Some(d) => Setting {
            value: d,
            at: Some(at(&format!("{path}/stream_timeout"))),
        },
        None => Setting {
            value: Duration::MAX,
            at: None,
        },
    };
    Route {
        proxy: "caddy",
        listen: listen.to_vec(),
        server_names: cx.hosts.clone(),
        location: if cx.paths.is_empty() {
            "/".to_owned()
        } else {
            cx.paths.join(" ")
        },
        location_at: at(route_path),
        proxy_pass: dials.join(" "),
        proxy_pass_at: at(path),
        targets,
        // Caddy forwards the upgrade itself: never a half-path.
        http_version: Setting {
            value: "1.1".to_owned(),
            at: None,
        },
        headers,
        read_timeout: stream.clone(),
        send_timeout: stream,
        access_logs: logs.for_hosts(&cx.hosts, cx.responds_request_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `caddy adapt` (2.6.2) of a site like the README's and a second one without the ids.
    const ADAPTED: &str = r#"{"admin":{"listen":"127.0.0.1:2999"},"logging":{"logs":{"default":{"exclude":["http.log.access.log0"]},"log0":{"writer":{"filename":"/var/log/caddy/access.log","output":"file"},"encoder":{"format":"json"},"include":["http.log.access.log0"]}}},"apps":{"http":{"servers":{"srv0":{"listen":[":443"],"routes":[{"match":[{"host":["gw.example.com"]}],"handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"headers","response":{"set":{"X-Request-Id":["{http.request.uuid}"]}}},{"handler":"headers","request":{"set":{"X-Request-Id":["{http.request.uuid}"]}}},{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:18789"}]}]}]}],"terminal":true}],"logs":{"logger_names":{"gw.example.com":"log0"}}},"srv1":{"listen":[":8080"],"routes":[{"match":[{"path":["/api/*"]}],"handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"localhost:18790"}]}]}]}]}]}}}}}"#;

    #[test]
    fn reverse_proxies_with_their_headers_and_logs() {
        let config: Value = serde_json::from_str(ADAPTED).unwrap_or_default();
        let r = routes(&config, "caddy admin 127.0.0.1:2999 /config");
        assert_eq!(r.len(), 2, "{r:#?}");
        let gw = &r[0];
        assert_eq!(gw.proxy, "caddy");
        assert_eq!(gw.server_names, ["gw.example.com"]);
        assert_eq!(
            (gw.targets[0].host.as_str(), gw.targets[0].port),
            ("127.0.0.1", 18789)
        );
        assert_eq!(
            gw.targets[0].at.to_string(),
            "caddy admin 127.0.0.1:2999 /config/apps/http/servers/srv0/routes/0/handle/0/routes/0/handle/2/upstreams/0/dial"
        );
        assert!(gw.header("x-request-id").is_some());
        assert_eq!(gw.read_timeout.value, Duration::MAX);
        assert_eq!(gw.access_logs.len(), 1);
        assert_eq!(gw.access_logs[0].path, "/var/log/caddy/access.log");
        assert_eq!(gw.access_logs[0].request_id, Some(true));
        assert!(gw.access_logs[0].json);
        let api = &r[1];
        assert_eq!(api.location, "/api/*");
        assert_eq!(
            (api.targets[0].host.as_str(), api.targets[0].port),
            ("localhost", 18790)
        );
        assert!(api.access_logs.is_empty(), "srv1 logs nothing");
    }

    #[test]
    fn findings_on_caddy_need_no_upgrade_headers() {
        use crate::proxy::{findings, Facts};
        let config: Value = serde_json::from_str(ADAPTED).unwrap_or_default();
        let r = routes(&config, "x");
        let listeners = [(std::net::IpAddr::from([127, 0, 0, 1]), 18789)];
        let f = findings(
            &r,
            &Facts {
                listeners: Some(&listeners),
                gateway_ports: &[18789],
                min_read_timeout: Duration::from_secs(600),
            },
        );
        // The README's site: nothing. /api/ to 18790: stale, the Gateway named.
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].rule, "config.stale_upstream_port");
        assert!(f[0].summary.contains("127.0.0.1:18789"), "{}", f[0].summary);
        // Without the ids: not forwarded, not logged.
        let bare = ADAPTED.replace("X-Request-Id", "X-Other");
        let config: Value = serde_json::from_str(&bare).unwrap_or_default();
        let f = findings(
            &routes(&config, "x"),
            &Facts {
                listeners: Some(&listeners),
                gateway_ports: &[18789],
                min_read_timeout: Duration::from_secs(600),
            },
        );
        let rules: Vec<&str> = f.iter().map(|f| f.rule).collect();
        assert!(
            rules.contains(&"config.request_id_not_forwarded"),
            "{rules:?}"
        );
        assert!(rules.contains(&"config.request_id_not_logged"), "{rules:?}");
        assert!(!rules.contains(&"config.websocket_half_path"), "{rules:?}");
    }
}
