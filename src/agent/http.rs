//! Just enough HTTP/1.1 for the agent: one `POST` per connection with a hard
//! deadline (an endpoint that hangs costs one timeout, never a stuck agent),
//! and reading one request on the metrics listener. `http://` inside a
//! cluster; `https://` (rustls) where reports cross a network of their own,
//! such as VMs reporting to `mailfleet standalone` (docs/FEEDBACK-API.md,
//! Transport). URL and response parsing are the shared [`crate::http1`]; this
//! module is the blocking transport around them.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::ops::Deref;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::http1::{self, HttpUrl, UrlError};

pub use crate::http1::Response;

/// Largest response body read.
const MAX_BODY: usize = 1024 * 1024;
/// Largest response or request head read.
const MAX_HEAD: usize = 16 * 1024;

/// Where reports go: `http://HOST[:PORT][/PATH]` or `https://...`. Its host,
/// port and path are those of the [`HttpUrl`] it derefs to; only the refusals
/// speak of the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    url: HttpUrl,
    tls: Option<TlsTrust>,
}

/// The certificates an `https://` endpoint must chain to.
#[derive(Clone)]
pub struct TlsTrust {
    config: Arc<rustls::ClientConfig>,
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
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        TlsTrust::with_roots(roots, "the public and system roots".into())
    }

    /// Only the certificates of a PEM file: the endpoint's own certificate or
    /// the private CA that signed it.
    pub fn from_pem_file(path: &Path) -> Result<TlsTrust, String> {
        let what = format!("--ca-file {}", path.display());
        let pem = std::fs::read(path).map_err(|e| format!("{what}: {e}"))?;
        TlsTrust::from_pem(&pem, &what, path.display().to_string())
    }

    /// Only the certificates of PEM text; `what` names where it came from in
    /// a refusal, `source` in messages about the endpoint.
    pub fn from_pem(pem: &[u8], what: &str, source: String) -> Result<TlsTrust, String> {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{what}: not PEM certificates: {e}"))?;
        if certs.is_empty() {
            return Err(format!(
                "{what}: holds no PEM certificate (BEGIN CERTIFICATE)"
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("{what}: a certificate is not usable as a root: {e}"))?;
        }
        Ok(TlsTrust::with_roots(roots, source))
    }

    fn with_roots(roots: rustls::RootCertStore, source: String) -> TlsTrust {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsTrust {
            config: Arc::new(config),
            source,
        }
    }
}

impl Endpoint {
    /// Whether reports go over TLS.
    pub fn is_https(&self) -> bool {
        self.tls.is_some()
    }

    /// The same endpoint trusting only `trust` (`--ca-file`); refused for http://.
    pub fn trusting(mut self, trust: TlsTrust) -> Result<Endpoint, String> {
        if self.tls.is_none() {
            return Err("--ca-file is for an https:// --endpoint; this one is http://".to_string());
        }
        self.tls = Some(trust);
        Ok(self)
    }
}

impl Deref for Endpoint {
    type Target = HttpUrl;
    fn deref(&self) -> &HttpUrl {
        &self.url
    }
}

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let trimmed = url.trim();
        // The shared URL reader knows http:// only; https:// is the same
        // shape with another default port.
        let https = trimmed
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
        let as_http = if https {
            format!("http://{}", &trimmed[8..])
        } else {
            trimmed.to_string()
        };
        let mut parsed = HttpUrl::parse(&as_http).map_err(|e| match e {
            UrlError::NotHttp => format!("`{url}` is not an http:// or https:// URL such as http://mailfleet-operator.mailfleet-system.svc:8080/v1/feedback"),
            other => format!("`{url}`: {other}"),
        })?;
        if https && !has_port(&trimmed[8..]) {
            parsed.port = 443;
        }
        Ok(Endpoint {
            url: parsed,
            tls: https.then(TlsTrust::public),
        })
    }
}

/// Whether the authority of `rest` (after the scheme) names a port.
fn has_port(rest: &str) -> bool {
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rfind(']') {
        Some(close) => authority[close..].contains(':'),
        None => authority.contains(':'),
    }
}

/// A connection to the endpoint, plain or TLS.
enum Connection {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Connection {
    fn socket(&self) -> &TcpStream {
        match self {
            Connection::Plain(s) => s,
            Connection::Tls(s) => &s.sock,
        }
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Connection::Plain(s) => s.read(buf),
            Connection::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Connection::Plain(s) => s.write(buf),
            Connection::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Connection::Plain(s) => s.flush(),
            Connection::Tls(s) => s.flush(),
        }
    }
}

/// Why a request got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("cannot connect to {address}: {source}")]
    Connect { address: String, source: io::Error },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Io(io::Error),
    #[error("not an HTTP answer: {0}")]
    Protocol(String),
    #[error("TLS: {0}")]
    Tls(String),
}

impl HttpError {
    /// A short word for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Resolve { .. } => "resolve",
            HttpError::Connect { .. } => "connect",
            HttpError::Timeout(_) => "timeout",
            HttpError::Io(_) => "io",
            HttpError::Protocol(_) => "protocol",
            HttpError::Tls(_) => "tls",
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Sends one `POST` and reads the answer, all within `timeout`.
pub fn post(
    endpoint: &Endpoint,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response, HttpError> {
    let deadline = Instant::now() + timeout;
    let addresses: Vec<_> = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map_err(|source| HttpError::Resolve {
            host: endpoint.host.clone(),
            source,
        })?
        .collect();
    let mut last_error = None;
    let mut stream = None;
    for address in &addresses {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError::Timeout(timeout));
        }
        match TcpStream::connect_timeout(address, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) if is_timeout(&e) => last_error = Some(HttpError::Timeout(timeout)),
            Err(source) => {
                last_error = Some(HttpError::Connect {
                    address: address.to_string(),
                    source,
                })
            }
        }
    }
    let Some(stream) = stream else {
        return Err(last_error.unwrap_or_else(|| HttpError::Resolve {
            host: endpoint.host.clone(),
            source: io::Error::new(io::ErrorKind::NotFound, "no address"),
        }));
    };
    let _ = stream.set_nodelay(true);
    let mut stream = match &endpoint.tls {
        None => Connection::Plain(stream),
        Some(trust) => {
            let name = ServerName::try_from(endpoint.host.clone())
                .map_err(|e| HttpError::Tls(format!("{}: {e}", endpoint.host)))?;
            let session = rustls::ClientConnection::new(trust.config.clone(), name)
                .map_err(|e| HttpError::Tls(e.to_string()))?;
            Connection::Tls(Box::new(rustls::StreamOwned::new(session, stream)))
        }
    };

    let length = body.len().to_string();
    let mut request_headers = vec![("Content-Length", length.as_str())];
    request_headers.extend_from_slice(headers);
    let request = endpoint.request_head("POST", &request_headers);
    let io_error = |e: io::Error| {
        if is_timeout(&e) {
            HttpError::Timeout(timeout)
        } else if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
            // A certificate the trust does not cover, a name that does not match.
            HttpError::Tls(e.to_string())
        } else {
            HttpError::Io(e)
        }
    };
    set_deadline(stream.socket(), deadline, timeout)?;
    stream.write_all(request.as_bytes()).map_err(io_error)?;
    set_deadline(stream.socket(), deadline, timeout)?;
    stream.write_all(body).map_err(io_error)?;
    stream.flush().map_err(io_error)?;

    let mut received = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut eof = false;
    loop {
        match http1::parse_response(&received, eof) {
            Ok(Some(response)) => return Ok(response),
            Ok(None) if !eof => {}
            Ok(None) => {
                return Err(HttpError::Protocol(
                    "connection closed before a complete response".into(),
                ))
            }
            Err(e) => return Err(HttpError::Protocol(e.to_string())),
        }
        match http1::head_length(&received) {
            None if received.len() > MAX_HEAD => {
                return Err(HttpError::Protocol(
                    "response head larger than 16 KiB".into(),
                ))
            }
            Some(head) if received.len() - head > MAX_BODY => {
                return Err(HttpError::Protocol(
                    "response body larger than 1 MiB".into(),
                ))
            }
            _ => {}
        }
        set_deadline(stream.socket(), deadline, timeout)?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            // A TLS peer that closes without close_notify after a complete
            // response is common; an incomplete one is caught by the parser.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(io_error(e)),
        };
        eof = n == 0;
        received.extend_from_slice(&chunk[..n]);
    }
}

fn set_deadline(stream: &TcpStream, deadline: Instant, timeout: Duration) -> Result<(), HttpError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(HttpError::Timeout(timeout));
    }
    stream.set_read_timeout(Some(left)).map_err(HttpError::Io)?;
    stream.set_write_timeout(Some(left)).map_err(HttpError::Io)
}

/// Reads a request head (method and path) from a client of the metrics listener.
pub fn read_request_line(
    stream: &mut TcpStream,
    timeout: Duration,
) -> io::Result<(String, String)> {
    stream.set_read_timeout(Some(timeout))?;
    let mut received = Vec::new();
    let mut chunk = [0u8; 2048];
    while http1::head_length(&received).is_none() {
        if received.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        received.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&received);
    let mut words = text.lines().next().unwrap_or("").split_whitespace();
    let method = words.next().unwrap_or("").to_string();
    let path = words.next().unwrap_or("").to_string();
    Ok((method, path))
}

/// Writes a complete response and closes.
pub fn write_response(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn endpoints_are_read_or_refused_with_the_fix() {
        let e: Endpoint = "http://op.mailfleet.svc:8080/v1/feedback".parse().unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("op.mailfleet.svc", 8080, "/v1/feedback")
        );
        assert!(!e.is_https());
        let tls: Endpoint = "https://mailfleet.example.net/v1/feedback".parse().unwrap();
        assert!(tls.is_https());
        assert_eq!(
            (tls.host.as_str(), tls.port),
            ("mailfleet.example.net", 443)
        );
        let own_port: Endpoint = "HTTPS://[2001:db8::5]:8443/v1/feedback".parse().unwrap();
        assert_eq!(
            (own_port.host.as_str(), own_port.port),
            ("2001:db8::5", 8443)
        );
        assert!(e
            .clone()
            .trusting(TlsTrust::public())
            .unwrap_err()
            .contains("https://"));
        assert!("ftp://x"
            .parse::<Endpoint>()
            .unwrap_err()
            .contains("is not an http:// or https:// URL such as"));
        assert!("http://x:port/"
            .parse::<Endpoint>()
            .unwrap_err()
            .contains("port `port`"));
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
        assert!(
            request.contains("\r\nAuthorization: Bearer t\r\n")
                && request.contains("Content-Length: 7\r\n")
        );

        let (port, _server) = serve_once(b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nRetry-After: 3\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
        let endpoint: Endpoint = format!("http://127.0.0.1:{port}/").parse().unwrap();
        let r = post(&endpoint, &[], b"{\"x\":1}", Duration::from_secs(5)).unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.header("retry-after")),
            (503, &b"abcde"[..], Some("3"))
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
            "protocol"
        );
    }
}
