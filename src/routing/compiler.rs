//! The route compiler: from pools (with the reputation engine's state in their
//! status) and routes to the effective route table.
//!
//! Pure and deterministic: no clock (`now` only decides which learned domains
//! have expired), no I/O, and only ordered maps, so the same input gives the same
//! table whatever order the objects arrive in.
//!
//! Rules, per route and its provider:
//! - a Blocked (IP, provider) pair, or one with allowance 0, never sends for that
//!   provider; the same IP keeps sending for every other provider;
//! - a pool carries a route only when one of its allowed IPs is in a carrying
//!   state (Healthy, Warming, Throttled, Recovering): a Probing IP only sends the
//!   trickle that lets the provider see clean traffic, so a pool of Probing IPs
//!   carries nothing;
//! - when the route's pool cannot carry it, `whenNoHealthyIp: Fallback` tries
//!   `spec.fallback[]` in order (a fallback pool must carry by the same rule; a
//!   relay is always usable), then defers; `Defer` defers at once;
//! - the Probing IPs of the route's own pool keep their trickle in every mode, so
//!   the probe completes and the pool can come back;
//! - modes Primary and FallbackPool always have targets, Relay has the relay and
//!   at most the own pool's Probing targets, Defer has only those.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::{
    DomainRoute, ExcludedIp, IpStatus, NoHealthyIpPolicy, RouteMode, RouteTarget, SenderPool,
};

use super::index::{FallbackTarget, IndexedPool, IndexedRoute, DEFAULT_NAMESPACE};
use super::judge::{judge, Verdict};
use super::model::{carries_mail, ObjectKey, Problem, RouteResult, RouteTable};
use super::share::share_budget;

/// Compiles the effective route of every route. Pools are matched to routes by
/// name within the route's namespace.
pub fn compile(pools: &[SenderPool], routes: &[DomainRoute], now: Timestamp) -> RouteTable {
    RouteCompiler::new(pools, routes, now).into_table()
}

/// Why an incremental update could not be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("SenderPool {pool} is not known to the route compiler; add it with update_pool first")]
    UnknownPool { pool: ObjectKey },
    #[error("SenderPool {pool} has no IP {address} in spec.ips; update the pool (update_pool) when its IPs change")]
    UnknownIp { pool: ObjectKey, address: String },
    #[error("{kind} without metadata.name cannot be compiled; give it a name")]
    Unnamed { kind: &'static str },
}

/// The compiler with its indexes kept, so that one IP's change re-compiles only
/// the routes it can affect.
#[derive(Clone, Debug)]
pub struct RouteCompiler {
    now: Timestamp,
    pools: BTreeMap<ObjectKey, IndexedPool>,
    routes: BTreeMap<ObjectKey, IndexedRoute>,
    results: BTreeMap<ObjectKey, RouteResult>,
    /// For each pool key, the routes naming it (as their pool or a fallback),
    /// whether the pool exists or not.
    users: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// When each route's next learned domain expires.
    expiries: BTreeMap<ObjectKey, Timestamp>,
    fleet_problems: Vec<Problem>,
}

impl RouteCompiler {
    pub fn new(pools: &[SenderPool], routes: &[DomainRoute], now: Timestamp) -> Self {
        let mut fleet_problems = Vec::new();
        let pools = unique_by_key(pools, "SenderPool", pool_key, &mut fleet_problems);
        let routes = unique_by_key(routes, "DomainRoute", route_key, &mut fleet_problems);
        let mut compiler = RouteCompiler {
            now,
            pools: pools
                .into_iter()
                .map(|(k, p)| (k.clone(), IndexedPool::new(k, p)))
                .collect(),
            routes: routes
                .into_iter()
                .map(|(k, r)| (k.clone(), IndexedRoute::new(k, r)))
                .collect(),
            results: BTreeMap::new(),
            users: BTreeMap::new(),
            expiries: BTreeMap::new(),
            fleet_problems,
        };
        let keys: Vec<ObjectKey> = compiler.routes.keys().cloned().collect();
        for key in &keys {
            compiler.index_users(key);
            compiler.recompile(key);
        }
        compiler
    }

    /// The whole table as of the last update.
    pub fn table(&self) -> RouteTable {
        RouteTable {
            generated_at: self.now,
            routes: self.results.values().cloned().collect(),
            problems: self.fleet_problems.clone(),
        }
    }

    /// The whole table, without copying the results.
    pub fn into_table(self) -> RouteTable {
        RouteTable {
            generated_at: self.now,
            routes: self.results.into_values().collect(),
            problems: self.fleet_problems,
        }
    }

    pub fn route(&self, key: &ObjectKey) -> Option<&RouteResult> {
        self.results.get(key)
    }

    /// Every route result, sorted by namespace then name.
    pub fn results(&self) -> impl Iterator<Item = &RouteResult> {
        self.results.values()
    }

    /// Records a new status for one IP of one pool (typically after the
    /// reputation engine moved one of its pairs) and returns the routes whose
    /// result changed. Only routes of the providers whose pair changed, among
    /// the routes naming that pool, are compiled again.
    pub fn set_ip_status(
        &mut self,
        pool: &ObjectKey,
        status: &IpStatus,
        now: Timestamp,
    ) -> Result<Vec<RouteResult>, CompileError> {
        let indexed = self
            .pools
            .get_mut(pool)
            .ok_or_else(|| CompileError::UnknownPool { pool: pool.clone() })?;
        let changed_providers =
            indexed
                .set_ip_status(status)
                .ok_or_else(|| CompileError::UnknownIp {
                    pool: pool.clone(),
                    address: status.address.clone(),
                })?;
        let candidates: BTreeSet<ObjectKey> = self
            .users
            .get(pool)
            .into_iter()
            .flatten()
            .filter(|route| {
                self.routes.get(*route).is_some_and(|r| {
                    changed_providers
                        .as_ref()
                        .is_none_or(|changed| changed.contains(&r.provider))
                })
            })
            .cloned()
            .collect();
        Ok(self.recompile_set(candidates, now))
    }

    /// Adds or replaces a pool (spec and status) and returns the routes whose
    /// result changed.
    pub fn update_pool(
        &mut self,
        pool: &SenderPool,
        now: Timestamp,
    ) -> Result<Vec<RouteResult>, CompileError> {
        let key = pool_key(pool).ok_or(CompileError::Unnamed { kind: "SenderPool" })?;
        let indexed = IndexedPool::new(key.clone(), pool);
        if self.pools.get(&key) == Some(&indexed) {
            return Ok(self.recompile_set(BTreeSet::new(), now));
        }
        self.pools.insert(key.clone(), indexed);
        let candidates = self.users.get(&key).cloned().unwrap_or_default();
        Ok(self.recompile_set(candidates, now))
    }

    /// Forgets a pool; routes naming it fall back or defer. Returns the routes
    /// whose result changed.
    pub fn remove_pool(&mut self, pool: &ObjectKey, now: Timestamp) -> Vec<RouteResult> {
        let candidates = match self.pools.remove(pool) {
            Some(_) => self.users.get(pool).cloned().unwrap_or_default(),
            None => BTreeSet::new(),
        };
        self.recompile_set(candidates, now)
    }

    /// Adds or replaces a route and returns the routes whose result changed
    /// (this one, when its result is new or different).
    pub fn update_route(
        &mut self,
        route: &DomainRoute,
        now: Timestamp,
    ) -> Result<Vec<RouteResult>, CompileError> {
        let key = route_key(route).ok_or(CompileError::Unnamed {
            kind: "DomainRoute",
        })?;
        self.unindex_users(&key);
        self.routes
            .insert(key.clone(), IndexedRoute::new(key.clone(), route));
        self.index_users(&key);
        Ok(self.recompile_set(BTreeSet::from([key]), now))
    }

    /// Forgets a route and returns its last result, if it had one.
    pub fn remove_route(&mut self, route: &ObjectKey) -> Option<RouteResult> {
        self.unindex_users(route);
        self.routes.remove(route);
        self.expiries.remove(route);
        self.results.remove(route)
    }

    /// Compiles `candidates` again, plus every route whose learned domains
    /// expired since the last update, and returns those whose result changed.
    fn recompile_set(
        &mut self,
        mut candidates: BTreeSet<ObjectKey>,
        now: Timestamp,
    ) -> Vec<RouteResult> {
        if now < self.now {
            // The clock went back: expired learned domains may be valid again.
            candidates.extend(self.routes.keys().cloned());
        } else {
            candidates.extend(
                self.expiries
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(k, _)| k.clone()),
            );
        }
        self.now = now;
        candidates
            .into_iter()
            .filter_map(|key| self.recompile(&key))
            .collect()
    }

    /// Compiles one route and stores the result; returns it when it changed.
    fn recompile(&mut self, key: &ObjectKey) -> Option<RouteResult> {
        let route = self.routes.get(key)?;
        let result = compile_route(route, &self.pools, self.now);
        match route.next_expiry(self.now) {
            Some(at) => self.expiries.insert(key.clone(), at),
            None => self.expiries.remove(key),
        };
        if self.results.get(key) == Some(&result) {
            return None;
        }
        self.results.insert(key.clone(), result.clone());
        Some(result)
    }

    fn index_users(&mut self, route: &ObjectKey) {
        let Some(indexed) = self.routes.get(route) else {
            return;
        };
        for pool in indexed.pool_names() {
            self.users
                .entry(ObjectKey::new(&route.namespace, pool))
                .or_default()
                .insert(route.clone());
        }
    }

    fn unindex_users(&mut self, route: &ObjectKey) {
        for users in self.users.values_mut() {
            users.remove(route);
        }
        self.users.retain(|_, users| !users.is_empty());
    }
}

fn namespace_of(meta: &ObjectMeta) -> String {
    meta.namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
}

fn pool_key(pool: &SenderPool) -> Option<ObjectKey> {
    let name = pool.metadata.name.clone()?;
    Some(ObjectKey {
        namespace: namespace_of(&pool.metadata),
        name,
    })
}

fn route_key(route: &DomainRoute) -> Option<ObjectKey> {
    let name = route.metadata.name.clone()?;
    Some(ObjectKey {
        namespace: namespace_of(&route.metadata),
        name,
    })
}

/// Keys every object, reporting unnamed and duplicate ones. Of duplicates the one
/// with the smallest JSON form wins, so the choice does not depend on input order.
fn unique_by_key<'a, T: serde::Serialize>(
    objects: &'a [T],
    kind: &str,
    key_of: fn(&T) -> Option<ObjectKey>,
    problems: &mut Vec<Problem>,
) -> BTreeMap<ObjectKey, &'a T> {
    let mut by_key: BTreeMap<ObjectKey, Vec<&'a T>> = BTreeMap::new();
    let mut unnamed = 0;
    for object in objects {
        match key_of(object) {
            Some(key) => by_key.entry(key).or_default().push(object),
            None => unnamed += 1,
        }
    }
    if unnamed > 0 {
        problems.push(Problem::new(
            kind.to_string(),
            format!("{unnamed} {kind} object(s) have no metadata.name and are ignored"),
        ));
    }
    by_key
        .into_iter()
        .filter_map(|(key, mut copies)| {
            if copies.len() > 1 {
                problems.push(Problem::new(
                    format!("{kind} {key}"),
                    format!(
                        "given {} times; one is used, remove the others",
                        copies.len()
                    ),
                ));
                copies.sort_by_cached_key(|o| serde_json::to_string(o).unwrap_or_default());
            }
            copies.first().map(|first| (key, *first))
        })
        .collect()
}

/// The pool's IPs split into those that may send for `provider` and those left out.
#[derive(Default)]
struct PoolVerdict {
    targets: Vec<RouteTarget>,
    /// Own (pre-throttle) hourly cap of each target, same order.
    caps: Vec<i64>,
    excluded: Vec<ExcludedIp>,
}

impl PoolVerdict {
    /// Whether the pool can carry a route: a Probing IP alone only trickles.
    fn carries(&self) -> bool {
        self.targets.iter().any(|t| carries_mail(t.state))
    }

    /// Every IP of a fallback pool that cannot carry the route, as left out.
    fn into_skipped(self, provider: &str) -> Vec<ExcludedIp> {
        let probing = self.targets.into_iter().map(|t| ExcludedIp {
            reason: format!(
                "{provider} is only probing this IP and pool {:?} has no IP that carries its mail, so this fallback is skipped",
                t.pool
            ),
            pool: t.pool,
            ip: t.ip,
            state: t.state,
        });
        self.excluded.into_iter().chain(probing).collect()
    }
}

fn judge_pool(pool: &IndexedPool, provider: &str) -> PoolVerdict {
    let mut verdict = PoolVerdict::default();
    for ip in &pool.ips {
        match judge(ip, provider, &pool.rate_limits) {
            Verdict::Allowed {
                state,
                allowance,
                hourly_cap,
            } => {
                verdict.targets.push(RouteTarget {
                    pool: pool.key.name.clone(),
                    ip: ip.address.clone(),
                    weight: allowance,
                    hourly_cap: Some(hourly_cap),
                    state,
                });
                verdict.caps.push(hourly_cap);
            }
            Verdict::Excluded { state, reason } => verdict.excluded.push(ExcludedIp {
                pool: pool.key.name.clone(),
                ip: ip.address.clone(),
                state,
                reason,
            }),
        }
    }
    verdict
}

/// Pool problems surface on every route that uses the pool, where people look.
fn pool_problems<'a>(pool: &'a IndexedPool, field: &str) -> impl Iterator<Item = Problem> + 'a {
    let field = field.to_string();
    pool.problems.iter().map(move |p| {
        Problem::new(
            field.clone(),
            format!("SenderPool {:?} {}: {}", pool.key.name, p.field, p.message),
        )
    })
}

fn missing_pool(field: &str, name: &str, namespace: &str, consequence: &str) -> Problem {
    Problem::new(
        field,
        format!("SenderPool {name:?} not found in namespace {namespace:?}; {consequence}"),
    )
}

pub(crate) fn compile_route(
    route: &IndexedRoute,
    pools: &BTreeMap<ObjectKey, IndexedPool>,
    now: Timestamp,
) -> RouteResult {
    let namespace = route.key.namespace.as_str();
    let lookup = |name: &str| pools.get(&ObjectKey::new(namespace, name));
    let mut problems = route.problems.clone();
    let mut excluded = Vec::new();
    let mut result = RouteResult {
        key: route.key.clone(),
        provider: route.provider.clone(),
        matcher: route.matcher.clone(),
        learned_domains: route.learned_at(now),
        pool: route.pool.clone(),
        when_no_healthy_ip: route.policy,
        mode: RouteMode::Defer,
        fallback_index: None,
        serving_pool: None,
        throttle_per_hour: route.throttle_per_hour,
        targets: Vec::new(),
        excluded: Vec::new(),
        relay: None,
        problems: Vec::new(),
        connections: route.connections.clone(),
    };

    // Every referenced pool is checked, used or not, so a typo shows before it matters.
    match lookup(&route.pool) {
        Some(pool) => problems.extend(pool_problems(pool, "spec.pool")),
        None => problems.push(missing_pool(
            "spec.pool",
            &route.pool,
            namespace,
            "the route uses its fallbacks",
        )),
    }
    for fallback in &route.fallbacks {
        if let FallbackTarget::Pool(name) = &fallback.target {
            let field = format!("spec.fallback[{}].pool", fallback.index);
            match lookup(name) {
                Some(pool) => problems.extend(pool_problems(pool, &field)),
                None => problems.push(missing_pool(
                    &field,
                    name,
                    namespace,
                    "this fallback is skipped",
                )),
            }
        }
    }

    let mut chosen: Option<(RouteMode, Option<usize>, &IndexedPool, PoolVerdict)> = None;
    // The own pool's Probing IPs when that pool cannot carry the route.
    let mut trickle = PoolVerdict::default();
    if let Some(pool) = lookup(&route.pool) {
        let mut verdict = judge_pool(pool, &route.provider);
        if verdict.carries() {
            chosen = Some((RouteMode::Primary, None, pool, verdict));
        } else {
            excluded.append(&mut verdict.excluded);
            trickle = verdict;
        }
    }
    if chosen.is_none() && route.policy == NoHealthyIpPolicy::Fallback {
        let mut tried: BTreeSet<&str> = BTreeSet::from([route.pool.as_str()]);
        for fallback in &route.fallbacks {
            match &fallback.target {
                FallbackTarget::Pool(name) => {
                    let Some(pool) = lookup(name) else { continue };
                    if !tried.insert(name.as_str()) {
                        continue;
                    }
                    let verdict = judge_pool(pool, &route.provider);
                    if !verdict.carries() {
                        excluded.extend(verdict.into_skipped(&route.provider));
                    } else {
                        chosen =
                            Some((RouteMode::FallbackPool, Some(fallback.index), pool, verdict));
                        break;
                    }
                }
                FallbackTarget::Relay(relay) => {
                    result.mode = RouteMode::Relay;
                    result.fallback_index = Some(fallback.index);
                    result.relay = Some(relay.clone());
                    break;
                }
            }
        }
    }

    let mut sending = PoolVerdict::default();
    if let Some((mode, fallback_index, pool, verdict)) = chosen {
        result.mode = mode;
        result.fallback_index = fallback_index;
        result.serving_pool = Some(pool.key.name.clone());
        sending = verdict;
    }
    excluded.append(&mut sending.excluded);
    sending.targets.append(&mut trickle.targets);
    sending.caps.append(&mut trickle.caps);
    let (targets, throttled_out) =
        apply_throttle(sending.targets, &sending.caps, route.throttle_per_hour);
    excluded.extend(throttled_out);
    result.targets = targets;
    result.excluded = excluded;
    problems.sort();
    problems.dedup();
    result.problems = problems;
    result
}

/// Shares the route throttle by weight. IPs whose share rounds to 0 leave the
/// target list (a target always has something to send); at least one remains
/// because the shares add up to the throttle, which is at least 1.
fn apply_throttle(
    targets: Vec<RouteTarget>,
    caps: &[i64],
    throttle: Option<i64>,
) -> (Vec<RouteTarget>, Vec<ExcludedIp>) {
    let Some(budget) = throttle else {
        return (targets, Vec::new());
    };
    let weights: Vec<i32> = targets.iter().map(|t| t.weight).collect();
    let shared = share_budget(caps, &weights, budget);
    let mut kept = Vec::with_capacity(targets.len());
    let mut out = Vec::new();
    for (mut target, cap) in targets.into_iter().zip(shared) {
        if cap < 1 {
            out.push(ExcludedIp {
                pool: target.pool,
                ip: target.ip,
                state: target.state,
                reason: format!(
                    "the route throttle of {budget} messages per hour leaves no share for this IP"
                ),
            });
        } else {
            target.hourly_cap = Some(cap);
            kept.push(target);
        }
    }
    (kept, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ReputationState;
    use crate::routing::example::{self, incident_fleet, pair, set_pair};
    use jiff::SignedDuration;

    fn now() -> Timestamp {
        "2021-11-05T08:10:00Z".parse().unwrap()
    }

    fn ips(route: &RouteResult) -> Vec<&str> {
        route.targets.iter().map(|t| t.ip.as_str()).collect()
    }

    #[test]
    fn a_microsoft_block_leaves_only_microsoft_routes() {
        let (pools, routes) = incident_fleet(now());
        let table = compile(&pools, &routes, now());
        let microsoft = table.route("mail", "microsoft").unwrap();
        assert_eq!(microsoft.mode, RouteMode::Primary);
        assert_eq!(microsoft.targets.len(), 7);
        assert!(!ips(microsoft).contains(&"203.0.113.13"));
        let out = &microsoft.excluded;
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].ip.as_str(), out[0].state),
            ("203.0.113.13", ReputationState::Blocked)
        );
        assert_eq!(
            out[0].reason,
            "microsoft blocks this IP (ConclusiveBlockReply)"
        );

        let google = table.route("mail", "google").unwrap();
        assert_eq!(
            google.targets.len(),
            8,
            "the blocked IP still sends to Google"
        );
        let throttled = google.target("bulk", "203.0.113.15").unwrap();
        assert_eq!((throttled.weight, throttled.hourly_cap), (50, Some(5000)));
        assert_eq!(throttled.state, ReputationState::Throttled);
        assert!(
            table.problems.is_empty() && microsoft.problems.is_empty(),
            "{:?}",
            microsoft.problems
        );
    }

    #[test]
    fn the_route_throttle_is_shared_by_weight_and_adds_up() {
        let (pools, routes) = incident_fleet(now());
        let table = compile(&pools, &routes, now());
        let m365 = table.route("mail", "microsoft-365").unwrap();
        let caps: Vec<i64> = m365.targets.iter().map(|t| t.hourly_cap.unwrap()).collect();
        assert_eq!(caps.iter().sum::<i64>(), 2000);
        assert!(
            caps.iter().max().unwrap() - caps.iter().min().unwrap() <= 1,
            "{caps:?}"
        );
        assert_eq!(m365.throttle_per_hour, Some(2000));
    }

    #[test]
    fn no_allowed_ip_goes_to_the_fallback_pool_then_the_relay_then_defers() {
        let (mut pools, mut routes) = incident_fleet(now());
        let bulk_ips: Vec<String> = pools[0]
            .spec
            .ips
            .iter()
            .map(|i| i.address.clone())
            .collect();
        for ip in &bulk_ips {
            set_pair(
                &mut pools[0],
                ip,
                pair("microsoft", ReputationState::Blocked, 0, now()),
            );
        }
        let table = compile(&pools, &routes, now());
        let microsoft = table.route("mail", "microsoft").unwrap();
        assert_eq!(microsoft.mode, RouteMode::FallbackPool);
        assert_eq!(
            (microsoft.fallback_index, microsoft.serving_pool.as_deref()),
            (Some(0), Some("reserve"))
        );
        assert_eq!(ips(microsoft), vec!["198.51.100.20", "198.51.100.21"]);
        assert!(microsoft
            .targets
            .iter()
            .all(|t| t.hourly_cap == Some(39) && t.state == ReputationState::Warming));
        assert_eq!(microsoft.excluded.len(), 8);
        assert!(microsoft.fallback_in_use());
        assert_eq!(
            table.route("mail", "google").unwrap().mode,
            RouteMode::Primary
        );

        // The reserve drained by an operator: the relay carries the route.
        let mut drained = pair("microsoft", ReputationState::Warming, 0, now());
        drained.overridden_by = Some("moving racks".to_string());
        for ip in ["198.51.100.20", "198.51.100.21"] {
            set_pair(&mut pools[1], ip, drained.clone());
        }
        let table = compile(&pools, &routes, now());
        let microsoft = table.route("mail", "microsoft").unwrap();
        assert_eq!(microsoft.mode, RouteMode::Relay);
        assert!(microsoft.targets.is_empty());
        let relay = microsoft.relay.as_ref().unwrap();
        assert_eq!(
            (relay.address(), relay.credentials_secret.as_deref()),
            (
                "smtp.relay.example:587".to_string(),
                Some("relay-credentials")
            )
        );
        assert!(microsoft
            .excluded
            .iter()
            .any(|e| e.reason.contains("moving racks")));
        // microsoft-365 has no relay: it defers.
        let m365 = table.route("mail", "microsoft-365").unwrap();
        assert_eq!(
            (m365.mode, m365.targets.len(), m365.relay.is_none()),
            (RouteMode::Defer, 0, true)
        );

        // Policy Defer skips the fallbacks.
        routes[0].spec.when_no_healthy_ip = NoHealthyIpPolicy::Defer;
        let table = compile(&pools, &routes, now());
        assert_eq!(
            table.route("mail", "microsoft").unwrap().mode,
            RouteMode::Defer
        );
    }

    #[test]
    fn a_pool_of_probing_ips_falls_back_and_keeps_their_trickle() {
        let (mut pools, mut routes) = incident_fleet(now());
        let bulk_ips: Vec<String> = pools[0]
            .spec
            .ips
            .iter()
            .map(|i| i.address.clone())
            .collect();
        for ip in &bulk_ips {
            set_pair(
                &mut pools[0],
                ip,
                pair("microsoft", ReputationState::Probing, 2, now()),
            );
        }
        let table = compile(&pools, &routes, now());
        let microsoft = table.route("mail", "microsoft").unwrap();
        assert_eq!(
            (microsoft.mode, microsoft.serving_pool.as_deref()),
            (RouteMode::FallbackPool, Some("reserve"))
        );
        // The reserve's IPs first, then every probing bulk IP with its trickle.
        assert_eq!(&ips(microsoft)[..2], ["198.51.100.20", "198.51.100.21"]);
        let probing: Vec<&RouteTarget> = microsoft.targets[2..].iter().collect();
        assert_eq!(probing.len(), bulk_ips.len());
        assert!(probing.iter().all(|t| t.pool == "bulk"
            && t.state == ReputationState::Probing
            && t.weight == 2
            && t.hourly_cap == Some(200)));
        assert!(microsoft.excluded.is_empty(), "{:?}", microsoft.excluded);

        // The same with one IP recovering: the pool carries the route again.
        set_pair(
            &mut pools[0],
            &bulk_ips[0],
            pair("microsoft", ReputationState::Recovering, 10, now()),
        );
        let table = compile(&pools, &routes, now());
        let microsoft = table.route("mail", "microsoft").unwrap();
        assert_eq!(microsoft.mode, RouteMode::Primary);
        assert!(microsoft.targets.iter().all(|t| t.pool == "bulk"));
        set_pair(
            &mut pools[0],
            &bulk_ips[0],
            pair("microsoft", ReputationState::Probing, 2, now()),
        );

        // The reserve cannot carry either: the relay does, the probes go on.
        for ip in ["198.51.100.20", "198.51.100.21"] {
            set_pair(
                &mut pools[1],
                ip,
                pair("microsoft", ReputationState::Probing, 2, now()),
            );
        }
        let table = compile(&pools, &routes, now());
        let microsoft = table.route("mail", "microsoft").unwrap();
        assert_eq!(microsoft.mode, RouteMode::Relay);
        assert!(microsoft.relay.is_some() && microsoft.serving_pool.is_none());
        assert_eq!(ips(microsoft).len(), bulk_ips.len());
        assert!(microsoft.targets.iter().all(|t| t.pool == "bulk"));
        // The skipped reserve's probing IPs are reported, not used.
        let skipped: Vec<&ExcludedIp> = microsoft
            .excluded
            .iter()
            .filter(|e| e.pool == "reserve")
            .collect();
        assert_eq!(skipped.len(), 2);
        assert!(
            skipped[0].reason.contains("fallback is skipped"),
            "{}",
            skipped[0].reason
        );
        // microsoft-365 has no relay: it defers, but the probes still send.
        let m365 = table.route("mail", "microsoft-365").unwrap();
        assert_eq!(m365.mode, RouteMode::Defer);
        assert!(m365.relay.is_none() && !m365.targets.is_empty());
        assert!(m365
            .targets
            .iter()
            .all(|t| t.state == ReputationState::Probing && t.pool == "bulk"));
        assert_eq!(
            m365.targets
                .iter()
                .map(|t| t.hourly_cap.unwrap())
                .sum::<i64>(),
            2000.min(200 * bulk_ips.len() as i64),
            "the route throttle still applies to the trickle"
        );

        // Policy Defer: no fallback is tried, the probes still send.
        routes[0].spec.when_no_healthy_ip = NoHealthyIpPolicy::Defer;
        let table = compile(&pools, &routes, now());
        let microsoft = table.route("mail", "microsoft").unwrap();
        assert_eq!(
            (microsoft.mode, microsoft.targets.len()),
            (RouteMode::Defer, bulk_ips.len())
        );
    }

    #[test]
    fn missing_pools_and_bad_fallbacks_are_problems_not_errors() {
        let (pools, mut routes) = incident_fleet(now());
        routes[2].spec.pool = "bulky".to_string();
        routes[2].spec.fallback = vec![
            example::fallback_pool("nowhere"),
            crate::api::Fallback {
                pool: None,
                relay: None,
            },
        ];
        let table = compile(&pools, &routes, now());
        let google = table.route("mail", "google").unwrap();
        assert_eq!(google.mode, RouteMode::Defer);
        let shown: Vec<String> = google.problems.iter().map(|p| p.to_string()).collect();
        assert!(shown.contains(&"spec.pool: SenderPool \"bulky\" not found in namespace \"mail\"; the route uses its fallbacks".to_string()), "{shown:?}");
        assert!(
            shown
                .iter()
                .any(|p| p.starts_with("spec.fallback[0].pool: SenderPool \"nowhere\" not found")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|p| p.starts_with("spec.fallback[1]: needs exactly one of pool or relay")),
            "{shown:?}"
        );
        // A declared provider nobody knows is fine.
        assert!(table
            .route("mail", "yahoo-japan")
            .unwrap()
            .problems
            .is_empty());
    }

    #[test]
    fn learned_domains_expire_with_now() {
        let (pools, routes) = incident_fleet(now());
        let table = compile(&pools, &routes, now());
        assert_eq!(
            table
                .route("mail", "microsoft-365")
                .unwrap()
                .learned_domains
                .len(),
            6
        );
        let later = now() + SignedDuration::from_hours(24 * 8);
        let table = compile(&pools, &routes, later);
        assert!(table
            .route("mail", "microsoft-365")
            .unwrap()
            .learned_domains
            .is_empty());
    }

    #[test]
    fn one_ip_change_recompiles_only_that_providers_routes() {
        let (pools, routes) = incident_fleet(now());
        let mut compiler = RouteCompiler::new(&pools, &routes, now());
        let bulk = ObjectKey::new("mail", "bulk");
        let mut status = pools[0]
            .status
            .as_ref()
            .unwrap()
            .ips
            .iter()
            .find(|s| s.address == "203.0.113.11")
            .unwrap()
            .clone();
        status
            .reputation
            .push(pair("google", ReputationState::Blocked, 0, now()));
        let changed = compiler.set_ip_status(&bulk, &status, now()).unwrap();
        let names: Vec<&str> = changed.iter().map(|r| r.key.name.as_str()).collect();
        assert_eq!(names, vec!["google"]);
        assert!(changed[0].target("bulk", "203.0.113.11").is_none());
        // The same status again changes nothing.
        assert!(compiler
            .set_ip_status(&bulk, &status, now())
            .unwrap()
            .is_empty());
        let err = compiler
            .set_ip_status(&ObjectKey::new("mail", "nope"), &status, now())
            .unwrap_err();
        assert!(err.to_string().contains("mail/nope"), "{err}");
    }

    #[test]
    fn an_ip_its_senders_cannot_bind_leaves_every_route_and_comes_back() {
        let (pools, routes) = incident_fleet(now());
        let mut compiler = RouteCompiler::new(&pools, &routes, now());
        let bulk = ObjectKey::new("mail", "bulk");
        let mut status = pools[0].status.as_ref().unwrap().ips[0].clone();
        let ip = status.address.clone();
        let carried = |table: &RouteTable| {
            table
                .routes
                .iter()
                .filter(|r| r.target("bulk", &ip).is_some())
                .count()
        };
        let before = carried(&compiler.table());
        assert!(before >= 2, "the IP carries several routes");
        crate::api::conditions::set_condition(
            &mut status.conditions,
            crate::routing::ip_bound::IP_BOUND,
            crate::api::ConditionStatus::False,
            "AddressNotOnInterface",
            "not on an interface",
            None,
            now(),
        );
        let changed = compiler.set_ip_status(&bulk, &status, now()).unwrap();
        assert!(
            changed.len() >= before,
            "every route it carried is recompiled"
        );
        assert_eq!(carried(&compiler.table()), 0);
        // The whole compile agrees with the incremental one.
        let mut pools_now = pools.clone();
        pools_now[0].status.as_mut().unwrap().ips[0] = status.clone();
        assert_eq!(compiler.table(), compile(&pools_now, &routes, now()));
        // Bound again: the routes come back.
        status.conditions.clear();
        compiler.set_ip_status(&bulk, &status, now()).unwrap();
        assert_eq!(carried(&compiler.table()), before);
    }

    #[test]
    fn an_incremental_update_also_drops_expired_learned_domains() {
        let (pools, routes) = incident_fleet(now());
        let mut compiler = RouteCompiler::new(&pools, &routes, now());
        let bulk = ObjectKey::new("mail", "bulk");
        let status = pools[0].status.as_ref().unwrap().ips[0].clone();
        let later = now() + SignedDuration::from_hours(24 * 8);
        let changed = compiler.set_ip_status(&bulk, &status, later).unwrap();
        let names: Vec<&str> = changed.iter().map(|r| r.key.name.as_str()).collect();
        assert_eq!(names, vec!["microsoft-365"]);
        assert!(changed[0].learned_domains.is_empty());
        assert_eq!(compiler.table(), compile(&pools, &routes, later));
        // Back in time (a restored clock): the domains are valid again.
        compiler.set_ip_status(&bulk, &status, now()).unwrap();
        assert_eq!(compiler.table(), compile(&pools, &routes, now()));
    }

    #[test]
    fn routes_and_pools_come_and_go_incrementally() {
        let (pools, routes) = incident_fleet(now());
        let mut compiler = RouteCompiler::new(&pools, &routes[..2], now());
        let added = compiler.update_route(&routes[2], now()).unwrap();
        assert_eq!(added.len(), 1);
        assert_eq!(added[0].key.name, "google");
        let gone = compiler.remove_pool(&ObjectKey::new("mail", "bulk"), now());
        let mut names: Vec<&str> = gone.iter().map(|r| r.key.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["google", "microsoft", "microsoft-365"]);
        assert_eq!(
            compiler
                .route(&ObjectKey::new("mail", "microsoft"))
                .unwrap()
                .mode,
            RouteMode::FallbackPool
        );
        assert_eq!(
            compiler
                .route(&ObjectKey::new("mail", "google"))
                .unwrap()
                .mode,
            RouteMode::Defer
        );
        assert!(compiler
            .remove_route(&ObjectKey::new("mail", "google"))
            .is_some());
        compiler.update_pool(&pools[0], now()).unwrap();
        assert_eq!(compiler.table(), compile(&pools, &routes[..2], now()));
    }

    #[test]
    fn duplicate_objects_are_reported_and_resolved_whatever_the_order() {
        let (mut pools, routes) = incident_fleet(now());
        let mut twin = pools[1].clone();
        twin.metadata.name = Some("bulk".to_string());
        pools.push(twin);
        let a = compile(&pools, &routes, now());
        pools.reverse();
        let b = compile(&pools, &routes, now());
        assert_eq!(a, b);
        assert_eq!(a.problems.len(), 1);
        assert!(
            a.problems[0]
                .to_string()
                .contains("SenderPool mail/bulk: given 2 times"),
            "{}",
            a.problems[0]
        );
    }
}
