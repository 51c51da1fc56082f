//! Counting abuse feedback reports per (sending IP, provider). Pure.
//!
//! Each report is read ([`crate::reputation::arf`]), matched to one of our IPs
//! and to the complaining user's provider, and counted once: a report that does
//! not parse, names no IP of ours, or repeats one already counted is counted
//! among the skipped, never among the complaints.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::IpAddr;

use serde::Serialize;

use crate::reputation::arf::{parse_arf, ArfError, Complaint};
use crate::reputation::classifier::Classifier;

/// The most report identities remembered for spotting a report sent twice;
/// past it the oldest are forgotten.
pub const MAX_REMEMBERED_REPORTS: usize = 100_000;

/// The complaints about one (IP, provider) pair.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PairComplaints {
    /// Reports counted.
    pub reports: u64,
    /// Their `Incidents` summed (one report may stand for several).
    pub incidents: u64,
    /// Reports per `Feedback-Type`.
    pub feedback_types: BTreeMap<String, u64>,
}

/// What became of one report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Intake {
    Counted { ip: IpAddr, provider: String },
    Unreadable(ArfError),
    NotOurs,
    Duplicate,
}

impl Intake {
    /// The skip reason, for counters: `not_ours`, `duplicate`, or the reader's kind.
    pub fn skip_reason(&self) -> Option<&'static str> {
        match self {
            Intake::Counted { .. } => None,
            Intake::Unreadable(e) => Some(e.kind()),
            Intake::NotOurs => Some("not_ours"),
            Intake::Duplicate => Some("duplicate"),
        }
    }
}

/// Complaints per (IP, provider), and the reports skipped per reason.
#[derive(Clone, Debug, Default)]
pub struct ComplaintCounts {
    pub pairs: BTreeMap<(IpAddr, String), PairComplaints>,
    pub skipped: BTreeMap<&'static str, u64>,
    seen: SeenReports,
}

/// The identities of reports already counted, oldest first, so a report
/// delivered again (the report's own Message-ID) or another report about the
/// same message and feedback type (the original's Message-ID) counts once.
/// Bounded: past [`MAX_REMEMBERED_REPORTS`] the oldest are forgotten.
#[derive(Clone, Debug, Default)]
struct SeenReports {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl SeenReports {
    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: String) {
        if !self.set.insert(id.clone()) {
            return;
        }
        self.order.push_back(id);
        while self.order.len() > MAX_REMEMBERED_REPORTS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

/// The identities one report is known by: `report:<Message-ID>` and
/// `original:<Message-ID> <IP> <feedback type>`. (A `Feedback-ID` header names
/// a campaign, shared by every message of it, so it identifies no report.)
pub(crate) fn report_identities(complaint: &Complaint, ip: IpAddr) -> Vec<String> {
    let mut ids = Vec::with_capacity(2);
    if let Some(id) = complaint.report_message_id.as_deref().map(str::trim) {
        ids.push(format!("report:{id}"));
    }
    if let Some(id) = complaint.original_message_id.as_deref().map(str::trim) {
        ids.push(format!("original:{id} {ip} {}", complaint.feedback_type));
    }
    ids.retain(|id| id.len() <= MAX_IDENTITY_BYTES);
    ids
}

/// Longer identities are not remembered (a Message-ID is far shorter).
const MAX_IDENTITY_BYTES: usize = 1000;

impl ComplaintCounts {
    /// The identities of the newest `limit` reports counted, oldest first:
    /// what a restart must remember to count none of them again.
    pub fn remembered(&self, limit: usize) -> Vec<String> {
        let skip = self.seen.order.len().saturating_sub(limit);
        self.seen.order.iter().skip(skip).cloned().collect()
    }

    /// Takes identities saved by [`Self::remembered`] before a restart.
    pub fn remember(&mut self, ids: impl IntoIterator<Item = String>) {
        for id in ids {
            self.seen.insert(id);
        }
    }

    /// Reads and counts one report about mail sent from `ours`.
    pub fn add(&mut self, raw: &[u8], ours: &[IpAddr], classifier: &Classifier) -> Intake {
        let intake = self.intake(raw, ours, classifier);
        if let Some(reason) = intake.skip_reason() {
            *self.skipped.entry(reason).or_default() += 1;
        }
        intake
    }

    fn intake(&mut self, raw: &[u8], ours: &[IpAddr], classifier: &Classifier) -> Intake {
        let complaint = match parse_arf(raw) {
            Ok(c) => c,
            Err(e) => return Intake::Unreadable(e),
        };
        let Some(ip) = complaint.sender_among(ours) else {
            return Intake::NotOurs;
        };
        let ids = report_identities(&complaint, ip);
        if ids.iter().any(|id| self.seen.contains(id)) {
            return Intake::Duplicate;
        }
        for id in ids {
            self.seen.insert(id);
        }
        let provider = classifier
            .providers()
            .name(complaint.provider(classifier))
            .to_string();
        let pair = self.pairs.entry((ip, provider.clone())).or_default();
        pair.reports += 1;
        pair.incidents += u64::from(complaint.incidents);
        *pair
            .feedback_types
            .entry(complaint.feedback_type)
            .or_default() += 1;
        Intake::Counted { ip, provider }
    }
}

/// An abuse report (ARF) about mail from `source_ip` to `rcpt`, for tests.
#[cfg(test)]
pub(crate) fn sample_report(source_ip: &str, rcpt: &str, message_id: &str) -> String {
    format!(
        "Content-Type: multipart/report; report-type=feedback-report; boundary=b\r\n\
         \r\n\
         --b\r\n\
         Content-Type: text/plain\r\n\
         \r\n\
         A complaint.\r\n\
         --b\r\n\
         Content-Type: message/feedback-report\r\n\
         \r\n\
         Feedback-Type: abuse\r\n\
         User-Agent: test/1\r\n\
         Version: 1\r\n\
         Source-IP: {source_ip}\r\n\
         Original-Rcpt-To: <{rcpt}>\r\n\
         \r\n\
         --b\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n\
         Message-ID: <{message_id}>\r\n\
         \r\n\
         --b--\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::sample_report as report;

    #[test]
    fn remembered_reports_are_bounded_oldest_out() {
        let mut seen = SeenReports::default();
        for i in 0..MAX_REMEMBERED_REPORTS + 2 {
            seen.insert(format!("report:<{i}@x>"));
        }
        seen.insert("report:<5@x>".into());
        assert_eq!(seen.order.len(), MAX_REMEMBERED_REPORTS);
        assert_eq!(seen.set.len(), MAX_REMEMBERED_REPORTS);
        assert!(!seen.contains("report:<0@x>") && !seen.contains("report:<1@x>"));
        assert!(seen.contains("report:<2@x>") && seen.contains("report:<5@x>"));
    }

    #[test]
    fn the_same_report_message_id_counts_once() {
        let classifier = Classifier::builtin();
        let ours: Vec<IpAddr> = vec!["203.0.113.10".parse().unwrap()];
        let mut counts = ComplaintCounts::default();
        let with_id = |original: &str| {
            format!(
                "Message-ID: <r1@fbl.example>\r\n{}",
                report("203.0.113.10", "u@yahoo.com", original)
            )
        };
        assert!(matches!(
            counts.add(with_id("1@x").as_bytes(), &ours, &classifier),
            Intake::Counted { .. }
        ));
        assert_eq!(
            counts.add(with_id("2@x").as_bytes(), &ours, &classifier),
            Intake::Duplicate
        );
        let mut restarted = ComplaintCounts::default();
        restarted.remember(counts.remembered(100));
        assert_eq!(
            restarted.add(with_id("3@x").as_bytes(), &ours, &classifier),
            Intake::Duplicate
        );
        assert_eq!(restarted.skipped, BTreeMap::from([("duplicate", 1)]));
    }

    #[test]
    fn reports_are_counted_per_ip_and_provider_once_and_the_rest_skipped() {
        let classifier = Classifier::builtin();
        let ours: Vec<IpAddr> = vec![
            "203.0.113.10".parse().unwrap(),
            "203.0.113.11".parse().unwrap(),
        ];
        let mut counts = ComplaintCounts::default();
        let yahoo = report("203.0.113.10", "a@yahoo.com", "1@example.com");
        assert_eq!(
            counts.add(yahoo.as_bytes(), &ours, &classifier),
            Intake::Counted {
                ip: ours[0],
                provider: "yahoo".into()
            }
        );
        assert_eq!(
            counts.add(yahoo.as_bytes(), &ours, &classifier),
            Intake::Duplicate
        );
        let outlook = report("203.0.113.11", "b@outlook.com", "2@example.com");
        counts.add(outlook.as_bytes(), &ours, &classifier);
        let stranger = report("192.0.2.1", "c@yahoo.com", "3@example.com");
        assert_eq!(
            counts.add(stranger.as_bytes(), &ours, &classifier),
            Intake::NotOurs
        );
        let broken = counts.add(b"not a report", &ours, &classifier);
        assert_eq!(broken.skip_reason(), Some("not_feedback_report"));

        assert_eq!(counts.pairs.len(), 2);
        let pair = &counts.pairs[&(ours[0], "yahoo".to_string())];
        assert_eq!((pair.reports, pair.incidents), (1, 1));
        assert_eq!(pair.feedback_types.get("abuse"), Some(&1));
        assert_eq!(counts.pairs[&(ours[1], "microsoft".to_string())].reports, 1);
        assert_eq!(
            counts.skipped,
            BTreeMap::from([
                ("duplicate", 1),
                ("not_feedback_report", 1),
                ("not_ours", 1)
            ])
        );
    }
}
