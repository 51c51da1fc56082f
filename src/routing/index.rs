//! Reading `SenderPool` and `DomainRoute` objects once into the normalised form the
//! compiler works on, collecting input problems on the way.
//!
//! Indexing is the only place that looks at raw spec strings, so the compiler can
//! rely on sorted IPs, lowercase domains and validated relays.

use std::collections::BTreeMap;
use std::net::IpAddr;

use jiff::Timestamp;

use crate::api::{
    DomainRoute, IpStatus, ManualOverride, NoHealthyIpPolicy, ProviderReputation, RateLimits,
    SenderPool,
};
use crate::vocab::is_valid_provider_name;

use super::model::{ObjectKey, Problem, RelayTarget, RouteMatcher};

/// Objects without a namespace belong to `default`, as with `kubectl apply`.
pub(crate) const DEFAULT_NAMESPACE: &str = "default";

/// One source IP of a pool with the reputation the engine recorded for it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct IndexedIp {
    /// The address exactly as the spec writes it (targets carry this form).
    pub address: String,
    /// `None` when the spec address is not an IP address; such an IP never sends.
    pub parsed: Option<IpAddr>,
    pub override_: Option<ManualOverride>,
    pub reputation: Vec<ProviderReputation>,
    /// Set while the IP's `IpBound` condition is `False` (its message): the
    /// sender pods cannot bind the address, so no route sends from it.
    pub not_bound: Option<String>,
}

impl IndexedIp {
    pub fn pair(&self, provider: &str) -> Option<&ProviderReputation> {
        self.reputation.iter().find(|r| r.provider == provider)
    }

    fn lookup_key(&self) -> String {
        lookup_key(&self.address)
    }
}

/// How status entries are matched to spec IPs: the same address written two ways
/// (`2001:db8::1`, `2001:DB8:0::1`) is one IP.
pub(crate) fn lookup_key(address: &str) -> String {
    let trimmed = address.trim();
    match trimmed.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => trimmed.to_string(),
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct IndexedPool {
    pub key: ObjectKey,
    pub rate_limits: RateLimits,
    /// Sorted by address (IPv4 before IPv6, unparsable addresses last).
    pub ips: Vec<IndexedIp>,
    /// Problems of the pool spec, with paths relative to the pool.
    pub problems: Vec<Problem>,
}

impl IndexedPool {
    pub fn new(key: ObjectKey, pool: &SenderPool) -> Self {
        let mut statuses: BTreeMap<String, &IpStatus> = BTreeMap::new();
        if let Some(status) = &pool.status {
            for ip_status in &status.ips {
                statuses
                    .entry(lookup_key(&ip_status.address))
                    .or_insert(ip_status);
            }
        }
        let mut problems = Vec::new();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut ips = Vec::with_capacity(pool.spec.ips.len());
        for (index, spec_ip) in pool.spec.ips.iter().enumerate() {
            let key = lookup_key(&spec_ip.address);
            if let Some(first) = seen.get(&key) {
                problems.push(Problem::new(
                    format!("spec.ips[{index}].address"),
                    format!(
                        "{} is already listed as spec.ips[{first}]; this entry is ignored, remove it",
                        spec_ip.address
                    ),
                ));
                continue;
            }
            seen.insert(key.clone(), index);
            let parsed = spec_ip.address.trim().parse::<IpAddr>().ok();
            if parsed.is_none() {
                problems.push(Problem::new(
                    format!("spec.ips[{index}].address"),
                    format!(
                        "{:?} is not an IPv4 or IPv6 address (write it like 203.0.113.10); the IP sends nothing",
                        spec_ip.address
                    ),
                ));
            }
            ips.push(IndexedIp {
                address: spec_ip.address.clone(),
                parsed,
                override_: spec_ip.override_.clone(),
                reputation: statuses
                    .get(&key)
                    .map(|s| s.reputation.clone())
                    .unwrap_or_default(),
                not_bound: statuses
                    .get(&key)
                    .and_then(|s| super::ip_bound::not_bound(s))
                    .map(str::to_string),
            });
        }
        ips.sort_by(|a, b| ip_order(a).cmp(&ip_order(b)));
        IndexedPool {
            key,
            rate_limits: pool.spec.rate_limits.clone(),
            ips,
            problems,
        }
    }

    /// Replaces the reputation of one IP and returns the providers whose pair
    /// changed, or `None` when the pool has no such IP. `Some(None)`: every
    /// provider (the IP's `IpBound` condition changed).
    pub fn set_ip_status(&mut self, status: &IpStatus) -> Option<Option<Vec<String>>> {
        let key = lookup_key(&status.address);
        let ip = self.ips.iter_mut().find(|ip| ip.lookup_key() == key)?;
        let not_bound = super::ip_bound::not_bound(status).map(str::to_string);
        if ip.not_bound.is_some() != not_bound.is_some() {
            ip.not_bound = not_bound;
            ip.reputation = status.reputation.clone();
            return Some(None);
        }
        ip.not_bound = not_bound;
        let mut changed: Vec<String> = Vec::new();
        for pair in ip.reputation.iter().chain(status.reputation.iter()) {
            let before = ip.reputation.iter().find(|r| r.provider == pair.provider);
            let after = status
                .reputation
                .iter()
                .find(|r| r.provider == pair.provider);
            if before != after {
                changed.push(pair.provider.clone());
            }
        }
        changed.sort();
        changed.dedup();
        ip.reputation = status.reputation.clone();
        Some(Some(changed))
    }
}

fn ip_order(ip: &IndexedIp) -> (bool, Option<IpAddr>, &str) {
    (ip.parsed.is_none(), ip.parsed, ip.address.as_str())
}

/// One usable entry of `spec.fallback`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum FallbackTarget {
    Pool(String),
    Relay(RelayTarget),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct IndexedFallback {
    /// Position in `spec.fallback`, kept for field paths and the JSON table.
    pub index: usize,
    pub target: FallbackTarget,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct IndexedRoute {
    pub key: ObjectKey,
    pub provider: String,
    pub matcher: RouteMatcher,
    /// Learned domains with the latest expiry seen for each, sorted by domain.
    pub learned: Vec<(String, Timestamp)>,
    pub pool: String,
    pub fallbacks: Vec<IndexedFallback>,
    pub throttle_per_hour: Option<i64>,
    pub policy: NoHealthyIpPolicy,
    pub problems: Vec<Problem>,
    /// `spec.connections`: the route's own connection limits.
    pub connections: crate::api::ConnectionLimits,
}

impl IndexedRoute {
    pub fn new(key: ObjectKey, route: &DomainRoute) -> Self {
        let spec = &route.spec;
        let mut problems = Vec::new();
        if !is_valid_provider_name(&spec.provider) {
            problems.push(Problem::new(
                "spec.provider",
                format!(
                    "{:?} is not a provider name: use lowercase letters, digits and '-' (for example microsoft or yahoo-japan)",
                    spec.provider
                ),
            ));
        }
        let matcher = index_matcher(route, &mut problems);
        let learned = index_learned(route, &mut problems);
        let fallbacks = index_fallbacks(route, &mut problems);
        let throttle_per_hour = match &spec.throttle {
            Some(t) if t.max_per_hour >= 1 => Some(t.max_per_hour),
            Some(t) => {
                problems.push(Problem::new(
                    "spec.throttle.maxPerHour",
                    format!("{} is not a message count: use 1 or more; the route is not throttled meanwhile", t.max_per_hour),
                ));
                None
            }
            None => None,
        };
        IndexedRoute {
            key,
            provider: spec.provider.clone(),
            matcher,
            learned,
            pool: spec.pool.clone(),
            fallbacks,
            throttle_per_hour,
            policy: spec.when_no_healthy_ip,
            problems,
            connections: spec.connections.clone().unwrap_or_default(),
        }
    }

    /// The learned domains still valid at `now`.
    pub fn learned_at(&self, now: Timestamp) -> Vec<String> {
        self.learned
            .iter()
            .filter(|(_, expires)| *expires > now)
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// When the next learned domain still valid at `now` expires.
    pub fn next_expiry(&self, now: Timestamp) -> Option<Timestamp> {
        self.learned
            .iter()
            .map(|(_, e)| *e)
            .filter(|e| *e > now)
            .min()
    }

    /// Every pool name the route refers to (its own and fallback pools).
    pub fn pool_names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.pool.as_str()).chain(self.fallbacks.iter().filter_map(|f| {
            match &f.target {
                FallbackTarget::Pool(name) => Some(name.as_str()),
                FallbackTarget::Relay(_) => None,
            }
        }))
    }
}

fn index_matcher(route: &DomainRoute, problems: &mut Vec<Problem>) -> RouteMatcher {
    let m = &route.spec.match_;
    let kinds = [
        m.domains.is_some(),
        m.domain_suffixes.is_some(),
        m.mx_host_suffixes.is_some(),
        m.default == Some(true),
    ];
    let count = kinds.iter().filter(|k| **k).count();
    if count != 1 {
        problems.push(Problem::new(
            "spec.match",
            format!(
                "needs exactly one of domains, domainSuffixes, mxHostSuffixes or default: true, found {count}; {}",
                if count == 0 { "the route matches no recipient" } else { "the route matches all of them" }
            ),
        ));
    }
    RouteMatcher {
        domains: normalise_list(
            m.domains.as_deref(),
            "spec.match.domains",
            DomainForm::Exact,
            problems,
        ),
        domain_suffixes: normalise_list(
            m.domain_suffixes.as_deref(),
            "spec.match.domainSuffixes",
            DomainForm::Suffix,
            problems,
        ),
        mx_host_suffixes: normalise_list(
            m.mx_host_suffixes.as_deref(),
            "spec.match.mxHostSuffixes",
            DomainForm::MxSuffix,
            problems,
        ),
        default: m.default == Some(true),
    }
}

fn index_learned(route: &DomainRoute, problems: &mut Vec<Problem>) -> Vec<(String, Timestamp)> {
    let Some(status) = &route.status else {
        return Vec::new();
    };
    let mut latest: BTreeMap<String, Timestamp> = BTreeMap::new();
    for (index, learned) in status.learned_domains.iter().enumerate() {
        match normalise_domain(&learned.domain, DomainForm::Exact) {
            Some(domain) => {
                let expires = learned.expires_at.0;
                latest
                    .entry(domain)
                    .and_modify(|e| *e = (*e).max(expires))
                    .or_insert(expires);
            }
            None => problems.push(Problem::new(
                format!("status.learnedDomains[{index}].domain"),
                format!("{:?} is not a domain name; it is ignored", learned.domain),
            )),
        }
    }
    latest.into_iter().collect()
}

fn index_fallbacks(route: &DomainRoute, problems: &mut Vec<Problem>) -> Vec<IndexedFallback> {
    let mut fallbacks = Vec::new();
    for (index, fallback) in route.spec.fallback.iter().enumerate() {
        let field = format!("spec.fallback[{index}]");
        let target = match (&fallback.pool, &fallback.relay) {
            (Some(pool), None) if pool == &route.spec.pool => {
                problems.push(Problem::new(
                    format!("{field}.pool"),
                    format!("{pool:?} is the route's own pool; a fallback must be another pool or a relay; it is skipped"),
                ));
                continue;
            }
            (Some(pool), None) => FallbackTarget::Pool(pool.clone()),
            (None, Some(relay)) => match index_relay(relay, &field) {
                Ok(relay) => FallbackTarget::Relay(relay),
                Err(problem) => {
                    problems.push(problem);
                    continue;
                }
            },
            _ => {
                problems.push(Problem::new(
                    field,
                    "needs exactly one of pool or relay; this fallback is skipped".to_string(),
                ));
                continue;
            }
        };
        fallbacks.push(IndexedFallback { index, target });
    }
    fallbacks
}

fn index_relay(relay: &crate::api::Relay, field: &str) -> Result<RelayTarget, Problem> {
    let host = relay.host.trim();
    if !is_valid_host(host) {
        return Err(Problem::new(
            format!("{field}.relay.host"),
            format!(
                "{:?} is not a host name or IP address; this fallback is skipped",
                relay.host
            ),
        ));
    }
    let port = u16::try_from(relay.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            Problem::new(
                format!("{field}.relay.port"),
                format!(
                    "{} is not a TCP port (1-65535); this fallback is skipped",
                    relay.port
                ),
            )
        })?;
    Ok(RelayTarget {
        host: host.to_ascii_lowercase(),
        port,
        credentials_secret: relay.credentials_secret.as_ref().map(|s| s.name.clone()),
    })
}

/// Host names and IP literals that are safe to write into a Postfix next-hop.
pub(crate) fn is_valid_host(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok()
        || normalise_domain(host, DomainForm::Exact).is_some_and(|d| d == host.to_ascii_lowercase())
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum DomainForm {
    /// `hotmail.com`
    Exact,
    /// `.co.jp` or `example.com`
    Suffix,
    /// `.mail.protection.outlook.com`, also written `*.mail...`
    MxSuffix,
}

fn normalise_list(
    list: Option<&[String]>,
    field: &str,
    form: DomainForm,
    problems: &mut Vec<Problem>,
) -> Vec<String> {
    let Some(list) = list else { return Vec::new() };
    let mut out = Vec::with_capacity(list.len());
    for (index, raw) in list.iter().enumerate() {
        match normalise_domain(raw, form) {
            Some(domain) => out.push(domain),
            None => problems.push(Problem::new(
                format!("{field}[{index}]"),
                format!("{raw:?} is not a domain name (letters, digits, '-', '.'); it is ignored"),
            )),
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Lowercase, without surrounding blanks or one trailing dot; `None` when the
/// text cannot be a domain (so it can never inject anything into a Postfix table).
pub(crate) fn normalise_domain(raw: &str, form: DomainForm) -> Option<String> {
    let mut text = raw.trim();
    text = text.strip_suffix('.').unwrap_or(text);
    let mut domain = String::with_capacity(text.len());
    let body = match form {
        DomainForm::Exact => text,
        DomainForm::Suffix | DomainForm::MxSuffix => {
            let without_star = if form == DomainForm::MxSuffix {
                text.strip_prefix('*')
            } else {
                None
            };
            let rest = without_star.unwrap_or(text);
            match rest.strip_prefix('.') {
                Some(r) => {
                    domain.push('.');
                    r
                }
                None if without_star.is_some() => return None,
                None => rest,
            }
        }
    };
    if body.is_empty() || body.len() > 253 {
        return None;
    }
    for label in body.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return None;
        }
    }
    domain.extend(body.chars().map(|c| c.to_ascii_lowercase()));
    Some(domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_normalised_or_refused() {
        assert_eq!(
            normalise_domain(" Hotmail.COM. ", DomainForm::Exact).as_deref(),
            Some("hotmail.com")
        );
        assert_eq!(normalise_domain(".co.jp", DomainForm::Exact), None);
        assert_eq!(
            normalise_domain(".co.jp", DomainForm::Suffix).as_deref(),
            Some(".co.jp")
        );
        assert_eq!(
            normalise_domain("example.com", DomainForm::Suffix).as_deref(),
            Some("example.com")
        );
        assert_eq!(
            normalise_domain("*.mail.protection.outlook.com", DomainForm::MxSuffix).as_deref(),
            Some(".mail.protection.outlook.com")
        );
        assert_eq!(normalise_domain("*mx.example", DomainForm::MxSuffix), None);
        for bad in ["", "a..b", "hot mail.com", "x\ty", "a/b", "-\n-", "."] {
            assert_eq!(normalise_domain(bad, DomainForm::Exact), None, "{bad:?}");
        }
    }

    #[test]
    fn addresses_written_two_ways_are_one_ip() {
        assert_eq!(lookup_key("2001:DB8:0::1"), lookup_key("2001:db8::1"));
        assert_eq!(lookup_key(" 203.0.113.10 "), "203.0.113.10");
        assert_eq!(lookup_key("not-an-ip"), "not-an-ip");
    }

    #[test]
    fn relay_hosts_must_be_safe_in_a_next_hop() {
        assert!(is_valid_host("smtp.relay.example"));
        assert!(is_valid_host("2001:db8::25"));
        assert!(is_valid_host("192.0.2.25"));
        assert!(!is_valid_host("relay.example:587"));
        assert!(!is_valid_host("relay example"));
        assert!(!is_valid_host(""));
    }
}
