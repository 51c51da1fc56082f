//! The pure part of plain HTTP/1.1, shared by the built-in clients (the agent's
//! blocking `POST` in `agent::http`, the SNDS feed's async `GET` in
//! `probe::snds`): reading an `http://` URL, the request head, and a response
//! as its bytes arrive. No sockets here: each client keeps its own transport,
//! deadline and size limits, and feeds what it received to [`parse_response`].

use std::str::FromStr;

/// Where a request goes: `http://HOST[:PORT][/PATH][?QUERY]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// Without brackets, also for IPv6.
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// Why a text is not a usable `http://` URL. The messages never repeat the
/// query, which may hold a key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("expected http://HOST[:PORT]/PATH")]
    NotHttp,
    /// Callers say how to reach the server instead: TLS is not built in.
    #[error("https is not supported by the built-in HTTP client")]
    Https,
    #[error("credentials in the URL are not accepted; they come from a Secret or a token file")]
    Credentials,
    #[error("unclosed `[` in the host")]
    UnclosedBracket,
    #[error("the host is empty")]
    EmptyHost,
    #[error("the port `{port}` is not a number from 1 to 65535")]
    BadPort { port: String },
    #[error("the path holds spaces or control characters; percent-encode them")]
    BadPath,
}

impl HttpUrl {
    /// Reads `http://host[:port]/path?query`; the scheme in any case, the
    /// fragment dropped, the port 80 and the path `/` when absent.
    pub fn parse(url: &str) -> Result<HttpUrl, UrlError> {
        let url = url.trim();
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Err(UrlError::Https);
        }
        if !lower.starts_with("http://") {
            return Err(UrlError::NotHttp);
        }
        let rest = &url["http://".len()..];
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains('@') {
            return Err(UrlError::Credentials);
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or(UrlError::UnclosedBracket)?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::EmptyHost);
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| UrlError::BadPort { port: clip(p) })?,
        };
        let tail = tail.split('#').next().unwrap_or_default();
        let path = if tail.starts_with('/') {
            tail.to_string()
        } else {
            format!("/{tail}")
        };
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(UrlError::BadPath);
        }
        Ok(HttpUrl {
            host: host.to_string(),
            port,
            path,
        })
    }

    /// The `Host` header: IPv6 in brackets, the port only when not 80.
    pub fn authority(&self) -> String {
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

    /// The URL without its query (which may hold a key): safe to log.
    pub fn redacted(&self) -> String {
        let path = self.path.split('?').next().unwrap_or("/");
        format!("http://{}{path}", self.authority())
    }

    /// The head of a request that closes the connection after the answer:
    /// request line, `Host`, then `headers` in order.
    pub fn request_head(&self, method: &str, headers: &[(&str, &str)]) -> String {
        let mut head = format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\n",
            self.path,
            self.authority()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("Connection: close\r\n\r\n");
        head
    }
}

impl FromStr for HttpUrl {
    type Err = UrlError;
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        HttpUrl::parse(url)
    }
}

/// A response read whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Names and values trimmed, in the order received.
    pub headers: Vec<(String, String)>,
    /// Without its chunk framing; cut at `Content-Length`.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header, its name in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why received bytes are not an HTTP/1.x response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("the connection closed before the end of the headers")]
    ClosedInHead,
    #[error("the connection closed inside a chunked body")]
    ClosedInChunks,
    #[error("the body ends after {received} of {length} bytes")]
    ClosedInBody { received: usize, length: usize },
    #[error("status line `{0}` is not HTTP/1.x")]
    NotHttp1(String),
    #[error("status line `{0}` has no status code")]
    NoStatusCode(String),
    #[error("header line `{0}` has no colon")]
    HeaderWithoutColon(String),
    #[error("Content-Length `{0}` is not a number")]
    BadContentLength(String),
    #[error("chunk size `{0}` is not hexadecimal")]
    BadChunkSize(String),
    #[error("a chunk does not end with CRLF")]
    ChunkWithoutCrlf,
}

/// Where the body starts: the length of the head with its blank line, once it
/// has all arrived.
pub fn head_length(received: &[u8]) -> Option<usize> {
    memchr::memmem::find(received, b"\r\n\r\n").map(|end| end + 4)
}

/// Reads a response from the bytes received so far. `Ok(None)`: more bytes
/// are needed, which happens only while `eof` is false; at the end of the
/// connection a response is complete or an error.
pub fn parse_response(raw: &[u8], eof: bool) -> Result<Option<Response>, ResponseError> {
    let incomplete = |error: ResponseError| if eof { Err(error) } else { Ok(None) };
    let Some(body_start) = head_length(raw) else {
        return incomplete(ResponseError::ClosedInHead);
    };
    let head = String::from_utf8_lossy(&raw[..body_start - 4]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(ResponseError::NotHttp1(clip(status_line)));
    }
    let status: u16 = parts
        .next()
        .and_then(|code| code.parse().ok())
        .filter(|code| (100..=599).contains(code))
        .ok_or_else(|| ResponseError::NoStatusCode(clip(status_line)))?;
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ResponseError::HeaderWithoutColon(clip(line)));
        };
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let content_length = match response.header("content-length") {
        None => None,
        Some(value) => Some(
            value
                .parse::<usize>()
                .map_err(|_| ResponseError::BadContentLength(clip(value)))?,
        ),
    };
    let body = &raw[body_start..];
    // Transfer-Encoding wins over Content-Length (RFC 9112, 6.3).
    response.body = if chunked {
        match decode_chunked(body)? {
            Some(body) => body,
            None => return incomplete(ResponseError::ClosedInChunks),
        }
    } else if let Some(length) = content_length {
        if body.len() < length {
            return incomplete(ResponseError::ClosedInBody {
                received: body.len(),
                length,
            });
        }
        body[..length].to_vec()
    } else if eof {
        body.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(response))
}

/// A chunked body without its framing, or `None` while its last chunk has not
/// arrived.
pub fn decode_chunked(mut rest: &[u8]) -> Result<Option<Vec<u8>>, ResponseError> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = memchr::memmem::find(rest, b"\r\n") else {
            return Ok(None);
        };
        let size_line = String::from_utf8_lossy(&rest[..line_end]);
        let size_text = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| ResponseError::BadChunkSize(clip(size_text)))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(Some(body));
        }
        if rest.len() < size.saturating_add(2) {
            return Ok(None);
        }
        if &rest[size..size + 2] != b"\r\n" {
            return Err(ResponseError::ChunkWithoutCrlf);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Keeps what a peer sent short enough to quote in an error.
fn clip(text: &str) -> String {
    text.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &[u8]) -> Result<Response, ResponseError> {
        parse_response(raw, true).map(|r| r.expect("a response is complete at the end"))
    }

    #[test]
    fn urls_are_read_with_defaults_and_ipv6_brackets() {
        let url = HttpUrl::parse("http://op.mailfleet.svc:8080/v1/feedback").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("op.mailfleet.svc", 8080, "/v1/feedback")
        );
        assert_eq!(url.authority(), "op.mailfleet.svc:8080");
        let url = HttpUrl::parse("http://[::1]:9/x").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.authority()),
            ("::1", 9, "[::1]:9".to_string())
        );
        let url: HttpUrl = "http://host".parse().unwrap();
        assert_eq!(
            (url.port, url.path.as_str(), url.authority()),
            (80, "/", "host".into())
        );
        let url = HttpUrl::parse(" HTTP://host/a#fragment").unwrap();
        assert_eq!((url.host.as_str(), url.path.as_str()), ("host", "/a"));
    }

    #[test]
    fn urls_are_redacted_of_their_query() {
        let url = HttpUrl::parse("http://127.0.0.1:8080/snds/ipStatus.aspx?key=SECRET").unwrap();
        assert_eq!(url.host, "127.0.0.1");
        assert_eq!(url.port, 8080);
        assert_eq!(url.path, "/snds/ipStatus.aspx?key=SECRET");
        assert_eq!(url.redacted(), "http://127.0.0.1:8080/snds/ipStatus.aspx");
        let url = HttpUrl::parse("http://[::1]?key=K").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("::1", 80, "/?key=K")
        );
        assert_eq!(url.redacted(), "http://[::1]/");
    }

    #[test]
    fn unusable_urls_say_why() {
        for (url, why) in [
            ("https://x/v1/feedback", UrlError::Https),
            ("HTTPS://x/", UrlError::Https),
            ("ftp://x/", UrlError::NotHttp),
            ("host/path", UrlError::NotHttp),
            ("http://:80/", UrlError::EmptyHost),
            ("http:///x", UrlError::EmptyHost),
            ("http://u:p@host/", UrlError::Credentials),
            ("http://[::1/", UrlError::UnclosedBracket),
            ("http://host/a b", UrlError::BadPath),
            (
                "http://host:99999/",
                UrlError::BadPort {
                    port: "99999".into(),
                },
            ),
        ] {
            assert_eq!(HttpUrl::parse(url), Err(why), "{url}");
        }
        assert!(HttpUrl::parse("http://x:port/?key=SECRET")
            .unwrap_err()
            .to_string()
            .contains("port `port`"));
    }

    #[test]
    fn the_request_head_names_the_host_and_closes() {
        let url = HttpUrl::parse("http://[2001:db8::1]:8080/v1/feedback?x=1").unwrap();
        assert_eq!(
            url.request_head(
                "POST",
                &[("Content-Length", "7"), ("Authorization", "Bearer t")]
            ),
            "POST /v1/feedback?x=1 HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\nContent-Length: 7\r\n\
             Authorization: Bearer t\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn responses_with_length_chunks_or_eof() {
        let r = complete(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nContent-Length: 5\r\n\r\nhello world",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(r.header("content-type"), Some("text/csv"));
        let r = complete(b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nRetry-After:  3 \r\n\r\n4;x=y\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n").unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.header("RETRY-AFTER")),
            (503, &b"abcdefg"[..], Some("3"))
        );
        let r = complete(b"HTTP/1.0 500 Internal Server Error\r\n\r\noops").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (500, &b"oops"[..]));
        assert_eq!(r.header("content-type"), None);
        let r = complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"ok", "the chunks win over Content-Length");
    }

    #[test]
    fn incomplete_responses_wait_or_fail() {
        let why = |raw: &[u8]| complete(raw).unwrap_err().to_string();
        let partial = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        assert_eq!(parse_response(partial, false), Ok(None));
        assert!(why(partial).contains("3 of 10"));
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n", false), Ok(None));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", false),
            Ok(None)
        );
        let chunks = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab";
        assert_eq!(parse_response(chunks, false), Ok(None));
        assert!(why(chunks).contains("chunked"));
        assert!(why(b"SSH-2.0-OpenSSH\r\n\r\n").contains("HTTP/1.x"));
        assert!(why(b"HTTP/1.1 abc\r\n\r\n").contains("status code"));
        assert!(why(b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n").contains("colon"));
        assert_eq!(
            complete(b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n"),
            Err(ResponseError::BadContentLength("ten".into()))
        );
        assert_eq!(complete(b""), Err(ResponseError::ClosedInHead));
    }

    #[test]
    fn chunks_are_framed_strictly() {
        assert_eq!(
            decode_chunked(b"3\r\nabc\r\n0\r\n\r\n"),
            Ok(Some(b"abc".to_vec()))
        );
        assert_eq!(decode_chunked(b"3\r\nab"), Ok(None));
        assert_eq!(decode_chunked(b"3\r\nabc\r\n"), Ok(None));
        assert_eq!(
            decode_chunked(b"zz\r\nabc\r\n"),
            Err(ResponseError::BadChunkSize("zz".into()))
        );
        assert_eq!(
            decode_chunked(b"3\r\nabcX\r\n0\r\n\r\n"),
            Err(ResponseError::ChunkWithoutCrlf)
        );
        assert_eq!(head_length(b"HTTP/1.1 200 OK\r\n\r\nbody"), Some(19));
        assert_eq!(head_length(b"HTTP/1.1 200 OK\r\n"), None);
    }
}
