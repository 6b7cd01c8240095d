//! Step 2, TLS at the edge. The handshake records the chain the edge serves and what a
//! verifying client (rustls' WebPKI verifier with `outbound`'s roots: the machine's, plus a CA
//! file for private setups) says about it, and goes on either way so the later steps still
//! run; `tls_step` (pure) tells an incomplete chain, a self-signed certificate, a name mismatch and an expired or
//! expiring certificate apart.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        WebPkiServerVerifier,
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
    CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde::Serialize;
use serde_json::json;

use super::{Status, Step};

/// One certificate of the served chain.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// DNS names and IP addresses of the subjectAltName extension.
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub self_signed: bool,
}

/// What verifying the chain said.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VerifyFailure {
    UnknownIssuer,
    NotValidForName,
    Expired,
    NotValidYet,
    Other(String),
}

/// Everything step 2 knows.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct TlsFacts {
    /// The handshake did not complete (then nothing else is known).
    pub handshake_error: Option<String>,
    /// Leaf first, as served.
    pub chain: Vec<CertInfo>,
    pub verify: Option<VerifyFailure>,
    pub protocol: Option<String>,
}

/// Parses a DER certificate (unparsable ones are described as such).
pub fn describe(der: &[u8]) -> CertInfo {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, c)) => {
            let names = c
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|san| {
                    san.value
                        .general_names
                        .iter()
                        .filter_map(|n| match n {
                            x509_parser::extensions::GeneralName::DNSName(d) => {
                                Some((*d).to_owned())
                            }
                            x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                                4 => <[u8; 4]>::try_from(*ip)
                                    .ok()
                                    .map(|a| std::net::IpAddr::from(a).to_string()),
                                16 => <[u8; 16]>::try_from(*ip)
                                    .ok()
                                    .map(|a| std::net::IpAddr::from(a).to_string()),
                                _ => None,
                            },
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            CertInfo {
                subject: c.subject().to_string(),
                issuer: c.issuer().to_string(),
                names,
                not_before: c.validity().not_before.timestamp(),
                not_after: c.validity().not_after.timestamp(),
                self_signed: c.subject().as_raw() == c.issuer().as_raw(),
            }
        }
        Err(e) => CertInfo {
            subject: format!("(unparsable certificate: {e})"),
            issuer: String::new(),
            names: Vec::new(),
            not_before: 0,
            not_after: 0,
            self_signed: false,
        },
    }
}

fn date(unix: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

const MOVE_CHAIN: &str = "Validate the chain with a trusting client and serve the full chain \
    (nginx: ssl_certificate with the leaf followed by its intermediates, e.g. fullchain.pem).";
const MOVE_NAME: &str = "Match server_name (nginx) / the site address (Caddy) to the \
    certificate's CN/SAN, or issue a certificate for this host.";
const MOVE_RENEW: &str = "Renew the certificate (and check the ACME client or Caddy's logs for \
    why it was not renewed).";

/// Step 2's verdict. `now` in Unix seconds.
pub fn tls_step(host: &str, facts: &TlsFacts, now: i64, warn_days: u32) -> Step {
    let evidence = json!(facts);
    let step = |status, summary: String| Step::new("tls", status, summary, evidence.clone());
    if let Some(e) = &facts.handshake_error {
        return step(
            Status::Fail,
            format!("TLS handshake with the edge failed: {e}"),
        )
        .with_move(MOVE_CHAIN);
    }
    let Some(leaf) = facts.chain.first() else {
        return step(Status::Fail, "the edge sent no certificate".to_owned()).with_move(MOVE_CHAIN);
    };
    match &facts.verify {
        Some(VerifyFailure::NotValidForName) => step(
            Status::Fail,
            format!(
                "name mismatch: the certificate is for {} (subject {}), not {host}",
                if leaf.names.is_empty() {
                    "no subjectAltName".to_owned()
                } else {
                    leaf.names.join(", ")
                },
                leaf.subject
            ),
        )
        .with_move(MOVE_NAME),
        Some(VerifyFailure::Expired) => step(
            Status::Fail,
            format!("the certificate expired on {}", date(leaf.not_after)),
        )
        .with_move(MOVE_RENEW),
        Some(VerifyFailure::NotValidYet) => step(
            Status::Fail,
            format!(
                "the certificate is not valid before {} (check the clock)",
                date(leaf.not_before)
            ),
        ),
        Some(VerifyFailure::UnknownIssuer) => {
            if facts.chain.len() == 1 && leaf.self_signed {
                return step(
                    Status::Fail,
                    format!(
                        "self-signed certificate ({}): no client trusts it",
                        leaf.subject
                    ),
                )
                .with_move(MOVE_CHAIN);
            }
            // The last certificate served names an issuer the edge did not send.
            let last = facts.chain.last().unwrap_or(leaf);
            if !last.self_signed {
                return step(
                    Status::Fail,
                    format!(
                        "incomplete chain: the edge sends {} certificate(s) and not the intermediate that issued '{}' (its issuer '{}')",
                        facts.chain.len(),
                        last.subject,
                        last.issuer
                    ),
                )
                .with_move(MOVE_CHAIN);
            }
            step(
                Status::Fail,
                format!(
                    "the chain ends at '{}', a CA this client does not trust (a private CA needs --ca-file)",
                    last.subject
                ),
            )
            .with_move(MOVE_CHAIN)
        }
        Some(VerifyFailure::Other(e)) => step(
            Status::Fail,
            format!("the certificate does not verify: {e}"),
        )
        .with_move(MOVE_CHAIN),
        None => {
            let days_left = (leaf.not_after - now) / 86_400;
            if days_left < i64::from(warn_days) {
                return step(
                    Status::Warn,
                    format!(
                        "valid for {host}, but it expires in {days_left} day(s) ({})",
                        date(leaf.not_after)
                    ),
                )
                .with_move(MOVE_RENEW);
            }
            step(
                Status::Pass,
                format!(
                    "chain of {} verified for {host} ({}), expires {} ({days_left} days)",
                    facts.chain.len(),
                    facts.protocol.as_deref().unwrap_or("TLS"),
                    date(leaf.not_after)
                ),
            )
        }
    }
}

/// The chain as served (DER, leaf first) and the verifier's verdict.
type Seen = (Vec<Vec<u8>>, Option<VerifyFailure>);

/// Records the served chain and the real verifier's opinion, and lets the handshake go on.
#[derive(Debug)]
struct Recorder {
    inner: Arc<WebPkiServerVerifier>,
    seen: Mutex<Option<Seen>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict =
            match self
                .inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            {
                Ok(_) => None,
                Err(rustls::Error::InvalidCertificate(e)) => Some(match e {
                    CertificateError::UnknownIssuer => VerifyFailure::UnknownIssuer,
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. } => {
                        VerifyFailure::NotValidForName
                    }
                    CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                        VerifyFailure::Expired
                    }
                    CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                        VerifyFailure::NotValidYet
                    }
                    other => VerifyFailure::Other(format!("{other:?}")),
                }),
                Err(other) => Some(VerifyFailure::Other(other.to_string())),
            };
        let mut chain = vec![end_entity.to_vec()];
        chain.extend(intermediates.iter().map(|c| c.to_vec()));
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some((chain, verdict));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The roots a client trusts: the same policy as every other outbound connection.
pub use crate::outbound::roots;

/// A TLS connector that records the chain (see [`Recorder`]); every connection made with it
/// completes even when the chain does not verify.
pub struct Connector {
    config: Arc<rustls::ClientConfig>,
    recorder: Arc<Recorder>,
}

impl Connector {
    pub fn new(roots: RootCertStore, alpn_http1: bool) -> anyhow::Result<Self> {
        let provider = crate::outbound::provider();
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .context("building the certificate verifier")?;
        let recorder = Arc::new(Recorder {
            inner,
            seen: Mutex::new(None),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .dangerous()
            .with_custom_certificate_verifier(recorder.clone())
            .with_no_client_auth();
        if alpn_http1 {
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        Ok(Self {
            config: Arc::new(config),
            recorder,
        })
    }

    /// Connects to `addr` with SNI `host`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        host: &str,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let name = ServerName::try_from(host.to_owned())
            .with_context(|| format!("{host:?} is not a host name"))?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .context("TLS handshake")
    }

    /// The facts of the last handshake (`error`: it failed).
    pub fn facts(
        &self,
        stream: Option<&tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        error: Option<String>,
    ) -> TlsFacts {
        let seen = self.recorder.seen.lock().ok().and_then(|mut s| s.take());
        let (chain, verify) = seen.unwrap_or_default();
        TlsFacts {
            handshake_error: error,
            chain: chain.iter().map(|d| describe(d)).collect(),
            verify,
            protocol: stream
                .and_then(|s| s.get_ref().1.protocol_version())
                .map(|v| format!("{v:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(subject: &str, issuer: &str, names: &[&str], not_after: i64) -> CertInfo {
        CertInfo {
            subject: subject.into(),
            issuer: issuer.into(),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            not_before: 0,
            not_after,
            self_signed: subject == issuer,
        }
    }

    const NOW: i64 = 1_795_000_000;

    #[test]
    fn each_tls_failure_is_named() {
        let leaf = cert("CN=gw.test", "CN=Inter", &["gw.test"], NOW + 90 * 86_400);
        let inter = cert("CN=Inter", "CN=Root", &[], NOW + 900 * 86_400);
        let ok = TlsFacts {
            chain: vec![leaf.clone(), inter.clone()],
            ..Default::default()
        };
        assert_eq!(tls_step("gw.test", &ok, NOW, 14).status, Status::Pass);
        assert_eq!(
            tls_step("gw.test", &ok, NOW + 80 * 86_400, 14).status,
            Status::Warn,
            "expires within the warning days"
        );
        let incomplete = TlsFacts {
            chain: vec![leaf.clone()],
            verify: Some(VerifyFailure::UnknownIssuer),
            ..Default::default()
        };
        let s = tls_step("gw.test", &incomplete, NOW, 14);
        assert!(s.summary.starts_with("incomplete chain"), "{}", s.summary);
        assert!(s.summary.contains("CN=Inter"), "{}", s.summary);
        let selfsigned = TlsFacts {
            chain: vec![cert(
                "CN=gw.test",
                "CN=gw.test",
                &["gw.test"],
                NOW + 86_400 * 90,
            )],
            verify: Some(VerifyFailure::UnknownIssuer),
            ..Default::default()
        };
        assert!(tls_step("gw.test", &selfsigned, NOW, 14)
            .summary
            .starts_with("self-signed"));
        let name = TlsFacts {
            chain: vec![
                cert("CN=other", "CN=Inter", &["other.test"], NOW + 86_400 * 90),
                inter,
            ],
            verify: Some(VerifyFailure::NotValidForName),
            ..Default::default()
        };
        let s = tls_step("gw.test", &name, NOW, 14);
        assert!(s.summary.contains("for other.test"), "{}", s.summary);
        assert!(s.first_move.expect("move").contains("server_name"));
        let expired = TlsFacts {
            chain: vec![leaf],
            verify: Some(VerifyFailure::Expired),
            ..Default::default()
        };
        assert!(tls_step("gw.test", &expired, NOW, 14)
            .summary
            .contains("expired"));
    }
}
