//! From SNDS reports to feed verdicts for the pool's IPs. Pure.

use std::net::IpAddr;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::report::{DataReport, DataRow, IpStatusReport};
use crate::api::{FeedScores, FeedVerdict};
use crate::reputation::engine::Signal;

/// The `feed` name of SNDS verdicts.
pub const SNDS_FEED: &str = "snds";
/// SNDS speaks for Microsoft's consumer mail (Outlook.com, Hotmail, Live, MSN).
pub const SNDS_PROVIDER: &str = "microsoft";

/// One verdict about one pool IP.
#[derive(Clone, Debug, PartialEq)]
pub struct IpVerdict {
    pub ip: IpAddr,
    pub verdict: FeedVerdict,
}

impl IpVerdict {
    /// The engine signal about `self.ip`.
    pub fn signal(&self) -> Signal {
        Signal::Feed(self.verdict.clone())
    }
}

/// The verdicts of one poll.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SndsVerdicts {
    /// In the order of the pool IPs given.
    pub verdicts: Vec<IpVerdict>,
    /// Pool IPs that got no "not blocked" verdict because rows of the
    /// ip-status file were skipped (one of them might have listed the IP).
    pub withheld_clears: usize,
}

/// Verdicts for the IPv4 pool IPs (SNDS knows no IPv6). An IP inside a blocked
/// range is Blocked with the feed's reason. Any other IP is "not blocked", which
/// lets a held pair go, but only when the ip-status file was read whole: with
/// skipped rows, no IP is cleared. The data file's filter result, when given,
/// is added to the reason of a "not blocked" verdict; it never blocks.
pub fn snds_verdicts(
    pool_ips: &[IpAddr],
    status: &IpStatusReport,
    data: Option<&DataReport>,
    checked_at: Timestamp,
) -> SndsVerdicts {
    let mut out = SndsVerdicts::default();
    let clears_allowed = status.skipped.is_empty();
    for ip in pool_ips {
        let IpAddr::V4(v4) = ip else { continue };
        let mut scores = None;
        let (blocked, reason) = match status.ranges.iter().find(|r| r.covers(*v4)) {
            Some(range) => (
                true,
                format!(
                    "{} (SNDS blocked range {}-{})",
                    range.reason, range.first, range.last
                ),
            ),
            None if clears_allowed => {
                let latest = data.and_then(|d| d.rows.iter().rev().find(|row| row.ip == *v4));
                scores = latest.map(scores_of);
                (false, not_blocked_reason(latest))
            }
            None => {
                out.withheld_clears += 1;
                continue;
            }
        };
        out.verdicts.push(IpVerdict {
            ip: *ip,
            verdict: FeedVerdict {
                feed: SNDS_FEED.to_string(),
                provider: SNDS_PROVIDER.to_string(),
                blocked,
                reason: Some(reason),
                checked_at: Time(checked_at),
                scores,
            },
        });
    }
    out
}

/// The data row's columns as the engine reads them.
fn scores_of(row: &DataRow) -> FeedScores {
    FeedScores {
        filter_result: Some(row.filter.as_str().to_string()),
        complaint_basis_points: complaint_basis_points(&row.complaint_rate),
        trap_hits: row.trap_hits,
        period: Some(format!("{} - {}", row.activity_start, row.activity_end)),
    }
}

/// SNDS's complaint rate (`2.3%`, `< 0.1%`) in basis points: `< X%` is read
/// as 0 (below the smallest figure SNDS shows); an empty or unreadable
/// figure as none.
fn complaint_basis_points(text: &str) -> Option<i64> {
    let text = text.trim();
    if text.starts_with('<') {
        return Some(0);
    }
    let percent: f64 = text.strip_suffix('%')?.trim().parse().ok()?;
    (percent.is_finite() && (0.0..=100.0).contains(&percent))
        .then(|| (percent * 100.0).round() as i64)
}

fn not_blocked_reason(row: Option<&DataRow>) -> String {
    match row {
        None => "not in any SNDS blocked range".to_string(),
        Some(row) => format!(
            "not in any SNDS blocked range; filter result {} for {} - {} (complaint rate {}, trap hits {})",
            row.filter.as_str(),
            row.activity_start,
            row.activity_end,
            if row.complaint_rate.is_empty() { "n/a" } else { &row.complaint_rate },
            row.trap_hits
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::snds::{parse_data, parse_ip_status, RowProblem, SkippedRow};

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn at() -> Timestamp {
        "2021-11-05T08:10:00Z".parse().unwrap()
    }

    const STATUS: &str = "203.0.113.8,203.0.113.15,Yes,\"Blocked due to user complaints or other evidence of spamming\"\n";

    #[test]
    fn a_range_covering_a_pool_ip_blocks_it_for_microsoft() {
        let status = parse_ip_status(STATUS).unwrap();
        let out = snds_verdicts(
            &ips(&["203.0.113.10", "203.0.113.20", "2001:db8::1"]),
            &status,
            None,
            at(),
        );
        assert_eq!(out.verdicts.len(), 2, "no verdict for IPv6");
        let blocked = &out.verdicts[0];
        assert_eq!(blocked.ip, "203.0.113.10".parse::<IpAddr>().unwrap());
        assert!(blocked.verdict.blocked);
        assert_eq!(blocked.verdict.feed, "snds");
        assert_eq!(blocked.verdict.provider, "microsoft");
        assert_eq!(
            blocked.verdict.reason.as_deref(),
            Some("Blocked due to user complaints or other evidence of spamming (SNDS blocked range 203.0.113.8-203.0.113.15)")
        );
        assert_eq!(blocked.verdict.checked_at, Time(at()));
        assert!(!out.verdicts[1].verdict.blocked);
        assert!(matches!(blocked.signal(), Signal::Feed(_)));
    }

    #[test]
    fn skipped_rows_withhold_every_clear_but_not_blocks() {
        let mut status = parse_ip_status(STATUS).unwrap();
        status.skipped.push(SkippedRow {
            line: 2,
            problem: RowProblem::StatusColumns { found: 1 },
        });
        let out = snds_verdicts(
            &ips(&["203.0.113.10", "203.0.113.20", "198.51.100.1"]),
            &status,
            None,
            at(),
        );
        assert_eq!(out.verdicts.len(), 1);
        assert!(out.verdicts[0].verdict.blocked);
        assert_eq!(out.withheld_clears, 2);
    }

    #[test]
    fn a_red_filter_result_never_blocks_and_its_figures_are_kept() {
        let status = parse_ip_status("").unwrap();
        let data = parse_data(
            "203.0.113.20,11/4/2021 8:00 AM,11/5/2021 7:59 AM,10,10,10,GREEN,< 0.1%,,,0,h,m,\n\
             203.0.113.20,11/5/2021 8:00 AM,11/6/2021 7:59 AM,10,10,10,RED,4.1%,,,17,h,m,\n",
        )
        .unwrap();
        let out = snds_verdicts(&ips(&["203.0.113.20"]), &status, Some(&data), at());
        let verdict = &out.verdicts[0].verdict;
        assert!(!verdict.blocked);
        assert_eq!(
            verdict.reason.as_deref(),
            Some("not in any SNDS blocked range; filter result RED for 11/5/2021 8:00 AM - 11/6/2021 7:59 AM (complaint rate 4.1%, trap hits 17)")
        );
        // The latest row's columns go to the engine as figures, not only words.
        assert_eq!(
            verdict.scores,
            Some(FeedScores {
                filter_result: Some("RED".into()),
                complaint_basis_points: Some(410),
                trap_hits: 17,
                period: Some("11/5/2021 8:00 AM - 11/6/2021 7:59 AM".into()),
            })
        );
        let no_data = snds_verdicts(&ips(&["203.0.113.20"]), &status, None, at());
        assert_eq!(no_data.verdicts[0].verdict.scores, None);
    }

    #[test]
    fn snds_complaint_rates_read_as_basis_points() {
        assert_eq!(complaint_basis_points("< 0.1%"), Some(0));
        assert_eq!(complaint_basis_points("0.3%"), Some(30));
        assert_eq!(complaint_basis_points(" 2.35 % "), Some(235));
        assert_eq!(complaint_basis_points(""), None);
        assert_eq!(complaint_basis_points("n/a"), None);
        assert_eq!(complaint_basis_points("250%"), None);
    }
}
