//! The agent's side of the feedback endpoint: where reports go (`http://` in
//! a cluster, `https://` where reports cross a network of their own, such as
//! VMs reporting to `mailfleet standalone`; docs/FEEDBACK-API.md, Transport)
//! and one blocking `POST` with a hard deadline over the project's one HTTP
//! client ([`crate::http_client`]), so an endpoint that hangs costs one
//! timeout, never a stuck agent.

use std::path::Path;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use crate::http_client::{
    FetchError, HttpClient, HttpResponse, HttpUrl, TlsSetupError, TrustRoots,
};

/// Largest answer body read: the endpoint's answer is a small JSON object.
const MAX_BODY: usize = 1024 * 1024;

/// Where reports go, and the client that reaches it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    url: HttpUrl,
    trust: TlsTrust,
    client: HttpClient,
}

impl PartialEq for Endpoint {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url && self.trust == other.trust
    }
}

impl Eq for Endpoint {}

/// The certificates an `https://` endpoint must chain to.
#[derive(Clone)]
pub struct TlsTrust {
    roots: TrustRoots,
    /// Where the roots came from, for messages and equality.
    source: String,
}

impl std::fmt::Debug for TlsTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsTrust({})", self.source)
    }
}

impl PartialEq for TlsTrust {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for TlsTrust {}

impl TlsTrust {
    /// The Mozilla roots (webpki-roots) and the machine's own store.
    fn public() -> TlsTrust {
        static PUBLIC: OnceLock<TrustRoots> = OnceLock::new();
        TlsTrust {
            roots: PUBLIC.get_or_init(TrustRoots::system).clone(),
            source: "the public and system roots".into(),
        }
    }

    /// Only the certificates of a PEM file: the endpoint's own certificate or
    /// the private CA that signed it.
    pub fn from_pem_file(path: &Path) -> Result<TlsTrust, EndpointError> {
        let what = format!("--ca-file {}", path.display());
        let pem = std::fs::read(path).map_err(|source| EndpointError::ReadCa {
            what: what.clone(),
            source,
        })?;
        TlsTrust::from_pem(&pem, &what, path.display().to_string())
    }

    /// Only the certificates of PEM text; `what` names where it came from in
    /// a refusal, `source` in messages about the endpoint.
    pub fn from_pem(pem: &[u8], what: &str, source: String) -> Result<TlsTrust, EndpointError> {
        let roots = TrustRoots::none()
            .with_pem(pem)
            .map_err(|problem| EndpointError::BadCa {
                what: what.to_string(),
                problem,
            })?;
        Ok(TlsTrust { roots, source })
    }
}

/// Why the feedback endpoint or the certificates it is to chain to cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{what}: {source}")]
    ReadCa {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {problem}")]
    BadCa {
        what: String,
        problem: TlsSetupError,
    },
    #[error("cannot set up TLS for the endpoint: {0}")]
    TlsSetup(#[from] TlsSetupError),
    #[error("--ca-file is for an https:// --endpoint; this one is http://")]
    CaForPlainHttp,
    #[error("`{url}` is not an http:// or https:// URL such as http://mailfleet-operator.mailfleet-system.svc:8080/v1/feedback: {problem}")]
    NotHttpUrl { url: String, problem: String },
    #[error("`{url}`: {source}")]
    Url { url: String, source: FetchError },
}

impl Endpoint {
    fn new(url: HttpUrl, trust: TlsTrust) -> Result<Endpoint, EndpointError> {
        let mut client = HttpClient::new(&trust.roots)?;
        client.max_bytes = MAX_BODY;
        Ok(Endpoint { url, trust, client })
    }

    /// Whether reports go over TLS.
    pub fn is_https(&self) -> bool {
        self.url.is_https()
    }

    /// The same endpoint trusting only `trust` (`--ca-file`); refused for http://.
    pub fn trusting(self, trust: TlsTrust) -> Result<Endpoint, EndpointError> {
        if !self.is_https() {
            return Err(EndpointError::CaForPlainHttp);
        }
        Endpoint::new(self.url, trust)
    }

    /// The URL, safe to log.
    pub fn url(&self) -> &HttpUrl {
        &self.url
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let parsed = HttpUrl::parse(url).map_err(|e| match e {
            FetchError::BadUrl { problem, .. } => EndpointError::NotHttpUrl {
                url: url.to_string(),
                problem,
            },
            source => EndpointError::Url {
                url: url.to_string(),
                source,
            },
        })?;
        Endpoint::new(parsed, TlsTrust::public())
    }
}

/// The agent is synchronous; its requests run on one small runtime of their
/// own, kept for the process so pooled connections stay usable.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mailfleet-http")
            .enable_all()
            .build()
            .expect("a one-thread runtime starts")
    })
}

/// Sends one `POST` and reads the answer, all within `timeout` (resolve,
/// connect, TLS, request and the whole answer).
pub fn post(
    endpoint: &Endpoint,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse, FetchError> {
    let mut client = endpoint.client.clone();
    client.timeout = timeout;
    runtime().block_on(client.post(&endpoint.url, headers, body.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Instant;

    #[test]
    fn endpoints_are_read_or_refused_with_the_fix() {
        let e: Endpoint = "http://op.mailfleet.svc:8080/v1/feedback".parse().unwrap();
        assert_eq!(
            (e.url().host_port(), e.url().path()),
            (("op.mailfleet.svc".to_string(), 8080), "/v1/feedback")
        );
        assert!(!e.is_https());
        let tls: Endpoint = "https://mailfleet.example.net/v1/feedback".parse().unwrap();
        assert!(tls.is_https());
        assert_eq!(
            tls.url().host_port(),
            ("mailfleet.example.net".to_string(), 443)
        );
        let own_port: Endpoint = "HTTPS://[2001:db8::5]:8443/v1/feedback".parse().unwrap();
        assert_eq!(
            own_port.url().host_port(),
            ("2001:db8::5".to_string(), 8443)
        );
        assert!(e
            .clone()
            .trusting(TlsTrust::public())
            .unwrap_err()
            .to_string()
            .contains("https://"));
        assert!("ftp://x"
            .parse::<Endpoint>()
            .unwrap_err()
            .to_string()
            .contains("is not an http:// or https:// URL such as"));
        assert!("http://x:port/".parse::<Endpoint>().is_err());
        assert!("http://user:secret@x/"
            .parse::<Endpoint>()
            .unwrap_err()
            .to_string()
            .contains("credentials"));
    }

    fn serve_once(answer: &'static [u8]) -> (u16, std::thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                if got.ends_with(b"{\"x\":1}") {
                    break;
                }
            }
            s.write_all(answer).unwrap();
            got
        });
        (port, handle)
    }

    #[test]
    fn posts_and_reads_plain_and_chunked_answers() {
        let (port, server) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let endpoint: Endpoint = format!("http://127.0.0.1:{port}/v1/feedback")
            .parse()
            .unwrap();
        let r = post(
            &endpoint,
            &[("Authorization", "Bearer t")],
            b"{\"x\":1}",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        let request = String::from_utf8(server.join().unwrap()).unwrap();
        assert!(
            request.starts_with("POST /v1/feedback HTTP/1.1\r\n"),
            "{request}"
        );
        let lower = request.to_ascii_lowercase();
        assert!(
            lower.contains("\r\nauthorization: bearer t\r\n")
                && lower.contains("content-length: 7\r\n"),
            "{request}"
        );

        let (port, _server) = serve_once(b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nRetry-After: 3\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
        let endpoint: Endpoint = format!("http://127.0.0.1:{port}/").parse().unwrap();
        let r = post(&endpoint, &[], b"{\"x\":1}", Duration::from_secs(5)).unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.retry_after),
            (503, &b"abcde"[..], Some(3))
        );
    }

    #[test]
    fn a_server_that_never_answers_costs_one_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let endpoint: Endpoint = format!("http://127.0.0.1:{port}/").parse().unwrap();
        let started = Instant::now();
        let err = post(&endpoint, &[], b"{}", Duration::from_millis(300)).unwrap_err();
        assert_eq!(err.kind(), "timeout", "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(listener);
        let err = post(&endpoint, &[], b"{}", Duration::from_secs(2)).unwrap_err();
        assert_eq!(err.kind(), "connect", "{err}");
        let (port, _server) = serve_once(b"garbage\r\n\r\n");
        let endpoint: Endpoint = format!("http://127.0.0.1:{port}/").parse().unwrap();
        assert_eq!(
            post(&endpoint, &[], b"{\"x\":1}", Duration::from_secs(2))
                .unwrap_err()
                .kind(),
            "bad_response"
        );
    }
}
