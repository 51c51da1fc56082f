//! The HTTP port shared by the operator and standalone mode: one listener for
//! `POST /v1/feedback` (docs/FEEDBACK-API.md), `GET /metrics`, `GET /healthz`,
//! `GET /readyz` and `PUT /log-level`.
//!
//! The port only speaks HTTP: it reads and checks a report, then hands it to a
//! [`FeedbackReceiver`], which decides (token, leadership, counting) and
//! answers; health and metrics come from an [`Observability`]. What a receiver
//! does with a report that it accepts is [`ledger::FeedbackLedger`], the same
//! in both drivers.

mod handler;
pub mod ledger;
mod log_level;

#[cfg(test)]
mod tests;

use std::future::Future;
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
pub use log_level::LogLevelHandle;

/// A client must send its request head within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// After shutdown is asked for, open connections get this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A failed `accept` (out of file descriptors, ...) is retried after this pause.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Decides what happens to a report that passed `FeedbackReport::validate`.
pub trait FeedbackReceiver: Send + Sync + 'static {
    /// `bearer` is the Authorization Bearer token, if any; `report` already
    /// passed `FeedbackReport::validate`. Ok → 200 with the response JSON.
    fn receive(
        &self,
        bearer: Option<String>,
        report: FeedbackReport,
    ) -> impl Future<Output = Result<FeedbackResponse, FeedbackRefusal>> + Send;
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
            FeedbackRefusal::Invalid(_) => http::StatusCode::UNPROCESSABLE_ENTITY,
            FeedbackRefusal::Unavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// What the port reports about the process it serves.
pub trait Observability: Send + Sync + 'static {
    /// Prometheus text exposition; the port appends its own request counters.
    fn metrics(&self) -> String;
    /// `/healthz`: Ok(body) answers 200, Err(body) 503.
    fn health(&self) -> Result<String, String>;
    /// `/readyz`: Ok(body) answers 200, Err(body) 503.
    fn ready(&self) -> Result<String, String>;
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
    let state = HttpState::new(receiver, obs, log_level);
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    let shutdown = std::pin::pin!(shutdown);
    let mut shutdown = shutdown;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(connection(stream, state.clone(), stopping.clone()));
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
    state: HttpState,
    mut stopping: watch::Receiver<bool>,
) {
    let service = service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(state.handle(request).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "connection ended with an error");
            }
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
