//! When to probe again: the round interval and the answer cache. Pure: the
//! time is always a parameter.

use std::collections::HashMap;
use std::net::IpAddr;

use jiff::{SignedDuration, Timestamp};

use super::round::ProbeOutcome;

/// Seconds between two probe rounds when `intervalSeconds` is not set.
pub const DEFAULT_INTERVAL_SECONDS: i64 = 900;
/// The shortest interval accepted: block lists rate-limit frequent queries.
pub const MIN_INTERVAL_SECONDS: i64 = 10;
/// How long an error answer is kept before the (IP, zone) is asked again.
pub const DEFAULT_ERROR_RETRY_SECONDS: i64 = 60;

/// The probe round schedule of one pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeInterval {
    every: SignedDuration,
    last_round: Option<Timestamp>,
}

impl ProbeInterval {
    pub fn every_seconds(seconds: i64) -> Self {
        ProbeInterval {
            every: SignedDuration::from_secs(seconds.max(1)),
            last_round: None,
        }
    }

    pub fn every(&self) -> SignedDuration {
        self.every
    }

    /// A round is due when none ran yet or the interval has passed since the last.
    pub fn due(&self, now: Timestamp) -> bool {
        self.next_round_at().is_none_or(|next| now >= next)
    }

    /// When the next round is due; `None` before the first round (due now).
    pub fn next_round_at(&self) -> Option<Timestamp> {
        self.last_round
            .map(|last| last.checked_add(self.every).unwrap_or(Timestamp::MAX))
    }

    /// Records that a round started at `now`.
    pub fn started(&mut self, now: Timestamp) {
        self.last_round = Some(now);
    }
}

/// Recent answers keyed by (IP, zone). A clean or listed answer stays fresh for
/// `fresh_for` (the round interval), an error answer for `errors_fresh_for`
/// (short, so a failing zone is retried soon but not hammered).
#[derive(Clone, Debug)]
pub struct ResultCache {
    fresh_for: SignedDuration,
    errors_fresh_for: SignedDuration,
    entries: HashMap<(IpAddr, String), (Timestamp, ProbeOutcome)>,
}

impl ResultCache {
    pub fn new(fresh_for: SignedDuration, errors_fresh_for: SignedDuration) -> Self {
        ResultCache {
            fresh_for,
            errors_fresh_for,
            entries: HashMap::new(),
        }
    }

    /// A cache whose answers last one round interval.
    pub fn for_interval(interval: &ProbeInterval) -> Self {
        Self::new(
            interval.every(),
            SignedDuration::from_secs(DEFAULT_ERROR_RETRY_SECONDS).min(interval.every()),
        )
    }

    /// The answer for (ip, zone) if it is still fresh at `now`.
    pub fn get(&self, ip: IpAddr, zone: &str, now: Timestamp) -> Option<&ProbeOutcome> {
        let (stored_at, outcome) = self.entries.get(&(ip, zone.to_string()))?;
        self.is_fresh(*stored_at, outcome, now).then_some(outcome)
    }

    /// Stores an answer received at `now`, replacing any older one.
    pub fn put(&mut self, outcome: ProbeOutcome, now: Timestamp) {
        let key = (outcome.ip, outcome.result.zone.clone());
        self.entries.insert(key, (now, outcome));
    }

    /// Drops answers no longer fresh at `now`; returns how many went.
    pub fn evict_stale(&mut self, now: Timestamp) -> usize {
        let before = self.entries.len();
        let (fresh_for, errors_fresh_for) = (self.fresh_for, self.errors_fresh_for);
        self.entries
            .retain(|_, (at, outcome)| fresh(*at, outcome, now, fresh_for, errors_fresh_for));
        before - self.entries.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn is_fresh(&self, stored_at: Timestamp, outcome: &ProbeOutcome, now: Timestamp) -> bool {
        fresh(
            stored_at,
            outcome,
            now,
            self.fresh_for,
            self.errors_fresh_for,
        )
    }
}

fn fresh(
    stored_at: Timestamp,
    outcome: &ProbeOutcome,
    now: Timestamp,
    fresh_for: SignedDuration,
    errors_fresh_for: SignedDuration,
) -> bool {
    let lifetime = if outcome.result.error.is_some() {
        errors_fresh_for
    } else {
        fresh_for
    };
    // A clock that went backwards makes nothing fresh: better one query too many.
    now >= stored_at && now.duration_since(stored_at) < lifetime
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DnsblResult;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_636_099_800 + seconds).unwrap()
    }

    fn outcome(ip: &str, zone: &str, error: Option<&str>) -> ProbeOutcome {
        ProbeOutcome {
            ip: ip.parse().unwrap(),
            result: DnsblResult {
                zone: zone.into(),
                listed: error.is_none(),
                codes: vec!["127.0.0.2".into()],
                reason: None,
                error: error.map(String::from),
                checked_at: Time(t(0)),
            },
            error: None,
            cached: false,
        }
    }

    #[test]
    fn the_interval_is_due_first_then_every_period() {
        let mut interval = ProbeInterval::every_seconds(900);
        assert!(interval.due(t(0)));
        assert_eq!(interval.next_round_at(), None);
        interval.started(t(0));
        assert!(!interval.due(t(899)));
        assert!(interval.due(t(900)));
        assert_eq!(interval.next_round_at(), Some(t(900)));
    }

    #[test]
    fn answers_are_fresh_for_their_lifetime_keyed_by_ip_and_zone() {
        let mut cache = ResultCache::new(
            SignedDuration::from_secs(900),
            SignedDuration::from_secs(60),
        );
        cache.put(outcome("192.0.2.1", "zen.test", None), t(0));
        cache.put(outcome("192.0.2.1", "bl.test", Some("timeout")), t(0));
        assert!(cache
            .get("192.0.2.1".parse().unwrap(), "zen.test", t(899))
            .is_some());
        assert!(cache
            .get("192.0.2.1".parse().unwrap(), "zen.test", t(900))
            .is_none());
        assert!(cache
            .get("192.0.2.2".parse().unwrap(), "zen.test", t(1))
            .is_none());
        assert!(cache
            .get("192.0.2.1".parse().unwrap(), "bl.test", t(59))
            .is_some());
        assert!(cache
            .get("192.0.2.1".parse().unwrap(), "bl.test", t(60))
            .is_none());
        assert!(
            cache
                .get("192.0.2.1".parse().unwrap(), "zen.test", t(-1))
                .is_none(),
            "a clock that went backwards"
        );
        assert_eq!(cache.evict_stale(t(100)), 1);
        assert_eq!(cache.len(), 1);
        cache.put(outcome("192.0.2.1", "zen.test", None), t(800));
        assert!(cache
            .get("192.0.2.1".parse().unwrap(), "zen.test", t(1000))
            .is_some());
    }

    #[test]
    fn the_cache_follows_the_interval() {
        let cache = ResultCache::for_interval(&ProbeInterval::every_seconds(600));
        assert_eq!(cache.fresh_for, SignedDuration::from_secs(600));
        assert_eq!(cache.errors_fresh_for, SignedDuration::from_secs(60));
    }
}
