//! A minimal HTTP/1.1 GET over a plain TCP connection: enough to read a CSV
//! file with a bounded size and a deadline. TLS is not here: `PlainHttp`
//! refuses an `https://` URL with a clear error, and [`super::FeedClient`]
//! speaks both, sharing `exchange` with this client.
//! URL and response parsing are the shared [`crate::http1`]; this module is
//! the async transport around them.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http1::{self, UrlError};

pub use crate::http1::HttpUrl;

/// A response read whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl From<http1::Response> for HttpResponse {
    fn from(response: http1::Response) -> Self {
        HttpResponse {
            status: response.status,
            content_type: response.header("content-type").map(str::to_string),
            body: response.body,
        }
    }
}

/// Why a GET gave no response. URLs in messages never carry their query.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("`{url}` is not a usable URL: {problem}")]
    BadUrl { url: String, problem: String },

    #[error("{url}: PlainHttp speaks plain HTTP only; use FeedClient for https:// URLs")]
    TlsUnsupported { url: String },

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
    /// The `kind` label of the feed error counters.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::BadUrl { .. } => "bad_url",
            FetchError::TlsUnsupported { .. } => "tls_unsupported",
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

/// Reads `http://host[:port]/path?query`.
pub fn parse_http_url(url: &str) -> Result<HttpUrl, FetchError> {
    let shown = url.split('?').next().unwrap_or_default().to_string();
    HttpUrl::parse(url).map_err(|e| match e {
        UrlError::Https => FetchError::TlsUnsupported { url: shown },
        problem => FetchError::BadUrl {
            url: shown,
            problem: problem.to_string(),
        },
    })
}

/// The built-in plain-HTTP client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlainHttp {
    /// Deadline for connecting, sending and reading the whole response.
    pub timeout: Duration,
    /// Largest response read (headers included).
    pub max_bytes: usize,
}

impl Default for PlainHttp {
    fn default() -> Self {
        PlainHttp {
            timeout: Duration::from_secs(30),
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

impl PlainHttp {
    pub async fn get(&self, url: &str) -> Result<HttpResponse, FetchError> {
        let target = parse_http_url(url)?;
        let shown = target.redacted();
        match tokio::time::timeout(self.timeout, self.exchange(&target, &shown)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout {
                url: shown,
                timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    async fn exchange(&self, target: &HttpUrl, shown: &str) -> Result<HttpResponse, FetchError> {
        let mut stream = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| FetchError::Connect {
                url: shown.to_string(),
                detail: e.to_string(),
            })?;
        let request = get_request(&target.path, &target.authority());
        exchange(&mut stream, &request, shown, self.max_bytes).await
    }
}

/// The GET request head every feed client sends.
pub(super) fn get_request(path: &str, host: &str) -> String {
    let user_agent = concat!("mailfleet/", env!("CARGO_PKG_VERSION"));
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\nAccept: text/csv, text/plain\r\nConnection: close\r\n\r\n"
    )
}

/// Sends `request` on an open connection (plain or TLS) and reads the whole
/// response, at most `max_bytes`. A connection closed without a TLS
/// close_notify counts as the end of the response: many servers do that, and
/// the framing (length or chunks) still tells a cut body.
pub(super) async fn exchange<S>(
    stream: &mut S,
    request: &str,
    shown: &str,
    max_bytes: usize,
) -> Result<HttpResponse, FetchError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let io = |e: std::io::Error| FetchError::Io {
        url: shown.to_string(),
        detail: e.to_string(),
    };
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut raw = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(io(e)),
        };
        let eof = n == 0;
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > max_bytes {
            return Err(FetchError::TooLarge {
                url: shown.to_string(),
                limit: max_bytes,
            });
        }
        let parsed = http1::parse_response(&raw, eof).map_err(|e| FetchError::BadResponse {
            url: shown.to_string(),
            detail: e.to_string(),
        })?;
        if let Some(response) = parsed {
            return Ok(response.into());
        }
        if eof {
            return Err(FetchError::BadResponse {
                url: shown.to_string(),
                detail: "the connection closed before a whole response arrived".to_string(),
            });
        }
    }
}

/// Reads a complete raw response (as received up to the end of the connection).
pub fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    match http1::parse_response(raw, true) {
        Ok(Some(response)) => Ok(response.into()),
        Ok(None) => Err("the response is incomplete".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_urls_say_why_without_the_key() {
        let err = parse_http_url(
            "https://sendersupport.olc.protection.outlook.com/snds/ipStatus.aspx?key=SECRET",
        )
        .unwrap_err();
        assert_eq!(err.kind(), "tls_unsupported");
        assert!(!err.to_string().contains("SECRET"));
        for bad in [
            "ftp://x/",
            "http://:80/",
            "http://u:p@host/",
            "http://host:99999/?key=SECRET",
            "http://host/a b",
        ] {
            let err = parse_http_url(bad).unwrap_err();
            assert_eq!(err.kind(), "bad_url", "{bad}");
            assert!(!err.to_string().contains("SECRET"), "{err}");
        }
    }

    #[test]
    fn responses_keep_their_content_type() {
        let response = http1::Response {
            status: 200,
            headers: vec![("content-TYPE".into(), "text/csv".into())],
            body: b"a,b".to_vec(),
        };
        assert_eq!(
            HttpResponse::from(response),
            HttpResponse {
                status: 200,
                content_type: Some("text/csv".into()),
                body: b"a,b".to_vec(),
            }
        );
        assert_eq!(
            parse_response(b"HTTP/1.0 404 Not Found\r\n\r\n").map(|r| (r.status, r.content_type)),
            Ok((404, None))
        );
        assert!(parse_response(b"garbage\r\n\r\n")
            .unwrap_err()
            .contains("HTTP/1.x"));
    }
}
