//! Classifies a bound address: loopback only, every interface (wildcard), or one specific
//! address that is either private (RFC 1918, CGNAT, link-local, ULA) or public.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// How far a bound address reaches.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// 127.0.0.0/8, ::1, ::ffff:127.0.0.0/104: this host only.
    Loopback,
    /// A private, link-local, CGNAT or unique-local address: one internal network.
    Private,
    /// A specific globally routable address.
    Public,
    /// 0.0.0.0 or `::`: every interface, public ones included.
    Wildcard,
}

impl Scope {
    /// Reachable from some other host.
    pub fn is_exposed(self) -> bool {
        self != Scope::Loopback
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Loopback => "loopback",
            Scope::Private => "private",
            Scope::Public => "public",
            Scope::Wildcard => "wildcard",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classifies one address.
pub fn classify(addr: IpAddr) -> Scope {
    match addr {
        IpAddr::V4(a) => classify_v4(a),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => classify_v4(v4),
            None => classify_v6(a),
        },
    }
}

fn classify_v4(a: Ipv4Addr) -> Scope {
    let [b0, b1, ..] = a.octets();
    if a.is_unspecified() {
        Scope::Wildcard
    } else if a.is_loopback() {
        Scope::Loopback
    } else if a.is_private() || a.is_link_local() || (b0 == 100 && (64..128).contains(&b1)) {
        Scope::Private
    } else {
        Scope::Public
    }
}

fn classify_v6(a: Ipv6Addr) -> Scope {
    let first = a.segments()[0];
    if a.is_unspecified() {
        Scope::Wildcard
    } else if a.is_loopback() {
        Scope::Loopback
    } else if (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80 {
        // fc00::/7 unique local, fe80::/10 link-local.
        Scope::Private
    } else {
        Scope::Public
    }
}

/// Classifies a netfilter destination match such as `127.0.0.1/32`, `10.0.0.0/8` or `!127.0.0.1`.
/// `None` (no destination match) means every address of the host: wildcard. A negated match
/// reaches everything but the excluded range, so it is wildcard too.
pub fn classify_dest_match(dest: Option<&str>) -> Scope {
    let Some(dest) = dest else {
        return Scope::Wildcard;
    };
    if dest.starts_with('!') {
        return Scope::Wildcard;
    }
    let (addr, prefix) = match dest.split_once('/') {
        Some((a, p)) => (a, p.parse::<u8>().ok()),
        None => (dest, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        // A set name or an interface address type we cannot resolve: assume the worst.
        return Scope::Wildcard;
    };
    let scope = classify(ip);
    // A prefix wider than the loopback network reaches beyond it.
    match (scope, ip, prefix) {
        (Scope::Loopback, IpAddr::V4(_), Some(p)) if p < 8 => Scope::Wildcard,
        (_, _, Some(0)) => Scope::Wildcard,
        _ => scope,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Scope {
        classify(s.parse().expect("address"))
    }

    #[test]
    fn addresses() {
        assert_eq!(c("0.0.0.0"), Scope::Wildcard);
        assert_eq!(c("::"), Scope::Wildcard);
        assert_eq!(c("127.0.0.1"), Scope::Loopback);
        assert_eq!(c("127.0.0.53"), Scope::Loopback);
        assert_eq!(c("::1"), Scope::Loopback);
        assert_eq!(c("::ffff:127.0.0.1"), Scope::Loopback);
        assert_eq!(c("10.1.2.3"), Scope::Private);
        assert_eq!(c("172.17.0.1"), Scope::Private);
        assert_eq!(c("192.168.1.10"), Scope::Private);
        assert_eq!(c("100.100.1.1"), Scope::Private);
        assert_eq!(c("169.254.1.1"), Scope::Private);
        assert_eq!(c("fd00::1"), Scope::Private);
        assert_eq!(c("fe80::1"), Scope::Private);
        assert_eq!(c("203.0.113.7"), Scope::Public);
        assert_eq!(c("2001:db8::1"), Scope::Public);
        assert_eq!(c("::ffff:203.0.113.7"), Scope::Public);
    }

    #[test]
    fn dest_matches() {
        assert_eq!(classify_dest_match(None), Scope::Wildcard);
        assert_eq!(classify_dest_match(Some("127.0.0.1/32")), Scope::Loopback);
        assert_eq!(classify_dest_match(Some("127.0.0.1")), Scope::Loopback);
        assert_eq!(classify_dest_match(Some("::1/128")), Scope::Loopback);
        assert_eq!(classify_dest_match(Some("!127.0.0.1/32")), Scope::Wildcard);
        assert_eq!(classify_dest_match(Some("0.0.0.0/0")), Scope::Wildcard);
        assert_eq!(classify_dest_match(Some("10.0.0.5/32")), Scope::Private);
        assert_eq!(classify_dest_match(Some("203.0.113.9")), Scope::Public);
        assert_eq!(classify_dest_match(Some("@docker_hosts")), Scope::Wildcard);
    }
}
