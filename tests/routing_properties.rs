//! Invariants of the route compiler over random fleets: pools of IPs whose
//! (IP, provider) pairs are in random states and allowances, and routes with
//! random pools, fallbacks, throttles and policies.

use std::collections::BTreeSet;

use jiff::Timestamp;
use proptest::prelude::*;

use mailfleet::api::{
    DomainRoute, ManualOverride, NoHealthyIpPolicy, ReputationState, RouteMode, RouteTarget,
    SenderPool, Throttle,
};
use mailfleet::routing::example::{
    self, fallback_pool, fallback_relay, match_domains, pair, set_pair,
};
use mailfleet::routing::{compile, json, ObjectKey, RouteCompiler, RouteResult};

const NAMESPACE: &str = "mail";
const PROVIDERS: [&str; 3] = ["microsoft", "google", "yahoo"];
const STATES: [ReputationState; 6] = [
    ReputationState::Healthy,
    ReputationState::Warming,
    ReputationState::Throttled,
    ReputationState::Blocked,
    ReputationState::Probing,
    ReputationState::Recovering,
];

#[derive(Clone, Debug)]
struct PairSpec {
    state: ReputationState,
    allowance: i32,
    warm_cap: Option<i64>,
}

#[derive(Clone, Debug)]
struct IpSpec {
    /// One optional pair per entry of PROVIDERS; `None` = never recorded (Healthy 100 %).
    pairs: Vec<Option<PairSpec>>,
    /// Manual override: allowance and the providers (indexes) it covers, empty = all.
    override_: Option<(i32, Vec<usize>)>,
}

#[derive(Clone, Debug)]
struct PoolSpec {
    ips: Vec<IpSpec>,
    per_hour: i64,
}

#[derive(Clone, Debug)]
enum FallbackSpec {
    Pool(usize),
    Relay,
}

#[derive(Clone, Debug)]
struct RouteSpec {
    provider: usize,
    /// May equal the number of pools: a pool that does not exist.
    pool: usize,
    fallbacks: Vec<FallbackSpec>,
    throttle: Option<i64>,
    defer: bool,
}

#[derive(Clone, Debug)]
struct FleetSpec {
    pools: Vec<PoolSpec>,
    routes: Vec<RouteSpec>,
}

fn allowance() -> impl Strategy<Value = i32> {
    prop_oneof![Just(0), Just(100), 1..100i32]
}

fn pair_spec() -> impl Strategy<Value = PairSpec> {
    (
        prop::sample::select(STATES.to_vec()),
        allowance(),
        prop::option::weighted(0.2, 1..2000i64),
    )
        .prop_map(|(state, allowance, warm_cap)| PairSpec {
            state,
            allowance,
            warm_cap,
        })
}

fn ip_spec() -> impl Strategy<Value = IpSpec> {
    (
        prop::collection::vec(prop::option::weighted(0.8, pair_spec()), PROVIDERS.len()),
        prop::option::weighted(
            0.15,
            (allowance(), prop::collection::vec(0..PROVIDERS.len(), 0..2)),
        ),
    )
        .prop_map(|(pairs, override_)| IpSpec { pairs, override_ })
}

fn pool_spec() -> impl Strategy<Value = PoolSpec> {
    (
        prop::collection::vec(ip_spec(), 1..6),
        prop_oneof![Just(10_000i64), 1..5000i64],
    )
        .prop_map(|(ips, per_hour)| PoolSpec { ips, per_hour })
}

fn fleet_spec() -> impl Strategy<Value = FleetSpec> {
    prop::collection::vec(pool_spec(), 1..4).prop_flat_map(|pools| {
        let n = pools.len();
        let fallback =
            prop_oneof![3 => (0..=n).prop_map(FallbackSpec::Pool), 1 => Just(FallbackSpec::Relay)];
        let route = (
            0..PROVIDERS.len(),
            0..=n,
            prop::collection::vec(fallback, 0..3),
            prop::option::weighted(0.3, 1..3000i64),
            prop::bool::weighted(0.2),
        )
            .prop_map(|(provider, pool, fallbacks, throttle, defer)| RouteSpec {
                provider,
                pool,
                fallbacks,
                throttle,
                defer,
            });
        (Just(pools), prop::collection::vec(route, 1..7))
            .prop_map(|(pools, routes)| FleetSpec { pools, routes })
    })
}

fn now() -> Timestamp {
    "2021-11-05T08:10:00Z".parse().unwrap()
}

fn pool_name(index: usize) -> String {
    format!("p{index}")
}

fn address(pool: usize, ip: usize) -> String {
    format!("10.0.{pool}.{}", ip + 1)
}

fn build(spec: &FleetSpec) -> (Vec<SenderPool>, Vec<DomainRoute>) {
    let pools = spec
        .pools
        .iter()
        .enumerate()
        .map(|(p, pool_spec)| {
            let addresses: Vec<String> = (0..pool_spec.ips.len()).map(|i| address(p, i)).collect();
            let mut pool = example::pool(NAMESPACE, &pool_name(p), &addresses);
            pool.spec.rate_limits.per_hour = pool_spec.per_hour;
            for (i, ip) in pool_spec.ips.iter().enumerate() {
                for (k, pair_spec) in ip.pairs.iter().enumerate() {
                    if let Some(ps) = pair_spec {
                        let mut recorded = pair(PROVIDERS[k], ps.state, ps.allowance, now());
                        recorded.hourly_cap = ps.warm_cap;
                        set_pair(&mut pool, &addresses[i], recorded);
                    }
                }
                pool.spec.ips[i].override_ =
                    ip.override_
                        .as_ref()
                        .map(|(pct, providers)| ManualOverride {
                            allowance_percent: *pct,
                            providers: providers
                                .iter()
                                .map(|k| PROVIDERS[*k].to_string())
                                .collect(),
                            reason: "test override".to_string(),
                        });
            }
            pool
        })
        .collect();
    let routes = spec
        .routes
        .iter()
        .enumerate()
        .map(|(r, rs)| {
            let domain = format!("r{r}.example");
            let mut route = example::route(
                NAMESPACE,
                &format!("r{r}"),
                PROVIDERS[rs.provider],
                match_domains(&[&domain]),
                &pool_name(rs.pool),
            );
            route.spec.fallback = rs
                .fallbacks
                .iter()
                .map(|f| match f {
                    FallbackSpec::Pool(p) => fallback_pool(&pool_name(*p)),
                    FallbackSpec::Relay => {
                        fallback_relay("relay.example", 587, Some("relay-secret"))
                    }
                })
                .collect();
            route.spec.throttle = rs.throttle.map(|max_per_hour| Throttle { max_per_hour });
            if rs.defer {
                route.spec.when_no_healthy_ip = NoHealthyIpPolicy::Defer;
            }
            route
        })
        .collect();
    (pools, routes)
}

/// The reference model: the effective allowance of one IP for one provider,
/// 0 when it may not send.
fn effective_allowance(ip: &IpSpec, provider: usize) -> i32 {
    let (state, mut allowance) = match &ip.pairs[provider] {
        Some(p) => (p.state, p.allowance.clamp(0, 100)),
        None => (ReputationState::Healthy, 100),
    };
    if state == ReputationState::Blocked {
        return 0;
    }
    if let Some((pct, providers)) = &ip.override_ {
        if providers.is_empty() || providers.contains(&provider) {
            allowance = allowance.min(*pct);
        }
    }
    allowance
}

fn state_of(ip: &IpSpec, provider: usize) -> ReputationState {
    ip.pairs[provider]
        .as_ref()
        .map_or(ReputationState::Healthy, |p| p.state)
}

/// The reference rule: a pool carries a route only with an allowed IP that is
/// neither Probing nor Blocked (a Probing IP only trickles).
fn pool_carries(spec: &FleetSpec, pool: usize, provider: usize) -> bool {
    spec.pools.get(pool).is_some_and(|p| {
        p.ips.iter().any(|ip| {
            effective_allowance(ip, provider) > 0
                && !matches!(
                    state_of(ip, provider),
                    ReputationState::Probing | ReputationState::Blocked
                )
        })
    })
}

/// The IP's own hourly cap before any route throttle: its trickle when Probing.
fn own_cap(spec: &FleetSpec, pool: &str, ip: &IpSpec, provider: usize) -> i64 {
    let p: usize = pool.trim_start_matches('p').parse().unwrap();
    let per_hour = spec.pools[p].per_hour;
    let scaled = (per_hour * i64::from(effective_allowance(ip, provider)) + 99) / 100;
    match ip.pairs[provider].as_ref().and_then(|p| p.warm_cap) {
        Some(warm) => scaled.min(warm),
        None => scaled,
    }
}

fn ip_spec_of<'a>(spec: &'a FleetSpec, pool: &str, ip: &str) -> &'a IpSpec {
    let p: usize = pool.trim_start_matches('p').parse().unwrap();
    let i: usize = ip.rsplit('.').next().unwrap().parse::<usize>().unwrap() - 1;
    &spec.pools[p].ips[i]
}

fn provider_index(route: &RouteResult) -> usize {
    PROVIDERS.iter().position(|p| *p == route.provider).unwrap()
}

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(256)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_blocked_pair_is_never_a_target_of_its_provider(spec in fleet_spec()) {
        let (pools, routes) = build(&spec);
        let table = compile(&pools, &routes, now());
        for route in &table.routes {
            let provider = provider_index(route);
            for target in &route.targets {
                let ip = ip_spec_of(&spec, &target.pool, &target.ip);
                prop_assert_ne!(target.state, ReputationState::Blocked);
                prop_assert!(effective_allowance(ip, provider) > 0, "{} sends for {} with no allowance", target.ip, route.key);
            }
        }
    }

    #[test]
    fn blocking_one_pair_changes_only_that_providers_routes(
        spec in fleet_spec(),
        pick in any::<prop::sample::Index>(),
        provider in 0..PROVIDERS.len(),
    ) {
        let (mut pools, routes) = build(&spec);
        let before = compile(&pools, &routes, now());
        let all: Vec<(usize, String)> = spec.pools.iter().enumerate()
            .flat_map(|(p, ps)| (0..ps.ips.len()).map(move |i| (p, address(p, i))))
            .collect();
        let (p, ip) = &all[pick.index(all.len())];
        set_pair(&mut pools[*p], ip, pair(PROVIDERS[provider], ReputationState::Blocked, 0, now()));
        let after = compile(&pools, &routes, now());
        for (b, a) in before.routes.iter().zip(&after.routes) {
            if a.provider == PROVIDERS[provider] {
                prop_assert!(a.target(&pool_name(*p), ip).is_none(), "{ip} still sends for {}", a.key);
            } else {
                prop_assert_eq!(b, a, "route of another provider changed");
            }
        }
    }

    #[test]
    fn weights_follow_allowance(spec in fleet_spec()) {
        let (pools, routes) = build(&spec);
        let table = compile(&pools, &routes, now());
        for route in &table.routes {
            let provider = provider_index(route);
            for target in &route.targets {
                let ip = ip_spec_of(&spec, &target.pool, &target.ip);
                prop_assert_eq!(target.weight, effective_allowance(ip, provider));
            }
            // Proportional shares: a higher allowance never gets a lower weight, nor
            // (without throttle or warm-up cap) a lower hourly cap.
            for a in &route.targets {
                for b in &route.targets {
                    let (ia, ib) = (ip_spec_of(&spec, &a.pool, &a.ip), ip_spec_of(&spec, &b.pool, &b.ip));
                    let (aa, ab) = (effective_allowance(ia, provider), effective_allowance(ib, provider));
                    prop_assert_eq!(i64::from(a.weight) * i64::from(ab), i64::from(b.weight) * i64::from(aa));
                    let uncapped = |ip: &IpSpec| ip.pairs[provider].as_ref().and_then(|p| p.warm_cap).is_none();
                    // Caps compare only within a pool: pools have their own rate limits.
                    let same_pool = a.pool == b.pool;
                    if same_pool && aa >= ab && route.throttle_per_hour.is_none() && uncapped(ia) && uncapped(ib) {
                        prop_assert!(a.hourly_cap >= b.hourly_cap, "{} has more allowance but a smaller cap", a.ip);
                    }
                }
            }
            if let Some(max) = route.throttle_per_hour {
                let total: i64 = route.targets.iter().map(|t| t.hourly_cap.unwrap()).sum();
                prop_assert!(total <= max, "{} sends {total} per hour over a throttle of {max}", route.key);
            }
            prop_assert!(route.targets.iter().all(|t| t.hourly_cap.unwrap() >= 1));
        }
    }

    #[test]
    fn no_allowed_ip_goes_to_fallback_pool_then_relay_then_defer(spec in fleet_spec()) {
        let (pools, routes) = build(&spec);
        let table = compile(&pools, &routes, now());
        for (r, route) in table.routes.iter().enumerate() {
            let index: usize = route.key.name.trim_start_matches('r').parse().unwrap();
            let rs = &spec.routes[index];
            let _ = r;
            let expected = if pool_carries(&spec, rs.pool, rs.provider) {
                (RouteMode::Primary, None)
            } else if rs.defer {
                (RouteMode::Defer, None)
            } else {
                let mut tried = BTreeSet::from([rs.pool]);
                let mut found = (RouteMode::Defer, None);
                for (i, f) in rs.fallbacks.iter().enumerate() {
                    match f {
                        FallbackSpec::Relay => { found = (RouteMode::Relay, Some(i)); break; }
                        FallbackSpec::Pool(p) => {
                            if tried.insert(*p) && pool_carries(&spec, *p, rs.provider) {
                                found = (RouteMode::FallbackPool, Some(i));
                                break;
                            }
                        }
                    }
                }
                found
            };
            prop_assert_eq!((route.mode, route.fallback_index), expected, "route {}", route.key);
            // Outside Primary, the only IPs of the route's own pool that send are
            // its Probing ones, keeping their trickle so the probe can complete.
            let own_pool = pool_name(rs.pool);
            let own_probing = |t: &RouteTarget| t.pool == own_pool && t.state == ReputationState::Probing;
            match route.mode {
                RouteMode::Primary => {
                    prop_assert!(!route.targets.is_empty());
                    prop_assert!(route.relay.is_none());
                    prop_assert!(route.targets.iter().all(|t| t.pool == own_pool));
                }
                RouteMode::FallbackPool => {
                    prop_assert!(!route.targets.is_empty());
                    prop_assert!(route.relay.is_none());
                    let serving = route.serving_pool.clone().unwrap();
                    prop_assert!(route.targets.iter().all(|t| t.pool == serving || own_probing(t)), "route {}", route.key);
                }
                RouteMode::Relay => {
                    prop_assert!(route.targets.iter().all(own_probing), "route {}", route.key);
                    prop_assert_eq!(route.relay.as_ref().map(|r| r.address()), Some("relay.example:587".to_string()));
                }
                RouteMode::Defer => {
                    prop_assert!(route.targets.iter().all(own_probing), "route {}", route.key);
                    prop_assert!(route.relay.is_none());
                }
            }
            if route.mode != RouteMode::Primary {
                // Every Probing IP of the own pool that may send keeps its trickle
                // (unless a route throttle leaves it no share).
                if let (Some(pool), None) = (spec.pools.get(rs.pool), route.throttle_per_hour) {
                    for (i, ip) in pool.ips.iter().enumerate() {
                        if state_of(ip, rs.provider) == ReputationState::Probing && effective_allowance(ip, rs.provider) > 0 {
                            prop_assert!(route.target(&own_pool, &address(rs.pool, i)).is_some(), "probing {} lost its trickle on {}", address(rs.pool, i), route.key);
                        }
                    }
                }
            }
            for target in &route.targets {
                prop_assert_ne!(target.state, ReputationState::Blocked);
                if target.state == ReputationState::Probing {
                    let ip = ip_spec_of(&spec, &target.pool, &target.ip);
                    let cap = own_cap(&spec, &target.pool, ip, rs.provider);
                    prop_assert!(target.hourly_cap.unwrap() <= cap, "probing {} sends {:?} over its trickle of {cap}", target.ip, target.hourly_cap);
                }
            }
        }
    }

    #[test]
    fn the_same_fleet_in_any_order_gives_the_same_bytes(
        spec in fleet_spec(),
        seed in any::<u64>(),
    ) {
        let (pools, routes) = build(&spec);
        let reference = json::render(&compile(&pools, &routes, now()));
        prop_assert_eq!(&reference, &json::render(&compile(&pools, &routes, now())));
        let mut shuffled_pools = pools.clone();
        let mut shuffled_routes = routes.clone();
        shuffle(&mut shuffled_pools, seed);
        shuffle(&mut shuffled_routes, seed.rotate_left(17));
        for pool in &mut shuffled_pools {
            if let Some(status) = &mut pool.status {
                shuffle(&mut status.ips, seed ^ 0x9e37_79b9);
                for ip in &mut status.ips {
                    shuffle(&mut ip.reputation, seed ^ 0x85eb_ca6b);
                }
            }
        }
        prop_assert_eq!(reference, json::render(&compile(&shuffled_pools, &shuffled_routes, now())));
    }

    #[test]
    fn incremental_updates_equal_a_full_recompile(
        spec in fleet_spec(),
        changes in prop::collection::vec((any::<prop::sample::Index>(), 0..PROVIDERS.len(), pair_spec(), prop::bool::weighted(0.2)), 1..8),
    ) {
        let (mut pools, routes) = build(&spec);
        let mut compiler = RouteCompiler::new(&pools, &routes, now());
        let all: Vec<(usize, String)> = spec.pools.iter().enumerate()
            .flat_map(|(p, ps)| (0..ps.ips.len()).map(move |i| (p, address(p, i))))
            .collect();
        for (pick, provider, change, whole_pool) in changes {
            let (p, ip) = &all[pick.index(all.len())];
            let before = compiler.table();
            let mut recorded = pair(PROVIDERS[provider], change.state, change.allowance, now());
            recorded.hourly_cap = change.warm_cap;
            set_pair(&mut pools[*p], ip, recorded);
            let changed = if whole_pool {
                pools[*p].spec.rate_limits.per_hour = pools[*p].spec.rate_limits.per_hour % 4000 + 1;
                compiler.update_pool(&pools[*p], now()).unwrap()
            } else {
                let status = pools[*p].status.as_ref().unwrap().ips.iter().find(|s| &s.address == ip).unwrap().clone();
                compiler.set_ip_status(&ObjectKey::new(NAMESPACE, pool_name(*p)), &status, now()).unwrap()
            };
            let full = compile(&pools, &routes, now());
            prop_assert_eq!(&compiler.table(), &full);
            let really_changed: Vec<&ObjectKey> = before.routes.iter().zip(&full.routes)
                .filter(|(b, a)| b != a).map(|(_, a)| &a.key).collect();
            let reported: Vec<&ObjectKey> = changed.iter().map(|r| &r.key).collect();
            prop_assert_eq!(reported, really_changed);
        }
    }
}

/// A small deterministic shuffle (Fisher-Yates over a xorshift sequence).
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed | 1;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = usize::try_from(state % (i as u64 + 1)).unwrap();
        items.swap(i, j);
    }
}
