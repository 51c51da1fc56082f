//! The pool-level entry points: which pairs a signal or a tick reaches, keeping
//! `status.ips` in step with the spec, and the pool summary counters.

use std::collections::BTreeSet;
use std::net::IpAddr;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::clock::whole_second;
use super::error::EngineError;
use super::pair::{new_pair, PairRules, Recorder};
use super::settings::{check_provider, parse_ip, PoolRules};
use super::signal::{Complaints, Feedback, Signal};
use super::transition::{Reason, Transition};
use super::warmup::warmup_day;
use crate::api::{
    DnsblResult, FeedVerdict, IpStatus, PoolIp, ReputationState, SenderPoolSpec, SenderPoolStatus,
};

/// Applies one signal about `ip` at `now` and returns the transitions it caused
/// (timers of the pairs it reaches that fell due before `now` included).
///
/// A feedback report reaches one pair; a DNSBL answer the pairs of its zone's
/// providers; a feed verdict the pair of its provider. No other pair changes.
/// On error the status is left as it was.
pub fn observe(
    spec: &SenderPoolSpec,
    status: &mut SenderPoolStatus,
    ip: &str,
    signal: Signal,
    known_providers: &[String],
    now: Timestamp,
) -> Result<Vec<Transition>, EngineError> {
    let now = whole_second(now);
    let pool = PoolRules::new(spec, known_providers)?;
    let addr = parse_ip("ip", ip)?;
    let pool_ip = pool.pool_ip(addr).ok_or_else(|| EngineError::UnknownIp {
        ip: ip.to_string(),
        known: pool.known_ips(),
    })?;
    let claimed = match &signal {
        Signal::Dnsbl(result) => zone_claimed(status, addr, &result.zone),
        _ => false,
    };
    check_signal(&pool, pool_ip, &signal, claimed)?;

    let index = ensure_ip(status, addr, pool_ip);
    let ip_status = &mut status.ips[index];
    let mut rec = Recorder::default();
    match signal {
        Signal::Feedback(feedback) => {
            on_feedback(&pool, pool_ip, addr, ip_status, &feedback, now, &mut rec)
        }
        Signal::Dnsbl(result) => on_dnsbl(&pool, pool_ip, addr, ip_status, result, now, &mut rec),
        Signal::Feed(verdict) => on_feed(&pool, pool_ip, addr, ip_status, verdict, now, &mut rec),
        Signal::Complaints(complaints) => {
            with_pair(
                &pool,
                pool_ip,
                addr,
                ip_status,
                &complaints.provider,
                now,
                true,
                &mut rec,
                |rules, pair, rec| {
                    rules.settle(pair, now, rec);
                    rules.on_complaints(pair, complaints.count, now, rec);
                    rules.settle(pair, now, rec);
                },
            );
        }
    }
    update_counters(status);
    Ok(rec.transitions)
}

/// Advances every pair to `now` and brings the status in line with the spec:
/// hold-downs that ended, recovery steps, warm-up days, manual overrides, window
/// pruning, `IpStatus` entries for new IPs (and none for removed ones), and a pair
/// for every known provider of a warming or overridden IP. Calling it twice at the
/// same `now` changes nothing the second time.
pub fn tick(
    spec: &SenderPoolSpec,
    status: &mut SenderPoolStatus,
    known_providers: &[String],
    now: Timestamp,
) -> Result<Vec<Transition>, EngineError> {
    let now = whole_second(now);
    let pool = PoolRules::new(spec, known_providers)?;
    sync_ips(&pool, status);
    let mut rec = Recorder::default();
    for (ip_status, (addr, pool_ip)) in status.ips.iter_mut().zip(pool.ips.iter()) {
        ip_status.dnsbl.retain(|r| pool.zone(&r.zone).is_some());
        let mut providers: BTreeSet<String> = ip_status
            .reputation
            .iter()
            .map(|p| p.provider.clone())
            .collect();
        providers.extend(pool.providers_needing_pairs(pool_ip, now));
        for provider in &providers {
            with_pair(
                &pool,
                pool_ip,
                *addr,
                ip_status,
                provider,
                now,
                true,
                &mut rec,
                |rules, pair, rec| rules.settle(pair, now, rec),
            );
        }
    }
    update_counters(status);
    Ok(rec.transitions)
}

/// The earliest instant at which [`tick`] has something to do: the end of a
/// hold-down, the next recovery step, or a warm-up cap change. `None` when only
/// a signal can change anything. An instant at or before `now` means a tick is
/// already due. (Window buckets also age out, but that never moves a pair.)
pub fn next_wakeup(
    spec: &SenderPoolSpec,
    status: &SenderPoolStatus,
    now: Timestamp,
) -> Option<Timestamp> {
    let now = whole_second(now);
    let mut earliest: Option<Timestamp> = None;
    let mut consider = |t: Timestamp| earliest = Some(earliest.map_or(t, |e| e.min(t)));
    for pool_ip in &spec.ips {
        let Ok(addr) = pool_ip.address.trim().parse::<IpAddr>() else {
            continue;
        };
        if let Some(start) = &pool_ip.warmup_start {
            if let Some(day) = warmup_day(start.0, &spec.warmup.hourly_caps, now) {
                consider(day.next_change);
            }
        }
        let Some(ip_status) = status.ips.iter().find(|s| same_ip(&s.address, addr)) else {
            continue;
        };
        for pair in &ip_status.reputation {
            if matches!(
                pair.state,
                ReputationState::Blocked | ReputationState::Recovering
            ) {
                if let Some(t) = &pair.next_step_at {
                    consider(t.0);
                }
            }
            // A Throttled pair's own timer is only a pause's end; climbing
            // back waits for a clean window, which a signal brings.
            if let Some(t) = &pair.paused_until {
                consider(t.0);
            }
        }
    }
    earliest
}

/// Whether a receiver's reply kept on one of `addr`'s pairs names `zone`: an
/// answer from that zone is then welcome even when the pool does not probe it
/// (the driver asked it at once to confirm or dismiss the claim).
fn zone_claimed(status: &SenderPoolStatus, addr: IpAddr, zone: &str) -> bool {
    status
        .ips
        .iter()
        .filter(|s| same_ip(&s.address, addr))
        .flat_map(|s| s.reputation.iter())
        .flat_map(|p| p.dnsbl_claims.iter())
        .any(|c| c.zone.as_deref() == Some(zone))
}

fn check_signal(
    pool: &PoolRules<'_>,
    pool_ip: &PoolIp,
    signal: &Signal,
    claimed: bool,
) -> Result<(), EngineError> {
    match signal {
        Signal::Feedback(feedback) => check_feedback(&pool_ip.address, feedback),
        Signal::Complaints(complaints) => check_complaints(&pool_ip.address, complaints),
        Signal::Dnsbl(result) => match pool.zone(&result.zone) {
            Some(_) => Ok(()),
            None if claimed => Ok(()),
            None => {
                let known: Vec<&str> = pool
                    .spec
                    .reputation
                    .dnsbl
                    .zones
                    .iter()
                    .map(|z| z.zone.as_str())
                    .collect();
                let known = if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                };
                Err(EngineError::UnknownDnsblZone {
                    zone: result.zone.clone(),
                    known,
                })
            }
        },
        Signal::Feed(verdict) => {
            check_provider("feed verdict provider", &verdict.provider)?;
            if verdict.feed.trim().is_empty() {
                return Err(EngineError::UnnamedFeed {
                    ip: pool_ip.address.clone(),
                });
            }
            Ok(())
        }
    }
}

fn check_complaints(ip: &str, c: &Complaints) -> Result<(), EngineError> {
    check_provider("complaints provider", &c.provider)?;
    if c.count < 1 {
        return Err(EngineError::InconsistentFeedback {
            ip: ip.to_string(),
            provider: c.provider.clone(),
            problem: format!(
                "complaints count is {}; send a count of at least 1",
                c.count
            ),
        });
    }
    Ok(())
}

fn check_feedback(ip: &str, f: &Feedback) -> Result<(), EngineError> {
    check_provider("feedback provider", &f.provider)?;
    let problem = |problem: String| EngineError::InconsistentFeedback {
        ip: ip.to_string(),
        provider: f.provider.clone(),
        problem,
    };
    for (name, value) in [
        ("attempts", f.attempts),
        ("delivered", f.delivered),
        ("ip_blocklisted", f.ip_blocklisted),
        ("ip_rate_limited", f.ip_rate_limited),
    ] {
        if value < 0 {
            return Err(problem(format!(
                "{name} is {value}; counts cannot be negative"
            )));
        }
    }
    let categorised = f
        .delivered
        .saturating_add(f.ip_blocklisted)
        .saturating_add(f.ip_rate_limited);
    if categorised > f.attempts {
        return Err(problem(format!(
            "delivered + ip_blocklisted + ip_rate_limited = {categorised} exceeds attempts = {}; each attempt has one category",
            f.attempts
        )));
    }
    let pauses = f
        .conclusive
        .iter()
        .filter(|r| r.pause_seconds.is_some())
        .count();
    let conclusive = i64::try_from(f.conclusive.len() - pauses).unwrap_or(i64::MAX);
    let pauses = i64::try_from(pauses).unwrap_or(i64::MAX);
    if pauses > f.ip_rate_limited {
        return Err(problem(format!(
            "{pauses} pause replies but ip_rate_limited = {}; a pause reply is an ip_rate_limited attempt, count it there too",
            f.ip_rate_limited
        )));
    }
    if let Some(bad) = f
        .conclusive
        .iter()
        .filter_map(|r| r.pause_seconds)
        .find(|s| !crate::reputation::rules::PAUSE_SECONDS_RANGE.contains(s))
    {
        return Err(problem(format!(
            "pause_seconds is {bad}; a pause lasts from 60 to 604800 seconds"
        )));
    }
    if conclusive > f.ip_blocklisted {
        return Err(problem(format!(
            "{conclusive} conclusive replies but ip_blocklisted = {}; a conclusive reply is an ip_blocklisted attempt, count it there too",
            f.ip_blocklisted
        )));
    }
    Ok(())
}

fn on_feedback(
    pool: &PoolRules<'_>,
    pool_ip: &PoolIp,
    addr: IpAddr,
    ip_status: &mut IpStatus,
    feedback: &Feedback,
    now: Timestamp,
    rec: &mut Recorder,
) {
    let listed_zones: Vec<String> = ip_status
        .dnsbl
        .iter()
        .filter(|r| r.listed && r.error.is_none())
        .map(|r| r.zone.clone())
        .collect();
    with_pair(
        pool,
        pool_ip,
        addr,
        ip_status,
        &feedback.provider,
        now,
        true,
        rec,
        |rules, pair, rec| {
            rules.settle(pair, now, rec);
            rules.on_feedback(pair, feedback, &listed_zones, now, rec);
            rules.settle(pair, now, rec);
        },
    );
}

/// A DNSBL answer. A listing blocks the zone's providers; an answer that no
/// longer lists the IP may release pairs waiting past their hold-down; an error
/// answer is kept for the record but never changes a pair, and never replaces a
/// listing (the last certain answer stands).
fn on_dnsbl(
    pool: &PoolRules<'_>,
    pool_ip: &PoolIp,
    addr: IpAddr,
    ip_status: &mut IpStatus,
    mut result: DnsblResult,
    now: Timestamp,
    rec: &mut Recorder,
) {
    result.checked_at = Time(whole_second(result.checked_at.0));
    if result.error.is_some() {
        result.listed = false;
    }
    let stored = ip_status.dnsbl.iter().position(|r| r.zone == result.zone);
    if let Some(i) = stored {
        let previous = &ip_status.dnsbl[i];
        let outdated = result.checked_at < previous.checked_at;
        let error_over_listing =
            result.error.is_some() && previous.listed && previous.error.is_none();
        if outdated || error_over_listing {
            return;
        }
    }
    if pool.zone(&result.zone).is_none() {
        on_claimed_zone(pool, pool_ip, addr, ip_status, &result, now, rec);
        return;
    }
    if result.error.is_some() {
        store_dnsbl(ip_status, result);
        return;
    }

    let zone = result.zone.clone();
    let listing = result.listed;
    let providers: Vec<String> = if listing {
        let mut providers = match pool.zone(&zone) {
            Some(z) if !z.providers.is_empty() => z.providers.clone(),
            _ => every_provider(pool, ip_status),
        };
        // A listing confirms the claims that named this zone, whatever provider
        // the receivers that quoted it belong to.
        providers.extend(
            ip_status
                .reputation
                .iter()
                .filter(|p| {
                    p.dnsbl_claims
                        .iter()
                        .any(|c| c.zone.as_deref() == Some(zone.as_str()))
                })
                .map(|p| p.provider.clone()),
        );
        providers.sort();
        providers.dedup();
        providers
    } else {
        ip_status
            .reputation
            .iter()
            .map(|p| p.provider.clone())
            .filter(|p| pool.zone_applies(&zone, p))
            .collect()
    };
    let evidence = dnsbl_evidence(&result, &ip_status.address);
    for provider in &providers {
        with_pair(
            pool,
            pool_ip,
            addr,
            ip_status,
            provider,
            now,
            listing,
            rec,
            |rules, pair, rec| rules.settle(pair, now, rec),
        );
    }
    store_dnsbl(ip_status, result);
    for provider in &providers {
        with_pair(
            pool,
            pool_ip,
            addr,
            ip_status,
            provider,
            now,
            false,
            rec,
            |rules, pair, rec| {
                if listing {
                    rules.block(pair, Reason::DnsblListed, evidence.clone(), now, rec);
                }
                rules.settle(pair, now, rec);
            },
        );
    }
}

/// A provider feed verdict: blocked blocks that provider's pair; not blocked may
/// release it once its hold-down is over.
fn on_feed(
    pool: &PoolRules<'_>,
    pool_ip: &PoolIp,
    addr: IpAddr,
    ip_status: &mut IpStatus,
    mut verdict: FeedVerdict,
    now: Timestamp,
    rec: &mut Recorder,
) {
    verdict.checked_at = Time(whole_second(verdict.checked_at.0));
    let stored = ip_status
        .feeds
        .iter()
        .position(|f| f.feed == verdict.feed && f.provider == verdict.provider);
    if stored.is_some_and(|i| verdict.checked_at < ip_status.feeds[i].checked_at) {
        return;
    }
    let provider = verdict.provider.clone();
    let blocked = verdict.blocked;
    let evidence = match &verdict.reason {
        Some(reason) => format!("feed {}: {reason}", verdict.feed),
        None => format!(
            "feed {} reports {} blocked",
            verdict.feed, ip_status.address
        ),
    };
    with_pair(
        pool,
        pool_ip,
        addr,
        ip_status,
        &provider,
        now,
        blocked,
        rec,
        |rules, pair, rec| rules.settle(pair, now, rec),
    );
    match stored {
        Some(i) => ip_status.feeds[i] = verdict,
        None => {
            ip_status.feeds.push(verdict);
            ip_status
                .feeds
                .sort_by(|a, b| (&a.feed, &a.provider).cmp(&(&b.feed, &b.provider)));
        }
    }
    // Figures that throttle reach the pair even when it has no record yet.
    let throttles = !blocked && pool.feed_throttle(ip_status, &provider).is_some();
    with_pair(
        pool,
        pool_ip,
        addr,
        ip_status,
        &provider,
        now,
        throttles,
        rec,
        |rules, pair, rec| {
            if blocked {
                rules.block(pair, Reason::FeedBlocked, evidence.clone(), now, rec);
            } else {
                rules.on_feed_scores(pair, now, rec);
            }
            rules.settle(pair, now, rec);
        },
    );
}

/// The answer of a zone the pool does not probe, asked because a receiver's
/// reply named it: a listing confirms the claims naming that zone (and only
/// their pairs: the pool never chose this list for the other providers); no
/// listing or an error leaves the claims waiting for more receivers. Not kept
/// in `status.ips[].dnsbl`, which holds the zones the pool probes.
fn on_claimed_zone(
    pool: &PoolRules<'_>,
    pool_ip: &PoolIp,
    addr: IpAddr,
    ip_status: &mut IpStatus,
    result: &DnsblResult,
    now: Timestamp,
    rec: &mut Recorder,
) {
    if !result.listed || result.error.is_some() {
        return;
    }
    let claimants: Vec<(String, String)> = ip_status
        .reputation
        .iter()
        .filter_map(|p| {
            let claim = p
                .dnsbl_claims
                .iter()
                .rev()
                .find(|c| c.zone.as_deref() == Some(result.zone.as_str()))?;
            let evidence = format!(
                "{} (asked at once through the pool's resolver), as {} said: {}",
                dnsbl_evidence(result, &ip_status.address),
                claim.receiver,
                claim.reply
            );
            Some((p.provider.clone(), evidence))
        })
        .collect();
    for (provider, evidence) in claimants {
        with_pair(
            pool,
            pool_ip,
            addr,
            ip_status,
            &provider,
            now,
            false,
            rec,
            |rules, pair, rec| {
                rules.settle(pair, now, rec);
                rules.block(
                    pair,
                    Reason::DnsblClaimConfirmed,
                    evidence.clone(),
                    now,
                    rec,
                );
                rules.settle(pair, now, rec);
            },
        );
    }
}

fn store_dnsbl(ip_status: &mut IpStatus, result: DnsblResult) {
    match ip_status.dnsbl.iter().position(|r| r.zone == result.zone) {
        Some(i) => ip_status.dnsbl[i] = result,
        None => {
            ip_status.dnsbl.push(result);
            ip_status.dnsbl.sort_by(|a, b| a.zone.cmp(&b.zone));
        }
    }
}

fn dnsbl_evidence(result: &DnsblResult, ip: &str) -> String {
    let mut text = format!("{} lists {ip}", result.zone);
    if !result.codes.is_empty() {
        text.push_str(&format!(": {}", result.codes.join(", ")));
    }
    if let Some(reason) = &result.reason {
        text.push_str(&format!(" ({reason})"));
    }
    text
}

/// Every provider a pool-wide signal reaches on this IP: the known ones and any
/// the IP already has a pair for.
fn every_provider(pool: &PoolRules<'_>, ip_status: &IpStatus) -> Vec<String> {
    let mut all: BTreeSet<String> = pool.known_providers.iter().cloned().collect();
    all.extend(ip_status.reputation.iter().map(|p| p.provider.clone()));
    all.into_iter().collect()
}

/// Runs `act` on the pair of `provider`, creating it first when `create` is set
/// (otherwise a missing pair is left alone).
#[allow(clippy::too_many_arguments)]
fn with_pair(
    pool: &PoolRules<'_>,
    pool_ip: &PoolIp,
    addr: IpAddr,
    ip_status: &mut IpStatus,
    provider: &str,
    now: Timestamp,
    create: bool,
    rec: &mut Recorder,
    act: impl FnOnce(&PairRules<'_>, &mut crate::api::ProviderReputation, &mut Recorder),
) {
    let held_by = pool.holding_evidence(ip_status, provider);
    let feed_throttle = pool.feed_throttle(ip_status, provider);
    let rules = pool.pair_rules(pool_ip, addr, provider, held_by, feed_throttle);
    let index = match ip_status
        .reputation
        .binary_search_by(|p| p.provider.as_str().cmp(provider))
    {
        Ok(i) => i,
        Err(i) if create => {
            ip_status.reputation.insert(i, new_pair(provider, now));
            rec.mark_new(&pool_ip.address, provider);
            i
        }
        Err(_) => return,
    };
    act(&rules, &mut ip_status.reputation[index], rec);
}

fn same_ip(text: &str, addr: IpAddr) -> bool {
    text.trim().parse::<IpAddr>().is_ok_and(|a| a == addr)
}

/// The index of the `IpStatus` of `addr`, created if missing, with the address
/// written as in the spec. Keeps `status.ips` sorted by address.
fn ensure_ip(status: &mut SenderPoolStatus, addr: IpAddr, pool_ip: &PoolIp) -> usize {
    if let Some(i) = status.ips.iter().position(|s| same_ip(&s.address, addr)) {
        status.ips[i].address = pool_ip.address.clone();
        return i;
    }
    status.ips.push(IpStatus::new(pool_ip.address.clone()));
    sort_ips(&mut status.ips);
    status
        .ips
        .iter()
        .position(|s| same_ip(&s.address, addr))
        .unwrap_or(0)
}

fn sort_ips(ips: &mut [IpStatus]) {
    ips.sort_by_cached_key(|s| (s.address.trim().parse::<IpAddr>().ok(), s.address.clone()));
    for ip in ips.iter_mut() {
        ip.reputation.sort_by(|a, b| a.provider.cmp(&b.provider));
    }
}

/// Makes `status.ips` hold exactly the spec's IPs, in address order, keeping the
/// state of those that stay.
fn sync_ips(pool: &PoolRules<'_>, status: &mut SenderPoolStatus) {
    let mut previous = std::mem::take(&mut status.ips);
    status.ips = pool
        .ips
        .iter()
        .map(|(addr, pool_ip)| {
            let mut entry = match previous.iter().position(|s| same_ip(&s.address, *addr)) {
                Some(i) => previous.swap_remove(i),
                None => IpStatus::new(pool_ip.address.clone()),
            };
            entry.address = pool_ip.address.clone();
            entry.reputation.sort_by(|a, b| a.provider.cmp(&b.provider));
            entry.reputation.dedup_by(|a, b| a.provider == b.provider);
            entry
        })
        .collect();
}

/// `ipCount`, `healthyIps` (Healthy or Warming with every provider) and `blockedPairs`.
/// `readyIps` and the replica counts belong to the operator.
fn update_counters(status: &mut SenderPoolStatus) {
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let resting =
        |s: ReputationState| matches!(s, ReputationState::Healthy | ReputationState::Warming);
    status.ip_count = count(status.ips.len());
    status.healthy_ips = count(
        status
            .ips
            .iter()
            .filter(|ip| ip.reputation.iter().all(|p| resting(p.state)))
            .count(),
    );
    status.blocked_pairs = count(
        status
            .ips
            .iter()
            .flat_map(|ip| ip.reputation.iter())
            .filter(|p| p.state == ReputationState::Blocked)
            .count(),
    );
}
