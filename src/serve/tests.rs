use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::agent::report::{ConfigHint, FEEDBACK_API_VERSION, MAX_REPORT_BYTES};
use crate::metrics::{Families, Kind, ProcessRegistry};

/// Accepts the token "secret" and records what it was given.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(Option<String>, u64)>>,
}

impl FeedbackReceiver for Recorder {
    type Caller = Option<String>;

    async fn authenticate(&self, head: &RequestHead) -> Result<Option<String>, FeedbackRefusal> {
        match head.bearer.as_deref() {
            Some("secret") => Ok(head.bearer.clone()),
            Some("other-pool") => Err(FeedbackRefusal::Forbidden("not yours".into())),
            Some("standby") => Err(FeedbackRefusal::Unavailable("not the leader".into())),
            _ => Err(FeedbackRefusal::Unauthorized("bad token".into())),
        }
    }

    async fn receive(
        &self,
        bearer: Option<String>,
        report: FeedbackReport,
    ) -> Result<FeedbackResponse, FeedbackRefusal> {
        self.seen
            .lock()
            .unwrap()
            .push((bearer.clone(), report.sequence));
        if report.source_ip.to_string() == "192.0.2.1" {
            return Err(FeedbackRefusal::Invalid("unknown ip".into()));
        }
        Ok(FeedbackResponse {
            api_version: FEEDBACK_API_VERSION.into(),
            sequence: report.sequence,
            duplicate: false,
            config: Some(ConfigHint {
                version: "v1".into(),
                files: None,
            }),
        })
    }
}

struct Fixed {
    healthy: bool,
    registry: ProcessRegistry,
}

impl Fixed {
    fn new(healthy: bool) -> Self {
        let registry = ProcessRegistry::new();
        registry.register(Things);
        Fixed { healthy, registry }
    }
}

/// A process's own family, beside the port's.
#[derive(Clone)]
struct Things;

impl Families for Things {
    fn encode(
        &self,
        out: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        crate::metrics::single(out, "mailfleet_things", "Things.", Kind::Gauge, 3i64)
    }
}

impl Observability for Fixed {
    fn registry(&self) -> &ProcessRegistry {
        &self.registry
    }
    fn health(&self) -> Result<ProbeReport, ProbeFailure> {
        if self.healthy {
            Ok(ProbeReport::Healthy)
        } else {
            Err(ProbeFailure::single(
                ProblemCategory::Configuration,
                "manifests/pool.yaml: broken",
            ))
        }
    }
    fn ready(&self) -> Result<ProbeReport, ProbeFailure> {
        Err(ProbeFailure::single(ProblemCategory::Starting, "not yet"))
    }
}

fn report_json(ip: &str, sequence: u64) -> String {
    serde_json::json!({
        "api_version": FEEDBACK_API_VERSION,
        "agent": {"name": "pod", "instance": "i-1"},
        "sequence": sequence,
        "source_ip": ip,
        "pool": {"namespace": "mail", "name": "bulk"},
        "period": {"start": "2026-11-29T08:10:00Z", "end": "2026-11-29T08:10:05Z"},
        "totals": [{"provider": "google", "outcome": "delivered", "category": "none", "count": 4}]
    })
    .to_string()
}

fn state(healthy: bool) -> (HttpState, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let state = HttpState::new(Arc::clone(&recorder), Arc::new(Fixed::new(healthy)), None);
    (state, recorder)
}

fn post(body: impl Into<Bytes>, token: Option<&str>) -> Request<Full<Bytes>> {
    let mut builder = Request::post("/v1/feedback").header("content-type", "application/json");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(Full::new(body.into())).unwrap()
}

async fn answer(state: &HttpState, request: Request<Full<Bytes>>) -> (StatusCode, String) {
    let response = state.handle(request).await;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn a_report_reaches_the_receiver_with_its_token() {
    let (state, recorder) = state(true);
    let (status, body) = answer(&state, post(report_json("203.0.113.10", 7), Some("secret"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let response: FeedbackResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(response.sequence, 7);
    assert_eq!(response.config.unwrap().version, "v1");
    assert_eq!(
        *recorder.seen.lock().unwrap(),
        vec![(Some("secret".to_string()), 7)]
    );
}

#[tokio::test]
async fn refusals_map_to_their_status_codes() {
    let (state, _) = state(true);
    for (token, ip, expected) in [
        (None, "203.0.113.10", StatusCode::UNAUTHORIZED),
        (Some("wrong"), "203.0.113.10", StatusCode::UNAUTHORIZED),
        (Some("other-pool"), "203.0.113.10", StatusCode::FORBIDDEN),
        (
            Some("standby"),
            "203.0.113.10",
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            Some("secret"),
            "192.0.2.1",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (status, body) = answer(&state, post(report_json(ip, 1), token)).await;
        assert_eq!(status, expected, "{token:?} {ip}: {body}");
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["api_version"], FEEDBACK_API_VERSION);
        assert!(error["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let basic = Request::post("/v1/feedback")
        .header("content-type", "application/json")
        .header("authorization", "Basic c2VjcmV0")
        .body(Full::new(Bytes::from(report_json("203.0.113.10", 1))))
        .unwrap();
    assert_eq!(answer(&state, basic).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bad_bodies_are_refused_before_the_receiver_sees_them() {
    let (state, recorder) = state(true);
    let (status, body) = answer(&state, post("{not json", Some("secret"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = answer(
        &state,
        post(
            report_json("203.0.113.10", 1).replace("\"sequence\":1", "\"sequence\":\"x\""),
            Some("secret"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("sequence"), "the field is not named: {body}");
    let (status, body) = answer(&state, post(report_json("203.0.113.10", 0), Some("secret"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("sequence: starts at 1"), "{body}");
    let (status, _) = answer(
        &state,
        post(
            report_json("203.0.113.10", 1)
                .replace("feedback.mailfleet.io/v1", "feedback.mailfleet.io/v2"),
            Some("secret"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let huge = vec![b' '; MAX_REPORT_BYTES + 1];
    let (status, _) = answer(&state, post(huge, Some("secret"))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(recorder.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn paths_methods_health_and_request_counts() {
    let (state, _) = state(false);
    let get = |path: &str| Request::get(path).body(Full::new(Bytes::new())).unwrap();
    assert_eq!(
        answer(&state, get("/nowhere")).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _) = answer(&state, get("/v1/feedback")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let response = state
        .handle(
            Request::post("/metrics")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "GET, HEAD");
    let (status, body) = answer(&state, get("/healthz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("manifests/pool.yaml"), "{body}");
    assert_eq!(
        answer(&state, get("/readyz")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    answer(&state, post(report_json("203.0.113.10", 1), Some("secret"))).await;
    answer(&state, post(report_json("203.0.113.10", 2), None)).await;
    let (status, metrics) = answer(&state, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(metrics.contains("\nmailfleet_things 3\n"), "{metrics}");
    assert!(metrics.contains("mailfleet_build_info{"), "{metrics}");
    for line in [
        "mailfleet_feedback_requests_total{code=\"200\"} 1",
        "mailfleet_feedback_requests_total{code=\"401\"} 1",
        "mailfleet_feedback_requests_total{code=\"405\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing in\n{metrics}");
    }
    let (status, _) = answer(
        &state,
        Request::put("/log-level")
            .body(Full::new(Bytes::from("debug")))
            .unwrap(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no handle, no log level changes"
    );
}

type FilterLayer =
    tracing_subscriber::reload::Layer<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// A healthy port whose log filter starts at `info`, and the filter's layer.
fn state_with_log_level() -> (HttpState, FilterLayer) {
    let (layer, handle) = FilterLayer::new(tracing_subscriber::EnvFilter::new("info"));
    let state = HttpState::new(
        Arc::new(Recorder::default()),
        Arc::new(Fixed::new(true)),
        Some(LogLevelHandle::new(handle, "info")),
    );
    (state, layer)
}

#[tokio::test]
async fn log_level_is_read_and_changed_through_the_port() {
    // The layer lives as long as the test: its handle changes nothing once it is gone.
    let (state, _layer) = state_with_log_level();
    let put = |body: &'static str| {
        Request::put("/log-level")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    assert_eq!(
        answer(&state, put("debug,hyper=warn")).await,
        (StatusCode::OK, "debug,hyper=warn\n".into())
    );
    let (status, body) = answer(&state, put("[broken")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = answer(
        &state,
        Request::get("/log-level")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "debug,hyper=warn\n")
    );
}

async fn raw_exchange(address: std::net::SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn serves_over_tcp_and_stops_on_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        Arc::new(Recorder::default()),
        Arc::new(Fixed::new(true)),
        None,
        async move {
            let _ = stopped.await;
        },
    ));
    let body = report_json("203.0.113.10", 3);
    let answer = raw_exchange(
        address,
        &format!(
            "POST /v1/feedback HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"sequence\":3"), "{answer}");
    let answer = raw_exchange(
        address,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"),
        "{answer}"
    );
    let declared_too_big = raw_exchange(
        address,
        &format!(
            "POST /v1/feedback HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            MAX_REPORT_BYTES + 1
        ),
    )
    .await;
    assert!(
        declared_too_big.starts_with("HTTP/1.1 413"),
        "{declared_too_big}"
    );
    // A keep-alive connection left open must not hold the shutdown up.
    let mut idle = tokio::net::TcpStream::connect(address).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(3), server)
        .await
        .expect("serve did not stop")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(address).await.is_err(),
        "still listening"
    );
}

#[tokio::test]
async fn cross_site_and_wrong_media_types_are_refused_from_the_head() {
    let (state, recorder) = state(true);
    let body = report_json("203.0.113.10", 1);
    let plain = Request::post("/v1/feedback")
        .header("content-type", "text/plain")
        .header("authorization", "Bearer secret")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    assert_eq!(
        answer(&state, plain).await.0,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let mut from_a_page = post(body.clone(), Some("secret"));
    from_a_page
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    assert_eq!(answer(&state, from_a_page).await.0, StatusCode::FORBIDDEN);
    let charset = Request::post("/v1/feedback")
        .header("content-type", "Application/JSON; charset=utf-8")
        .header("authorization", "Bearer secret")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    assert_eq!(answer(&state, charset).await.0, StatusCode::OK);
    assert_eq!(recorder.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn the_log_level_changes_only_from_this_machine_by_default() {
    // The layer lives as long as the test: its handle changes nothing once it is gone.
    let (state, _layer) = state_with_log_level();
    let put_from = |peer: &str| {
        let mut request = Request::put("/log-level")
            .body(Full::new(Bytes::from("debug")))
            .unwrap();
        request
            .extensions_mut()
            .insert(limits::PeerAddr(peer.parse().unwrap()));
        request
    };
    let (status, body) = answer(&state, put_from("198.51.100.7:40000")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = answer(&state, put_from("127.0.0.1:40000")).await;
    assert_eq!(status, StatusCode::OK);
}

fn test_limits() -> ServeLimits {
    ServeLimits {
        max_connections: 64,
        header_read_timeout: std::time::Duration::from_secs(3),
        body_read_timeout: std::time::Duration::from_secs(1),
        max_body_bytes_in_flight: 256 * 1024,
    }
}

async fn start(limits: ServeLimits) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_on(
        listener,
        None,
        Arc::new(Recorder::default()),
        Arc::new(Fixed::new(true)),
        None,
        limits,
        async move {
            let _ = stopped.await;
        },
    ));
    (address, stop)
}

async fn healthz_within(address: std::net::SocketAddr, seconds: u64) -> String {
    tokio::time::timeout(
        std::time::Duration::from_secs(seconds),
        raw_exchange(
            address,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
    )
    .await
    .expect("/healthz did not answer in time")
}

#[tokio::test]
async fn a_refused_token_is_answered_before_the_body_is_sent() {
    let (address, _stop) = start(test_limits()).await;
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /v1/feedback HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nContent-Type: application/json\r\nContent-Length: {MAX_REPORT_BYTES}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(
        std::time::Duration::from_secs(2),
        stream.read_exact(&mut head),
    )
    .await
    .expect("no answer without the body")
    .unwrap();
    assert_eq!(&head, b"HTTP/1.1 401");
}

/// Hundreds of idle and dripping connections, more than the cap: the port
/// keeps answering, the dripped body meets its deadline, and the bodies
/// held stay within the budget (a 503 to retry, never more memory).
#[tokio::test]
async fn idle_and_dripping_connections_beyond_the_cap_leave_the_port_answering() {
    let limits = test_limits();
    let (address, _stop) = start(limits.clone()).await;
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tokio::net::TcpStream::connect(address).await.unwrap());
    }
    let answer = healthz_within(address, 3).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Dripping bodies: each declares 64 KiB and sends a byte at a time, more
    // than the budget if it were taken for what is declared.
    let mut drips = Vec::new();
    for _ in 0..8 {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\nContent-Type: application/json\r\nContent-Length: 65536\r\n\r\n{")
            .await
            .unwrap();
        drips.push(stream);
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut answers = Vec::new();
    for stream in &mut drips {
        let _ = stream.write_all(b" ").await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            stream.read_to_end(&mut out),
        )
        .await;
        answers.push(String::from_utf8_lossy(&out).into_owned());
    }
    // A dripped body holds only the bytes it sent: each meets its deadline
    // (or was closed to make room), none is told the port is full.
    assert!(
        answers
            .iter()
            .all(|a| a.is_empty() || a.starts_with("HTTP/1.1 408")),
        "{answers:?}"
    );
    assert!(
        answers.iter().any(|a| a.starts_with("HTTP/1.1 408")),
        "{answers:?}"
    );
    // Real bytes over the budget: the oldest readers are closed to make room
    // (or, with none to close, the newest is told to retry).
    let mut heavy = Vec::new();
    for _ in 0..6 {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let mut request = b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n".to_vec();
        request.extend(std::iter::repeat_n(b' ', 60_000));
        stream.write_all(&request).await.unwrap();
        heavy.push(stream);
    }
    let mut refused = 0;
    for stream in &mut heavy {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            stream.read_to_end(&mut out),
        )
        .await;
        // 503 to retry, or closed to give its bytes to a newer body.
        refused += usize::from(out.starts_with(b"HTTP/1.1 503") || out.is_empty());
    }
    assert!(refused >= 1, "360 KB held against a 256 KiB budget");
    let answer = healthz_within(address, 3).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = report_json("203.0.113.10", 9);
    let report = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        raw_exchange(
            address,
            &format!(
                "POST /v1/feedback HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        ),
    )
    .await
    .expect("a report is answered among hostile connections");
    assert!(report.starts_with("HTTP/1.1 200"), "{report}");
    drop(idle);
}
