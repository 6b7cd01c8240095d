//! Static findings (`config.*`): what in the proxy's configuration will break the Gateway,
//! each with the line that causes it and the runbook's first move.
use std::{net::IpAddr, time::Duration};

use serde::Serialize;
use serde_json::json;

use super::{nginx::Source, routes::Route};
use crate::exposure::policy::Severity;

/// What the findings are checked against.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    /// Listening TCP sockets on this machine (address, port); None offline (a configuration
    /// sent in without its machine: nothing is judged by what listens).
    pub listeners: Option<&'a [(IpAddr, u16)]>,
    /// The Gateway's port(s) (the hop's upstream ports).
    pub gateway_ports: &'a [u16],
    /// A read timeout under this cuts idle WebSockets (the runbook: 600 s or more).
    pub min_read_timeout: Duration,
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub severity: Severity,
    /// Where to look (the directive that causes it, or the location that lacks one).
    pub at: Source,
    pub summary: String,
    pub first_move: &'static str,
    pub evidence: serde_json::Value,
    /// The route it is about (its location's position).
    pub route: Source,
}

impl Finding {
    /// One finding per rule and position.
    pub fn key(&self) -> String {
        format!("{}:{}", self.rule, self.at)
    }
}

const MOVE_STALE: &str = "Point proxy_pass (or the upstream's server; Caddy: reverse_proxy) at \
    the port the Gateway listens on (openclaw gateway status), then reload the proxy (nginx -s \
    reload, caddy reload).";
const MOVE_HALF: &str = "In this location: proxy_http_version 1.1; proxy_set_header Upgrade \
    $http_upgrade; proxy_set_header Connection \"upgrade\"; then reload.";
const MOVE_TIMEOUT: &str = "Raise proxy_read_timeout and proxy_send_timeout for the WebSocket \
    location (3600s is the runbook's value), then reload.";
const MOVE_RID_FORWARD: &str = "Add proxy_set_header X-Request-ID $request_id; in this location \
    (a location's own proxy_set_header lines replace every inherited one).";
const MOVE_RID_LOG: &str = "Log $request_id in the access log's format (the README's \
    edgewatch log_format) so each request joins the hop exactly.";
const MOVE_NON_LOOPBACK: &str = "Bind the Gateway to 127.0.0.1 (gateway.bind: loopback) and \
    proxy to 127.0.0.1; the address here means it listens beyond loopback.";

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

/// Whether something listens for `host:port` (a wildcard listener serves every address).
fn listening(host: &str, port: u16, listeners: &[(IpAddr, u16)]) -> bool {
    let wanted: Vec<IpAddr> = if host == "localhost" {
        vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ]
    } else {
        match host.parse() {
            Ok(ip) => vec![ip],
            // A name this machine cannot judge.
            Err(_) => return true,
        }
    };
    listeners
        .iter()
        .any(|(addr, p)| *p == port && (addr.is_unspecified() || wanted.iter().any(|w| w == addr)))
}

/// Every finding for these routes (deterministic order: by rule, then position).
pub fn findings(routes: &[Route], facts: &Facts<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let gateway_listens: Vec<String> = facts
        .listeners
        .unwrap_or_default()
        .iter()
        .filter(|(_, p)| facts.gateway_ports.contains(p))
        .map(|(a, p)| std::net::SocketAddr::new(*a, *p).to_string())
        .collect();
    for r in routes {
        stale(r, facts, &gateway_listens, &mut out);
        let to_gateway: Vec<_> = r
            .targets
            .iter()
            .filter(|t| facts.gateway_ports.contains(&t.port))
            .collect();
        if to_gateway.is_empty() {
            continue;
        }
        for t in to_gateway.iter().filter(|t| !is_loopback(&t.host)) {
            out.push(Finding {
                route: r.location_at.clone(),
                rule: "config.non_loopback_upstream",
                severity: Severity::Critical,
                at: t.at.clone(),
                summary: format!(
                    "{} {} proxies to the Gateway on {}:{}, not loopback: the Gateway listens beyond it",
                    r.proxy, r.location, t.host, t.port
                ),
                first_move: MOVE_NON_LOOPBACK,
                evidence: json!({ "location": r.location, "target": format!("{}:{}", t.host, t.port) }),
            });
        }
        gateway_route(r, facts, &mut out);
    }
    out.sort_by(|a, b| (a.rule, &a.at).cmp(&(b.rule, &b.at)));
    out.dedup_by(|a, b| a.key() == b.key() && a.summary == b.summary);
    out
}

/// A loopback target nothing listens on. Not the Gateway's own port: nothing there is the
/// Gateway down or restarting (`hop.upstream_down`, with its grace period), not the
/// configuration.
fn stale(r: &Route, facts: &Facts<'_>, gateway_listens: &[String], out: &mut Vec<Finding>) {
    let Some(listeners) = facts.listeners else {
        return;
    };
    for t in &r.targets {
        if facts.gateway_ports.contains(&t.port)
            || !is_loopback(&t.host)
            || listening(&t.host, t.port, listeners)
        {
            continue;
        }
        let elsewhere = !gateway_listens.is_empty();
        let summary = if elsewhere {
            format!(
                "{} {} proxies to {}:{}, where nothing listens; the Gateway listens on {}",
                r.proxy,
                r.location,
                t.host,
                t.port,
                gateway_listens.join(", ")
            )
        } else {
            format!(
                "{} {} proxies to {}:{}, where nothing listens (every request gets a 502)",
                r.proxy, r.location, t.host, t.port
            )
        };
        out.push(Finding {
            route: r.location_at.clone(),
            rule: "config.stale_upstream_port",
            severity: if elsewhere {
                Severity::Critical
            } else {
                Severity::Warning
            },
            at: t.at.clone(),
            summary,
            first_move: MOVE_STALE,
            evidence: json!({
                "location": r.location,
                "location_at": r.location_at.to_string(),
                "target": format!("{}:{}", t.host, t.port),
                "gateway_listens_on": gateway_listens,
            }),
        });
    }
}

/// The checks that only matter for the Gateway's routes.
fn gateway_route(r: &Route, facts: &Facts<'_>, out: &mut Vec<Finding>) {
    let upgrade = r
        .header("upgrade")
        .is_some_and(|h| h.value.contains("$http_upgrade"));
    let connection = r.header("connection").is_some_and(|h| {
        let v = h.value.to_ascii_lowercase();
        v.contains("upgrade") || v.starts_with('$')
    });
    let http11 = r.http_version.value == "1.1";
    // Caddy forwards the upgrade itself.
    if r.proxy != "caddy" && !(upgrade && connection && http11) {
        let mut missing = Vec::new();
        if !http11 {
            missing.push(format!(
                "proxy_http_version 1.1 (it is {})",
                r.http_version.value
            ));
        }
        if !upgrade {
            missing.push("proxy_set_header Upgrade $http_upgrade".to_owned());
        }
        if !connection {
            missing.push("proxy_set_header Connection \"upgrade\"".to_owned());
        }
        out.push(Finding {
            route: r.location_at.clone(),
            rule: "config.websocket_half_path",
            severity: Severity::Critical,
            at: r.location_at.clone(),
            summary: format!(
                "{} location {} proxies to the Gateway without {}: WebSocket upgrades fail (426/400) while plain HTTP works",
                r.proxy,
                r.location,
                missing.join(", ")
            ),
            first_move: MOVE_HALF,
            evidence: json!({ "location": r.location, "missing": missing, "proxy_pass": r.proxy_pass_at.to_string() }),
        });
    }
    for (name, s) in [
        ("proxy_read_timeout", &r.read_timeout),
        ("proxy_send_timeout", &r.send_timeout),
    ] {
        if s.value < facts.min_read_timeout {
            let at = s.at.clone().unwrap_or_else(|| r.location_at.clone());
            let how = match &s.at {
                Some(a) => format!("{name} {}s at {a}", s.value.as_secs_f64()),
                None => format!(
                    "{name} is nginx's default {}s (not set)",
                    s.value.as_secs_f64()
                ),
            };
            out.push(Finding {
                route: r.location_at.clone(),
                rule: "config.short_timeout",
                severity: Severity::Warning,
                at,
                summary: format!(
                    "{} location {}: {how}, under {}s: an idle WebSocket is cut without a close frame after it",
                    r.proxy,
                    r.location,
                    facts.min_read_timeout.as_secs()
                ),
                first_move: MOVE_TIMEOUT,
                evidence: json!({
                    "location": r.location,
                    "directive": name,
                    "seconds": s.value.as_secs_f64(),
                    "default": s.at.is_none(),
                }),
            });
        }
    }
    if r.header("x-request-id").is_none() {
        out.push(Finding {
            route: r.location_at.clone(),
            rule: "config.request_id_not_forwarded",
            severity: Severity::Warning,
            at: r.location_at.clone(),
            summary: format!(
                "{} location {} does not send X-Request-ID to the Gateway: the hop cannot be joined to the access log by id",
                r.proxy, r.location
            ),
            first_move: MOVE_RID_FORWARD,
            evidence: json!({ "location": r.location, "headers": r.headers.iter().map(|h| h.name.clone()).collect::<Vec<_>>() }),
        });
    }
    for log in &r.access_logs {
        if log.path != "off" && log.request_id == Some(false) {
            out.push(Finding {
                route: r.location_at.clone(),
                rule: "config.request_id_not_logged",
                severity: Severity::Warning,
                at: log.at.clone().unwrap_or_else(|| r.location_at.clone()),
                summary: format!(
                    "{} access log {} (format {}) has no request id: requests join the hop by time only",
                    r.proxy, log.path, log.format
                ),
                first_move: MOVE_RID_LOG,
                evidence: json!({ "path": log.path, "format": log.format }),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{nginx::parse, routes::routes};

    const BROKEN: &str = "http {
  access_log /var/log/nginx/access.log;
  server {
    listen 443 ssl;
    location / {
      proxy_pass http://127.0.0.1:18790;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection \"upgrade\";
      proxy_set_header X-Request-ID $request_id;
      proxy_read_timeout 5s;
    }
    location /ws {
      proxy_pass http://127.0.0.1:18789;
    }
  }
}";

    fn facts(listeners: &[(IpAddr, u16)]) -> Facts<'_> {
        Facts {
            listeners: Some(listeners),
            gateway_ports: &[18789],
            min_read_timeout: Duration::from_secs(600),
        }
    }

    #[test]
    fn each_finding_cites_its_line() {
        let tree = parse(BROKEN, "/etc/nginx/sites-enabled/gw").unwrap_or_default();
        let listeners = [(IpAddr::from([127, 0, 0, 1]), 18789)];
        let f = findings(&routes(&tree), &facts(&listeners));
        let got: Vec<(&str, u32)> = f.iter().map(|f| (f.rule, f.at.line)).collect();
        assert_eq!(
            got,
            [
                ("config.request_id_not_forwarded", 13),
                ("config.request_id_not_logged", 2),
                ("config.short_timeout", 13),
                ("config.short_timeout", 13),
                ("config.stale_upstream_port", 6),
                ("config.websocket_half_path", 13),
            ],
            "{f:#?}"
        );
        let stale = f.iter().find(|f| f.rule == "config.stale_upstream_port");
        assert!(
            stale.is_some_and(|s| s.summary.contains("the Gateway listens on 127.0.0.1:18789")),
            "{stale:?}"
        );
        // The 5 s timeout is on the stale route, not the Gateway's: only /ws's defaults count.
        let half = f.iter().find(|f| f.rule == "config.websocket_half_path");
        assert!(half.is_some_and(|h| h.summary.contains("proxy_http_version 1.1 (it is 1.0)")));
    }

    #[test]
    fn a_correct_site_has_none() {
        let text = "http {
  log_format edgewatch '$remote_addr $request_id $status';
  access_log /var/log/nginx/access.log edgewatch;
  server {
    listen 443 ssl;
    location / {
      proxy_pass http://127.0.0.1:18789;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header X-Request-ID $request_id;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }
  }
}";
        let tree = parse(text, "ok.conf").unwrap_or_default();
        let listeners = [(IpAddr::from([127, 0, 0, 1]), 18789)];
        let r = routes(&tree);
        assert_eq!(r.len(), 1);
        assert_eq!(findings(&r, &facts(&listeners)), []);
        // The same site with the Gateway down: that is the Gateway down (a runtime incident
        // with its grace period), not the configuration.
        assert_eq!(findings(&r, &facts(&[])), []);
        // A typo'd port with the Gateway down too: stale, without a better port to name.
        let typo = text.replace("127.0.0.1:18789", "127.0.0.1:18798");
        let tree = parse(&typo, "t.conf").unwrap_or_default();
        let f: Vec<_> = findings(&routes(&tree), &facts(&[]))
            .into_iter()
            .filter(|f| f.rule == "config.stale_upstream_port")
            .collect();
        assert_eq!(f.len(), 1);
        assert!(
            f[0].summary.contains("every request gets a 502"),
            "{}",
            f[0].summary
        );
        // Offline, nothing is judged by what listens.
        let offline = Facts {
            listeners: None,
            ..facts(&[])
        };
        assert!(findings(&routes(&tree), &offline)
            .iter()
            .all(|f| f.rule != "config.stale_upstream_port"));
        // Proxying the Gateway's port on another host: it listens beyond loopback.
        let remote = text.replace("127.0.0.1:18789", "10.0.0.5:18789");
        let tree = parse(&remote, "r.conf").unwrap_or_default();
        let f = findings(&routes(&tree), &facts(&listeners));
        assert_eq!(
            f.iter().map(|f| f.rule).collect::<Vec<_>>(),
            ["config.non_loopback_upstream"]
        );
    }
}
