//! A minimal HTTP/1.1 GET over a plain TCP connection: enough to read a CSV
//! file with a bounded size and a deadline. TLS is not here: an `https://` URL
//! is refused with a clear error (see docs/PROBES.md for how to reach SNDS).
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

    #[error("{url}: https is not supported by the built-in HTTP client; reach the feed through an http:// URL (for example a TLS-originating proxy in the cluster)")]
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
        let user_agent = concat!("mailfleet/", env!("CARGO_PKG_VERSION"));
        let request = target.request_head(
            "GET",
            &[
                ("User-Agent", user_agent),
                ("Accept", "text/csv, text/plain"),
            ],
        );
        let io = |e: std::io::Error| FetchError::Io {
            url: shown.to_string(),
            detail: e.to_string(),
        };
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut raw = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut chunk).await.map_err(io)?;
            let eof = n == 0;
            raw.extend_from_slice(&chunk[..n]);
            if raw.len() > self.max_bytes {
                return Err(FetchError::TooLarge {
                    url: shown.to_string(),
                    limit: self.max_bytes,
                });
            }
            let parsed = http1::parse_response(&raw, eof).map_err(|e| FetchError::BadResponse {
                url: shown.to_string(),
                detail: e.to_string(),
            })?;
            if let Some(response) = parsed {
                return Ok(response.into());
            }
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
