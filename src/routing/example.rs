//! Ready-made fleets: the incident fleet of INCIDENT.md (for demos, docs and the
//! Postfix check) and a large synthetic fleet (for the compiler benchmark), plus
//! small builders for the API objects.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{
    DomainRoute, DomainRouteSpec, DomainRouteStatus, Fallback, IpBinding, IpStatus, LearnedDomain,
    NoHealthyIpPolicy, PoolIp, ProviderReputation, RateLimits, Relay, ReplicaRange,
    ReputationSettings, ReputationState, RouteMatch, SecretKeyRef, SenderPool, SenderPoolSpec,
    SenderPoolStatus, Throttle, WarmupSchedule,
};

/// A reputation pair as the engine records it, with `since` = `now`.
pub fn pair(
    provider: &str,
    state: ReputationState,
    allowance_percent: i32,
    now: Timestamp,
) -> ProviderReputation {
    ProviderReputation {
        provider: provider.to_string(),
        state,
        since: Time(now),
        reason: match state {
            ReputationState::Blocked => "ConclusiveBlockReply",
            ReputationState::Throttled => "RateLimitedReplies",
            ReputationState::Warming => "WarmupSchedule",
            ReputationState::Probing => "HoldDownElapsed",
            ReputationState::Recovering => "CleanProbes",
            ReputationState::Healthy => "CleanDeliveries",
        }
        .to_string(),
        last_evidence: None,
        allowance_percent,
        hourly_cap: None,
        overridden_by: None,
        hold_down_seconds: None,
        block_count: i32::from(state == ReputationState::Blocked),
        next_step_at: None,
        recovery_step: None,
        throttle_step: None,
        paused_until: None,
        probe_successes: 0,
        window: Vec::new(),
        dnsbl_claims: Vec::new(),
        complaint_rate: None,
    }
}

/// A pool with the given IPs, default settings and an empty status.
pub fn pool(namespace: &str, name: &str, addresses: &[String]) -> SenderPool {
    let spec = SenderPoolSpec {
        ips: addresses
            .iter()
            .map(|a| PoolIp {
                address: a.clone(),
                warmup_start: None,
                override_: None,
                node_selector: None,
                helo_name: None,
            })
            .collect(),
        replicas_per_ip: ReplicaRange::default(),
        template: PodTemplateSpec::default(),
        ip_binding: IpBinding::default(),
        intake: Default::default(),
        rate_limits: RateLimits::default(),
        warmup: WarmupSchedule::default(),
        reputation: ReputationSettings::default(),
        connections: Default::default(),
        queue: Default::default(),
        classifier_rules: None,
    };
    let mut pool = SenderPool::new(name, spec);
    pool.metadata.namespace = Some(namespace.to_string());
    pool.status = Some(SenderPoolStatus {
        ips: addresses.iter().map(IpStatus::new).collect(),
        ip_count: i32::try_from(addresses.len()).unwrap_or(i32::MAX),
        ..SenderPoolStatus::default()
    });
    pool
}

/// Records `pair` for `address` in the pool's status (replacing the provider's old pair).
pub fn set_pair(pool: &mut SenderPool, address: &str, pair: ProviderReputation) {
    let status = pool.status.get_or_insert_with(SenderPoolStatus::default);
    let index = match status.ips.iter().position(|s| s.address == address) {
        Some(i) => i,
        None => {
            status.ips.push(IpStatus::new(address));
            status.ips.len() - 1
        }
    };
    let ip = &mut status.ips[index];
    ip.reputation.retain(|r| r.provider != pair.provider);
    ip.reputation.push(pair);
    ip.reputation.sort_by(|a, b| a.provider.cmp(&b.provider));
}

/// A route of `provider` over `pool` with no fallback.
pub fn route(
    namespace: &str,
    name: &str,
    provider: &str,
    match_: RouteMatch,
    pool: &str,
) -> DomainRoute {
    let mut route = DomainRoute::new(
        name,
        DomainRouteSpec {
            provider: provider.to_string(),
            match_,
            pool: pool.to_string(),
            fallback: Vec::new(),
            throttle: None,
            connections: None,
            when_no_healthy_ip: NoHealthyIpPolicy::Fallback,
        },
    );
    route.metadata.namespace = Some(namespace.to_string());
    route
}

pub fn match_domains(domains: &[&str]) -> RouteMatch {
    RouteMatch {
        domains: Some(domains.iter().map(|d| d.to_string()).collect()),
        ..RouteMatch::default()
    }
}

pub fn match_mx_suffixes(suffixes: &[&str]) -> RouteMatch {
    RouteMatch {
        mx_host_suffixes: Some(suffixes.iter().map(|d| d.to_string()).collect()),
        ..RouteMatch::default()
    }
}

pub fn match_default() -> RouteMatch {
    RouteMatch {
        default: Some(true),
        ..RouteMatch::default()
    }
}

pub fn fallback_pool(name: &str) -> Fallback {
    Fallback {
        pool: Some(name.to_string()),
        relay: None,
    }
}

pub fn fallback_relay(host: &str, port: i32, secret: Option<&str>) -> Fallback {
    Fallback {
        pool: None,
        relay: Some(Relay {
            host: host.to_string(),
            port,
            credentials_secret: secret.map(|s| SecretKeyRef {
                name: s.to_string(),
            }),
        }),
    }
}

/// The consumer Microsoft domains INCIDENT.md names (the fixture's route for them
/// is kept apart from the Microsoft 365 route, which matches by MX host).
const INCIDENT_CONSUMER_DOMAINS: [&str; 16] = [
    "hotmail.com",
    "hotmail.co.jp",
    "hotmail.co.uk",
    "hotmail.fr",
    "hotmail.it",
    "hotmail.nl",
    "hotmail.co.th",
    "outlook.com",
    "outlook.jp",
    "outlook.kr",
    "outlook.sa",
    "live.com",
    "live.jp",
    "live.cn",
    "live.com.sg",
    "msn.com",
];

/// Well-known recipient domains per provider, as the Postfix renderer takes
/// them for routes that match by MX host.
pub fn known_domains() -> BTreeMap<String, Vec<String>> {
    crate::reputation::providers::well_known_domains()
}

/// The incident fleet in namespace `mail`, at the moment Microsoft blocked one IP:
/// - pool `bulk`: 203.0.113.10-17; 203.0.113.13 is Blocked by microsoft only
///   (5.7.606), 203.0.113.15 is Throttled by google (50 %);
/// - pool `reserve`: 198.51.100.20-21, warming (39 per hour);
/// - routes `microsoft` (consumer domains; fallback pool `reserve`, then a relay),
///   `microsoft-365` (by MX host, with learned company domains; throttled to
///   2000 per hour), `google`, `yahoo-japan` (a declared provider; defers when no
///   IP may send) and `default`.
pub fn incident_fleet(now: Timestamp) -> (Vec<SenderPool>, Vec<DomainRoute>) {
    let ns = "mail";
    let bulk_ips: Vec<String> = (10..18).map(|i| format!("203.0.113.{i}")).collect();
    let mut bulk = pool(ns, "bulk", &bulk_ips);
    let mut blocked = pair("microsoft", ReputationState::Blocked, 0, now);
    blocked.last_evidence =
        Some("550 5.7.606 Access denied, banned sending IP [203.0.113.13]".to_string());
    blocked.hold_down_seconds = Some(3600);
    set_pair(&mut bulk, "203.0.113.13", blocked);
    set_pair(
        &mut bulk,
        "203.0.113.13",
        pair("google", ReputationState::Healthy, 100, now),
    );
    set_pair(
        &mut bulk,
        "203.0.113.15",
        pair("google", ReputationState::Throttled, 50, now),
    );

    let reserve_ips: Vec<String> = (20..22).map(|i| format!("198.51.100.{i}")).collect();
    let mut reserve = pool(ns, "reserve", &reserve_ips);
    for ip in &reserve_ips {
        for provider in ["microsoft", "google"] {
            let mut warming = pair(provider, ReputationState::Warming, 100, now);
            warming.hourly_cap = Some(39);
            set_pair(&mut reserve, ip, warming);
        }
    }

    let mut microsoft = route(
        ns,
        "microsoft",
        "microsoft",
        match_domains(&INCIDENT_CONSUMER_DOMAINS),
        "bulk",
    );
    microsoft.spec.fallback = vec![
        fallback_pool("reserve"),
        fallback_relay("smtp.relay.example", 587, Some("relay-credentials")),
    ];

    let mut microsoft_365 = route(
        ns,
        "microsoft-365",
        "microsoft",
        match_mx_suffixes(&[".mail.protection.outlook.com"]),
        "bulk",
    );
    microsoft_365.spec.throttle = Some(Throttle { max_per_hour: 2000 });
    microsoft_365.spec.fallback = vec![fallback_pool("reserve")];
    let learned = [
        "acclaim.jp",
        "albirex2006.com",
        "hirabayashi.com",
        "infoseek.jp",
        "morishow.net",
        "taswork.com",
    ];
    microsoft_365.status = Some(DomainRouteStatus {
        learned_domains: learned
            .iter()
            .map(|d| LearnedDomain {
                domain: d.to_string(),
                mx_host: format!("{}.mail.protection.outlook.com", d.replace('.', "-")),
                last_seen: Time(now),
                expires_at: Time(now + SignedDuration::from_hours(24 * 7)),
            })
            .collect(),
        ..DomainRouteStatus::default()
    });

    let google = route(
        ns,
        "google",
        "google",
        match_domains(&["gmail.com", "googlemail.com"]),
        "bulk",
    );
    let mut yahoo_japan = route(
        ns,
        "yahoo-japan",
        "yahoo-japan",
        match_domains(&["yahoo.co.jp"]),
        "bulk",
    );
    yahoo_japan.spec.when_no_healthy_ip = NoHealthyIpPolicy::Defer;
    let default = route(ns, "default", "other", match_default(), "bulk");

    (
        vec![bulk, reserve],
        vec![microsoft, microsoft_365, google, yahoo_japan, default],
    )
}

/// The providers the synthetic fleet uses, in turn.
pub const SYNTHETIC_PROVIDERS: [&str; 5] = ["microsoft", "google", "yahoo", "apple", "other"];

/// A large deterministic fleet in namespace `bench`: `pools` pools of
/// `ips_per_pool` IPs (10.P.x.y), `routes` routes that share `domains` listed
/// domains, each route on pool `i % pools` with the next pool and a relay as
/// fallbacks. Every IP has a pair per provider; about one in seven is Throttled
/// and one in thirteen Blocked, spread over providers.
pub fn synthetic_fleet(
    pools: usize,
    ips_per_pool: usize,
    routes: usize,
    domains: usize,
    now: Timestamp,
) -> (Vec<SenderPool>, Vec<DomainRoute>) {
    let ns = "bench";
    let mut out_pools = Vec::with_capacity(pools);
    for p in 0..pools {
        let addresses: Vec<String> = (0..ips_per_pool)
            .map(|i| format!("10.{}.{}.{}", p % 256, i / 250, i % 250 + 1))
            .collect();
        let mut pool = pool(ns, &format!("pool-{p}"), &addresses);
        for (i, address) in addresses.iter().enumerate() {
            for (k, provider) in SYNTHETIC_PROVIDERS.iter().enumerate() {
                let n = p * ips_per_pool + i + k;
                let reputation = if n.is_multiple_of(13) {
                    pair(provider, ReputationState::Blocked, 0, now)
                } else if n.is_multiple_of(7) {
                    pair(provider, ReputationState::Throttled, 50, now)
                } else {
                    pair(provider, ReputationState::Healthy, 100, now)
                };
                set_pair(&mut pool, address, reputation);
            }
        }
        out_pools.push(pool);
    }
    let per_route = domains.div_ceil(routes.max(1));
    let mut out_routes = Vec::with_capacity(routes);
    for r in 0..routes {
        let listed: Vec<String> = (0..per_route)
            .map(|d| format!("d{d}.r{r}.example"))
            .collect();
        let listed: Vec<&str> = listed.iter().map(String::as_str).collect();
        let provider = SYNTHETIC_PROVIDERS[r % SYNTHETIC_PROVIDERS.len()];
        let mut route = route(
            ns,
            &format!("route-{r}"),
            provider,
            match_domains(&listed),
            &format!("pool-{}", r % pools.max(1)),
        );
        route.spec.fallback = vec![
            fallback_pool(&format!("pool-{}", (r + 1) % pools.max(1))),
            fallback_relay("relay.bench.example", 587, None),
        ];
        if r % 5 == 0 {
            route.spec.throttle = Some(Throttle {
                max_per_hour: 50_000,
            });
        }
        out_routes.push(route);
    }
    (out_pools, out_routes)
}
