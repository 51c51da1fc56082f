//! The `POST /v1/feedback` wire format (docs/FEEDBACK-API.md): what an agent
//! reports and what the receiver (operator or standalone) answers.
//!
//! A report holds the delivery attempts of one source IP since the previous
//! report, counted per (provider, outcome, category), plus the conclusive
//! replies among them. [`FeedbackReport::to_feedback`] turns it into the
//! engine's [`Feedback`] signals, and [`SequenceLedger`] gives a receiver the
//! idempotency the protocol promises: a report retried with the same
//! `(instance, sequence)` is counted once.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::reputation::engine::{Complaints, ConclusiveReply, Feedback};
use crate::vocab::{is_valid_provider_name, Category, Outcome};

/// The `api_version` of every request and response of this version of the API.
pub const FEEDBACK_API_VERSION: &str = "feedback.mailfleet.io/v1";

/// The request path of the endpoint.
pub const FEEDBACK_PATH: &str = "/v1/feedback";

/// Receivers refuse bodies larger than this (HTTP 413).
pub const MAX_REPORT_BYTES: usize = 1024 * 1024;

/// Receivers refuse reports with more `totals` rows than this.
pub const MAX_TOTALS: usize = 4096;

/// Agents keep at most this many conclusive replies per provider in one
/// report; the rest are counted in `dropped.conclusive_replies` (their attempts
/// stay in `totals`). One is enough to block a pair.
pub const MAX_CONCLUSIVE_PER_PROVIDER: usize = 10;

/// Receivers refuse reports with more conclusive replies than this.
pub const MAX_CONCLUSIVE: usize = 1024;

/// Longest reply text a receiver keeps as evidence; agents cut longer ones.
pub const MAX_REPLY_CHARS: usize = 2048;

/// One report of one agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackReport {
    /// Always [`FEEDBACK_API_VERSION`] for this format.
    pub api_version: String,
    /// Who reports: the pod and the run of the agent that numbers the reports.
    pub agent: AgentIdentity,
    /// 1 for the first report of an `agent.instance`, then +1 per report. A
    /// receiver counts a report only when its sequence is higher than the last
    /// one it counted for that instance.
    pub sequence: u64,
    /// The source IP the counted mail left from.
    pub source_ip: IpAddr,
    /// The SenderPool the IP belongs to.
    pub pool: PoolRef,
    /// The time the counts cover (the agent's clock).
    pub period: Period,
    /// Attempts per (provider, outcome, category); rows with a count of 0 are left out.
    #[serde(default)]
    pub totals: Vec<TotalCount>,
    /// The conclusive replies among the `ip_blocklisted` attempts.
    #[serde(default)]
    pub conclusive: Vec<ConclusiveEvidence>,
    /// Log lines read in the period, and those that were not delivery attempts.
    #[serde(default)]
    pub lines: LineCounts,
    /// What the agent had to leave out since its previous report.
    #[serde(default)]
    pub dropped: Dropped,
    /// The sender configuration the agent has applied (`None` before the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<String>,
    /// What waits in the sender's queue, per route (the latest read; `None`
    /// when the agent does not read a queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueReport>,
    /// The sender handed its queue on before stopping (docs/OPERATING.md,
    /// "Scale-down and pod deletion"): sent with the agent's last reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainReport>,
    /// Whether the address the sender's transports bind to is on one of its
    /// interfaces (`spec.ipBinding.mode: Bind`), as last checked; sent with
    /// every report. Absent from agents that do not check, and from older ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_binding: Option<IpBindingReport>,
    /// Spam complaints (abuse feedback reports) about mail from `source_ip`
    /// read since the previous report, per complaining user's provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub complaints: Vec<ComplaintCount>,
}

/// Receivers refuse reports with more `complaints` rows than this.
pub const MAX_COMPLAINT_ROWS: usize = 256;

/// Complaints from one provider's users.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ComplaintCount {
    pub provider: String,
    /// At least 1.
    pub count: u64,
}

/// Longest `ip_binding.detail` a receiver accepts; agents cut longer ones.
pub const MAX_BINDING_DETAIL_CHARS: usize = 256;

/// What the sender found when it checked its bind address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpBindingReport {
    /// The address checked: the report's `source_ip`.
    pub address: IpAddr,
    /// True when `address` is on an interface of the sender (can be bound).
    pub bound: bool,
    /// The kernel's reason when it cannot (typically "Cannot assign requested address").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// How a stopping sender's drain ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReport {
    /// Where the queue went (`host:port`, the pool's intake Service).
    pub to: String,
    /// Messages queued when the drain began.
    pub queued_at_start: u64,
    /// Messages still queued when it ended: they leave with the pod.
    pub left: u64,
    /// How long it took, milliseconds.
    pub took_ms: u64,
}

/// Receivers refuse reports with more queue rows than this.
pub const MAX_QUEUE_ROUTES: usize = 512;

/// The sender's queue as `postqueue -j` listed it (docs/FEEDBACK-API.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueReport {
    /// When the listing was read.
    pub read_at: Timestamp,
    /// Every queued message (incoming, active, deferred and hold).
    pub messages: u64,
    /// The oldest queued message's arrival.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_arrival: Option<Timestamp>,
    /// The sender's `maximal_queue_lifetime`, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximal_lifetime_seconds: Option<i64>,
    /// False when the read stopped at its deadline (the figures count part of the queue).
    #[serde(default = "yes")]
    pub complete: bool,
    /// Per route with waiting mail.
    #[serde(default)]
    pub routes: Vec<RouteQueueReport>,
}

impl QueueReport {
    /// No queue at all (a pod whose queue is gone).
    pub fn empty(at: Timestamp) -> QueueReport {
        QueueReport {
            read_at: at,
            messages: 0,
            oldest_arrival: None,
            maximal_lifetime_seconds: None,
            complete: true,
            routes: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

/// Mail waiting for one route on one sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteQueueReport {
    pub namespace: String,
    pub route: String,
    pub provider: String,
    /// Messages with a recipient on the route.
    pub messages: u64,
    pub oldest_arrival: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentIdentity {
    /// The pod (or host) name.
    pub name: String,
    /// Chosen by the agent when it creates its state file; with `sequence`, the
    /// idempotency key of a report.
    pub instance: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRef {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    pub start: Timestamp,
    pub end: Timestamp,
}

/// One row of counts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TotalCount {
    pub provider: String,
    pub outcome: Outcome,
    pub category: Category,
    pub count: u64,
}

/// A reply that alone proves the pair blocked (Microsoft 5.7.606, Yahoo TSS09 ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConclusiveEvidence {
    pub provider: String,
    /// The reply as logged.
    pub reply: String,
    /// When the reply was received.
    pub at: Timestamp,
    /// The IP the reply names; a reply naming another IP is no evidence against this one.
    #[serde(default)]
    pub named_ip: Option<IpAddr>,
    /// Set for a rate-limit reply whose rule asks for a pause (Yahoo `[TSS04]`):
    /// one of the `ip_rate_limited` attempts, not of the `ip_blocklisted` ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_seconds: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineCounts {
    #[serde(default)]
    pub read: u64,
    /// Lines that were not delivery attempts, per reason word (`not_delivery`,
    /// `binary`, `truncated`, `too_long`, `invalid_json` ...).
    #[serde(default)]
    pub skipped: BTreeMap<String, u64>,
}

/// Counted losses. Attempts are never dropped for lack of buffer space (counts
/// of later periods merge into a waiting report instead); what can be lost is
/// listed here so a receiver can tell complete counts from incomplete ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// Conclusive reply texts beyond [`MAX_CONCLUSIVE_PER_PROVIDER`]; their
    /// attempts are in `totals`.
    #[serde(default)]
    pub conclusive_replies: u64,
    /// Reports the receiver refused as invalid (HTTP 400/413/422), which a retry cannot fix.
    #[serde(default)]
    pub reports: u64,
    /// The attempts those refused reports held.
    #[serde(default)]
    pub attempts: u64,
    /// Log files that were rotated away while the agent was stopped and could
    /// not be found again (their unread lines are lost).
    #[serde(default)]
    pub log_files: u64,
}

impl Dropped {
    pub fn is_empty(&self) -> bool {
        *self == Dropped::default()
    }

    pub fn add(&mut self, other: &Dropped) {
        self.conclusive_replies = self
            .conclusive_replies
            .saturating_add(other.conclusive_replies);
        self.reports = self.reports.saturating_add(other.reports);
        self.attempts = self.attempts.saturating_add(other.attempts);
        self.log_files = self.log_files.saturating_add(other.log_files);
    }
}

/// The receiver's answer to a report it accepted (HTTP 200).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackResponse {
    pub api_version: String,
    /// The sequence acknowledged (the report's own).
    pub sequence: u64,
    /// True when this (instance, sequence) had been counted before: the report
    /// is acknowledged and not counted again.
    #[serde(default)]
    pub duplicate: bool,
    /// The sender configuration this agent's pod should run now, when the
    /// receiver knows it. See [`ConfigHint`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigHint>,
}

/// The current sender configuration, so a change reaches the pod in seconds
/// even while the kubelet has not yet refreshed the mounted ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigHint {
    /// The version the ConfigMap carries in its `config-version` key.
    pub version: String,
    /// The ConfigMap's files (key -> content); sent when the report's
    /// `config_version` differs from `version`. Without it, the agent waits
    /// for the ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<BTreeMap<String, String>>,
}

/// Why a receiver refuses a report (HTTP 400), naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("api_version is `{0}`; this receiver reads `{FEEDBACK_API_VERSION}`")]
    ApiVersion(String),
    #[error("{field}: {problem}")]
    Field { field: String, problem: String },
}

fn field_error(field: impl Into<String>, problem: impl Into<String>) -> ReportError {
    ReportError::Field {
        field: field.into(),
        problem: problem.into(),
    }
}

impl FeedbackReport {
    /// Checks what the JSON shape cannot: names, limits and that every
    /// conclusive reply is one of the counted `ip_blocklisted` attempts.
    pub fn validate(&self) -> Result<(), ReportError> {
        if self.api_version != FEEDBACK_API_VERSION {
            return Err(ReportError::ApiVersion(self.api_version.clone()));
        }
        if self.agent.instance.is_empty() || self.agent.instance.len() > 128 {
            return Err(field_error("agent.instance", "must be 1 to 128 characters"));
        }
        if self.agent.name.len() > 253 {
            return Err(field_error("agent.name", "longer than 253 characters"));
        }
        if self.sequence == 0 {
            return Err(field_error("sequence", "starts at 1"));
        }
        if self.period.end < self.period.start {
            return Err(field_error("period", "end is before start"));
        }
        if let Some(drain) = &self.drain {
            if drain.to.is_empty() || drain.to.len() > 255 {
                return Err(field_error("drain.to", "must be 1 to 255 characters"));
            }
            if drain.left > drain.queued_at_start {
                return Err(field_error("drain.left", "more than drain.queued_at_start"));
            }
        }
        if let Some(binding) = &self.ip_binding {
            if binding
                .detail
                .as_ref()
                .is_some_and(|d| d.chars().count() > MAX_BINDING_DETAIL_CHARS)
            {
                return Err(field_error(
                    "ip_binding.detail",
                    format!("longer than {MAX_BINDING_DETAIL_CHARS} characters"),
                ));
            }
            if binding.address != self.source_ip {
                return Err(field_error(
                    "ip_binding.address",
                    format!("{} is not source_ip {}", binding.address, self.source_ip),
                ));
            }
            if binding.bound == binding.detail.is_some() {
                return Err(field_error(
                    "ip_binding",
                    "bound is true exactly when there is no detail",
                ));
            }
        }
        if let Some(queue) = &self.queue {
            if queue.routes.len() > MAX_QUEUE_ROUTES {
                return Err(field_error(
                    "queue.routes",
                    format!("{} rows; at most {MAX_QUEUE_ROUTES}", queue.routes.len()),
                ));
            }
        }
        if self.totals.len() > MAX_TOTALS {
            return Err(field_error(
                "totals",
                format!("{} rows; at most {MAX_TOTALS}", self.totals.len()),
            ));
        }
        if self.complaints.len() > MAX_COMPLAINT_ROWS {
            return Err(field_error(
                "complaints",
                format!(
                    "{} rows; at most {MAX_COMPLAINT_ROWS}",
                    self.complaints.len()
                ),
            ));
        }
        for (i, row) in self.complaints.iter().enumerate() {
            if !is_valid_provider_name(&row.provider) {
                return Err(field_error(
                    format!("complaints[{i}].provider"),
                    format!(
                        "`{}` is not a provider name (lowercase letters, digits, `-`)",
                        row.provider
                    ),
                ));
            }
            if row.count == 0 {
                return Err(field_error(
                    format!("complaints[{i}].count"),
                    "is 0; leave the row out instead",
                ));
            }
        }
        if self.conclusive.len() > MAX_CONCLUSIVE {
            return Err(field_error(
                "conclusive",
                format!(
                    "{} replies; at most {MAX_CONCLUSIVE}",
                    self.conclusive.len()
                ),
            ));
        }
        for (i, row) in self.totals.iter().enumerate() {
            if !is_valid_provider_name(&row.provider) {
                return Err(field_error(
                    format!("totals[{i}].provider"),
                    format!(
                        "`{}` is not a provider name (lowercase letters, digits, `-`)",
                        row.provider
                    ),
                ));
            }
            if (row.outcome == Outcome::Delivered) != (row.category == Category::None) {
                return Err(field_error(format!("totals[{i}]"), format!("outcome {} with category {}: delivered attempts have category none, failed ones a reason", row.outcome, row.category)));
            }
        }
        let mut blocklisted: HashMap<&str, u64> = HashMap::new();
        for row in self
            .totals
            .iter()
            .filter(|r| r.category == Category::IpBlocklisted)
        {
            let entry = blocklisted.entry(row.provider.as_str()).or_default();
            *entry = entry.saturating_add(row.count);
        }
        let mut rate_limited: HashMap<&str, u64> = HashMap::new();
        for row in self
            .totals
            .iter()
            .filter(|r| r.category == Category::IpRateLimited)
        {
            let entry = rate_limited.entry(row.provider.as_str()).or_default();
            *entry = entry.saturating_add(row.count);
        }
        let mut conclusive: HashMap<&str, u64> = HashMap::new();
        let mut pauses: HashMap<&str, u64> = HashMap::new();
        for (i, reply) in self.conclusive.iter().enumerate() {
            if let Some(seconds) = reply.pause_seconds {
                if !crate::reputation::rules::PAUSE_SECONDS_RANGE.contains(&seconds) {
                    return Err(field_error(
                        format!("conclusive[{i}].pause_seconds"),
                        format!(
                            "{seconds} is out of range; a pause lasts from 60 to 604800 seconds"
                        ),
                    ));
                }
            }
            if reply.reply.chars().count() > MAX_REPLY_CHARS {
                return Err(field_error(
                    format!("conclusive[{i}].reply"),
                    format!("longer than {MAX_REPLY_CHARS} characters"),
                ));
            }
            let counter = if reply.pause_seconds.is_some() {
                &mut pauses
            } else {
                &mut conclusive
            };
            *counter.entry(reply.provider.as_str()).or_default() += 1;
        }
        for (provider, n) in pauses {
            let counted = rate_limited.get(provider).copied().unwrap_or(0);
            if n > counted {
                return Err(field_error(
                    "conclusive",
                    format!("{n} pause replies for {provider} but totals count {counted} ip_rate_limited attempts; each pause reply is one of them"),
                ));
            }
        }
        for (provider, n) in conclusive {
            let counted = blocklisted.get(provider).copied().unwrap_or(0);
            if n > counted {
                return Err(field_error(
                    "conclusive",
                    format!("{n} conclusive replies for {provider} but totals count {counted} ip_blocklisted attempts; each conclusive reply is one of them"),
                ));
            }
        }
        Ok(())
    }

    /// Total attempts in `totals`.
    pub fn attempts(&self) -> u64 {
        self.totals
            .iter()
            .fold(0u64, |sum, row| sum.saturating_add(row.count))
    }

    /// The engine's complaint signals, one per provider, sorted by provider:
    /// what a receiver passes to `Fleet::observe(source_ip,
    /// Signal::Complaints(..), now)` after the delivery counts.
    pub fn to_complaints(&self) -> Vec<Complaints> {
        let mut per_provider: BTreeMap<&str, u64> = BTreeMap::new();
        for row in &self.complaints {
            let n = per_provider.entry(row.provider.as_str()).or_default();
            *n = n.saturating_add(row.count);
        }
        per_provider
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(provider, n)| Complaints {
                provider: provider.to_string(),
                count: i64::try_from(n).unwrap_or(i64::MAX),
            })
            .collect()
    }

    /// The engine's signals, one per provider with attempts or conclusive
    /// replies, sorted by provider: what a receiver passes to
    /// `Fleet::observe(source_ip, Signal::Feedback(..), now)`.
    pub fn to_feedback(&self) -> Vec<Feedback> {
        let mut per_provider: BTreeMap<&str, Feedback> = BTreeMap::new();
        let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for row in &self.totals {
            let f = per_provider
                .entry(row.provider.as_str())
                .or_insert_with(|| Feedback {
                    provider: row.provider.clone(),
                    ..Feedback::default()
                });
            let n = to_i64(row.count);
            f.attempts = f.attempts.saturating_add(n);
            if row.outcome == Outcome::Delivered {
                f.delivered = f.delivered.saturating_add(n);
            }
            match row.category {
                Category::IpBlocklisted => f.ip_blocklisted = f.ip_blocklisted.saturating_add(n),
                Category::IpRateLimited => f.ip_rate_limited = f.ip_rate_limited.saturating_add(n),
                _ => {}
            }
        }
        for reply in &self.conclusive {
            let f = per_provider
                .entry(reply.provider.as_str())
                .or_insert_with(|| Feedback {
                    provider: reply.provider.clone(),
                    ..Feedback::default()
                });
            f.conclusive.push(ConclusiveReply {
                reply: reply.reply.clone(),
                named_ip: reply.named_ip,
                at: reply.at,
                pause_seconds: reply.pause_seconds,
            });
        }
        per_provider
            .into_values()
            .filter(|f| f.attempts > 0 || !f.conclusive.is_empty())
            .collect()
    }
}

/// What a receiver does with a report, by its `(agent.instance, sequence)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Not seen before: count it.
    New,
    /// Counted before (a retry after a lost answer): acknowledge, do not count.
    Duplicate,
}

/// The receiver's memory of the last sequence counted per agent instance.
/// Agents send their reports one at a time, in sequence order, and retry the
/// same report until it is acknowledged, so one number per instance is enough.
/// Instances silent for longer than `forget_after_seconds` are forgotten (the
/// agent will have restarted with a new instance or stopped).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceLedger {
    last: BTreeMap<String, LedgerEntry>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LedgerEntry {
    sequence: u64,
    seen: Timestamp,
}

impl SequenceLedger {
    /// Admits a report. Call it only for a report that will be counted when
    /// `New` (validate first), so a refused report can be resent.
    pub fn admit(&mut self, instance: &str, sequence: u64, now: Timestamp) -> Admission {
        match self.last.get_mut(instance) {
            Some(entry) if sequence <= entry.sequence => {
                entry.seen = now;
                Admission::Duplicate
            }
            Some(entry) => {
                *entry = LedgerEntry {
                    sequence,
                    seen: now,
                };
                Admission::New
            }
            None => {
                self.last.insert(
                    instance.to_string(),
                    LedgerEntry {
                        sequence,
                        seen: now,
                    },
                );
                Admission::New
            }
        }
    }

    /// The last sequence admitted for `instance`, if it is remembered.
    pub fn last(&self, instance: &str) -> Option<u64> {
        self.last.get(instance).map(|e| e.sequence)
    }

    /// Forgets instances not heard from since `now - forget_after_seconds`.
    pub fn expire(&mut self, now: Timestamp, forget_after_seconds: i64) {
        let cutoff = now.as_second().saturating_sub(forget_after_seconds);
        self.last.retain(|_, e| e.seen.as_second() >= cutoff);
    }

    /// Keeps the newest `keep` instances whose name starts with `prefix`
    /// (any IP), forgetting the older ones of them.
    pub fn keep_newest(&mut self, prefix: &str, keep: usize) {
        let matching = |key: &str| {
            key.split_once(' ')
                .is_some_and(|(_, instance)| instance.starts_with(prefix))
        };
        let mut seen: Vec<(Timestamp, String)> = self
            .last
            .iter()
            .filter(|(key, _)| matching(key))
            .map(|(key, e)| (e.seen, key.clone()))
            .collect();
        if seen.len() <= keep {
            return;
        }
        seen.sort();
        for (_, key) in &seen[..seen.len() - keep] {
            self.last.remove(key);
        }
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// For tests across the crate: a report of agent `bulk-0` (run `abc`) of
/// pool `mail/bulk` from `ip`, over the instant `at`, counting nothing; a
/// test sets what it counts with struct update syntax.
#[cfg(test)]
impl FeedbackReport {
    pub(crate) fn counting_nothing(ip: &str, sequence: u64, at: Timestamp) -> FeedbackReport {
        FeedbackReport {
            api_version: FEEDBACK_API_VERSION.into(),
            agent: AgentIdentity {
                name: "bulk-0".into(),
                instance: "abc".into(),
            },
            sequence,
            source_ip: ip.parse().expect("a test report's IP"),
            pool: PoolRef {
                namespace: "mail".into(),
                name: "bulk".into(),
            },
            period: Period { start: at, end: at },
            totals: Vec::new(),
            conclusive: Vec::new(),
            lines: Default::default(),
            dropped: Default::default(),
            config_version: None,
            queue: None,
            drain: None,
            ip_binding: None,
            complaints: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn sample() -> FeedbackReport {
        FeedbackReport {
            api_version: FEEDBACK_API_VERSION.into(),
            agent: AgentIdentity { name: "bulk-203-0-113-10-abc".into(), instance: "18f2c3a1-4d2".into() },
            sequence: 7,
            source_ip: "203.0.113.10".parse().unwrap(),
            pool: PoolRef { namespace: "mail".into(), name: "bulk".into() },
            period: Period { start: at("2021-11-05T08:10:00Z"), end: at("2021-11-05T08:10:05Z") },
            totals: vec![
                TotalCount { provider: "google".into(), outcome: Outcome::Delivered, category: Category::None, count: 40 },
                TotalCount { provider: "microsoft".into(), outcome: Outcome::Deferred, category: Category::IpBlocklisted, count: 3 },
                TotalCount { provider: "microsoft".into(), outcome: Outcome::Deferred, category: Category::IpRateLimited, count: 2 },
                TotalCount { provider: "microsoft".into(), outcome: Outcome::Delivered, category: Category::None, count: 5 },
                TotalCount { provider: "microsoft".into(), outcome: Outcome::Bounced, category: Category::RecipientUnknown, count: 1 },
            ],
            conclusive: vec![ConclusiveEvidence {
                provider: "microsoft".into(),
                reply: "host x[192.0.2.1] said: 550 5.7.606 Access denied, banned sending IP [203.0.113.10]".into(),
                at: at("2021-11-05T08:10:01Z"),
                named_ip: Some("203.0.113.10".parse().unwrap()),
                pause_seconds: None,
            }],
            lines: LineCounts { read: 120, skipped: BTreeMap::from([("not_delivery".to_string(), 69)]) },
            dropped: Dropped::default(),
            config_version: Some("v42".into()),
            queue: None,
            drain: None,
            ip_binding: Some(IpBindingReport {
                address: "203.0.113.10".parse().unwrap(),
                bound: false,
                detail: Some("Cannot assign requested address (os error 99)".into()),
            }),
            complaints: vec![ComplaintCount {
                provider: "yahoo".into(),
                count: 2,
            }],
        }
    }

    #[test]
    fn only_the_newest_instances_of_a_prefix_are_kept() {
        let mut ledger = SequenceLedger::default();
        for minute in 0..5 {
            let now = at(&format!("2021-11-05T08:0{minute}:00Z"));
            ledger.admit(&format!("203.0.113.10 arf report:<{minute}@x>"), 1, now);
        }
        ledger.admit("203.0.113.10 agent-run-1", 7, at("2021-11-05T07:00:00Z"));
        ledger.keep_newest("arf ", 2);
        assert_eq!(ledger.len(), 3);
        assert_eq!(ledger.last("203.0.113.10 arf report:<4@x>"), Some(1));
        assert_eq!(ledger.last("203.0.113.10 arf report:<3@x>"), Some(1));
        assert_eq!(ledger.last("203.0.113.10 arf report:<2@x>"), None);
        assert_eq!(
            ledger.last("203.0.113.10 agent-run-1"),
            Some(7),
            "other instances stay"
        );
    }

    #[test]
    fn a_report_becomes_engine_feedback_per_provider() {
        let feedback = sample().to_feedback();
        assert_eq!(feedback.len(), 2);
        assert_eq!(
            (
                feedback[0].provider.as_str(),
                feedback[0].attempts,
                feedback[0].delivered
            ),
            ("google", 40, 40)
        );
        let ms = &feedback[1];
        assert_eq!(
            (
                ms.attempts,
                ms.delivered,
                ms.ip_blocklisted,
                ms.ip_rate_limited
            ),
            (11, 5, 3, 2)
        );
        assert_eq!(ms.conclusive.len(), 1);
        assert_eq!(
            ms.conclusive[0].named_ip,
            Some("203.0.113.10".parse().unwrap())
        );
    }

    #[test]
    fn complaint_rows_become_one_signal_per_provider_and_bad_rows_are_refused() {
        let mut r = sample();
        r.complaints.push(ComplaintCount {
            provider: "microsoft".into(),
            count: 1,
        });
        r.complaints.push(ComplaintCount {
            provider: "yahoo".into(),
            count: 3,
        });
        r.validate().unwrap();
        let signals = r.to_complaints();
        assert_eq!(
            signals
                .iter()
                .map(|c| (c.provider.as_str(), c.count))
                .collect::<Vec<_>>(),
            vec![("microsoft", 1), ("yahoo", 5)]
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["complaints"][0]["provider"], "yahoo");
        let mut zero = sample();
        zero.complaints[0].count = 0;
        assert!(zero
            .validate()
            .unwrap_err()
            .to_string()
            .contains("complaints[0].count"));
        let mut named = sample();
        named.complaints[0].provider = "Yahoo!".into();
        assert!(named
            .validate()
            .unwrap_err()
            .to_string()
            .contains("complaints[0].provider"));
        let mut many = sample();
        many.complaints = (0..=MAX_COMPLAINT_ROWS)
            .map(|i| ComplaintCount {
                provider: format!("p{i}"),
                count: 1,
            })
            .collect();
        assert!(many
            .validate()
            .unwrap_err()
            .to_string()
            .contains("complaints"));
    }

    #[test]
    fn the_json_round_trips_with_snake_case_words() {
        let report = sample();
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["api_version"], FEEDBACK_API_VERSION);
        assert_eq!(json["totals"][1]["category"], "ip_blocklisted");
        assert_eq!(json["source_ip"], "203.0.113.10");
        let back: FeedbackReport = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, report);
        let minimal: FeedbackReport = serde_json::from_str(
            r#"{"api_version":"feedback.mailfleet.io/v1","agent":{"name":"p","instance":"i"},"sequence":1,
                "source_ip":"2001:db8::1","pool":{"namespace":"n","name":"p"},
                "period":{"start":"2021-11-05T08:10:00Z","end":"2021-11-05T08:10:00Z"},"future_field":1}"#,
        )
        .unwrap();
        assert!(
            minimal.totals.is_empty()
                && minimal.dropped.is_empty()
                && minimal.config_version.is_none()
                && minimal.ip_binding.is_none(),
            "a report of an agent that does not check its binding is read as before"
        );
        assert_eq!(json["ip_binding"]["bound"], false);
        assert_eq!(json["ip_binding"]["address"], "203.0.113.10");
        minimal.validate().unwrap();
    }

    #[test]
    fn validation_names_the_field() {
        let mut r = sample();
        r.api_version = "v0".into();
        assert!(matches!(r.validate(), Err(ReportError::ApiVersion(_))));
        let mut r = sample();
        r.totals[0].provider = "Google".into();
        assert!(r
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("totals[0].provider"));
        let mut r = sample();
        r.totals[1].count = 0;
        let err = r.validate().unwrap_err().to_string();
        assert!(
            err.contains("1 conclusive replies for microsoft but totals count 0"),
            "{err}"
        );
        let mut r = sample();
        r.totals[0].category = Category::ContentSpam;
        assert!(r.validate().is_err());
        let mut r = sample();
        r.sequence = 0;
        assert!(r.validate().is_err());
        let mut r = sample();
        r.ip_binding.as_mut().unwrap().detail = Some("x".repeat(MAX_BINDING_DETAIL_CHARS + 1));
        assert!(r
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("ip_binding.detail"));
        let mut r = sample();
        r.ip_binding.as_mut().unwrap().address = "203.0.113.11".parse().unwrap();
        assert!(r
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("ip_binding.address"));
        let mut r = sample();
        r.ip_binding.as_mut().unwrap().bound = true;
        assert!(r
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("ip_binding"));
        sample().validate().unwrap();
    }

    #[test]
    fn the_ledger_counts_a_retried_report_once() {
        let mut ledger = SequenceLedger::default();
        let now = at("2021-11-05T08:10:00Z");
        assert_eq!(ledger.admit("a", 1, now), Admission::New);
        assert_eq!(ledger.admit("a", 1, now), Admission::Duplicate);
        assert_eq!(ledger.admit("b", 1, now), Admission::New);
        assert_eq!(ledger.admit("a", 2, now), Admission::New);
        assert_eq!(ledger.admit("a", 1, now), Admission::Duplicate);
        ledger.expire(at("2021-11-05T09:10:01Z"), 3600);
        assert!(ledger.is_empty());
        assert_eq!(ledger.admit("a", 1, now), Admission::New);
    }
}
