//! Everything edgewatch sends out over HTTP or TLS goes through here: one root-store policy,
//! one rustls client configuration per CA file (built once), one HTTP client family (hyper).
//!
//! The policy: the machine's trust store (`/etc/ssl/certs` and friends, through
//! `rustls-native-certs`: where corporate proxies and private CAs are added) plus an optional
//! CA file (`store.ca_file`, `check --ca-file`). No bundled web roots: a host without CA
//! certificates says so in the log instead of trusting a list compiled into the binary.
//!
//! Users: the ClickHouse client (`store::ship`, through the `clickhouse` crate on top of
//! [`connector`]), webhooks and `health` ([`Http`]), the embedded store's download
//! ([`Http::download`]), and `check`, which makes its own handshake (it must see the chain the
//! edge serves, valid or not) with the same [`roots`] and speaks HTTP over it with hyper.
use std::{
    collections::HashMap,
    future::Future,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use rustls::{pki_types::CertificateDer, RootCertStore};

/// The crypto provider every TLS configuration uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The roots a client trusts: the machine's trust store plus `ca_file` (PEM; an unreadable,
/// empty or non-CA file is an error naming it).
pub fn roots(ca_file: Option<&Path>) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(
        added,
        ignored,
        errors = native.errors.len(),
        "loaded the machine's CA certificates"
    );
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading the CA file {}", path.display()))?;
        let mut n = 0;
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let cert: CertificateDer<'static> = cert.with_context(|| {
                format!("the CA file {} is not PEM certificates", path.display())
            })?;
            roots.add(cert).with_context(|| {
                format!(
                    "a certificate in the CA file {} is not a CA",
                    path.display()
                )
            })?;
            n += 1;
        }
        anyhow::ensure!(n > 0, "the CA file {} holds no certificate", path.display());
    }
    if roots.is_empty() {
        tracing::warn!(
            "no CA certificates: the machine's trust store is empty (install ca-certificates) \
             and no CA file is set; https connections will fail to verify"
        );
    }
    Ok(roots)
}

/// The client configuration for `ca_file` (None: the machine's roots alone), built once per
/// file and shared.
pub fn client_config(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    static BUILT: OnceLock<Mutex<HashMap<Option<PathBuf>, Arc<rustls::ClientConfig>>>> =
        OnceLock::new();
    let key = ca_file.map(Path::to_path_buf);
    let built = BUILT.get_or_init(Default::default);
    if let Some(c) = built.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return Ok(c);
    }
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots(ca_file)?)
            .with_no_client_auth(),
    );
    if let Ok(mut m) = built.lock() {
        m.insert(key, config.clone());
    }
    Ok(config)
}

/// The connector for http and https URLs with that configuration.
pub fn connector(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
) -> anyhow::Result<HttpsConnector<HttpConnector>> {
    let mut http = HttpConnector::new();
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_config(ca_file)?.as_ref().clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

/// A small HTTP client: one request at a time, a deadline for the answer's head.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

/// An answer: its status and, for [`Http::get_text`], a bounded body.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Http {
    /// `timeout` bounds the connect and the wait for the answer's head.
    pub fn new(ca_file: Option<&Path>, timeout: Duration) -> anyhow::Result<Self> {
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector(ca_file, timeout)?);
        Ok(Self { client, timeout })
    }

    async fn send(
        &self,
        request: http::Request<Full<Bytes>>,
    ) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
        let uri = request.uri().clone();
        tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {:?}", self.timeout))?
            .map_err(|e| anyhow::anyhow!("{}: {}", redact(&uri), chain(&e)))
    }

    /// GET `url`; the body (up to 64 KiB) as text.
    pub async fn get_text(&self, url: &str) -> anyhow::Result<Answer> {
        self.get_limited(url, 64 << 10).await
    }

    /// GET `url`; the body (up to `limit` bytes, an error beyond) as text.
    pub async fn get_limited(&self, url: &str, limit: usize) -> anyhow::Result<Answer> {
        let request = http::Request::get(url)
            .header("user-agent", user_agent())
            .body(Full::default())
            .with_context(|| format!("{url:?} is not a URL"))?;
        let response = self.send(request).await?;
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), limit);
        let bytes = tokio::time::timeout(self.timeout, body.collect())
            .await
            .map_err(|_| anyhow::anyhow!("the body did not arrive within {:?}", self.timeout))?
            .map_err(|e| anyhow::anyhow!("reading the body: {e}"))?
            .to_bytes();
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    /// POST a JSON body with extra headers; the answer's status (its body is drained).
    pub async fn post_json(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> anyhow::Result<u16> {
        let mut request = http::Request::post(url)
            .header("content-type", "application/json")
            .header("user-agent", user_agent());
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .context("building the request (is the URL valid?)")?;
        let response = self.send(request).await?;
        let status = response.status().as_u16();
        let drain = http_body_util::Limited::new(response.into_body(), 64 << 10).collect();
        let _ = tokio::time::timeout(self.timeout, drain).await;
        Ok(status)
    }

    /// Streams `url`'s body (a 2xx answer only) to `each`, at most `limit` bytes, each chunk
    /// within the timeout and the whole within `total`. Returns the announced length, if any,
    /// through `start` before the first chunk.
    pub async fn download(
        &self,
        url: &str,
        limit: u64,
        total: Duration,
        start: impl FnOnce(Option<u64>),
        mut each: impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        let request = http::Request::get(url)
            .header("user-agent", user_agent())
            .body(Full::default())
            .with_context(|| format!("{url:?} is not a URL"))?;
        let response = self.send(request).await?;
        anyhow::ensure!(
            response.status().is_success(),
            "{url} answered {}",
            response.status()
        );
        let length = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        start(length);
        let mut body = response.into_body();
        let mut done = 0u64;
        let work = async {
            loop {
                let frame = tokio::time::timeout(self.timeout, body.frame())
                    .await
                    .map_err(|_| anyhow::anyhow!("the download stalled for {:?}", self.timeout))?;
                let Some(frame) = frame else { break };
                let frame = frame.map_err(|e| anyhow::anyhow!("downloading {url}: {e}"))?;
                if let Ok(data) = frame.into_data() {
                    done += data.len() as u64;
                    anyhow::ensure!(done <= limit, "{url} is larger than {limit} bytes");
                    each(&data)?;
                }
            }
            Ok::<_, anyhow::Error>(())
        };
        tokio::time::timeout(total, work)
            .await
            .map_err(|_| anyhow::anyhow!("the download took longer than {total:?}"))??;
        Ok(done)
    }
}

fn user_agent() -> &'static str {
    concat!("edgewatch/", env!("CARGO_PKG_VERSION"))
}

/// The URI's scheme and host only: webhook tokens travel in paths (`/services/T0/B0/XXXX`) and
/// queries, and errors end up in logs. Callers name the URL the way they show it.
fn redact(uri: &http::Uri) -> String {
    let host = uri.host().unwrap_or("");
    match uri.port_u16() {
        Some(port) => format!("{}://{host}:{port}", uri.scheme_str().unwrap_or("http")),
        None => format!("{}://{host}", uri.scheme_str().unwrap_or("http")),
    }
}

/// An error with its causes, hyper's "client error (Connect)" alone says too little.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Runs `future` to completion from synchronous code: on the multi-thread runtime whose
/// context this thread has (a worker, through `block_in_place`; a `spawn_blocking` thread), else
/// on a current-thread runtime made for it. A current-thread runtime's own thread cannot block
/// on it: an error.
pub fn block_on<F: Future>(future: F) -> anyhow::Result<F::Output> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            Ok(tokio::task::block_in_place(|| handle.block_on(future)))
        }
        Ok(_) => anyhow::bail!("cannot wait for an HTTP request on a current-thread runtime"),
        Err(_) => Ok(tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a runtime for an HTTP request")?
            .block_on(future)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_is_not_pem_is_named() {
        let dir = std::env::temp_dir().join(format!("edgewatch-outbound-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let bad = dir.join("ca.pem");
        std::fs::write(&bad, "not a certificate\n").unwrap_or_default();
        let e = roots(Some(&bad))
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(e.contains("holds no certificate"), "{e}");
        let missing = dir.join("missing.pem");
        let e = roots(Some(&missing))
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(e.contains("missing.pem"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn block_on_from_anywhere() {
        assert_eq!(block_on(async { 1 }).ok(), Some(1), "no runtime");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build();
        let Ok(rt) = rt else { return };
        // From a worker (an async task that calls synchronous code), and a blocking thread.
        let on_worker =
            rt.block_on(async { tokio::spawn(async { block_on(async { 2 }).ok() }).await });
        assert_eq!(on_worker.ok().flatten(), Some(2));
        let on_blocking =
            rt.block_on(async { tokio::task::spawn_blocking(|| block_on(async { 3 }).ok()).await });
        assert_eq!(on_blocking.ok().flatten(), Some(3));
    }

    #[test]
    fn one_configuration_per_ca_file() {
        let a = client_config(None).ok();
        let b = client_config(None).ok();
        assert!(a.is_some());
        assert!(
            a.zip(b).is_some_and(|(a, b)| Arc::ptr_eq(&a, &b)),
            "the configuration is built once and shared"
        );
    }

    #[test]
    fn errors_carry_neither_the_path_nor_the_query() {
        let uri: http::Uri =
            "https://user:pw@hooks.example:8443/services/T0/B0/SECRET?token=secret"
                .parse()
                .unwrap_or_default();
        assert_eq!(redact(&uri), "https://hooks.example:8443");
    }
}
