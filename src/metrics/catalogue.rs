//! The families the operator and standalone mode export: name, type, labels
//! and help, declared once. Both modes write their samples through these
//! declarations, so a family cannot carry one label set in one mode and
//! another in the other; `tests/docs_metrics.rs` holds the table in
//! docs/OPERATING.md to this list. (The probes' families, shared by both
//! modes as well, are written by `src/probe/`; the agent's, a process of its
//! own, by `src/agent/metrics.rs`.)

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};

use super::{family, Kind, Value};
use crate::api::sender_pool::ReputationState;

/// Which process exports a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modes {
    Both,
    Operator,
    Standalone,
}

impl Modes {
    pub fn as_str(self) -> &'static str {
        match self {
            Modes::Both => "both",
            Modes::Operator => "operator",
            Modes::Standalone => "standalone",
        }
    }
}

/// One family's declaration.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// The exported name (a counter's with its `_total`).
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
    pub modes: Modes,
}

impl Spec {
    /// Writes the family with `rows`, each row's label values in the order of
    /// [`labels`](Spec::labels).
    pub fn write<'v, const N: usize, V: Into<Value>>(
        &self,
        out: &mut DescriptorEncoder<'_>,
        rows: impl IntoIterator<Item = ([&'v str; N], V)>,
    ) -> fmt::Result {
        family(
            out,
            self.name,
            self.help,
            self.kind,
            rows.into_iter()
                .map(|(values, value)| (self.labels_of(&values), value)),
        )
    }

    /// Writes a histogram family: per row, its labels, sum, count and the
    /// number of observations at or under each bound (cumulative, as kept).
    pub fn write_histogram<'v, const N: usize>(
        &self,
        out: &mut DescriptorEncoder<'_>,
        bounds: &[f64],
        rows: impl IntoIterator<Item = ([&'v str; N], f64, u64, &'v [u64])>,
    ) -> fmt::Result {
        debug_assert_eq!(self.kind, Kind::Histogram, "{}", self.name);
        let mut metric = out.encode_descriptor(self.name, self.help, None, self.kind)?;
        for (values, sum, count, cumulative) in rows {
            let labels = self.labels_of(&values);
            // The encoder adds the buckets up itself.
            let mut below = 0;
            let buckets: Vec<(f64, u64)> = bounds
                .iter()
                .zip(cumulative)
                .map(|(bound, &at_or_under)| {
                    let in_bucket = at_or_under.saturating_sub(below);
                    below = at_or_under;
                    (*bound, in_bucket)
                })
                .collect();
            metric
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }

    fn labels_of<const N: usize>(&self, values: &[&str; N]) -> Vec<(&'static str, String)> {
        debug_assert_eq!(N, self.labels.len(), "{}", self.name);
        self.labels
            .iter()
            .copied()
            .zip(values.iter().map(|v| v.to_string()))
            .collect()
    }
}

const fn spec(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
    modes: Modes,
) -> Spec {
    Spec {
        name,
        kind,
        labels,
        help,
        modes,
    }
}

use Kind::{Counter, Gauge, Histogram};
use Modes::{Both, Operator, Standalone};

pub const BUILD_INFO: Spec = spec(
    "mailfleet_build_info",
    Gauge,
    &["version", "os", "arch"],
    "Always 1; the labels name the running build.",
    Both,
);
pub const IP_STATE: Spec = spec(
    "mailfleet_ip_state",
    Gauge,
    &["pool", "ip", "provider", "state"],
    "1 for the reputation state each (pool, IP, provider) pair is in, 0 for the others.",
    Both,
);
pub const COMPLAINTS_WINDOW: Spec = spec(
    "mailfleet_complaints_window",
    Gauge,
    &["pool", "ip", "provider"],
    "Spam complaints in the feedback window of each (pool, IP, provider) that has some.",
    Both,
);
pub const COMPLAINT_RATE: Spec = spec(
    "mailfleet_complaint_rate_ratio",
    Gauge,
    &["pool", "ip", "provider"],
    "Spam complaints per message delivered in the feedback window of each (pool, IP, provider) with complaints and deliveries.",
    Both,
);
pub const ROUTE_TARGETS: Spec = spec(
    "mailfleet_route_targets",
    Gauge,
    &["route", "mode"],
    "IPs sending for each route, labelled with the route's mode.",
    Both,
);
pub const FEEDBACK_REPORTS: Spec = spec(
    "mailfleet_feedback_reports_total",
    Counter,
    &["pool", "result"],
    "Feedback reports by pool and result: counted, duplicate (a retry counted before), refused.",
    Both,
);
pub const FEEDBACK_REQUESTS: Spec = spec(
    "mailfleet_feedback_requests_total",
    Counter,
    &["code"],
    "Feedback requests answered, by HTTP status.",
    Both,
);
pub const COMPLAINT_REPORTS: Spec = spec(
    "mailfleet_complaint_reports_total",
    Counter,
    &["result"],
    "Abuse feedback reports posted to /v1/abuse-reports, by result: counted, duplicate, or why refused (the agent's folder intake counts the same results).",
    Both,
);
pub const CONNECTIONS_REFUSED: Spec = spec(
    "mailfleet_http_connections_refused_total",
    Counter,
    &[],
    "Connections closed at once because every connection slot was inside a request.",
    Both,
);
pub const PLAIN_HTTP_REFUSED: Spec = spec(
    "mailfleet_http_plain_requests_refused_total",
    Counter,
    &[],
    "Plain-HTTP requests to the TLS port, answered 400 without being read.",
    Both,
);
pub const REVERSE_DNS_CONFIRMED: Spec = spec(
    "mailfleet_reverse_dns_confirmed",
    Gauge,
    &["pool", "ip"],
    "1 when the IP's PTR name resolves back to it (forward-confirmed reverse DNS), else 0.",
    Both,
);
pub const RECONCILES: Spec = spec(
    "mailfleet_reconciles_total",
    Counter,
    &["controller"],
    "Reconciles run, by controller.",
    Operator,
);
pub const RECONCILE_FAILURES: Spec = spec(
    "mailfleet_reconcile_failures_total",
    Counter,
    &["controller", "category"],
    "Reconciles that failed, by controller and error category.",
    Operator,
);
pub const RECONCILE_DURATION: Spec = spec(
    "mailfleet_reconcile_duration_seconds",
    Histogram,
    &["controller"],
    "Time one reconcile took.",
    Operator,
);
pub const API_WRITES: Spec = spec(
    "mailfleet_api_writes_total",
    Counter,
    &["verb"],
    "Mutating requests sent to the API server, by verb.",
    Operator,
);
pub const LEADER: Spec = spec(
    "mailfleet_leader",
    Gauge,
    &[],
    "1 while this replica holds the leader lease.",
    Operator,
);
pub const FEEDBACK_CERT_EXPIRY: Spec = spec(
    "mailfleet_feedback_certificate_expiry_timestamp_seconds",
    Gauge,
    &[],
    "When the feedback port's certificate that the operator made expires, in Unix seconds (only with --feedback-tls-secret).",
    Operator,
);
pub const ROUTE_QUEUE_MESSAGES: Spec = spec(
    "mailfleet_route_queue_messages",
    Gauge,
    &["route"],
    "Messages waiting for each route in the senders' queues, as their agents last reported.",
    Operator,
);
pub const ROUTE_QUEUE_OLDEST: Spec = spec(
    "mailfleet_route_queue_oldest_arrival_timestamp_seconds",
    Gauge,
    &["route"],
    "When the oldest message waiting for each route arrived.",
    Operator,
);
pub const ROUTE_QUEUE_LIFETIME: Spec = spec(
    "mailfleet_route_queue_lifetime_seconds",
    Gauge,
    &["route"],
    "The shortest maximal_queue_lifetime of the senders holding each route's mail.",
    Operator,
);
pub const DRAINS: Spec = spec(
    "mailfleet_drains_total",
    Counter,
    &["pool", "result"],
    "Sender pods that handed their queue on as they stopped, by pool and result (complete, incomplete).",
    Operator,
);
pub const DRAIN_LEFT: Spec = spec(
    "mailfleet_drain_left_messages_total",
    Counter,
    &["pool"],
    "Queued messages stopping sender pods could not hand on in time (they went with the pod), by pool.",
    Operator,
);
pub const FEEDBACK_BATCHES: Spec = spec(
    "mailfleet_feedback_batches_total",
    Counter,
    &[],
    "Status writes of counted feedback (reports of one pool within the batch delay share one write).",
    Operator,
);
pub const FEEDBACK_BATCHED_REPORTS: Spec = spec(
    "mailfleet_feedback_batched_reports_total",
    Counter,
    &[],
    "Reports counted by those writes.",
    Operator,
);
pub const UNREADABLE_STATUS: Spec = spec(
    "mailfleet_unreadable_status_total",
    Counter,
    &["kind"],
    "Stored statuses that could not be read in full and were rewritten, by kind (the object's UnreadableStatus event names the fields).",
    Operator,
);
pub const REPUTATION_TRANSITIONS: Spec = spec(
    "mailfleet_reputation_transitions_total",
    Counter,
    &["provider", "from", "to"],
    "Reputation state changes by provider, from and to.",
    Standalone,
);
pub const MANIFEST_RELOADS: Spec = spec(
    "mailfleet_manifest_reloads_total",
    Counter,
    &[],
    "Manifest folder changes seen.",
    Standalone,
);
pub const MANIFEST_RELOAD_ERRORS: Spec = spec(
    "mailfleet_manifest_reload_errors_total",
    Counter,
    &["category"],
    "Manifest reloads refused (the last good manifests stay in force), by category.",
    Standalone,
);
pub const MANIFESTS_VALID: Spec = spec(
    "mailfleet_manifests_valid",
    Gauge,
    &[],
    "1 when the manifests in the folder are in force, 0 while they are refused.",
    Standalone,
);
pub const FEEDBACK_LOG_SYNCS: Spec = spec(
    "mailfleet_feedback_log_syncs_total",
    Counter,
    &[],
    "Syncs of feedback.wal that stored reports (reports arriving together share one).",
    Standalone,
);
pub const FEEDBACK_LOG_REPORTS: Spec = spec(
    "mailfleet_feedback_log_reports_total",
    Counter,
    &[],
    "Reports stored in feedback.wal before their answer.",
    Standalone,
);

pub const HAPROXY_RELOADS: Spec = spec(
    "mailfleet_haproxy_reloads_total",
    Counter,
    &["result"],
    "Reloads of HAProxy with a new hand-off configuration, by result: ok, or why it failed (refused, timeout, spawn, write).",
    Standalone,
);

/// Every family declared here, in the order of the table in docs/OPERATING.md.
pub const ALL: [Spec; 32] = [
    BUILD_INFO,
    IP_STATE,
    COMPLAINTS_WINDOW,
    COMPLAINT_RATE,
    ROUTE_TARGETS,
    FEEDBACK_REPORTS,
    FEEDBACK_REQUESTS,
    COMPLAINT_REPORTS,
    CONNECTIONS_REFUSED,
    PLAIN_HTTP_REFUSED,
    REVERSE_DNS_CONFIRMED,
    RECONCILES,
    RECONCILE_FAILURES,
    RECONCILE_DURATION,
    API_WRITES,
    LEADER,
    FEEDBACK_CERT_EXPIRY,
    ROUTE_QUEUE_MESSAGES,
    ROUTE_QUEUE_OLDEST,
    ROUTE_QUEUE_LIFETIME,
    DRAINS,
    DRAIN_LEFT,
    FEEDBACK_BATCHES,
    FEEDBACK_BATCHED_REPORTS,
    UNREADABLE_STATUS,
    REPUTATION_TRANSITIONS,
    MANIFEST_RELOADS,
    MANIFEST_RELOAD_ERRORS,
    MANIFESTS_VALID,
    FEEDBACK_LOG_SYNCS,
    FEEDBACK_LOG_REPORTS,
    HAPROXY_RELOADS,
];

/// The reputation states `mailfleet_ip_state` has a series for, per pair.
pub const STATES: [ReputationState; 6] = [
    ReputationState::Healthy,
    ReputationState::Warming,
    ReputationState::Throttled,
    ReputationState::Blocked,
    ReputationState::Probing,
    ReputationState::Recovering,
];

/// The `mailfleet_complaints_window` and `mailfleet_complaint_rate_ratio`
/// rows of pairs with complaints: `(pool, ip, provider, complaints, delivered)`.
pub fn write_complaints<'a>(
    out: &mut DescriptorEncoder<'_>,
    pairs: impl Iterator<Item = (&'a str, &'a str, &'a str, i64, i64)> + Clone,
) -> fmt::Result {
    COMPLAINTS_WINDOW.write(
        out,
        pairs
            .clone()
            .map(|(pool, ip, provider, n, _)| ([pool, ip, provider], n)),
    )?;
    COMPLAINT_RATE.write(
        out,
        pairs.filter(|(_, _, _, _, delivered)| *delivered > 0).map(
            |(pool, ip, provider, n, delivered)| {
                (
                    [pool, ip, provider],
                    Value::Float(n as f64 / delivered as f64),
                )
            },
        ),
    )
}

/// `mailfleet_feedback_reports_total`'s `result` values.
pub const FEEDBACK_RESULTS: [&str; 3] = ["counted", "duplicate", "refused"];

/// The six `mailfleet_ip_state` rows of one pair: 1 for `current`, 0 for the others.
pub fn ip_state_rows<'a>(
    pool: &'a str,
    ip: &'a str,
    provider: &'a str,
    current: &'a str,
) -> impl Iterator<Item = ([&'a str; 4], i64)> + 'a {
    STATES.into_iter().map(move |state| {
        let word = state.as_str();
        ([pool, ip, provider, word], i64::from(word == current))
    })
}
