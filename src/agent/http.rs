//! Just enough HTTP/1.1 for the agent: one `POST` per connection with a hard
//! deadline (an endpoint that hangs costs one timeout, never a stuck agent),
//! and reading one request on the metrics listener. Plain `http://` only:
//! the feedback endpoint is reached inside the cluster network (see
//! docs/FEEDBACK-API.md for TLS). URL and response parsing are the shared
//! [`crate::http1`]; this module is the blocking transport around them.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::ops::Deref;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::http1::{self, HttpUrl, UrlError};

pub use crate::http1::Response;

/// Largest response body read.
const MAX_BODY: usize = 1024 * 1024;
/// Largest response or request head read.
const MAX_HEAD: usize = 16 * 1024;

/// Where reports go: `http://HOST[:PORT][/PATH]`. Its host, port and path are
/// those of the [`HttpUrl`] it derefs to; only the refusals speak of the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint(HttpUrl);

impl Deref for Endpoint {
    type Target = HttpUrl;
    fn deref(&self) -> &HttpUrl {
        &self.0
    }
}

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        HttpUrl::parse(url).map(Endpoint).map_err(|e| match e {
            UrlError::Https => format!(
                "`{url}`: https is not built into the agent; use the endpoint's http:// address inside the cluster (docs/FEEDBACK-API.md, Transport)"
            ),
            UrlError::NotHttp => format!("`{url}` is not an http:// URL such as http://mailfleet-operator.mailfleet-system.svc:8080/v1/feedback"),
            other => format!("`{url}`: {other}"),
        })
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
    let Some(mut stream) = stream else {
        return Err(last_error.unwrap_or_else(|| HttpError::Resolve {
            host: endpoint.host.clone(),
            source: io::Error::new(io::ErrorKind::NotFound, "no address"),
        }));
    };
    let _ = stream.set_nodelay(true);

    let length = body.len().to_string();
    let mut request_headers = vec![("Content-Length", length.as_str())];
    request_headers.extend_from_slice(headers);
    let request = endpoint.request_head("POST", &request_headers);
    let io_error = |e: io::Error| {
        if is_timeout(&e) {
            HttpError::Timeout(timeout)
        } else {
            HttpError::Io(e)
        }
    };
    set_deadline(&stream, deadline, timeout)?;
    stream.write_all(request.as_bytes()).map_err(io_error)?;
    set_deadline(&stream, deadline, timeout)?;
    stream.write_all(body).map_err(io_error)?;

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
        set_deadline(&stream, deadline, timeout)?;
        let n = stream.read(&mut chunk).map_err(io_error)?;
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
        assert!("https://x/v1/feedback"
            .parse::<Endpoint>()
            .unwrap_err()
            .contains("https is not built"));
        assert!("ftp://x"
            .parse::<Endpoint>()
            .unwrap_err()
            .contains("is not an http:// URL such as"));
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
