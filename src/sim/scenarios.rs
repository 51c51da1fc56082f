//! The named scenarios: the incident of INCIDENT.md and the situations users
//! ask about. Each names its fleet, traffic, providers, events and runs; the
//! expected outcome of each is pinned by tests/simulate_scenarios.rs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{DnsblZone, DomainRoute, NoHealthyIpPolicy, SenderPool, WarmupSchedule};
use crate::routing::example::{
    fallback_pool, fallback_relay, match_default, match_domains, match_mx_suffixes, pool, route,
};

use super::provider::{Delisting, Penalty, ProviderModel, Relist};
use super::recipients::press_release_mix;
use super::traffic::TrafficShape;
use super::watch::at;
use super::{
    CalibrationTarget, HumanAction, Incident, Mode, RunSetup, Scenario, SimError, WorldEvent,
};

/// Every scenario, with one line on what it shows.
pub const SCENARIOS: [(&str, &str); 8] = [
    (
        "seed-2021-11",
        "the incident of INCIDENT.md: one IP on 2 of 8 senders blocked by Microsoft for 14 days",
    ),
    (
        "flapping-provider",
        "Microsoft blocks an IP, delists it, and blocks it again when its volume returns too fast",
    ),
    (
        "all-ips-blocked",
        "Microsoft blocks every IP of the pool at once: fallback pool, relay, or deferral",
    ),
    (
        "new-ip-warmup",
        "a new IP joins the pool and follows the warm-up schedule",
    ),
    (
        "gmail-rate-limit",
        "Gmail rate-limits IPs that send too fast during press-release bursts",
    ),
    (
        "dnsbl-listing",
        "Spamhaus lists one IP for six hours: every provider's route avoids it",
    ),
    (
        "yahoo-tss04",
        "Yahoo defers IPs that send too fast ([TSS04]) and holds them back for hours",
    ),
    (
        "ten-day-defer",
        "Microsoft blocks every IP of the pool for 10 days and the route defers: the queue lifetime decides what bounces",
    ),
];

/// The incident's figures (INCIDENT.md).
pub const INCIDENT_MESSAGES: u64 = 32_557_767;
pub const INCIDENT_FAILED: u64 = 75_243;
/// Percent of all mail bound for Microsoft that reproduces the incident's
/// failures (found by calibration, see docs/SIMULATOR.md).
pub const INCIDENT_MICROSOFT_PERCENT: f64 = 0.945;
/// Share of the Microsoft-bound mail that goes to Microsoft 365 tenant domains.
pub const INCIDENT_TENANT_SHARE: f64 = 0.45;

const NAMESPACE: &str = "mail";
/// The incident's IP on 2 of the 8 senders.
pub const BLOCKED_IP: &str = "203.0.113.13";
const BULK_IPS: [&str; 7] = [
    "203.0.113.10",
    "203.0.113.11",
    "203.0.113.12",
    "203.0.113.13",
    "203.0.113.14",
    "203.0.113.15",
    "203.0.113.16",
];
const RESERVE_IPS: [&str; 2] = ["198.51.100.20", "198.51.100.21"];
const NEW_IP: &str = "203.0.113.17";
/// 2021-11-05T00:00:00+09:00, the first day of the incident's report.
const INCIDENT_START: i64 = 1_636_038_000;

/// Unix seconds of day `day` (0 = the start), `hour:minute` senders' local time.
fn local(day: i64, hour: i64, minute: i64) -> i64 {
    INCIDENT_START + day * 86_400 + hour * 3600 + minute * 60
}

/// Builds the named scenario.
pub fn scenario(name: &str) -> Result<Scenario, SimError> {
    match name {
        "seed-2021-11" => Ok(incident()),
        "flapping-provider" => Ok(flapping_provider()),
        "all-ips-blocked" => Ok(all_ips_blocked()),
        "new-ip-warmup" => Ok(new_ip_warmup()),
        "gmail-rate-limit" => Ok(gmail_rate_limit()),
        "dnsbl-listing" => Ok(dnsbl_listing()),
        "yahoo-tss04" => Ok(yahoo_tss04()),
        "ten-day-defer" => Ok(ten_day_defer()),
        _ => Err(SimError::UnknownScenario {
            name: name.to_string(),
            known: SCENARIOS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// How the Microsoft route behaves when no IP of the pool may send.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MicrosoftFallback {
    /// The reserve pool, then the relay (the example fleet's choice).
    ReserveThenRelay,
    RelayOnly,
    Defer,
}

#[derive(Clone)]
struct FleetOptions {
    microsoft: MicrosoftFallback,
    new_ip: Option<i64>,
    dnsbl: bool,
    google_per_hour: Option<i64>,
    yahoo_per_hour: Option<i64>,
    /// `reputation.throttle.stepPercents` of the bulk pool, when not the default.
    throttle_steps: Option<Vec<i32>>,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            microsoft: MicrosoftFallback::ReserveThenRelay,
            new_ip: None,
            dnsbl: false,
            google_per_hour: None,
            yahoo_per_hour: None,
            throttle_steps: None,
        }
    }
}

/// The bulk pool (the incident's senders), a small reserve pool, and one route
/// per provider, each falling back to the reserve pool and then a relay.
fn fleet(options: &FleetOptions) -> (Vec<SenderPool>, Vec<DomainRoute>) {
    let mut bulk_ips: Vec<String> = BULK_IPS.iter().map(|s| s.to_string()).collect();
    if options.new_ip.is_some() {
        bulk_ips.push(NEW_IP.to_string());
    }
    let mut bulk = pool(NAMESPACE, "bulk", &bulk_ips);
    // Limits well above the normal volume of one IP: they matter when an
    // allowance or a warm-up cap lowers them.
    bulk.spec.rate_limits.per_hour = 500_000;
    bulk.spec
        .rate_limits
        .per_provider
        .insert("microsoft".to_string(), 6_000);
    if let Some(limit) = options.google_per_hour {
        bulk.spec
            .rate_limits
            .per_provider
            .insert("google".to_string(), limit);
    }
    if let Some(limit) = options.yahoo_per_hour {
        bulk.spec
            .rate_limits
            .per_provider
            .insert("yahoo".to_string(), limit);
    }
    if let Some(steps) = &options.throttle_steps {
        bulk.spec.reputation.throttle.step_percents = steps.clone();
    }
    if let Some(start) = options.new_ip {
        if let Some(ip) = bulk.spec.ips.iter_mut().find(|ip| ip.address == NEW_IP) {
            ip.warmup_start = Some(Time(at(start)));
        }
        bulk.spec.warmup = WarmupSchedule::default();
    }
    if options.dnsbl {
        bulk.spec.reputation.dnsbl.zones.push(DnsblZone {
            zone: "zen.spamhaus.org".to_string(),
            listing_codes: ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.9"]
                .map(String::from)
                .to_vec(),
            error_codes: ["127.255.255.252", "127.255.255.254", "127.255.255.255"]
                .map(String::from)
                .to_vec(),
            providers: Vec::new(),
        });
        bulk.spec.reputation.dnsbl.interval_seconds = Some(300);
    }
    let mut reserve = pool(NAMESPACE, "reserve", &RESERVE_IPS.map(String::from));
    reserve.spec.rate_limits.per_hour = 20_000;

    let relay = || fallback_relay("smtp.relay.example.net", 587, Some("relay-credentials"));
    let standard = |name: &str, provider: &str, m| {
        let mut r = route(NAMESPACE, name, provider, m, "bulk");
        r.spec.fallback = vec![fallback_pool("reserve"), relay()];
        r
    };
    let mut microsoft = standard(
        "microsoft",
        "microsoft",
        match_mx_suffixes(&[
            ".olc.protection.outlook.com",
            ".mail.protection.outlook.com",
            ".mx.microsoft",
        ]),
    );
    match options.microsoft {
        MicrosoftFallback::ReserveThenRelay => {}
        MicrosoftFallback::RelayOnly => microsoft.spec.fallback = vec![relay()],
        MicrosoftFallback::Defer => {
            microsoft.spec.fallback = Vec::new();
            microsoft.spec.when_no_healthy_ip = NoHealthyIpPolicy::Defer;
        }
    }
    let routes = vec![
        microsoft,
        standard(
            "google",
            "google",
            match_mx_suffixes(&[".google.com", ".googlemail.com"]),
        ),
        standard("yahoo", "yahoo", match_mx_suffixes(&[".yahoodns.net"])),
        standard(
            "yahoo-japan",
            "yahoo-japan",
            match_domains(&["yahoo.co.jp", "ybb.ne.jp"]),
        ),
        standard("apple", "apple", match_mx_suffixes(&[".icloud.com"])),
        standard("default", "other", match_default()),
    ];
    (vec![bulk, reserve], routes)
}

/// The incident's 8 senders: one pod per IP, two on the IP Microsoft blocks.
fn incident_pods(with_new_ip: bool) -> Vec<(String, u32)> {
    let mut pods: Vec<(String, u32)> = BULK_IPS
        .iter()
        .map(|ip| (ip.to_string(), if *ip == BLOCKED_IP { 2 } else { 1 }))
        .collect();
    if with_new_ip {
        pods.push((NEW_IP.to_string(), 1));
    }
    pods
}

fn baseline(
    description: &str,
    pods: Vec<(String, u32)>,
    people: Vec<HumanAction>,
    options: &FleetOptions,
) -> RunSetup {
    let (pools, routes) = fleet(options);
    RunSetup {
        name: "baseline".to_string(),
        description: description.to_string(),
        mode: Mode::Baseline,
        pools,
        routes,
        pods,
        people,
        rules: None,
    }
}

fn mailfleet(name: &str, description: &str, options: &FleetOptions) -> RunSetup {
    let (pools, routes) = fleet(options);
    RunSetup {
        name: name.to_string(),
        description: description.to_string(),
        mode: Mode::Mailfleet,
        pools,
        routes,
        pods: Vec::new(),
        people: Vec::new(),
        rules: None,
    }
}

fn incident() -> Scenario {
    let options = FleetOptions::default();
    let people = vec![
        // 11-15 12:00 a customer asks why its press release never arrived.
        HumanAction::Notice {
            at: local(10, 12, 0),
        },
        // 11-18 16:00-17:30 the high-volume Microsoft-bound mail moves to another system.
        HumanAction::MoveAway {
            from: local(13, 16, 0),
            until: local(13, 17, 30),
            ip: BLOCKED_IP.to_string(),
            provider: "microsoft".to_string(),
            share: 0.95,
        },
    ];
    Scenario {
        name: "seed-2021-11".to_string(),
        title: "INCIDENT.md replayed: 32,557,767 messages in 14 days over 8 senders; Microsoft blocks 203.0.113.13 (2 of the 8) on 11-05 08:10".to_string(),
        start: INCIDENT_START,
        submit_seconds: 14 * 86_400,
        drain_seconds: 5 * 86_400,
        slice_seconds: 60,
        volume: INCIDENT_MESSAGES,
        traffic: TrafficShape::press_releases_japan(),
        destinations: press_release_mix(INCIDENT_MICROSOFT_PERCENT, INCIDENT_TENANT_SHARE),
        providers: Vec::new(),
        events: vec![WorldEvent::ListIp {
            at: local(0, 8, 10),
            ip: BLOCKED_IP.to_string(),
            provider: "microsoft".to_string(),
        }],
        incident: Some(Incident {
            at: Some(local(0, 8, 10)),
            pairs: vec![(BLOCKED_IP.to_string(), "microsoft".to_string())],
        }),
        new_ips: Vec::new(),
        runs: vec![
            baseline(
                "random spread over 8 senders, nobody watching; a customer complains on day 10, Microsoft-bound mail is moved off the IP on day 13",
                incident_pods(false),
                people,
                &options,
            ),
            mailfleet(
                "mailfleet",
                "every reply reported to the reputation engine; routes follow the compiled table; block replies deferred",
                &options,
            ),
        ],
        calibration: Some(CalibrationTarget {
            reported_messages: INCIDENT_MESSAGES,
            reported_failed: INCIDENT_FAILED,
            microsoft_share_percent: INCIDENT_MICROSOFT_PERCENT,
            tenant_share_of_microsoft: INCIDENT_TENANT_SHARE,
        }),
    }
}

/// A smaller fleet-wide volume with a large Microsoft share, so that one IP's
/// Microsoft traffic is worth watching minute by minute.
fn short_scenario(
    name: &str,
    title: &str,
    days: i64,
    volume: u64,
    microsoft_percent: f64,
) -> Scenario {
    Scenario {
        name: name.to_string(),
        title: title.to_string(),
        start: INCIDENT_START,
        submit_seconds: days * 86_400,
        drain_seconds: 2 * 86_400,
        slice_seconds: 60,
        volume,
        traffic: TrafficShape::press_releases_japan(),
        destinations: press_release_mix(microsoft_percent, INCIDENT_TENANT_SHARE),
        providers: Vec::new(),
        events: Vec::new(),
        incident: None,
        new_ips: Vec::new(),
        runs: Vec::new(),
        calibration: None,
    }
}

fn flapping_provider() -> Scenario {
    let options = FleetOptions::default();
    let mut s = short_scenario(
        "flapping-provider",
        "Microsoft blocks 203.0.113.13 at 10:00 on day 1, delists it after 2 h of low volume, and lists it again (twice at most) when its volume climbs back within a day",
        4,
        3_000_000,
        10.0,
    );
    let mut microsoft = ProviderModel::standard("microsoft");
    microsoft.delisting = Delisting {
        low_share: 0.12,
        quiet_seconds: 2 * 3600,
        relist: Some(Relist {
            within_seconds: 86_400,
            above_share: 0.25,
            max_times: 2,
        }),
    };
    s.providers = vec![microsoft];
    let block_at = local(0, 10, 0);
    s.events = vec![WorldEvent::ListIp {
        at: block_at,
        ip: BLOCKED_IP.to_string(),
        provider: "microsoft".to_string(),
    }];
    s.incident = Some(Incident {
        at: Some(block_at),
        pairs: vec![(BLOCKED_IP.to_string(), "microsoft".to_string())],
    });
    s.runs = vec![
        baseline("random spread, nobody watching", incident_pods(false), Vec::new(), &options),
        mailfleet("mailfleet", "the engine blocks, probes and ramps the IP back up; a repeat block doubles its hold-down", &options),
    ];
    s
}

fn all_ips_blocked() -> Scenario {
    let mut s = short_scenario(
        "all-ips-blocked",
        "Microsoft blocks all 7 IPs of the bulk pool at 10:00 on day 1 (a range listing)",
        2,
        2_000_000,
        10.0,
    );
    let block_at = local(0, 10, 0);
    s.events = BULK_IPS
        .iter()
        .map(|ip| WorldEvent::ListIp {
            at: block_at,
            ip: ip.to_string(),
            provider: "microsoft".to_string(),
        })
        .collect();
    s.incident = Some(Incident {
        at: Some(block_at),
        pairs: BULK_IPS
            .iter()
            .map(|ip| (ip.to_string(), "microsoft".to_string()))
            .collect(),
    });
    let with = |microsoft| FleetOptions {
        microsoft,
        ..FleetOptions::default()
    };
    s.runs = vec![
        baseline(
            "random spread, nobody watching",
            incident_pods(false),
            Vec::new(),
            &FleetOptions::default(),
        ),
        mailfleet(
            "mailfleet",
            "the Microsoft route falls back to the reserve pool",
            &with(MicrosoftFallback::ReserveThenRelay),
        ),
        mailfleet(
            "mailfleet-relay",
            "the Microsoft route falls back to an external relay",
            &with(MicrosoftFallback::RelayOnly),
        ),
        mailfleet(
            "mailfleet-defer",
            "the Microsoft route defers (whenNoHealthyIp: Defer) until an IP may send",
            &with(MicrosoftFallback::Defer),
        ),
    ];
    s
}

/// Postfix's own `maximal_queue_lifetime`.
const POSTFIX_DEFAULT_LIFETIME_SECONDS: i64 = 5 * 86_400;

fn ten_day_defer() -> Scenario {
    let mut s = short_scenario(
        "ten-day-defer",
        "Microsoft blocks all 7 IPs of the bulk pool at 10:00 on day 1 and keeps them listed for 10 days; the Microsoft route has no fallback and defers",
        12,
        600_000,
        10.0,
    );
    s.slice_seconds = 300;
    s.drain_seconds = 3 * 86_400;
    let mut microsoft = ProviderModel::standard("microsoft");
    // Listed for 10 days whatever the IPs do (probes included).
    microsoft.delisting = Delisting {
        low_share: 1.0,
        quiet_seconds: 10 * 86_400,
        relist: None,
    };
    s.providers = vec![microsoft];
    let block_at = local(0, 10, 0);
    s.events = BULK_IPS
        .iter()
        .map(|ip| WorldEvent::ListIp {
            at: block_at,
            ip: ip.to_string(),
            provider: "microsoft".to_string(),
        })
        .collect();
    s.incident = Some(Incident {
        at: Some(block_at),
        pairs: BULK_IPS
            .iter()
            .map(|ip| (ip.to_string(), "microsoft".to_string()))
            .collect(),
    });
    let defer = FleetOptions {
        microsoft: MicrosoftFallback::Defer,
        ..FleetOptions::default()
    };
    let mut postfix_lifetime = mailfleet(
        "mailfleet-postfix-lifetime",
        "the same routes with Postfix's default maximal_queue_lifetime (5 days) instead of the rendered one: what default Postfix bounces",
        &defer,
    );
    for pool in &mut postfix_lifetime.pools {
        pool.spec.queue.maximal_lifetime_seconds = Some(POSTFIX_DEFAULT_LIFETIME_SECONDS);
    }
    s.runs = vec![
        mailfleet(
            "mailfleet",
            "the Microsoft route defers for 10 days; the senders keep the mail for the rendered lifetime (14 days by default)",
            &defer,
        ),
        postfix_lifetime,
    ];
    s
}

fn new_ip_warmup() -> Scenario {
    let mut s = short_scenario(
        "new-ip-warmup",
        "203.0.113.17 joins the bulk pool at the start and warms up (20, 28, 39 ... messages per hour per provider); providers defer a new IP that sends more than 1.5 times that",
        3,
        3_000_000,
        5.0,
    );
    let options = FleetOptions {
        new_ip: Some(s.start),
        ..FleetOptions::default()
    };
    s.new_ips = vec![(NEW_IP.to_string(), s.start)];
    s.incident = Some(Incident {
        at: None,
        pairs: [
            "microsoft",
            "google",
            "yahoo",
            "yahoo-japan",
            "apple",
            "other",
        ]
        .iter()
        .map(|p| (NEW_IP.to_string(), p.to_string()))
        .collect(),
    });
    let schedule: Vec<f64> = WarmupSchedule::default()
        .hourly_caps
        .iter()
        .map(|c| *c as f64 * 1.5)
        .collect();
    s.providers = [
        "microsoft",
        "google",
        "yahoo",
        "yahoo-japan",
        "apple",
        "other",
    ]
    .iter()
    .map(|name| ProviderModel {
        new_ip_hourly_limits: schedule.clone(),
        ..ProviderModel::standard(name)
    })
    .collect();
    s.runs = vec![
        baseline(
            "random spread: the new IP gets its full share from the first hour",
            incident_pods(true),
            Vec::new(),
            &options,
        ),
        mailfleet(
            "mailfleet",
            "the new IP's routes are capped by the warm-up schedule; the rest goes to warm IPs",
            &options,
        ),
    ];
    s
}

fn gmail_rate_limit() -> Scenario {
    let mut s = short_scenario(
        "gmail-rate-limit",
        "Gmail accepts 2,500 messages per hour per IP and, once an IP goes over, holds it to half that for 45 minutes (421 4.7.28)",
        2,
        1_000_000,
        1.0,
    );
    s.destinations = super::recipients::press_release_mix(1.0, INCIDENT_TENANT_SHARE);
    for group in &mut s.destinations {
        if group.label.starts_with("google") {
            group.share_percent = 30.0;
        } else if group.label.starts_with("other") {
            group.share_percent -= 12.0;
        }
    }
    let mut google = ProviderModel::standard("google");
    google.per_ip_hourly_limit = Some(2_500.0);
    google.rate_limit_penalty = Some(Penalty {
        seconds: 45 * 60,
        factor: 0.5,
    });
    s.providers = vec![google];
    s.incident = Some(Incident {
        at: None,
        pairs: BULK_IPS
            .iter()
            .map(|ip| (ip.to_string(), "google".to_string()))
            .collect(),
    });
    let options = FleetOptions {
        google_per_hour: Some(4_000),
        ..FleetOptions::default()
    };
    s.runs = vec![
        baseline(
            "random spread: rate-limited mail is retried on Postfix's schedule",
            incident_pods(false),
            Vec::new(),
            &options,
        ),
        mailfleet(
            "mailfleet",
            "rate-limited IPs step down (50, 25, 10 % of their Google allowance) while the limit holds, and climb back a step per clean 15 minutes",
            &options,
        ),
        mailfleet(
            "fixed-half",
            "the throttle of earlier versions: a fixed 50 % that returns to full volume after one clean window",
            &FleetOptions {
                throttle_steps: Some(vec![50]),
                ..options.clone()
            },
        ),
    ];
    s
}

/// Yahoo's `[TSS04]`: an IP over its hourly limit is deferred, and then held
/// to a trickle for four hours whatever it sends. The builtin rule pauses the
/// (IP, yahoo) pair for four hours; the `throttle-only` run replaces that rule
/// by one without `pause`, which is what a rate limit got before.
fn yahoo_tss04() -> Scenario {
    let mut s = short_scenario(
        "yahoo-tss04",
        "Yahoo accepts 2,500 messages per hour per IP; an IP that goes over gets 421 4.7.0 [TSS04] and is held to 2 % of that for 4 hours",
        2,
        1_000_000,
        1.0,
    );
    s.destinations = super::recipients::press_release_mix(1.0, INCIDENT_TENANT_SHARE);
    for group in &mut s.destinations {
        if group.label == "yahoo" {
            group.share_percent += 24.4;
        } else if group.label.starts_with("other") {
            group.share_percent -= 24.4;
        }
    }
    let mut yahoo = ProviderModel::standard("yahoo");
    yahoo.per_ip_hourly_limit = Some(2_500.0);
    yahoo.rate_limit_penalty = Some(Penalty {
        seconds: 4 * 3600,
        factor: 0.02,
    });
    s.providers = vec![yahoo];
    s.incident = Some(Incident {
        at: None,
        pairs: BULK_IPS
            .iter()
            .map(|ip| (ip.to_string(), "yahoo".to_string()))
            .collect(),
    });
    let options = FleetOptions {
        yahoo_per_hour: Some(4_000),
        ..FleetOptions::default()
    };
    let mut throttle_only = mailfleet(
        "throttle-only",
        "[TSS04] read as a plain rate limit: the pairs step down to 10 %, still over Yahoo's hold, and keep being deferred",
        &options,
    );
    throttle_only.rules = Some(
        "rules:\n  - id: yahoo-tss04\n    provider: yahoo\n    text: [\"[tss04]\"]\n    category: ip_rate_limited\n"
            .to_string(),
    );
    s.runs = vec![
        baseline(
            "random spread: deferred mail is retried on Postfix's schedule",
            incident_pods(false),
            Vec::new(),
            &options,
        ),
        mailfleet(
            "mailfleet",
            "[TSS04] pauses the (IP, yahoo) pair for 4 hours, then it probes and recovers in steps",
            &options,
        ),
        throttle_only,
    ];
    s
}

fn dnsbl_listing() -> Scenario {
    let mut s = short_scenario(
        "dnsbl-listing",
        "zen.spamhaus.org lists 203.0.113.14 from 10:02 to 16:02 on day 1; Yahoo, Apple and most company servers refuse listed IPs",
        2,
        2_000_000,
        5.0,
    );
    let ip = "203.0.113.14";
    let zone = "zen.spamhaus.org";
    s.events = vec![
        WorldEvent::Dnsbl {
            at: local(0, 10, 2),
            ip: ip.to_string(),
            zone: zone.to_string(),
            listed: true,
        },
        WorldEvent::Dnsbl {
            at: local(0, 16, 2),
            ip: ip.to_string(),
            zone: zone.to_string(),
            listed: false,
        },
    ];
    s.incident = Some(Incident {
        at: Some(local(0, 10, 2)),
        pairs: [
            "microsoft",
            "google",
            "yahoo",
            "yahoo-japan",
            "apple",
            "other",
        ]
        .iter()
        .map(|p| (ip.to_string(), p.to_string()))
        .collect(),
    });
    let options = FleetOptions {
        dnsbl: true,
        ..FleetOptions::default()
    };
    s.runs = vec![
        baseline("random spread, nobody watching", incident_pods(false), Vec::new(), &options),
        mailfleet("mailfleet", "the DNSBL probe (every 5 minutes) blocks the IP for every provider until the list drops it", &options),
    ];
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_builds_and_unknown_names_are_refused() {
        for (name, _) in SCENARIOS {
            let s = scenario(name).unwrap();
            assert_eq!(s.name, name);
            assert!(!s.runs.is_empty());
            let total: f64 = s.destinations.iter().map(|d| d.share_percent).sum();
            assert!(
                (total - 100.0).abs() < 1e-9,
                "{name}: shares add up to {total}"
            );
        }
        let err = scenario("nope").unwrap_err().to_string();
        assert!(
            err.contains("seed-2021-11") && err.contains("dnsbl-listing"),
            "{err}"
        );
    }

    #[test]
    fn the_incident_starts_at_midnight_in_japan() {
        assert_eq!(at(INCIDENT_START).to_string(), "2021-11-04T15:00:00Z");
        assert_eq!(at(local(0, 8, 10)).to_string(), "2021-11-04T23:10:00Z");
    }
}
