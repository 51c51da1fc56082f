//! The agent's `/metrics` (Prometheus text format 0.0.4) and the listener that
//! serves it. Counters start at zero when the agent starts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;

use crate::agent::line::LineSkip;
use crate::agent::report::{Dropped, QueueReport};
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
    /// Complaint reports read from the complaints folder, by result.
    complaint_reports: BTreeMap<&'static str, u64>,
    config_applies: BTreeMap<&'static str, u64>,
    config_version: Option<String>,
    last_report_success: Option<Timestamp>,
    queue: Option<(QueueReport, f64)>,
}

/// Shared by the agent's threads.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
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

    /// `result`: `counted`, or why a complaint report was skipped.
    pub fn complaint_reports(&self, result: &'static str, n: u64) {
        *self.lock().complaint_reports.entry(result).or_default() += n;
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

    pub fn render(&self) -> String {
        let inner = self.lock();
        let mut out = String::new();
        family(
            &mut out,
            "mailfleet_agent_attempts_total",
            "counter",
            "Delivery attempts read from the log, by provider, outcome and category.",
        );
        for (provider, cells) in &inner.attempts {
            for outcome in Outcome::ALL {
                for category in Category::ALL {
                    let n = cells[outcome as usize][category as usize];
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "mailfleet_agent_attempts_total{{provider=\"{}\",outcome=\"{outcome}\",category=\"{category}\"}} {n}",
                            escape(provider)
                        );
                    }
                }
            }
        }
        family(
            &mut out,
            "mailfleet_agent_lines_total",
            "counter",
            "Log lines read.",
        );
        let _ = writeln!(out, "mailfleet_agent_lines_total {}", inner.lines_read);
        family(
            &mut out,
            "mailfleet_agent_lines_skipped_total",
            "counter",
            "Log lines that were not delivery attempts, by reason.",
        );
        for (word, n) in LineSkip::WORDS.iter().zip(inner.skipped) {
            let _ = writeln!(
                out,
                "mailfleet_agent_lines_skipped_total{{reason=\"{word}\"}} {n}"
            );
        }
        family(
            &mut out,
            "mailfleet_agent_reports_sent_total",
            "counter",
            "Reports the feedback endpoint acknowledged.",
        );
        let _ = writeln!(
            out,
            "mailfleet_agent_reports_sent_total {}",
            inner.reports_sent
        );
        family(
            &mut out,
            "mailfleet_agent_reports_duplicate_total",
            "counter",
            "Acknowledged reports the endpoint had already counted (a retry after a lost answer).",
        );
        let _ = writeln!(
            out,
            "mailfleet_agent_reports_duplicate_total {}",
            inner.reports_duplicate
        );
        family(&mut out, "mailfleet_agent_reports_failed_total", "counter", "Report attempts that failed, by reason; the report is retried unless the reason is rejected.");
        for (reason, n) in &inner.reports_failed {
            let _ = writeln!(
                out,
                "mailfleet_agent_reports_failed_total{{reason=\"{reason}\"}} {n}"
            );
        }
        family(
            &mut out,
            "mailfleet_agent_reports_buffered",
            "gauge",
            "Reports waiting for the endpoint's acknowledgement.",
        );
        let _ = writeln!(
            out,
            "mailfleet_agent_reports_buffered {}",
            inner.reports_buffered
        );
        family(
            &mut out,
            "mailfleet_agent_dropped_total",
            "counter",
            "What the agent had to leave out of its reports, by kind.",
        );
        let d = &inner.dropped;
        for (what, n) in [
            ("conclusive_replies", d.conclusive_replies),
            ("reports", d.reports),
            ("attempts", d.attempts),
            ("log_files", d.log_files),
        ] {
            let _ = writeln!(out, "mailfleet_agent_dropped_total{{what=\"{what}\"}} {n}");
        }
        family(
            &mut out,
            "mailfleet_agent_log_events_total",
            "counter",
            "Log file events: opened, rotated, truncated, replaced, drained, lost, read_error ...",
        );
        for (kind, n) in &inner.log_events {
            let _ = writeln!(
                out,
                "mailfleet_agent_log_events_total{{event=\"{kind}\"}} {n}"
            );
        }
        family(
            &mut out,
            "mailfleet_agent_complaint_reports_total",
            "counter",
            "Abuse feedback reports read from the complaints folder, by result: counted, or why skipped.",
        );
        for (result, n) in &inner.complaint_reports {
            let _ = writeln!(
                out,
                "mailfleet_agent_complaint_reports_total{{result=\"{result}\"}} {n}"
            );
        }
        family(
            &mut out,
            "mailfleet_agent_config_applies_total",
            "counter",
            "Sender configuration changes seen, by result.",
        );
        for (result, n) in &inner.config_applies {
            let _ = writeln!(
                out,
                "mailfleet_agent_config_applies_total{{result=\"{result}\"}} {n}"
            );
        }
        if let Some(version) = &inner.config_version {
            family(
                &mut out,
                "mailfleet_agent_config_info",
                "gauge",
                "The sender configuration version applied.",
            );
            let _ = writeln!(
                out,
                "mailfleet_agent_config_info{{version=\"{}\"}} 1",
                escape(version)
            );
        }
        if let Some(at) = inner.last_report_success {
            family(
                &mut out,
                "mailfleet_agent_last_report_success_timestamp_seconds",
                "gauge",
                "When the endpoint last acknowledged a report.",
            );
            let _ = writeln!(
                out,
                "mailfleet_agent_last_report_success_timestamp_seconds {}",
                at.as_second()
            );
        }
        if let Some((queue, seconds)) = &inner.queue {
            render_queue(&mut out, queue, *seconds);
        }
        out
    }
}

/// Ages are taken from the arrival times at scrape time, so a queue read a
/// minute ago still shows today's age.
fn render_queue(out: &mut String, queue: &QueueReport, read_seconds: f64) {
    let now = Timestamp::now().as_second();
    family(
        out,
        "mailfleet_agent_queue_messages",
        "gauge",
        "Messages in the sender's queue (postqueue -j), in total and per route with waiting mail.",
    );
    let _ = writeln!(out, "mailfleet_agent_queue_messages {}", queue.messages);
    for r in &queue.routes {
        let _ = writeln!(
            out,
            "mailfleet_agent_queue_messages{{route=\"{}/{}\",provider=\"{}\"}} {}",
            escape(&r.namespace),
            escape(&r.route),
            escape(&r.provider),
            r.messages
        );
    }
    family(
        out,
        "mailfleet_agent_queue_oldest_age_seconds",
        "gauge",
        "Age of the oldest queued message, in total and per route.",
    );
    if let Some(oldest) = queue.oldest_arrival {
        let _ = writeln!(
            out,
            "mailfleet_agent_queue_oldest_age_seconds {}",
            (now - oldest.as_second()).max(0)
        );
    }
    for r in &queue.routes {
        let _ = writeln!(
            out,
            "mailfleet_agent_queue_oldest_age_seconds{{route=\"{}/{}\",provider=\"{}\"}} {}",
            escape(&r.namespace),
            escape(&r.route),
            escape(&r.provider),
            (now - r.oldest_arrival.as_second()).max(0)
        );
    }
    if let Some(lifetime) = queue.maximal_lifetime_seconds {
        family(
            out,
            "mailfleet_agent_queue_lifetime_seconds",
            "gauge",
            "The sender's maximal_queue_lifetime: queued mail older than this is returned to its sender.",
        );
        let _ = writeln!(out, "mailfleet_agent_queue_lifetime_seconds {lifetime}");
    }
    family(
        out,
        "mailfleet_agent_queue_read_seconds",
        "gauge",
        "How long the last queue read took.",
    );
    let _ = writeln!(out, "mailfleet_agent_queue_read_seconds {read_seconds:.3}");
    family(
        out,
        "mailfleet_agent_queue_read_complete",
        "gauge",
        "1 when the last queue read listed the whole queue.",
    );
    let _ = writeln!(
        out,
        "mailfleet_agent_queue_read_complete {}",
        u8::from(queue.complete)
    );
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
    pub fn start(listener: std::net::TcpListener, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let runtime = crate::agent::http::runtime();
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = runtime.spawn(accept_until(listener, metrics, stopped));
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
    metrics: Arc<Metrics>,
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
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let answer = answer(&metrics, &request);
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
    metrics: &Metrics,
    request: &http::Request<B>,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&http::Method::GET, "/metrics") => (
            http::StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render().into_bytes(),
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
        let metrics = Arc::new(Metrics::default());
        metrics.report_failed("timeout");
        let server = MetricsServer::start(listener, Arc::clone(&metrics)).unwrap();

        let answer = get(address, "/metrics");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("text/plain; version=0.0.4"), "{answer}");
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
