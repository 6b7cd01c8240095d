//! Reads the NAT rules of the sidecar's network namespace with the netfilter tools and hands
//! their text to the pure parsers in `crate::exposure::nat`.
use std::process::Command;

use crate::exposure::nat::{parse_iptables_save, parse_nft_json, NatBackend, NatPublish};

/// What one read of the NAT rules found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatReport {
    pub publishes: Vec<NatPublish>,
    /// Tools that answered, e.g. `iptables-nft-save`.
    pub tools_used: Vec<&'static str>,
    /// Problems worth telling the operator: missing tools, failed tools, rules not understood.
    pub problems: Vec<String>,
}

struct Tool {
    program: &'static str,
    args: &'static [&'static str],
    kind: ToolKind,
}

enum ToolKind {
    IptablesSave(NatBackend, &'static str),
    NftJson,
}

const TOOLS: &[Tool] = &[
    Tool {
        program: "iptables-nft-save",
        args: &["-t", "nat"],
        kind: ToolKind::IptablesSave(NatBackend::IptablesNft, "ipv4"),
    },
    Tool {
        program: "ip6tables-nft-save",
        args: &["-t", "nat"],
        kind: ToolKind::IptablesSave(NatBackend::IptablesNft, "ipv6"),
    },
    Tool {
        program: "iptables-legacy-save",
        args: &["-t", "nat"],
        kind: ToolKind::IptablesSave(NatBackend::IptablesLegacy, "ipv4"),
    },
    Tool {
        program: "ip6tables-legacy-save",
        args: &["-t", "nat"],
        kind: ToolKind::IptablesSave(NatBackend::IptablesLegacy, "ipv6"),
    },
    Tool {
        program: "nft",
        args: &["-j", "list", "ruleset"],
        kind: ToolKind::NftJson,
    },
];

/// Runs every available tool. Never fails as a whole: what could not be read is listed in
/// `problems`.
pub fn read_nat_rules() -> NatReport {
    let mut report = NatReport::default();
    let mut xt_skipped = 0;
    let mut iptables_nft_ok = false;
    for tool in TOOLS {
        let output = match Command::new(tool.program).args(tool.args).output() {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                report.problems.push(format!("{}: {e}", tool.program));
                continue;
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            // A legacy table that was never created is not a problem.
            if !(matches!(
                tool.kind,
                ToolKind::IptablesSave(NatBackend::IptablesLegacy, _)
            ) && stdout.trim().is_empty())
            {
                report.problems.push(format!(
                    "{} {} failed ({}): {}",
                    tool.program,
                    tool.args.join(" "),
                    output.status,
                    stderr.trim()
                ));
            }
            continue;
        }
        report.tools_used.push(tool.program);
        match tool.kind {
            ToolKind::IptablesSave(backend, family) => {
                if backend == NatBackend::IptablesNft && family == "ipv4" {
                    iptables_nft_ok = true;
                }
                let parsed = parse_iptables_save(&stdout, backend, family);
                for rule in parsed.unparsed {
                    report.problems.push(format!(
                        "{}: DNAT rule not understood: {rule}",
                        tool.program
                    ));
                }
                report.publishes.extend(parsed.publishes);
            }
            ToolKind::NftJson => match parse_nft_json(&stdout) {
                Ok(parsed) => {
                    xt_skipped += parsed.xt_rules_skipped;
                    for rule in parsed.unparsed {
                        report
                            .problems
                            .push(format!("nft: DNAT rule not understood: {rule}"));
                    }
                    report.publishes.extend(parsed.publishes);
                }
                Err(e) => report.problems.push(format!("nft: {e}")),
            },
        }
    }
    if xt_skipped > 0 && !iptables_nft_ok {
        report.problems.push(format!(
            "{xt_skipped} DNAT rule(s) written by iptables-nft cannot be read without \
             iptables-nft-save (install Debian's `iptables`)"
        ));
    }
    if report.tools_used.is_empty() {
        report.problems.push(
            "no netfilter tool found (nft, iptables-nft-save, iptables-legacy-save): DNAT \
             port publishing is not watched; install Debian's `nftables` and `iptables`"
                .to_owned(),
        );
    }
    report
}
