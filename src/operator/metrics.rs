//! The operator's Prometheus metrics, rendered as text exposition format.
//!
//! Counters and gauges live behind one mutex each; a scrape renders them in a
//! stable order (sorted labels), so two scrapes of an idle operator are equal.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the reconcile duration histogram.
const DURATION_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// (ip, provider) → state word, for one pool.
pub type PairStates = BTreeMap<(String, String), String>;
/// (ip, provider) → (complaints, delivered) in the pair's window, for one pool.
pub type PairComplaints = BTreeMap<(String, String), (i64, i64)>;
/// A route's waiting mail: (messages, oldest arrival in Unix seconds, lifetime seconds).
pub type RouteQueueFigures = (i64, i64, Option<i64>);

#[derive(Default)]
pub struct Metrics {
    reconciles: Mutex<BTreeMap<&'static str, u64>>,
    failures: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    durations: Mutex<BTreeMap<&'static str, Histogram>>,
    /// pool key (`ns/name`) → (ip, provider) → state word.
    ip_states: Mutex<BTreeMap<String, PairStates>>,
    /// pool key → the pairs with spam complaints in their window.
    complaints: Mutex<BTreeMap<String, PairComplaints>>,
    /// route key (`ns/name`) → (mode word, target count).
    route_targets: Mutex<BTreeMap<String, (String, usize)>>,
    /// route key → (messages waiting, oldest arrival, lifetime seconds).
    route_queues: Mutex<BTreeMap<String, RouteQueueFigures>>,
    feedback_reports: Mutex<BTreeMap<String, u64>>,
    /// Status writes of counted feedback, and the reports they carried.
    feedback_batches: Mutex<(u64, u64)>,
    /// pool → (drains complete, drains incomplete, messages left by the incomplete).
    drains: Mutex<BTreeMap<String, (u64, u64, u64)>>,
    api_writes: Mutex<BTreeMap<&'static str, u64>>,
    /// kind → stored statuses read only in part and rewritten.
    unreadable_statuses: Mutex<BTreeMap<&'static str, u64>>,
    leader: Mutex<bool>,
}

#[derive(Default, Clone)]
struct Histogram {
    buckets: [u64; DURATION_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, slot) in DURATION_BUCKETS.iter().zip(self.buckets.iter_mut()) {
            if seconds <= *bound {
                *slot += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

impl Metrics {
    pub fn reconciled(&self, controller: &'static str, took: Duration) {
        *lock(&self.reconciles).entry(controller).or_default() += 1;
        lock(&self.durations)
            .entry(controller)
            .or_default()
            .observe(took.as_secs_f64());
    }

    pub fn failed(&self, controller: &'static str, category: &'static str) {
        *lock(&self.failures)
            .entry((controller, category))
            .or_default() += 1;
    }

    /// Replaces every `mailfleet_ip_state` series of one pool.
    pub fn set_pool_states(&self, pool: &str, states: PairStates) {
        lock(&self.ip_states).insert(pool.to_string(), states);
    }

    /// Replaces every complaint series of one pool.
    pub fn set_pool_complaints(&self, pool: &str, complaints: PairComplaints) {
        lock(&self.complaints).insert(pool.to_string(), complaints);
    }

    pub fn forget_pool(&self, pool: &str) {
        lock(&self.ip_states).remove(pool);
        lock(&self.complaints).remove(pool);
        lock(&self.feedback_reports).remove(pool);
    }

    /// Per-object series kept (pools and routes), to show a deleted object
    /// leaves none behind.
    pub fn tracked(&self) -> usize {
        lock(&self.ip_states).len()
            + lock(&self.complaints).len()
            + lock(&self.feedback_reports).len()
            + lock(&self.route_targets).len()
            + lock(&self.route_queues).len()
    }

    pub fn set_route_targets(&self, route: &str, mode: &str, targets: usize) {
        lock(&self.route_targets).insert(route.to_string(), (mode.to_string(), targets));
    }

    pub fn forget_route(&self, route: &str) {
        lock(&self.route_targets).remove(route);
        lock(&self.route_queues).remove(route);
    }

    /// The mail waiting for a route (`None`: none).
    pub fn set_route_queue(&self, route: &str, queue: Option<RouteQueueFigures>) {
        match queue {
            Some(q) => lock(&self.route_queues).insert(route.to_string(), q),
            None => lock(&self.route_queues).remove(route),
        };
    }

    pub fn feedback_report(&self, pool: &str) {
        *lock(&self.feedback_reports)
            .entry(pool.to_string())
            .or_default() += 1;
    }

    /// One status write that counted `reports` feedback reports.
    pub fn feedback_batch(&self, reports: usize) {
        let mut batches = lock(&self.feedback_batches);
        batches.0 += 1;
        batches.1 += reports as u64;
    }

    /// A stopping sender of `pool` reported its drain: `left` messages could
    /// not be handed on and went with the pod.
    pub fn drain(&self, pool: &str, left: u64) {
        let mut drains = lock(&self.drains);
        let entry = drains.entry(pool.to_string()).or_default();
        if left == 0 {
            entry.0 += 1;
        } else {
            entry.1 += 1;
            entry.2 = entry.2.saturating_add(left);
        }
    }

    /// One create, patch or delete sent to the API server (`verb`).
    pub fn api_write(&self, verb: &'static str) {
        *lock(&self.api_writes).entry(verb).or_default() += 1;
    }

    /// A stored status of `kind` could not be read in full and was rewritten.
    pub fn unreadable_status(&self, kind: &'static str) {
        *lock(&self.unreadable_statuses).entry(kind).or_default() += 1;
    }

    pub fn api_writes_total(&self) -> u64 {
        lock(&self.api_writes).values().sum()
    }

    pub fn set_leader(&self, leading: bool) {
        *lock(&self.leader) = leading;
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        header(
            &mut out,
            "mailfleet_reconciles_total",
            "counter",
            "Reconciles run, by controller.",
        );
        for (controller, n) in lock(&self.reconciles).iter() {
            let _ = writeln!(
                out,
                "mailfleet_reconciles_total{{controller=\"{controller}\"}} {n}"
            );
        }
        header(
            &mut out,
            "mailfleet_reconcile_failures_total",
            "counter",
            "Reconciles that failed, by controller and error category.",
        );
        for ((controller, category), n) in lock(&self.failures).iter() {
            let _ = writeln!(
                out,
                "mailfleet_reconcile_failures_total{{controller=\"{controller}\",category=\"{category}\"}} {n}"
            );
        }
        header(
            &mut out,
            "mailfleet_reconcile_duration_seconds",
            "histogram",
            "Time one reconcile took.",
        );
        for (controller, h) in lock(&self.durations).iter() {
            for (bound, n) in DURATION_BUCKETS.iter().zip(h.buckets.iter()) {
                let _ = writeln!(
                    out,
                    "mailfleet_reconcile_duration_seconds_bucket{{controller=\"{controller}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "mailfleet_reconcile_duration_seconds_bucket{{controller=\"{controller}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "mailfleet_reconcile_duration_seconds_sum{{controller=\"{controller}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "mailfleet_reconcile_duration_seconds_count{{controller=\"{controller}\"}} {}",
                h.count
            );
        }
        header(
            &mut out,
            "mailfleet_ip_state",
            "gauge",
            "1 for the current reputation state of each (pool, IP, provider).",
        );
        for (pool, states) in lock(&self.ip_states).iter() {
            for ((ip, provider), state) in states {
                let _ = writeln!(
                    out,
                    "mailfleet_ip_state{{pool=\"{}\",ip=\"{}\",provider=\"{}\",state=\"{}\"}} 1",
                    escape(pool),
                    escape(ip),
                    escape(provider),
                    escape(state)
                );
            }
        }
        let complaints = lock(&self.complaints);
        header(
            &mut out,
            "mailfleet_complaints_window",
            "gauge",
            "Spam complaints in the feedback window of each (pool, IP, provider) that has some.",
        );
        for (pool, pairs) in complaints.iter() {
            for ((ip, provider), (count, _)) in pairs {
                let _ = writeln!(
                    out,
                    "mailfleet_complaints_window{{pool=\"{}\",ip=\"{}\",provider=\"{}\"}} {count}",
                    escape(pool),
                    escape(ip),
                    escape(provider)
                );
            }
        }
        header(
            &mut out,
            "mailfleet_complaint_rate_ratio",
            "gauge",
            "Spam complaints per message delivered in the feedback window of each (pool, IP, provider) with complaints and deliveries.",
        );
        for (pool, pairs) in complaints.iter() {
            for ((ip, provider), (count, delivered)) in pairs {
                if *delivered > 0 {
                    let _ = writeln!(
                        out,
                        "mailfleet_complaint_rate_ratio{{pool=\"{}\",ip=\"{}\",provider=\"{}\"}} {}",
                        escape(pool),
                        escape(ip),
                        escape(provider),
                        *count as f64 / *delivered as f64
                    );
                }
            }
        }
        drop(complaints);
        header(
            &mut out,
            "mailfleet_route_targets",
            "gauge",
            "IPs sending for each route, with the route's mode.",
        );
        for (route, (mode, n)) in lock(&self.route_targets).iter() {
            let _ = writeln!(
                out,
                "mailfleet_route_targets{{route=\"{}\",mode=\"{}\"}} {n}",
                escape(route),
                escape(mode)
            );
        }
        let queues = lock(&self.route_queues);
        header(
            &mut out,
            "mailfleet_route_queue_messages",
            "gauge",
            "Messages waiting for each route in the senders' queues, as their agents last reported.",
        );
        for (route, (messages, _, _)) in queues.iter() {
            let _ = writeln!(
                out,
                "mailfleet_route_queue_messages{{route=\"{}\"}} {messages}",
                escape(route)
            );
        }
        header(
            &mut out,
            "mailfleet_route_queue_oldest_arrival_timestamp_seconds",
            "gauge",
            "When the oldest message waiting for each route arrived.",
        );
        for (route, (_, oldest, _)) in queues.iter() {
            let _ = writeln!(
                out,
                "mailfleet_route_queue_oldest_arrival_timestamp_seconds{{route=\"{}\"}} {oldest}",
                escape(route)
            );
        }
        header(
            &mut out,
            "mailfleet_route_queue_lifetime_seconds",
            "gauge",
            "The shortest maximal_queue_lifetime of the senders holding each route's mail.",
        );
        for (route, (_, _, lifetime)) in queues.iter() {
            if let Some(lifetime) = lifetime {
                let _ = writeln!(
                    out,
                    "mailfleet_route_queue_lifetime_seconds{{route=\"{}\"}} {lifetime}",
                    escape(route)
                );
            }
        }
        drop(queues);
        header(
            &mut out,
            "mailfleet_feedback_reports_total",
            "counter",
            "Agent feedback reports applied, by pool.",
        );
        for (pool, n) in lock(&self.feedback_reports).iter() {
            let _ = writeln!(
                out,
                "mailfleet_feedback_reports_total{{pool=\"{}\"}} {n}",
                escape(pool)
            );
        }
        let drains = lock(&self.drains);
        header(
            &mut out,
            "mailfleet_drains_total",
            "counter",
            "Sender pods that handed their queue on as they stopped, by pool and result (complete, incomplete).",
        );
        for (pool, (complete, incomplete, _)) in drains.iter() {
            for (result, n) in [("complete", complete), ("incomplete", incomplete)] {
                let _ = writeln!(
                    out,
                    "mailfleet_drains_total{{pool=\"{}\",result=\"{result}\"}} {n}",
                    escape(pool)
                );
            }
        }
        header(
            &mut out,
            "mailfleet_drain_left_messages_total",
            "counter",
            "Queued messages stopping sender pods could not hand on in time (they went with the pod), by pool.",
        );
        for (pool, (_, _, left)) in drains.iter() {
            let _ = writeln!(
                out,
                "mailfleet_drain_left_messages_total{{pool=\"{}\"}} {left}",
                escape(pool)
            );
        }
        drop(drains);
        header(
            &mut out,
            "mailfleet_api_writes_total",
            "counter",
            "Mutating requests sent to the API server, by verb.",
        );
        for (verb, n) in lock(&self.api_writes).iter() {
            let _ = writeln!(out, "mailfleet_api_writes_total{{verb=\"{verb}\"}} {n}");
        }
        let (batches, batched) = *lock(&self.feedback_batches);
        header(
            &mut out,
            "mailfleet_feedback_batches_total",
            "counter",
            "Status writes of counted feedback (reports of one pool within the batch delay share one write).",
        );
        let _ = writeln!(out, "mailfleet_feedback_batches_total {batches}");
        header(
            &mut out,
            "mailfleet_feedback_batched_reports_total",
            "counter",
            "Reports counted by those writes.",
        );
        let _ = writeln!(out, "mailfleet_feedback_batched_reports_total {batched}");
        header(
            &mut out,
            "mailfleet_unreadable_status_total",
            "counter",
            "Stored statuses that could not be read in full and were rewritten, by kind (the object's UnreadableStatus event names the fields).",
        );
        for (kind, n) in lock(&self.unreadable_statuses).iter() {
            let _ = writeln!(
                out,
                "mailfleet_unreadable_status_total{{kind=\"{kind}\"}} {n}"
            );
        }
        header(
            &mut out,
            "mailfleet_leader",
            "gauge",
            "1 while this replica holds the leader lease.",
        );
        let _ = writeln!(out, "mailfleet_leader {}", u8::from(*lock(&self.leader)));
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Label values escaped as the exposition format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A poisoned metrics lock only means a panic elsewhere; the counts stay usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_sorted_labels() {
        let m = Metrics::default();
        m.reconciled("senderpool", Duration::from_millis(20));
        m.reconciled("senderpool", Duration::from_millis(700));
        m.failed("domainroute", "config");
        let mut states = BTreeMap::new();
        states.insert(
            ("203.0.113.10".to_string(), "microsoft".to_string()),
            "Blocked".to_string(),
        );
        m.set_pool_states("mail/bulk", states);
        m.set_pool_complaints(
            "mail/bulk",
            BTreeMap::from([(("203.0.113.10".to_string(), "yahoo".to_string()), (6, 2000))]),
        );
        m.set_route_targets("mail/microsoft", "Primary", 7);
        m.feedback_report("mail/bulk");
        m.api_write("patch");
        m.drain("mail/bulk", 0);
        m.drain("mail/bulk", 7);
        m.drain("mail/bulk", 5);
        let text = m.render();
        assert!(text.contains("mailfleet_drains_total{pool=\"mail/bulk\",result=\"complete\"} 1"));
        assert!(text.contains("mailfleet_drains_total{pool=\"mail/bulk\",result=\"incomplete\"} 2"));
        assert!(text.contains("mailfleet_drain_left_messages_total{pool=\"mail/bulk\"} 12"));
        assert!(text.contains("mailfleet_reconciles_total{controller=\"senderpool\"} 2"));
        assert!(text.contains(
            "mailfleet_reconcile_failures_total{controller=\"domainroute\",category=\"config\"} 1"
        ));
        assert!(text.contains(
            "mailfleet_reconcile_duration_seconds_bucket{controller=\"senderpool\",le=\"0.025\"} 1"
        ));
        assert!(text.contains(
            "mailfleet_reconcile_duration_seconds_bucket{controller=\"senderpool\",le=\"1\"} 2"
        ));
        assert!(text.contains("mailfleet_ip_state{pool=\"mail/bulk\",ip=\"203.0.113.10\",provider=\"microsoft\",state=\"Blocked\"} 1"));
        assert!(
            text.contains("mailfleet_route_targets{route=\"mail/microsoft\",mode=\"Primary\"} 7")
        );
        assert!(text.contains("mailfleet_feedback_reports_total{pool=\"mail/bulk\"} 1"));
        assert!(text.contains("mailfleet_complaints_window{pool=\"mail/bulk\",ip=\"203.0.113.10\",provider=\"yahoo\"} 6"));
        assert!(text.contains("mailfleet_complaint_rate_ratio{pool=\"mail/bulk\",ip=\"203.0.113.10\",provider=\"yahoo\"} 0.003"));
        assert_eq!(m.api_writes_total(), 1);
        m.forget_pool("mail/bulk");
        assert!(!m.render().contains("mailfleet_ip_state{"));
        assert!(!m.render().contains("mailfleet_complaint_rate_ratio{"));
    }
}
