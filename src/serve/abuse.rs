//! `POST /v1/abuse-reports` (docs/FEEDBACK-API.md, "Abuse reports"): an abuse
//! feedback report (ARF, RFC 5965) posted to the port instead of read from an
//! agent's complaints folder. Pure: the body in, the feedback report that
//! counts its complaint out.
//!
//! The report becomes a [`FeedbackReport`] holding one complaint for the
//! (IP, provider) it names, so it is counted, stored and acknowledged exactly
//! like the complaints an agent reads from its folder: the same engine signal,
//! the same status write (operator) or journal entry (standalone), the same
//! metrics. Its `agent.instance` is the report's identity (the one the
//! agent's folder intake remembers, [`crate::reputation::complaints`]) with
//! sequence 1, so the feedback ledger that is stored with the counts refuses
//! the same report posted again as a duplicate, across restarts too.

use std::net::IpAddr;

use crate::digest::fnv1a;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::FeedbackRefusal;
use crate::agent::report::{
    AgentIdentity, ComplaintCount, Dropped, FeedbackReport, LineCounts, Period, PoolRef,
    FEEDBACK_API_VERSION,
};
use crate::fleet::Fleet;
use crate::reputation::arf::{parse_arf, ArfError, Complaint, MAX_REPORT_BYTES};
use crate::reputation::complaints::report_identities;

/// The request path.
pub const ABUSE_REPORTS_PATH: &str = "/v1/abuse-reports";

/// The `agent.name` of the feedback reports made from posted abuse reports.
pub const ABUSE_REPORT_AGENT: &str = "abuse-report";

/// Every `agent.instance` of a posted abuse report starts with this; the
/// feedback ledger keeps at most [`MAX_REMEMBERED_ABUSE_REPORTS`] of them.
pub const ABUSE_INSTANCE_PREFIX: &str = "arf ";

/// Posted abuse reports remembered per ledger (per pool for the operator):
/// past it the oldest are forgotten, so a feedback loop's volume cannot grow
/// a pool's status without bound. About 100 bytes each in the status.
pub const MAX_REMEMBERED_ABUSE_REPORTS: usize = 1000;

/// The whole report, `multipart/report; report-type=feedback-report`.
pub const RFC822: &str = "message/rfc822";
/// The report's fields alone (its `message/feedback-report` part).
pub const FEEDBACK_REPORT: &str = "message/feedback-report";

/// The boundary of the report a bare feedback-report part is wrapped in.
const WRAP_BOUNDARY: &str = "=_mailfleet_posted_feedback_report_=";
/// What the wrapping adds, kept free in the body bound.
const WRAP_BYTES: usize = 256;

/// The largest body read for a media type: a bare part leaves room for its wrapping.
pub fn max_body_bytes(media: &str) -> usize {
    if media == FEEDBACK_REPORT {
        MAX_REPORT_BYTES - WRAP_BYTES
    } else {
        MAX_REPORT_BYTES
    }
}

/// The media type of a `Content-Type` value, lowercased, if it is one this
/// endpoint reads.
pub fn accepted_media(content_type: &str) -> Option<&'static str> {
    let media = content_type.split(';').next()?.trim().to_ascii_lowercase();
    [RFC822, FEEDBACK_REPORT]
        .into_iter()
        .find(|accepted| *accepted == media)
}

/// A posted report, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostedAbuseReport {
    pub complaint: Complaint,
    /// A stable digest of the body, the identity of a report that carries no
    /// Message-ID at all.
    pub digest: u64,
}

/// Why a posted abuse report is not counted.
#[derive(Debug, thiserror::Error)]
pub enum AbuseReportError {
    #[error("the body is not an abuse feedback report: {0}")]
    Unreadable(#[from] ArfError),
    #[error("the message/feedback-report body contains the line {WRAP_BOUNDARY:?}; post the whole report as message/rfc822 instead")]
    BoundaryInBody,
    #[error("the report names no IP of ours: Source-IP {source_ip}, Received IPs [{received}] are in no SenderPool{scope}; post only reports about mail sent from a pool's spec.ips")]
    NotOurs {
        source_ip: String,
        received: String,
        scope: String,
    },
}

impl AbuseReportError {
    /// A short label for metrics: the ARF reader's kind, or `not_ours`.
    pub fn kind(&self) -> &'static str {
        match self {
            AbuseReportError::Unreadable(e) => e.kind(),
            AbuseReportError::BoundaryInBody => "not_feedback_report",
            AbuseReportError::NotOurs { .. } => "not_ours",
        }
    }

    /// A report that does not parse is a bad request (400); one about mail
    /// that is not ours can never be counted (422).
    pub fn refusal(&self) -> FeedbackRefusal {
        match self {
            AbuseReportError::NotOurs { .. } => FeedbackRefusal::Invalid(self.to_string()),
            _ => FeedbackRefusal::BadRequest(self.to_string()),
        }
    }
}

/// Reads a posted body of media type `media` (from [`accepted_media`]).
pub fn read_posted(media: &str, body: &[u8]) -> Result<PostedAbuseReport, AbuseReportError> {
    let digest = fnv1a(body);
    let complaint = if media == FEEDBACK_REPORT {
        if body.len() > max_body_bytes(media) {
            return Err(ArfError::TooLarge { bytes: body.len() }.into());
        }
        if String::from_utf8_lossy(body).contains(WRAP_BOUNDARY) {
            return Err(AbuseReportError::BoundaryInBody);
        }
        let mut wrapped = format!(
            "Content-Type: multipart/report; report-type=feedback-report; boundary=\"{WRAP_BOUNDARY}\"\r\n\r\n--{WRAP_BOUNDARY}\r\nContent-Type: {FEEDBACK_REPORT}\r\n\r\n"
        )
        .into_bytes();
        wrapped.extend_from_slice(body);
        wrapped.extend_from_slice(format!("\r\n--{WRAP_BOUNDARY}--\r\n").as_bytes());
        parse_arf(&wrapped)?
    } else {
        parse_arf(body)?
    };
    Ok(PostedAbuseReport { complaint, digest })
}

/// What the port answers to a posted abuse report that it stored (200).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbuseReportAnswer {
    pub api_version: String,
    /// The sending IP the complaint is counted against.
    pub ip: IpAddr,
    /// The complaining user's provider.
    pub provider: String,
    /// The SenderPool of the IP, `namespace/name`.
    pub pool: String,
    /// True when this report was counted before: acknowledged, not counted again.
    pub duplicate: bool,
}

impl AbuseReportAnswer {
    pub fn new(report: &FeedbackReport, duplicate: bool) -> Self {
        AbuseReportAnswer {
            api_version: FEEDBACK_API_VERSION.to_string(),
            ip: report.source_ip,
            provider: report
                .complaints
                .first()
                .map(|c| c.provider.clone())
                .unwrap_or_default(),
            pool: format!("{}/{}", report.pool.namespace, report.pool.name),
            duplicate,
        }
    }
}

/// The feedback report that counts `posted`'s complaint against the pool IP
/// it names, among the pools of `namespace` (every pool when `None`).
pub fn feedback_report(
    posted: &PostedAbuseReport,
    fleet: &Fleet,
    namespace: Option<&str>,
    now: Timestamp,
) -> Result<FeedbackReport, AbuseReportError> {
    let pools = fleet.pools.iter().filter(|p| {
        namespace.is_none_or(|ns| p.metadata.namespace.as_deref().unwrap_or("default") == ns)
    });
    let mut ours: Vec<(IpAddr, &crate::api::SenderPool)> = Vec::new();
    for pool in pools {
        for ip in &pool.spec.ips {
            if let Ok(address) = ip.address.trim().parse() {
                ours.push((address, pool));
            }
        }
    }
    let addresses: Vec<IpAddr> = ours.iter().map(|(ip, _)| *ip).collect();
    let complaint = &posted.complaint;
    let Some(ip) = complaint.sender_among(&addresses) else {
        return Err(AbuseReportError::NotOurs {
            source_ip: complaint
                .source_ip
                .map_or_else(|| "(none)".to_string(), |ip| ip.to_string()),
            received: complaint
                .received_ips
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            scope: namespace
                .map(|ns| format!(" of namespace {ns}"))
                .unwrap_or_default(),
        });
    };
    let pool = ours
        .iter()
        .find(|(address, _)| *address == ip)
        .map(|(_, pool)| *pool)
        .expect("the IP was found among these pools");
    let provider = fleet
        .classifier
        .providers()
        .name(complaint.provider(&fleet.classifier))
        .to_string();
    Ok(FeedbackReport {
        api_version: FEEDBACK_API_VERSION.to_string(),
        agent: AgentIdentity {
            name: ABUSE_REPORT_AGENT.to_string(),
            instance: instance_of(posted, ip),
        },
        sequence: 1,
        source_ip: ip,
        pool: PoolRef {
            namespace: pool
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: pool.metadata.name.clone().unwrap_or_default(),
        },
        period: Period {
            start: now,
            end: now,
        },
        totals: Vec::new(),
        conclusive: Vec::new(),
        lines: LineCounts::default(),
        dropped: Dropped::default(),
        config_version: None,
        queue: None,
        drain: None,
        ip_binding: None,
        complaints: vec![ComplaintCount { provider, count: 1 }],
    })
}

/// The ledger instance of a report: its first identity (the report's own
/// Message-ID, else the original's Message-ID with IP and feedback type),
/// else the digest of its bytes. An identity too long for an instance is
/// replaced by its digest.
fn instance_of(posted: &PostedAbuseReport, ip: IpAddr) -> String {
    let identity = report_identities(&posted.complaint, ip)
        .into_iter()
        .next()
        .unwrap_or_else(|| format!("bytes:{:016x}", posted.digest));
    if ABUSE_INSTANCE_PREFIX.len() + identity.len() <= MAX_INSTANCE_CHARS {
        format!("{ABUSE_INSTANCE_PREFIX}{identity}")
    } else {
        format!(
            "{ABUSE_INSTANCE_PREFIX}digest:{:016x}",
            fnv1a(identity.as_bytes())
        )
    }
}

/// `FeedbackReport::validate`'s bound on `agent.instance`.
const MAX_INSTANCE_CHARS: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reputation::complaints::sample_report;
    use std::path::Path;

    fn now() -> Timestamp {
        "2026-11-29T08:10:00Z".parse().unwrap()
    }

    fn fleet() -> Fleet {
        let m = crate::manifests::load_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet"),
        )
        .unwrap();
        let mut fleet = Fleet::new(m, None).unwrap();
        fleet.advance(now()).unwrap();
        fleet
    }

    fn first_ip(fleet: &Fleet) -> String {
        fleet.pools[0].spec.ips[0].address.clone()
    }

    #[test]
    fn a_report_about_a_pool_ip_becomes_one_complaint_of_its_pool() {
        let fleet = fleet();
        let ip = first_ip(&fleet);
        let raw = format!(
            "Message-ID: <fbl-1@fbl.example>\r\n{}",
            sample_report(&ip, "u@yahoo.com", "1@x")
        );
        let posted = read_posted(RFC822, raw.as_bytes()).unwrap();
        let report = feedback_report(&posted, &fleet, None, now()).unwrap();
        report.validate().unwrap();
        assert_eq!(report.source_ip.to_string(), ip);
        assert_eq!(
            report.complaints,
            vec![ComplaintCount {
                provider: "yahoo".into(),
                count: 1
            }]
        );
        assert_eq!(report.agent.instance, "arf report:<fbl-1@fbl.example>");
        assert_eq!(report.sequence, 1);
        let pool = &fleet.pools[0];
        assert_eq!(
            format!("{}/{}", report.pool.namespace, report.pool.name),
            format!(
                "{}/{}",
                pool.metadata.namespace.as_deref().unwrap(),
                pool.metadata.name.as_deref().unwrap()
            )
        );
    }

    #[test]
    fn a_bare_feedback_report_part_is_read_and_identified_by_its_bytes() {
        let fleet = fleet();
        let ip = first_ip(&fleet);
        let part = format!(
            "Feedback-Type: abuse\r\nUser-Agent: test/1\r\nVersion: 1\r\nSource-IP: {ip}\r\nOriginal-Rcpt-To: <u@outlook.com>\r\n"
        );
        let posted = read_posted(FEEDBACK_REPORT, part.as_bytes()).unwrap();
        let report = feedback_report(&posted, &fleet, None, now()).unwrap();
        assert_eq!(report.complaints[0].provider, "microsoft");
        assert!(report.agent.instance.starts_with("arf bytes:"));
        let again = read_posted(FEEDBACK_REPORT, part.as_bytes()).unwrap();
        assert_eq!(
            feedback_report(&again, &fleet, None, now())
                .unwrap()
                .agent
                .instance,
            report.agent.instance
        );
        let sneaky = format!("{part}--{WRAP_BOUNDARY}--\r\n");
        assert!(matches!(
            read_posted(FEEDBACK_REPORT, sneaky.as_bytes()),
            Err(AbuseReportError::BoundaryInBody)
        ));
    }

    #[test]
    fn a_report_about_another_ip_or_namespace_names_what_it_found() {
        let fleet = fleet();
        let posted = read_posted(
            RFC822,
            sample_report("192.0.2.77", "u@yahoo.com", "2@x").as_bytes(),
        )
        .unwrap();
        let err = feedback_report(&posted, &fleet, None, now()).unwrap_err();
        assert_eq!(err.kind(), "not_ours");
        assert!(err.to_string().contains("192.0.2.77"), "{err}");
        assert_eq!(
            err.refusal().status(),
            http::StatusCode::UNPROCESSABLE_ENTITY
        );
        let ip = first_ip(&fleet);
        let posted =
            read_posted(RFC822, sample_report(&ip, "u@yahoo.com", "3@x").as_bytes()).unwrap();
        let err = feedback_report(&posted, &fleet, Some("elsewhere"), now()).unwrap_err();
        assert!(err.to_string().contains("namespace elsewhere"), "{err}");
    }

    #[test]
    fn garbage_and_oversize_bodies_are_bad_requests_with_the_readers_kind() {
        let err = read_posted(RFC822, b"hello").unwrap_err();
        assert_eq!(err.kind(), "not_feedback_report");
        assert_eq!(err.refusal().status(), http::StatusCode::BAD_REQUEST);
        let big = vec![b'x'; MAX_REPORT_BYTES + 1];
        assert_eq!(read_posted(RFC822, &big).unwrap_err().kind(), "too_large");
        let big = vec![b'x'; max_body_bytes(FEEDBACK_REPORT) + 1];
        assert_eq!(
            read_posted(FEEDBACK_REPORT, &big).unwrap_err().kind(),
            "too_large"
        );
    }

    #[test]
    fn only_the_two_report_media_types_are_accepted() {
        assert_eq!(accepted_media("message/rfc822"), Some(RFC822));
        assert_eq!(
            accepted_media("Message/Feedback-Report; charset=us-ascii"),
            Some(FEEDBACK_REPORT)
        );
        assert_eq!(accepted_media("application/json"), None);
    }

    #[test]
    fn a_long_identity_becomes_a_digest_that_fits_an_instance() {
        let fleet = fleet();
        let ip = first_ip(&fleet);
        let long = "x".repeat(300);
        let raw = format!(
            "Message-ID: <{long}@fbl.example>\r\n{}",
            sample_report(&ip, "u@yahoo.com", "4@x")
        );
        let posted = read_posted(RFC822, raw.as_bytes()).unwrap();
        let report = feedback_report(&posted, &fleet, None, now()).unwrap();
        report.validate().unwrap();
        assert!(report.agent.instance.starts_with("arf digest:"));
    }
}
