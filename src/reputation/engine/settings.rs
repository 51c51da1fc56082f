//! The SenderPool spec, checked once per call and turned into the rules of each pair.

use std::collections::BTreeSet;
use std::net::IpAddr;

use jiff::Timestamp;

use super::error::EngineError;
use super::pair::PairRules;
use super::window::bucket_seconds;
use crate::api::{DnsblZone, FeedVerdict, IpStatus, PoolIp, SenderPoolSpec};
use crate::vocab::is_valid_provider_name;

/// A spec the engine can run on: every IP parsed, every setting in range.
pub(crate) struct PoolRules<'a> {
    pub spec: &'a SenderPoolSpec,
    /// The pool's IPs, sorted by address.
    pub ips: Vec<(IpAddr, &'a PoolIp)>,
    /// Providers every warming or overridden IP gets a pair for, sorted, without duplicates.
    pub known_providers: Vec<String>,
    pub bucket_seconds: i64,
}

impl<'a> PoolRules<'a> {
    pub fn new(spec: &'a SenderPoolSpec, known_providers: &[String]) -> Result<Self, EngineError> {
        let mut ips: Vec<(IpAddr, &PoolIp, usize)> = Vec::with_capacity(spec.ips.len());
        for (index, pool_ip) in spec.ips.iter().enumerate() {
            let addr = parse_ip(|| format!("spec.ips[{index}].address"), &pool_ip.address)?;
            if let Some((_, _, first)) = ips.iter().find(|(known, _, _)| *known == addr) {
                return Err(EngineError::DuplicateIp {
                    ip: pool_ip.address.clone(),
                    first: *first,
                    second: index,
                });
            }
            check_pool_ip(index, pool_ip)?;
            ips.push((addr, pool_ip, index));
        }
        ips.sort_by_key(|(addr, _, _)| *addr);
        check_settings(spec)?;
        let mut providers = BTreeSet::new();
        for (index, name) in known_providers.iter().enumerate() {
            check_provider(|| format!("known_providers[{index}]"), name)?;
            providers.insert(name.clone());
        }
        Ok(PoolRules {
            spec,
            ips: ips
                .into_iter()
                .map(|(addr, pool_ip, _)| (addr, pool_ip))
                .collect(),
            known_providers: providers.into_iter().collect(),
            bucket_seconds: bucket_seconds(spec.reputation.feedback.window_seconds),
        })
    }

    pub fn pool_ip(&self, addr: IpAddr) -> Option<&'a PoolIp> {
        self.ips
            .iter()
            .find(|(known, _)| *known == addr)
            .map(|(_, pool_ip)| *pool_ip)
    }

    pub fn known_ips(&self) -> String {
        let list: Vec<&str> = self.ips.iter().map(|(_, p)| p.address.as_str()).collect();
        list.join(", ")
    }

    pub fn zone(&self, zone: &str) -> Option<&'a DnsblZone> {
        self.spec
            .reputation
            .dnsbl
            .zones
            .iter()
            .find(|z| z.zone == zone)
    }

    pub fn zone_applies(&self, zone: &str, provider: &str) -> bool {
        self.zone(zone)
            .is_some_and(|z| z.providers.is_empty() || z.providers.iter().any(|p| p == provider))
    }

    /// Why a Blocked pair of `provider` must stay Blocked past its hold-down: a
    /// configured DNSBL zone whose latest certain answer lists the IP, or a feed
    /// whose latest verdict for that provider is blocked.
    pub fn holding_evidence(&self, ip: &IpStatus, provider: &str) -> Option<String> {
        let listing = ip
            .dnsbl
            .iter()
            .find(|r| r.listed && r.error.is_none() && self.zone_applies(&r.zone, provider));
        if let Some(result) = listing {
            return Some(format!("{} still lists {}", result.zone, ip.address));
        }
        ip.feeds
            .iter()
            .find(|f: &&FeedVerdict| f.blocked && f.provider == provider)
            .map(|f| {
                format!(
                    "feed {} still reports {} blocked for {provider}",
                    f.feed, ip.address
                )
            })
    }

    /// Why a feed's latest figures for `provider` (not a block) keep the pair
    /// throttled: a RED filter result, a complaint rate at or over the
    /// complaint threshold, or trap hits with a filter result that is not GREEN.
    pub fn feed_throttle(&self, ip: &IpStatus, provider: &str) -> Option<String> {
        let threshold = i64::from(self.spec.reputation.complaints.threshold_basis_points);
        ip.feeds
            .iter()
            .filter(|f| !f.blocked && f.provider == provider)
            .find_map(|f| {
                let scores = f.scores.as_ref()?;
                let filter = scores.filter_result.as_deref().unwrap_or("");
                let why = if filter == "RED" {
                    "filter result RED".to_string()
                } else if let Some(bp) = scores.complaint_basis_points.filter(|bp| *bp >= threshold)
                {
                    format!(
                        "complaint rate {} (threshold {})",
                        super::window::basis_points_text(bp),
                        super::window::basis_points_text(threshold)
                    )
                } else if scores.trap_hits > 0 && !filter.is_empty() && filter != "GREEN" {
                    format!("{} trap hits, filter result {filter}", scores.trap_hits)
                } else {
                    return None;
                };
                let period = scores
                    .period
                    .as_deref()
                    .map_or(String::new(), |p| format!(" for {p}"));
                Some(format!("feed {}: {why}{period}", f.feed))
            })
    }

    /// The rules one pair runs on.
    pub fn pair_rules<'p>(
        &'p self,
        pool_ip: &'p PoolIp,
        addr: IpAddr,
        provider: &'p str,
        held_by: Option<String>,
        feed_throttle: Option<String>,
    ) -> PairRules<'p> {
        let override_ = pool_ip
            .override_
            .as_ref()
            .filter(|o| o.providers.is_empty() || o.providers.iter().any(|p| p == provider));
        PairRules {
            settings: &self.spec.reputation,
            ip: &pool_ip.address,
            ip_addr: addr,
            provider,
            rate_limit: self.spec.rate_limits.for_provider(provider),
            warmup: pool_ip
                .warmup_start
                .as_ref()
                .map(|start| (start.0, self.spec.warmup.hourly_caps.as_slice())),
            override_,
            bucket_seconds: self.bucket_seconds,
            held_by,
            feed_throttle,
        }
    }

    /// Providers an IP must have a pair for at `now`: every known provider while it
    /// warms, and those its override names (every known provider for an empty list),
    /// so that their caps show in status and in [`super::pair_view`].
    pub fn providers_needing_pairs(&self, pool_ip: &PoolIp, now: Timestamp) -> Vec<String> {
        let mut needed = BTreeSet::new();
        let warming = pool_ip.warmup_start.as_ref().is_some_and(|start| {
            super::warmup::warmup_day(start.0, &self.spec.warmup.hourly_caps, now).is_some()
        });
        if warming {
            needed.extend(self.known_providers.iter().cloned());
        }
        if let Some(o) = &pool_ip.override_ {
            if o.providers.is_empty() {
                needed.extend(self.known_providers.iter().cloned());
            } else {
                needed.extend(o.providers.iter().cloned());
            }
        }
        needed.into_iter().collect()
    }
}

/// A field path for an error message. Built only when there is an error: the
/// engine checks the pool spec on every call, and formatting `spec.ips[N]...`
/// for every IP on every delivery report was a large share of its time.
pub(crate) trait FieldName {
    fn name(self) -> String;
}

impl FieldName for &str {
    fn name(self) -> String {
        self.to_string()
    }
}

impl<F: FnOnce() -> String> FieldName for F {
    fn name(self) -> String {
        self()
    }
}

pub(crate) fn parse_ip(field: impl FieldName, value: &str) -> Result<IpAddr, EngineError> {
    value.trim().parse().map_err(|_| EngineError::InvalidIp {
        field: field.name(),
        value: value.to_string(),
    })
}

pub(crate) fn check_provider(field: impl FieldName, name: &str) -> Result<(), EngineError> {
    if is_valid_provider_name(name) {
        Ok(())
    } else {
        Err(EngineError::InvalidProvider {
            field: field.name(),
            name: name.to_string(),
        })
    }
}

fn invalid(field: &str, value: impl ToString, problem: &str) -> EngineError {
    EngineError::InvalidSetting {
        field: field.to_string(),
        value: value.to_string(),
        problem: problem.to_string(),
    }
}

fn at_least(field: impl FieldName, value: i64, min: i64) -> Result<(), EngineError> {
    if value >= min {
        Ok(())
    } else {
        Err(invalid(
            &field.name(),
            value,
            &format!("it must be at least {min}"),
        ))
    }
}

fn percent(field: impl FieldName, value: i32, min: i32) -> Result<(), EngineError> {
    if (min..=100).contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            &field.name(),
            value,
            &format!("it is a percentage: use a value from {min} to 100"),
        ))
    }
}

fn check_pool_ip(index: usize, pool_ip: &PoolIp) -> Result<(), EngineError> {
    if let Some(o) = &pool_ip.override_ {
        percent(
            || format!("spec.ips[{index}].override.allowancePercent"),
            o.allowance_percent,
            0,
        )?;
        for (i, provider) in o.providers.iter().enumerate() {
            check_provider(
                || format!("spec.ips[{index}].override.providers[{i}]"),
                provider,
            )?;
        }
    }
    Ok(())
}

fn check_settings(spec: &SenderPoolSpec) -> Result<(), EngineError> {
    at_least("spec.rateLimits.perHour", spec.rate_limits.per_hour, 1)?;
    for (provider, limit) in &spec.rate_limits.per_provider {
        check_provider("spec.rateLimits.perProvider key", provider)?;
        at_least(
            || format!("spec.rateLimits.perProvider.{provider}"),
            *limit,
            1,
        )?;
    }
    for (day, cap) in spec.warmup.hourly_caps.iter().enumerate() {
        at_least(|| format!("spec.warmup.hourlyCaps[{day}]"), *cap, 1)?;
    }
    let r = &spec.reputation;
    let f = &r.feedback;
    at_least(
        "spec.reputation.feedback.windowSeconds",
        f.window_seconds,
        1,
    )?;
    at_least("spec.reputation.feedback.minSamples", f.min_samples, 1)?;
    percent("spec.reputation.feedback.blockPercent", f.block_percent, 1)?;
    percent(
        "spec.reputation.feedback.throttlePercent",
        f.throttle_percent,
        1,
    )?;
    at_least("spec.reputation.holdDownSeconds", r.hold_down_seconds, 1)?;
    if r.max_hold_down_seconds < r.hold_down_seconds {
        return Err(invalid(
            "spec.reputation.maxHoldDownSeconds",
            r.max_hold_down_seconds,
            &format!(
                "it must not be less than holdDownSeconds ({})",
                r.hold_down_seconds
            ),
        ));
    }
    let throttle = &r.throttle.step_percents;
    if throttle.is_empty() {
        return Err(invalid(
            "spec.reputation.throttle.stepPercents",
            "[]",
            "list at least one step, for example [50, 25, 10]",
        ));
    }
    for (i, step) in throttle.iter().enumerate() {
        percent(
            || format!("spec.reputation.throttle.stepPercents[{i}]"),
            *step,
            0,
        )?;
        if i > 0 && *step > throttle[i - 1] {
            return Err(invalid(
                &format!("spec.reputation.throttle.stepPercents[{i}]"),
                step,
                "throttle steps go down: each step at most the one before, for example [50, 25, 10]",
            ));
        }
    }
    at_least(
        "spec.reputation.throttle.stepSeconds",
        r.throttle.step_seconds,
        1,
    )?;
    percent(
        "spec.reputation.probe.allowancePercent",
        r.probe.allowance_percent,
        1,
    )?;
    at_least(
        "spec.reputation.probe.successesToRecover",
        r.probe.successes_to_recover,
        1,
    )?;
    if r.recovery.step_percents.is_empty() {
        return Err(invalid(
            "spec.reputation.recovery.stepPercents",
            "[]",
            "list at least one step, for example [10, 25, 50, 75]",
        ));
    }
    for (i, step) in r.recovery.step_percents.iter().enumerate() {
        percent(
            || format!("spec.reputation.recovery.stepPercents[{i}]"),
            *step,
            1,
        )?;
    }
    at_least(
        "spec.reputation.recovery.stepSeconds",
        r.recovery.step_seconds,
        1,
    )?;
    let c = &r.complaints;
    if !(1..=10_000).contains(&c.threshold_basis_points) {
        return Err(invalid(
            "spec.reputation.complaints.thresholdBasisPoints",
            c.threshold_basis_points,
            "it is in hundredths of a percent: use 1 (0.01 %) to 10000 (100 %), for example 30 for 0.3 %",
        ));
    }
    at_least(
        "spec.reputation.complaints.minDelivered",
        c.min_delivered,
        1,
    )?;
    let mut zones = BTreeSet::new();
    for (i, zone) in r.dnsbl.zones.iter().enumerate() {
        if zone.zone.trim().is_empty() {
            return Err(invalid(
                &format!("spec.reputation.dnsbl.zones[{i}].zone"),
                "\"\"",
                "name the zone, for example zen.spamhaus.org",
            ));
        }
        if !zones.insert(zone.zone.as_str()) {
            return Err(invalid(
                &format!("spec.reputation.dnsbl.zones[{i}].zone"),
                &zone.zone,
                "the zone is listed twice; keep one entry",
            ));
        }
        for (j, provider) in zone.providers.iter().enumerate() {
            check_provider(
                || format!("spec.reputation.dnsbl.zones[{i}].providers[{j}]"),
                provider,
            )?;
        }
    }
    Ok(())
}
