//! The sidecar's configuration: a typed TOML file, validated without I/O before anything starts.
//!
//! Contract: [`Config::from_toml_str`] either returns a config whose every value has been
//! checked, or a [`ConfigError`] that names the key and the offending value. Unknown keys are
//! rejected (`deny_unknown_fields`). Every field has a default, so an empty file (or no file at
//! all) is the embedded default: watch the Gateway's port 18789.
use std::{net::SocketAddr, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

use crate::exposure::Proto;

/// The OpenClaw Gateway's conventional port.
pub const GATEWAY_PORT: u16 = 18789;

/// Errors that stop the sidecar before it starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid config {origin}: key `{key}` = {value}: {reason}")]
    Invalid {
        origin: String,
        key: String,
        value: String,
        reason: String,
    },
}

/// Top level of the config file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// What counts as exposure drift.
    pub exposure: ExposureConfig,
    /// How the netfilter NAT rules (Docker's DNAT port publishing) are read.
    pub nat: NatConfig,
    /// The proxy-to-upstream hop (TC probes on the interfaces it crosses).
    pub hop: HopConfig,
    /// The edge proxy's access logs, joined with the hop by request id.
    pub edge: EdgeConfig,
    /// The kernel probes.
    pub probes: ProbeConfig,
    /// The sidecar's own Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Where records are kept: ClickHouse (an embedded one by default).
    pub store: StoreConfig,
    /// Alert rules, their lifecycle and webhooks.
    pub alerts: crate::alerts::AlertsConfig,
}

/// Exposure policy.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ExposureConfig {
    /// Ports that must be reachable on loopback only (the Gateway's 18789 by default). A
    /// listener on any other address, or a DNAT rule publishing one of them without a loopback
    /// destination restriction, is a critical drift.
    pub watched_ports: Vec<u16>,
    /// Wildcard or public listeners (and NAT publishes) that are expected, for example the
    /// proxy on 80/443 and sshd on 22. Anything wildcard or public not listed here is drift.
    pub allow: Vec<AllowRule>,
    /// How often the socket inventory is re-read from the kernel (sock_diag) to reconcile it
    /// with the probe events. UDP sockets, which the TCP tracepoint does not see, are only
    /// noticed by this rescan.
    #[serde(with = "humantime_serde")]
    pub rescan_interval: Duration,
}

impl Default for ExposureConfig {
    fn default() -> Self {
        Self {
            watched_ports: vec![GATEWAY_PORT],
            allow: vec![
                AllowRule::port(Proto::Tcp, 22, "sshd"),
                AllowRule::port(Proto::Tcp, 80, "HTTP on the reverse proxy"),
                AllowRule::port(Proto::Tcp, 443, "HTTPS on the reverse proxy"),
                AllowRule::port(Proto::Udp, 443, "HTTP/3 on the reverse proxy (Caddy)"),
                AllowRule::port(Proto::Udp, 68, "DHCP client"),
                AllowRule::port(Proto::Udp, 546, "DHCPv6 client"),
            ],
            rescan_interval: Duration::from_secs(5),
        }
    }
}

/// One allowed exposure. All given fields must match.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// The port (host side for NAT publishes).
    pub port: u16,
    /// `tcp` or `udp`; both when absent.
    #[serde(default)]
    pub proto: Option<Proto>,
    /// Only when the owning process has this name (its `comm`, e.g. `caddy`, `nginx`).
    #[serde(default)]
    pub process: Option<String>,
    /// Why this is allowed; shown in the inventory.
    #[serde(default)]
    pub reason: Option<String>,
}

impl AllowRule {
    fn port(proto: Proto, port: u16, reason: &str) -> Self {
        Self {
            port,
            proto: Some(proto),
            process: None,
            reason: Some(reason.to_owned()),
        }
    }
}

/// Netfilter NAT rule reading.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NatConfig {
    /// Read NAT rules at all.
    pub enabled: bool,
    /// How often the rules are re-read to notice changes.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for NatConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_interval: Duration::from_secs(2),
        }
    }
}

/// Access logs to follow and join.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Access-log files (nginx JSON, edgewatch_combined, or Caddy JSON; detected per line).
    /// None by default.
    pub access_logs: Vec<std::path::PathBuf>,
    /// How long a record waits for its other half before it is reported unmatched.
    #[serde(with = "humantime_serde")]
    pub join_window: Duration,
    /// How often the logs are read.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Where reading positions are kept, so a restart neither loses nor repeats lines.
    pub state_dir: std::path::PathBuf,
    /// Which JSON keys of a non-Caddy JSON log hold which value, for layouts other than the
    /// README's (`time` must be seconds since the epoch, like nginx's `$msec`).
    pub json_fields: crate::edge::nginx::JsonFields,
    /// Records waiting for their other half in the join, all kinds together; beyond it the
    /// oldest eighth is reported unmatched at once (counted: `edgewatch_limit_drops_total`).
    pub max_pending: usize,
    /// Of those, records without a request id (each new one is compared with every waiting
    /// one to infer its match).
    pub max_without_id: usize,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        let limits = crate::edge::join::JoinLimits::default();
        Self {
            access_logs: Vec::new(),
            join_window: Duration::from_secs(30),
            poll_interval: Duration::from_millis(250),
            state_dir: "/var/lib/edgewatch".into(),
            json_fields: crate::edge::nginx::JsonFields::default(),
            max_pending: limits.max_pending,
            max_without_id: limits.max_without_id,
        }
    }
}

impl EdgeConfig {
    /// The join's count limits.
    pub fn limits(&self) -> crate::edge::join::JoinLimits {
        crate::edge::join::JoinLimits {
            max_pending: self.max_pending,
            max_without_id: self.max_without_id,
        }
    }
}

/// The hop watch.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HopConfig {
    /// Watch the hop at all (needs TC: CAP_NET_ADMIN and CAP_BPF).
    pub enabled: bool,
    /// The upstream ports: connections to these are the hop (the Gateway's 18789).
    pub ports: Vec<u16>,
    /// Interfaces the hop crosses. On `lo` only ingress is watched (every loopback packet
    /// passes it once); elsewhere both directions.
    pub interfaces: Vec<String>,
    /// Also watch Docker bridges (`docker0`, `br-*`) present at start.
    pub docker_bridges: bool,
    /// A connection with no packet for this long is reported as it stands and forgotten.
    #[serde(with = "humantime_serde")]
    pub idle_expiry: Duration,
    /// Connections followed at once; beyond it the least recently active eighth is reported
    /// as it stands and forgotten (counted: `edgewatch_limit_drops_total`).
    pub max_connections: usize,
    /// Requests on one connection waiting for their responses; beyond it pairing is given up
    /// for that connection (a `loss` record says so).
    pub max_pending_exchanges: usize,
    /// Close frames kept per WebSocket session (all are counted).
    pub max_close_frames: usize,
}

impl Default for HopConfig {
    fn default() -> Self {
        let limits = crate::hop::tracker::TrackerLimits::default();
        Self {
            enabled: true,
            ports: vec![GATEWAY_PORT],
            interfaces: vec!["lo".to_owned()],
            docker_bridges: true,
            idle_expiry: Duration::from_secs(2 * 3600),
            max_connections: limits.max_connections,
            max_pending_exchanges: limits.max_pending_exchanges,
            max_close_frames: limits.max_close_frames,
        }
    }
}

impl HopConfig {
    /// The tracker's count limits.
    pub fn limits(&self) -> crate::hop::tracker::TrackerLimits {
        crate::hop::tracker::TrackerLimits {
            max_connections: self.max_connections,
            max_pending_exchanges: self.max_pending_exchanges,
            max_close_frames: self.max_close_frames,
        }
    }
}

/// Kernel probe settings.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// Size of the kernel-to-user ring buffer in bytes: a power of two, at least 4096
    /// (one page). Events that do not fit are counted as drops.
    pub ring_buffer_bytes: u32,
    /// Where tracefs is mounted (it is mounted there if missing).
    pub tracefs: String,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: 4 * 1024 * 1024,
            tracefs: "/sys/kernel/tracing".to_owned(),
        }
    }
}

/// The Prometheus endpoint.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` at all.
    pub enabled: bool,
    /// Address to bind. Loopback by default; port 0 picks a free port (printed at start).
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

/// ClickHouse, where every record is kept.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Ship records at all.
    pub enabled: bool,
    /// The server's HTTP(S) URL, e.g. `https://clickhouse.example:8443`. Empty (the default):
    /// the embedded ClickHouse that edgewatch fetches once, starts and stops itself.
    pub url: String,
    pub database: String,
    /// The user (the environment variable EDGEWATCH_CLICKHOUSE_USER wins over it).
    pub user: String,
    /// A file whose first line is the password. The environment variable
    /// EDGEWATCH_CLICKHOUSE_PASSWORD wins over it. Never on the command line.
    pub password_file: Option<std::path::PathBuf>,
    /// Extra CA certificates (PEM) trusted for https URLs, besides the public web roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Days rows are kept (table TTL); 0 keeps them forever. Changing it alters the tables
    /// at the next start.
    pub ttl_days: u32,
    /// A cluster name: tables are created `ON CLUSTER` as Replicated `*_local` tables with
    /// Distributed tables over them. Empty: one server.
    pub cluster: String,
    /// This machine's name in every row (`node`); the host name when empty.
    pub node: String,
    /// A batch is sealed and sent at this many rows...
    pub batch_rows: u64,
    /// ... or this many bytes ...
    pub batch_bytes: u64,
    /// ... or when its first row is this old.
    #[serde(with = "humantime_serde")]
    pub batch_max_age: Duration,
    /// Where rows wait for ClickHouse (an outage, a restart).
    pub spool_dir: std::path::PathBuf,
    /// The most the spool may hold; beyond it the oldest batches are dropped (and counted).
    pub spool_max_bytes: u64,
    /// Timeout of one request to ClickHouse.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How rows travel to ClickHouse: `native` (its columnar format: the least work for the
    /// server, sent uncompressed), `rowbinary` (row format, LZ4-compressed: the fewest bytes on
    /// a network) or `auto`: native to a server on this machine (a loopback URL, the embedded
    /// one), rowbinary to any other.
    pub format: WireFormat,
    /// How often the whole exposure inventory is written as a snapshot.
    #[serde(with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// The embedded ClickHouse (used when `url` is empty).
    pub embedded: EmbeddedStoreConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            url: String::new(),
            database: "edgewatch".to_owned(),
            user: "default".to_owned(),
            password_file: None,
            ca_file: None,
            ttl_days: 30,
            cluster: String::new(),
            node: String::new(),
            batch_rows: 200_000,
            batch_bytes: 64 << 20,
            batch_max_age: Duration::from_secs(1),
            spool_dir: "/var/lib/edgewatch/spool".into(),
            spool_max_bytes: 1 << 30,
            timeout: Duration::from_secs(30),
            format: WireFormat::Auto,
            snapshot_interval: Duration::from_secs(600),
            embedded: EmbeddedStoreConfig::default(),
        }
    }
}

/// How rows travel to ClickHouse (`store.format`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WireFormat {
    /// Native to a loopback URL, RowBinary to any other.
    #[default]
    Auto,
    /// ClickHouse's columnar Native format, uncompressed.
    Native,
    /// RowBinary with LZ4.
    RowBinary,
}

impl WireFormat {
    /// The format used for a server at `url` (`auto` decided).
    pub fn for_url(self, url: &str) -> Self {
        match self {
            Self::Auto => {
                let loopback = match url::Url::parse(url)
                    .ok()
                    .and_then(|u| u.host().map(|h| h.to_owned()))
                {
                    Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                    Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                    None => false,
                };
                if loopback {
                    Self::Native
                } else {
                    Self::RowBinary
                }
            }
            other => other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::RowBinary => "rowbinary",
        }
    }
}

/// The embedded ClickHouse.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedStoreConfig {
    /// Where its data lives.
    pub data_dir: std::path::PathBuf,
    /// Where the fetched ClickHouse build is cached.
    pub cache_dir: std::path::PathBuf,
    /// A libchdb.so already on the machine (no fetch).
    pub library: Option<std::path::PathBuf>,
    /// Its HTTP port (on 127.0.0.1 only; every request but `/ping` must authenticate as user
    /// `edgewatch` with the password in `secret_file`).
    pub http_port: u16,
    /// No longer used: the native TCP port is not opened (its protocol cannot be limited to
    /// edgewatch's user). Accepted so that older config files still load; a warning says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_port: Option<u16>,
    /// The password of the server's `edgewatch` user: generated on first start (256 random
    /// bits), readable by root only. `edgewatch timeline` and `replay --store` read it too.
    pub secret_file: std::path::PathBuf,
    /// The unprivileged account the server runs as (created with `useradd --system` if
    /// missing; where that is impossible, uid/gid 64206).
    pub run_as: String,
}

impl Default for EmbeddedStoreConfig {
    fn default() -> Self {
        Self {
            data_dir: "/var/lib/edgewatch/clickhouse".into(),
            cache_dir: "/var/cache/edgewatch".into(),
            library: None,
            http_port: 18123,
            tcp_port: None,
            secret_file: "/var/lib/edgewatch/clickhouse.secret".into(),
            run_as: "edgewatch-ch".to_owned(),
        }
    }
}

/// Which credential a URL carries, if any: `user:password@` in the authority, or a
/// password-like query parameter (ClickHouse takes `?user=..&password=..`).
pub fn url_credentials(raw: &str) -> Option<&'static str> {
    let url = url::Url::parse(raw).ok()?;
    if !url.username().is_empty() || url.password().is_some() {
        return Some("user:password@");
    }
    url.query_pairs()
        .find_map(|(k, _)| match k.to_ascii_lowercase().as_str() {
            "password" | "pass" | "passwd" => Some("?password="),
            "token" | "access_token" | "key" | "api_key" | "apikey" => Some("a token parameter"),
            _ => None,
        })
}

impl Config {
    /// The settings of the record pipeline (`crate::pipeline`): the sections of the
    /// components it owns.
    pub fn pipeline(&self) -> crate::pipeline::Settings {
        crate::pipeline::Settings {
            exposure: self.exposure.clone(),
            hop_ports: self.hop.ports.clone(),
            hop_limits: self.hop.limits(),
            join: !self.edge.access_logs.is_empty(),
            join_window_ns: u64::try_from(self.edge.join_window.as_nanos()).unwrap_or(u64::MAX),
            join_limits: self.edge.limits(),
            json_fields: self.edge.json_fields.clone(),
            alerts: self.alerts.clone(),
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|err| ConfigError::Parse {
            origin: origin.to_owned(),
            message: err.to_string(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Checks values that the types alone do not constrain.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, value: String, reason: &str| ConfigError::Invalid {
            origin: origin.to_owned(),
            key: key.to_owned(),
            value,
            reason: reason.to_owned(),
        };
        if let Some(port) = self.exposure.watched_ports.iter().find(|p| **p == 0) {
            return Err(invalid(
                "exposure.watched_ports",
                port.to_string(),
                "port 0 is not a port a listener can use",
            ));
        }
        for (i, rule) in self.exposure.allow.iter().enumerate() {
            if rule.port == 0 {
                return Err(invalid(
                    &format!("exposure.allow[{i}].port"),
                    "0".to_owned(),
                    "port 0 is not a port a listener can use",
                ));
            }
            if self.exposure.watched_ports.contains(&rule.port) {
                return Err(invalid(
                    &format!("exposure.allow[{i}].port"),
                    rule.port.to_string(),
                    "a watched port must stay loopback-only and cannot also be allowed; \
                     remove it from exposure.watched_ports if exposing it is intended",
                ));
            }
            if matches!(&rule.process, Some(p) if p.is_empty() || p.len() > 15) {
                return Err(invalid(
                    &format!("exposure.allow[{i}].process"),
                    format!("{:?}", rule.process.as_deref().unwrap_or_default()),
                    "a process name (comm) has 1 to 15 characters",
                ));
            }
        }
        if self.exposure.rescan_interval < Duration::from_millis(100) {
            return Err(invalid(
                "exposure.rescan_interval",
                humantime::format_duration(self.exposure.rescan_interval).to_string(),
                "must be at least 100ms",
            ));
        }
        if self.nat.poll_interval < Duration::from_millis(100) {
            return Err(invalid(
                "nat.poll_interval",
                humantime::format_duration(self.nat.poll_interval).to_string(),
                "must be at least 100ms",
            ));
        }
        if self.hop.enabled && self.hop.ports.is_empty() {
            return Err(invalid(
                "hop.ports",
                "[]".to_owned(),
                "give at least one upstream port, or set hop.enabled = false",
            ));
        }
        if let Some(port) = self.hop.ports.iter().find(|p| **p == 0) {
            return Err(invalid(
                "hop.ports",
                port.to_string(),
                "port 0 is not a port",
            ));
        }
        if self.hop.ports.len() > 64 {
            return Err(invalid(
                "hop.ports",
                format!("{} ports", self.hop.ports.len()),
                "at most 64 upstream ports",
            ));
        }
        if let Some(name) = self
            .hop
            .interfaces
            .iter()
            .find(|i| i.is_empty() || i.len() > 15 || i.contains('/'))
        {
            return Err(invalid(
                "hop.interfaces",
                format!("{name:?}"),
                "not an interface name (1 to 15 characters, no '/')",
            ));
        }
        if self.hop.idle_expiry < Duration::from_secs(1) {
            return Err(invalid(
                "hop.idle_expiry",
                humantime::format_duration(self.hop.idle_expiry).to_string(),
                "must be at least 1s",
            ));
        }
        if let Some(p) = self.edge.access_logs.iter().find(|p| !p.is_absolute()) {
            return Err(invalid(
                "edge.access_logs",
                format!("{:?}", p.display().to_string()),
                "must be an absolute path",
            ));
        }
        if !self.edge.state_dir.is_absolute() {
            return Err(invalid(
                "edge.state_dir",
                format!("{:?}", self.edge.state_dir.display().to_string()),
                "must be an absolute path",
            ));
        }
        if self.edge.poll_interval < Duration::from_millis(10) {
            return Err(invalid(
                "edge.poll_interval",
                humantime::format_duration(self.edge.poll_interval).to_string(),
                "must be at least 10ms",
            ));
        }
        for (key, value) in [
            ("hop.max_connections", self.hop.max_connections),
            ("hop.max_pending_exchanges", self.hop.max_pending_exchanges),
            ("hop.max_close_frames", self.hop.max_close_frames),
            ("edge.max_pending", self.edge.max_pending),
            ("edge.max_without_id", self.edge.max_without_id),
            ("alerts.max_listed_values", self.alerts.max_listed_values),
        ] {
            if value == 0 {
                return Err(invalid(key, "0".to_owned(), "must be at least 1"));
            }
        }
        let rb = self.probes.ring_buffer_bytes;
        if rb < 4096 || !rb.is_power_of_two() {
            return Err(invalid(
                "probes.ring_buffer_bytes",
                rb.to_string(),
                "must be a power of two of at least 4096",
            ));
        }
        let st = &self.store;
        if !(st.url.is_empty() || st.url.starts_with("http://") || st.url.starts_with("https://")) {
            return Err(invalid(
                "store.url",
                format!("{:?}", st.url),
                "must be an http:// or https:// URL (ClickHouse's HTTP interface), or empty for the embedded store",
            ));
        }
        if let Some(key) = url_credentials(&st.url) {
            return Err(invalid(
                "store.url",
                "(hidden: it holds credentials)".to_owned(),
                &format!("credentials do not belong in the URL ({key}); use store.user and store.password_file or EDGEWATCH_CLICKHOUSE_PASSWORD"),
            ));
        }
        if st.url.contains('@') {
            return Err(invalid(
                "store.url",
                "(hidden: it holds credentials)".to_owned(),
                "credentials do not belong in the URL; use store.user and store.password_file or EDGEWATCH_CLICKHOUSE_PASSWORD",
            ));
        }
        if st.database.is_empty()
            || !st
                .database
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(invalid(
                "store.database",
                format!("{:?}", st.database),
                "letters, digits and underscores only",
            ));
        }
        if st.batch_rows == 0 || st.batch_bytes < 4096 {
            return Err(invalid(
                "store.batch_rows",
                format!("{} rows / {} bytes", st.batch_rows, st.batch_bytes),
                "batches need at least 1 row and 4096 bytes",
            ));
        }
        if st.spool_max_bytes < st.batch_bytes {
            return Err(invalid(
                "store.spool_max_bytes",
                st.spool_max_bytes.to_string(),
                "must hold at least one batch (store.batch_bytes)",
            ));
        }
        if !st.spool_dir.is_absolute() {
            return Err(invalid(
                "store.spool_dir",
                format!("{:?}", st.spool_dir.display().to_string()),
                "must be an absolute path",
            ));
        }
        if st.batch_max_age < Duration::from_millis(10) {
            return Err(invalid(
                "store.batch_max_age",
                humantime::format_duration(st.batch_max_age).to_string(),
                "must be at least 10ms",
            ));
        }
        if st.embedded.http_port == 0 {
            return Err(invalid(
                "store.embedded.http_port",
                "0".to_owned(),
                "the embedded server needs a fixed port",
            ));
        }
        if !st.embedded.secret_file.is_absolute() {
            return Err(invalid(
                "store.embedded.secret_file",
                format!("{:?}", st.embedded.secret_file.display().to_string()),
                "must be an absolute path",
            ));
        }
        if st.embedded.run_as.is_empty() || st.embedded.run_as == "root" {
            return Err(invalid(
                "store.embedded.run_as",
                format!("{:?}", st.embedded.run_as),
                "must name an unprivileged account",
            ));
        }
        self.validate_alerts(&invalid)?;
        if !self.probes.tracefs.starts_with('/') {
            return Err(invalid(
                "probes.tracefs",
                format!("{:?}", self.probes.tracefs),
                "must be an absolute path",
            ));
        }
        Ok(())
    }
}

impl Config {
    fn validate_alerts(
        &self,
        invalid: &dyn Fn(&str, String, &str) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let a = &self.alerts;
        let dur = |d: Duration| humantime::format_duration(d).to_string();
        let positive = [
            ("alerts.quiet_period", a.quiet_period),
            (
                "alerts.timeout_disconnect.min_idle",
                a.timeout_disconnect.min_idle,
            ),
            ("alerts.reload_burst.window", a.reload_burst.window),
            ("alerts.reset_storm.window", a.reset_storm.window),
            (
                "alerts.upstream_slowness.window",
                a.upstream_slowness.window,
            ),
            (
                "alerts.upstream_slowness.threshold",
                a.upstream_slowness.threshold,
            ),
        ];
        for (key, d) in positive {
            if d.is_zero() {
                return Err(invalid(key, dur(d), "must be more than 0s"));
            }
        }
        let counts = [
            (
                "alerts.timeout_disconnect.min_sessions",
                a.timeout_disconnect.min_sessions,
            ),
            (
                "alerts.reload_burst.min_sessions",
                a.reload_burst.min_sessions,
            ),
            ("alerts.reset_storm.count", a.reset_storm.count),
            (
                "alerts.upstream_slowness.min_samples",
                a.upstream_slowness.min_samples,
            ),
        ];
        for (key, n) in counts {
            if n == 0 {
                return Err(invalid(key, "0".into(), "must be at least 1"));
            }
        }
        let tol = a.timeout_disconnect.tolerance;
        if !(0.0..1.0).contains(&tol) {
            return Err(invalid(
                "alerts.timeout_disconnect.tolerance",
                tol.to_string(),
                "a fraction from 0 up to (not including) 1, e.g. 0.1 for 10%",
            ));
        }
        let pct = a.upstream_slowness.percentile;
        if !(pct > 0.0 && pct <= 100.0) {
            return Err(invalid(
                "alerts.upstream_slowness.percentile",
                pct.to_string(),
                "a percentile above 0 and at most 100, e.g. 95",
            ));
        }
        for (i, w) in a.webhooks.iter().enumerate() {
            if let Err(reason) = w.check() {
                return Err(invalid(
                    &format!("alerts.webhooks[{i}].url"),
                    format!("{:?}", w.display_url()),
                    &reason,
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_format_is_native_on_loopback_only() {
        for url in [
            "http://127.0.0.1:18123",
            "http://localhost:8123/",
            "https://[::1]:8443",
            "http://127.0.0.2",
        ] {
            assert_eq!(WireFormat::Auto.for_url(url), WireFormat::Native, "{url}");
        }
        for url in [
            "https://clickhouse.example:8443",
            "http://10.0.0.5:8123",
            "https://[2001:db8::1]:8443/",
            "http://localhost.example.com",
        ] {
            assert_eq!(
                WireFormat::Auto.for_url(url),
                WireFormat::RowBinary,
                "{url}"
            );
        }
        assert_eq!(
            WireFormat::RowBinary.for_url("http://127.0.0.1"),
            WireFormat::RowBinary
        );
        assert_eq!(
            WireFormat::Native.for_url("https://remote.example"),
            WireFormat::Native
        );
        let cfg: Config =
            toml::from_str("[store]\nformat = \"rowbinary\"\n").expect("format parses");
        assert_eq!(cfg.store.format, WireFormat::RowBinary);
        assert!(toml::from_str::<Config>("[store]\nformat = \"csv\"\n").is_err());
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, "test.toml")
    }

    #[test]
    fn empty_file_is_the_embedded_default() {
        let config = parse("").expect("empty config");
        assert_eq!(config, Config::default());
        assert_eq!(config.exposure.watched_ports, vec![GATEWAY_PORT]);
        assert!(config.metrics.listen.ip().is_loopback());
    }

    #[test]
    fn full_file_parses() {
        let config = parse(
            r#"
            [exposure]
            watched_ports = [18789, 9000]
            rescan_interval = "2s"
            allow = [{ port = 443, proto = "tcp", process = "caddy", reason = "edge" }]
            [nat]
            poll_interval = "500ms"
            [probes]
            ring_buffer_bytes = 1048576
            [metrics]
            listen = "127.0.0.1:0"
            [edge]
            access_logs = ["/var/log/nginx/access.log"]
            json_fields = { time = "ts", request_id = "rid" }
            "#,
        )
        .expect("valid config");
        assert_eq!(config.edge.json_fields.time, "ts");
        assert_eq!(
            config.edge.json_fields.status, "status",
            "unmapped keys keep defaults"
        );
        assert_eq!(config.exposure.watched_ports, vec![18789, 9000]);
        assert_eq!(config.exposure.rescan_interval, Duration::from_secs(2));
        assert_eq!(config.exposure.allow[0].process.as_deref(), Some("caddy"));
        assert_eq!(config.nat.poll_interval, Duration::from_millis(500));
        assert_eq!(config.metrics.listen.port(), 0);
    }

    #[test]
    fn alert_rules_are_tuned_and_switched_off_in_the_config() {
        let config = parse(
            r#"
            [alerts]
            quiet_period = "30s"
            cooldown = "0s"
            [alerts.reload_burst]
            enabled = false
            [alerts.origin_rejected]
            allowed_origins = ["https://gw.example.com"]
            [alerts.upstream_slowness]
            percentile = 99
            threshold = "500ms"
            [[alerts.webhooks]]
            url = "http://127.0.0.1:9093/api/v2/alerts"
            bearer_token_env = "EDGEWATCH_WEBHOOK_TOKEN"
            [[alerts.webhooks]]
            url = "https://hooks.example/edgewatch"
            format = "json"
            "#,
        )
        .expect("valid alerts config");
        let a = &config.alerts;
        assert_eq!(a.quiet_period, Duration::from_secs(30));
        assert!(!a.reload_burst.enabled);
        assert!(a.timeout_disconnect.enabled, "others stay on");
        assert_eq!(
            a.origin_rejected.allowed_origins,
            ["https://gw.example.com"]
        );
        assert_eq!(a.upstream_slowness.threshold, Duration::from_millis(500));
        assert_eq!(a.webhooks.len(), 2);
        assert_eq!(
            a.webhooks[1].format,
            crate::alerts::webhook::WebhookFormat::Json
        );
        let err = parse("[[alerts.webhooks]]\nurl = \"https://u:pw@hooks.example/\"")
            .expect_err("credentials in the URL")
            .to_string();
        assert!(err.contains("bearer_token_env"), "{err}");
        assert!(!err.contains("pw"), "the password is not echoed: {err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[exposure]\nwatched_port = [1]\n").expect_err("unknown key");
        let text = err.to_string();
        assert!(text.contains("watched_port"), "{text}");
        assert!(text.contains("test.toml"), "{text}");
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let cases = [
            (
                "[exposure]\nwatched_ports = [0]",
                "exposure.watched_ports",
                "0",
            ),
            (
                "[probes]\nring_buffer_bytes = 5000",
                "probes.ring_buffer_bytes",
                "5000",
            ),
            ("[nat]\npoll_interval = \"1ms\"", "nat.poll_interval", "1ms"),
            ("[hop]\nports = [0]", "hop.ports", "0"),
            ("[hop]\ninterfaces = [\"a/b\"]", "hop.interfaces", "a/b"),
            (
                "[exposure]\nallow = [{ port = 18789 }]",
                "exposure.allow[0].port",
                "18789",
            ),
            (
                "[store]\nurl = \"tcp://ch:9000\"",
                "store.url",
                "tcp://ch:9000",
            ),
            ("[store]\ndatabase = \"a-b\"", "store.database", "a-b"),
            ("[store]\nspool_dir = \"spool\"", "store.spool_dir", "spool"),
            (
                "[store]\nspool_max_bytes = 1000",
                "store.spool_max_bytes",
                "1000",
            ),
            (
                "[alerts.upstream_slowness]\npercentile = 120",
                "alerts.upstream_slowness.percentile",
                "120",
            ),
            (
                "[alerts.reload_burst]\nmin_sessions = 0",
                "alerts.reload_burst.min_sessions",
                "0",
            ),
            (
                "[alerts]\nquiet_period = \"0s\"",
                "alerts.quiet_period",
                "0s",
            ),
            (
                "[[alerts.webhooks]]\nurl = \"https://u:pw@hooks.example/x?k=1\"",
                "alerts.webhooks[0].url",
                "https://REDACTED@hooks.example/x?REDACTED",
            ),
        ];
        for (text, key, value) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(key), "{err} should name {key}");
            assert!(err.contains(value), "{err} should name {value}");
        }
    }

    #[test]
    fn credentials_in_the_store_url_are_refused_and_not_echoed() {
        let err = parse("[store]\nurl = \"https://u:hunter2@ch.example\"")
            .expect_err("credentials in the URL")
            .to_string();
        assert!(
            err.contains("store.url") && err.contains("password_file"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
        for (url, named) in [
            (
                "https://ch.example:8443/?user=ew&password=hunter2",
                "?password=",
            ),
            ("https://ch.example:8443/?PASSWORD=hunter2", "?password="),
            ("https://ch.example:8443/?access_token=hunter2", "token"),
            ("https://default@ch.example:8443/", "user:password@"),
        ] {
            let err = parse(&format!("[store]\nurl = {url:?}"))
                .expect_err(url)
                .to_string();
            assert!(err.contains("store.url") && err.contains(named), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        assert!(parse("[store]\nurl = \"https://ch.example:8443/?database=ew\"").is_ok());
    }

    #[test]
    fn embedded_store_keys_are_checked() {
        for (text, key) in [
            (
                "[store.embedded]\nrun_as = \"root\"",
                "store.embedded.run_as",
            ),
            (
                "[store.embedded]\nsecret_file = \"secret\"",
                "store.embedded.secret_file",
            ),
            (
                "[store.embedded]\nhttp_port = 0",
                "store.embedded.http_port",
            ),
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(key), "{err}");
        }
        // An older config's tcp_port still loads (a warning at start says it is unused).
        let c = parse("[store.embedded]\ntcp_port = 19000").expect("old key accepted");
        assert_eq!(c.store.embedded.tcp_port, Some(19000));
    }

    #[test]
    fn wrong_types_are_rejected() {
        let err = parse("[exposure]\nwatched_ports = [70000]").expect_err("port overflow");
        assert!(err.to_string().contains("70000"), "{err}");
        let err = parse("[exposure]\nallow = [{ port = 22, proto = \"sctp\" }]")
            .expect_err("bad proto")
            .to_string();
        assert!(err.contains("sctp"), "{err}");
        let err = parse("[metrics]\nlisten = \"localhost\"").expect_err("bad addr");
        assert!(err.to_string().contains("localhost"), "{err}");
    }
}
