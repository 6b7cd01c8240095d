//! The one outbound HTTP client configuration (ureq): the machine's trust store through the
//! platform verifier (corporate proxies and egress gateways add their CA there).
use std::time::Duration;

/// The platform's roots.
fn tls() -> ureq::tls::TlsConfig {
    ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build()
}

/// An agent with the platform's roots; `status_as_error: false` hands every status to the
/// caller (who then classifies it), `true` turns non-2xx answers into errors.
pub fn agent(timeout: Option<Duration>, status_as_error: bool) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(timeout)
        .http_status_as_error(status_as_error)
        .tls_config(tls())
        .build()
        .into()
}

/// An agent for a large download (the embedded store's package): bounded waits for the
/// connection and the answer, and a long one for the body, so a registry that hangs fails
/// with a message instead of hanging the start.
pub fn download_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_recv_body(Some(Duration::from_secs(15 * 60)))
        .http_status_as_error(true)
        .tls_config(tls())
        .build()
        .into()
}
