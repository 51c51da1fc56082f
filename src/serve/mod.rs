//! The HTTP port shared by the operator and standalone mode: one listener for
//! `POST /v1/feedback` (docs/FEEDBACK-API.md), `POST /v1/abuse-reports`, `GET /metrics`, `GET /healthz`,
//! `GET /readyz` and `PUT /log-level`.
//!
//! The port only speaks HTTP: it reads and checks a report, then hands it to a
//! [`FeedbackReceiver`], which decides (token, leadership, counting) and
//! answers; health and metrics come from an [`Observability`]. What a receiver
//! does with a report that it accepts is [`ledger::FeedbackLedger`], the same
//! in both drivers.

pub mod abuse;
mod handler;
mod health;
pub mod ledger;
mod limits;
mod log_level;
mod tls;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::agent::report::{FeedbackReport, FeedbackResponse};

pub use handler::HttpState;
pub use health::{ProbeFailure, ProbeProblem, ProbeReport, ProblemCategory};
pub use limits::ServeLimits;
pub use log_level::{LogFilterError, LogLevelHandle};
pub use tls::{TlsError, TlsFiles};

use limits::{ConnectionSlots, PeerAddr};

/// After shutdown is asked for, open connections get this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A failed `accept` (out of file descriptors, ...) is retried after this pause.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// What the port knows about a request before it reads any of its body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestHead {
    /// The token of `Authorization: Bearer <token>`, if any.
    pub bearer: Option<String>,
    /// The TCP peer; `None` when the request did not come over a socket
    /// (in-process tests).
    pub peer: Option<SocketAddr>,
}

impl RequestHead {
    /// A request from this machine (or from no socket at all): `kubectl
    /// port-forward` arrives on the pod's loopback.
    pub fn is_local(&self) -> bool {
        self.peer.is_none_or(|p| p.ip().is_loopback())
    }
}

/// Decides what happens to a feedback request, in two steps: who sends it,
/// from its head alone, before a single body byte is read (a refusal costs
/// no memory); then the report, once read and validated.
///
/// The operator's receiver plugs in the same way as standalone mode's: its
/// `Caller` is the reviewed ServiceAccount's pod, standalone's the sender
/// a token belongs to.
pub trait FeedbackReceiver: Send + Sync + 'static {
    /// Who a request comes from, as [`authenticate`](Self::authenticate)
    /// found it; handed to [`receive`](Self::receive) with the report.
    type Caller: Send + 'static;

    /// Checks the request head (token, peer). Err answers at once, before
    /// the body is read.
    fn authenticate(
        &self,
        head: &RequestHead,
    ) -> impl Future<Output = Result<Self::Caller, FeedbackRefusal>> + Send;

    /// `report` already passed `FeedbackReport::validate`. Ok → 200 with
    /// the response JSON; Ok must mean the report is stored.
    fn receive(
        &self,
        caller: Self::Caller,
        report: FeedbackReport,
    ) -> impl Future<Output = Result<FeedbackResponse, FeedbackRefusal>> + Send;

    /// An abuse feedback report posted to `POST /v1/abuse-reports`, read
    /// and bounded already ([`abuse::read_posted`]). Ok → 200 with the
    /// answer; Ok must mean its complaint is stored. A receiver that counts
    /// no complaints keeps the default, which refuses it.
    fn receive_abuse_report(
        &self,
        caller: Self::Caller,
        report: abuse::PostedAbuseReport,
    ) -> impl Future<Output = Result<abuse::AbuseReportAnswer, FeedbackRefusal>> + Send {
        let _ = (caller, report);
        async {
            Err(FeedbackRefusal::Invalid(
                "this receiver counts no abuse reports".into(),
            ))
        }
    }

    /// Whether `head` may change the log level (`PUT /log-level`). By
    /// default only from this machine: `kubectl port-forward`, never the
    /// network.
    fn may_administer(&self, head: &RequestHead) -> Result<(), FeedbackRefusal> {
        if head.is_local() {
            Ok(())
        } else {
            Err(FeedbackRefusal::Forbidden(
                "the log level is changed from this machine only (kubectl port-forward)".into(),
            ))
        }
    }
}

/// Why a receiver refuses a report; each maps to the status the agent acts on
/// (docs/FEEDBACK-API.md, Status codes). The text is the response's `error`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FeedbackRefusal {
    /// 401: no token, or not a token the receiver accepts. The agent retries.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a valid token that may not report for this IP or pool. The agent retries.
    #[error("{0}")]
    Forbidden(String),
    /// 400: a body that is not what the path reads (an abuse report that
    /// does not parse). The sender drops it.
    #[error("{0}")]
    BadRequest(String),
    /// 422: a report that can never be counted (unknown IP, wrong pool). The agent drops it.
    #[error("{0}")]
    Invalid(String),
    /// 503: not now (not the leader, not ready). The agent retries.
    #[error("{0}")]
    Unavailable(String),
}

impl FeedbackRefusal {
    pub fn status(&self) -> http::StatusCode {
        match self {
            FeedbackRefusal::Unauthorized(_) => http::StatusCode::UNAUTHORIZED,
            FeedbackRefusal::Forbidden(_) => http::StatusCode::FORBIDDEN,
            FeedbackRefusal::BadRequest(_) => http::StatusCode::BAD_REQUEST,
            FeedbackRefusal::Invalid(_) => http::StatusCode::UNPROCESSABLE_ENTITY,
            FeedbackRefusal::Unavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// What the port reports about the process it serves.
pub trait Observability: Send + Sync + 'static {
    /// The process's metrics registry; the port registers its own request
    /// counters in it and serves it on `/metrics`.
    fn registry(&self) -> &crate::metrics::ProcessRegistry;
    /// `/healthz`: Ok answers 200 with the report, Err 503 with each problem.
    fn health(&self) -> Result<ProbeReport, ProbeFailure>;
    /// `/readyz`: Ok answers 200 with the report, Err 503 with each problem.
    fn ready(&self) -> Result<ProbeReport, ProbeFailure>;
}

/// Serves the port on `listener` until `shutdown` completes, then stops
/// accepting and gives open connections a few seconds to finish.
pub async fn serve<R: FeedbackReceiver, O: Observability>(
    listener: TcpListener,
    receiver: Arc<R>,
    obs: Arc<O>,
    log_level: Option<LogLevelHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_on(
        listener,
        None,
        receiver,
        obs,
        log_level,
        ServeLimits::default(),
        shutdown,
    )
    .await
}

/// [`serve`] with other limits than the defaults, over TLS when `tls` is given: each connection's handshake
/// must end within the header read timeout, or the connection is closed (a
/// slow handshake is the TLS form of a slow request head).
pub async fn serve_on<R: FeedbackReceiver, O: Observability>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    receiver: Arc<R>,
    obs: Arc<O>,
    log_level: Option<LogLevelHandle>,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = HttpState::with_limits(receiver, obs, log_level, limits.clone());
    let slots = ConnectionSlots::new(limits.max_connections);
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    let shutdown = std::pin::pin!(shutdown);
    let mut shutdown = shutdown;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Full of connections all inside a request: this one is
                    // closed at once, which costs nothing to keep.
                    let Some(slot) = slots.open() else {
                        state.count_refused_connection();
                        drop(stream);
                        continue;
                    };
                    connections.spawn(connection(
                        stream,
                        tls.clone(),
                        peer,
                        state.clone(),
                        limits.clone(),
                        slot,
                        stopping.clone(),
                    ));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot accept a connection; retrying");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "closing connections that did not finish in time"
        );
        connections.abort_all();
    }
    Ok(())
}

async fn connection(
    stream: tokio::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    peer: SocketAddr,
    state: HttpState,
    limits: ServeLimits,
    slot: limits::Slot,
    stopping: watch::Receiver<bool>,
) {
    let Some(tls) = tls else {
        return exchange(TokioIo::new(stream), peer, state, limits, slot, stopping).await;
    };
    // One deadline for the first byte and the handshake: the bound of a request head.
    let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first)) => peeked,
        () = slot.evicted() => return,
    };
    match peeked {
        Ok(Ok(1)) if first[0] != TLS_HANDSHAKE_RECORD && first[0].is_ascii_uppercase() => {
            state.count_plain_http_refused();
            return refuse_plain_http(stream, peer, deadline).await;
        }
        Ok(Ok(1)) => {}
        _ => return tracing::debug!(%peer, "connection closed or silent before a TLS handshake"),
    }
    let handshake = tokio::select! {
        done = tokio::time::timeout_at(deadline, tls.accept(stream)) => done,
        () = slot.evicted() => return,
    };
    match handshake {
        Ok(Ok(stream)) => exchange(TokioIo::new(stream), peer, state, limits, slot, stopping).await,
        Ok(Err(err)) => tracing::debug!(%peer, error = %err, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake not finished in time"),
    }
}

/// The first byte of a TLS ClientHello (a handshake record); a plain HTTP
/// request starts with its method, an upper-case letter.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Answers a plain-HTTP request on the TLS port with a 400 that says why,
/// instead of a closed connection the client cannot explain. hyper reads the
/// request and writes the answer; the connection closes after it.
async fn refuse_plain_http(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
) {
    const BODY: &str =
        "this port speaks TLS: use https:// (the agents trust the CA in MAILFLEET_FEEDBACK_CA)\n";
    tracing::debug!(%peer, "plain HTTP on the TLS port: answered 400");
    let service = service_fn(|_request: http::Request<hyper::body::Incoming>| async {
        let mut response = http::Response::new(http_body_util::Full::new(
            hyper::body::Bytes::from_static(BODY.as_bytes()),
        ));
        *response.status_mut() = http::StatusCode::BAD_REQUEST;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Ok::<_, std::convert::Infallible>(response)
    });
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(false)
        .max_buf_size(limits::READ_BUFFER_BYTES);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout_at(deadline, conn).await;
}

/// The HTTP exchanges of one connection, plain or TLS.
async fn exchange<I>(
    io: TokioIo<I>,
    peer: SocketAddr,
    state: HttpState,
    limits: ServeLimits,
    slot: limits::Slot,
    mut stopping: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let in_request = slot.in_request();
    let service = service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
        let state = state.clone();
        let in_request = in_request.clone();
        request.extensions_mut().insert(PeerAddr(peer));
        request.extensions_mut().insert(in_request.clone());
        async move {
            let response = state.handle(request).await;
            in_request.leave();
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits::READ_BUFFER_BYTES);
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        }
        () = slot.evicted() => {
            tracing::debug!(%peer, "closing a connection to make room for a new one");
        }
        () = stop_asked(&mut stopping) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn stop_asked(stopping: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across the caller's awaits.
    let _ = stopping.wait_for(|stop| *stop).await.map(|_| ());
}
