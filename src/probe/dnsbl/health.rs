//! Whether the probe works at all: per-zone counters for metrics, and the
//! condition raised when a zone answers nothing but errors (a misconfigured
//! resolver makes every answer an error, and the pool would silently lose its
//! DNSBL signal). Pure.

use std::collections::{BTreeMap, VecDeque};

use jiff::Timestamp;

use super::error::ProbeErrorKind;
use super::round::ProbeOutcome;
use crate::api::conditions::{set_condition, Condition, ConditionStatus};

/// The SenderPool condition type this module decides.
pub const DNSBL_HEALTHY: &str = "DnsblHealthy";
/// Results a zone needs before it is judged.
pub const DEFAULT_MIN_RESULTS: usize = 3;
/// Results kept per zone in [`RecentResults`].
pub const DEFAULT_RECENT_RESULTS: usize = 64;

/// Monotonic counts of one zone; the operator exports them as
/// `mailfleet_dnsbl_queries_total{zone}`, `mailfleet_dnsbl_listings_total{zone}`
/// and `mailfleet_dnsbl_probe_errors_total{zone,kind}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZoneCounts {
    pub queries: u64,
    pub listings: u64,
    pub not_listed: u64,
    pub errors: BTreeMap<ProbeErrorKind, u64>,
}

impl ZoneCounts {
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Per-zone counters of answered queries. Cached outcomes are not counted again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZoneErrorCounters {
    zones: BTreeMap<String, ZoneCounts>,
}

impl ZoneErrorCounters {
    pub fn record(&mut self, outcome: &ProbeOutcome) {
        if outcome.cached {
            return;
        }
        let counts = self.zones.entry(outcome.result.zone.clone()).or_default();
        counts.queries += 1;
        match &outcome.error {
            Some(error) => *counts.errors.entry(error.kind()).or_default() += 1,
            None if outcome.result.listed => counts.listings += 1,
            None => counts.not_listed += 1,
        }
    }

    pub fn record_all<'a>(&mut self, outcomes: impl IntoIterator<Item = &'a ProbeOutcome>) {
        outcomes.into_iter().for_each(|o| self.record(o));
    }

    pub fn zone(&self, zone: &str) -> Option<&ZoneCounts> {
        self.zones.get(zone)
    }

    /// Errors of `kind` in `zone` so far.
    pub fn errors(&self, zone: &str, kind: ProbeErrorKind) -> u64 {
        self.zone(zone)
            .and_then(|c| c.errors.get(&kind).copied())
            .unwrap_or(0)
    }

    /// Every zone seen, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ZoneCounts)> {
        self.zones
            .iter()
            .map(|(zone, counts)| (zone.as_str(), counts))
    }
}

/// The last results of each zone, newest last: `None` for an answer, the error
/// kind for a failure. Bounded, so it holds "recent" and never grows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentResults {
    capacity: usize,
    zones: BTreeMap<String, VecDeque<Option<ProbeErrorKind>>>,
}

impl Default for RecentResults {
    fn default() -> Self {
        Self::new(DEFAULT_RECENT_RESULTS)
    }
}

impl RecentResults {
    pub fn new(capacity: usize) -> Self {
        RecentResults {
            capacity: capacity.max(1),
            zones: BTreeMap::new(),
        }
    }

    /// Adds one fresh outcome (cached ones are repeats and are skipped).
    pub fn record(&mut self, outcome: &ProbeOutcome) {
        if outcome.cached {
            return;
        }
        let recent = self.zones.entry(outcome.result.zone.clone()).or_default();
        if recent.len() == self.capacity {
            recent.pop_front();
        }
        recent.push_back(outcome.error.as_ref().map(|e| e.kind()));
    }

    pub fn record_all<'a>(&mut self, outcomes: impl IntoIterator<Item = &'a ProbeOutcome>) {
        outcomes.into_iter().for_each(|o| self.record(o));
    }

    /// Forgets zones no longer configured.
    pub fn retain_zones<'a>(&mut self, zones: impl IntoIterator<Item = &'a str>) {
        let keep: Vec<&str> = zones.into_iter().collect();
        self.zones.retain(|zone, _| keep.contains(&zone.as_str()));
    }

    fn of(&self, zone: &str) -> Option<&VecDeque<Option<ProbeErrorKind>>> {
        self.zones.get(zone)
    }
}

/// The `DnsblHealthy` condition of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsblHealth {
    pub status: ConditionStatus,
    pub reason: &'static str,
    pub message: String,
}

impl DnsblHealth {
    /// Writes this condition into a status' conditions.
    pub fn set_on(
        &self,
        conditions: &mut Vec<Condition>,
        observed_generation: Option<i64>,
        now: Timestamp,
    ) {
        set_condition(
            conditions,
            DNSBL_HEALTHY,
            self.status,
            self.reason,
            self.message.clone(),
            observed_generation,
            now,
        );
    }
}

/// Decides `DnsblHealthy` from the recent results of the configured `zones`.
/// A zone with at least `min_results` recent results, all errors, makes it
/// False (`ZoneAnswersOnlyErrors`) with a message naming the zone, what it
/// answered and the likely fix. `None` when no zone is configured (the
/// condition does not apply).
pub fn dnsbl_health<'a>(
    zones: impl IntoIterator<Item = &'a str>,
    recent: &RecentResults,
    min_results: usize,
) -> Option<DnsblHealth> {
    let min_results = min_results.max(1);
    let mut failing = Vec::new();
    let mut answering = Vec::new();
    let mut waiting = Vec::new();
    let mut any = false;
    for zone in zones {
        any = true;
        let results = recent.of(zone).map(|r| r.len()).unwrap_or(0);
        if results < min_results {
            waiting.push(zone);
            continue;
        }
        let Some(r) = recent.of(zone) else { continue };
        let mut kinds: BTreeMap<ProbeErrorKind, usize> = BTreeMap::new();
        for kind in r.iter().flatten() {
            *kinds.entry(*kind).or_default() += 1;
        }
        if kinds.values().sum::<usize>() == r.len() {
            failing.push(only_errors_message(zone, r.len(), &kinds));
        } else {
            answering.push(zone);
        }
    }
    if !any {
        return None;
    }
    let waiting_note = if waiting.is_empty() {
        String::new()
    } else {
        format!(
            "; fewer than {min_results} results yet from {}",
            waiting.join(", ")
        )
    };
    Some(if !failing.is_empty() {
        DnsblHealth {
            status: ConditionStatus::False,
            reason: "ZoneAnswersOnlyErrors",
            message: failing.join("; "),
        }
    } else if !answering.is_empty() {
        DnsblHealth {
            status: ConditionStatus::True,
            reason: "ZonesAnswer",
            message: format!("zones answer: {}{waiting_note}", answering.join(", ")),
        }
    } else {
        DnsblHealth {
            status: ConditionStatus::Unknown,
            reason: "NotProbedYet",
            message: format!(
                "fewer than {min_results} results yet from {}",
                waiting.join(", ")
            ),
        }
    })
}

fn only_errors_message(
    zone: &str,
    results: usize,
    kinds: &BTreeMap<ProbeErrorKind, usize>,
) -> String {
    let mut by_count: Vec<(&ProbeErrorKind, &usize)> = kinds.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let seen: Vec<String> = by_count.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let fix = by_count
        .first()
        .map(|(k, _)| k.likely_fix())
        .unwrap_or_default();
    format!(
        "zone {zone} answered only errors in its last {results} results ({}), so it gives no signal: {fix}",
        seen.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DnsblResult;
    use crate::probe::dnsbl::ProbeError;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use std::net::Ipv4Addr;

    fn outcome(zone: &str, listed: bool, error: Option<ProbeError>) -> ProbeOutcome {
        ProbeOutcome {
            ip: "192.0.2.1".parse().unwrap(),
            result: DnsblResult {
                zone: zone.into(),
                listed,
                codes: Vec::new(),
                reason: None,
                error: error.as_ref().map(|e| e.to_string()),
                checked_at: Time(Timestamp::UNIX_EPOCH),
            },
            error,
            cached: false,
        }
    }

    fn open_resolver() -> ProbeError {
        ProbeError::ErrorCode {
            code: Ipv4Addr::new(127, 255, 255, 254),
            meaning: "public resolver".into(),
        }
    }

    fn timeout() -> ProbeError {
        ProbeError::Timeout {
            nameserver: "127.0.0.1:53".parse().unwrap(),
            attempts: 2,
            timeout_ms: 100,
        }
    }

    #[test]
    fn a_zone_answering_only_errors_raises_the_condition_with_the_fix() {
        let mut recent = RecentResults::default();
        for _ in 0..4 {
            recent.record(&outcome("zen.spamhaus.org", false, Some(open_resolver())));
            recent.record(&outcome("bl.example.net", false, None));
        }
        recent.record(&outcome("zen.spamhaus.org", false, Some(timeout())));
        let health = dnsbl_health(["zen.spamhaus.org", "bl.example.net"], &recent, 3).unwrap();
        assert_eq!(health.status, ConditionStatus::False);
        assert_eq!(health.reason, "ZoneAnswersOnlyErrors");
        assert!(health.message.starts_with("zone zen.spamhaus.org answered only errors in its last 5 results (open_resolver 4, timeout 1)"), "{}", health.message);
        assert!(
            health.message.contains("your own recursive resolver"),
            "{}",
            health.message
        );
        assert!(!health.message.contains("bl.example.net"));
    }

    #[test]
    fn one_good_answer_among_errors_keeps_the_zone_healthy() {
        let mut recent = RecentResults::default();
        for _ in 0..5 {
            recent.record(&outcome("zen.spamhaus.org", false, Some(timeout())));
        }
        recent.record(&outcome("zen.spamhaus.org", true, None));
        let health = dnsbl_health(["zen.spamhaus.org"], &recent, 3).unwrap();
        assert_eq!(health.status, ConditionStatus::True);
        assert_eq!(health.reason, "ZonesAnswer");
    }

    #[test]
    fn the_window_forgets_old_answers() {
        let mut recent = RecentResults::new(3);
        recent.record(&outcome("zen.spamhaus.org", false, None));
        for _ in 0..3 {
            recent.record(&outcome("zen.spamhaus.org", false, Some(timeout())));
        }
        let health = dnsbl_health(["zen.spamhaus.org"], &recent, 3).unwrap();
        assert_eq!(health.status, ConditionStatus::False);
        assert!(health.message.contains("reachable"), "{}", health.message);
    }

    #[test]
    fn too_few_results_are_not_judged_and_no_zones_means_no_condition() {
        let mut recent = RecentResults::default();
        recent.record(&outcome("zen.spamhaus.org", false, Some(timeout())));
        let health = dnsbl_health(["zen.spamhaus.org"], &recent, 3).unwrap();
        assert_eq!(health.status, ConditionStatus::Unknown);
        assert_eq!(health.reason, "NotProbedYet");
        assert_eq!(dnsbl_health([], &recent, 3), None);
    }

    #[test]
    fn cached_outcomes_count_nowhere() {
        let mut cached = outcome("zen.spamhaus.org", false, Some(timeout()));
        cached.cached = true;
        let mut recent = RecentResults::default();
        let mut counters = ZoneErrorCounters::default();
        for _ in 0..5 {
            recent.record(&cached);
            counters.record(&cached);
        }
        assert_eq!(
            dnsbl_health(["zen.spamhaus.org"], &recent, 1)
                .unwrap()
                .status,
            ConditionStatus::Unknown
        );
        assert_eq!(counters.zone("zen.spamhaus.org"), None);
    }

    #[test]
    fn counters_count_errors_by_zone_and_kind() {
        let mut counters = ZoneErrorCounters::default();
        counters.record_all(&[
            outcome("zen.spamhaus.org", true, None),
            outcome("zen.spamhaus.org", false, None),
            outcome("zen.spamhaus.org", false, Some(open_resolver())),
            outcome("zen.spamhaus.org", false, Some(open_resolver())),
            outcome("bl.example.net", false, Some(timeout())),
        ]);
        let zen = counters.zone("zen.spamhaus.org").unwrap();
        assert_eq!(
            (
                zen.queries,
                zen.listings,
                zen.not_listed,
                zen.errors_total()
            ),
            (4, 1, 1, 2)
        );
        assert_eq!(
            counters.errors("zen.spamhaus.org", ProbeErrorKind::OpenResolver),
            2
        );
        assert_eq!(
            counters.errors("bl.example.net", ProbeErrorKind::Timeout),
            1
        );
        assert_eq!(
            counters.errors("bl.example.net", ProbeErrorKind::Refused),
            0
        );
        let zones: Vec<&str> = counters.iter().map(|(z, _)| z).collect();
        assert_eq!(zones, vec!["bl.example.net", "zen.spamhaus.org"]);
    }

    #[test]
    fn the_condition_lands_in_the_status_list() {
        let mut recent = RecentResults::default();
        for _ in 0..3 {
            recent.record(&outcome("zen.spamhaus.org", false, Some(open_resolver())));
        }
        let mut conditions = Vec::new();
        dnsbl_health(["zen.spamhaus.org"], &recent, 3)
            .unwrap()
            .set_on(&mut conditions, Some(4), Timestamp::UNIX_EPOCH);
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].type_, DNSBL_HEALTHY);
        assert_eq!(conditions[0].status, ConditionStatus::False);
        assert_eq!(conditions[0].observed_generation, Some(4));
        recent.retain_zones(["bl.example.net"]);
        assert_eq!(
            dnsbl_health(["zen.spamhaus.org"], &recent, 3)
                .unwrap()
                .status,
            ConditionStatus::Unknown
        );
    }
}
