//! Postmaster Tools' daily traffic statistics (`domains.trafficStats.list`)
//! read from JSON, and the verdicts they give about the pool's IPs. Pure.
//!
//! An answer page is `{"trafficStats": [...], "nextPageToken": "..."}`; each
//! entry is one domain and day (`name: domains/D/trafficStats/YYYYMMDD`) with
//! `userReportedSpamRatio` (0 to 1) and `ipReputations`: per category
//! (`HIGH`, `MEDIUM`, `LOW`, `BAD`) an `ipCount` and a sample of its IPs.
//! Google leaves a figure out when the day's volume was too small.

use std::net::IpAddr;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value;

use crate::api::{FeedScores, FeedVerdict};
use crate::probe::snds::IpVerdict;

/// The `feed` name of Postmaster verdicts.
pub const POSTMASTER_FEED: &str = "postmaster";
/// Postmaster Tools speaks for Gmail.
pub const POSTMASTER_PROVIDER: &str = "google";

/// Entries and skips logged one by one per page; the rest are only counted.
const MAX_SKIPS_KEPT: usize = 20;

/// Postmaster's reputation categories.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum IpReputation {
    Bad,
    Low,
    Medium,
    High,
}

impl IpReputation {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "BAD" => Some(IpReputation::Bad),
            "LOW" => Some(IpReputation::Low),
            "MEDIUM" => Some(IpReputation::Medium),
            "HIGH" => Some(IpReputation::High),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IpReputation::Bad => "BAD",
            IpReputation::Low => "LOW",
            IpReputation::Medium => "MEDIUM",
            IpReputation::High => "HIGH",
        }
    }
}

/// One category of a day: how many IPs, and the ones Google shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReputationBucket {
    pub reputation: IpReputation,
    /// `None` when the answer left the count out or wrote it unreadably.
    pub ip_count: Option<u64>,
    pub sample_ips: Vec<IpAddr>,
    /// Sample entries that were not IP addresses.
    pub unreadable_samples: usize,
}

impl ReputationBucket {
    /// Whether every IP of the category is in the sample: only then does an
    /// IP missing from it surely not belong to the category.
    pub fn is_complete(&self) -> bool {
        self.unreadable_samples == 0
            && self
                .ip_count
                .is_some_and(|count| count <= self.sample_ips.len() as u64)
    }
}

/// One domain's figures for one day.
#[derive(Clone, Debug, PartialEq)]
pub struct DayStats {
    pub domain: String,
    /// `YYYYMMDD`, from the entry's name.
    pub date: String,
    /// Spam reported by users over mail delivered to the inbox, 0 to 1.
    pub user_reported_spam_ratio: Option<f64>,
    pub ip_reputations: Vec<ReputationBucket>,
    /// `HIGH` .. `BAD`, as written.
    pub domain_reputation: Option<String>,
}

/// What one answer page held.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatsPage {
    pub stats: Vec<DayStats>,
    pub next_page_token: Option<String>,
    /// Entries or parts left out, each saying why (at most a few kept).
    pub skipped: Vec<String>,
    /// How many were left out in all.
    pub skipped_count: usize,
}

/// Why an answer is not a stats page at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StatsFormatError {
    #[error("the answer is HTML, not JSON (a sign-in or error page; is the URL the Postmaster API?): `{start}`")]
    Html { start: String },

    #[error("the answer is not JSON ({detail}): `{start}`")]
    NotJson { detail: String, start: String },

    #[error("the answer is JSON but not an object with `trafficStats`: `{start}`")]
    NotStatsObject { start: String },
}

impl StatsFormatError {
    pub fn kind(&self) -> &'static str {
        match self {
            StatsFormatError::Html { .. } => "html",
            StatsFormatError::NotJson { .. } => "bad_json",
            StatsFormatError::NotStatsObject { .. } => "missing_field",
        }
    }
}

/// What kind of JSON error, without quoting the input (a key file's).
pub(crate) fn json_problem(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected value",
        serde_json::error::Category::Eof => "cut short",
    }
}

/// The first characters of a body, on one line, for messages.
pub(crate) fn start_of(body: &str) -> String {
    body.chars()
        .take(80)
        .collect::<String>()
        .replace(['\r', '\n'], " ")
}

/// Reads one page of `trafficStats.list` for `domain`. Entries that lack
/// their name or carry another domain's are skipped and said why; a missing
/// figure is left `None`.
pub fn parse_stats_page(domain: &str, body: &str) -> Result<StatsPage, StatsFormatError> {
    let trimmed = body.trim_start();
    if trimmed.starts_with('<') {
        return Err(StatsFormatError::Html {
            start: start_of(trimmed),
        });
    }
    let value: Value = serde_json::from_str(body).map_err(|e| StatsFormatError::NotJson {
        detail: format!(
            "{}, line {} column {}",
            json_problem(&e),
            e.line(),
            e.column()
        ),
        start: start_of(trimmed),
    })?;
    let Some(object) = value.as_object() else {
        return Err(StatsFormatError::NotStatsObject {
            start: start_of(trimmed),
        });
    };
    let mut page = StatsPage {
        next_page_token: object
            .get("nextPageToken")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_string),
        ..StatsPage::default()
    };
    let entries = match object.get("trafficStats") {
        // Google answers `{}` for a range without data.
        None => return Ok(page),
        Some(Value::Array(entries)) => entries,
        Some(_) => {
            return Err(StatsFormatError::NotStatsObject {
                start: start_of(trimmed),
            })
        }
    };
    for (index, entry) in entries.iter().enumerate() {
        match parse_entry(domain, entry, &mut page) {
            Ok(stats) => page.stats.push(stats),
            Err(why) => page.skip(format!("trafficStats[{index}]: {why}")),
        }
    }
    Ok(page)
}

impl StatsPage {
    fn skip(&mut self, why: String) {
        self.skipped_count += 1;
        if self.skipped.len() < MAX_SKIPS_KEPT {
            self.skipped.push(why);
        }
    }
}

/// Why one day's entry or one reputation bucket is left out of a page.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
enum EntryProblem {
    #[error("no `name` (domains/DOMAIN/trafficStats/YYYYMMDD)")]
    NoName,
    #[error("`name` `{0}` is not domains/DOMAIN/trafficStats/YYYYMMDD")]
    NameShape(String),
    #[error("`name` `{0}` is about another domain")]
    AnotherDomain(String),
    #[error("`name` `{0}` does not end in a YYYYMMDD date")]
    NoDate(String),
    #[error("{0}: `ipReputations` is not a list")]
    IpReputationsNotList(String),
    #[error("no `reputation`")]
    NoReputation,
    #[error("unknown reputation `{0}`")]
    UnknownReputation(String),
}

fn parse_entry(
    domain: &str,
    entry: &Value,
    page: &mut StatsPage,
) -> Result<DayStats, EntryProblem> {
    let name = entry
        .get("name")
        .and_then(Value::as_str)
        .ok_or(EntryProblem::NoName)?;
    let (entry_domain, date) = name
        .strip_prefix("domains/")
        .and_then(|rest| rest.split_once("/trafficStats/"))
        .ok_or_else(|| EntryProblem::NameShape(name.to_string()))?;
    if !entry_domain.eq_ignore_ascii_case(domain) {
        return Err(EntryProblem::AnotherDomain(name.to_string()));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EntryProblem::NoDate(name.to_string()));
    }
    let user_reported_spam_ratio = match entry.get("userReportedSpamRatio") {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_f64().filter(|r| (0.0..=1.0).contains(r)) {
            Some(ratio) => Some(ratio),
            None => {
                page.skip(format!(
                    "{name}: userReportedSpamRatio `{value}` is not a ratio from 0 to 1; left out"
                ));
                None
            }
        },
    };
    let mut ip_reputations = Vec::new();
    if let Some(buckets) = entry.get("ipReputations") {
        let Some(buckets) = buckets.as_array() else {
            return Err(EntryProblem::IpReputationsNotList(name.to_string()));
        };
        for (i, bucket) in buckets.iter().enumerate() {
            match parse_bucket(bucket) {
                Ok(Some(bucket)) => ip_reputations.push(bucket),
                Ok(None) => {}
                Err(why) => page.skip(format!("{name}: ipReputations[{i}]: {why}")),
            }
        }
    }
    Ok(DayStats {
        domain: domain.to_string(),
        date: date.to_string(),
        user_reported_spam_ratio,
        ip_reputations,
        domain_reputation: entry
            .get("domainReputation")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// `Ok(None)`: the category `REPUTATION_CATEGORY_UNSPECIFIED`, which says nothing.
fn parse_bucket(bucket: &Value) -> Result<Option<ReputationBucket>, EntryProblem> {
    let text = bucket
        .get("reputation")
        .and_then(Value::as_str)
        .ok_or(EntryProblem::NoReputation)?;
    if text == "REPUTATION_CATEGORY_UNSPECIFIED" {
        return Ok(None);
    }
    let reputation = IpReputation::parse(text)
        .ok_or_else(|| EntryProblem::UnknownReputation(text.to_string()))?;
    // int64 travels as a JSON string in Google's APIs; accept a number too.
    let ip_count = match bucket.get("ipCount") {
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(Value::Number(n)) => n.as_u64(),
        _ => None,
    };
    let mut sample_ips = Vec::new();
    let mut unreadable_samples = 0;
    for sample in bucket
        .get("sampleIps")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match sample
            .as_str()
            .and_then(|s| s.trim().parse::<IpAddr>().ok())
        {
            Some(ip) => sample_ips.push(ip),
            None => unreadable_samples += 1,
        }
    }
    Ok(Some(ReputationBucket {
        reputation,
        ip_count,
        sample_ips,
        unreadable_samples,
    }))
}

/// The newest day among `stats` (dates compare as `YYYYMMDD` text).
pub fn latest_day(stats: Vec<DayStats>) -> Option<DayStats> {
    stats.into_iter().max_by(|a, b| a.date.cmp(&b.date))
}

/// The verdicts of one poll.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PostmasterVerdicts {
    /// In the order of the pool IPs given.
    pub verdicts: Vec<IpVerdict>,
    /// Pool IPs given no "not blocked" verdict: a domain could not be read,
    /// or a BAD category holds more IPs than its sample shows.
    pub withheld_clears: usize,
}

/// Verdicts for the pool's IPs from the newest day of each domain that was
/// read (`unread_domains`: how many could not be):
///
/// - an IP in the sample of a BAD category is Blocked for `google`;
/// - any other IP is "not blocked", with the highest user-reported spam rate
///   of the domains (the pool's IPs send all of them) as its complaint rate,
///   which the engine holds against `complaints.thresholdBasisPoints`; but only
///   when every domain was read and every BAD category shows all its IPs,
///   since a BAD IP might hide in what was not seen.
pub fn postmaster_verdicts(
    pool_ips: &[IpAddr],
    days: &[DayStats],
    unread_domains: usize,
    checked_at: Timestamp,
) -> PostmasterVerdicts {
    let mut out = PostmasterVerdicts::default();
    let bad_unseen = unread_domains > 0
        || days.iter().any(|d| {
            d.ip_reputations
                .iter()
                .any(|b| b.reputation == IpReputation::Bad && !b.is_complete())
        });
    let worst_spam = days
        .iter()
        .filter_map(|d| d.user_reported_spam_ratio.map(|r| (r, d)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    for ip in pool_ips {
        let rated: Vec<(&DayStats, IpReputation)> = days
            .iter()
            .flat_map(|d| {
                d.ip_reputations
                    .iter()
                    .filter(|b| b.sample_ips.contains(ip))
                    .map(move |b| (d, b.reputation))
            })
            .collect();
        let bad = rated.iter().find(|(_, r)| *r == IpReputation::Bad);
        let (blocked, reason, scores) = match bad {
            Some((day, _)) => (
                true,
                format!(
                    "Postmaster Tools rates the IP BAD for {} on {}",
                    day.domain,
                    shown_date(&day.date)
                ),
                None,
            ),
            None if bad_unseen => {
                out.withheld_clears += 1;
                continue;
            }
            None => {
                let mut reason = "no domain's Postmaster Tools data rates the IP BAD".to_string();
                if let Some((day, reputation)) = rated.iter().min_by_key(|(_, r)| *r) {
                    reason.push_str(&format!(
                        "; reputation {} for {} on {}",
                        reputation.as_str(),
                        day.domain,
                        shown_date(&day.date)
                    ));
                }
                let scores = worst_spam.map(|(ratio, day)| {
                    reason.push_str(&format!(
                        "; user-reported spam rate {:.2}% for {} on {}",
                        ratio * 100.0,
                        day.domain,
                        shown_date(&day.date)
                    ));
                    FeedScores {
                        filter_result: None,
                        complaint_basis_points: Some((ratio * 10_000.0).round() as i64),
                        trap_hits: 0,
                        period: Some(format!("{} {}", day.domain, shown_date(&day.date))),
                    }
                });
                (false, reason, scores)
            }
        };
        out.verdicts.push(IpVerdict {
            ip: *ip,
            verdict: FeedVerdict {
                feed: POSTMASTER_FEED.to_string(),
                provider: POSTMASTER_PROVIDER.to_string(),
                blocked,
                reason: Some(reason),
                checked_at: Time(checked_at),
                scores,
            },
        });
    }
    out
}

/// `20261206` as `2026-12-06`.
fn shown_date(date: &str) -> String {
    if date.len() == 8 {
        format!("{}-{}-{}", &date[..4], &date[4..6], &date[6..])
    } else {
        date.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"{
      "trafficStats": [
        {
          "name": "domains/news.example.com/trafficStats/20261205",
          "userReportedSpamRatio": 0.001,
          "ipReputations": [
            {"reputation": "HIGH", "ipCount": "2", "sampleIps": ["203.0.113.10", "203.0.113.11"]}
          ],
          "domainReputation": "HIGH"
        },
        {
          "name": "domains/news.example.com/trafficStats/20261206",
          "userReportedSpamRatio": 0.0042,
          "ipReputations": [
            {"reputation": "REPUTATION_CATEGORY_UNSPECIFIED"},
            {"reputation": "HIGH", "ipCount": "1", "sampleIps": ["203.0.113.10"]},
            {"reputation": "BAD", "ipCount": "1", "sampleIps": ["203.0.113.11"]}
          ],
          "domainReputation": "MEDIUM"
        },
        {"userReportedSpamRatio": 0.5}
      ],
      "nextPageToken": "p2"
    }"#;

    fn ips() -> Vec<IpAddr> {
        ["203.0.113.10", "203.0.113.11", "203.0.113.12"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    #[test]
    fn a_page_is_read_and_entries_without_a_name_are_skipped() {
        let page = parse_stats_page("news.example.com", PAGE).unwrap();
        assert_eq!(page.stats.len(), 2);
        assert_eq!(page.next_page_token.as_deref(), Some("p2"));
        assert_eq!(page.skipped_count, 1);
        assert!(page.skipped[0].contains("no `name`"), "{:?}", page.skipped);
        let day = latest_day(page.stats).unwrap();
        assert_eq!(day.date, "20261206");
        assert_eq!(day.ip_reputations.len(), 2);
        assert!(day.ip_reputations[1].is_complete());
    }

    #[test]
    fn bad_ips_are_blocked_and_the_spam_rate_reaches_the_others() {
        let page = parse_stats_page("news.example.com", PAGE).unwrap();
        let day = latest_day(page.stats).unwrap();
        let out = postmaster_verdicts(&ips(), &[day], 0, now());
        assert_eq!(out.withheld_clears, 0);
        assert_eq!(out.verdicts.len(), 3);
        let v = |i: usize| &out.verdicts[i].verdict;
        assert!(!v(0).blocked);
        assert!(v(1).blocked);
        assert_eq!(v(1).provider, "google");
        assert!(v(1)
            .reason
            .as_deref()
            .unwrap()
            .contains("BAD for news.example.com on 2026-12-06"));
        assert_eq!(
            v(0).scores.as_ref().unwrap().complaint_basis_points,
            Some(42)
        );
        assert!(v(0).reason.as_deref().unwrap().contains("reputation HIGH"));
        assert_eq!(
            v(2).scores.as_ref().unwrap().complaint_basis_points,
            Some(42)
        );
    }

    #[test]
    fn an_unread_domain_or_an_unsampled_bad_ip_clears_nobody() {
        let page = parse_stats_page("news.example.com", PAGE).unwrap();
        let day = latest_day(page.stats).unwrap();
        let out = postmaster_verdicts(&ips(), std::slice::from_ref(&day), 1, now());
        assert_eq!(out.withheld_clears, 2);
        assert_eq!(out.verdicts.len(), 1);
        assert!(out.verdicts[0].verdict.blocked);

        let mut unsampled = day;
        unsampled.ip_reputations[1].ip_count = Some(5);
        let out = postmaster_verdicts(&ips(), &[unsampled.clone()], 0, now());
        assert_eq!(out.withheld_clears, 2);
        unsampled.ip_reputations[1].ip_count = None;
        assert_eq!(
            postmaster_verdicts(&ips(), &[unsampled], 0, now()).withheld_clears,
            2
        );
    }

    #[test]
    fn bad_answers_are_errors_or_skips_never_verdicts() {
        let html = parse_stats_page("d", "<!DOCTYPE html><html>Sign in</html>").unwrap_err();
        assert_eq!(html.kind(), "html");
        assert_eq!(
            parse_stats_page("d", "{\"trafficStats\": [")
                .unwrap_err()
                .kind(),
            "bad_json"
        );
        assert_eq!(
            parse_stats_page("d", "[]").unwrap_err().kind(),
            "missing_field"
        );
        assert_eq!(
            parse_stats_page("d", "{\"trafficStats\": 3}")
                .unwrap_err()
                .kind(),
            "missing_field"
        );
        assert_eq!(parse_stats_page("d", "{}").unwrap(), StatsPage::default());
        let odd = r#"{"trafficStats": [
            {"name": "domains/other.example/trafficStats/20261206"},
            {"name": "domains/d/trafficStats/2026-12-06"},
            {"name": "domains/d/trafficStats/20261206", "userReportedSpamRatio": 7,
             "ipReputations": [{"reputation": "TERRIBLE"}, {"ipCount": "1"},
               {"reputation": "BAD", "ipCount": "x", "sampleIps": ["nope", "203.0.113.11"]}]}
        ]}"#;
        let page = parse_stats_page("d", odd).unwrap();
        assert_eq!(page.stats.len(), 1);
        assert_eq!(page.skipped_count, 5, "{:?}", page.skipped);
        let day = &page.stats[0];
        assert_eq!(day.user_reported_spam_ratio, None);
        assert_eq!(day.ip_reputations.len(), 1);
        assert!(!day.ip_reputations[0].is_complete());
    }
}
