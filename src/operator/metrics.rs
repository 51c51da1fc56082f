//! The operator's metrics: its counts, written into the process registry
//! ([`crate::metrics`]) at each scrape.
//!
//! Counters and gauges live behind one mutex each; a scrape writes them in a
//! stable order (sorted labels), so two scrapes of an idle operator are equal.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::DescriptorEncoder;

use crate::metrics::catalogue::{
    ip_state_rows, API_WRITES, DRAINS, DRAIN_LEFT, FEEDBACK_BATCHED_REPORTS, FEEDBACK_BATCHES,
    FEEDBACK_REPORTS, IP_STATE, LEADER, RECONCILES, RECONCILE_DURATION, RECONCILE_FAILURES,
    ROUTE_QUEUE_LIFETIME, ROUTE_QUEUE_MESSAGES, ROUTE_QUEUE_OLDEST, ROUTE_TARGETS,
    UNREADABLE_STATUS,
};
use crate::metrics::Families;

/// Upper bounds (seconds) of the reconcile duration histogram.
const DURATION_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// (ip, provider) → state word, for one pool.
pub type PairStates = BTreeMap<(String, String), String>;
/// A route's waiting mail: (messages, oldest arrival in Unix seconds, lifetime seconds).
pub type RouteQueueFigures = (i64, i64, Option<i64>);

/// Cheap to clone: clones share the counts (the registry holds one).
#[derive(Default, Clone)]
pub struct Metrics {
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    reconciles: Mutex<BTreeMap<&'static str, u64>>,
    failures: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    durations: Mutex<BTreeMap<&'static str, Histogram>>,
    /// pool key (`ns/name`) → (ip, provider) → state word.
    ip_states: Mutex<BTreeMap<String, PairStates>>,
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
        *lock(&self.state.reconciles).entry(controller).or_default() += 1;
        lock(&self.state.durations)
            .entry(controller)
            .or_default()
            .observe(took.as_secs_f64());
    }

    pub fn failed(&self, controller: &'static str, category: &'static str) {
        *lock(&self.state.failures)
            .entry((controller, category))
            .or_default() += 1;
    }

    /// Replaces every `mailfleet_ip_state` series of one pool.
    pub fn set_pool_states(&self, pool: &str, states: PairStates) {
        lock(&self.state.ip_states).insert(pool.to_string(), states);
    }

    pub fn forget_pool(&self, pool: &str) {
        lock(&self.state.ip_states).remove(pool);
        lock(&self.state.feedback_reports).remove(pool);
    }

    /// Per-object series kept (pools and routes), to show a deleted object
    /// leaves none behind.
    pub fn tracked(&self) -> usize {
        lock(&self.state.ip_states).len()
            + lock(&self.state.feedback_reports).len()
            + lock(&self.state.route_targets).len()
            + lock(&self.state.route_queues).len()
    }

    pub fn set_route_targets(&self, route: &str, mode: &str, targets: usize) {
        lock(&self.state.route_targets).insert(route.to_string(), (mode.to_string(), targets));
    }

    pub fn forget_route(&self, route: &str) {
        lock(&self.state.route_targets).remove(route);
        lock(&self.state.route_queues).remove(route);
    }

    /// The mail waiting for a route (`None`: none).
    pub fn set_route_queue(&self, route: &str, queue: Option<RouteQueueFigures>) {
        match queue {
            Some(q) => lock(&self.state.route_queues).insert(route.to_string(), q),
            None => lock(&self.state.route_queues).remove(route),
        };
    }

    pub fn feedback_report(&self, pool: &str) {
        *lock(&self.state.feedback_reports)
            .entry(pool.to_string())
            .or_default() += 1;
    }

    /// One status write that counted `reports` feedback reports.
    pub fn feedback_batch(&self, reports: usize) {
        let mut batches = lock(&self.state.feedback_batches);
        batches.0 += 1;
        batches.1 += reports as u64;
    }

    /// A stopping sender of `pool` reported its drain: `left` messages could
    /// not be handed on and went with the pod.
    pub fn drain(&self, pool: &str, left: u64) {
        let mut drains = lock(&self.state.drains);
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
        *lock(&self.state.api_writes).entry(verb).or_default() += 1;
    }

    /// A stored status of `kind` could not be read in full and was rewritten.
    pub fn unreadable_status(&self, kind: &'static str) {
        *lock(&self.state.unreadable_statuses)
            .entry(kind)
            .or_default() += 1;
    }

    pub fn api_writes_total(&self) -> u64 {
        lock(&self.state.api_writes).values().sum()
    }

    pub fn set_leader(&self, leading: bool) {
        *lock(&self.state.leader) = leading;
    }

    /// This source alone, as Prometheus text.
    pub fn render(&self) -> String {
        crate::metrics::render(self)
    }
}

impl Families for Metrics {
    fn encode(&self, out: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let s = &*self.state;
        RECONCILES.write(
            out,
            lock(&s.reconciles)
                .iter()
                .map(|(controller, n)| ([*controller], *n)),
        )?;
        RECONCILE_FAILURES.write(
            out,
            lock(&s.failures)
                .iter()
                .map(|((controller, category), n)| ([*controller, *category], *n)),
        )?;
        RECONCILE_DURATION.write_histogram(
            out,
            &DURATION_BUCKETS,
            lock(&s.durations)
                .iter()
                .map(|(controller, h)| ([*controller], h.sum, h.count, &h.buckets[..]))
                .collect::<Vec<_>>(),
        )?;
        let ip_states = lock(&s.ip_states);
        IP_STATE.write(
            out,
            ip_states.iter().flat_map(|(pool, states)| {
                states.iter().flat_map(move |((ip, provider), state)| {
                    ip_state_rows(pool, ip, provider, state)
                })
            }),
        )?;
        drop(ip_states);
        ROUTE_TARGETS.write(
            out,
            lock(&s.route_targets)
                .iter()
                .map(|(route, (mode, n))| ([route.as_str(), mode.as_str()], *n)),
        )?;
        let queues = lock(&s.route_queues);
        ROUTE_QUEUE_MESSAGES.write(out, queues.iter().map(|(route, q)| ([route.as_str()], q.0)))?;
        ROUTE_QUEUE_OLDEST.write(out, queues.iter().map(|(route, q)| ([route.as_str()], q.1)))?;
        ROUTE_QUEUE_LIFETIME.write(
            out,
            queues
                .iter()
                .filter_map(|(route, q)| Some(([route.as_str()], q.2?))),
        )?;
        drop(queues);
        // Only counted reports: the operator answers duplicates and refusals
        // without a status write and does not count them.
        FEEDBACK_REPORTS.write(
            out,
            lock(&s.feedback_reports)
                .iter()
                .map(|(pool, n)| ([pool.as_str(), "counted"], *n)),
        )?;
        let drains = lock(&s.drains);
        DRAINS.write(
            out,
            drains.iter().flat_map(|(pool, (complete, incomplete, _))| {
                [
                    ([pool.as_str(), "complete"], *complete),
                    ([pool.as_str(), "incomplete"], *incomplete),
                ]
            }),
        )?;
        DRAIN_LEFT.write(
            out,
            drains
                .iter()
                .map(|(pool, (_, _, left))| ([pool.as_str()], *left)),
        )?;
        drop(drains);
        API_WRITES.write(
            out,
            lock(&s.api_writes).iter().map(|(verb, n)| ([*verb], *n)),
        )?;
        let (batches, batched) = *lock(&s.feedback_batches);
        FEEDBACK_BATCHES.write(out, [([], batches)])?;
        FEEDBACK_BATCHED_REPORTS.write(out, [([], batched)])?;
        UNREADABLE_STATUS.write(
            out,
            lock(&s.unreadable_statuses)
                .iter()
                .map(|(kind, n)| ([*kind], *n)),
        )?;
        LEADER.write(out, [([], *lock(&s.leader))])
    }
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
        assert!(text
            .contains("mailfleet_feedback_reports_total{pool=\"mail/bulk\",result=\"counted\"} 1"));
        assert_eq!(m.api_writes_total(), 1);
        m.forget_pool("mail/bulk");
        assert!(!m.render().contains("mailfleet_ip_state{"));
    }
}
