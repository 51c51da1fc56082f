//! The SNDS poller against a local HTTP server on 127.0.0.1 serving files in
//! the SNDS formats: blocked ranges, filter results, malformed rows, HTML
//! instead of CSV, HTTP 500, a refused key and a server that hangs; then the
//! same over HTTPS from a server with a certificate made in the test.

#[path = "support/test_tls.rs"]
mod test_tls;
use test_tls::{localhost_tls, TestTls};

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use mailfleet::api::ReputationState;
use mailfleet::fleet::Fleet;
use mailfleet::manifests;
use mailfleet::probe::snds::{FeedClient, RetryPolicy, SndsFeed, SndsKey, SndsPoller, TrustRoots};
use mailfleet::reputation::engine::Reason;

const KEY: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

/// ip-status as SNDS writes it: one blocked range per row.
const STATUS: &str = "\
203.0.113.8,203.0.113.11,Yes,\"Blocked due to user complaints or other evidence of spamming\"\r
198.51.100.0,198.51.100.255,Yes,\"Blocked due to user complaints or other evidence of spamming\"\r
";

/// The data file: 14 columns, one row per IP and day.
const DATA: &str = "\
203.0.113.10,11/5/2021 12:00 AM,11/5/2021 11:59 PM,61203,60877,61544,RED,12.3%,11/5/2021 8:12 AM,11/5/2021 9:40 PM,214,mta1.example.jp,bounce@example.jp,\r
203.0.113.12,11/5/2021 12:00 AM,11/5/2021 11:59 PM,40211,40102,40388,YELLOW,0.4%,,,3,mta3.example.jp,bounce@example.jp,\r
203.0.113.13,11/5/2021 12:00 AM,11/5/2021 11:59 PM,38877,38801,39002,GREEN,< 0.1%,,,0,mta4.example.jp,bounce@example.jp,\r
";

/// A range that blocks a pool IP, between rows no reader could trust.
const MALFORMED_STATUS: &str = "\
203.0.113.14,203.0.113.14,Yes,\"Blocked due to user complaints or other evidence of spamming\"\r
203.0.113.1,Yes\r
203.0.113.99,203.0.113.1,Yes,\"range backwards\"\r
not-an-ip,203.0.113.20,Yes,\"x\"\r
203.0.113.10,203.0.113.10,Perhaps,\"x\"\r
203.0.113.11,203.0.113.11,Yes,\"unterminated\r
";

const LOGIN_PAGE: &str = "<!DOCTYPE html>\r\n<html><head><title>Sign in to your account</title></head><body>Sign in</body></html>";

fn now() -> Timestamp {
    "2021-11-05T08:10:00Z".parse().unwrap()
}

fn pool_ips() -> Vec<IpAddr> {
    (10..=15).map(|i| IpAddr::from([203, 0, 113, i])).collect()
}

enum Answer {
    Reply {
        status: u16,
        content_type: &'static str,
        body: Vec<u8>,
        chunked: bool,
    },
    Hang,
}

fn reply(status: u16, content_type: &'static str, body: &str) -> Answer {
    Answer::Reply {
        status,
        content_type,
        body: body.as_bytes().to_vec(),
        chunked: false,
    }
}

/// The answer for `scenario`/`file`, on the `hit`-th request (1-based) to it.
fn route(scenario: &str, file: &str, hit: usize) -> Answer {
    let csv = "text/csv";
    match (scenario, file) {
        ("good", "ipStatus.aspx") => reply(200, csv, STATUS),
        ("good" | "malformed" | "flaky", "data.aspx") => reply(200, csv, DATA),
        ("malformed", "ipStatus.aspx") => reply(200, csv, MALFORMED_STATUS),
        ("chunked", "ipStatus.aspx") => Answer::Reply {
            status: 200,
            content_type: csv,
            body: STATUS.as_bytes().to_vec(),
            chunked: true,
        },
        ("html", _) => reply(200, "text/html; charset=utf-8", LOGIN_PAGE),
        ("html-as-text", _) => reply(200, "text/plain", LOGIN_PAGE),
        ("binary", _) => Answer::Reply {
            status: 200,
            content_type: "application/octet-stream",
            body: (0u8..=255).cycle().take(3000).collect(),
            chunked: false,
        },
        ("down", _) => reply(500, "text/plain", "Internal Server Error"),
        ("flaky", "ipStatus.aspx") if hit == 1 => reply(503, "text/plain", "Service Unavailable"),
        ("flaky", "ipStatus.aspx") => reply(200, csv, STATUS),
        ("empty", "ipStatus.aspx") => reply(200, csv, ""),
        ("empty", "data.aspx") => reply(500, "text/plain", "oops"),
        ("hang", _) => Answer::Hang,
        _ => reply(404, "text/plain", "not found"),
    }
}

/// A local HTTP/1.1 server with the routes above; it refuses requests
/// without the key (403). Stopped when dropped.
struct FeedServer {
    address: SocketAddr,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FeedServer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (hits_in, stop_in) = (hits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut handlers = Vec::new();
            while !stop_in.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (hits, stop) = (hits_in.clone(), stop_in.clone());
                        handlers.push(std::thread::spawn(move || serve(stream, &hits, &stop)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            for handler in handlers {
                let _ = handler.join();
            }
        });
        FeedServer {
            address,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    fn feed(&self, scenario: &str) -> SndsFeed {
        SndsFeed {
            ip_status_url: format!("http://{}/{scenario}/snds/ipStatus.aspx", self.address),
            data_url: Some(format!("http://{}/{scenario}/snds/data.aspx", self.address)),
        }
    }

    fn hits(&self, scenario: &str, file: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .get(&format!("{scenario}/{file}"))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(mut stream: TcpStream, hits: &Mutex<HashMap<String, usize>>, stop: &AtomicBool) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    match answer_for(&request, hits) {
        Answer::Hang => {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        answer => {
            let _ = stream.write_all(&encode(&answer));
        }
    }
}

/// The answer to a request head: the route of its scenario and file, or 403
/// without the right key. Counts the hit.
fn answer_for(request: &[u8], hits: &Mutex<HashMap<String, usize>>) -> Answer {
    let text = String::from_utf8_lossy(request);
    let target = text.split(' ').nth(1).unwrap_or("/").to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut parts = path.trim_start_matches('/').split('/');
    let scenario = parts.next().unwrap_or_default().to_string();
    let file = path.rsplit('/').next().unwrap_or_default().to_string();
    let hit = {
        let mut hits = hits.lock().unwrap();
        let count = hits.entry(format!("{scenario}/{file}")).or_insert(0);
        *count += 1;
        *count
    };
    if query.split('&').any(|p| p == format!("key={KEY}")) {
        route(&scenario, &file, hit)
    } else {
        reply(403, "text/plain", "Forbidden: missing or wrong key")
    }
}

/// The bytes of a reply (nothing for a hang).
fn encode(answer: &Answer) -> Vec<u8> {
    let Answer::Reply {
        status,
        content_type,
        body,
        chunked,
    } = answer
    else {
        return Vec::new();
    };
    let mut head = format!(
        "HTTP/1.1 {status} Whatever\r\nContent-Type: {content_type}\r\nConnection: close\r\n"
    );
    let mut out = Vec::new();
    if *chunked {
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
        out.extend_from_slice(head.as_bytes());
        for piece in body.chunks(37) {
            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
    } else {
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(body);
    }
    out
}

fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        backoff: Duration::from_millis(10),
    }
}

/// The project's client against the plain-HTTP test server.
fn plain_http(timeout: Duration, max_bytes: usize) -> FeedClient {
    let mut client = FeedClient::new(&TrustRoots::system()).unwrap();
    client.timeout = timeout;
    client.max_bytes = max_bytes;
    client
}

fn poller(feed: SndsFeed) -> SndsPoller {
    SndsPoller::new(
        feed,
        SndsKey::new(&format!("{KEY}\n")).unwrap(),
        quick_retry(),
        plain_http(Duration::from_millis(400), 1 << 20),
    )
}

#[tokio::test]
async fn a_blocked_range_covering_a_pool_ip_blocks_it_for_microsoft_only() {
    let server = FeedServer::start();
    let mut snds = poller(server.feed("good"));
    let poll = snds.poll(&pool_ips(), now()).await.unwrap();
    assert_eq!(poll.verdicts.verdicts.len(), 6);
    assert_eq!(poll.verdicts.withheld_clears, 0);
    let blocked: Vec<String> = poll
        .verdicts
        .verdicts
        .iter()
        .filter(|v| v.verdict.blocked)
        .map(|v| v.ip.to_string())
        .collect();
    assert_eq!(blocked, vec!["203.0.113.10", "203.0.113.11"]);
    for v in &poll.verdicts.verdicts {
        assert_eq!(
            (v.verdict.feed.as_str(), v.verdict.provider.as_str()),
            ("snds", "microsoft")
        );
        assert_eq!(v.verdict.checked_at.0, now());
    }
    let ten = &poll.verdicts.verdicts[0].verdict;
    assert_eq!(
        ten.reason.as_deref(),
        Some("Blocked due to user complaints or other evidence of spamming (SNDS blocked range 203.0.113.8-203.0.113.11)")
    );
    let twelve = &poll.verdicts.verdicts[2].verdict;
    assert!(!twelve.blocked);
    assert!(
        twelve
            .reason
            .as_deref()
            .unwrap()
            .contains("filter result YELLOW"),
        "{twelve:?}"
    );
    assert_eq!(poll.data.as_ref().unwrap().rows.len(), 3);

    // Into the engine: (203.0.113.10, microsoft) goes Blocked with the feed's
    // words; google on the same IP is untouched.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet");
    let mut fleet = Fleet::new(manifests::load_dir(&examples).unwrap(), None).unwrap();
    let mut moved = Vec::new();
    for v in &poll.verdicts.verdicts {
        moved.extend(fleet.observe(&v.ip.to_string(), v.signal(), now()).unwrap());
    }
    let blocks: Vec<_> = moved
        .iter()
        .filter(|t| t.to == ReputationState::Blocked)
        .collect();
    assert_eq!(blocks.len(), 2, "{moved:?}");
    for t in &blocks {
        assert_eq!(
            (t.provider.as_str(), t.reason),
            ("microsoft", Reason::FeedBlocked)
        );
        assert!(t
            .evidence
            .as_deref()
            .unwrap()
            .starts_with("feed snds: Blocked due to user complaints"));
    }
    assert!(moved.iter().all(|t| t.provider == "microsoft"));

    let counters = snds.counters();
    assert_eq!(
        (
            counters.polls,
            counters.successful_polls,
            counters.blocked_verdicts
        ),
        (1, 1, 2)
    );
    assert_eq!((counters.retries, counters.malformed_rows), (0, 0));
}

#[tokio::test]
async fn malformed_rows_are_skipped_counted_and_withhold_every_clear() {
    let server = FeedServer::start();
    let mut snds = poller(server.feed("malformed"));
    let poll = snds.poll(&pool_ips(), now()).await.unwrap();
    assert_eq!(poll.status.skipped.len(), 5);
    let lines: Vec<usize> = poll.status.skipped.iter().map(|s| s.line).collect();
    assert_eq!(lines, vec![2, 3, 4, 5, 6]);
    // The readable block stands; no IP is cleared, since a skipped row might
    // have listed it (203.0.113.11 is on the unterminated line).
    assert_eq!(poll.verdicts.verdicts.len(), 1);
    assert_eq!(poll.verdicts.verdicts[0].ip.to_string(), "203.0.113.14");
    assert!(poll.verdicts.verdicts[0].verdict.blocked);
    assert_eq!(poll.verdicts.withheld_clears, 5);
    assert_eq!(snds.counters().malformed_rows, 5);
    assert_eq!(snds.counters().withheld_clears, 5);
}

#[tokio::test]
async fn html_instead_of_csv_is_a_failed_poll_never_a_block() {
    let server = FeedServer::start();
    for scenario in ["html", "html-as-text"] {
        let mut snds = poller(server.feed(scenario));
        let err = snds.poll(&pool_ips(), now()).await.unwrap_err();
        assert_eq!(err.kind(), "html", "{scenario}: {err}");
        let text = err.to_string();
        assert!(
            text.contains("HTML, not CSV") && text.contains("Sign in"),
            "{text}"
        );
        assert_eq!(snds.counters().failed_polls, 1);
        assert_eq!(snds.counters().errors.get("html"), Some(&1));
        assert_eq!(
            server.hits(scenario, "ipStatus.aspx"),
            1,
            "HTML is not retried"
        );
    }
}

#[tokio::test]
async fn binary_garbage_is_a_failed_poll() {
    let server = FeedServer::start();
    let mut snds = poller(server.feed("binary"));
    let err = snds.poll(&pool_ips(), now()).await.unwrap_err();
    assert_eq!(err.kind(), "no_valid_rows", "{err}");
}

#[tokio::test]
async fn http_500_is_retried_then_reported_and_a_passing_failure_recovers() {
    let server = FeedServer::start();
    let mut snds = poller(server.feed("down"));
    let err = snds.poll(&pool_ips(), now()).await.unwrap_err();
    assert_eq!(err.kind(), "http_5xx");
    assert!(
        err.to_string().contains("HTTP 500 (after 3 attempt(s))"),
        "{err}"
    );
    assert_eq!(server.hits("down", "ipStatus.aspx"), 3);
    assert_eq!(snds.counters().retries, 2);

    let mut snds = poller(server.feed("flaky"));
    let poll = snds.poll(&pool_ips(), now()).await.unwrap();
    assert_eq!(
        poll.verdicts
            .verdicts
            .iter()
            .filter(|v| v.verdict.blocked)
            .count(),
        2
    );
    assert_eq!(snds.counters().retries, 1);
    assert_eq!(server.hits("flaky", "ipStatus.aspx"), 2);
}

#[tokio::test]
async fn a_hanging_server_times_out_within_the_retry_budget() {
    let server = FeedServer::start();
    let mut snds = SndsPoller::new(
        server.feed("hang"),
        SndsKey::new(KEY).unwrap(),
        RetryPolicy {
            attempts: 2,
            backoff: Duration::from_millis(10),
        },
        plain_http(Duration::from_millis(200), 1 << 20),
    );
    let started = Instant::now();
    let err = snds.poll(&pool_ips(), now()).await.unwrap_err();
    assert_eq!(err.kind(), "timeout", "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        err.to_string().contains("did not answer within 200 ms"),
        "{err}"
    );
    assert_eq!(snds.counters().errors.get("timeout"), Some(&1));
}

#[tokio::test]
async fn a_refused_key_is_not_retried_and_the_key_never_shows() {
    let server = FeedServer::start();
    let mut snds = SndsPoller::new(
        server.feed("good"),
        SndsKey::new("wrong-key").unwrap(),
        quick_retry(),
        plain_http(Duration::from_secs(30), 16 << 20),
    );
    let err = snds.poll(&pool_ips(), now()).await.unwrap_err();
    assert_eq!(err.kind(), "http_status");
    let text = err.to_string();
    assert!(
        text.contains("HTTP 403") && text.contains("check it"),
        "{text}"
    );
    assert!(!text.contains("wrong-key"), "{text}");
    assert_eq!(server.hits("good", "ipStatus.aspx"), 1);
}

#[tokio::test]
async fn chunked_responses_and_a_failing_data_file() {
    let server = FeedServer::start();
    let mut snds = poller(SndsFeed {
        data_url: None,
        ..server.feed("chunked")
    });
    let poll = snds.poll(&pool_ips(), now()).await.unwrap();
    assert_eq!(poll.status.ranges.len(), 2);

    // Nothing blocked and the data file down: every pool IP is cleared, the
    // filter results are left out and counted.
    let mut snds = poller(server.feed("empty"));
    let poll = snds.poll(&pool_ips(), now()).await.unwrap();
    assert_eq!(poll.verdicts.verdicts.len(), 6);
    assert!(poll.verdicts.verdicts.iter().all(|v| !v.verdict.blocked));
    assert_eq!(poll.data_error.as_ref().map(|e| e.kind()), Some("http_5xx"));
    assert_eq!(snds.counters().data_failures, 1);
}

#[tokio::test]
async fn nothing_listening_is_a_connect_failure() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut snds = poller(SndsFeed {
        ip_status_url: format!("http://127.0.0.1:{port}/snds/ipStatus.aspx"),
        data_url: None,
    });
    let err = snds.poll(&pool_ips(), now()).await.unwrap_err();
    assert_eq!(err.kind(), "connect", "{err}");
    assert_eq!(snds.counters().retries, 2);
}

// ---- HTTPS: the same files over TLS, from a server whose certificate is
// issued in the test by a private CA given to the client as an extra bundle.

/// A TLS feed server on 127.0.0.1 with a certificate for 127.0.0.1 and
/// localhost, issued by a CA made for this test. Stopped when dropped.
struct TlsFeedServer {
    address: SocketAddr,
    ca_pem: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsFeedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsFeedServer {
    async fn start() -> Self {
        let TestTls { acceptor, ca_pem } = localhost_tls("mailfleet test feed CA");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let hits_in = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, hits) = (acceptor.clone(), hits_in.clone());
                tokio::spawn(async move { serve_tls(acceptor, tcp, &hits).await });
            }
        });
        TlsFeedServer {
            address,
            ca_pem,
            hits,
            task,
        }
    }

    fn url(&self, scenario: &str, file: &str) -> String {
        format!("https://{}/{scenario}/snds/{file}", self.address)
    }

    fn feed(&self, scenario: &str) -> SndsFeed {
        SndsFeed {
            ip_status_url: self.url(scenario, "ipStatus.aspx"),
            data_url: Some(self.url(scenario, "data.aspx")),
        }
    }

    fn hits(&self, scenario: &str, file: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .get(&format!("{scenario}/{file}"))
            .copied()
            .unwrap_or(0)
    }

    /// A client trusting only this server's CA.
    fn client(&self) -> FeedClient {
        let roots = TrustRoots::none().with_pem(self.ca_pem.as_bytes()).unwrap();
        let mut client = FeedClient::new(&roots).unwrap();
        client.timeout = Duration::from_millis(2000);
        client
    }
}

async fn serve_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    hits: &Mutex<HashMap<String, usize>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut tls) = acceptor.accept(tcp).await else {
        return;
    };
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request).to_string();
    if text.contains("/no-close-notify/") || text.contains("/unframed-no-close-notify/") {
        // The connection is dropped without TLS close_notify, as some
        // servers do: after a body whose length was given, or after one that
        // only the end of the connection delimits.
        let _ = answer_for(&request, hits);
        let framing = if text.contains("/unframed-") {
            String::new()
        } else {
            format!("Content-Length: {}\r\n", STATUS.len())
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\n{framing}Connection: close\r\n\r\n"
        );
        let _ = tls.write_all(head.as_bytes()).await;
        let _ = tls.write_all(STATUS.as_bytes()).await;
        let _ = tls.flush().await;
        let (tcp, _) = tls.into_inner();
        drop(tcp);
        return;
    }
    match answer_for(&request, hits) {
        Answer::Hang => tokio::time::sleep(Duration::from_secs(60)).await,
        answer => {
            let _ = tls.write_all(&encode(&answer)).await;
            let _ = tls.shutdown().await;
        }
    }
}

/// Everything any test of this file logs, from the first call on: one global
/// subscriber, since a per-thread one misses events whose callsites another
/// test thread registered first. No test may log the key, so one buffer serves all.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || CaptureWriter(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
        buffer
    })
    .clone()
}

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn tls_poller(server: &TlsFeedServer, feed: SndsFeed) -> SndsPoller<FeedClient> {
    SndsPoller::new(
        feed,
        SndsKey::new(KEY).unwrap(),
        quick_retry(),
        server.client(),
    )
}

#[tokio::test]
async fn https_feed_blocks_the_covered_ips_with_the_filter_results() {
    let server = TlsFeedServer::start().await;
    let mut snds = tls_poller(&server, server.feed("good"));
    let poll = snds.poll(&pool_ips(), now()).await.unwrap();
    let blocked: Vec<String> = poll
        .verdicts
        .verdicts
        .iter()
        .filter(|v| v.verdict.blocked)
        .map(|v| v.ip.to_string())
        .collect();
    assert_eq!(blocked, vec!["203.0.113.10", "203.0.113.11"]);
    assert_eq!(poll.data.as_ref().unwrap().rows.len(), 3);
    let twelve = &poll.verdicts.verdicts[2].verdict;
    assert!(
        twelve
            .reason
            .as_deref()
            .unwrap()
            .contains("filter result YELLOW"),
        "{twelve:?}"
    );
    assert_eq!(server.hits("good", "ipStatus.aspx"), 1);
    assert_eq!(server.hits("good", "data.aspx"), 1);

    // Chunked over TLS, and a framed body whose connection is then closed
    // without close_notify.
    for scenario in ["chunked", "no-close-notify"] {
        let mut snds = tls_poller(
            &server,
            SndsFeed {
                data_url: None,
                ..server.feed(scenario)
            },
        );
        let poll = snds.poll(&pool_ips(), now()).await.unwrap();
        assert_eq!(poll.status.ranges.len(), 2, "{scenario}");
    }

    // A body only the end of the connection delimits, ended without
    // close_notify, could have been cut anywhere: a failed poll (retried),
    // never a file read as whole.
    let mut snds = tls_poller(
        &server,
        SndsFeed {
            data_url: None,
            ..server.feed("unframed-no-close-notify")
        },
    );
    let err = snds.poll(&pool_ips(), now()).await.unwrap_err();
    assert!(
        err.to_string().contains("close_notify"),
        "a possibly cut body must be refused: {err}"
    );
}

#[tokio::test]
async fn https_login_page_is_a_clear_failure_never_a_block_and_the_key_stays_hidden() {
    let server = TlsFeedServer::start().await;
    let logs = captured_logs();
    let mut snds = tls_poller(&server, server.feed("html"));
    let err = snds.poll(&pool_ips(), now()).await.unwrap_err();
    assert_eq!(err.kind(), "html", "{err}");
    let text = err.to_string();
    assert!(
        text.contains("HTML, not CSV") && text.contains("is the SNDS key valid"),
        "{text}"
    );
    assert_eq!(snds.counters().failed_polls, 1);
    assert_eq!(snds.counters().blocked_verdicts, 0);
    assert_eq!(server.hits("html", "ipStatus.aspx"), 1, "not retried");

    // 500 three times, then a refused key: every message and log line
    // shows the URL without its query.
    let mut down = tls_poller(&server, server.feed("down"));
    let err = down.poll(&pool_ips(), now()).await.unwrap_err();
    assert_eq!(err.kind(), "http_5xx");
    assert!(
        err.to_string().contains(&format!(
            "https://{}/down/snds/ipStatus.aspx answered HTTP 500",
            server.address
        )),
        "{err}"
    );
    let mut wrong = SndsPoller::new(
        server.feed("good"),
        SndsKey::new("wrong-key-1234").unwrap(),
        quick_retry(),
        server.client(),
    );
    let err = wrong.poll(&pool_ips(), now()).await.unwrap_err();
    assert!(err.to_string().contains("HTTP 403"), "{err}");
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logged.contains("will retry"),
        "the retries are logged: {logged}"
    );
    for secret in [KEY, "wrong-key-1234", "key="] {
        assert!(
            !logged.contains(secret),
            "`{secret}` in the logs:\n{logged}"
        );
        assert!(!text.contains(secret) && !err.to_string().contains(secret));
    }
}

#[tokio::test]
async fn https_malformed_file_skips_rows_and_clears_nobody() {
    let server = TlsFeedServer::start().await;
    let mut snds = tls_poller(&server, server.feed("malformed"));
    let poll = snds.poll(&pool_ips(), now()).await.unwrap();
    assert_eq!(poll.status.skipped.len(), 5);
    assert_eq!(poll.verdicts.verdicts.len(), 1);
    assert!(poll.verdicts.verdicts[0].verdict.blocked);
    assert_eq!(poll.verdicts.withheld_clears, 5);

    let mut snds = tls_poller(&server, server.feed("binary"));
    let err = snds.poll(&pool_ips(), now()).await.unwrap_err();
    assert_eq!(err.kind(), "no_valid_rows", "{err}");
}

#[tokio::test]
async fn an_untrusted_certificate_fails_at_once_naming_the_fix() {
    let server = TlsFeedServer::start().await;
    // Mozilla's and the system's roots do not know the test CA.
    let client = FeedClient::new(&TrustRoots::system()).unwrap();
    let mut snds = SndsPoller::new(
        server.feed("good"),
        SndsKey::new(KEY).unwrap(),
        quick_retry(),
        client,
    );
    let err = snds.poll(&pool_ips(), now()).await.unwrap_err();
    assert_eq!(err.kind(), "tls", "{err}");
    let text = err.to_string();
    assert!(
        text.contains("not trusted") && text.contains("caBundleSecretRef"),
        "{text}"
    );
    assert!(text.contains("after 1 attempt(s)"), "not retried: {text}");
    assert!(!text.contains(KEY));
    assert_eq!(
        server.hits("good", "ipStatus.aspx"),
        0,
        "no request was sent"
    );

    // A certificate for another name is refused too.
    let mut client = server.client();
    client.timeout = Duration::from_millis(500);
    let wrong_name = format!(
        "https://127.0.0.2:{}/good/snds/ipStatus.aspx?key={KEY}",
        server.address.port()
    );
    if let Err(err) = client.get(&wrong_name).await {
        // 127.0.0.2 may not be routable everywhere: then it is a connect failure.
        assert!(matches!(err.kind(), "tls" | "connect"), "{err}");
        assert!(!err.to_string().contains(KEY));
    } else {
        panic!("a certificate for 127.0.0.1 was accepted for 127.0.0.2");
    }
}

#[tokio::test]
async fn the_feed_client_also_speaks_plain_http() {
    let server = FeedServer::start();
    let client = FeedClient::new(&TrustRoots::system()).unwrap();
    let mut snds = SndsPoller::new(
        server.feed("good"),
        SndsKey::new(KEY).unwrap(),
        quick_retry(),
        client,
    );
    let poll = snds.poll(&pool_ips(), now()).await.unwrap();
    assert_eq!(
        poll.verdicts
            .verdicts
            .iter()
            .filter(|v| v.verdict.blocked)
            .count(),
        2
    );
}
