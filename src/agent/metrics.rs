//! The agent's `/metrics` (Prometheus text format 0.0.4) and the listener that
//! serves it. Counters start at zero when the agent starts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;

use crate::agent::http::{read_request_line, write_response};
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

/// Serves `/metrics` and `/healthz` until `stop` is set.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>, stop: Arc<AtomicBool>) {
    if listener.set_nonblocking(true).is_err() {
        tracing::error!("metrics listener cannot be polled; /metrics is not served");
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let answer = match read_request_line(&mut stream, Duration::from_secs(2)) {
                    Ok((method, path)) if method == "GET" && path == "/metrics" => write_response(
                        &mut stream,
                        "200 OK",
                        "text/plain; version=0.0.4; charset=utf-8",
                        metrics.render().as_bytes(),
                    ),
                    Ok((method, path)) if method == "GET" && path == "/healthz" => {
                        write_response(&mut stream, "200 OK", "text/plain", b"ok\n")
                    }
                    Ok(_) => write_response(
                        &mut stream,
                        "404 Not Found",
                        "text/plain",
                        b"GET /metrics or /healthz\n",
                    ),
                    Err(_) => Ok(()),
                };
                if let Err(e) = answer {
                    tracing::debug!("metrics client went away: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => {
                tracing::warn!("metrics listener: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reputation::postfix_log::Skip;

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
