//! The exposure policy and the drift alert lifecycle. Pure: exposures in, verdicts and alert
//! transitions out.
//!
//! Rules:
//! - `exposure.watched_port_exposed` (critical): a watched port (the Gateway's 18789 by
//!   default) listens on anything but loopback in the sidecar's network namespace, or a
//!   docker-proxy listening off-loopback forwards to a watched container port.
//! - `exposure.watched_port_published` (critical): a DNAT rule publishes a watched port (or
//!   forwards to one) without restricting the destination to loopback.
//! - `exposure.unexpected_listener` (warning): a wildcard or public listener not on the allow
//!   list.
//! - `exposure.unexpected_publish` (warning): a DNAT publish reachable from outside, not on
//!   the allow list.
//!
//! An alert fires when its finding appears and resolves when it goes away; one finding is one
//! alert, deduplicated by rule and exposure key.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::config::{AllowRule, ExposureConfig};
use super::{Exposure, ExposureKey, Scope};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// A drift finding on one exposure.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Finding {
    pub rule: &'static str,
    pub severity: Severity,
    pub summary: String,
    /// The runbook's first move for this symptom.
    pub first_move: &'static str,
}

/// The policy's judgement of one exposure.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Verdict {
    /// Loopback only.
    Ok,
    /// On a private address, or inside another network namespace: not reachable from the
    /// outside by itself.
    Internal,
    /// Exposed, and on the allow list.
    Allowed { reason: Option<String> },
    /// Drift.
    Drift(Finding),
}

const MOVE_BIND_LOOPBACK: &str = "Bind the Gateway to loopback (gateway.bind / --bind loopback, \
    or publish it as 127.0.0.1:18789:18789 in Docker) and keep only the reverse proxy on 443; \
    confirm with `edgewatch exposure`.";
const MOVE_UNEXPECTED: &str = "Find out what opened it (pid, command line and container are in \
    the evidence); bind it to loopback or stop it, or add it to exposure.allow if it is meant \
    to be public.";
const MOVE_PUBLISH_LOOPBACK: &str = "Publish the port on loopback only (`-p 127.0.0.1:PORT:PORT` \
    in Docker, or restrict the DNAT rule with `-d 127.0.0.1`); remember Docker's DNAT bypasses \
    ufw/INPUT filtering.";

/// Judges exposures against the configured policy.
#[derive(Clone, Debug)]
pub struct Policy {
    watched_ports: Vec<u16>,
    allow: Vec<AllowRule>,
}

impl Policy {
    pub fn new(config: &ExposureConfig) -> Self {
        Self {
            watched_ports: config.watched_ports.clone(),
            allow: config.allow.clone(),
        }
    }

    pub fn is_watched(&self, port: u16) -> bool {
        self.watched_ports.contains(&port)
    }

    /// Whether an exposure concerns a watched port: its own port, the port a docker-proxy
    /// forwards to, or any port a DNAT rule publishes or translates to.
    pub fn touches_watched(&self, exposure: &Exposure) -> Option<u16> {
        match exposure {
            Exposure::Listener(l) => {
                let forwarded = l
                    .process
                    .as_ref()
                    .and_then(|p| p.docker_proxy.as_ref())
                    .map(|d| d.container_port);
                [Some(l.port), forwarded]
                    .into_iter()
                    .flatten()
                    .find(|p| self.is_watched(*p))
            }
            Exposure::NatPublish(p) => self
                .watched_ports
                .iter()
                .copied()
                .find(|w| p.publishes_port(*w) || p.to_port == Some(*w)),
        }
    }

    fn allowed(&self, exposure: &Exposure) -> Option<&AllowRule> {
        let (proto, port, comm) = match exposure {
            Exposure::Listener(l) => (l.proto, l.port, l.comm()),
            Exposure::NatPublish(p) => {
                if p.port != p.port_end {
                    return None;
                }
                (p.proto, p.port, None)
            }
        };
        self.allow.iter().find(|rule| {
            rule.port == port
                && rule.proto.is_none_or(|p| p == proto)
                && rule
                    .process
                    .as_deref()
                    .is_none_or(|want| comm == Some(want))
        })
    }

    /// Judges one exposure.
    pub fn assess(&self, exposure: &Exposure) -> Verdict {
        let scope = exposure.scope();
        if !scope.is_exposed() {
            return Verdict::Ok;
        }
        if let Exposure::Listener(l) = exposure {
            if !l.host_netns {
                return Verdict::Internal;
            }
        }
        if let Some(port) = self.touches_watched(exposure) {
            return Verdict::Drift(match exposure {
                Exposure::Listener(l) => Finding {
                    rule: "exposure.watched_port_exposed",
                    severity: Severity::Critical,
                    summary: format!(
                        "watched port {port} is reachable on {} ({scope}){}",
                        exposure.key(),
                        l.comm()
                            .map(|c| format!(", opened by {c}"))
                            .unwrap_or_default()
                    ),
                    first_move: MOVE_BIND_LOOPBACK,
                },
                Exposure::NatPublish(p) => Finding {
                    rule: "exposure.watched_port_published",
                    severity: Severity::Critical,
                    summary: format!(
                        "watched port {port} is published by a DNAT rule ({}) with no loopback \
                         restriction, in {} {}",
                        exposure.key(),
                        p.table,
                        p.chain
                    ),
                    first_move: MOVE_PUBLISH_LOOPBACK,
                },
            });
        }
        if let Some(rule) = self.allowed(exposure) {
            return Verdict::Allowed {
                reason: rule.reason.clone(),
            };
        }
        if scope == Scope::Private {
            return Verdict::Internal;
        }
        Verdict::Drift(match exposure {
            Exposure::Listener(l) => Finding {
                rule: "exposure.unexpected_listener",
                severity: Severity::Warning,
                summary: format!(
                    "{scope} listener {} is not on the allow list{}",
                    exposure.key(),
                    l.comm().map(|c| format!(" ({c})")).unwrap_or_default()
                ),
                first_move: MOVE_UNEXPECTED,
            },
            Exposure::NatPublish(_) => Finding {
                rule: "exposure.unexpected_publish",
                severity: Severity::Warning,
                summary: format!(
                    "DNAT rule {} publishes a port to the outside and is not on the allow list",
                    exposure.key()
                ),
                first_move: MOVE_PUBLISH_LOOPBACK,
            },
        })
    }
}

/// Whether an alert starts or ends.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// One alert transition.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AlertEvent {
    pub state: AlertState,
    pub rule: &'static str,
    pub severity: Severity,
    /// Deduplication key: the same incident always has the same key.
    pub dedup_key: String,
    pub summary: String,
    pub first_move: &'static str,
    /// The exposure as it was when the alert fired (the evidence: socket, process, container
    /// or rule).
    pub evidence: Exposure,
    /// Unix time in nanoseconds when the alert fired.
    pub fired_at_ns: u64,
    /// Unix time in nanoseconds of this transition.
    pub at_ns: u64,
}

#[derive(Clone, Debug)]
struct Active {
    finding: Finding,
    evidence: Exposure,
    fired_at_ns: u64,
}

/// The set of firing drift alerts; feed it every exposure after each change.
#[derive(Clone, Debug, Default)]
pub struct DriftTracker {
    active: BTreeMap<(ExposureKey, &'static str), Active>,
    /// A finding that went away resolves only once it stayed away this long (a restarting
    /// proxy closes and reopens its sockets within it: no resolved-then-firing pair).
    flap_window_ns: u64,
    /// Findings gone since when, not resolved yet.
    leaving: BTreeMap<(ExposureKey, &'static str), u64>,
}

impl DriftTracker {
    /// A tracker whose resolutions wait `flap_window_ns` (0: at once).
    pub fn with_flap_window(flap_window_ns: u64) -> Self {
        Self {
            flap_window_ns,
            ..Self::default()
        }
    }

    /// Resolves the findings that stayed away for the flap window by `now_ns`.
    pub fn settle(&mut self, now_ns: u64) -> Vec<AlertEvent> {
        // Called every pipeline turn (every packet offline): nothing leaving, nothing to do.
        if self.leaving.is_empty() {
            return Vec::new();
        }
        let due: Vec<_> = self
            .leaving
            .iter()
            .filter(|(_, since)| now_ns.saturating_sub(**since) >= self.flap_window_ns)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for key in due {
            self.leaving.remove(&key);
            if let Some(active) = self.active.remove(&key) {
                out.push(event(AlertState::Resolved, &key, active, now_ns));
            }
        }
        out
    }

    /// Compares the findings on the current exposures with the firing alerts: new findings
    /// fire, findings that went away resolve. `now_ns` stamps the transitions.
    pub fn reconcile<'a>(
        &mut self,
        policy: &Policy,
        exposures: impl IntoIterator<Item = &'a Exposure>,
        now_ns: u64,
    ) -> Vec<AlertEvent> {
        let mut current = BTreeMap::new();
        for exposure in exposures {
            if let Verdict::Drift(finding) = policy.assess(exposure) {
                current.insert((exposure.key(), finding.rule), (finding, exposure));
            }
        }
        let gone: Vec<_> = self
            .active
            .keys()
            .filter(|k| !current.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.leaving.entry(key).or_insert(now_ns);
        }
        let mut out = self.settle(now_ns);
        for (key, (finding, exposure)) in current {
            // Back within the flap window: still the same incident.
            self.leaving.remove(&key);
            if self.active.contains_key(&key) {
                continue;
            }
            let active = Active {
                finding,
                evidence: exposure.clone(),
                fired_at_ns: now_ns,
            };
            out.push(event(AlertState::Firing, &key, active.clone(), now_ns));
            self.active.insert(key, active);
        }
        out
    }

    /// Number of alerts firing now.
    pub fn firing(&self) -> usize {
        self.active.len()
    }

    /// The firing alerts as they stand (to send them again), stamped `now_ns`.
    pub fn firing_events(&self, now_ns: u64) -> Vec<AlertEvent> {
        self.active
            .iter()
            .map(|(k, a)| event(AlertState::Firing, k, a.clone(), now_ns))
            .collect()
    }
}

fn event(
    state: AlertState,
    key: &(ExposureKey, &'static str),
    active: Active,
    now_ns: u64,
) -> AlertEvent {
    AlertEvent {
        state,
        rule: active.finding.rule,
        severity: active.finding.severity,
        dedup_key: format!("{}|{}", key.1, key.0),
        summary: active.finding.summary,
        first_move: active.finding.first_move,
        evidence: active.evidence,
        fired_at_ns: active.fired_at_ns,
        at_ns: now_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exposure::{
        classify,
        nat::{NatBackend, NatPublish},
        process::DockerProxy,
        Family, Listener, ProcessInfo, Proto,
    };

    fn listener(addr: &str, port: u16, comm: &str) -> Exposure {
        let addr = addr.parse().expect("addr");
        Exposure::Listener(Listener {
            proto: Proto::Tcp,
            addr,
            port,
            family: Family::Ipv4,
            scope: classify(addr),
            netns: None,
            host_netns: true,
            netns_addrs: Vec::new(),
            inode: None,
            uid: None,
            process: Some(ProcessInfo {
                pid: 42,
                comm: comm.to_owned(),
                ..Default::default()
            }),
            cgroup_id: None,
        })
    }

    fn publish(dest: Option<&str>, port: u16, to_port: u16) -> Exposure {
        Exposure::NatPublish(NatPublish {
            proto: Proto::Tcp,
            port,
            port_end: port,
            dest: dest.map(str::to_owned),
            in_iface: Some("!docker0".to_owned()),
            to_addr: "172.17.0.2".to_owned(),
            to_port: Some(to_port),
            scope: classify::classify_dest_match(dest),
            backend: NatBackend::IptablesNft,
            family: "ipv4".to_owned(),
            table: "nat".to_owned(),
            chain: "DOCKER".to_owned(),
        })
    }

    fn rule_of(v: Verdict) -> &'static str {
        match v {
            Verdict::Drift(f) => f.rule,
            other => panic!("expected drift, got {other:?}"),
        }
    }

    #[test]
    fn verdicts() {
        let policy = Policy::new(&ExposureConfig::default());
        assert_eq!(
            policy.assess(&listener("127.0.0.1", 18789, "node")),
            Verdict::Ok
        );
        assert_eq!(
            rule_of(policy.assess(&listener("0.0.0.0", 18789, "node"))),
            "exposure.watched_port_exposed"
        );
        assert_eq!(
            rule_of(policy.assess(&listener("10.0.0.5", 18789, "node"))),
            "exposure.watched_port_exposed",
            "a watched port must be loopback only, private addresses included"
        );
        assert!(matches!(
            policy.assess(&listener("0.0.0.0", 443, "caddy")),
            Verdict::Allowed { .. }
        ));
        assert_eq!(
            rule_of(policy.assess(&listener("::", 9229, "node"))),
            "exposure.unexpected_listener"
        );
        assert_eq!(
            policy.assess(&listener("10.0.0.5", 9229, "node")),
            Verdict::Internal
        );
        assert_eq!(
            rule_of(policy.assess(&listener("203.0.113.4", 9229, "node"))),
            "exposure.unexpected_listener"
        );
    }

    #[test]
    fn other_namespaces_are_internal() {
        let policy = Policy::new(&ExposureConfig::default());
        let Exposure::Listener(mut l) = listener("0.0.0.0", 18789, "node") else {
            unreachable!()
        };
        l.host_netns = false;
        l.netns = Some(4026532000);
        assert_eq!(policy.assess(&Exposure::Listener(l)), Verdict::Internal);
    }

    #[test]
    fn docker_proxy_forwarding_to_a_watched_port() {
        let policy = Policy::new(&ExposureConfig::default());
        let Exposure::Listener(mut l) = listener("0.0.0.0", 8080, "docker-proxy") else {
            unreachable!()
        };
        l.process.as_mut().expect("process").docker_proxy = Some(DockerProxy {
            proto: Proto::Tcp,
            host_ip: "0.0.0.0".into(),
            host_port: 8080,
            container_ip: "172.17.0.2".into(),
            container_port: 18789,
        });
        assert_eq!(
            rule_of(policy.assess(&Exposure::Listener(l))),
            "exposure.watched_port_exposed"
        );
    }

    #[test]
    fn nat_publishes() {
        let policy = Policy::new(&ExposureConfig::default());
        assert_eq!(
            rule_of(policy.assess(&publish(None, 18789, 18789))),
            "exposure.watched_port_published"
        );
        assert_eq!(
            rule_of(policy.assess(&publish(None, 8080, 18789))),
            "exposure.watched_port_published",
            "forwarding to the watched port counts"
        );
        assert_eq!(
            policy.assess(&publish(Some("127.0.0.1/32"), 18789, 18789)),
            Verdict::Ok
        );
        assert_eq!(
            rule_of(policy.assess(&publish(None, 8080, 80))),
            "exposure.unexpected_publish"
        );
        assert!(matches!(
            policy.assess(&publish(None, 443, 443)),
            Verdict::Allowed { .. }
        ));
    }

    #[test]
    fn allow_rule_with_process_only_matches_that_process() {
        let config = ExposureConfig {
            allow: vec![AllowRule {
                port: 8443,
                proto: None,
                process: Some("caddy".into()),
                reason: None,
            }],
            ..Default::default()
        };
        let policy = Policy::new(&config);
        assert!(matches!(
            policy.assess(&listener("0.0.0.0", 8443, "caddy")),
            Verdict::Allowed { .. }
        ));
        assert_eq!(
            rule_of(policy.assess(&listener("0.0.0.0", 8443, "nc"))),
            "exposure.unexpected_listener"
        );
    }

    #[test]
    fn alerts_fire_once_and_resolve() {
        let policy = Policy::new(&ExposureConfig::default());
        let mut tracker = DriftTracker::default();
        let ok = listener("127.0.0.1", 18789, "node");
        let bad = listener("0.0.0.0", 18789, "node");
        assert!(tracker.reconcile(&policy, [&ok], 1).is_empty());
        let fired = tracker.reconcile(&policy, [&ok, &bad], 2);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].state, AlertState::Firing);
        assert_eq!(fired[0].severity, Severity::Critical);
        assert!(
            fired[0].dedup_key.contains("0.0.0.0:18789"),
            "{}",
            fired[0].dedup_key
        );
        // The same drift seen again is the same incident: no new alert.
        assert!(tracker.reconcile(&policy, [&ok, &bad], 3).is_empty());
        assert_eq!(tracker.firing(), 1);
        let resolved = tracker.reconcile(&policy, [&ok], 4);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].state, AlertState::Resolved);
        assert_eq!((resolved[0].fired_at_ns, resolved[0].at_ns), (2, 4));
        assert_eq!(resolved[0].dedup_key, fired[0].dedup_key);
        assert_eq!(tracker.firing(), 0);
    }

    #[test]
    fn a_socket_closed_and_reopened_within_the_flap_window_is_one_incident() {
        let policy = Policy::new(&ExposureConfig::default());
        let mut tracker = DriftTracker::with_flap_window(2_000);
        let bad = listener("0.0.0.0", 18789, "node");
        assert_eq!(tracker.reconcile(&policy, [&bad], 1_000).len(), 1);
        // A restart: gone, back 500 ns later. Nothing to say.
        assert!(tracker.reconcile(&policy, [], 2_000).is_empty());
        assert!(tracker.reconcile(&policy, [&bad], 2_500).is_empty());
        assert!(tracker.settle(10_000).is_empty());
        assert_eq!(tracker.firing(), 1);
        // Gone for good: resolved once the window passed, stamped then.
        assert!(tracker.reconcile(&policy, [], 20_000).is_empty());
        assert!(tracker.settle(21_000).is_empty());
        let resolved = tracker.settle(22_000);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].state, AlertState::Resolved);
        assert_eq!(resolved[0].at_ns, 22_000);
        assert_eq!(tracker.firing(), 0);
    }
}
