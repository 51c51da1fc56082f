//! A minimal HTTP/1.1 GET over a plain TCP connection: enough to read a CSV
//! file with a bounded size and a deadline. TLS is not here: an `https://` URL
//! is refused with a clear error (see docs/PROBES.md for how to reach SNDS).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where a GET goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// The URL without its query (which may hold a key): safe to log.
    pub fn redacted(&self) -> String {
        let path = self.path.split('?').next().unwrap_or("/");
        format!("http://{}{path}", self.authority())
    }

    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// A response read whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
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
    let bad = |problem: &str| FetchError::BadUrl {
        url: url.split('?').next().unwrap_or_default().to_string(),
        problem: problem.to_string(),
    };
    let lower = url.trim().to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(FetchError::TlsUnsupported {
            url: url.split('?').next().unwrap_or_default().to_string(),
        });
    }
    if !lower.starts_with("http://") {
        return Err(bad("expected http://HOST[:PORT]/PATH"));
    }
    let rest = &url.trim()["http://".len()..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(bad(
            "credentials in the URL are not accepted; the key comes from the Secret",
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed `[` in the host"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    let port = match port {
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| bad("the port is not a number from 1 to 65535"))?,
    };
    let tail = tail.split('#').next().unwrap_or_default();
    let path = if tail.starts_with('/') {
        tail.to_string()
    } else {
        format!("/{tail}")
    };
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(
            "the path holds spaces or control characters; percent-encode them",
        ));
    }
    Ok(HttpUrl {
        host: host.to_string(),
        port,
        path,
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
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: mailfleet/{}\r\nAccept: text/csv, text/plain\r\nConnection: close\r\n\r\n",
            target.path,
            target.authority(),
            env!("CARGO_PKG_VERSION")
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
            let bad = |detail: String| FetchError::BadResponse {
                url: shown.to_string(),
                detail,
            };
            if let Some(response) = try_parse(&raw, eof).map_err(bad)? {
                return Ok(response);
            }
        }
    }
}

/// Reads a complete raw response (as received up to the end of the connection).
pub fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    try_parse(raw, true)?.ok_or_else(|| "the response is incomplete".to_string())
}

/// `Ok(None)`: more bytes are needed (only when not at the end of the stream).
fn try_parse(raw: &[u8], eof: bool) -> Result<Option<HttpResponse>, String> {
    let incomplete = |what: &str| if eof { Err(what.to_string()) } else { Ok(None) };
    let Some(head_end) = find(raw, b"\r\n\r\n") else {
        return incomplete("the connection closed before the end of the headers");
    };
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!(
            "status line `{}` is not HTTP/1.x",
            clip(status_line)
        ));
    }
    let status: u16 = parts
        .next()
        .and_then(|code| code.parse().ok())
        .filter(|code| (100..=599).contains(code))
        .ok_or_else(|| format!("status line `{}` has no status code", clip(status_line)))?;
    let mut content_length = None;
    let mut chunked = false;
    let mut content_type = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("header line `{}` has no colon", clip(line)));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                content_length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| format!("Content-Length `{}` is not a number", clip(value)))?,
                )
            }
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "content-type" => content_type = Some(value.to_string()),
            _ => {}
        }
    }
    let body = &raw[head_end + 4..];
    let body = if chunked {
        match dechunk(body)? {
            Some(body) => body,
            None => return incomplete("the connection closed inside a chunked body"),
        }
    } else if let Some(length) = content_length {
        if body.len() < length {
            return incomplete(&format!(
                "the body ends after {} of {length} bytes",
                body.len()
            ));
        }
        body[..length].to_vec()
    } else if eof {
        body.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(HttpResponse {
        status,
        content_type,
        body,
    }))
}

/// A chunked body, or `None` while its last chunk has not arrived.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(rest, b"\r\n") else {
            return Ok(None);
        };
        let size_line = String::from_utf8_lossy(&rest[..line_end]);
        let size_text = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("chunk size `{}` is not hexadecimal", clip(size_text)))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(Some(body));
        }
        if rest.len() < size.saturating_add(2) {
            return Ok(None);
        }
        if &rest[size..size + 2] != b"\r\n" {
            return Err("a chunk does not end with CRLF".into());
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn clip(text: &str) -> String {
    text.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_and_redacted() {
        let url = parse_http_url("http://127.0.0.1:8080/snds/ipStatus.aspx?key=SECRET").unwrap();
        assert_eq!(url.host, "127.0.0.1");
        assert_eq!(url.port, 8080);
        assert_eq!(url.path, "/snds/ipStatus.aspx?key=SECRET");
        assert_eq!(url.redacted(), "http://127.0.0.1:8080/snds/ipStatus.aspx");
        let url = parse_http_url("http://[::1]?key=K").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("::1", 80, "/?key=K")
        );
        assert_eq!(url.redacted(), "http://[::1]/");
    }

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
            "http://host:99999/",
            "http://host/a b",
        ] {
            let err = parse_http_url(bad).unwrap_err();
            assert_eq!(err.kind(), "bad_url", "{bad}");
        }
    }

    #[test]
    fn responses_with_length_chunks_or_eof() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nContent-Length: 5\r\n\r\nhello world",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(r.content_type.as_deref(), Some("text/csv"));
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"abcdefg");
        let r = parse_response(b"HTTP/1.0 500 Internal Server Error\r\n\r\noops").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (500, &b"oops"[..]));
    }

    #[test]
    fn incomplete_responses_wait_or_fail() {
        let partial = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        assert_eq!(try_parse(partial, false).unwrap(), None);
        assert!(parse_response(partial).unwrap_err().contains("3 of 10"));
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
                .unwrap_err()
                .contains("chunked")
        );
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n")
            .unwrap_err()
            .contains("HTTP/1.x"));
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n")
            .unwrap_err()
            .contains("status code"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n")
            .unwrap_err()
            .contains("colon"));
        assert!(parse_response(b"").is_err());
    }
}
