//! Asking a DNS block list at once when a receiver's reply says it lists one
//! of our IPs (docs/PROBES.md, "Claims checked at once").
//!
//! A reply quoting a list is a claim the engine keeps on the pair
//! (`status.ips[].reputation[].dnsblClaims`); on its own it blocks only when
//! several receiving domains agree. The zone it names can settle it sooner:
//! this driver asks that zone about the IP through the pool's DNSBL resolver
//! and hands the answer to the engine as an ordinary `Signal::Dnsbl`, which
//! decides (a listing confirms the claims naming the zone; anything else
//! leaves them waiting).
//!
//! The zone comes from a stranger's text, so the questions are bounded: the
//! name must be a plausible DNS zone, each (IP, zone) is asked once per
//! feedback window, a pool asks at most [`ClaimCheckLimits::per_pool_per_window`]
//! questions per window, and every question has the probes' timeout.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;

use futures::stream::{self, StreamExt};
use jiff::{SignedDuration, Timestamp};
use prometheus_client::encoding::DescriptorEncoder;

use super::dnsbl::{
    normalize_zone, plan_from_settings, DnsblProbe, Nameserver, Resolver, ZoneConfigError,
    ZoneNameError, ZoneRules,
};
use super::ProbeOptions;
use crate::api::{ReputationState, SenderPool};
use crate::metrics::{family, Families, Kind};
use crate::reputation::engine::Signal;

/// How many questions claims may cause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimCheckLimits {
    /// Questions one pool may ask in one feedback window (a window of
    /// forged bounces naming made-up zones costs at most this many).
    pub per_pool_per_window: usize,
    /// Questions in flight at once.
    pub concurrency: usize,
}

impl Default for ClaimCheckLimits {
    fn default() -> Self {
        ClaimCheckLimits {
            per_pool_per_window: 32,
            concurrency: 8,
        }
    }
}

/// One question: is `ip` listed in `rules`' zone?
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimQuery {
    /// `namespace/name` of the pool.
    pub pool: String,
    /// The IP as the pool's status writes it (what `Fleet::observe` takes).
    pub written_ip: String,
    pub ip: IpAddr,
    /// The pool's rules for the zone when it probes it, the defaults otherwise;
    /// `rules.zone()` is the zone exactly as the claim names it.
    pub rules: ZoneRules,
    pub nameserver: Nameserver,
}

/// What the claims of a fleet asked, with its budgets and counters.
#[derive(Debug)]
pub struct ClaimChecks {
    options: ProbeOptions,
    limits: ClaimCheckLimits,
    /// (IP, zone) → when it was asked; forgotten after the pool's window.
    asked: HashMap<(IpAddr, String), Timestamp>,
    /// Per pool, when its recent questions were asked.
    spent: BTreeMap<String, VecDeque<Timestamp>>,
    /// Per pool, the problem last reported (each reported once).
    reported: BTreeMap<String, String>,
    /// Counters by result: listed, not_listed, error, over_budget, invalid_zone.
    counts: BTreeMap<&'static str, u64>,
}

impl ClaimChecks {
    pub fn new(options: ProbeOptions, limits: ClaimCheckLimits) -> Self {
        ClaimChecks {
            options,
            limits,
            asked: HashMap::new(),
            spent: BTreeMap::new(),
            reported: BTreeMap::new(),
            counts: BTreeMap::new(),
        }
    }

    /// The questions to ask now for the claims in `pools`' status: claims on
    /// pairs not yet Blocked that name a zone, not asked within the pool's
    /// feedback window, within the pool's budget. Also returns problems to
    /// log (each once per pool until it changes).
    pub fn due(&mut self, pools: &[SenderPool], now: Timestamp) -> (Vec<ClaimQuery>, Vec<String>) {
        let mut queries = Vec::new();
        let mut problems = Vec::new();
        for pool in pools {
            let Some(status) = &pool.status else {
                continue;
            };
            let key = format!(
                "{}/{}",
                pool.metadata.namespace.as_deref().unwrap_or("default"),
                pool.metadata.name.as_deref().unwrap_or_default()
            );
            let window = SignedDuration::from_secs(pool.spec.reputation.feedback.window_seconds);
            let since = now.checked_sub(window).unwrap_or(Timestamp::MIN);
            let mut wanted: BTreeSet<(IpAddr, &str, &str)> = BTreeSet::new();
            for ip_status in &status.ips {
                let Ok(ip) = ip_status.address.trim().parse::<IpAddr>() else {
                    continue;
                };
                for pair in &ip_status.reputation {
                    if pair.state == ReputationState::Blocked {
                        continue;
                    }
                    for claim in &pair.dnsbl_claims {
                        if let Some(zone) = claim.zone.as_deref() {
                            wanted.insert((ip, zone, ip_status.address.as_str()));
                        }
                    }
                }
            }
            if wanted.is_empty() {
                continue;
            }
            let plan = plan_from_settings(&pool.spec.reputation.dnsbl).ok();
            let nameserver = self
                .options
                .resolver
                .clone()
                .or_else(|| plan.as_ref().and_then(|p| p.resolver.clone()));
            let spent = self.spent.entry(key.clone()).or_default();
            while spent.front().is_some_and(|t| *t <= since) {
                spent.pop_front();
            }
            for (ip, zone, written) in wanted {
                if self
                    .asked
                    .get(&(ip, zone.to_string()))
                    .is_some_and(|t| *t > since)
                {
                    continue;
                }
                let rules = plan
                    .as_ref()
                    .and_then(|p| p.zones.iter().find(|z| z.zone() == zone).cloned())
                    .map(Ok)
                    .unwrap_or_else(|| claimed_zone_rules(zone));
                let rules = match rules {
                    Ok(rules) => rules,
                    Err(problem) => {
                        // Not asked, and not looked at again this window.
                        self.asked.insert((ip, zone.to_string()), now);
                        *self.counts.entry("invalid_zone").or_default() += 1;
                        tracing::debug!(%ip, zone, "a claim names no usable zone: {problem}");
                        continue;
                    }
                };
                let Some(nameserver) = nameserver.clone() else {
                    report_once(
                        &mut self.reported,
                        &mut problems,
                        &key,
                        format!("{key}: receivers' replies name block lists (first {zone} about {ip}), but the pool has no spec.reputation.dnsbl.resolver to ask them through; set one (or --dnsbl-resolver in standalone mode); until then a claim waits for more receivers"),
                    );
                    break;
                };
                if spent.len() >= self.limits.per_pool_per_window {
                    *self.counts.entry("over_budget").or_default() += 1;
                    report_once(
                        &mut self.reported,
                        &mut problems,
                        &key,
                        format!("{key}: replies name more block lists than the {} questions a window allows; the other claims wait for more receivers", self.limits.per_pool_per_window),
                    );
                    continue;
                }
                spent.push_back(now);
                self.asked.insert((ip, zone.to_string()), now);
                queries.push(ClaimQuery {
                    pool: key.clone(),
                    written_ip: written.to_string(),
                    ip,
                    rules,
                    nameserver,
                });
            }
        }
        let longest = pools
            .iter()
            .map(|p| p.spec.reputation.feedback.window_seconds)
            .max()
            .unwrap_or(0);
        let forget_before = now
            .checked_sub(SignedDuration::from_secs(longest))
            .unwrap_or(Timestamp::MIN);
        self.asked.retain(|_, at| *at > forget_before);
        (queries, problems)
    }

    /// Asks the questions (at most `limits.concurrency` at a time, each with
    /// the probes' timeout and attempts) and returns (IP, signal) for the
    /// engine. A resolver that cannot be reached gives error answers, which
    /// the engine keeps out of any decision.
    pub async fn ask(
        &mut self,
        queries: Vec<ClaimQuery>,
        clock: &(dyn Fn() -> Timestamp + Sync),
    ) -> Vec<(String, Signal)> {
        let options = &self.options;
        let answers: Vec<(String, Signal, &'static str)> = stream::iter(queries)
            .map(|query| async move {
                let address = match query.nameserver.resolve().await {
                    Ok(address) => address,
                    Err(problem) => {
                        tracing::warn!(pool = %query.pool, "cannot ask {} about a claim: {problem}", query.rules.zone());
                        return None;
                    }
                };
                let probe = DnsblProbe::new(
                    Resolver::new(address, options.dns_timeout, options.dns_attempts),
                    1,
                );
                let outcome = probe.check(query.ip, &query.rules, clock).await;
                let result = match (&outcome.result.error, outcome.result.listed) {
                    (Some(_), _) => "error",
                    (None, true) => "listed",
                    (None, false) => "not_listed",
                };
                tracing::info!(
                    pool = %query.pool,
                    ip = %query.ip,
                    zone = query.rules.zone(),
                    result,
                    "asked the zone a receiver's reply named"
                );
                Some((query.written_ip, outcome.signal(), result))
            })
            .buffer_unordered(self.limits.concurrency.max(1))
            .filter_map(|answer| async move { answer })
            .collect()
            .await;
        answers
            .into_iter()
            .map(|(ip, signal, result)| {
                *self.counts.entry(result).or_default() += 1;
                (ip, signal)
            })
            .collect()
    }

    /// A copy of the counts for the registry:
    /// `mailfleet_dnsbl_claim_checks_total{result}`.
    pub fn metrics(&self) -> ClaimCounts {
        ClaimCounts(self.counts.clone())
    }
}

/// How many claims were checked, by result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimCounts(BTreeMap<&'static str, u64>);

impl Families for ClaimCounts {
    fn encode(&self, out: &mut DescriptorEncoder<'_>) -> fmt::Result {
        family(
            out,
            "mailfleet_dnsbl_claim_checks_total",
            "Zones named by receivers' replies, asked at once (or not asked: over_budget, invalid_zone).",
            Kind::Counter,
            [
                "listed",
                "not_listed",
                "error",
                "over_budget",
                "invalid_zone",
            ]
            .map(|result| {
                (
                    [("result", result)],
                    self.0.get(result).copied().unwrap_or(0),
                )
            }),
        )
    }
}

fn report_once(
    reported: &mut BTreeMap<String, String>,
    problems: &mut Vec<String>,
    key: &str,
    problem: String,
) {
    if reported.get(key) != Some(&problem) {
        reported.insert(key.to_string(), problem.clone());
        problems.push(problem);
    }
}

/// Rules for a zone only a reply names: a syntactically valid DNS name of at
/// least two labels, not an address and not a reverse-lookup or local name
/// (a reply cannot make us query `in-addr.arpa` or `localhost`).
fn claimed_zone_rules(zone: &str) -> Result<ZoneRules, ClaimedZoneError> {
    let name = normalize_zone(zone)?;
    let unusable = |why| {
        Err(ClaimedZoneError::Unusable {
            zone: zone.to_string(),
            why,
        })
    };
    if name != zone {
        return unusable("is not written as a zone is queried");
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return unusable("has a single label");
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok()
        || labels
            .last()
            .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()))
    {
        return unusable("is an address, not a zone");
    }
    if matches!(
        labels.last().copied(),
        Some("arpa" | "localhost" | "local" | "internal")
    ) {
        return unusable("is not a public block list");
    }
    Ok(ZoneRules::with_defaults(zone)?)
}

/// Why a zone named in a receiver's reply is not asked. The zone comes from
/// a remote server, not from the operator's configuration, so there is no fix
/// to name: the claim is dropped.
#[derive(Debug, thiserror::Error)]
enum ClaimedZoneError {
    #[error(transparent)]
    Name(#[from] ZoneNameError),
    #[error("`{zone}` {why}")]
    Unusable { zone: String, why: &'static str },
    #[error(transparent)]
    Rules(#[from] ZoneConfigError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DnsblClaim, DnsblZone, IpStatus, ProviderReputation, SenderPoolStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn now() -> Timestamp {
        "2026-11-29T08:10:00Z".parse().unwrap()
    }

    fn pool(claims: &[(&str, &str)], state: ReputationState) -> SenderPool {
        let mut pool: SenderPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "mailfleet.io/v1alpha1", "kind": "SenderPool",
            "metadata": {"name": "bulk", "namespace": "mail"},
            "spec": {
                "ips": [{"address": "203.0.113.12"}, {"address": "203.0.113.13"}],
                "template": {"spec": {"containers": [{"name": "postfix", "image": "postfix"}]}},
                "reputation": {"dnsbl": {"resolver": "127.0.0.1:5353", "zones": [
                    {"zone": "zen.spamhaus.org", "listingCodes": ["127.0.0.2"]}
                ]}}
            }
        }))
        .unwrap();
        let mut status = SenderPoolStatus::default();
        for ip in ["203.0.113.12", "203.0.113.13"] {
            let mut ip_status = IpStatus::new(ip.to_string());
            ip_status.reputation = vec![ProviderReputation {
                dnsbl_claims: claims
                    .iter()
                    .map(|(zone, receiver)| DnsblClaim {
                        zone: Some(zone.to_string()),
                        receiver: receiver.to_string(),
                        at: Time(now()),
                        reply: "554 blocked using it".into(),
                    })
                    .collect(),
                state,
                ..ProviderReputation::first_seen("other", Time(now()))
            }];
            status.ips.push(ip_status);
        }
        pool.status = Some(status);
        pool
    }

    #[test]
    fn each_claimed_zone_is_asked_once_per_window_through_the_pools_resolver() {
        let mut checks = ClaimChecks::new(ProbeOptions::default(), ClaimCheckLimits::default());
        let pools = [pool(
            &[
                ("bl.example.org", "one.example"),
                ("zen.spamhaus.org", "two.example"),
            ],
            ReputationState::Healthy,
        )];
        let (queries, problems) = checks.due(&pools, now());
        assert!(problems.is_empty(), "{problems:?}");
        let asked: Vec<(String, &str)> = queries
            .iter()
            .map(|q| (q.ip.to_string(), q.rules.zone()))
            .collect();
        assert_eq!(asked.len(), 4, "{asked:?}");
        assert!(queries
            .iter()
            .all(|q| q.nameserver == Nameserver::Addr("127.0.0.1:5353".parse().unwrap())));
        // The pool's own rules for a zone it probes: a 127.0.0.3 is no listing there.
        let zen = queries
            .iter()
            .find(|q| q.rules.zone() == "zen.spamhaus.org")
            .unwrap();
        assert_eq!(
            zen.rules.listing_codes(),
            Some(&["127.0.0.2".parse().unwrap()][..])
        );
        // Asked already: nothing new until the window has passed.
        assert!(checks.due(&pools, now()).0.is_empty());
        let later = now().checked_add(SignedDuration::from_secs(3601)).unwrap();
        assert_eq!(checks.due(&pools, later).0.len(), 4);
    }

    #[test]
    fn blocked_pairs_bad_zone_names_and_a_full_budget_ask_nothing() {
        let mut checks = ClaimChecks::new(ProbeOptions::default(), ClaimCheckLimits::default());
        let blocked = [pool(
            &[("bl.example.org", "one.example")],
            ReputationState::Blocked,
        )];
        assert!(checks.due(&blocked, now()).0.is_empty());
        let bad = [pool(
            &[
                ("localhost", "a.example"),
                ("10.in-addr.arpa", "b.example"),
                ("192.0.2.1", "c.example"),
                ("BL.Example.org", "d.example"),
                ("bad zone.example", "e.example"),
            ],
            ReputationState::Healthy,
        )];
        assert!(checks.due(&bad, now()).0.is_empty());
        assert!(
            crate::metrics::render(&checks.metrics()).contains("result=\"invalid_zone\"} 10"),
            "{:?}",
            checks.metrics()
        );

        let limits = ClaimCheckLimits {
            per_pool_per_window: 3,
            concurrency: 1,
        };
        let mut checks = ClaimChecks::new(ProbeOptions::default(), limits);
        let zones: Vec<String> = (0..5).map(|i| format!("bl{i}.example.org")).collect();
        let claims: Vec<(&str, &str)> = zones.iter().map(|z| (z.as_str(), "x.example")).collect();
        let many = [pool(&claims, ReputationState::Healthy)];
        let (queries, problems) = checks.due(&many, now());
        assert_eq!(queries.len(), 3);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("3 questions a window"), "{problems:?}");
        assert!(checks.due(&many, now()).1.is_empty(), "reported once");
    }

    #[test]
    fn without_a_resolver_the_claim_waits_and_says_why_once() {
        let mut checks = ClaimChecks::new(ProbeOptions::default(), ClaimCheckLimits::default());
        let mut pools = [pool(
            &[("bl.example.org", "one.example")],
            ReputationState::Healthy,
        )];
        pools[0].spec.reputation.dnsbl.resolver = None;
        pools[0].spec.reputation.dnsbl.zones = Vec::<DnsblZone>::new();
        let (queries, problems) = checks.due(&pools, now());
        assert!(queries.is_empty());
        assert!(
            problems[0].contains("no spec.reputation.dnsbl.resolver"),
            "{problems:?}"
        );
        assert!(checks.due(&pools, now()).1.is_empty());
    }
}
