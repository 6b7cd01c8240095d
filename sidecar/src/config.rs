//! The sidecar's configuration: a typed TOML file, validated without I/O before anything starts.
//! Each section belongs to the component it configures (`exposure`, `hop`, `edge` and
//! `alerts` in the core; `nat`, `probes`, `metrics` and `store` here) and is validated there;
//! this file only gathers them.
//!
//! Contract: [`Config::from_toml_str`] either returns a config whose every value has been
//! checked, or a [`ConfigError`] that names the key and the offending value. Unknown keys are
//! rejected (`deny_unknown_fields`). Every field has a default, so an empty file (or no file at
//! all) is the embedded default: watch the Gateway's port 18789.
use std::path::Path;

use serde::{Deserialize, Serialize};

use edgewatch_core::validate::Invalid;
pub use edgewatch_core::{
    alerts::AlertsConfig,
    edge::config::EdgeConfig,
    exposure::config::{AllowRule, ExposureConfig, GATEWAY_PORT},
    hop::config::HopConfig,
};

pub use crate::{
    metrics_config::MetricsConfig,
    probe::config::ProbeConfig,
    sources::nat_config::NatConfig,
    store::config::{url_credentials, EmbeddedStoreConfig, StoreConfig, WireFormat},
};

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
    pub alerts: AlertsConfig,
    /// The edge proxy's configuration (routes and `config.*` findings).
    pub proxy: edgewatch_core::proxy::config::ProxyConfig,
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

    /// Runs each section's own validation (the component that owns a section checks it).
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let sections = [
            self.exposure.validate(),
            self.nat.validate(),
            self.hop.validate(),
            self.edge.validate(),
            self.probes.validate(),
            self.store.validate(),
            self.alerts.validate(),
            self.proxy.validate(),
        ];
        match sections.into_iter().find_map(Result::err) {
            Some(Invalid { key, value, reason }) => Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                key,
                value,
                reason,
            }),
            None => Ok(()),
        }
    }

    /// The settings of the record pipeline (`edgewatch_core::pipeline`): the sections of
    /// the components it owns.
    pub fn pipeline(&self) -> edgewatch_core::pipeline::Settings {
        edgewatch_core::pipeline::Settings {
            exposure: self.exposure.clone(),
            hop_ports: self.hop.ports.clone(),
            hop_limits: self.hop.limits(),
            join: !self.edge.access_logs.is_empty(),
            join_window_ns: self.edge.join_window_ns(),
            join_limits: self.edge.limits(),
            json_fields: self.edge.json_fields.clone(),
            alerts: self.alerts.clone(),
            // Live, the configuration is read by the run loop (`cmd::proxy_watch`).
            proxy: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
            assert_eq!(WireFormat::Auto.for_url(url), WireFormat::Lz4, "{url}");
        }
        assert_eq!(WireFormat::Lz4.for_url("http://127.0.0.1"), WireFormat::Lz4);
        assert_eq!(
            WireFormat::Native.for_url("https://remote.example"),
            WireFormat::Native
        );
        let cfg: Config = toml::from_str("[store]\nformat = \"lz4\"\n").expect("format parses");
        assert_eq!(cfg.store.format, WireFormat::Lz4);
        // The compressed choice's name in older versions still parses, as that choice.
        let cfg: Config =
            toml::from_str("[store]\nformat = \"rowbinary\"\n").expect("format parses");
        assert_eq!(cfg.store.format, WireFormat::Lz4);
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
            [hop]
            drain_interval = "20ms"
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
        assert_eq!(config.hop.drain_interval, Duration::from_millis(20));
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
                "[hop]\ndrain_interval = \"1ms\"",
                "hop.drain_interval",
                "1ms",
            ),
            ("[hop]\ndrain_interval = \"2s\"", "hop.drain_interval", "2s"),
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
