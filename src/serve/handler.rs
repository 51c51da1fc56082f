//! One request in, one response out: routing by path and method, reading and
//! checking a feedback report, and the port's own request counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};

use super::{FeedbackReceiver, FeedbackRefusal, LogLevelHandle, Observability};
use crate::agent::report::{
    FeedbackReport, FeedbackResponse, FEEDBACK_API_VERSION, FEEDBACK_PATH, MAX_REPORT_BYTES,
};

/// A client must deliver the whole body within this time once its head is read.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `PUT /log-level` body.
const MAX_FILTER_BYTES: usize = 4096;

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

type Receive = dyn Fn(
        Option<String>,
        FeedbackReport,
    ) -> BoxFuture<'static, Result<FeedbackResponse, FeedbackRefusal>>
    + Send
    + Sync;

/// Everything a request needs; cheap to clone.
#[derive(Clone)]
pub struct HttpState {
    inner: Arc<Inner>,
}

struct Inner {
    receive: Box<Receive>,
    obs: Arc<dyn Observability>,
    log_level: Option<LogLevelHandle>,
    /// Feedback requests answered, per status code.
    feedback_requests: Mutex<BTreeMap<u16, u64>>,
}

impl HttpState {
    pub fn new<R: FeedbackReceiver, O: Observability>(
        receiver: Arc<R>,
        obs: Arc<O>,
        log_level: Option<LogLevelHandle>,
    ) -> Self {
        let receive = move |bearer, report| -> BoxFuture<'static, _> {
            let receiver = Arc::clone(&receiver);
            Box::pin(async move { receiver.receive(bearer, report).await })
        };
        HttpState {
            inner: Arc::new(Inner {
                receive: Box::new(receive),
                obs,
                log_level,
                feedback_requests: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Answers one request. Never fails: every problem is a status and a body.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let path = request.uri().path().to_string();
        let method = request.method().clone();
        match path.as_str() {
            FEEDBACK_PATH => {
                let response = if method == Method::POST {
                    self.feedback(request).await
                } else {
                    not_allowed("POST")
                };
                self.count_feedback(response.status());
                response
            }
            "/metrics" if is_read(&method) => text(StatusCode::OK, PROMETHEUS_TEXT, self.metrics()),
            "/healthz" if is_read(&method) => probe(self.inner.obs.health()),
            "/readyz" if is_read(&method) => probe(self.inner.obs.ready()),
            "/metrics" | "/healthz" | "/readyz" => not_allowed("GET, HEAD"),
            "/log-level" => self.log_level(request).await,
            _ => text(
                StatusCode::NOT_FOUND,
                TEXT,
                format!("no such path {path}; this port serves {FEEDBACK_PATH}, /metrics, /healthz, /readyz and /log-level\n"),
            ),
        }
    }

    async fn feedback<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let bearer = bearer_token(&request);
        let body = match read_body(request, MAX_REPORT_BYTES).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        let mut deserializer = serde_json::Deserializer::from_slice(&body);
        let report: FeedbackReport = match serde_path_to_error::deserialize(&mut deserializer) {
            Ok(report) => report,
            Err(err) => {
                let path = err.path().to_string();
                let message = if path == "." {
                    format!("the body is not a feedback report: {}", err.inner())
                } else {
                    format!("{path}: {}", err.inner())
                };
                return error_json(StatusCode::BAD_REQUEST, &message);
            }
        };
        if let Err(err) = report.validate() {
            return error_json(StatusCode::BAD_REQUEST, &err.to_string());
        }
        match (self.inner.receive)(bearer, report).await {
            Ok(answer) => {
                // A response of plain strings and numbers always serialises.
                let body = serde_json::to_vec(&answer).unwrap_or_default();
                respond(StatusCode::OK, JSON, Bytes::from(body))
            }
            Err(refusal) => error_json(refusal.status(), &refusal.to_string()),
        }
    }

    async fn log_level<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let Some(handle) = &self.inner.log_level else {
            return text(
                StatusCode::NOT_FOUND,
                TEXT,
                "this process does not change its log level at run time\n".to_string(),
            );
        };
        match *request.method() {
            Method::GET | Method::HEAD => {
                text(StatusCode::OK, TEXT, format!("{}\n", handle.current()))
            }
            Method::PUT => {
                let body = match read_body(request, MAX_FILTER_BYTES).await {
                    Ok(body) => body,
                    Err(response) => return response,
                };
                let Ok(filter) = std::str::from_utf8(&body) else {
                    return text(
                        StatusCode::BAD_REQUEST,
                        TEXT,
                        "the filter is not UTF-8 text\n".into(),
                    );
                };
                match handle.set(filter.trim()) {
                    Ok(()) => {
                        tracing::info!(filter = %handle.current(), "log filter changed");
                        text(StatusCode::OK, TEXT, format!("{}\n", handle.current()))
                    }
                    Err(err) => text(StatusCode::BAD_REQUEST, TEXT, format!("{err}\n")),
                }
            }
            _ => not_allowed("GET, HEAD, PUT"),
        }
    }

    fn metrics(&self) -> String {
        let mut out = self.inner.obs.metrics();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("# HELP mailfleet_feedback_requests_total Feedback requests answered, by HTTP status.\n");
        out.push_str("# TYPE mailfleet_feedback_requests_total counter\n");
        let counts = self
            .inner
            .feedback_requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        for (code, n) in counts {
            let _ = writeln!(
                out,
                "mailfleet_feedback_requests_total{{code=\"{code}\"}} {n}"
            );
        }
        out
    }

    fn count_feedback(&self, status: StatusCode) {
        let mut counts = self
            .inner
            .feedback_requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *counts.entry(status.as_u16()).or_default() += 1;
    }
}

fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// The token of `Authorization: Bearer <token>`; any other scheme counts as none.
fn bearer_token<B>(request: &Request<B>) -> Option<String> {
    let value = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

/// The whole body, or the response refusing it: 413 over `limit`, 408 when
/// it does not arrive in time, 400 when the connection breaks.
async fn read_body<B>(request: Request<B>, limit: usize) -> Result<Bytes, Response<Full<Bytes>>>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let too_large = || {
        error_json(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is larger than {limit} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let collect = Limited::new(request.into_body(), limit).collect();
    match tokio::time::timeout(BODY_READ_TIMEOUT, collect).await {
        Err(_) => Err(error_json(
            StatusCode::REQUEST_TIMEOUT,
            "the body did not arrive in time",
        )),
        Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(err)) => Err(error_json(
            StatusCode::BAD_REQUEST,
            &format!("cannot read the body: {err}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

fn probe(result: Result<String, String>) -> Response<Full<Bytes>> {
    match result {
        Ok(body) => text(StatusCode::OK, TEXT, with_newline(body)),
        Err(body) => text(StatusCode::SERVICE_UNAVAILABLE, TEXT, with_newline(body)),
    }
}

fn with_newline(mut body: String) -> String {
    if !body.ends_with('\n') {
        body.push('\n');
    }
    body
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        TEXT,
        format!("method not allowed here; use {allow}\n"),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// The refusal body of the feedback API: `{"api_version", "error"}`.
fn error_json(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"api_version": FEEDBACK_API_VERSION, "error": message});
    respond(status, JSON, Bytes::from(body.to_string()))
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    respond(status, content_type, Bytes::from(body))
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
