use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::agent::report::{ConfigHint, FEEDBACK_API_VERSION, MAX_REPORT_BYTES};

/// Accepts the token "secret" and records what it was given.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(Option<String>, u64)>>,
}

impl FeedbackReceiver for Recorder {
    async fn receive(
        &self,
        bearer: Option<String>,
        report: FeedbackReport,
    ) -> Result<FeedbackResponse, FeedbackRefusal> {
        self.seen
            .lock()
            .unwrap()
            .push((bearer.clone(), report.sequence));
        match bearer.as_deref() {
            Some("secret") => {}
            Some("other-pool") => return Err(FeedbackRefusal::Forbidden("not yours".into())),
            Some("standby") => return Err(FeedbackRefusal::Unavailable("not the leader".into())),
            _ => return Err(FeedbackRefusal::Unauthorized("bad token".into())),
        }
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
}

impl Observability for Fixed {
    fn metrics(&self) -> String {
        "mailfleet_things 3\n".into()
    }
    fn health(&self) -> Result<String, String> {
        if self.healthy {
            Ok("ok".into())
        } else {
            Err("manifests/pool.yaml: broken".into())
        }
    }
    fn ready(&self) -> Result<String, String> {
        Err("not yet".into())
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
    let state = HttpState::new(Arc::clone(&recorder), Arc::new(Fixed { healthy }), None);
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
    assert!(metrics.starts_with("mailfleet_things 3\n"), "{metrics}");
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

#[tokio::test]
async fn log_level_is_read_and_changed_through_the_port() {
    use tracing_subscriber::{reload, EnvFilter};
    let (_layer, handle) =
        reload::Layer::<EnvFilter, tracing_subscriber::Registry>::new(EnvFilter::new("info"));
    let state = HttpState::new(
        Arc::new(Recorder::default()),
        Arc::new(Fixed { healthy: true }),
        Some(LogLevelHandle::new(handle, "info")),
    );
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
        Arc::new(Fixed { healthy: true }),
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
            "POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
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
