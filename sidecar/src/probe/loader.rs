//! Loads edgewatch's eBPF object into the kernel, checks what the kernel offers first, and
//! attaches the programs. Everything the operator needs to know about a missing feature is
//! said here, in the error.
use std::path::Path;

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        tc::{self, NlOptions, TcAttachOptions},
        LinkOrder, ProgramType, SchedClassifier, TcAttachType, TracePoint,
    },
    sys::{is_map_supported, is_program_supported},
    Ebpf, EbpfLoader,
};
use edgewatch_common::{drop_reason, skip_reason};

use super::tracefs::{self, FormatError};
use crate::{hop::config::HopConfig, probe::config::ProbeConfig};

/// The eBPF object built by build.rs from ebpf/edgewatch-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/edgewatch"));

/// Probe loading failures, each naming what is missing.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "this kernel does not support BPF {what}; edgewatch needs Linux 5.8 or newer \
         (tracepoints and the BPF ring buffer)"
    )]
    Unsupported { what: &'static str },
    #[error(
        "cannot use BPF: {0}; edgewatch must run as root or with CAP_BPF, CAP_PERFMON and \
         CAP_NET_ADMIN"
    )]
    Permission(String),
    #[error("tracefs: {0}")]
    Tracefs(#[source] std::io::Error),
    #[error("cannot read tracepoint format {path}: {source}")]
    Format {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Layout(#[from] FormatError),
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("program `{name}`: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("map `{0}` is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error(
        "cannot attach the hop probe to interface `{interface}` ({direction}): {source}; \
         check the name (hop.interfaces) and that CAP_NET_ADMIN is granted"
    )]
    Attach {
        interface: String,
        direction: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
}

/// The loaded, attached probes. Dropping it detaches them.
pub struct Probes {
    // Keeps programs and links alive.
    _ebpf: Ebpf,
    drops: PerCpuArray<MapData, u64>,
    skipped: PerCpuArray<MapData, u64>,
    /// What was attached, for the start-up report.
    pub attached: Vec<String>,
    /// What this kernel offered, and what the probes fell back to.
    pub kernel: KernelReport,
}

/// What the running kernel offers the probes, found at load time (never assumed from a
/// version alone where the kernel can be asked).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelReport {
    /// `uname -r`.
    pub release: String,
    /// How the hop programs attach: `tcx` (Linux >= 6.6) or `clsact` (a clsact qdisc over
    /// netlink); empty when the hop probe is off.
    pub tc_attach: &'static str,
    /// The layout of `tcp:tcp_send_reset` read from its format file: `ports` (separate port
    /// and address fields, Linux < 6.10), `sockaddr` (6.10+), or `missing`.
    pub send_reset_layout: &'static str,
    /// The same for `tcp:tcp_receive_reset`.
    pub receive_reset_layout: &'static str,
    /// Plain sentences: every fallback taken and every feature missing.
    pub fallbacks: Vec<String>,
    /// Instructions the verifier processed per loaded program (Linux 5.16+ reports it), for
    /// judging the headroom under its limit of 1,000,000 on other kernels.
    pub verified_insns: std::collections::BTreeMap<String, u32>,
}

impl KernelReport {
    /// One line for a terminal.
    pub fn summary(&self) -> String {
        let mut text = format!("Linux {}", self.release);
        if !self.tc_attach.is_empty() {
            text.push_str(&format!("; hop programs attach through {}", self.tc_attach));
        }
        if self.fallbacks.is_empty() {
            text.push_str("; every probe feature available");
        } else {
            text.push_str("; ");
            text.push_str(&self.fallbacks.join("; "));
        }
        text
    }
}

/// The kernel release (`uname -r`).
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// The name of a reset tracepoint layout mode (see `tracefs::reset_layout`).
fn reset_layout_name(mode: u32) -> &'static str {
    match mode {
        1 => "ports",
        2 => "sockaddr",
        _ => "missing",
    }
}

/// The kernel's follower state (WebSocket frame headers, long HTTP bodies), created by user
/// space.
pub type Followed = BpfHashMap<MapData, edgewatch_common::FlowKey, edgewatch_common::FollowedFlow>;

/// What user space reads from the probes, to be polled by the event loop.
pub struct ProbeStreams {
    /// What the kernel's follower follows (present when the hop probe is loaded).
    pub followed: Option<Followed>,
    /// Every event (see `super::events`).
    pub events: RingBuf<MapData>,
    /// Log records of the eBPF programs (aya-log), when available.
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

/// Kernel-side drop counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelDrops {
    pub ringbuf_full: u64,
    pub field_read: u64,
    pub hop_ringbuf_full: u64,
    pub hop_parse: u64,
}

/// Hop packets the kernel sent no record for on purpose, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HopSkipped {
    pub pure_acks: u64,
    pub payload_segments: u64,
}

fn bump_memlock() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall on a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "setrlimit(RLIMIT_MEMLOCK) failed; fine on Linux >= 5.11, where BPF memory is memcg-accounted"
        );
    }
}

/// Finds, converts and loads one program of the object.
fn load_program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, ProbeError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    P: ProgramLoad,
{
    let err = |e| ProbeError::Program {
        name,
        source: Box::new(e),
    };
    let program: &mut P = ebpf
        .program_mut(name)
        .ok_or(aya::programs::ProgramError::NotLoaded)
        .map_err(err)?
        .try_into()
        .map_err(err)?;
    program.load_it().map_err(err)?;
    Ok(program)
}

/// The `load()` every program kind has, under one name.
trait ProgramLoad {
    fn load_it(&mut self) -> Result<(), aya::programs::ProgramError>;
}

impl ProgramLoad for TracePoint {
    fn load_it(&mut self) -> Result<(), aya::programs::ProgramError> {
        self.load()
    }
}

impl ProgramLoad for SchedClassifier {
    fn load_it(&mut self) -> Result<(), aya::programs::ProgramError> {
        self.load()
    }
}

/// Loads a tracepoint program and attaches it to `category:event`.
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    name: &'static str,
    category: &str,
    event: &str,
) -> Result<(), ProbeError> {
    let program: &mut TracePoint = load_program(ebpf, name)?;
    program
        .attach(category, event)
        .map_err(|e| ProbeError::Program {
            name,
            source: Box::new(e),
        })?;
    Ok(())
}

/// The interfaces the hop probe goes on: the configured ones, plus Docker bridges present now.
pub fn hop_interfaces(hop: &HopConfig) -> Vec<String> {
    let mut out = hop.interfaces.clone();
    if hop.docker_bridges {
        if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
            let mut bridges: Vec<String> = dir
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n == "docker0" || n.starts_with("br-"))
                .filter(|n| !out.contains(n))
                .collect();
            bridges.sort();
            out.extend(bridges);
        }
    }
    out
}

/// The non-zero words of the `HOP_PORTS` bitmap: bit `port % 64` of word `port / 64`.
fn port_bitmap(ports: &[u16]) -> Vec<(u32, u64)> {
    let mut words = std::collections::BTreeMap::new();
    for &port in ports {
        *words.entry(u32::from(port >> 6)).or_insert(0u64) |= 1u64 << (port & 63);
    }
    words.into_iter().collect()
}

fn attach_hop(
    ebpf: &mut Ebpf,
    hop: &HopConfig,
    attached: &mut Vec<String>,
    report: &mut KernelReport,
) -> Result<(), ProbeError> {
    let mut ports: aya::maps::Array<_, u64> = ebpf
        .map_mut("HOP_PORTS")
        .ok_or(ProbeError::MissingMap("HOP_PORTS"))?
        .try_into()
        .map_err(|e| ProbeError::Map {
            name: "HOP_PORTS",
            source: Box::new(e),
        })?;
    for (word, bits) in port_bitmap(&hop.ports) {
        ports.set(word, bits, 0).map_err(|e| ProbeError::Map {
            name: "HOP_PORTS",
            source: Box::new(e),
        })?;
    }
    // TCX (Linux 6.6) needs no qdisc; without it the programs attach through a clsact
    // qdisc over netlink. Asked of the kernel, not inferred from its version (distribution
    // kernels backport): the first attach tries TCX, and a refusal switches to clsact.
    let mut tcx: Option<bool> = None;
    let interfaces = hop_interfaces(hop);
    for (name, attach_type, label) in [
        ("hop_ingress", TcAttachType::Ingress, "ingress"),
        ("hop_egress", TcAttachType::Egress, "egress"),
    ] {
        // Every packet on loopback passes ingress once: egress would see it twice.
        let targets: Vec<&String> = interfaces
            .iter()
            .filter(|iface| !(*iface == "lo" && attach_type == TcAttachType::Egress))
            .collect();
        if targets.is_empty() {
            // Not loaded at all: verifying an unused program costs start-up time (seconds
            // on older kernels, whose verifier works harder).
            continue;
        }
        let program: &mut SchedClassifier = load_program(ebpf, name)?;
        for iface in targets {
            let attach_error = |e| ProbeError::Attach {
                interface: iface.clone(),
                direction: label,
                source: Box::new(e),
            };
            if tcx != Some(false) {
                match program.attach_with_options(
                    iface,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                ) {
                    Ok(_) => {
                        tcx = Some(true);
                        attached.push(format!("tcx {iface} {label}"));
                        continue;
                    }
                    // Once TCX worked, a failure is about this interface.
                    Err(e) if tcx == Some(true) => return Err(attach_error(e)),
                    Err(e) => {
                        tcx = Some(false);
                        report.fallbacks.push(format!(
                            "no TCX on this kernel (it needs Linux 6.6; the kernel said: {e}): \
                             the hop programs attach through a clsact qdisc over netlink \
                             instead (same packets; the qdisc is left in place)"
                        ));
                    }
                }
            }
            // Already present is fine; anything else shows in the attach error below.
            if let Err(e) = tc::qdisc_add_clsact(iface) {
                tracing::debug!(interface = %iface, error = %e, "adding the clsact qdisc");
            }
            program
                .attach_with_options(
                    iface,
                    attach_type,
                    TcAttachOptions::Netlink(NlOptions::default()),
                )
                .map_err(attach_error)?;
            attached.push(format!("tc clsact {iface} {label}"));
        }
    }
    report.tc_attach = match tcx {
        Some(true) => "tcx",
        Some(false) => "clsact",
        None => "",
    };
    Ok(())
}

fn check_features() -> Result<(), ProbeError> {
    let permission = |e: &dyn std::fmt::Display| {
        let text = e.to_string();
        if text.contains("EPERM") || text.contains("Operation not permitted") {
            ProbeError::Permission(text)
        } else {
            ProbeError::Unsupported {
                what: "feature probing",
            }
        }
    };
    match is_program_supported(ProgramType::TracePoint) {
        Ok(true) => {}
        Ok(false) => {
            return Err(ProbeError::Unsupported {
                what: "tracepoint programs",
            })
        }
        Err(e) => return Err(permission(&e)),
    }
    match is_map_supported(aya::maps::MapType::RingBuf) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ProbeError::Unsupported {
            what: "ring buffer maps",
        }),
        Err(e) => Err(permission(&e)),
    }
}

impl Probes {
    /// Checks kernel features, loads the object with this kernel's tracepoint layouts and
    /// attaches every program.
    /// Long because it is one ordered sequence (feature probes, layouts, load, then each
    /// attach with its fallback) whose every step can fail with its own message.
    pub fn load(config: &ProbeConfig, hop: &HopConfig) -> Result<(Self, ProbeStreams), ProbeError> {
        bump_memlock();
        check_features()?;
        let tracefs_root = Path::new(&config.tracefs);
        if tracefs::ensure_tracefs(tracefs_root).map_err(ProbeError::Tracefs)? {
            tracing::info!(path = %tracefs_root.display(), "mounted tracefs");
        }
        let format_path = tracefs_root.join("events/sock/inet_sock_set_state/format");
        let format =
            std::fs::read_to_string(&format_path).map_err(|source| ProbeError::Format {
                path: format_path.display().to_string(),
                source,
            })?;
        let layout = tracefs::sock_state_layout(&format)?;
        // The reset tracepoints are optional: without them resets are still seen in the
        // packets, only without the process that sent them.
        let mut report = KernelReport {
            release: kernel_release(),
            ..KernelReport::default()
        };
        let mut missing_resets = Vec::new();
        let mut reset = |name: &'static str| -> edgewatch_common::ResetLayout {
            let path = tracefs_root.join(format!("events/tcp/{name}/format"));
            match std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    tracefs::reset_layout(&format!("tcp:{name}"), &f).map_err(|e| e.to_string())
                }) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(tracepoint = name, error = %e, "reset tracepoint unavailable: resets are reported without their process");
                    missing_resets.push(format!("tcp:{name} ({e})"));
                    edgewatch_common::ResetLayout::default()
                }
            }
        };
        let send_reset = reset("tcp_send_reset");
        let recv_reset = reset("tcp_receive_reset");
        report.send_reset_layout = reset_layout_name(send_reset.mode);
        report.receive_reset_layout = reset_layout_name(recv_reset.mode);
        if hop.enabled {
            for missing in missing_resets {
                report.fallbacks.push(format!(
                    "{missing} is unavailable: resets are still seen in the hop's packets, \
                     without the process that sent them"
                ));
            }
            if send_reset.mode == 1 {
                // Before Linux 6.10 the tracepoint fires only for resets a socket sends
                // (an abort, a close with unread data), not for a SYN to a closed port.
                report.fallbacks.push(
                    "tcp:tcp_send_reset has its pre-6.10 layout: it names the process for \
                     resets a socket sends, while a refused connect is seen from the packets \
                     and tcp:tcp_receive_reset on the connecting side"
                        .to_owned(),
                );
            }
        }

        let mut ebpf = EbpfLoader::new()
            .override_global("SOCK_STATE_LAYOUT", &layout, true)
            .override_global("SEND_RESET_LAYOUT", &send_reset, true)
            .override_global("RECV_RESET_LAYOUT", &recv_reset, true)
            .map_max_entries("EVENTS", config.ring_buffer_bytes)
            .load(EBPF_OBJECT)
            .map_err(|e| {
                let text = e.to_string();
                if text.contains("EPERM") || text.contains("Operation not permitted") {
                    ProbeError::Permission(text)
                } else {
                    ProbeError::Load(Box::new(e))
                }
            })?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "eBPF log forwarding unavailable");
                None
            }
        };

        let mut attached = Vec::new();
        attach_tracepoint(
            &mut ebpf,
            "inet_sock_set_state",
            "sock",
            "inet_sock_set_state",
        )?;
        attached.push("tracepoint/sock/inet_sock_set_state".to_owned());
        if hop.enabled {
            attach_hop(&mut ebpf, hop, &mut attached, &mut report)?;
            for (name, layout) in [
                ("tcp_send_reset", send_reset),
                ("tcp_receive_reset", recv_reset),
            ] {
                if layout.mode == 0 {
                    continue;
                }
                attach_tracepoint(&mut ebpf, name, "tcp", name)?;
                attached.push(format!("tracepoint/tcp/{name}"));
            }
        }

        for (name, program) in ebpf.programs() {
            if let Some(n) = program
                .info()
                .ok()
                .and_then(|i| i.verified_instruction_count())
            {
                report.verified_insns.insert(name.to_owned(), n);
            }
        }
        let events = ebpf
            .take_map("EVENTS")
            .ok_or(ProbeError::MissingMap("EVENTS"))?;
        let events = RingBuf::try_from(events).map_err(|e| ProbeError::Map {
            name: "EVENTS",
            source: Box::new(e),
        })?;
        let drops = ebpf
            .take_map("DROPS")
            .ok_or(ProbeError::MissingMap("DROPS"))?;
        let drops = PerCpuArray::try_from(drops).map_err(|e| ProbeError::Map {
            name: "DROPS",
            source: Box::new(e),
        })?;
        let skipped = ebpf
            .take_map("HOP_SKIPPED")
            .ok_or(ProbeError::MissingMap("HOP_SKIPPED"))?;
        let skipped = PerCpuArray::try_from(skipped).map_err(|e| ProbeError::Map {
            name: "HOP_SKIPPED",
            source: Box::new(e),
        })?;
        let followed = match ebpf.take_map("FOLLOWED") {
            Some(map) if hop.enabled => {
                Some(Followed::try_from(map).map_err(|e| ProbeError::Map {
                    name: "FOLLOWED",
                    source: Box::new(e),
                })?)
            }
            _ => None,
        };
        Ok((
            Self {
                _ebpf: ebpf,
                drops,
                skipped,
                attached,
                kernel: report,
            },
            ProbeStreams {
                events,
                logger,
                followed,
            },
        ))
    }

    /// Reads the kernel's drop counters.
    pub fn kernel_drops(&self) -> KernelDrops {
        let sum = |index| per_cpu_sum(&self.drops, index);
        KernelDrops {
            ringbuf_full: sum(drop_reason::RINGBUF_FULL),
            field_read: sum(drop_reason::FIELD_READ),
            hop_ringbuf_full: sum(drop_reason::HOP_RINGBUF_FULL),
            hop_parse: sum(drop_reason::HOP_PARSE),
        }
    }

    /// Reads the kernel's counters of hop packets it sent no record for.
    pub fn hop_skipped(&self) -> HopSkipped {
        let sum = |index| per_cpu_sum(&self.skipped, index);
        HopSkipped {
            pure_acks: sum(skip_reason::PURE_ACK),
            payload_segments: sum(skip_reason::PAYLOAD),
        }
    }
}

/// A per-CPU counter summed over CPUs (0 when it cannot be read).
fn per_cpu_sum(array: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
    array
        .get(&index, 0)
        .map(|values| values.iter().sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::port_bitmap;

    #[test]
    fn port_bitmap_sets_one_bit_per_port() {
        let words = port_bitmap(&[18789, 0, 63, 64, 65535, 18789]);
        // 18789 = 293 * 64 + 37.
        assert_eq!(
            words,
            vec![(0, 1 | 1 << 63), (1, 1), (293, 1 << 37), (1023, 1 << 63)]
        );
        for (word, bits) in words {
            for bit in 0..64u32 {
                let port = word * 64 + bit;
                let expected = [18789u32, 0, 63, 64, 65535].contains(&port);
                assert_eq!(bits & (1u64 << bit) != 0, expected, "port {port}");
            }
        }
    }
}
