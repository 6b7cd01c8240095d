//! A network namespace's own addresses, from the text of its `/proc/<pid>/net` files: where a
//! socket bound to the unspecified address in that namespace can be reached from outside it.
//! Pure; the live path reads the files.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The IPv4 addresses a namespace answers on: the `/32 host LOCAL` leaves of `net/fib_trie`
/// (its local routing table). Loopback (`127.0.0.0/8`) is left out: it reaches only the
/// namespace itself. Each address once, in the order the file lists them.
pub fn fib_trie_locals(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let line = line.trim_start();
        if let Some(addr) = line.strip_prefix("|-- ") {
            leaf = addr.trim().parse().ok();
        } else if line.starts_with("+-- ") || line.ends_with(':') {
            leaf = None;
        } else if let Some(a) = leaf {
            // The leaf's routes: "/32 host LOCAL" says the namespace owns the address.
            let mut words = line.split_whitespace();
            if words.next() == Some("/32")
                && words.next() == Some("host")
                && words.next() == Some("LOCAL")
                && !a.is_loopback()
                && !out.contains(&IpAddr::V4(a))
            {
                out.push(IpAddr::V4(a));
            }
        }
    }
    out
}

/// The IPv6 addresses of a namespace's interfaces, from `net/if_inet6` (32 hex digits, then
/// index, prefix length, scope, flags and name). Loopback (`::1`) is left out.
pub fn if_inet6_addrs(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let hex = line.split_whitespace().next()?;
            let bits = u128::from_str_radix(hex, 16)
                .ok()
                .filter(|_| hex.len() == 32)?;
            let a = Ipv6Addr::from(bits);
            (!a.is_loopback()).then_some(IpAddr::V6(a))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A container's namespace (eth0 10.1.2.2/30 and lo), as Linux 6.1 prints it: the
    /// table twice (Main and Local), a /8 leaf for loopback, broadcast and network leaves.
    const FIB_TRIE: &str = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.1.2.0/30 2 0 2
        |-- 10.1.2.0
           /30 link UNICAST
        |-- 10.1.2.2
           /32 host LOCAL
        |-- 10.1.2.3
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
     +-- 10.1.2.0/30 2 0 2
        |-- 10.1.2.2
           /32 host LOCAL
     |-- 172.17.0.5
        /16 link UNICAST
        /32 host LOCAL
";

    #[test]
    fn the_namespaces_own_ipv4_addresses_are_its_host_local_leaves() {
        let want: Vec<IpAddr> = vec![
            "10.1.2.2".parse().expect("addr"),
            "172.17.0.5".parse().expect("addr"),
        ];
        assert_eq!(fib_trie_locals(FIB_TRIE), want);
    }

    #[test]
    fn malformed_fib_trie_text_gives_what_it_can_and_never_panics() {
        assert!(fib_trie_locals("").is_empty());
        assert!(fib_trie_locals("|-- not-an-address\n  /32 host LOCAL\n").is_empty());
        // A route line with no leaf before it is ignored.
        assert!(fib_trie_locals("  /32 host LOCAL\n|-- 10.0.0.1\n").is_empty());
    }

    #[test]
    fn ipv6_addresses_come_from_if_inet6_without_loopback() {
        let text = "fd000000000000000000000000000002 04 40 00 82     eth0\n\
                    fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n\
                    00000000000000000000000000000001 01 80 10 80       lo\n\
                    short 01 80 10 80 lo\n\
                    zz000000000000000000000000000002 01 80 10 80 lo\n";
        let want: Vec<IpAddr> = vec![
            "fd00::2".parse().expect("addr"),
            "fe80::fc:ff:fe00:1".parse().expect("addr"),
        ];
        assert_eq!(if_inet6_addrs(text), want);
    }
}
