//! The agent's metrics, written into its process registry
//! ([`crate::metrics`]) at each scrape, and the listener that serves
//! `/metrics`. Counters start at zero when the agent starts.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use prometheus_client::encoding::DescriptorEncoder;

use crate::agent::line::LineSkip;
use crate::agent::report::{Dropped, QueueReport};
use crate::metrics::{family, single, Families, Kind, ProcessRegistry, CONTENT_TYPE};
use crate::vocab::{Category, Outcome};

type Cells = [[u64; Category::ALL.len()]; Outcome::ALL.len()];

#[derive(Debug, Default)]
struct Inner {
    attempts: BTreeMap<String, Cells>,
    lines_read: u64,
    skipped: [u64; LineSkip::WORDS.len()],
    reports_sent: u64,
    reports_duplicate: u64,
    reports_failed: BTreeMap<&'static str, u64>,
    reports_buffered: u64,
    dropped: Dropped,
    log_events: BTreeMap<&'static str, u64>,
    config_applies: BTreeMap<&'static str, u64>,
    config_version: Option<String>,
    last_report_success: Option<Timestamp>,
    queue: Option<(QueueReport, f64)>,
}

/// Shared by the agent's threads; clones share the counts.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
}

impl Metrics {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not take the metrics down with it.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn attempt(&self, provider: &str, outcome: Outcome, category: Category) {
        let mut inner = self.lock();
        inner.lines_read += 1;
        if !inner.attempts.contains_key(provider) {
            inner
                .attempts
                .insert(provider.to_string(), Cells::default());
        }
        if let Some(cells) = inner.attempts.get_mut(provider) {
            cells[outcome as usize][category as usize] += 1;
        }
    }

    pub fn skipped(&self, skip: LineSkip) {
        let mut inner = self.lock();
        inner.lines_read += 1;
        inner.skipped[skip.index()] += 1;
    }

    pub fn report_sent(&self, duplicate: bool, at: Timestamp) {
        let mut inner = self.lock();
        inner.reports_sent += 1;
        if duplicate {
            inner.reports_duplicate += 1;
        }
        inner.last_report_success = Some(at);
    }

    /// `reason`: connect, timeout, io, bad_response, too_large, tls, token, http_4xx, http_5xx, unauthorized, rejected.
    pub fn report_failed(&self, reason: &'static str) {
        *self.lock().reports_failed.entry(reason).or_default() += 1;
    }

    pub fn set_buffered(&self, reports: usize) {
        self.lock().reports_buffered = reports as u64;
    }

    /// The latest queue read and how long it took, seconds.
    pub fn set_queue(&self, queue: &QueueReport, read_seconds: f64) {
        self.lock().queue = Some((queue.clone(), read_seconds));
    }

    pub fn set_dropped(&self, dropped: &Dropped) {
        self.lock().dropped = dropped.clone();
    }

    pub fn log_event(&self, kind: &'static str) {
        *self.lock().log_events.entry(kind).or_default() += 1;
    }

    /// `result`: applied, unchanged, failed.
    pub fn config_apply(&self, result: &'static str, version: Option<&str>) {
        let mut inner = self.lock();
        *inner.config_applies.entry(result).or_default() += 1;
        if let Some(v) = version {
            inner.config_version = Some(v.to_string());
        }
    }

    /// Attempts counted so far for one row (for tests and logs).
    pub fn attempts_of(&self, provider: &str, outcome: Outcome, category: Category) -> u64 {
        self.lock()
            .attempts
            .get(provider)
            .map_or(0, |c| c[outcome as usize][category as usize])
    }

    /// This source alone, as Prometheus text.
    pub fn render(&self) -> String {
        crate::metrics::render(self)
    }
}

type Labels = Vec<(&'static str, String)>;

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

impl Families for Metrics {
    fn encode(&self, out: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let inner = self.lock();
        family(
            out,
            "mailfleet_agent_attempts_total",
            "Delivery attempts read from the log, by provider, outcome and category.",
            Kind::Counter,
            inner.attempts.iter().flat_map(|(provider, cells)| {
                Outcome::ALL.into_iter().flat_map(move |outcome| {
                    Category::ALL.into_iter().filter_map(move |category| {
                        let n = cells[outcome as usize][category as usize];
                        (n > 0).then(|| {
                            (
                                labels([
                                    ("provider", provider),
                                    ("outcome", &outcome.to_string()),
                                    ("category", &category.to_string()),
                                ]),
                                n,
                            )
                        })
                    })
                })
            }),
        )?;
        single(
            out,
            "mailfleet_agent_lines_total",
            "Log lines read.",
            Kind::Counter,
            inner.lines_read,
        )?;
        family(
            out,
            "mailfleet_agent_lines_skipped_total",
            "Log lines that were not delivery attempts, by reason.",
            Kind::Counter,
            LineSkip::WORDS
                .iter()
                .zip(inner.skipped)
                .map(|(word, n)| (labels([("reason", word)]), n)),
        )?;
        single(
            out,
            "mailfleet_agent_reports_sent_total",
            "Reports the feedback endpoint acknowledged.",
            Kind::Counter,
            inner.reports_sent,
        )?;
        single(
            out,
            "mailfleet_agent_reports_duplicate_total",
            "Acknowledged reports the endpoint had already counted (a retry after a lost answer).",
            Kind::Counter,
            inner.reports_duplicate,
        )?;
        family(
            out,
            "mailfleet_agent_reports_failed_total",
            "Report attempts that failed, by reason; the report is retried unless the reason is rejected.",
            Kind::Counter,
            inner
                .reports_failed
                .iter()
                .map(|(reason, n)| (labels([("reason", reason)]), *n)),
        )?;
        single(
            out,
            "mailfleet_agent_reports_buffered",
            "Reports waiting for the endpoint's acknowledgement.",
            Kind::Gauge,
            inner.reports_buffered,
        )?;
        let d = &inner.dropped;
        family(
            out,
            "mailfleet_agent_dropped_total",
            "What the agent had to leave out of its reports, by kind.",
            Kind::Counter,
            [
                ("conclusive_replies", d.conclusive_replies),
                ("reports", d.reports),
                ("attempts", d.attempts),
                ("log_files", d.log_files),
            ]
            .map(|(what, n)| (labels([("what", what)]), n)),
        )?;
        family(
            out,
            "mailfleet_agent_log_events_total",
            "Log file events: opened, rotated, truncated, replaced, drained, lost, read_error ...",
            Kind::Counter,
            inner
                .log_events
                .iter()
                .map(|(kind, n)| (labels([("event", kind)]), *n)),
        )?;
        family(
            out,
            "mailfleet_agent_config_applies_total",
            "Sender configuration changes seen, by result.",
            Kind::Counter,
            inner
                .config_applies
                .iter()
                .map(|(result, n)| (labels([("result", result)]), *n)),
        )?;
        if let Some(version) = &inner.config_version {
            family(
                out,
                "mailfleet_agent_config_info",
                "The sender configuration version applied.",
                Kind::Gauge,
                [(labels([("version", version)]), 1i64)],
            )?;
        }
        if let Some(at) = inner.last_report_success {
            single(
                out,
                "mailfleet_agent_last_report_success_timestamp_seconds",
                "When the endpoint last acknowledged a report.",
                Kind::Gauge,
                at.as_second(),
            )?;
        }
        if let Some((queue, seconds)) = &inner.queue {
            encode_queue(out, queue, *seconds)?;
        }
        Ok(())
    }
}

/// Ages are taken from the arrival times at scrape time, so a queue read a
/// minute ago still shows today's age.
fn encode_queue(
    out: &mut DescriptorEncoder<'_>,
    queue: &QueueReport,
    read_seconds: f64,
) -> fmt::Result {
    let now = Timestamp::now().as_second();
    let route = |r: &crate::agent::report::RouteQueueReport| {
        labels([
            ("route", &format!("{}/{}", r.namespace, r.route)),
            ("provider", &r.provider),
        ])
    };
    family(
        out,
        "mailfleet_agent_queue_messages",
        "Messages in the sender's queue (postqueue -j), in total and per route with waiting mail.",
        Kind::Gauge,
        std::iter::once((Labels::new(), queue.messages))
            .chain(queue.routes.iter().map(|r| (route(r), r.messages))),
    )?;
    let total_age = queue
        .oldest_arrival
        .map(|oldest| (Labels::new(), (now - oldest.as_second()).max(0)));
    family(
        out,
        "mailfleet_agent_queue_oldest_age_seconds",
        "Age of the oldest queued message, in total and per route.",
        Kind::Gauge,
        total_age.into_iter().chain(
            queue
                .routes
                .iter()
                .map(|r| (route(r), (now - r.oldest_arrival.as_second()).max(0))),
        ),
    )?;
    if let Some(lifetime) = queue.maximal_lifetime_seconds {
        single(
            out,
            "mailfleet_agent_queue_lifetime_seconds",
            "The sender's maximal_queue_lifetime: queued mail older than this is returned to its sender.",
            Kind::Gauge,
            lifetime,
        )?;
    }
    single(
        out,
        "mailfleet_agent_queue_read_seconds",
        "How long the last queue read took.",
        Kind::Gauge,
        (read_seconds * 1000.0).round() / 1000.0,
    )?;
    single(
        out,
        "mailfleet_agent_queue_read_complete",
        "1 when the last queue read listed the whole queue.",
        Kind::Gauge,
        queue.complete,
    )
}

/// The `/metrics` and `/healthz` server of the agent, on hyper like every
/// other port of mailfleet; it runs on the agent's HTTP runtime until dropped
/// or [`stop`](MetricsServer::stop)ped.
pub struct MetricsServer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// A client that sends no head within this long is dropped.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests are one line and a few headers.
const MAX_HEAD_BYTES: usize = 16 * 1024;

impl MetricsServer {
    /// Serves `listener` (already bound, so the caller reports a busy port).
    pub fn start(
        listener: std::net::TcpListener,
        registry: ProcessRegistry,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let runtime = crate::agent::http::runtime();
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = runtime.spawn(accept_until(listener, registry, stopped));
        Ok(MetricsServer { stop, task })
    }

    /// Stops accepting and waits for the accept loop to end.
    pub fn stop(self) {
        let MetricsServer { stop, task } = self;
        let _ = stop.send(());
        let _ = crate::agent::http::runtime().block_on(task);
    }
}

async fn accept_until(
    listener: tokio::net::TcpListener,
    registry: ProcessRegistry,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("metrics listener: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let answer = answer(&registry, &request);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .keep_alive(false);
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = builder.serve_connection(io, service).await {
                tracing::debug!("metrics client: {e}");
            }
        });
    }
}

fn answer<B>(
    registry: &ProcessRegistry,
    request: &http::Request<B>,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&http::Method::GET, "/metrics") => (
            http::StatusCode::OK,
            CONTENT_TYPE,
            registry.encode().into_bytes(),
        ),
        (&http::Method::GET, "/healthz") => (http::StatusCode::OK, "text/plain", b"ok\n".to_vec()),
        _ => (
            http::StatusCode::NOT_FOUND,
            "text/plain",
            b"GET /metrics or /healthz\n".to_vec(),
        ),
    };
    let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reputation::postfix_log::Skip;

    fn get(address: std::net::SocketAddr, path: &str) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn serves_metrics_and_health_until_stopped() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let metrics = Metrics::default();
        metrics.report_failed("timeout");
        let registry = ProcessRegistry::new();
        registry.register(metrics.clone());
        let server = MetricsServer::start(listener, registry).unwrap();

        let answer = get(address, "/metrics");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("text/plain; version=0.0.4"), "{answer}");
        assert!(answer.contains("mailfleet_build_info{"), "{answer}");
        assert!(
            answer.contains("mailfleet_agent_reports_failed_total{reason=\"timeout\"} 1"),
            "{answer}"
        );
        assert!(get(address, "/healthz").ends_with("ok\n"));
        assert!(get(address, "/other").starts_with("HTTP/1.1 404"));

        server.stop();
        assert!(
            std::net::TcpStream::connect(address).is_err(),
            "the port is closed once stopped"
        );
    }

    #[test]
    fn renders_every_family_in_text_format() {
        let m = Metrics::default();
        m.attempt("microsoft", Outcome::Deferred, Category::IpBlocklisted);
        m.attempt("microsoft", Outcome::Deferred, Category::IpBlocklisted);
        m.skipped(LineSkip::Log(Skip::Binary));
        m.report_failed("timeout");
        m.report_sent(true, "2021-11-05T08:10:00Z".parse().unwrap());
        m.set_dropped(&Dropped {
            conclusive_replies: 4,
            ..Dropped::default()
        });
        m.config_apply("applied", Some("v\"1"));
        let text = m.render();
        for want in [
            "mailfleet_agent_attempts_total{provider=\"microsoft\",outcome=\"deferred\",category=\"ip_blocklisted\"} 2",
            "mailfleet_agent_lines_total 3",
            "mailfleet_agent_lines_skipped_total{reason=\"binary\"} 1",
            "mailfleet_agent_reports_failed_total{reason=\"timeout\"} 1",
            "mailfleet_agent_reports_duplicate_total 1",
            "mailfleet_agent_dropped_total{what=\"conclusive_replies\"} 4",
            "mailfleet_agent_config_info{version=\"v\\\"1\"} 1",
            "mailfleet_agent_last_report_success_timestamp_seconds 1636099800",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        assert_eq!(
            m.attempts_of("microsoft", Outcome::Deferred, Category::IpBlocklisted),
            2
        );
    }
}
