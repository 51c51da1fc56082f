//! The feed client that speaks both `http://` and `https://`: the same small
//! HTTP/1.1 GET as [`PlainHttp`](super::PlainHttp) (size limit, deadline,
//! chunked bodies), over rustls (ring) for `https://`. Microsoft serves SNDS
//! only over HTTPS.
//!
//! Trust: Mozilla's roots (built in), the system's store, and optionally an
//! extra PEM bundle for a private feed or a TLS-terminating proxy. Messages
//! show URLs without their query, where the key is.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::http::{exchange, get_request, parse_http_url, FetchError, HttpResponse};
use crate::http1::HttpUrl;

/// Why the TLS settings could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsSetupError {
    #[error(
        "the CA bundle holds no PEM certificate (expected `-----BEGIN CERTIFICATE-----` blocks)"
    )]
    EmptyBundle,

    #[error("the CA bundle is not readable PEM: {detail}")]
    BadPem { detail: String },

    #[error("certificate {index} of the CA bundle cannot be a trust anchor: {detail}")]
    BadCertificate { index: usize, detail: String },

    #[error("no trusted root certificate at all: give a CA bundle")]
    NoRoots,

    #[error("the TLS client cannot be set up: {detail}")]
    Config { detail: String },
}

/// The certificates a feed server's chain must lead to.
#[derive(Clone, Debug)]
pub struct TrustRoots {
    store: Arc<RootCertStore>,
}

impl TrustRoots {
    /// Mozilla's roots (built in, so a minimal image works) plus every
    /// certificate of the system store that can be read. Reads the system
    /// store: call once and reuse.
    pub fn system() -> Self {
        let mut store = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            tracing::debug!("system CA store: {error}");
        }
        let (added, ignored) = store.add_parsable_certificates(native.certs);
        tracing::debug!(added, ignored, "system CA certificates loaded");
        TrustRoots {
            store: Arc::new(store),
        }
    }

    /// No root at all: only what [`with_pem`](Self::with_pem) adds is trusted.
    pub fn none() -> Self {
        TrustRoots {
            store: Arc::new(RootCertStore::empty()),
        }
    }

    /// These roots plus every certificate of a PEM bundle (a Secret's
    /// `ca.crt`, for example). Refuses a bundle with no certificate or one
    /// that is not a usable CA certificate, naming which.
    pub fn with_pem(&self, pem: &[u8]) -> Result<Self, TlsSetupError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsSetupError::BadPem {
                detail: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsSetupError::EmptyBundle);
        }
        let mut store = (*self.store).clone();
        for (index, cert) in certs.into_iter().enumerate() {
            store.add(cert).map_err(|e| TlsSetupError::BadCertificate {
                index: index + 1,
                detail: e.to_string(),
            })?;
        }
        Ok(TrustRoots {
            store: Arc::new(store),
        })
    }

    /// How many roots are trusted.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }
}

/// GETs `http://` and `https://` URLs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct FeedClient {
    /// Deadline for connecting, the TLS handshake, sending and reading the whole response.
    pub timeout: Duration,
    /// Largest response read (headers included).
    pub max_bytes: usize,
    tls: Arc<ClientConfig>,
}

impl FeedClient {
    /// A client trusting `roots`, with the deadline and size limit of
    /// [`PlainHttp`](super::PlainHttp)'s defaults (30 s, 16 MiB).
    pub fn new(roots: &TrustRoots) -> Result<Self, TlsSetupError> {
        if roots.is_empty() {
            return Err(TlsSetupError::NoRoots);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Config {
                detail: e.to_string(),
            })?
            .with_root_certificates(roots.store.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let defaults = super::PlainHttp::default();
        Ok(FeedClient {
            timeout: defaults.timeout,
            max_bytes: defaults.max_bytes,
            tls: Arc::new(config),
        })
    }

    pub async fn get(&self, url: &str) -> Result<HttpResponse, FetchError> {
        let target = FeedUrl::parse(url)?;
        let shown = target.redacted();
        match tokio::time::timeout(self.timeout, self.fetch(&target, &shown)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout {
                url: shown,
                timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    async fn fetch(&self, target: &FeedUrl, shown: &str) -> Result<HttpResponse, FetchError> {
        let url = &target.url;
        let mut tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| FetchError::Connect {
                url: shown.to_string(),
                detail: e.to_string(),
            })?;
        let request = get_request(&url.path, &target.host_header());
        if !target.tls {
            return exchange(&mut tcp, &request, shown, self.max_bytes).await;
        }
        let name = ServerName::try_from(url.host.clone()).map_err(|e| FetchError::BadUrl {
            url: shown.to_string(),
            problem: format!("the host is not a DNS name or IP address: {e}"),
        })?;
        let mut tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| handshake_error(e, shown))?;
        exchange(&mut tls, &request, shown, self.max_bytes).await
    }
}

impl super::FeedFetch for FeedClient {
    fn get(
        &self,
        url: &str,
    ) -> impl std::future::Future<Output = Result<HttpResponse, FetchError>> + Send {
        FeedClient::get(self, url)
    }
}

/// A refused certificate or protocol is a TLS error, never retried (it will
/// not pass on a second try); a broken connection stays an I/O error.
fn handshake_error(error: std::io::Error, shown: &str) -> FetchError {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => FetchError::Tls {
            url: shown.to_string(),
            detail: tls_hint(tls),
        },
        None => FetchError::Io {
            url: shown.to_string(),
            detail: format!("during the TLS handshake: {error}"),
        },
    }
}

fn tls_hint(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(why) => format!(
            "the server's certificate is not trusted ({why:?}); for a private feed or proxy, \
             give its CA in spec.reputation.feeds.snds.caBundleSecretRef"
        ),
        other => other.to_string(),
    }
}

/// `http://` or `https://` URL, with the port the scheme implies.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FeedUrl {
    tls: bool,
    url: HttpUrl,
}

impl FeedUrl {
    fn parse(text: &str) -> Result<FeedUrl, FetchError> {
        let trimmed = text.trim();
        let scheme_end = trimmed.find("://").map(|i| i + 3).unwrap_or(0);
        let scheme = trimmed[..scheme_end].to_ascii_lowercase();
        if scheme != "https://" {
            return Ok(FeedUrl {
                tls: false,
                url: parse_http_url(trimmed)?,
            });
        }
        let rest = &trimmed[scheme_end..];
        let mut url = parse_http_url(&format!("http://{rest}")).map_err(|e| match e {
            FetchError::BadUrl { problem, .. } => FetchError::BadUrl {
                url: format!("https://{}", rest.split('?').next().unwrap_or_default()),
                problem,
            },
            other => other,
        })?;
        if !has_explicit_port(rest) {
            url.port = 443;
        }
        Ok(FeedUrl { tls: true, url })
    }

    /// The `Host` header: the port only when not the scheme's own.
    fn host_header(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.url.host.contains(':') {
            format!("[{}]", self.url.host)
        } else {
            self.url.host.clone()
        };
        if self.url.port == default {
            host
        } else {
            format!("{host}:{}", self.url.port)
        }
    }

    /// Safe to log: without the query.
    fn redacted(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let path = self.url.path.split('?').next().unwrap_or("/");
        format!("{scheme}://{}{path}", self.host_header())
    }
}

fn has_explicit_port(after_scheme: &str) -> bool {
    let end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    let authority = &after_scheme[..end];
    match authority.rfind(']') {
        Some(close) => authority[close..].contains(':'),
        None => authority.contains(':'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_urls_get_port_443_and_never_show_the_query() {
        let url = FeedUrl::parse(
            "https://sendersupport.olc.protection.outlook.com/snds/ipStatus.aspx?key=SECRET",
        )
        .unwrap();
        assert!(url.tls);
        assert_eq!(url.url.port, 443);
        assert_eq!(url.url.path, "/snds/ipStatus.aspx?key=SECRET");
        assert_eq!(
            url.redacted(),
            "https://sendersupport.olc.protection.outlook.com/snds/ipStatus.aspx"
        );
        assert_eq!(
            url.host_header(),
            "sendersupport.olc.protection.outlook.com"
        );

        let url = FeedUrl::parse("HTTPS://127.0.0.1:8443/x?key=SECRET").unwrap();
        assert_eq!((url.tls, url.url.port), (true, 8443));
        assert_eq!(url.redacted(), "https://127.0.0.1:8443/x");

        let url = FeedUrl::parse("https://[2001:db8::1]/x").unwrap();
        assert_eq!((url.url.host.as_str(), url.url.port), ("2001:db8::1", 443));
        assert_eq!(url.host_header(), "[2001:db8::1]");
        let url = FeedUrl::parse("https://[2001:db8::1]:80/x").unwrap();
        assert_eq!(url.url.port, 80);

        let url = FeedUrl::parse("http://feed.local/snds?key=SECRET").unwrap();
        assert_eq!((url.tls, url.url.port), (false, 80));
        assert_eq!(url.redacted(), "http://feed.local/snds");
    }

    #[test]
    fn unusable_urls_are_refused_without_the_key() {
        for bad in [
            "ftp://x/?key=SECRET",
            "https://:443/?key=SECRET",
            "https://u:p@host/?key=SECRET",
            "https://host:99999/?key=SECRET",
            "https://host/a b?key=SECRET",
        ] {
            let err = FeedUrl::parse(bad).unwrap_err();
            assert_eq!(err.kind(), "bad_url", "{bad}");
            assert!(!err.to_string().contains("SECRET"), "{err}");
        }
    }

    #[test]
    fn bundles_without_certificates_are_refused() {
        assert_eq!(
            TrustRoots::none().with_pem(b"not pem at all").unwrap_err(),
            TlsSetupError::EmptyBundle
        );
        let err = TrustRoots::none()
            .with_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap_err();
        assert!(
            matches!(err, TlsSetupError::BadCertificate { index: 1, .. }),
            "{err:?}"
        );
        assert_eq!(
            FeedClient::new(&TrustRoots::none()).unwrap_err(),
            TlsSetupError::NoRoots
        );
        assert!(
            TrustRoots::system().len() > 100,
            "Mozilla's roots are built in"
        );
    }
}
