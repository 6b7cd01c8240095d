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

/// Longest a NAT tool may run: a hung `nft` (a wedged netlink socket, a lock) must not stall
/// the watch loop that waits for it.
pub const TOOL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `cmd.output()`, but the child is killed and an error (TimedOut) returned after `limit`.
pub fn output_within(
    cmd: &mut Command,
    limit: std::time::Duration,
) -> std::io::Result<std::process::Output> {
    use std::process::Stdio;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(result) => result,
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill(2) on our child, not reaped until wait_with_output returns
                // (which this kill makes it do).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {limit:?}; killed"),
            ))
        }
    }
}

/// A netfilter tool's command: found on the sidecar's `PATH`, run with that `PATH` alone in
/// its environment (never the sidecar's secrets: `EDGEWATCH_CLICKHOUSE_PASSWORD`, a webhook
/// token).
fn tool_command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd
}

/// Runs every available tool. Never fails as a whole: what could not be read is listed in
/// `problems`.
pub fn read_nat_rules() -> NatReport {
    let mut report = NatReport::default();
    let mut xt_skipped = 0;
    let mut iptables_nft_ok = false;
    for tool in TOOLS {
        let output = match output_within(tool_command(tool.program).args(tool.args), TOOL_TIMEOUT) {
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

#[cfg(test)]
mod timeout_tests {
    use super::*;

    #[test]
    fn a_tool_that_hangs_is_killed_and_reported() {
        let started = std::time::Instant::now();
        let err = output_within(
            Command::new("sleep").arg("30"),
            std::time::Duration::from_millis(200),
        )
        .expect_err("a hung tool");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        let ok = output_within(
            Command::new("echo").arg("hi"),
            std::time::Duration::from_secs(20),
        )
        .expect("echo");
        assert_eq!(String::from_utf8_lossy(&ok.stdout), "hi\n");
    }

    /// The tools see `PATH` and nothing else of the sidecar's environment (this test's has
    /// more: cargo sets a dozen variables).
    #[test]
    fn a_tool_sees_no_environment_but_path() {
        assert!(std::env::vars_os().count() > 1);
        let out = output_within(&mut tool_command("env"), std::time::Duration::from_secs(20))
            .expect("env");
        let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_owned()))
            .collect();
        assert_eq!(names, ["PATH"]);
    }
}
