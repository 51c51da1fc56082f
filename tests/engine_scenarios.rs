//! Scenarios and properties of the reputation engine, driven only through its
//! public API: the incident of INCIDENT.md replayed, restart safety through JSON
//! and YAML, idempotent ticks, wake-up times, and random signal sequences.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use mailfleet::api::{
    DnsblResult, DnsblZone, FeedVerdict, ManualOverride, PoolIp, ReputationState, SenderPoolSpec,
    SenderPoolStatus,
};
use mailfleet::reputation::engine::{
    is_allowed_edge, next_wakeup, observe, pair_view, tick, ConclusiveReply, Feedback, PairView,
    Reason, Signal, Transition,
};
use proptest::prelude::*;
use ReputationState::*;

const BAD_IP: &str = "203.0.113.10";
const MS_BAN: &str =
    "550 5.7.606 Access denied, banned sending IP [203.0.113.10]. To request removal from this list please visit https://sender.office.com/";

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn plus(t: Timestamp, seconds: i64) -> Timestamp {
    t + SignedDuration::from_secs(seconds)
}

fn pool_ip(address: &str) -> PoolIp {
    PoolIp {
        address: address.to_string(),
        warmup_start: None,
        override_: None,
        node_selector: None,
        helo_name: None,
    }
}

fn incident_spec() -> SenderPoolSpec {
    SenderPoolSpec {
        ips: [
            "203.0.113.10",
            "203.0.113.11",
            "203.0.113.12",
            "203.0.113.13",
        ]
        .map(pool_ip)
        .to_vec(),
        replicas_per_ip: Default::default(),
        template: PodTemplateSpec::default(),
        ip_binding: Default::default(),
        intake: Default::default(),
        rate_limits: Default::default(),
        warmup: Default::default(),
        reputation: Default::default(),
        connections: Default::default(),
        queue: Default::default(),
        classifier_rules: None,
    }
}

fn providers() -> Vec<String> {
    ["microsoft", "google", "yahoo"].map(String::from).to_vec()
}

fn delivered(provider: &str, n: i64) -> Signal {
    Signal::Feedback(Feedback {
        provider: provider.into(),
        attempts: n,
        delivered: n,
        ..Feedback::default()
    })
}

fn ms_ban(at: Timestamp) -> Signal {
    Signal::Feedback(Feedback {
        provider: "microsoft".into(),
        attempts: 40,
        delivered: 0,
        ip_blocklisted: 40,
        ip_rate_limited: 0,
        conclusive: vec![ConclusiveReply {
            reply: MS_BAN.into(),
            named_ip: Some(BAD_IP.parse().unwrap()),
            at,
            pause_seconds: None,
        }],
    })
}

/// One call of the engine, as a script step.
#[derive(Clone, Debug)]
enum Call {
    Observe(&'static str, Signal),
    Tick,
}

/// Runs a script against a fresh status; `restart` is applied to the status
/// between steps (identity, or a serialisation round trip).
fn play(
    spec: &SenderPoolSpec,
    script: &[(Timestamp, Call)],
    restart: impl Fn(SenderPoolStatus) -> SenderPoolStatus,
) -> (SenderPoolStatus, Vec<Transition>) {
    let mut status = SenderPoolStatus::default();
    let mut all = Vec::new();
    for (now, call) in script {
        let out = match call {
            Call::Observe(ip, signal) => {
                observe(spec, &mut status, ip, signal.clone(), &providers(), *now).unwrap()
            }
            Call::Tick => tick(spec, &mut status, &providers(), *now).unwrap(),
        };
        all.extend(out);
        status = restart(status);
    }
    (status, all)
}

fn through_json(status: SenderPoolStatus) -> SenderPoolStatus {
    serde_json::from_str(&serde_json::to_string(&status).unwrap()).unwrap()
}

fn through_yaml(status: SenderPoolStatus) -> SenderPoolStatus {
    serde_saphyr::from_str(&serde_saphyr::to_string(&status).unwrap()).unwrap()
}

/// The incident of 2021-11-05, but with mailfleet in place: Microsoft bans one
/// IP, which is taken out of Microsoft's route only, rests, is probed, ramps back.
fn incident_script() -> Vec<(Timestamp, Call)> {
    let start = ts("2021-11-05T08:00:00Z");
    let ban_at = ts("2021-11-05T08:10:00Z");
    let probe_at = ts("2021-11-05T09:10:00Z");
    let mut script = vec![
        (start, Call::Tick),
        (
            plus(start, 60),
            Call::Observe(BAD_IP, delivered("microsoft", 300)),
        ),
        (
            plus(start, 60),
            Call::Observe(BAD_IP, delivered("google", 300)),
        ),
        (ban_at, Call::Observe(BAD_IP, ms_ban(ban_at))),
        (
            plus(ban_at, 60),
            Call::Observe(BAD_IP, delivered("google", 300)),
        ),
        (plus(ban_at, 1800), Call::Tick),
        (probe_at, Call::Tick),
    ];
    for minute in 1..=4 {
        script.push((
            plus(probe_at, minute * 60),
            Call::Observe(BAD_IP, delivered("microsoft", 5)),
        ));
    }
    let recovering_at = plus(probe_at, 240);
    for step in 1..=4 {
        script.push((plus(recovering_at, step * 1800), Call::Tick));
    }
    script
}

#[test]
fn the_incident_is_contained_to_one_pair_and_recovers() {
    let spec = incident_spec();
    let (status, timeline) = play(&spec, &incident_script(), |s| s);
    let moves: Vec<(Option<ReputationState>, ReputationState, Reason, &str)> = timeline
        .iter()
        .map(|t| (t.from, t.to, t.reason, t.at.to_string().leak() as &str))
        .collect();
    assert_eq!(
        moves,
        vec![
            (
                Some(Healthy),
                Blocked,
                Reason::ConclusiveBlockReply,
                "2021-11-05T08:10:00Z"
            ),
            (
                Some(Blocked),
                Probing,
                Reason::HoldDownElapsed,
                "2021-11-05T09:10:00Z"
            ),
            (
                Some(Probing),
                Recovering,
                Reason::ProbeClean,
                "2021-11-05T09:14:00Z"
            ),
            (
                Some(Recovering),
                Recovering,
                Reason::RecoveryStep,
                "2021-11-05T09:44:00Z"
            ),
            (
                Some(Recovering),
                Recovering,
                Reason::RecoveryStep,
                "2021-11-05T10:14:00Z"
            ),
            (
                Some(Recovering),
                Recovering,
                Reason::RecoveryStep,
                "2021-11-05T10:44:00Z"
            ),
            (
                Some(Recovering),
                Healthy,
                Reason::Recovered,
                "2021-11-05T11:14:00Z"
            ),
        ]
    );
    assert!(timeline
        .iter()
        .all(|t| t.ip == BAD_IP && t.provider == "microsoft"));
    assert_eq!(timeline[0].evidence.as_deref(), Some(MS_BAN));
    let allowances: Vec<i32> = timeline.iter().map(|t| t.allowance_percent).collect();
    assert_eq!(allowances, vec![0, 2, 10, 25, 50, 75, 100]);
    assert_eq!(pair_view(&status, BAD_IP, "microsoft"), PairView::HEALTHY);
    let google = status.ips[0].pair("google").unwrap();
    assert_eq!(
        (google.state, google.reason.as_str()),
        (Healthy, "FirstSeen"),
        "google never moved"
    );
    assert_eq!(status.ips[0].pair("microsoft").unwrap().block_count, 1);
    // The timeline is what events and the demo print.
    let json = serde_json::to_value(&timeline[0]).unwrap();
    assert_eq!(json["reason"], "ConclusiveBlockReply");
    assert_eq!(json["to"], "Blocked");
    assert_eq!(json["at"], "2021-11-05T08:10:00Z");
}

#[test]
fn while_blocked_the_pool_counts_show_it() {
    let spec = incident_spec();
    let script = incident_script();
    let (status, _) = play(&spec, &script[..4], |s| s);
    assert_eq!(
        (status.ip_count, status.healthy_ips, status.blocked_pairs),
        (4, 3, 1)
    );
    assert_eq!(
        pair_view(&status, BAD_IP, "microsoft"),
        PairView {
            state: Blocked,
            allowance_percent: 0,
            hourly_cap: None
        }
    );
    assert_eq!(pair_view(&status, BAD_IP, "google"), PairView::HEALTHY);
    assert_eq!(
        pair_view(&status, "203.0.113.11", "microsoft"),
        PairView::HEALTHY
    );
}

#[test]
fn repeat_blocks_double_the_hold_down_until_the_cap() {
    let spec = incident_spec();
    let mut status = SenderPoolStatus::default();
    let mut now = ts("2021-11-05T08:10:00Z");
    let mut holds = Vec::new();
    for _ in 0..8 {
        observe(&spec, &mut status, BAD_IP, ms_ban(now), &providers(), now).unwrap();
        let pair = status.ips[0].pair("microsoft").unwrap();
        assert_eq!(pair.state, Blocked);
        let hold = pair.hold_down_seconds.unwrap();
        holds.push(hold);
        let end = plus(now, hold);
        assert_eq!(pair.next_step_at.as_ref().unwrap().0, end);
        assert!(tick(&spec, &mut status, &providers(), plus(end, -1))
            .unwrap()
            .is_empty());
        let out = tick(&spec, &mut status, &providers(), end).unwrap();
        assert_eq!(out[0].reason, Reason::HoldDownElapsed);
        now = plus(end, 120);
    }
    let hour = 3600;
    assert_eq!(
        holds,
        vec![
            hour,
            2 * hour,
            4 * hour,
            8 * hour,
            16 * hour,
            32 * hour,
            48 * hour,
            48 * hour
        ]
    );
}

#[test]
fn three_failures_are_not_fifty_samples() {
    let spec = incident_spec();
    let mut status = SenderPoolStatus::default();
    let now = ts("2021-11-05T08:10:00Z");
    let signal = Signal::Feedback(Feedback {
        provider: "google".into(),
        attempts: 3,
        ip_blocklisted: 3,
        ..Feedback::default()
    });
    assert!(
        observe(&spec, &mut status, BAD_IP, signal, &providers(), now)
            .unwrap()
            .is_empty()
    );
    assert_eq!(pair_view(&status, BAD_IP, "google").state, Healthy);
}

#[test]
fn a_dnsbl_error_answer_never_blocks() {
    let mut spec = incident_spec();
    spec.reputation.dnsbl.zones = vec![DnsblZone {
        zone: "zen.spamhaus.org".into(),
        listing_codes: vec![],
        error_codes: vec!["127.255.255.254".into()],
        providers: vec![],
    }];
    let mut status = SenderPoolStatus::default();
    let now = ts("2021-11-05T08:10:00Z");
    tick(&spec, &mut status, &providers(), now).unwrap();
    let before = serde_json::to_value(&status).unwrap();
    let answer = DnsblResult {
        zone: "zen.spamhaus.org".into(),
        listed: true,
        codes: vec!["127.255.255.254".into()],
        reason: None,
        error: Some("127.255.255.254: the query came through a public resolver".into()),
        checked_at: Time(now),
    };
    let out = observe(
        &spec,
        &mut status,
        BAD_IP,
        Signal::Dnsbl(answer),
        &providers(),
        now,
    )
    .unwrap();
    assert!(out.is_empty());
    for provider in providers() {
        assert_eq!(pair_view(&status, BAD_IP, &provider), PairView::HEALTHY);
    }
    assert_eq!(status.blocked_pairs, 0);
    let after = serde_json::to_value(&status).unwrap();
    assert_eq!(
        before["ips"][0]["reputation"],
        after["ips"][0]["reputation"]
    );
    assert_eq!(
        before["ips"][0]["healthyPairs"],
        after["ips"][0]["healthyPairs"]
    );
    assert!(!status.ips[0].dnsbl[0].listed);
}

#[test]
fn overrides_cap_but_never_raise() {
    let mut spec = incident_spec();
    spec.ips[1].override_ = Some(ManualOverride {
        allowance_percent: 20,
        providers: vec!["microsoft".into()],
        reason: "moving the Microsoft-bound bulk off this IP".into(),
    });
    let mut status = SenderPoolStatus::default();
    let now = ts("2021-11-05T08:10:00Z");
    let out = tick(&spec, &mut status, &providers(), now).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].ip.as_str(), out[0].reason),
        ("203.0.113.11", Reason::ManualOverride)
    );
    assert_eq!(
        pair_view(&status, "203.0.113.11", "microsoft").allowance_percent,
        20
    );
    assert_eq!(
        pair_view(&status, "203.0.113.11", "google").allowance_percent,
        100
    );
    // Throttled at 50 % stays below the 20 % cap... the lower of the two wins.
    let throttle = Signal::Feedback(Feedback {
        provider: "microsoft".into(),
        attempts: 100,
        delivered: 80,
        ip_rate_limited: 20,
        ..Feedback::default()
    });
    observe(
        &spec,
        &mut status,
        "203.0.113.11",
        throttle,
        &providers(),
        plus(now, 60),
    )
    .unwrap();
    assert_eq!(
        pair_view(&status, "203.0.113.11", "microsoft"),
        PairView {
            state: Throttled,
            allowance_percent: 20,
            hourly_cap: None
        }
    );
    spec.reputation.throttle.step_percents = vec![5];
    tick(&spec, &mut status, &providers(), plus(now, 120)).unwrap();
    assert_eq!(
        pair_view(&status, "203.0.113.11", "microsoft").allowance_percent,
        5
    );
}

#[test]
fn warm_up_runs_across_days_and_completes() {
    let mut spec = incident_spec();
    let start = ts("2021-11-01T00:00:00Z");
    spec.ips[3].warmup_start = Some(Time(start));
    let ip = "203.0.113.13";
    let mut status = SenderPoolStatus::default();
    let mut caps = Vec::new();
    let mut reasons = Vec::new();
    for day in 0..16 {
        let now = plus(start, day * 86_400 + 3600);
        for t in tick(&spec, &mut status, &providers(), now).unwrap() {
            if t.provider == "microsoft" {
                reasons.push(t.reason);
            }
        }
        caps.push(pair_view(&status, ip, "microsoft").hourly_cap);
    }
    let expected: Vec<Option<i64>> = [
        20, 28, 39, 55, 77, 108, 151, 211, 295, 413, 579, 810, 1000, 1587,
    ]
    .map(Some)
    .into_iter()
    .chain([None, None])
    .collect();
    assert_eq!(caps, expected);
    assert_eq!(reasons.first(), Some(&Reason::WarmupStarted));
    assert_eq!(
        reasons.iter().filter(|r| **r == Reason::WarmupStep).count(),
        13
    );
    assert_eq!(reasons.last(), Some(&Reason::WarmupComplete));
    assert_eq!(pair_view(&status, ip, "microsoft"), PairView::HEALTHY);
}

#[test]
fn a_restart_mid_incident_continues_exactly() {
    let spec = incident_spec();
    let script = incident_script();
    let (plain, plain_timeline) = play(&spec, &script, |s| s);
    let (json, json_timeline) = play(&spec, &script, through_json);
    let (yaml, yaml_timeline) = play(&spec, &script, |s| through_yaml(through_json(s)));
    let plain_text = serde_json::to_string(&plain).unwrap();
    assert_eq!(plain_text, serde_json::to_string(&json).unwrap());
    assert_eq!(plain_text, serde_json::to_string(&yaml).unwrap());
    assert_eq!(plain_timeline, json_timeline);
    assert_eq!(plain_timeline, yaml_timeline);
}

#[test]
fn ticking_twice_at_the_same_instant_changes_nothing() {
    let spec = incident_spec();
    let script = incident_script();
    let mut status = SenderPoolStatus::default();
    for (now, call) in &script {
        if let Call::Observe(ip, signal) = call {
            observe(&spec, &mut status, ip, signal.clone(), &providers(), *now).unwrap();
        }
        tick(&spec, &mut status, &providers(), *now).unwrap();
        let before = serde_json::to_string(&status).unwrap();
        assert!(tick(&spec, &mut status, &providers(), *now)
            .unwrap()
            .is_empty());
        assert_eq!(before, serde_json::to_string(&status).unwrap());
    }
}

#[test]
fn next_wakeup_is_exactly_when_tick_has_work() {
    let spec = incident_spec();
    let script = incident_script();
    let mut status = SenderPoolStatus::default();
    let mut checked = 0;
    for (now, call) in &script {
        if let Call::Observe(ip, signal) = call {
            observe(&spec, &mut status, ip, signal.clone(), &providers(), *now).unwrap();
        }
        tick(&spec, &mut status, &providers(), *now).unwrap();
        if let Some(wake) = next_wakeup(&spec, &status, *now) {
            assert!(wake > *now);
            let mut early = status.clone();
            assert!(tick(&spec, &mut early, &providers(), plus(wake, -1))
                .unwrap()
                .is_empty());
            let mut due = status.clone();
            assert!(!tick(&spec, &mut due, &providers(), wake)
                .unwrap()
                .is_empty());
            checked += 1;
        }
    }
    assert!(checked >= 6, "{checked}");
    assert_eq!(
        next_wakeup(&spec, &status, ts("2021-11-06T00:00:00Z")),
        None,
        "healthy again: nothing to wait for"
    );
}

// ---------------------------------------------------------------------------
// Properties over random sequences of signals, ticks and spec changes.

const IPS: [&str; 3] = ["192.0.2.1", "192.0.2.2", "2001:db8::7"];
const PROVIDERS: [&str; 3] = ["google", "microsoft", "yahoo"];
const ZONES: [&str; 2] = ["zen.example.org", "bl.example.net"];

fn t0() -> Timestamp {
    ts("2021-11-05T00:00:00Z")
}

fn property_spec() -> SenderPoolSpec {
    let mut spec = incident_spec();
    spec.ips = IPS.map(pool_ip).to_vec();
    spec.ips[1].warmup_start = Some(Time(plus(t0(), -86_400)));
    spec.warmup.hourly_caps = vec![20, 50, 50, 400];
    spec.rate_limits.per_provider = BTreeMap::from([("google".to_string(), 1000)]);
    let r = &mut spec.reputation;
    r.feedback.window_seconds = 300;
    r.feedback.min_samples = 10;
    r.hold_down_seconds = 600;
    r.max_hold_down_seconds = 2400;
    r.probe.successes_to_recover = 3;
    r.recovery.step_percents = vec![25, 50];
    r.recovery.step_seconds = 300;
    r.dnsbl.zones = vec![
        DnsblZone {
            zone: ZONES[0].into(),
            listing_codes: vec![],
            error_codes: vec![],
            providers: vec![],
        },
        DnsblZone {
            zone: ZONES[1].into(),
            listing_codes: vec![],
            error_codes: vec![],
            providers: vec!["yahoo".into()],
        },
    ];
    spec
}

#[derive(Clone, Debug)]
enum Op {
    Feedback {
        ip: usize,
        provider: usize,
        counts: [i64; 4],
        conclusive: usize,
        named: usize,
        reply_age: i64,
    },
    Dnsbl {
        ip: usize,
        zone: usize,
        listed: bool,
        error: bool,
    },
    Feed {
        ip: usize,
        provider: usize,
        blocked: bool,
    },
    Override {
        ip: usize,
        cap: Option<(i32, bool)>,
    },
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..3usize, 0..3usize, prop::array::uniform4(0..40i64), 0..3usize, 0..3usize, 0..900i64).prop_map(
            |(ip, provider, counts, conclusive, named, reply_age)| Op::Feedback { ip, provider, counts, conclusive, named, reply_age }
        ),
        1 => (0..3usize, 0..2usize, any::<bool>(), any::<bool>()).prop_map(|(ip, zone, listed, error)| Op::Dnsbl { ip, zone, listed, error }),
        1 => (0..3usize, 0..3usize, any::<bool>()).prop_map(|(ip, provider, blocked)| Op::Feed { ip, provider, blocked }),
        1 => (0..3usize, prop::option::of((0..=100i32, any::<bool>()))).prop_map(|(ip, cap)| Op::Override { ip, cap }),
        4 => Just(Op::Tick),
    ]
}

fn step() -> impl Strategy<Value = (i64, Op)> {
    (prop_oneof![4 => 0..900i64, 1 => 0..(2 * 86_400i64)], op())
}

fn signal(op: &Op, now: Timestamp) -> Option<(&'static str, Signal)> {
    Some(match op {
        Op::Feedback {
            ip,
            provider,
            counts,
            conclusive,
            named,
            reply_age,
        } => {
            let attempts = counts[0];
            let delivered = counts[1].min(attempts);
            let blocklisted = counts[2].min(attempts - delivered);
            let rate_limited = counts[3].min(attempts - delivered - blocklisted);
            let named_ip = match named {
                0 => None,
                1 => Some(IPS[*ip].parse().unwrap()),
                _ => Some(IPS[(ip + 1) % 3].parse().unwrap()),
            };
            let conclusive = (0..(*conclusive as i64).min(blocklisted))
                .map(|i| ConclusiveReply {
                    reply: format!("550 5.7.606 banned [{i}]"),
                    named_ip,
                    at: plus(now, -reply_age),
                    pause_seconds: None,
                })
                .collect();
            let feedback = Feedback {
                provider: PROVIDERS[*provider].into(),
                attempts,
                delivered,
                ip_blocklisted: blocklisted,
                ip_rate_limited: rate_limited,
                conclusive,
            };
            (IPS[*ip], Signal::Feedback(feedback))
        }
        Op::Dnsbl {
            ip,
            zone,
            listed,
            error,
        } => (
            IPS[*ip],
            Signal::Dnsbl(DnsblResult {
                zone: ZONES[*zone].into(),
                listed: *listed,
                codes: vec![],
                reason: None,
                error: error.then(|| "SERVFAIL".to_string()),
                checked_at: Time(now),
            }),
        ),
        Op::Feed {
            ip,
            provider,
            blocked,
        } => (
            IPS[*ip],
            Signal::Feed(FeedVerdict {
                feed: "snds".into(),
                provider: PROVIDERS[*provider].into(),
                blocked: *blocked,
                reason: None,
                checked_at: Time(now),
                scores: None,
            }),
        ),
        Op::Override { .. } | Op::Tick => return None,
    })
}

type PairKey = (String, String);

fn pairs(status: &SenderPoolStatus) -> BTreeMap<PairKey, mailfleet::api::ProviderReputation> {
    status
        .ips
        .iter()
        .flat_map(|ip| {
            ip.reputation
                .iter()
                .map(move |p| ((ip.address.clone(), p.provider.clone()), p.clone()))
        })
        .collect()
}

/// The invariants every call must keep; panics (so proptest shrinks) when one breaks.
fn check_call(
    before: &SenderPoolStatus,
    after: &SenderPoolStatus,
    out: &[Transition],
    now: Timestamp,
) {
    let old = pairs(before);
    let new = pairs(after);
    let mut last: BTreeMap<PairKey, Option<ReputationState>> = old
        .iter()
        .map(|(k, p)| (k.clone(), Some(p.state)))
        .collect();
    for t in out {
        assert!(
            is_allowed_edge(t.from, t.to, t.reason),
            "forbidden edge {t:?}"
        );
        assert!((0..=100).contains(&t.allowance_percent));
        let key = (t.ip.clone(), t.provider.clone());
        let known = last.get(&key).copied().flatten();
        assert_eq!(
            t.from, known,
            "transition does not start where the pair was: {t:?}"
        );
        last.insert(key, Some(t.to));
    }
    for (key, state) in &last {
        if let (Some(state), Some(pair)) = (state, new.get(key)) {
            assert_eq!(
                *state, pair.state,
                "{key:?}: transitions do not end in the stored state"
            );
        }
    }
    for (key, pair) in &new {
        assert!(
            (0..=100).contains(&pair.allowance_percent),
            "{key:?} {pair:?}"
        );
        if pair.state == Blocked {
            assert_eq!(pair.allowance_percent, 0, "{key:?}");
        }
        assert!(
            pair.window.len() <= 16,
            "{key:?} has {} buckets",
            pair.window.len()
        );
        if let Some(old_pair) = old.get(key) {
            let holding = old_pair.state == Blocked
                && old_pair
                    .next_step_at
                    .as_ref()
                    .is_some_and(|end| now < end.0);
            if holding {
                assert_eq!(
                    pair.state, Blocked,
                    "{key:?} left Blocked before its hold-down ended"
                );
            }
            if pair.state == old_pair.state
                && !out
                    .iter()
                    .any(|t| t.ip == key.0 && t.provider == key.1 && t.from != Some(t.to))
            {
                assert_eq!(
                    pair.since, old_pair.since,
                    "{key:?}: since moved without a state change"
                );
            }
        }
    }
    let order: Vec<std::net::IpAddr> = after
        .ips
        .iter()
        .map(|i| i.address.parse().unwrap())
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "ips not sorted: {order:?}"
    );
    for ip in &after.ips {
        assert!(ip
            .reputation
            .windows(2)
            .all(|w| w[0].provider < w[1].provider));
    }
    let blocked = new.values().filter(|p| p.state == Blocked).count() as i32;
    assert_eq!(after.blocked_pairs, blocked);
}

/// Plays random steps and returns the final status as JSON and every transition.
fn run(
    steps: &[(i64, Op)],
    restart: &dyn Fn(SenderPoolStatus) -> SenderPoolStatus,
) -> (String, Vec<Transition>) {
    let mut spec = property_spec();
    let known = providers();
    let mut status = SenderPoolStatus::default();
    let mut now = t0();
    let mut all = Vec::new();
    for (advance, op) in steps {
        now = plus(now, *advance);
        let before = status.clone();
        let out = match (op, signal(op, now)) {
            (_, Some((ip, signal))) => {
                observe(&spec, &mut status, ip, signal, &known, now).unwrap()
            }
            (Op::Override { ip, cap }, None) => {
                spec.ips[*ip].override_ = cap.map(|(percent, every)| ManualOverride {
                    allowance_percent: percent,
                    providers: if every {
                        vec![]
                    } else {
                        vec!["microsoft".into()]
                    },
                    reason: format!("cap {percent}"),
                });
                Vec::new()
            }
            (_, None) => {
                let out = tick(&spec, &mut status, &known, now).unwrap();
                let settled = status.clone();
                assert!(
                    tick(&spec, &mut status, &known, now).unwrap().is_empty(),
                    "second tick moved something"
                );
                assert_eq!(settled, status, "second tick changed the status");
                if let Some(wake) = next_wakeup(&spec, &status, now) {
                    assert!(wake > now, "a tick just ran, yet {wake} <= {now} is due");
                    let mut early = status.clone();
                    assert!(
                        tick(&spec, &mut early, &known, plus(wake, -1))
                            .unwrap()
                            .is_empty(),
                        "moved before the wake-up"
                    );
                }
                out
            }
        };
        check_call(&before, &status, &out, now);
        all.extend(out);
        status = restart(status);
    }
    (serde_json::to_string(&status).unwrap(), all)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_sequences_keep_the_invariants(steps in prop::collection::vec(step(), 1..60)) {
        run(&steps, &|s| s);
    }
}

proptest! {
    // Each case plays the sequence four times, with a YAML round trip after every
    // call in one of them: fewer cases keep the suite fast.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_sequences_are_deterministic_and_restart_safe(steps in prop::collection::vec(step(), 1..40)) {
        let plain = run(&steps, &|s| s);
        prop_assert_eq!(&plain, &run(&steps, &|s| s));
        prop_assert_eq!(&plain, &run(&steps, &through_json));
        prop_assert_eq!(&plain, &run(&steps, &through_yaml));
    }
}
