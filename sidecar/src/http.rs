//! The one outbound HTTP client configuration (ureq): the machine's trust store through the
//! platform verifier (corporate proxies and egress gateways add their CA there).
use std::time::Duration;

/// An agent with the platform's roots; `status_as_error: false` hands every status to the
/// caller (who then classifies it), `true` turns non-2xx answers into errors.
pub fn agent(timeout: Option<Duration>, status_as_error: bool) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(timeout)
        .http_status_as_error(status_as_error)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                .build(),
        )
        .build()
        .into()
}
