//! One request in, one response out: routing by path and method, reading and
//! checking a feedback report, and the port's own request counters.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, ORIGIN, RETRY_AFTER,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use prometheus_client::encoding::DescriptorEncoder;
use tokio::sync::Semaphore;

use super::abuse::{self, AbuseReportAnswer, PostedAbuseReport};
use super::limits::{InRequest, PeerAddr, ServeLimits};
use super::{
    FeedbackReceiver, FeedbackRefusal, LogLevelHandle, Observability, ProbeFailure, ProbeReport,
    RequestHead,
};
use crate::agent::report::{
    FeedbackReport, FeedbackResponse, FEEDBACK_API_VERSION, FEEDBACK_PATH, MAX_REPORT_BYTES,
};
use crate::metrics::catalogue::{
    COMPLAINT_REPORTS, CONNECTIONS_REFUSED, FEEDBACK_REQUESTS, PLAIN_HTTP_REFUSED,
};
use crate::metrics::Families;

/// How long a body waits for budget freed by closing an older body reader.
const BUDGET_WAIT: Duration = Duration::from_secs(1);
/// Longest `PUT /log-level` body.
const MAX_FILTER_BYTES: usize = 4096;

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS_TEXT: &str = crate::metrics::CONTENT_TYPE;

/// What a caller hands over once authenticated.
enum Submission {
    Feedback(Box<FeedbackReport>),
    Abuse(PostedAbuseReport),
}

/// The receiver's answer to a [`Submission`] of the same kind.
enum Answer {
    Feedback(FeedbackResponse),
    Abuse(AbuseReportAnswer),
}

/// What an authenticated caller may do next: hand over its report.
type Receive =
    Box<dyn FnOnce(Submission) -> BoxFuture<'static, Result<Answer, FeedbackRefusal>> + Send>;
type Authenticate =
    dyn Fn(RequestHead) -> BoxFuture<'static, Result<Receive, FeedbackRefusal>> + Send + Sync;
type Administer = dyn Fn(&RequestHead) -> Result<(), FeedbackRefusal> + Send + Sync;

/// Everything a request needs; cheap to clone.
#[derive(Clone)]
pub struct HttpState {
    inner: Arc<Inner>,
}

struct Inner {
    authenticate: Box<Authenticate>,
    administer: Box<Administer>,
    obs: Arc<dyn Observability>,
    log_level: Option<LogLevelHandle>,
    /// Body bytes that may be held at once, over all requests.
    body_budget: Arc<Semaphore>,
    body_read_timeout: Duration,
    counters: Arc<PortCounters>,
}

/// The port's own counts, registered in the process registry.
#[derive(Default)]
struct PortCounters {
    /// Feedback requests answered, per status code.
    feedback_requests: Mutex<BTreeMap<u16, u64>>,
    /// Abuse reports posted, by result: `counted`, `duplicate`, or why not
    /// (`not_ours`, the ARF reader's kind, `too_large`, `refused`).
    abuse_reports: Mutex<BTreeMap<&'static str, u64>>,
    /// Connections closed at once because every slot was inside a request.
    refused_connections: AtomicU64,
    /// Plain-HTTP requests to the TLS port, answered 400.
    plain_http_refused: AtomicU64,
}

impl Families for PortCounters {
    fn encode(&self, out: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let counts: Vec<(String, u64)> = self
            .feedback_requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(code, n)| (code.to_string(), *n))
            .collect();
        FEEDBACK_REQUESTS.write(out, counts.iter().map(|(code, n)| ([code.as_str()], *n)))?;
        let abuse: Vec<(&'static str, u64)> = self
            .abuse_reports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(result, n)| (*result, *n))
            .collect();
        COMPLAINT_REPORTS.write(out, abuse.iter().map(|(result, n)| ([*result], *n)))?;
        CONNECTIONS_REFUSED.write(
            out,
            [([], self.refused_connections.load(Ordering::Relaxed))],
        )?;
        PLAIN_HTTP_REFUSED.write(out, [([], self.plain_http_refused.load(Ordering::Relaxed))])
    }
}

impl HttpState {
    pub fn new<R: FeedbackReceiver, O: Observability>(
        receiver: Arc<R>,
        obs: Arc<O>,
        log_level: Option<LogLevelHandle>,
    ) -> Self {
        Self::with_limits(receiver, obs, log_level, ServeLimits::default())
    }

    pub fn with_limits<R: FeedbackReceiver, O: Observability>(
        receiver: Arc<R>,
        obs: Arc<O>,
        log_level: Option<LogLevelHandle>,
        limits: ServeLimits,
    ) -> Self {
        let admin = Arc::clone(&receiver);
        let authenticate = move |head: RequestHead| -> BoxFuture<'static, _> {
            let receiver = Arc::clone(&receiver);
            Box::pin(async move {
                let caller = receiver.authenticate(&head).await?;
                let receive: Receive = Box::new(move |submission| {
                    Box::pin(async move {
                        match submission {
                            Submission::Feedback(report) => receiver
                                .receive(caller, *report)
                                .await
                                .map(Answer::Feedback),
                            Submission::Abuse(report) => receiver
                                .receive_abuse_report(caller, report)
                                .await
                                .map(Answer::Abuse),
                        }
                    })
                });
                Ok(receive)
            })
        };
        let budget = limits.max_body_bytes_in_flight.min(u32::MAX as usize);
        let counters = Arc::new(PortCounters::default());
        obs.registry().register(Arc::clone(&counters));
        HttpState {
            inner: Arc::new(Inner {
                authenticate: Box::new(authenticate),
                administer: Box::new(move |head| admin.may_administer(head)),
                obs,
                log_level,
                body_budget: Arc::new(Semaphore::new(budget)),
                body_read_timeout: limits.body_read_timeout,
                counters,
            }),
        }
    }

    pub(super) fn count_refused_connection(&self) {
        self.inner
            .counters
            .refused_connections
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_plain_http_refused(&self) {
        self.inner
            .counters
            .plain_http_refused
            .fetch_add(1, Ordering::Relaxed);
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
            abuse::ABUSE_REPORTS_PATH => {
                let response = if method == Method::POST {
                    let (response, result) = self.abuse_report(request).await;
                    self.count_abuse_report(result);
                    response
                } else {
                    not_allowed("POST")
                };
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
                format!("no such path {path}; this port serves {FEEDBACK_PATH}, {}, /metrics, /healthz, /readyz and /log-level\n", abuse::ABUSE_REPORTS_PATH),
            ),
        }
    }

    async fn feedback<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        // Everything that can be decided from the head is, before any body
        // byte is read: a refused request costs no memory.
        if request.headers().contains_key(ORIGIN) {
            return error_json(
                StatusCode::FORBIDDEN,
                "requests from a web page (an Origin header) are refused; only agents report",
            );
        }
        if !is_json(&request) {
            return error_json(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the body must be a feedback report sent as Content-Type: application/json",
            );
        }
        let head = request_head(&request);
        let in_request = request.extensions().get::<InRequest>().cloned();
        let receive = match (self.inner.authenticate)(head).await {
            Ok(receive) => receive,
            Err(refusal) => return error_json(refusal.status(), &refusal.to_string()),
        };
        if let Some(in_request) = &in_request {
            in_request.reading_body(true);
        }
        let body = self.read_body(request, MAX_REPORT_BYTES).await;
        if let Some(in_request) = &in_request {
            in_request.reading_body(false);
        }
        let body = match body {
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
        drop(body);
        if let Err(err) = report.validate() {
            return error_json(StatusCode::BAD_REQUEST, &err.to_string());
        }
        if let Some(in_request) = in_request {
            in_request.enter();
        }
        match receive(Submission::Feedback(Box::new(report))).await {
            Ok(Answer::Feedback(answer)) => {
                // A response of plain strings and numbers always serialises.
                let body = serde_json::to_vec(&answer).unwrap_or_default();
                respond(StatusCode::OK, JSON, Bytes::from(body))
            }
            Ok(Answer::Abuse(_)) => error_json(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the receiver answered a feedback report as an abuse report",
            ),
            Err(refusal) => error_json(refusal.status(), &refusal.to_string()),
        }
    }

    /// `POST /v1/abuse-reports`: decided from the head (origin, media type,
    /// token) before any body byte is read, then bounded, read as ARF, and
    /// handed to the receiver, which answers once the complaint is stored.
    async fn abuse_report<B>(&self, request: Request<B>) -> (Response<Full<Bytes>>, &'static str)
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        if request.headers().contains_key(ORIGIN) {
            return (
                error_json(
                    StatusCode::FORBIDDEN,
                    "requests from a web page (an Origin header) are refused",
                ),
                "refused",
            );
        }
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let Some(media) = abuse::accepted_media(content_type) else {
            return (
                error_json(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    &format!(
                        "the body must be an abuse feedback report (RFC 5965) sent as Content-Type: {} (the whole report) or {} (its fields alone), not {content_type:?}",
                        abuse::RFC822,
                        abuse::FEEDBACK_REPORT
                    ),
                ),
                "refused",
            );
        };
        let head = request_head(&request);
        let in_request = request.extensions().get::<InRequest>().cloned();
        let receive = match (self.inner.authenticate)(head).await {
            Ok(receive) => receive,
            Err(refusal) => {
                return (
                    error_json(refusal.status(), &refusal.to_string()),
                    "refused",
                )
            }
        };
        if let Some(in_request) = &in_request {
            in_request.reading_body(true);
        }
        let body = self.read_body(request, abuse::max_body_bytes(media)).await;
        if let Some(in_request) = &in_request {
            in_request.reading_body(false);
        }
        let body = match body {
            Ok(body) => body,
            Err(response) => {
                let result = if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    "too_large"
                } else {
                    "refused"
                };
                return (response, result);
            }
        };
        let posted = match abuse::read_posted(media, &body) {
            Ok(posted) => posted,
            Err(err) => {
                tracing::warn!(reason = err.kind(), "abuse report refused: {err}");
                return (
                    error_json(err.refusal().status(), &err.to_string()),
                    err.kind(),
                );
            }
        };
        drop(body);
        if let Some(in_request) = in_request {
            in_request.enter();
        }
        match receive(Submission::Abuse(posted)).await {
            Ok(Answer::Abuse(answer)) => {
                let result = if answer.duplicate {
                    "duplicate"
                } else {
                    "counted"
                };
                let body = serde_json::to_vec(&answer).unwrap_or_default();
                (respond(StatusCode::OK, JSON, Bytes::from(body)), result)
            }
            Ok(Answer::Feedback(_)) => (
                error_json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the receiver answered an abuse report as a feedback report",
                ),
                "refused",
            ),
            Err(refusal) => {
                tracing::warn!("abuse report refused: {refusal}");
                let result = match refusal {
                    FeedbackRefusal::Invalid(_) => "not_ours",
                    _ => "refused",
                };
                (error_json(refusal.status(), &refusal.to_string()), result)
            }
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
                if let Err(refusal) = (self.inner.administer)(&request_head(&request)) {
                    return text(refusal.status(), TEXT, format!("{refusal}\n"));
                }
                let body = match self.read_body(request, MAX_FILTER_BYTES).await {
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
        self.inner.obs.registry().encode()
    }

    /// The whole body, or the response refusing it: 413 over `limit`, 503
    /// when the port holds too many body bytes already, 408 when it does not
    /// arrive within the deadline, 400 when the connection breaks. The body
    /// is copied into one buffer as it arrives and every received piece is
    /// dropped at once, so a body dripped a byte at a time costs its length,
    /// not a buffer per piece.
    async fn read_body<B>(
        &self,
        request: Request<B>,
        limit: usize,
    ) -> Result<Vec<u8>, Response<Full<Bytes>>>
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
        let limit = declared.map_or(limit, |n| n as usize);
        // The budget is taken as bytes arrive, never for what a head merely
        // declares: a body dripped a byte at a time holds a byte of it.
        let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
        let busy = || {
            error_json(
                StatusCode::SERVICE_UNAVAILABLE,
                "the receiver holds too many request bodies at once; retry",
            )
        };
        let evict = request.extensions().get::<InRequest>().cloned();
        let mut body = std::pin::pin!(request.into_body());
        let mut buffer = Vec::new();
        let read = async {
            while let Some(frame) = body.as_mut().frame().await {
                let frame = frame.map_err(|err| {
                    error_json(
                        StatusCode::BAD_REQUEST,
                        &format!("cannot read the body: {err}"),
                    )
                })?;
                if let Ok(data) = frame.into_data() {
                    if buffer.len() + data.len() > limit {
                        return Err(too_large());
                    }
                    let more = u32::try_from(data.len()).map_err(|_| too_large())?;
                    let permit = match self.inner.body_budget.clone().try_acquire_many_owned(more) {
                        Ok(permit) => permit,
                        // Full: the oldest other body reader is closed and
                        // gives its bytes back, so bodies held open cannot
                        // lock reports out.
                        Err(_) if evict.as_ref().is_some_and(InRequest::evict_oldest_reader) => {
                            tokio::time::timeout(
                                BUDGET_WAIT,
                                self.inner.body_budget.clone().acquire_many_owned(more),
                            )
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .ok_or_else(busy)?
                        }
                        Err(_) => return Err(busy()),
                    };
                    match &mut held {
                        Some(held) => held.merge(permit),
                        None => held = Some(permit),
                    }
                    buffer.extend_from_slice(&data);
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.inner.body_read_timeout, read).await {
            Err(_) => Err(error_json(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive in time",
            )),
            Ok(Err(response)) => Err(response),
            Ok(Ok(())) => Ok(buffer),
        }
    }

    fn count_abuse_report(&self, result: &'static str) {
        let mut counts = self
            .inner
            .counters
            .abuse_reports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *counts.entry(result).or_default() += 1;
    }

    fn count_feedback(&self, status: StatusCode) {
        let mut counts = self
            .inner
            .counters
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

fn request_head<B>(request: &Request<B>) -> RequestHead {
    RequestHead {
        bearer: bearer_token(request),
        peer: request.extensions().get::<PeerAddr>().map(|p| p.0),
    }
}

/// `Content-Type: application/json`, parameters (a charset) allowed. A web
/// page cannot send this type across sites without a preflight, which this
/// port never answers.
fn is_json<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(JSON))
}

/// `/healthz` and `/readyz`: the report with 200, or one line per problem with 503.
fn probe(result: Result<ProbeReport, ProbeFailure>) -> Response<Full<Bytes>> {
    match result {
        Ok(report) => text(StatusCode::OK, TEXT, format!("{report}\n")),
        Err(failure) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            format!("{failure}\n"),
        ),
    }
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

/// The refusal body of the feedback API: `{"api_version", "error"}`. A 503
/// (not the leader, starting, busy, cannot store now) says when to retry:
/// the agent keeps the report and waits at least that long.
fn error_json(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"api_version": FEEDBACK_API_VERSION, "error": message});
    let mut response = respond(status, JSON, Bytes::from(body.to_string()));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
    }
    response
}

/// `Retry-After` of a 503: a standby that is about to lead, or a leader
/// whose status write failed, is worth asking again soon.
pub const RETRY_AFTER_SECONDS: &str = "1";

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
