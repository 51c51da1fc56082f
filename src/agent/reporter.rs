//! The agent's bookkeeping between the log and the feedback endpoint: counts of
//! the open period, the sealed reports waiting to be acknowledged (the
//! outbox), sequence numbers, and the log position that every sealed report
//! covers. Pure: the caller passes the time and does the I/O.
//!
//! Exactly-once counting rests on three rules:
//! - a sealed report keeps its sequence and content until the receiver
//!   acknowledges it (the receiver counts each sequence once);
//! - reports are sent one at a time, oldest first, so only the head of the
//!   outbox can ever have reached the receiver; when the outbox is full, new
//!   counts merge into its newest report, which cannot have been sent yet;
//! - the log position saved with the outbox is the one at the last seal, so
//!   after a crash the lines of the unsealed period are read again and
//!   counted once.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::agent::counts::{AttemptCounts, Conclusive};
use crate::agent::follow::FollowState;
use crate::agent::report::{
    AgentIdentity, ComplaintCount, ConclusiveEvidence, DrainReport, Dropped, FeedbackReport,
    IpBindingReport, LineCounts, Period, PoolRef, QueueReport, FEEDBACK_API_VERSION,
    MAX_CONCLUSIVE_PER_PROVIDER, MAX_REPLY_CHARS,
};
use crate::reputation::classifier::Verdict;
use crate::reputation::providers::SharedName;

/// Who reports, about what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReporterConfig {
    pub agent_name: String,
    pub source_ip: IpAddr,
    pub pool: PoolRef,
    /// Reports kept while the endpoint does not acknowledge them (at least 1).
    pub max_buffered_reports: usize,
}

/// What survives a restart (written with the agent's state file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReporterState {
    pub instance: String,
    pub next_sequence: u64,
    /// The log position up to which every line is in a sealed report.
    pub committed: FollowState,
    pub outbox: Vec<FeedbackReport>,
    #[serde(default)]
    pub pending_dropped: Dropped,
}

/// What [`Reporter::seal`] did with the open counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sealed {
    /// A new report with this sequence.
    New(u64),
    /// Added to the waiting report with this sequence (the outbox is full).
    Merged(u64),
    /// Kept open: the outbox is full and its only report may be in flight.
    Held,
}

pub struct Reporter {
    config: ReporterConfig,
    instance: String,
    next_sequence: u64,
    open: AttemptCounts<Timestamp>,
    open_lines: LineCounts,
    open_since: Timestamp,
    pending_dropped: Dropped,
    outbox: VecDeque<FeedbackReport>,
    committed: FollowState,
    config_version: Option<String>,
    /// The latest read of the sender's queue, sent with every report.
    queue: Option<QueueReport>,
    /// How the sender's drain ended, until a report carries it (exactly one does).
    drain: Option<DrainReport>,
    /// The latest check of the bind address, sent with every report.
    ip_binding: Option<IpBindingReport>,
    /// Spam complaints of the open period, per provider.
    open_complaints: BTreeMap<String, u64>,
    /// Everything dropped since this reporter started (for metrics).
    dropped_so_far: Dropped,
}

fn open_counts() -> AttemptCounts<Timestamp> {
    AttemptCounts::with_conclusive_cap(MAX_CONCLUSIVE_PER_PROVIDER)
}

/// The reply without what exceeds [`MAX_REPLY_CHARS`].
fn cut_reply(reply: &str) -> &str {
    match reply.char_indices().nth(MAX_REPLY_CHARS) {
        Some((at, _)) => &reply[..at],
        None => reply,
    }
}

impl Reporter {
    /// A reporter continuing from `saved`, or a new instance numbering from 1.
    pub fn new(
        config: ReporterConfig,
        saved: Option<ReporterState>,
        new_instance: impl FnOnce() -> String,
        now: Timestamp,
    ) -> Self {
        let saved = saved.unwrap_or_else(|| ReporterState {
            instance: new_instance(),
            next_sequence: 1,
            committed: FollowState::default(),
            outbox: Vec::new(),
            pending_dropped: Dropped::default(),
        });
        Reporter {
            config: ReporterConfig {
                max_buffered_reports: config.max_buffered_reports.max(1),
                ..config
            },
            instance: saved.instance,
            next_sequence: saved.next_sequence.max(1),
            open: open_counts(),
            open_lines: LineCounts::default(),
            open_since: now,
            pending_dropped: saved.pending_dropped,
            outbox: saved.outbox.into(),
            committed: saved.committed,
            config_version: None,
            queue: None,
            drain: None,
            ip_binding: None,
            open_complaints: BTreeMap::new(),
            dropped_so_far: Dropped::default(),
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The log position to resume from after a restart.
    pub fn committed(&self) -> &FollowState {
        &self.committed
    }

    /// Counts one classified attempt (and its line).
    pub fn record_attempt(
        &mut self,
        verdict: &Verdict,
        reply: &str,
        at: impl FnOnce() -> Timestamp,
    ) {
        self.open_lines.read += 1;
        // A reply naming only other addresses is no evidence against this IP.
        if verdict.ip.is_some_and(|ip| ip != self.config.source_ip) {
            let seen = verdict.clone().for_sender(self.config.source_ip, reply);
            self.open.add(&seen, cut_reply(reply), at);
            return;
        }
        self.open.add(verdict, cut_reply(reply), at);
    }

    /// Counts one line that is not a delivery attempt.
    pub fn record_skip(&mut self, reason: &'static str) {
        self.open_lines.read += 1;
        *self
            .open_lines
            .skipped
            .entry(reason.to_string())
            .or_default() += 1;
    }

    /// A log file that could not be read to its end.
    pub fn record_lost_log_file(&mut self) {
        self.pending_dropped.log_files += 1;
        self.dropped_so_far.log_files += 1;
    }

    /// Everything dropped since this reporter started.
    pub fn dropped_so_far(&self) -> &Dropped {
        &self.dropped_so_far
    }

    /// The queue figures the next report sent carries (the newest read wins).
    pub fn set_queue(&mut self, queue: Option<QueueReport>) {
        self.queue = queue;
    }

    /// The drain's outcome: the next report sealed carries it (one is sealed
    /// for it even when nothing else is new).
    pub fn set_drain(&mut self, drain: DrainReport) {
        self.drain = Some(drain);
    }

    /// The latest check of the bind address: every report sent from now on
    /// carries it (the newest check wins, like the queue figures).
    pub fn set_ip_binding(&mut self, binding: Option<IpBindingReport>) {
        self.ip_binding = binding;
    }

    /// The sender configuration now applied, reported from the next report on.
    pub fn set_config_version(&mut self, version: Option<String>) {
        self.config_version = version;
    }

    pub fn open_has_conclusive(&self) -> bool {
        self.open.has_conclusive()
    }

    fn open_is_empty(&self) -> bool {
        self.open.is_empty() && self.open_lines.read == 0 && self.open_complaints.is_empty()
    }

    /// Counts one spam complaint about this IP from `provider`'s users into
    /// the open period.
    pub fn record_complaint(&mut self, provider: &str) {
        let n = self
            .open_complaints
            .entry(provider.to_string())
            .or_default();
        *n = n.saturating_add(1);
    }

    /// Closes the open period at `now`, with `position` the follower's position
    /// after its last line. An empty period still makes a report (a heartbeat
    /// that carries the config version) when nothing else waits.
    pub fn seal(&mut self, now: Timestamp, position: FollowState) -> Option<Sealed> {
        if self.open_is_empty()
            && self.pending_dropped.is_empty()
            && self.drain.is_none()
            && !self.outbox.is_empty()
        {
            self.committed = position;
            return None;
        }
        let counts = std::mem::replace(&mut self.open, open_counts());
        let lines = std::mem::take(&mut self.open_lines);
        let complaints = std::mem::take(&mut self.open_complaints);
        let mut dropped = std::mem::take(&mut self.pending_dropped);
        dropped.conclusive_replies += counts.dropped_conclusive();
        let period = Period {
            start: self.open_since,
            end: now,
        };

        if self.outbox.len() < self.config.max_buffered_reports {
            self.dropped_so_far.conclusive_replies += counts.dropped_conclusive();
            let sequence = self.next_sequence;
            self.next_sequence += 1;
            let mut report = self.report(sequence, period, counts, lines, dropped);
            report.complaints = complaint_rows(complaints);
            report.drain = self.drain.take();
            self.outbox.push_back(report);
            self.open_since = now;
            self.committed = position;
            return Some(Sealed::New(sequence));
        }
        if self.outbox.len() >= 2 {
            let Some(last) = self.outbox.back_mut() else {
                unreachable!("the outbox holds at least two reports")
            };
            let own = counts.dropped_conclusive();
            let overflow = merge_into(last, counts, lines, &dropped, now);
            let mut merged: BTreeMap<String, u64> = std::mem::take(&mut last.complaints)
                .into_iter()
                .map(|row| (row.provider, row.count))
                .collect();
            for (provider, n) in complaints {
                let total = merged.entry(provider).or_default();
                *total = total.saturating_add(n);
            }
            last.complaints = complaint_rows(merged);
            self.dropped_so_far.conclusive_replies += own + overflow;
            let sequence = last.sequence;
            if let Some(drain) = self.drain.take() {
                last.drain = Some(drain);
            }
            self.open_since = now;
            self.committed = position;
            return Some(Sealed::Merged(sequence));
        }
        // Put everything back: the only waiting report may already be at the receiver.
        self.open = counts;
        self.open_lines = lines;
        self.open_complaints = complaints;
        dropped.conclusive_replies -= self.open.dropped_conclusive();
        self.pending_dropped = dropped;
        Some(Sealed::Held)
    }

    fn report(
        &self,
        sequence: u64,
        period: Period,
        counts: AttemptCounts<Timestamp>,
        lines: LineCounts,
        dropped: Dropped,
    ) -> FeedbackReport {
        FeedbackReport {
            api_version: FEEDBACK_API_VERSION.to_string(),
            agent: AgentIdentity {
                name: self.config.agent_name.clone(),
                instance: self.instance.clone(),
            },
            sequence,
            source_ip: self.config.source_ip,
            pool: self.config.pool.clone(),
            period,
            totals: counts.totals(),
            conclusive: evidence(counts),
            lines,
            dropped,
            config_version: self.config_version.clone(),
            queue: self.queue.clone(),
            drain: None,
            ip_binding: self.ip_binding.clone(),
            complaints: Vec::new(),
        }
    }

    /// The report to send now (the oldest), with the current config version.
    pub fn next_to_send(&self) -> Option<FeedbackReport> {
        let mut report = self.outbox.front()?.clone();
        report.config_version = self.config_version.clone().or(report.config_version);
        report.queue = self.queue.clone().or(report.queue);
        report.ip_binding = self.ip_binding.clone().or(report.ip_binding);
        Some(report)
    }

    /// The receiver counted (or had counted) `sequence`.
    pub fn acknowledge(&mut self, sequence: u64) -> bool {
        if self.outbox.front().is_some_and(|r| r.sequence == sequence) {
            self.outbox.pop_front();
            return true;
        }
        false
    }

    /// The receiver refused `sequence` as invalid: it is dropped, and said so in the next report.
    pub fn reject(&mut self, sequence: u64) -> bool {
        if self.outbox.front().is_none_or(|r| r.sequence != sequence) {
            return false;
        }
        if let Some(report) = self.outbox.pop_front() {
            self.pending_dropped.add(&report.dropped);
            self.pending_dropped.reports += 1;
            self.pending_dropped.attempts = self
                .pending_dropped
                .attempts
                .saturating_add(report.attempts());
            self.dropped_so_far.reports += 1;
            self.dropped_so_far.attempts = self
                .dropped_so_far
                .attempts
                .saturating_add(report.attempts());
        }
        true
    }

    pub fn buffered(&self) -> usize {
        self.outbox.len()
    }

    /// Attempts counted but not yet acknowledged (open and waiting).
    pub fn unacknowledged_attempts(&self) -> u64 {
        self.outbox
            .iter()
            .map(FeedbackReport::attempts)
            .sum::<u64>()
            + self.open.attempts()
    }

    /// What to save so a restart continues from here.
    pub fn state(&self) -> ReporterState {
        ReporterState {
            instance: self.instance.clone(),
            next_sequence: self.next_sequence,
            committed: self.committed.clone(),
            outbox: self.outbox.iter().cloned().collect(),
            pending_dropped: self.pending_dropped.clone(),
        }
    }
}

fn complaint_rows(complaints: BTreeMap<String, u64>) -> Vec<ComplaintCount> {
    complaints
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(provider, count)| ComplaintCount { provider, count })
        .collect()
}

fn evidence(counts: AttemptCounts<Timestamp>) -> Vec<ConclusiveEvidence> {
    counts
        .into_conclusive()
        .into_iter()
        .map(|c| ConclusiveEvidence {
            provider: c.provider.to_string(),
            reply: c.reply,
            at: c.at,
            named_ip: c.named_ip,
            pause_seconds: c.pause_seconds,
        })
        .collect()
}

/// Adds a period's counts to a waiting report; returns the conclusive replies
/// that no longer fit (already added to the report's `dropped`).
fn merge_into(
    report: &mut FeedbackReport,
    counts: AttemptCounts<Timestamp>,
    lines: LineCounts,
    dropped: &Dropped,
    now: Timestamp,
) -> u64 {
    let own = counts.dropped_conclusive();
    let mut merged = open_counts();
    for row in &report.totals {
        merged.add_count(
            &SharedName::new(&row.provider),
            row.outcome,
            row.category,
            row.count,
        );
    }
    for c in std::mem::take(&mut report.conclusive) {
        merged.push_conclusive(Conclusive {
            provider: SharedName::new(&c.provider),
            reply: c.reply,
            at: c.at,
            named_ip: c.named_ip,
            pause_seconds: c.pause_seconds,
        });
    }
    merged.merge(counts);
    let overflow = merged.dropped_conclusive().saturating_sub(own);
    report.dropped.add(dropped);
    report.dropped.conclusive_replies += overflow;
    report.totals = merged.totals();
    report.conclusive = evidence(merged);
    report.lines.read += lines.read;
    for (reason, n) in lines.skipped {
        *report.lines.skipped.entry(reason).or_default() += n;
    }
    report.period.end = now;
    overflow
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reputation::classifier::Classifier;

    fn t(s: u32) -> Timestamp {
        Timestamp::from_second(1_636_099_800 + i64::from(s)).unwrap()
    }

    fn reporter(max: usize) -> Reporter {
        let config = ReporterConfig {
            agent_name: "pod".into(),
            source_ip: "203.0.113.10".parse().unwrap(),
            pool: PoolRef {
                namespace: "mail".into(),
                name: "bulk".into(),
            },
            max_buffered_reports: max,
        };
        Reporter::new(config, None, || "inst-1".into(), t(0))
    }

    fn position(offset: u64) -> FollowState {
        FollowState {
            current: Some(crate::agent::follow::FilePosition {
                dev: 1,
                inode: 2,
                offset,
                head: None,
                tail: None,
                discarding: false,
            }),
            draining: Vec::new(),
        }
    }

    fn add(r: &mut Reporter, reply: &str, domain: &str, n: usize) {
        let v = Classifier::builtin().classify_text(reply, Some(domain), None);
        for _ in 0..n {
            r.record_attempt(&v, reply, || t(1));
        }
    }

    const BAN: &str = "550 5.7.606 Access denied, banned sending IP [203.0.113.10]";

    #[test]
    fn sealed_reports_are_numbered_and_kept_until_acknowledged() {
        let mut r = reporter(8);
        add(&mut r, "250 ok", "gmail.com", 3);
        r.record_skip("not_delivery");
        assert_eq!(r.seal(t(5), position(100)), Some(Sealed::New(1)));
        let head = r.next_to_send().unwrap();
        assert_eq!((head.sequence, head.attempts(), head.lines.read), (1, 3, 4));
        assert_eq!(head.lines.skipped["not_delivery"], 1);
        assert_eq!(
            head.period,
            Period {
                start: t(0),
                end: t(5)
            }
        );
        assert_eq!(r.committed(), &position(100));
        assert!(!r.acknowledge(2), "only the head can be acknowledged");
        assert!(r.acknowledge(1));
        // An empty period with nothing waiting is a heartbeat.
        assert_eq!(r.seal(t(10), position(100)), Some(Sealed::New(2)));
        assert_eq!(r.next_to_send().unwrap().attempts(), 0);
        // ... but not while a report waits.
        assert_eq!(r.seal(t(15), position(100)), None);
    }

    #[test]
    fn every_report_sent_carries_the_latest_bind_check() {
        let mut r = reporter(8);
        assert_eq!(r.seal(t(5), position(0)), Some(Sealed::New(1)));
        assert_eq!(r.next_to_send().unwrap().ip_binding, None);
        let unbound = IpBindingReport {
            address: "203.0.113.10".parse().unwrap(),
            bound: false,
            detail: Some("Cannot assign requested address".into()),
        };
        r.set_ip_binding(Some(unbound.clone()));
        // Sealed before the check, sent after it: it carries the check.
        assert_eq!(r.next_to_send().unwrap().ip_binding, Some(unbound));
        let bound = IpBindingReport {
            address: "203.0.113.10".parse().unwrap(),
            bound: true,
            detail: None,
        };
        r.set_ip_binding(Some(bound.clone()));
        assert!(r.acknowledge(1));
        assert_eq!(r.seal(t(10), position(0)), Some(Sealed::New(2)));
        assert_eq!(r.next_to_send().unwrap().ip_binding, Some(bound));
    }

    #[test]
    fn a_drain_is_sealed_into_exactly_one_report_even_while_one_waits() {
        let mut r = reporter(8);
        assert_eq!(r.seal(t(5), position(0)), Some(Sealed::New(1)));
        let drain = DrainReport {
            to: "mf-pool-bulk.mail.svc:25".into(),
            queued_at_start: 1000,
            left: 3,
            took_ms: 45_000,
        };
        r.set_drain(drain.clone());
        // Report 1 waits and nothing else is new: the drain still gets a report.
        assert_eq!(r.seal(t(10), position(0)), Some(Sealed::New(2)));
        assert_eq!(r.next_to_send().unwrap().drain, None);
        assert!(r.acknowledge(1));
        assert_eq!(r.next_to_send().unwrap().drain, Some(drain));
        assert!(r.acknowledge(2));
        assert_eq!(r.seal(t(15), position(0)), Some(Sealed::New(3)));
        assert_eq!(r.next_to_send().unwrap().drain, None, "sent once");
    }

    #[test]
    fn complaints_are_sealed_into_the_next_report_and_merged_when_the_outbox_is_full() {
        let mut r = reporter(2);
        r.record_complaint("yahoo");
        r.record_complaint("yahoo");
        r.record_complaint("google");
        assert_eq!(r.seal(t(10), position(0)), Some(Sealed::New(1)));
        let sent = r.next_to_send().unwrap();
        assert_eq!(
            sent.complaints,
            vec![
                ComplaintCount {
                    provider: "google".into(),
                    count: 1
                },
                ComplaintCount {
                    provider: "yahoo".into(),
                    count: 2
                }
            ]
        );
        r.record_complaint("yahoo");
        assert_eq!(r.seal(t(20), position(0)), Some(Sealed::New(2)));
        r.record_complaint("yahoo");
        assert_eq!(r.seal(t(30), position(0)), Some(Sealed::Merged(2)));
        assert_eq!(r.state().outbox[1].complaints[0].count, 2);
        assert!(r.acknowledge(1) && r.acknowledge(2));
        // Nothing open: no complaints in the heartbeat.
        r.seal(t(40), position(0));
        assert!(r.next_to_send().unwrap().complaints.is_empty());
    }

    #[test]
    fn a_full_outbox_merges_into_its_newest_report_and_loses_nothing() {
        let mut r = reporter(2);
        let mut expected = 0;
        for i in 0..12u32 {
            add(&mut r, "250 ok", "gmail.com", 2);
            add(&mut r, BAN, "hotmail.com", 1);
            expected += 3;
            r.seal(t(i), position(u64::from(i)));
        }
        assert_eq!(r.buffered(), 2);
        assert_eq!(r.unacknowledged_attempts(), expected);
        let state = r.state();
        assert_eq!(state.outbox[0].sequence, 1);
        assert_eq!(state.outbox[0].attempts(), 3);
        assert_eq!(state.outbox[1].sequence, 2);
        assert_eq!(state.outbox[1].attempts(), 33);
        assert_eq!(
            state.outbox[1].conclusive.len(),
            MAX_CONCLUSIVE_PER_PROVIDER
        );
        assert_eq!(
            state.outbox[1].dropped.conclusive_replies,
            11 - MAX_CONCLUSIVE_PER_PROVIDER as u64
        );
        state.outbox[1].validate().unwrap();
        assert_eq!(state.committed, position(11));
        assert_eq!(r.dropped_so_far().conclusive_replies, 1);
    }

    #[test]
    fn with_room_for_one_report_the_open_period_is_held() {
        let mut r = reporter(1);
        add(&mut r, BAN, "hotmail.com", 1);
        assert_eq!(r.seal(t(1), position(10)), Some(Sealed::New(1)));
        add(&mut r, BAN, "hotmail.com", 12);
        assert_eq!(r.seal(t(2), position(20)), Some(Sealed::Held));
        assert_eq!(
            r.committed(),
            &position(10),
            "held lines are read again after a crash"
        );
        assert!(r.acknowledge(1));
        assert_eq!(r.seal(t(3), position(30)), Some(Sealed::New(2)));
        let report = r.next_to_send().unwrap();
        assert_eq!(report.attempts(), 12);
        assert_eq!(report.dropped.conclusive_replies, 2);
        assert_eq!(report.period.start, t(1));
    }

    #[test]
    fn a_refused_report_is_dropped_and_said_in_the_next_one() {
        let mut r = reporter(4);
        add(&mut r, "250 ok", "gmail.com", 5);
        r.seal(t(1), position(1));
        r.record_lost_log_file();
        assert!(r.reject(1));
        r.seal(t(2), position(2));
        let next = r.next_to_send().unwrap();
        assert_eq!(next.sequence, 2);
        assert_eq!(
            next.dropped,
            Dropped {
                conclusive_replies: 0,
                reports: 1,
                attempts: 5,
                log_files: 1
            }
        );
    }

    #[test]
    fn a_report_tells_the_engine_what_a_tally_would() {
        use crate::reputation::tally::Tally;
        let replies = [
            (BAN, "hotmail.com"),
            ("250 2.0.0 OK", "outlook.com"),
            ("451 4.7.650 The mail server [203.0.113.10] has been temporarily rate limited due to IP reputation", "hotmail.com"),
            ("421 4.7.0 [TSS04] Messages from 203.0.113.10 temporarily deferred", "yahoo.com"),
            ("553 5.7.2 [TSS09] All messages from 203.0.113.10 will be permanently deferred", "yahoo.com"),
            ("550 5.1.1 user unknown", "gmail.com"),
            ("550 5.7.606 Access denied, banned sending IP [198.51.100.1]", "live.com"),
            ("connect to mx.example[192.0.2.1]:25: Connection refused", "example.org"),
        ];
        let classifier = Classifier::builtin();
        let mut r = reporter(4);
        let mut tally = Tally::for_sender("203.0.113.10".parse().unwrap());
        for (i, (reply, domain)) in replies.iter().cycle().take(40).enumerate() {
            let v = classifier.classify_text(reply, Some(domain), None);
            let at = t(i as u32);
            r.record_attempt(&v, reply, || at);
            tally.add(&v, reply, at);
        }
        r.seal(t(60), position(1));
        let report = r.next_to_send().unwrap();
        assert_eq!(report.to_feedback(), tally.drain());
    }

    #[test]
    fn state_round_trips_and_numbering_continues() {
        let mut r = reporter(4);
        add(&mut r, BAN, "hotmail.com", 1);
        r.seal(t(1), position(7));
        r.set_config_version(Some("v2".into()));
        let saved: ReporterState =
            serde_json::from_str(&serde_json::to_string(&r.state()).unwrap()).unwrap();
        let config = ReporterConfig {
            agent_name: "pod".into(),
            source_ip: "203.0.113.10".parse().unwrap(),
            pool: PoolRef {
                namespace: "mail".into(),
                name: "bulk".into(),
            },
            max_buffered_reports: 4,
        };
        let mut again = Reporter::new(
            config,
            Some(saved),
            || unreachable!("the instance is kept"),
            t(2),
        );
        assert_eq!(again.instance(), "inst-1");
        assert_eq!(again.next_to_send().unwrap().sequence, 1);
        assert_eq!(again.committed(), &position(7));
        add(&mut again, "250 ok", "gmail.com", 1);
        assert_eq!(again.seal(t(3), position(9)), Some(Sealed::New(2)));
        let long = "é".repeat(MAX_REPLY_CHARS + 10);
        assert_eq!(cut_reply(&long).chars().count(), MAX_REPLY_CHARS);
    }
}
