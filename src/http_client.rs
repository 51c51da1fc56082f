//! The one HTTP client of every outbound call: the agent's reports, the SNDS
//! and Postmaster Tools feeds and any feed after them. It is reqwest (hyper, hyper-util and rustls with
//! ring, already in the build through kube) with what mailfleet adds:
//!
//! - one deadline over the whole exchange: resolve, connect, TLS, request and
//!   the whole body, so an endpoint that hangs costs one timeout;
//! - a bounded body: a response larger than the caller's limit is refused
//!   while it arrives, never held whole;
//! - trust as configured: Mozilla's roots and the system store, or only the
//!   certificates of a PEM bundle (a private CA, a self-signed endpoint);
//! - proxies from the standard environment (`HTTPS_PROXY`, `HTTP_PROXY`,
//!   `ALL_PROXY`, `NO_PROXY`), as every HTTP tool reads them;
//! - messages that never show a URL's query, where feed keys travel.
//!
//! Framing (1xx interim answers, chunked bodies, a TLS stream cut without
//! close_notify) is hyper's, not ours.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

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

    #[error("the HTTP client cannot be set up: {detail}")]
    Config { detail: String },
}

/// The certificates a server's chain must lead to.
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
    /// `ca.crt`, a `--ca-file`). Refuses a bundle with no certificate or one
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

    fn tls_config(&self) -> Result<ClientConfig, TlsSetupError> {
        if self.is_empty() {
            return Err(TlsSetupError::NoRoots);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Config {
                detail: e.to_string(),
            })?
            .with_root_certificates(self.store.clone())
            .with_no_client_auth())
    }
}

/// A response read whole (within the client's size limit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: Option<String>,
    /// `Retry-After` in seconds, when the server sent a number.
    pub retry_after: Option<u64>,
    pub body: Vec<u8>,
}

/// Why a request gave no response. URLs in messages never carry their query.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("`{url}` is not a usable URL: {problem}")]
    BadUrl { url: String, problem: String },

    #[error("cannot connect to {url}: {detail}")]
    Connect { url: String, detail: String },

    #[error("{url} did not answer within {timeout_ms} ms")]
    Timeout { url: String, timeout_ms: u64 },

    #[error("reading {url} failed: {detail}")]
    Io { url: String, detail: String },

    #[error("{url} sent an unreadable HTTP response: {detail}")]
    BadResponse { url: String, detail: String },

    #[error("{url} sent more than {limit} bytes; refusing to read further")]
    TooLarge { url: String, limit: usize },

    #[error("TLS with {url} failed: {detail}")]
    Tls { url: String, detail: String },
}

impl FetchError {
    /// The `kind`/`reason` label of the error counters.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::BadUrl { .. } => "bad_url",
            FetchError::Connect { .. } => "connect",
            FetchError::Timeout { .. } => "timeout",
            FetchError::Io { .. } => "io",
            FetchError::BadResponse { .. } => "bad_response",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::Tls { .. } => "tls",
        }
    }

    /// Whether trying again later may help.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            FetchError::Connect { .. }
                | FetchError::Timeout { .. }
                | FetchError::Io { .. }
                | FetchError::BadResponse { .. }
        )
    }
}

/// A checked `http://` or `https://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl(reqwest::Url);

impl HttpUrl {
    /// Refuses other schemes, a missing host and credentials in the URL
    /// (they come from a Secret or a token file), without repeating the query.
    pub fn parse(text: &str) -> Result<HttpUrl, FetchError> {
        let text = text.trim();
        let shown = || text.split('?').next().unwrap_or_default().to_string();
        let bad = |problem: &str| FetchError::BadUrl {
            url: shown(),
            problem: problem.to_string(),
        };
        let url = reqwest::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("expected http://HOST[:PORT]/PATH or https://..."));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("the host is empty"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "credentials in the URL are not accepted; they come from a Secret or a token file",
            ));
        }
        Ok(HttpUrl(url))
    }

    pub fn is_https(&self) -> bool {
        self.0.scheme() == "https"
    }

    /// Host and port (the scheme's own when none is written).
    pub fn host_port(&self) -> (String, u16) {
        let host = self.0.host_str().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (
            host.to_string(),
            self.0.port_or_known_default().unwrap_or(80),
        )
    }

    pub fn path(&self) -> &str {
        self.0.path()
    }

    /// Safe to log: without the query and the fragment.
    pub fn redacted(&self) -> String {
        let mut shown = self.0.clone();
        shown.set_query(None);
        shown.set_fragment(None);
        shown.to_string()
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// The client. Cheap to clone (the connection pool is shared).
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: reqwest::Client,
    /// Deadline of one whole exchange.
    pub timeout: Duration,
    /// Largest response body read.
    pub max_bytes: usize,
}

/// What the client sends as itself.
const USER_AGENT: &str = concat!("mailfleet/", env!("CARGO_PKG_VERSION"));

impl HttpClient {
    /// A client trusting `roots`, with a 30 s deadline and a 16 MiB body limit.
    pub fn new(roots: &TrustRoots) -> Result<Self, TlsSetupError> {
        let inner = reqwest::Client::builder()
            .use_preconfigured_tls(roots.tls_config()?)
            .user_agent(USER_AGENT)
            // A redirect could carry a feed key to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| TlsSetupError::Config {
                detail: error_chain(&e),
            })?;
        Ok(HttpClient {
            inner,
            timeout: Duration::from_secs(30),
            max_bytes: 16 * 1024 * 1024,
        })
    }

    /// GETs `url` (`Accept: text/csv, text/plain`, what feeds serve).
    pub async fn get(&self, url: &str) -> Result<HttpResponse, FetchError> {
        let url = HttpUrl::parse(url)?;
        let request = self
            .inner
            .get(url.0.clone())
            .header(reqwest::header::ACCEPT, "text/csv, text/plain");
        self.exchange(&url, request).await
    }

    /// GETs `url` with `headers` (an API's `Accept`, a bearer token).
    pub async fn get_with(
        &self,
        url: &HttpUrl,
        headers: &[(&str, &str)],
    ) -> Result<HttpResponse, FetchError> {
        let mut request = self.inner.get(url.0.clone());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.exchange(url, request).await
    }

    /// POSTs `body` to `url` with `headers`.
    pub async fn post(
        &self,
        url: &HttpUrl,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<HttpResponse, FetchError> {
        let mut request = self.inner.post(url.0.clone()).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.exchange(url, request).await
    }

    async fn exchange(
        &self,
        url: &HttpUrl,
        request: reqwest::RequestBuilder,
    ) -> Result<HttpResponse, FetchError> {
        let shown = url.redacted();
        let whole = async {
            let mut response = request
                .send()
                .await
                .map_err(|e| classify(&e, &shown, self.timeout))?;
            let header = |name: reqwest::header::HeaderName| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let content_type = header(reqwest::header::CONTENT_TYPE);
            let retry_after =
                header(reqwest::header::RETRY_AFTER).and_then(|v| v.trim().parse::<u64>().ok());
            let status = response.status().as_u16();
            if response
                .content_length()
                .is_some_and(|length| length > self.max_bytes as u64)
            {
                return Err(self.too_large(&shown));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| classify(&e, &shown, self.timeout))?
            {
                if body.len() + chunk.len() > self.max_bytes {
                    return Err(self.too_large(&shown));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(HttpResponse {
                status,
                content_type,
                retry_after,
                body,
            })
        };
        // reqwest's own timeout would do, but this one also bounds the body
        // loop above and reads the same in every error.
        match tokio::time::timeout(self.timeout, whole).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout {
                url: shown,
                timeout_ms: millis(self.timeout),
            }),
        }
    }

    fn too_large(&self, shown: &str) -> FetchError {
        FetchError::TooLarge {
            url: shown.to_string(),
            limit: self.max_bytes,
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Sorts reqwest's error into ours by what its chain holds: a rustls error is
/// a TLS failure (never transient: it will not pass on a second try).
fn classify(error: &reqwest::Error, shown: &str, timeout: Duration) -> FetchError {
    let url = shown.to_string();
    if let Some(tls) = find_source::<rustls::Error>(error) {
        return FetchError::Tls {
            url,
            detail: tls_hint(tls),
        };
    }
    let detail = error_chain(error);
    if error.is_timeout() {
        FetchError::Timeout {
            url,
            timeout_ms: millis(timeout),
        }
    } else if error.is_connect() {
        FetchError::Connect { url, detail }
    } else if error.is_body() || error.is_decode() {
        FetchError::Io { url, detail }
    } else if error.is_request() && find_source::<hyper::Error>(error).is_some_and(|e| e.is_parse())
    {
        FetchError::BadResponse { url, detail }
    } else if error.is_request() && find_source::<std::io::Error>(error).is_some() {
        FetchError::Io { url, detail }
    } else {
        FetchError::BadResponse { url, detail }
    }
}

fn tls_hint(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(why) => format!(
            "the server's certificate is not trusted ({why:?}); for a private endpoint or \
             proxy, give its CA (--ca-file, or spec.reputation.feeds.snds.caBundleSecretRef)"
        ),
        other => other.to_string(),
    }
}

fn find_source<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        // An io::Error's source() skips the error it wraps (hyper-rustls
        // wraps rustls' error in two of them): look inside.
        current = match e.downcast_ref::<std::io::Error>() {
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => e.source(),
            },
            None => e.source(),
        };
    }
    None
}

/// The error and its causes on one line, without the URL reqwest adds (it
/// would show the query).
fn error_chain(error: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = current {
        parts.push(e.to_string());
        current = e.source();
    }
    if parts.is_empty() {
        // reqwest's own text names the URL, query included.
        parts.push(if error.is_builder() {
            "the request could not be built".to_string()
        } else {
            "the request failed".to_string()
        });
    }
    parts.dedup();
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn urls_get_their_scheme_port_and_never_show_the_query() {
        let url = HttpUrl::parse(
            "https://sendersupport.olc.protection.outlook.com/snds/ipStatus.aspx?key=SECRET",
        )
        .unwrap();
        assert!(url.is_https());
        assert_eq!(url.host_port().1, 443);
        assert_eq!(
            url.redacted(),
            "https://sendersupport.olc.protection.outlook.com/snds/ipStatus.aspx"
        );
        let url = HttpUrl::parse("HTTPS://127.0.0.1:8443/x?key=SECRET").unwrap();
        assert_eq!(url.host_port(), ("127.0.0.1".to_string(), 8443));
        assert_eq!(url.redacted(), "https://127.0.0.1:8443/x");
        let url = HttpUrl::parse("https://[2001:db8::1]/x").unwrap();
        assert_eq!(url.host_port(), ("2001:db8::1".to_string(), 443));
        let url = HttpUrl::parse("http://feed.local/snds?key=SECRET").unwrap();
        assert_eq!((url.is_https(), url.host_port().1), (false, 80));
        assert_eq!(url.redacted(), "http://feed.local/snds");
    }

    #[test]
    fn unusable_urls_are_refused_without_the_key() {
        for bad in [
            "ftp://x/?key=SECRET",
            "https://:443/?key=SECRET",
            "https://u:p@host/?key=SECRET",
            "https://host:99999/?key=SECRET",
            "not a url?key=SECRET",
        ] {
            let err = HttpUrl::parse(bad).unwrap_err();
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
            HttpClient::new(&TrustRoots::none()).unwrap_err(),
            TlsSetupError::NoRoots
        );
        assert!(
            TrustRoots::system().len() > 100,
            "Mozilla's roots are built in"
        );
    }

    /// Answers every connection with `answer` (after reading the request head).
    fn serve(answer: Vec<u8>) -> (String, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/feed?key=SECRET", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = stream.write_all(&answer);
        });
        (url, handle)
    }

    fn client(timeout: Duration, max_bytes: usize) -> HttpClient {
        let mut client = HttpClient::new(&TrustRoots::system()).unwrap();
        client.timeout = timeout;
        client.max_bytes = max_bytes;
        client
    }

    #[tokio::test]
    async fn an_interim_answer_is_not_the_final_one() {
        let (url, server) = serve(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nContent-Length: 3\r\n\r\na,b"
                .to_vec(),
        );
        let response = client(Duration::from_secs(5), 1024)
            .get(&url)
            .await
            .unwrap();
        assert_eq!(
            (
                response.status,
                response.content_type.as_deref(),
                response.body.as_slice()
            ),
            (200, Some("text/csv"), &b"a,b"[..])
        );
        server.join().unwrap();
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_while_it_arrives() {
        let mut answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..64 {
            answer.extend_from_slice(b"400\r\n");
            answer.extend_from_slice(&[b'x'; 0x400]);
            answer.extend_from_slice(b"\r\n");
        }
        answer.extend_from_slice(b"0\r\n\r\n");
        let (url, _server) = serve(answer);
        let err = client(Duration::from_secs(5), 16 * 1024)
            .get(&url)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "too_large", "{err}");
        assert!(!err.to_string().contains("SECRET"), "{err}");
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_not_a_short_file() {
        let (url, _server) =
            serve(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this".to_vec());
        let err = client(Duration::from_secs(5), 1024)
            .get(&url)
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(!err.to_string().contains("SECRET"), "{err}");
    }

    #[tokio::test]
    async fn a_server_that_sends_a_few_bytes_forever_costs_one_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/slow", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = [0u8; 1024];
            let _ = stream.read(&mut head);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
            for _ in 0..100 {
                if stream.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let started = std::time::Instant::now();
        let err = client(Duration::from_millis(300), 1 << 20)
            .get(&url)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "timeout", "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
