//! Netfilter DNAT port publishing, read from the text the netfilter tools print. Pure.
//!
//! Docker with its userland proxy off publishes a container port with a DNAT rule and no
//! listening socket at all, so a socket inventory never shows it. Two formats cover every
//! backend:
//! - `iptables-save -t nat` (and `ip6tables-save`), from either iptables backend (nft or
//!   legacy). Docker writes its rules this way: `-A DOCKER -d 127.0.0.1/32 ! -i docker0 -p tcp
//!   -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80`.
//! - `nft -j list ruleset`, for rules written natively in nftables (`dnat` statements).
//!   Rules that iptables-nft wrote show up there as opaque `xt` targets; they are skipped and
//!   counted, because the iptables-save text already describes them.
//!
//! A rule publishes a port to the outside unless it only matches a loopback destination.
//! Rules in OUTPUT, INPUT and POSTROUTING hooks only see local or outgoing traffic and are not
//! exposure.
use serde::{Deserialize, Serialize};

use super::{
    classify::{classify_dest_match, Scope},
    ExposureKey, Proto,
};

/// Which tool the rule was read with.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum NatBackend {
    /// `iptables-save` of the nf_tables backend (`iptables-nft`).
    IptablesNft,
    /// `iptables-legacy-save` (x_tables).
    IptablesLegacy,
    /// A native nftables rule (`nft -j list ruleset`).
    Nftables,
}

/// One DNAT rule that makes a port reachable.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct NatPublish {
    pub proto: Proto,
    /// First published port.
    pub port: u16,
    /// Last published port (equal to `port` for a single port).
    pub port_end: u16,
    /// The destination-address match as written (`127.0.0.1/32`, `!10.0.0.1`); none means
    /// every address of the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dest: Option<String>,
    /// Input-interface match as written (`!docker0`, `eth0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_iface: Option<String>,
    /// Where matching traffic goes: address (or range) as written.
    pub to_addr: String,
    /// Destination port after translation; `None` keeps the original port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_port: Option<u16>,
    pub scope: Scope,
    pub backend: NatBackend,
    /// `ipv4`, `ipv6` or `inet`.
    pub family: String,
    pub table: String,
    pub chain: String,
}

impl NatPublish {
    pub fn key(&self) -> ExposureKey {
        let to = match self.to_port {
            Some(p) if self.to_addr.contains(':') => format!("[{}]:{p}", self.to_addr),
            Some(p) => format!("{}:{p}", self.to_addr),
            None => self.to_addr.clone(),
        };
        ExposureKey::NatPublish {
            proto: self.proto,
            port: self.port,
            port_end: self.port_end,
            dest: self.dest.clone().unwrap_or_else(|| "*".to_owned()),
            to,
        }
    }

    /// Whether traffic to `port` on the host is published by this rule.
    pub fn publishes_port(&self, port: u16) -> bool {
        (self.port..=self.port_end).contains(&port)
    }

    /// The port the traffic reaches after translation, for a single-port rule.
    pub fn target_port(&self) -> Option<u16> {
        self.to_port
            .or((self.port == self.port_end).then_some(self.port))
    }
}

/// What parsing a ruleset found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatParse {
    pub publishes: Vec<NatPublish>,
    /// DNAT rules seen only as iptables-nft `xt` targets in nft's JSON (described by
    /// iptables-save instead).
    pub xt_rules_skipped: usize,
    /// DNAT rules whose shape was not understood (for example a map lookup as the address);
    /// reported so nothing is silently ignored.
    pub unparsed: Vec<String>,
}

/// Errors in the tools' output that make it unusable as a whole.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NatParseError {
    #[error("nft JSON output is not valid JSON: {0}")]
    Json(String),
    #[error("nft JSON output has no \"nftables\" array")]
    NoRuleset,
}

const NON_EXPOSING_HOOKS: [&str; 3] = ["output", "input", "postrouting"];

/// Parses `iptables-save -t nat` (or `ip6tables-save`) output.
pub fn parse_iptables_save(text: &str, backend: NatBackend, family: &str) -> NatParse {
    let mut out = NatParse::default();
    let mut table = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_owned();
            continue;
        }
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        if table != "nat" {
            continue;
        }
        let tokens = tokenize(rule);
        let Some((chain, args)) = tokens.split_first() else {
            continue;
        };
        if NON_EXPOSING_HOOKS
            .iter()
            .any(|h| chain.eq_ignore_ascii_case(h))
        {
            continue;
        }
        match parse_iptables_rule(args) {
            Ok(Some(rule)) => out
                .publishes
                .extend(rule.into_publishes(backend, family, &table, chain)),
            Ok(None) => {}
            Err(()) => out.unparsed.push(line.to_owned()),
        }
    }
    out
}

/// A DNAT rule's matches before it is split into one publish per protocol.
struct RuleMatch {
    protos: Vec<Proto>,
    ports: Vec<(u16, u16)>,
    dest: Option<String>,
    in_iface: Option<String>,
    to_addr: String,
    to_port: Option<u16>,
}

impl RuleMatch {
    fn into_publishes(
        self,
        backend: NatBackend,
        family: &str,
        table: &str,
        chain: &str,
    ) -> Vec<NatPublish> {
        let scope = classify_dest_match(self.dest.as_deref());
        let ports = if self.ports.is_empty() {
            vec![(1, u16::MAX)]
        } else {
            self.ports
        };
        let mut out = Vec::new();
        for proto in self.protos {
            for &(port, port_end) in &ports {
                out.push(NatPublish {
                    proto,
                    port,
                    port_end,
                    dest: self.dest.clone(),
                    in_iface: self.in_iface.clone(),
                    to_addr: self.to_addr.clone(),
                    to_port: self.to_port,
                    scope,
                    backend,
                    family: family.to_owned(),
                    table: table.to_owned(),
                    chain: chain.to_owned(),
                });
            }
        }
        out
    }
}

/// Splits an iptables-save rule into words, honouring the double quotes it puts around
/// comments.
fn tokenize(rule: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = rule.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    tokens.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        tokens.push(cur);
    }
    tokens
}

fn parse_port_spec(spec: &str) -> Option<Vec<(u16, u16)>> {
    spec.split(',')
        .map(|part| match part.split_once(':') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => {
                let p = part.parse().ok()?;
                Some((p, p))
            }
        })
        .collect()
}

/// Splits `ADDR[-ADDR][:PORT[-PORT]]` / `[V6]:PORT` into address and first port.
fn parse_to_destination(to: &str) -> Option<(String, Option<u16>)> {
    let first_port = |p: &str| p.split('-').next().and_then(|p| p.parse::<u16>().ok());
    if let Some(rest) = to.strip_prefix('[') {
        let (addr, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => Some(first_port(p)?),
            None => None,
        };
        return Some((addr.to_owned(), port));
    }
    if to.matches(':').count() > 1 {
        // A bare IPv6 address without a port.
        return Some((to.to_owned(), None));
    }
    match to.split_once(':') {
        Some((addr, port)) => Some((addr.to_owned(), Some(first_port(port)?))),
        None => Some((to.to_owned(), None)),
    }
}

/// `Ok(None)`: not a DNAT rule. `Err(())`: a DNAT rule we could not read.
fn parse_iptables_rule(args: &[String]) -> Result<Option<RuleMatch>, ()> {
    let mut protos = vec![Proto::Tcp, Proto::Udp];
    let mut ports = Vec::new();
    let mut dest = None;
    let mut in_iface = None;
    let mut to = None;
    let mut is_dnat = false;
    let mut negate = false;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        let value = args.get(i + 1).map(String::as_str);
        let neg = std::mem::take(&mut negate);
        let with_neg = |v: &str| if neg { format!("!{v}") } else { v.to_owned() };
        match arg {
            "!" => {
                negate = true;
                i += 1;
                continue;
            }
            "-p" | "--protocol" => {
                protos = match value {
                    Some("tcp") if !neg => vec![Proto::Tcp],
                    Some("udp") if !neg => vec![Proto::Udp],
                    Some("tcp" | "udp") => vec![Proto::Tcp, Proto::Udp],
                    // SCTP, ICMP, ...: not a port this product watches.
                    _ => Vec::new(),
                };
            }
            "--dport" | "--destination-port" | "--dports" | "--destination-ports" => {
                let spec = value.ok_or(())?;
                if neg {
                    // Every port but these: as good as all ports.
                    ports = Vec::new();
                } else {
                    ports = parse_port_spec(spec).ok_or(())?;
                }
            }
            "-d" | "--destination" | "--dst" => dest = value.map(with_neg),
            "-i" | "--in-interface" => in_iface = value.map(with_neg),
            "-j" | "--jump" => is_dnat = value == Some("DNAT"),
            "--to-destination" | "--to" => to = value.map(str::to_owned),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    if !is_dnat {
        return Ok(None);
    }
    let (to_addr, to_port) = parse_to_destination(to.as_deref().ok_or(())?).ok_or(())?;
    Ok(Some(RuleMatch {
        protos,
        ports,
        dest,
        in_iface,
        to_addr,
        to_port,
    }))
}

/// `nft -j list ruleset`, typed: only what the DNAT reading needs; every other item, key and
/// expression (tables, sets, counters, jumps, ...) is accepted and ignored, and an operand of
/// a shape not listed is `Operand::Other` (its rule is then reported as not understood).
mod nft {
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub struct Ruleset {
        pub nftables: Option<Vec<Item>>,
    }

    /// One element of the list: an object with one key naming its kind.
    #[derive(Deserialize)]
    pub struct Item {
        pub chain: Option<Chain>,
        pub rule: Option<Rule>,
    }

    #[derive(Deserialize)]
    pub struct Chain {
        pub family: String,
        pub table: String,
        pub name: String,
        /// Base chains only.
        pub hook: Option<String>,
    }

    #[derive(Deserialize)]
    pub struct Rule {
        pub family: String,
        pub table: String,
        pub chain: String,
        pub handle: Option<u64>,
        #[serde(default)]
        pub expr: Vec<Statement>,
    }

    /// One statement of a rule; the kinds read here, the others ignored.
    #[derive(Deserialize)]
    pub struct Statement {
        #[serde(rename = "match")]
        pub match_: Option<Match>,
        pub dnat: Option<Dnat>,
        pub xt: Option<Xt>,
    }

    #[derive(Deserialize)]
    pub struct Match {
        #[serde(default = "equal")]
        pub op: String,
        pub left: Operand,
        pub right: Operand,
    }

    fn equal() -> String {
        "==".to_owned()
    }

    #[derive(Deserialize)]
    pub struct Dnat {
        pub addr: Option<Operand>,
        pub port: Option<Operand>,
    }

    #[derive(Deserialize)]
    pub struct Xt {
        pub name: Option<String>,
    }

    #[derive(Deserialize)]
    pub struct Payload {
        #[serde(default)]
        pub protocol: String,
        #[serde(default)]
        pub field: String,
    }

    #[derive(Deserialize)]
    pub struct Meta {
        pub key: String,
    }

    #[derive(Deserialize)]
    pub struct Prefix {
        pub addr: String,
        pub len: u8,
    }

    /// An expression on either side of a match, or a dnat's address or port.
    #[derive(Deserialize)]
    #[serde(untagged)]
    pub enum Operand {
        Number(u64),
        Text(String),
        Payload { payload: Payload },
        Meta { meta: Meta },
        Set { set: Vec<Operand> },
        Range { range: [u64; 2] },
        Prefix { prefix: Prefix },
        Other(serde::de::IgnoredAny),
    }
}

use nft::Operand;

/// Parses `nft -j list ruleset` output: native `dnat` statements in NAT chains.
pub fn parse_nft_json(text: &str) -> Result<NatParse, NatParseError> {
    let root: nft::Ruleset =
        serde_json::from_str(text).map_err(|e| NatParseError::Json(e.to_string()))?;
    let items = root.nftables.ok_or(NatParseError::NoRuleset)?;
    // (family, table, chain) -> hook, for base chains.
    let hooks: std::collections::HashMap<(&str, &str, &str), &str> = items
        .iter()
        .filter_map(|i| i.chain.as_ref())
        .filter_map(|c| {
            let hook = c.hook.as_deref()?;
            Some(((c.family.as_str(), c.table.as_str(), c.name.as_str()), hook))
        })
        .collect();
    let mut out = NatParse::default();
    for rule in items.iter().filter_map(|i| i.rule.as_ref()) {
        let (family, table, chain) = (rule.family.as_str(), &rule.table, &rule.chain);
        if let Some(hook) = hooks.get(&(family, table.as_str(), chain.as_str())) {
            if NON_EXPOSING_HOOKS.contains(hook) {
                continue;
            }
        }
        let is_xt_dnat = rule.expr.iter().any(|e| {
            e.xt.as_ref()
                .is_some_and(|x| x.name.as_deref() == Some("DNAT"))
        });
        if is_xt_dnat {
            out.xt_rules_skipped += 1;
            continue;
        }
        let Some(dnat) = rule.expr.iter().find_map(|e| e.dnat.as_ref()) else {
            continue;
        };
        match parse_nft_rule(&rule.expr, dnat) {
            Some(m) => {
                let fam = match family {
                    "ip" => "ipv4",
                    "ip6" => "ipv6",
                    other => other,
                };
                out.publishes
                    .extend(m.into_publishes(NatBackend::Nftables, fam, table, chain));
            }
            None => out.unparsed.push(format!(
                "nft rule {family} {table} {chain} handle {}",
                rule.handle.map(|h| h.to_string()).unwrap_or_default()
            )),
        }
    }
    Ok(out)
}

fn nft_port(v: &Operand) -> Option<(u16, u16)> {
    match v {
        Operand::Number(p) => {
            let p = u16::try_from(*p).ok()?;
            Some((p, p))
        }
        Operand::Range { range: [a, b] } => {
            Some((u16::try_from(*a).ok()?, u16::try_from(*b).ok()?))
        }
        _ => None,
    }
}

fn nft_ports(right: &Operand) -> Option<Vec<(u16, u16)>> {
    match right {
        Operand::Set { set } => set.iter().map(nft_port).collect(),
        other => nft_port(other).map(|p| vec![p]),
    }
}

fn nft_addr(right: &Operand) -> Option<String> {
    match right {
        Operand::Text(s) => Some(s.clone()),
        Operand::Prefix { prefix } => Some(format!("{}/{}", prefix.addr, prefix.len)),
        _ => None,
    }
}

fn parse_nft_rule(exprs: &[nft::Statement], dnat: &nft::Dnat) -> Option<RuleMatch> {
    let mut protos = vec![Proto::Tcp, Proto::Udp];
    let mut ports = Vec::new();
    let mut dest = None;
    let mut in_iface = None;
    for m in exprs.iter().filter_map(|e| e.match_.as_ref()) {
        let negated = m.op == "!=";
        match &m.left {
            Operand::Payload { payload } => {
                match (payload.protocol.as_str(), payload.field.as_str()) {
                    (protocol @ ("tcp" | "udp" | "th"), "dport") => {
                        match protocol {
                            "tcp" => protos = vec![Proto::Tcp],
                            "udp" => protos = vec![Proto::Udp],
                            _ => {}
                        }
                        if !negated {
                            ports = nft_ports(&m.right)?;
                        }
                    }
                    ("ip" | "ip6", "daddr") => {
                        let a = nft_addr(&m.right)?;
                        dest = Some(if negated { format!("!{a}") } else { a });
                    }
                    _ => {}
                }
            }
            Operand::Meta { meta } => match (meta.key.as_str(), &m.right) {
                ("l4proto", Operand::Text(p)) if !negated => match p.as_str() {
                    "tcp" => protos = vec![Proto::Tcp],
                    "udp" => protos = vec![Proto::Udp],
                    _ => {}
                },
                ("iifname", right) => {
                    let Operand::Text(name) = right else {
                        return None;
                    };
                    in_iface = Some(if negated {
                        format!("!{name}")
                    } else {
                        name.clone()
                    });
                }
                _ => {}
            },
            _ => {}
        }
    }
    let to_addr = nft_addr(dnat.addr.as_ref()?)?;
    let to_port = match &dnat.port {
        Some(Operand::Number(p)) => Some(u16::try_from(*p).ok()?),
        Some(_) => return None,
        None => None,
    };
    Some(RuleMatch {
        protos,
        ports,
        dest,
        in_iface,
        to_addr,
        to_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from iptables-save v1.8.9 (nf_tables) in a test namespace with Docker-style rules.
    const IPTABLES_SAVE: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables) on Sat Nov 21 16:42:36 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 18789 -j DNAT --to-destination 172.17.0.2:18789
-A DOCKER -d 127.0.0.1/32 ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.3:80
-A DOCKER -p udp -m multiport --dports 5000:5002,6000 -m comment --comment "a \"quoted\" note" -j DNAT --to-destination 10.0.0.9
COMMIT
"#;

    #[test]
    fn docker_rules_from_iptables_save() {
        let parsed = parse_iptables_save(IPTABLES_SAVE, NatBackend::IptablesNft, "ipv4");
        assert!(parsed.unparsed.is_empty(), "{:?}", parsed.unparsed);
        let p = &parsed.publishes;
        assert_eq!(p.len(), 4, "{p:#?}");
        assert_eq!(
            (p[0].proto, p[0].port, p[0].port_end),
            (Proto::Tcp, 18789, 18789)
        );
        assert_eq!(p[0].scope, Scope::Wildcard);
        assert_eq!(p[0].in_iface.as_deref(), Some("!docker0"));
        assert_eq!(
            (p[0].to_addr.as_str(), p[0].to_port),
            ("172.17.0.2", Some(18789))
        );
        assert_eq!(p[1].scope, Scope::Loopback);
        assert_eq!(p[1].dest.as_deref(), Some("127.0.0.1/32"));
        assert_eq!(p[1].target_port(), Some(80));
        assert_eq!(
            (p[2].proto, p[2].port, p[2].port_end),
            (Proto::Udp, 5000, 5002)
        );
        assert_eq!((p[3].port, p[3].to_port), (6000, None));
        assert_eq!(p[3].target_port(), Some(6000));
        assert!(p[2].publishes_port(5001));
        assert!(!p[2].publishes_port(5003));
    }

    #[test]
    fn ipv6_and_odd_rules() {
        let text = "*nat\n\
            -A PREROUTING -p udp -m udp --dport 5353 -j DNAT --to-destination [fd00::2]:53\n\
            -A PREROUTING -d 203.0.113.5/32 -j DNAT --to-destination 10.0.0.7\n\
            -A PREROUTING ! -d 127.0.0.1/32 -p tcp --dport 81 -j DNAT --to-destination fd00::3\n\
            -A PREROUTING -p tcp --dport 82 -j DNAT\n\
            -A PREROUTING -p icmp -j DNAT --to-destination 10.0.0.8\n\
            COMMIT\n*filter\n-A INPUT -p tcp --dport 1 -j DNAT --to-destination 1.1.1.1\n";
        let parsed = parse_iptables_save(text, NatBackend::IptablesLegacy, "ipv6");
        let p = &parsed.publishes;
        assert_eq!((p[0].to_addr.as_str(), p[0].to_port), ("fd00::2", Some(53)));
        // No protocol: every port of both protocols, towards a public destination address.
        assert_eq!(p[1].scope, Scope::Public);
        assert_eq!((p[1].port, p[1].port_end), (1, u16::MAX));
        assert_eq!(p.iter().filter(|x| x.to_addr == "10.0.0.7").count(), 2);
        let neg = p.iter().find(|x| x.port == 81).expect("negated dest rule");
        assert_eq!(neg.scope, Scope::Wildcard);
        assert_eq!(neg.to_addr, "fd00::3");
        // A DNAT without a destination is reported, not dropped; ICMP is no port exposure.
        assert_eq!(parsed.unparsed.len(), 1, "{:?}", parsed.unparsed);
        assert!(!p.iter().any(|x| x.to_addr == "10.0.0.8"));
        // Rules outside the nat table are not publishes.
        assert!(!p.iter().any(|x| x.to_addr == "1.1.1.1"));
    }

    // Captured from nft 1.0.6 in the same namespace, plus native nftables rules.
    const NFT_JSON: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "nat", "handle": 1}}, {"chain": {"family": "ip", "table": "nat", "name": "DOCKER", "handle": 1}}, {"chain": {"family": "ip", "table": "nat", "name": "PREROUTING", "handle": 2, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}, {"rule": {"family": "ip", "table": "nat", "chain": "DOCKER", "handle": 4, "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "docker0"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 18789}}, {"counter": {"packets": 0, "bytes": 0}}, {"xt": {"type": "target", "name": "DNAT"}}]}}, {"table": {"family": "inet", "name": "mynat", "handle": 3}}, {"chain": {"family": "inet", "table": "mynat", "name": "pre", "handle": 1, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}, {"chain": {"family": "inet", "table": "mynat", "name": "out", "handle": 9, "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}}, {"rule": {"family": "inet", "table": "mynat", "chain": "pre", "handle": 2, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 9000}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "127.0.0.1"}}, {"dnat": {"family": "ip", "addr": "10.0.0.2", "port": 9000}}]}}, {"rule": {"family": "inet", "table": "mynat", "chain": "pre", "handle": 4, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": [9100, 9200]}}}, {"dnat": {"family": "ip", "addr": "10.0.0.3"}}]}}, {"rule": {"family": "inet", "table": "mynat", "chain": "pre", "handle": 5, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": {"range": [7000, 7010]}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "127.0.0.0", "len": 8}}}}, {"dnat": {"family": "ip", "addr": "10.0.0.4", "port": 53}}]}}, {"rule": {"family": "inet", "table": "mynat", "chain": "out", "handle": 10, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 9300}}, {"dnat": {"family": "ip", "addr": "10.0.0.5"}}]}}, {"rule": {"family": "inet", "table": "mynat", "chain": "pre", "handle": 6, "expr": [{"dnat": {"family": "ip", "addr": {"map": {"key": {"payload": {"protocol": "tcp", "field": "dport"}}, "data": "@m"}}}}]}}]}"#;

    #[test]
    fn native_nft_rules() {
        let parsed = parse_nft_json(NFT_JSON).expect("nft json");
        assert_eq!(parsed.xt_rules_skipped, 1);
        assert_eq!(parsed.unparsed.len(), 1, "the map-valued dnat is reported");
        let p = &parsed.publishes;
        assert_eq!(p.len(), 4, "{p:#?}");
        assert_eq!((p[0].port, p[0].scope), (9000, Scope::Loopback));
        assert_eq!(p[0].backend, NatBackend::Nftables);
        assert_eq!(p[0].family, "inet");
        assert_eq!((p[1].port, p[2].port), (9100, 9200));
        assert_eq!(p[1].scope, Scope::Wildcard);
        assert_eq!(p[1].target_port(), Some(9100));
        assert_eq!(
            (p[3].proto, p[3].port, p[3].port_end),
            (Proto::Udp, 7000, 7010)
        );
        assert_eq!(p[3].scope, Scope::Loopback);
        // The output-hook rule only affects local traffic.
        assert!(!p.iter().any(|x| x.port == 9300));
    }

    #[test]
    fn bad_nft_output_is_an_error() {
        assert!(matches!(parse_nft_json("{"), Err(NatParseError::Json(_))));
        assert_eq!(parse_nft_json("{}"), Err(NatParseError::NoRuleset));
        let empty = parse_nft_json(r#"{"nftables": []}"#).expect("empty ruleset");
        assert!(empty.publishes.is_empty());
        assert!(matches!(
            parse_nft_json(r#"{"nftables": "x"}"#),
            Err(NatParseError::Json(_))
        ));
        // Expressions of kinds the reader does not know are accepted and ignored: a ct match
        // (an array on the right), a statement kind it has never seen, an item kind too.
        let odd = r#"{"nftables": [{"flowtable": {"name": "f"}}, {"rule": {"family": "ip",
            "table": "nat", "chain": "pre", "handle": 7, "expr": [
            {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["new"]}},
            {"quota": {"val": 1}}, {"dnat": {"addr": "10.0.0.9", "port": 80}}]}},
            {"rule": {"family": "ip", "table": "nat", "chain": "pre", "handle": 8, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
            "right": {"set": [1, {"concat": [1, 2]}]}}}, {"dnat": {"addr": "10.0.0.8"}}]}}]}"#;
        let parsed = parse_nft_json(odd).expect("odd but valid");
        assert_eq!(parsed.publishes.len(), 2, "{:#?}", parsed.publishes);
        assert!(parsed.publishes.iter().all(|p| p.to_addr == "10.0.0.9"));
        assert_eq!(parsed.unparsed, ["nft rule ip nat pre handle 8"]);
    }

    #[test]
    fn keys_are_distinct_per_rule() {
        let parsed = parse_iptables_save(IPTABLES_SAVE, NatBackend::IptablesNft, "ipv4");
        let keys: std::collections::BTreeSet<_> =
            parsed.publishes.iter().map(NatPublish::key).collect();
        assert_eq!(keys.len(), parsed.publishes.len());
        assert_eq!(
            parsed.publishes[0].key().to_string(),
            "tcp dnat *:18789 -> 172.17.0.2:18789"
        );
    }
}
