//! Rule-by-rule tests of the engine through its public functions.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::api::{
    DnsblResult, DnsblZone, FeedVerdict, ManualOverride, PoolIp, ReputationState, SenderPoolSpec,
    SenderPoolStatus,
};
use ReputationState::*;

const IP: &str = "203.0.113.10";
const OTHER_IP: &str = "203.0.113.11";
const BAN: &str = "550 5.7.606 Access denied, banned sending IP [203.0.113.10]";

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn t0() -> Timestamp {
    ts("2021-11-05T08:10:00Z")
}

fn at(seconds: i64) -> Timestamp {
    super::clock::add_seconds(t0(), seconds)
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

fn spec() -> SenderPoolSpec {
    SenderPoolSpec {
        ips: vec![pool_ip(IP), pool_ip(OTHER_IP)],
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

fn known() -> Vec<String> {
    vec!["google".to_string(), "microsoft".to_string()]
}

fn feedback(
    provider: &str,
    attempts: i64,
    delivered: i64,
    blocklisted: i64,
    rate_limited: i64,
) -> Signal {
    Signal::Feedback(Feedback {
        provider: provider.to_string(),
        attempts,
        delivered,
        ip_blocklisted: blocklisted,
        ip_rate_limited: rate_limited,
        conclusive: Vec::new(),
    })
}

fn ban(provider: &str, named: Option<&str>, when: Timestamp) -> Signal {
    Signal::Feedback(Feedback {
        provider: provider.to_string(),
        attempts: 1,
        delivered: 0,
        ip_blocklisted: 1,
        ip_rate_limited: 0,
        conclusive: vec![ConclusiveReply {
            reply: BAN.to_string(),
            named_ip: named.map(|n| n.parse().unwrap()),
            at: when,
            pause_seconds: None,
        }],
    })
}

struct Fleet {
    spec: SenderPoolSpec,
    status: SenderPoolStatus,
}

impl Fleet {
    fn new(spec: SenderPoolSpec) -> Self {
        let mut fleet = Fleet {
            spec,
            status: SenderPoolStatus::default(),
        };
        fleet.tick(t0());
        fleet
    }

    fn observe(&mut self, ip: &str, signal: Signal, now: Timestamp) -> Vec<Transition> {
        observe(&self.spec, &mut self.status, ip, signal, &known(), now).unwrap()
    }

    fn tick(&mut self, now: Timestamp) -> Vec<Transition> {
        tick(&self.spec, &mut self.status, &known(), now).unwrap()
    }

    fn view(&self, provider: &str) -> PairView {
        pair_view(&self.status, IP, provider)
    }

    fn pair(&self, provider: &str) -> &crate::api::ProviderReputation {
        let ip = self.status.ips.iter().find(|s| s.address == IP).unwrap();
        ip.pair(provider).unwrap()
    }

    /// Blocks microsoft by a conclusive reply and runs the hold-down out.
    fn blocked_then_probing(&mut self, block_at: Timestamp) -> Timestamp {
        self.observe(IP, ban("microsoft", Some(IP), block_at), block_at);
        let end = self.pair("microsoft").next_step_at.clone().unwrap().0;
        self.tick(end);
        assert_eq!(self.view("microsoft").state, Probing);
        end
    }
}

fn reasons(transitions: &[Transition]) -> Vec<(Option<ReputationState>, ReputationState, Reason)> {
    transitions
        .iter()
        .map(|t| (t.from, t.to, t.reason))
        .collect()
}

#[test]
fn a_conclusive_reply_blocks_at_once_and_touches_no_other_provider() {
    let mut fleet = Fleet::new(spec());
    fleet.observe(IP, feedback("google", 100, 100, 0, 0), t0());
    let before_google = fleet.pair("google").clone();
    let out = fleet.observe(IP, ban("microsoft", Some(IP), t0()), at(60));
    assert_eq!(
        reasons(&out),
        vec![(None, Blocked, Reason::ConclusiveBlockReply)]
    );
    assert_eq!(out[0].evidence.as_deref(), Some(BAN));
    assert_eq!(out[0].allowance_percent, 0);
    let pair = fleet.pair("microsoft");
    assert_eq!(
        (pair.state, pair.allowance_percent, pair.block_count),
        (Blocked, 0, 1)
    );
    assert_eq!(pair.hold_down_seconds, Some(3600));
    assert_eq!(pair.next_step_at.as_ref().unwrap().0, at(60 + 3600));
    assert_eq!(pair.last_evidence.as_deref(), Some(BAN));
    assert_eq!(fleet.pair("google"), &before_google);
    assert_eq!(fleet.status.blocked_pairs, 1);
    assert_eq!(
        fleet.status.healthy_ips, 1,
        "only the other IP is healthy everywhere"
    );
}

#[test]
fn a_reply_naming_no_ip_is_conclusive_but_one_naming_another_ip_is_not() {
    let mut fleet = Fleet::new(spec());
    let out = fleet.observe(IP, ban("microsoft", None, t0()), t0());
    assert_eq!(out.len(), 1);
    assert_eq!(fleet.view("microsoft").state, Blocked);

    let mut fleet = Fleet::new(spec());
    let mut other = ban("microsoft", Some(OTHER_IP), t0());
    if let Signal::Feedback(f) = &mut other {
        f.conclusive[0].reply = BAN.replace(IP, OTHER_IP);
    }
    let out = fleet.observe(IP, other, t0());
    assert!(out.is_empty(), "{out:?}");
    let pair = fleet.pair("microsoft");
    assert_eq!(pair.state, Healthy);
    assert_eq!(
        pair.window[0].ip_blocklisted, 0,
        "a ban of another IP says nothing about this one"
    );
}

#[test]
fn ambiguous_refusals_need_min_samples_then_block_over_the_threshold() {
    let mut fleet = Fleet::new(spec());
    assert!(fleet
        .observe(IP, feedback("microsoft", 3, 0, 3, 0), t0())
        .is_empty());
    assert_eq!(
        fleet.view("microsoft").state,
        Healthy,
        "3 of 3 is below min_samples 50"
    );
    // 46 more attempts, 6 refused: 49 attempts, still not judged.
    assert!(fleet
        .observe(IP, feedback("microsoft", 46, 40, 6, 0), at(60))
        .is_empty());
    // One more refused attempt: 50 attempts, 10 refused = 20 % -> Blocked.
    let out = fleet.observe(IP, feedback("microsoft", 1, 0, 1, 0), at(120));
    assert_eq!(
        reasons(&out),
        vec![(Some(Healthy), Blocked, Reason::BlockRateOverThreshold)]
    );
    let evidence = out[0].evidence.clone().unwrap();
    assert!(
        evidence.contains("10 of 50 attempts") && evidence.contains("threshold 20 %"),
        "{evidence}"
    );
    assert!(
        fleet.pair("microsoft").window.is_empty(),
        "the window starts afresh in a new state"
    );
}

#[test]
fn old_refusals_leave_the_window() {
    let mut fleet = Fleet::new(spec());
    fleet.observe(IP, feedback("microsoft", 40, 30, 10, 0), t0());
    // At +900 s the first bucket (08:10-08:11) still overlaps the window: 50 samples, 20 % -> Blocked.
    let mut overlapping = Fleet {
        spec: fleet.spec.clone(),
        status: fleet.status.clone(),
    };
    let out = overlapping.observe(IP, feedback("microsoft", 10, 10, 0, 0), at(900));
    assert_eq!(
        reasons(&out),
        vec![(Some(Healthy), Blocked, Reason::BlockRateOverThreshold)]
    );
    // A minute later it has left: 10 new clean attempts are not enough samples.
    let out = fleet.observe(IP, feedback("microsoft", 10, 10, 0, 0), at(960));
    assert!(out.is_empty());
    let totals: i64 = fleet
        .pair("microsoft")
        .window
        .iter()
        .map(|b| b.attempts)
        .sum();
    assert_eq!(totals, 10);
}

#[test]
fn rate_limits_throttle_and_clear_with_hysteresis() {
    let mut fleet = Fleet::new(spec());
    let out = fleet.observe(IP, feedback("microsoft", 100, 90, 0, 10), t0());
    assert_eq!(reasons(&out), vec![(None, Throttled, Reason::RateLimited)]);
    assert_eq!(fleet.view("microsoft").allowance_percent, 50);
    // 6 % is under the threshold but not under half of it: still Throttled.
    assert!(fleet
        .observe(IP, feedback("microsoft", 100, 94, 0, 6), at(60))
        .is_empty());
    assert_eq!(fleet.view("microsoft").state, Throttled);
    // The window now moves on: 960 s later only clean traffic is in it.
    let out = fleet.observe(IP, feedback("microsoft", 100, 96, 0, 4), at(1020));
    assert_eq!(
        reasons(&out),
        vec![(Some(Throttled), Healthy, Reason::WindowClean)]
    );
    assert_eq!(fleet.view("microsoft").allowance_percent, 100);
}

#[test]
fn a_throttled_pair_over_the_block_threshold_is_blocked() {
    let mut fleet = Fleet::new(spec());
    fleet.observe(IP, feedback("microsoft", 100, 80, 0, 20), t0());
    let out = fleet.observe(IP, feedback("microsoft", 50, 40, 10, 0), at(60));
    assert_eq!(
        reasons(&out),
        vec![(Some(Throttled), Blocked, Reason::BlockRateOverThreshold)]
    );
}

#[test]
fn a_blocked_pair_waits_out_its_hold_down_whatever_arrives() {
    let mut fleet = Fleet::new(spec());
    fleet.observe(IP, ban("microsoft", Some(IP), t0()), t0());
    assert!(fleet.tick(at(3599)).is_empty());
    assert!(fleet
        .observe(IP, ban("microsoft", Some(IP), at(100)), at(100))
        .is_empty());
    assert!(fleet
        .observe(IP, feedback("microsoft", 500, 500, 0, 0), at(200))
        .is_empty());
    let pair = fleet.pair("microsoft");
    assert_eq!(
        (pair.state, pair.block_count, pair.since.0),
        (Blocked, 1, t0())
    );
    let out = fleet.tick(at(3600));
    assert_eq!(
        reasons(&out),
        vec![(Some(Blocked), Probing, Reason::HoldDownElapsed)]
    );
    assert_eq!(fleet.view("microsoft").allowance_percent, 2);
}

#[test]
fn probing_needs_clean_successes_and_a_failure_starts_the_count_again() {
    let mut fleet = Fleet::new(spec());
    let probe_start = fleet.blocked_then_probing(t0());
    fleet.observe(
        IP,
        feedback("microsoft", 12, 12, 0, 0),
        super::clock::add_seconds(probe_start, 60),
    );
    assert_eq!(fleet.pair("microsoft").probe_successes, 12);
    fleet.observe(
        IP,
        feedback("microsoft", 3, 2, 0, 1),
        super::clock::add_seconds(probe_start, 120),
    );
    assert_eq!(fleet.pair("microsoft").probe_successes, 0);
    fleet.observe(
        IP,
        feedback("microsoft", 19, 19, 0, 0),
        super::clock::add_seconds(probe_start, 180),
    );
    assert_eq!(fleet.view("microsoft").state, Probing);
    let out = fleet.observe(
        IP,
        feedback("microsoft", 1, 1, 0, 0),
        super::clock::add_seconds(probe_start, 240),
    );
    assert_eq!(
        reasons(&out),
        vec![(Some(Probing), Recovering, Reason::ProbeClean)]
    );
    assert_eq!(fleet.view("microsoft").allowance_percent, 10);
}

#[test]
fn a_ban_reply_older_than_the_probe_is_stale() {
    let mut fleet = Fleet::new(spec());
    let probe_start = fleet.blocked_then_probing(t0());
    let out = fleet.observe(
        IP,
        ban("microsoft", Some(IP), at(10)),
        super::clock::add_seconds(probe_start, 30),
    );
    assert!(out.is_empty(), "{out:?}");
    let fresh = super::clock::add_seconds(probe_start, 40);
    let out = fleet.observe(IP, ban("microsoft", Some(IP), fresh), fresh);
    assert_eq!(
        reasons(&out),
        vec![(Some(Probing), Blocked, Reason::ConclusiveBlockReply)]
    );
    assert_eq!(
        fleet.pair("microsoft").hold_down_seconds,
        Some(7200),
        "a block while probing is a repeat"
    );
}

#[test]
fn recovery_climbs_step_by_step_and_catches_up_missed_ticks() {
    let mut fleet = Fleet::new(spec());
    let probe_start = fleet.blocked_then_probing(t0());
    let recovering_at = super::clock::add_seconds(probe_start, 60);
    fleet.observe(IP, feedback("microsoft", 20, 20, 0, 0), recovering_at);
    let out = fleet.tick(super::clock::add_seconds(recovering_at, 1800));
    assert_eq!(
        reasons(&out),
        vec![(Some(Recovering), Recovering, Reason::RecoveryStep)]
    );
    assert_eq!(fleet.view("microsoft").allowance_percent, 25);
    assert_eq!(
        fleet.pair("microsoft").since.0,
        recovering_at,
        "a step is not a state change"
    );
    // The operator was away for two hours: the remaining steps happen at their due times.
    let out = fleet.tick(super::clock::add_seconds(recovering_at, 4 * 1800 + 7200));
    assert_eq!(
        reasons(&out),
        vec![
            (Some(Recovering), Recovering, Reason::RecoveryStep),
            (Some(Recovering), Recovering, Reason::RecoveryStep),
            (Some(Recovering), Healthy, Reason::Recovered),
        ]
    );
    assert_eq!(
        out[2].at,
        super::clock::add_seconds(recovering_at, 4 * 1800)
    );
    let pair = fleet.pair("microsoft");
    assert_eq!(
        (
            pair.state,
            pair.allowance_percent,
            pair.next_step_at.clone()
        ),
        (Healthy, 100, None)
    );
}

#[test]
fn rate_limits_while_recovering_hold_the_step() {
    let mut fleet = Fleet::new(spec());
    let probe_start = fleet.blocked_then_probing(t0());
    let recovering_at = super::clock::add_seconds(probe_start, 60);
    fleet.observe(IP, feedback("microsoft", 20, 20, 0, 0), recovering_at);
    let later = super::clock::add_seconds(recovering_at, 1000);
    let out = fleet.observe(IP, feedback("microsoft", 100, 85, 0, 15), later);
    assert!(out.is_empty());
    assert_eq!(
        fleet.pair("microsoft").next_step_at.clone().unwrap().0,
        super::clock::add_seconds(later, 1800)
    );
    assert!(fleet
        .tick(super::clock::add_seconds(recovering_at, 1800))
        .is_empty());
}

#[test]
fn repeat_blocks_double_the_hold_down_up_to_the_cap() {
    let mut s = spec();
    s.reputation.max_hold_down_seconds = 4 * 3600;
    let mut fleet = Fleet::new(s);
    let mut now = t0();
    let mut holds = Vec::new();
    for _ in 0..4 {
        let probe_start = fleet.blocked_then_probing(now);
        holds.push(fleet.pair("microsoft").hold_down_seconds.unwrap());
        now = super::clock::add_seconds(probe_start, 60);
    }
    assert_eq!(holds, vec![3600, 7200, 14400, 14400]);
    assert_eq!(fleet.pair("microsoft").block_count, 4);
}

#[test]
fn a_long_healthy_spell_resets_the_hold_down() {
    let mut fleet = Fleet::new(spec());
    let probe_start = fleet.blocked_then_probing(t0());
    fleet.observe(IP, feedback("microsoft", 20, 20, 0, 0), probe_start);
    fleet.tick(super::clock::add_seconds(probe_start, 4 * 1800));
    let healthy_since = fleet.pair("microsoft").since.0;
    assert_eq!(fleet.view("microsoft").state, Healthy);
    // Blocked again soon after recovering: a repeat.
    let mut soon = Fleet {
        spec: fleet.spec.clone(),
        status: fleet.status.clone(),
    };
    let when = super::clock::add_seconds(healthy_since, 3600);
    soon.observe(IP, ban("microsoft", Some(IP), when), when);
    assert_eq!(soon.pair("microsoft").hold_down_seconds, Some(7200));
    // Blocked again after 48 h of health: the base hold-down, the count goes on.
    let when = super::clock::add_seconds(healthy_since, 48 * 3600);
    fleet.observe(IP, ban("microsoft", Some(IP), when), when);
    let pair = fleet.pair("microsoft");
    assert_eq!((pair.hold_down_seconds, pair.block_count), (Some(3600), 2));
}

fn zone(name: &str, providers: &[&str]) -> DnsblZone {
    DnsblZone {
        zone: name.to_string(),
        listing_codes: Vec::new(),
        error_codes: Vec::new(),
        providers: providers.iter().map(|p| p.to_string()).collect(),
    }
}

fn dnsbl(zone: &str, listed: bool, error: Option<&str>, when: Timestamp) -> Signal {
    Signal::Dnsbl(DnsblResult {
        zone: zone.to_string(),
        listed,
        codes: vec![if error.is_some() {
            "127.255.255.254"
        } else {
            "127.0.0.2"
        }
        .to_string()],
        reason: None,
        error: error.map(str::to_string),
        checked_at: Time(when),
    })
}

fn dnsbl_spec() -> SenderPoolSpec {
    let mut s = spec();
    s.reputation.dnsbl.zones = vec![
        zone("zen.spamhaus.org", &[]),
        zone("bl.example.net", &["yahoo"]),
    ];
    s
}

#[test]
fn a_dnsbl_listing_blocks_the_zone_providers_and_is_stored() {
    let mut fleet = Fleet::new(dnsbl_spec());
    fleet.observe(IP, feedback("apple", 1, 1, 0, 0), t0());
    let out = fleet.observe(IP, dnsbl("zen.spamhaus.org", true, None, t0()), t0());
    let providers: Vec<&str> = out.iter().map(|t| t.provider.as_str()).collect();
    assert_eq!(
        providers,
        vec!["apple", "google", "microsoft"],
        "known providers and existing pairs"
    );
    assert!(out
        .iter()
        .all(|t| t.reason == Reason::DnsblListed && t.to == Blocked));
    assert!(out[0]
        .evidence
        .as_deref()
        .unwrap()
        .contains("zen.spamhaus.org lists 203.0.113.10: 127.0.0.2"));
    let ip = &fleet.status.ips[0];
    assert_eq!(ip.dnsbl.len(), 1);
    assert!(ip.dnsbl[0].listed);

    let out = fleet.observe(IP, dnsbl("bl.example.net", true, None, t0()), t0());
    assert_eq!(reasons(&out), vec![(None, Blocked, Reason::DnsblListed)]);
    assert_eq!(out[0].provider, "yahoo");
    let zones: Vec<&str> = fleet.status.ips[0]
        .dnsbl
        .iter()
        .map(|r| r.zone.as_str())
        .collect();
    assert_eq!(zones, vec!["bl.example.net", "zen.spamhaus.org"]);
}

#[test]
fn a_dnsbl_error_answer_never_blocks_and_never_hides_a_listing() {
    let mut fleet = Fleet::new(dnsbl_spec());
    let out = fleet.observe(
        IP,
        dnsbl(
            "zen.spamhaus.org",
            true,
            Some("127.255.255.254: query via public resolver"),
            t0(),
        ),
        t0(),
    );
    assert!(out.is_empty());
    assert_eq!(fleet.view("microsoft").state, Healthy);
    let stored = &fleet.status.ips[0].dnsbl[0];
    assert!(
        !stored.listed,
        "an error answer is never stored as a listing"
    );
    assert!(stored.error.is_some());

    fleet.observe(IP, dnsbl("zen.spamhaus.org", true, None, at(60)), at(60));
    assert_eq!(fleet.view("microsoft").state, Blocked);
    fleet.observe(
        IP,
        dnsbl("zen.spamhaus.org", false, Some("timeout"), at(120)),
        at(120),
    );
    let stored = &fleet.status.ips[0].dnsbl[0];
    assert!(
        stored.listed && stored.error.is_none(),
        "the last certain answer stands"
    );
}

#[test]
fn unknown_zones_are_refused() {
    let mut fleet = Fleet::new(dnsbl_spec());
    let err = observe(
        &fleet.spec,
        &mut fleet.status,
        IP,
        dnsbl("b.barracudacentral.org", true, None, t0()),
        &known(),
        t0(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("b.barracudacentral.org"), "{err}");
    assert!(err.to_string().contains("zen.spamhaus.org"), "{err}");
}

#[test]
fn a_listed_ip_is_not_probed_until_the_list_clears() {
    let mut fleet = Fleet::new(dnsbl_spec());
    fleet.observe(IP, dnsbl("zen.spamhaus.org", true, None, t0()), t0());
    assert!(
        fleet.tick(at(3600)).is_empty(),
        "still listed: stays Blocked"
    );
    assert_eq!(
        fleet.pair("microsoft").next_step_at,
        None,
        "waits for a signal, not a timer"
    );
    assert_eq!(next_wakeup(&fleet.spec, &fleet.status, at(3600)), None);
    assert!(fleet.tick(at(3600)).is_empty());
    fleet.observe(
        IP,
        dnsbl("zen.spamhaus.org", true, None, at(4000)),
        at(4000),
    );
    let out = fleet.observe(
        IP,
        dnsbl("zen.spamhaus.org", false, None, at(5000)),
        at(5000),
    );
    assert_eq!(out.len(), 2);
    assert!(out
        .iter()
        .all(|t| t.reason == Reason::HoldDownElapsed && t.to == Probing && t.at == at(5000)));
}

#[test]
fn a_delisting_before_the_hold_down_ends_changes_nothing_yet() {
    let mut fleet = Fleet::new(dnsbl_spec());
    fleet.observe(IP, dnsbl("zen.spamhaus.org", true, None, t0()), t0());
    assert!(fleet
        .observe(IP, dnsbl("zen.spamhaus.org", false, None, at(600)), at(600))
        .is_empty());
    let out = fleet.tick(at(3600));
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|t| t.to == Probing && t.at == at(3600)));
}

#[test]
fn an_outdated_answer_is_ignored() {
    let mut fleet = Fleet::new(dnsbl_spec());
    fleet.observe(IP, dnsbl("zen.spamhaus.org", false, None, at(600)), at(600));
    assert!(fleet
        .observe(IP, dnsbl("zen.spamhaus.org", true, None, t0()), at(700))
        .is_empty());
    assert_eq!(fleet.view("microsoft").state, Healthy);
}

fn feed(blocked: bool, when: Timestamp) -> Signal {
    Signal::Feed(FeedVerdict {
        feed: "snds".to_string(),
        provider: "microsoft".to_string(),
        blocked,
        reason: blocked
            .then(|| "Blocked due to user complaints or other evidence of spamming".to_string()),
        checked_at: Time(when),
        scores: None,
    })
}

#[test]
fn a_feed_verdict_blocks_its_provider_only_and_holds_until_cleared() {
    let mut fleet = Fleet::new(spec());
    let out = fleet.observe(IP, feed(true, t0()), t0());
    assert_eq!(reasons(&out), vec![(None, Blocked, Reason::FeedBlocked)]);
    assert!(out[0]
        .evidence
        .as_deref()
        .unwrap()
        .starts_with("feed snds: Blocked due to"));
    assert_eq!(fleet.view("google"), PairView::HEALTHY);
    assert!(fleet.tick(at(7200)).is_empty());
    let out = fleet.observe(IP, feed(false, at(7300)), at(7300));
    assert_eq!(
        reasons(&out),
        vec![(Some(Blocked), Probing, Reason::HoldDownElapsed)]
    );
    assert_eq!(fleet.status.ips[0].feeds.len(), 1);
}

fn warming_spec(start: Timestamp) -> SenderPoolSpec {
    let mut s = spec();
    s.ips[0].warmup_start = Some(Time(start));
    s.warmup.hourly_caps = vec![20, 28, 1000, 1000, 5000];
    s.rate_limits
        .per_provider
        .insert("google".to_string(), 2000);
    s
}

#[test]
fn warm_up_caps_every_known_provider_day_by_day() {
    let mut fleet = Fleet {
        spec: warming_spec(t0()),
        status: SenderPoolStatus::default(),
    };
    let out = fleet.tick(t0());
    assert_eq!(
        reasons(&out),
        vec![
            (None, Warming, Reason::WarmupStarted),
            (None, Warming, Reason::WarmupStarted)
        ]
    );
    assert_eq!(
        fleet.view("microsoft"),
        PairView {
            state: Warming,
            allowance_percent: 1,
            hourly_cap: Some(20)
        }
    );
    assert_eq!(fleet.view("google").allowance_percent, 1);
    assert_eq!(
        fleet.view("yahoo"),
        PairView {
            state: Warming,
            allowance_percent: 1,
            hourly_cap: Some(20)
        }
    );
    assert_eq!(fleet.status.healthy_ips, 2, "warming counts as healthy");

    assert!(fleet.tick(at(86_399)).is_empty());
    let out = fleet.tick(at(86_400));
    assert_eq!(reasons(&out).len(), 2);
    assert!(out.iter().all(|t| t.reason == Reason::WarmupStep));
    assert_eq!(fleet.view("microsoft").hourly_cap, Some(28));

    let out = fleet.tick(at(2 * 86_400 + 5));
    assert!(out
        .iter()
        .all(|t| t.reason == Reason::WarmupStep && t.at == at(2 * 86_400)));
    assert_eq!(
        fleet.view("google").allowance_percent,
        50,
        "1000 of google's 2000 per hour"
    );
    assert_eq!(
        fleet.view("microsoft").allowance_percent,
        10,
        "1000 of the default 10000"
    );
    assert_eq!(
        fleet.pair("microsoft").next_step_at.clone().unwrap().0,
        at(4 * 86_400),
        "day 4 has the same cap"
    );
    assert_eq!(
        next_wakeup(&fleet.spec, &fleet.status, at(2 * 86_400 + 5)),
        Some(at(4 * 86_400))
    );
    assert!(fleet.tick(at(3 * 86_400)).is_empty());

    // Ticks missed day 5 entirely: one move straight to the end of the schedule.
    let out = fleet.tick(at(5 * 86_400 + 100));
    assert_eq!(out.len(), 2);
    assert!(out
        .iter()
        .all(|t| t.reason == Reason::WarmupComplete && t.at == at(5 * 86_400)));
    assert_eq!(fleet.view("microsoft"), PairView::HEALTHY);
    assert_eq!(
        next_wakeup(&fleet.spec, &fleet.status, at(5 * 86_400 + 100)),
        None
    );
}

#[test]
fn a_block_while_warming_recovers_into_warming() {
    let mut fleet = Fleet {
        spec: warming_spec(t0()),
        status: SenderPoolStatus::default(),
    };
    fleet.tick(t0());
    let probe_start = fleet.blocked_then_probing(at(60));
    assert_eq!(
        fleet.pair("microsoft").hourly_cap,
        Some(20),
        "the warm-up cap holds in every state"
    );
    fleet.observe(IP, feedback("microsoft", 20, 20, 0, 0), probe_start);
    assert_eq!(
        fleet.view("microsoft").allowance_percent,
        1,
        "recovery step 10 % is above the warm-up share"
    );
    let out = fleet.tick(super::clock::add_seconds(probe_start, 4 * 1800));
    assert_eq!(
        out.last().map(|t| (t.to, t.reason)),
        Some((Warming, Reason::Recovered))
    );
}

#[test]
fn removing_warmup_start_completes_the_warm_up() {
    let mut fleet = Fleet {
        spec: warming_spec(t0()),
        status: SenderPoolStatus::default(),
    };
    fleet.tick(t0());
    fleet.spec.ips[0].warmup_start = None;
    let out = fleet.tick(at(60));
    assert!(
        out.iter()
            .all(|t| t.reason == Reason::WarmupComplete && t.to == Healthy),
        "{out:?}"
    );
    assert_eq!(
        out[0].evidence.as_deref(),
        Some("warmupStart was removed from the spec")
    );
}

fn override_(percent: i32, providers: &[&str]) -> ManualOverride {
    ManualOverride {
        allowance_percent: percent,
        providers: providers.iter().map(|p| p.to_string()).collect(),
        reason: "maintenance window".to_string(),
    }
}

#[test]
fn an_override_caps_announces_and_lifts() {
    let mut fleet = Fleet::new(spec());
    fleet.spec.ips[0].override_ = Some(override_(30, &["microsoft"]));
    let out = fleet.tick(at(10));
    assert_eq!(reasons(&out), vec![(None, Healthy, Reason::ManualOverride)]);
    assert_eq!(
        out[0].evidence.as_deref(),
        Some("allowance capped at 30 %: maintenance window")
    );
    let pair = fleet.pair("microsoft");
    assert_eq!(
        (pair.allowance_percent, pair.overridden_by.as_deref()),
        (30, Some("maintenance window"))
    );
    assert_eq!(fleet.view("google"), PairView::HEALTHY);
    assert!(fleet.tick(at(20)).is_empty());

    fleet.spec.ips[0].override_ = None;
    let out = fleet.tick(at(30));
    assert_eq!(
        reasons(&out),
        vec![(Some(Healthy), Healthy, Reason::OverrideLifted)]
    );
    assert_eq!(fleet.view("microsoft"), PairView::HEALTHY);
    assert_eq!(fleet.pair("microsoft").overridden_by, None);
}

#[test]
fn an_override_never_raises_or_unblocks() {
    let mut fleet = Fleet::new(spec());
    fleet.observe(IP, ban("microsoft", Some(IP), t0()), t0());
    fleet.spec.ips[0].override_ = Some(override_(100, &[]));
    fleet.tick(at(10));
    assert_eq!(fleet.view("microsoft").allowance_percent, 0);
    assert_eq!(fleet.view("microsoft").state, Blocked);
    assert_eq!(fleet.view("google").allowance_percent, 100);
    assert!(
        fleet.pair("google").overridden_by.is_some(),
        "an empty provider list means every provider"
    );
    fleet.spec.ips[0].override_ = Some(override_(0, &[]));
    fleet.tick(at(20));
    assert_eq!(fleet.view("google").allowance_percent, 0, "0 drains the IP");
    fleet.tick(at(3600));
    assert_eq!(
        fleet.view("microsoft"),
        PairView {
            state: Probing,
            allowance_percent: 0,
            hourly_cap: None
        }
    );
}

#[test]
fn tick_follows_the_spec_ips_and_keeps_them_sorted() {
    let mut s = spec();
    s.ips = vec![
        pool_ip("203.0.113.10"),
        pool_ip("2001:db8::1"),
        pool_ip("203.0.113.9"),
    ];
    let mut fleet = Fleet::new(s);
    let order: Vec<&str> = fleet
        .status
        .ips
        .iter()
        .map(|i| i.address.as_str())
        .collect();
    assert_eq!(order, vec!["203.0.113.9", "203.0.113.10", "2001:db8::1"]);
    assert_eq!(fleet.status.ip_count, 3);
    fleet.observe("203.0.113.10", ban("microsoft", None, t0()), t0());
    fleet.spec.ips.remove(0);
    fleet.spec.ips[0].address = "2001:DB8:0::1".to_string();
    fleet.tick(at(5));
    let order: Vec<&str> = fleet
        .status
        .ips
        .iter()
        .map(|i| i.address.as_str())
        .collect();
    assert_eq!(order, vec!["203.0.113.9", "2001:DB8:0::1"]);
    assert_eq!(
        (
            fleet.status.ip_count,
            fleet.status.blocked_pairs,
            fleet.status.healthy_ips
        ),
        (2, 0, 2)
    );
}

#[test]
fn tick_is_idempotent() {
    let mut fleet = Fleet {
        spec: warming_spec(t0()),
        status: SenderPoolStatus::default(),
    };
    fleet.spec.ips[1].override_ = Some(override_(5, &[]));
    fleet.tick(t0());
    fleet.observe(IP, ban("microsoft", Some(IP), t0()), t0());
    fleet.observe(OTHER_IP, feedback("google", 100, 80, 0, 20), t0());
    for now in [at(3600), at(86_400), at(86_400 + 1800)] {
        fleet.tick(now);
        let before = fleet.status.clone();
        assert!(fleet.tick(now).is_empty());
        assert_eq!(fleet.status, before);
    }
}

#[test]
fn bad_input_is_refused_with_a_clear_message_and_no_change() {
    let mut fleet = Fleet::new(spec());
    let before = fleet.status.clone();
    let err = observe(
        &fleet.spec,
        &mut fleet.status,
        "198.51.100.7",
        feedback("microsoft", 1, 1, 0, 0),
        &known(),
        t0(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "IP 198.51.100.7 is not in this SenderPool (spec.ips: 203.0.113.10, 203.0.113.11); add it to spec.ips or send its signals to the pool it belongs to"
    );
    let err = observe(
        &fleet.spec,
        &mut fleet.status,
        IP,
        feedback("microsoft", 1, 1, 1, 0),
        &known(),
        t0(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("exceeds attempts = 1"), "{err}");
    let err = observe(
        &fleet.spec,
        &mut fleet.status,
        IP,
        feedback("Microsoft", 1, 1, 0, 0),
        &known(),
        t0(),
    )
    .unwrap_err();
    assert!(matches!(err, EngineError::InvalidProvider { .. }), "{err}");
    let mut too_many = Feedback {
        provider: "microsoft".into(),
        attempts: 2,
        ..Feedback::default()
    };
    too_many.conclusive = vec![ConclusiveReply {
        reply: BAN.into(),
        named_ip: None,
        at: t0(),
        pause_seconds: None,
    }];
    let err = observe(
        &fleet.spec,
        &mut fleet.status,
        IP,
        Signal::Feedback(too_many),
        &known(),
        t0(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("count it there too"), "{err}");
    assert_eq!(fleet.status, before);

    let mut s = spec();
    s.reputation.recovery.step_percents.clear();
    let err = tick(&s, &mut fleet.status, &known(), t0()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("spec.reputation.recovery.stepPercents is []"),
        "{err}"
    );
    let mut s = spec();
    s.reputation.max_hold_down_seconds = 60;
    let err = tick(&s, &mut fleet.status, &known(), t0()).unwrap_err();
    assert!(
        err.to_string().contains("not be less than holdDownSeconds"),
        "{err}"
    );
    let mut s = spec();
    s.ips.push(pool_ip("203.0.113.010"));
    assert!(matches!(
        tick(&s, &mut fleet.status, &known(), t0()),
        Err(EngineError::InvalidIp { .. })
    ));
    let mut s = spec();
    s.ips.push(pool_ip("203.0.113.10"));
    assert!(matches!(
        tick(&s, &mut fleet.status, &known(), t0()),
        Err(EngineError::DuplicateIp {
            first: 0,
            second: 2,
            ..
        })
    ));
    assert_eq!(fleet.status, before);
}

#[test]
fn next_wakeup_names_the_earliest_timer() {
    let mut fleet = Fleet::new(spec());
    assert_eq!(next_wakeup(&fleet.spec, &fleet.status, t0()), None);
    fleet.observe(IP, ban("microsoft", Some(IP), t0()), t0());
    fleet.observe(OTHER_IP, ban("google", Some(OTHER_IP), at(100)), at(100));
    assert_eq!(
        next_wakeup(&fleet.spec, &fleet.status, at(100)),
        Some(at(3600))
    );
    fleet.tick(at(3600));
    assert_eq!(
        next_wakeup(&fleet.spec, &fleet.status, at(3600)),
        Some(at(3700))
    );
}

#[test]
fn pair_view_of_unknown_pairs_is_healthy() {
    let fleet = Fleet::new(spec());
    assert_eq!(
        pair_view(&fleet.status, "198.51.100.7", "microsoft"),
        PairView::HEALTHY
    );
    assert_eq!(fleet.view("microsoft"), PairView::HEALTHY);
}

#[test]
fn subsecond_instants_are_kept_to_the_second() {
    let mut fleet = Fleet::new(spec());
    fleet.observe(
        IP,
        ban("microsoft", Some(IP), t0()),
        ts("2021-11-05T08:10:00.900Z"),
    );
    assert_eq!(fleet.pair("microsoft").since.0, t0());
}

#[test]
fn a_throttled_warming_pair_clears_back_into_warming() {
    let mut fleet = Fleet {
        spec: warming_spec(t0()),
        status: SenderPoolStatus::default(),
    };
    fleet.tick(t0());
    let out = fleet.observe(IP, feedback("microsoft", 60, 50, 0, 10), at(60));
    assert_eq!(
        reasons(&out),
        vec![(Some(Warming), Throttled, Reason::RateLimited)]
    );
    assert_eq!(
        fleet.view("microsoft"),
        PairView {
            state: Throttled,
            allowance_percent: 1,
            hourly_cap: Some(20)
        }
    );
    // Clean, but a throttle step is held for throttle.stepSeconds first.
    assert!(fleet
        .observe(IP, feedback("microsoft", 60, 60, 0, 0), at(120))
        .is_empty());
    let out = fleet.observe(IP, feedback("microsoft", 60, 60, 0, 0), at(960));
    assert_eq!(
        reasons(&out),
        vec![(Some(Throttled), Warming, Reason::WindowClean)]
    );
}

#[test]
fn dropping_a_zone_from_the_spec_releases_what_it_held() {
    let mut fleet = Fleet::new(dnsbl_spec());
    fleet.observe(IP, dnsbl("zen.spamhaus.org", true, None, t0()), t0());
    fleet.tick(at(3600));
    assert_eq!(fleet.view("microsoft").state, Blocked);
    fleet
        .spec
        .reputation
        .dnsbl
        .zones
        .retain(|z| z.zone != "zen.spamhaus.org");
    let out = fleet.tick(at(3700));
    assert_eq!(out.len(), 2);
    assert!(out
        .iter()
        .all(|t| t.reason == Reason::HoldDownElapsed && t.at == at(3700)));
    assert!(fleet.status.ips[0].dnsbl.is_empty());
}

#[test]
fn an_ip_written_differently_is_the_same_ip() {
    let mut s = spec();
    s.ips[0].address = "2001:db8::10".to_string();
    let mut fleet = Fleet::new(s);
    let out = fleet.observe("2001:DB8:0::10", ban("google", None, t0()), t0());
    assert_eq!(out[0].ip, "2001:db8::10");
    assert_eq!(
        pair_view(&fleet.status, "2001:db8:0:0::10", "google").state,
        Blocked
    );
}

#[test]
fn signals_serialise_for_the_agent_api() {
    let signal = ban("microsoft", Some(IP), t0());
    let json = serde_json::to_value(&signal).unwrap();
    assert_eq!(json["feedback"]["conclusive"][0]["named_ip"], IP);
    assert_eq!(serde_json::from_value::<Signal>(json).unwrap(), signal);
}

#[path = "claim_tests.rs"]
mod claim_tests;

fn pause_reply(provider: &str, seconds: i64, when: Timestamp) -> Signal {
    Signal::Feedback(Feedback {
        provider: provider.to_string(),
        attempts: 1,
        delivered: 0,
        ip_blocklisted: 0,
        ip_rate_limited: 1,
        conclusive: vec![ConclusiveReply {
            reply: "421 4.7.0 [TSS04] Messages from 203.0.113.10 temporarily deferred".into(),
            named_ip: Some(IP.parse().unwrap()),
            at: when,
            pause_seconds: Some(seconds),
        }],
    })
}

#[test]
fn the_throttle_steps_down_while_rate_limits_go_on_and_climbs_back_in_steps() {
    let mut fleet = Fleet::new(spec());
    let limited = || feedback("google", 100, 80, 0, 20);
    let clean = || feedback("google", 100, 100, 0, 0);
    let out = fleet.observe(IP, limited(), t0());
    assert_eq!(reasons(&out), vec![(None, Throttled, Reason::RateLimited)]);
    assert_eq!(fleet.view("google").allowance_percent, 50);
    let out = fleet.observe(IP, limited(), at(60));
    assert_eq!(
        reasons(&out),
        vec![(Some(Throttled), Throttled, Reason::ThrottleStepDown)]
    );
    assert_eq!(fleet.view("google").allowance_percent, 25);
    fleet.observe(IP, limited(), at(120));
    assert_eq!(fleet.view("google").allowance_percent, 10);
    // The lowest step holds, and restarts the time it must stay clean.
    assert!(fleet.observe(IP, limited(), at(180)).is_empty());
    assert_eq!(fleet.view("google").allowance_percent, 10);
    // Clean, but not yet for stepSeconds (900 s) at this step: it holds.
    assert!(fleet.observe(IP, clean(), at(600)).is_empty());
    let out = fleet.observe(IP, clean(), at(1080));
    assert_eq!(
        reasons(&out),
        vec![(Some(Throttled), Throttled, Reason::ThrottleStepUp)]
    );
    assert_eq!(fleet.view("google").allowance_percent, 25);
    assert!(fleet.observe(IP, clean(), at(1500)).is_empty());
    fleet.observe(IP, clean(), at(1980));
    assert_eq!(fleet.view("google").allowance_percent, 50);
    let out = fleet.observe(IP, clean(), at(2880));
    assert_eq!(
        reasons(&out),
        vec![(Some(Throttled), Healthy, Reason::WindowClean)]
    );
    assert_eq!(fleet.view("google").allowance_percent, 100);
    let pair = fleet.pair("google");
    assert_eq!(
        (pair.throttle_step, pair.next_step_at.clone()),
        (None, None)
    );
}

#[test]
fn a_single_step_throttle_is_the_fixed_half_rate() {
    let mut spec = spec();
    spec.reputation.throttle.step_percents = vec![50];
    let mut fleet = Fleet::new(spec);
    fleet.observe(IP, feedback("google", 100, 80, 0, 20), t0());
    assert!(fleet
        .observe(IP, feedback("google", 100, 80, 0, 20), at(60))
        .is_empty());
    assert_eq!(fleet.view("google").allowance_percent, 50);
    let out = fleet.observe(IP, feedback("google", 100, 100, 0, 0), at(960));
    assert_eq!(
        reasons(&out),
        vec![(Some(Throttled), Healthy, Reason::WindowClean)]
    );
}

#[test]
fn a_pause_reply_stops_the_pair_for_its_time_then_probes_without_a_block() {
    let mut fleet = Fleet::new(spec());
    let out = fleet.observe(IP, pause_reply("google", 3600, t0()), t0());
    assert_eq!(reasons(&out), vec![(None, Throttled, Reason::PauseReply)]);
    assert_eq!(out[0].allowance_percent, 0);
    assert_eq!(fleet.view("google").allowance_percent, 0);
    let pair = fleet.pair("google");
    assert_eq!(pair.paused_until.clone().unwrap().0, at(3600));
    assert_eq!(pair.block_count, 0);
    assert_eq!(
        next_wakeup(&fleet.spec, &fleet.status, at(10)),
        Some(at(3600))
    );
    // Later pause replies and rate limits neither extend nor step the pause.
    assert!(fleet
        .observe(IP, pause_reply("google", 3600, at(600)), at(600))
        .is_empty());
    assert!(fleet
        .observe(IP, feedback("google", 100, 0, 0, 100), at(700))
        .is_empty());
    assert_eq!(
        fleet.pair("google").paused_until.clone().unwrap().0,
        at(3600)
    );
    // The state survives a restart: the status alone carries the pause.
    let json = serde_json::to_string(&fleet.status).unwrap();
    fleet.status = serde_json::from_str(&json).unwrap();
    assert!(fleet.tick(at(3599)).is_empty());
    let out = fleet.tick(at(4000));
    assert_eq!(
        reasons(&out),
        vec![(Some(Throttled), Probing, Reason::PauseElapsed)]
    );
    assert_eq!(out[0].at, at(3600), "moves at the instant it was due");
    assert_eq!(
        fleet.view("google").allowance_percent,
        fleet.spec.reputation.probe.allowance_percent
    );
    assert_eq!(fleet.pair("google").paused_until, None);
    // A pause reply received before probing began is about the paused traffic.
    assert!(fleet
        .observe(IP, pause_reply("google", 3600, at(3500)), at(4010))
        .is_empty());
    // A fresh one pauses the probing pair again.
    let out = fleet.observe(IP, pause_reply("google", 3600, at(4020)), at(4020));
    assert_eq!(
        reasons(&out),
        vec![(Some(Probing), Throttled, Reason::PauseReply)]
    );
}

#[test]
fn a_ban_still_blocks_a_paused_pair_with_the_first_hold_down() {
    let mut fleet = Fleet::new(spec());
    fleet.observe(IP, pause_reply("microsoft", 3600, t0()), t0());
    let out = fleet.observe(IP, ban("microsoft", Some(IP), at(60)), at(60));
    assert_eq!(
        reasons(&out),
        vec![(Some(Throttled), Blocked, Reason::ConclusiveBlockReply)]
    );
    let pair = fleet.pair("microsoft");
    assert_eq!(pair.paused_until, None);
    assert_eq!(pair.hold_down_seconds, Some(3600));
}

#[test]
fn a_pause_reply_naming_another_ip_pauses_nothing() {
    let mut fleet = Fleet::new(spec());
    let out = fleet.observe(OTHER_IP, pause_reply("google", 3600, t0()), t0());
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn throttle_steps_must_go_down_and_pauses_be_counted() {
    let mut rising = spec();
    rising.reputation.throttle.step_percents = vec![25, 50];
    let err = tick(&rising, &mut SenderPoolStatus::default(), &known(), t0())
        .unwrap_err()
        .to_string();
    assert!(err.contains("throttle.stepPercents[1]"), "{err}");
    let mut empty = spec();
    empty.reputation.throttle.step_percents.clear();
    let err = tick(&empty, &mut SenderPoolStatus::default(), &known(), t0())
        .unwrap_err()
        .to_string();
    assert!(err.contains("throttle.stepPercents"), "{err}");
    let mut fleet = Fleet::new(spec());
    let Signal::Feedback(mut uncounted) = pause_reply("google", 3600, t0()) else {
        unreachable!()
    };
    uncounted.ip_rate_limited = 0;
    let err = observe(
        &fleet.spec,
        &mut fleet.status,
        IP,
        Signal::Feedback(uncounted),
        &known(),
        t0(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("pause replies"), "{err}");
}

fn complaints(provider: &str, count: i64) -> Signal {
    Signal::Complaints(Complaints {
        provider: provider.to_string(),
        count,
    })
}

#[test]
fn a_complaint_rate_over_the_threshold_throttles_the_pair_with_its_figures() {
    let mut fleet = Fleet::new(spec());
    // 2,000 delivered to Yahoo users, 5 complaints: 0.25 %, under 0.3 %.
    fleet.observe(IP, feedback("yahoo", 2000, 2000, 0, 0), t0());
    assert!(fleet.observe(IP, complaints("yahoo", 5), at(60)).is_empty());
    let rate = fleet.pair("yahoo").complaint_rate.clone().unwrap();
    assert_eq!(
        (rate.complaints, rate.delivered, rate.basis_points),
        (5, 2000, Some(25))
    );
    assert_eq!(fleet.view("yahoo").state, Healthy);
    // The sixth makes 0.30 %: at the threshold, throttled at the first step.
    let out = fleet.observe(IP, complaints("yahoo", 1), at(120));
    assert_eq!(
        reasons(&out),
        vec![(Some(Healthy), Throttled, Reason::ComplaintRate)]
    );
    assert_eq!(
        out[0].evidence.as_deref(),
        Some("6 complaints per 2000 delivered in the last 900 s (0.30 %, threshold 0.30 %)")
    );
    let pair = fleet.pair("yahoo");
    assert_eq!((pair.allowance_percent, pair.throttle_step), (50, Some(0)));
    assert_eq!(pair.reason, "ComplaintRate");
    let rate = pair.complaint_rate.as_ref().unwrap();
    assert_eq!(
        (rate.complaints, rate.delivered, rate.basis_points),
        (6, 2000, Some(30)),
        "the figures that throttled it stay in status"
    );
    assert_eq!(rate.at.0, at(120));
    // Other providers and IPs are untouched.
    assert!(fleet
        .status
        .ips
        .iter()
        .flat_map(|ip| ip.reputation.iter())
        .filter(|p| p.provider != "yahoo")
        .all(|p| p.complaint_rate.is_none()));
}

#[test]
fn complaints_among_too_few_deliveries_are_counted_but_throttle_nothing() {
    let mut fleet = Fleet::new(spec());
    fleet.observe(IP, feedback("yahoo", 10, 10, 0, 0), t0());
    assert!(fleet.observe(IP, complaints("yahoo", 1), at(1)).is_empty());
    let pair = fleet.pair("yahoo");
    assert_eq!(pair.state, Healthy);
    assert_eq!(
        pair.complaint_rate.as_ref().unwrap().basis_points,
        Some(1000),
        "10 % is shown, not judged"
    );
    // Complaints about a pair that delivered nothing in the window: no rate.
    assert!(fleet.observe(IP, complaints("google", 3), at(2)).is_empty());
    assert_eq!(
        fleet
            .pair("google")
            .complaint_rate
            .as_ref()
            .unwrap()
            .basis_points,
        None
    );
    // The figures go a window after the last complaint, however often tick runs.
    fleet.tick(at(600));
    assert!(fleet.pair("yahoo").complaint_rate.is_some());
    // (Its bucket, 08:10:00 to 08:11:00, overlaps the window until 08:26:00.)
    fleet.tick(at(959));
    assert!(fleet.pair("yahoo").complaint_rate.is_some());
    fleet.tick(at(960));
    assert!(fleet.pair("yahoo").complaint_rate.is_none());
}

#[test]
fn the_threshold_and_minimum_volume_come_from_the_spec() {
    let mut strict = spec();
    strict.reputation.complaints.threshold_basis_points = 10;
    strict.reputation.complaints.min_delivered = 500;
    let mut fleet = Fleet::new(strict);
    fleet.observe(IP, feedback("google", 500, 500, 0, 0), t0());
    let out = fleet.observe(IP, complaints("google", 1), at(10));
    assert_eq!(
        reasons(&out),
        vec![(Some(Healthy), Throttled, Reason::ComplaintRate)],
        "1 in 500 is 0.2 %, over 0.1 %"
    );
    let mut fleet = Fleet::new(spec());
    fleet.observe(IP, feedback("google", 500, 500, 0, 0), t0());
    assert!(
        fleet
            .observe(IP, complaints("google", 5), at(10))
            .is_empty(),
        "1 % of 500 is under the default minimum of 1000 delivered"
    );
}

#[test]
fn complaints_step_a_throttled_pair_down_and_hold_it_until_they_fall() {
    let mut fleet = Fleet::new(spec());
    fleet.observe(IP, feedback("yahoo", 2000, 2000, 0, 0), t0());
    fleet.observe(IP, complaints("yahoo", 10), at(10));
    assert_eq!(fleet.pair("yahoo").throttle_step, Some(0));
    // The window began afresh at the throttle: more complaints among enough
    // new deliveries, but before the step was held for stepSeconds: it holds.
    fleet.observe(IP, feedback("yahoo", 1000, 1000, 0, 0), at(100));
    assert!(fleet
        .observe(IP, complaints("yahoo", 10), at(110))
        .is_empty());
    assert_eq!(fleet.pair("yahoo").throttle_step, Some(0));
    // After stepSeconds (900) a window clean of rate limits does not lift it
    // while its complaint rate is over the threshold; more complaints: one step lower.
    assert!(fleet
        .observe(IP, feedback("yahoo", 1000, 1000, 0, 0), at(920))
        .is_empty());
    let out = fleet.observe(IP, complaints("yahoo", 5), at(930));
    assert_eq!(
        reasons(&out),
        vec![(Some(Throttled), Throttled, Reason::ComplaintRate)]
    );
    assert!(out[0]
        .evidence
        .as_deref()
        .unwrap()
        .ends_with("step 2 of 3: 25 %"));
    assert_eq!(fleet.pair("yahoo").allowance_percent, 25);
    // A window clean of rate limits does not lift it while the complaint
    // rate in the window is still over the threshold.
    fleet.observe(IP, feedback("yahoo", 2000, 2000, 0, 0), at(1000));
    fleet.observe(IP, complaints("yahoo", 10), at(1010));
    let out = fleet.observe(IP, feedback("yahoo", 100, 100, 0, 0), at(1900));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(fleet.pair("yahoo").allowance_percent, 25);
    // Once the complaints left the window, a clean window climbs back.
    let out = fleet.observe(IP, feedback("yahoo", 100, 100, 0, 0), at(3000));
    assert_eq!(
        reasons(&out),
        vec![(Some(Throttled), Throttled, Reason::ThrottleStepUp)]
    );
}

#[test]
fn complaints_never_move_a_blocked_paused_or_probing_pair_and_hold_recovery() {
    let mut slow_probe = spec();
    slow_probe.reputation.probe.successes_to_recover = 100_000;
    let mut fleet = Fleet::new(slow_probe);
    let probing_at = fleet.blocked_then_probing(t0());
    fleet.observe(IP, feedback("microsoft", 1000, 1000, 0, 0), probing_at);
    assert!(fleet
        .observe(IP, complaints("microsoft", 50), probing_at)
        .is_empty());
    assert_eq!(fleet.view("microsoft").state, Probing);

    let mut fleet = Fleet::new(spec());
    fleet.observe(IP, ban("microsoft", Some(IP), t0()), t0());
    fleet.observe(IP, feedback("microsoft", 1000, 1000, 0, 0), at(10));
    assert!(fleet
        .observe(IP, complaints("microsoft", 50), at(20))
        .is_empty());
    assert_eq!(fleet.view("microsoft").state, Blocked);

    let mut fleet = Fleet::new(spec());
    let probing_at = fleet.blocked_then_probing(t0());
    fleet.observe(IP, feedback("microsoft", 20, 20, 0, 0), probing_at);
    assert_eq!(fleet.view("microsoft").state, Recovering);
    let due = fleet.pair("microsoft").next_step_at.clone().unwrap().0;
    fleet.observe(IP, feedback("microsoft", 1000, 1000, 0, 0), probing_at);
    fleet.observe(
        IP,
        complaints("microsoft", 10),
        super::clock::add_seconds(probing_at, 60),
    );
    let held = fleet.pair("microsoft").next_step_at.clone().unwrap().0;
    assert!(
        held > due,
        "the recovery step timer restarts: {held} vs {due}"
    );
    assert_eq!(fleet.view("microsoft").state, Recovering);
}

#[test]
fn bad_complaint_counts_and_settings_are_refused() {
    let mut fleet = Fleet::new(spec());
    let err = observe(
        &fleet.spec,
        &mut fleet.status,
        IP,
        complaints("yahoo", 0),
        &known(),
        t0(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("at least 1"), "{err}");
    let mut bad = spec();
    bad.reputation.complaints.threshold_basis_points = 0;
    let err = tick(&bad, &mut SenderPoolStatus::default(), &known(), t0()).unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.reputation.complaints.thresholdBasisPoints"),
        "{err}"
    );
    bad.reputation.complaints.threshold_basis_points = 30;
    bad.reputation.complaints.min_delivered = 0;
    let err = tick(&bad, &mut SenderPoolStatus::default(), &known(), t0()).unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.reputation.complaints.minDelivered"),
        "{err}"
    );
}

#[test]
fn complaint_figures_survive_a_round_trip_through_status() {
    let mut fleet = Fleet::new(spec());
    fleet.observe(IP, feedback("yahoo", 2000, 2000, 0, 0), t0());
    fleet.observe(IP, complaints("yahoo", 3), at(5));
    let json = serde_json::to_string(&fleet.status).unwrap();
    let back: SenderPoolStatus = serde_json::from_str(&json).unwrap();
    assert_eq!(back, fleet.status);
    let mut again = Fleet {
        spec: spec(),
        status: back,
    };
    let out = again.observe(IP, complaints("yahoo", 3), at(10));
    assert_eq!(
        reasons(&out),
        vec![(Some(Healthy), Throttled, Reason::ComplaintRate)],
        "the complaints counted before the restart still count"
    );
}

fn scored_feed(filter: &str, complaint_bp: Option<i64>, traps: u64, when: Timestamp) -> Signal {
    Signal::Feed(FeedVerdict {
        feed: "snds".to_string(),
        provider: "microsoft".to_string(),
        blocked: false,
        reason: Some("not in any SNDS blocked range".to_string()),
        checked_at: Time(when),
        scores: Some(crate::api::FeedScores {
            filter_result: Some(filter.to_string()),
            complaint_basis_points: complaint_bp,
            trap_hits: traps,
            period: Some("11/5/2021".to_string()),
        }),
    })
}

#[test]
fn feed_figures_throttle_the_feeds_provider_and_hold_it_until_they_clear() {
    for (signal, evidence) in [
        (
            scored_feed("RED", Some(0), 0, t0()),
            "feed snds: filter result RED for 11/5/2021",
        ),
        (
            scored_feed("GREEN", Some(40), 0, t0()),
            "feed snds: complaint rate 0.40 % (threshold 0.30 %) for 11/5/2021",
        ),
        (
            scored_feed("YELLOW", Some(0), 3, t0()),
            "feed snds: 3 trap hits, filter result YELLOW for 11/5/2021",
        ),
    ] {
        let mut fleet = Fleet::new(spec());
        let out = fleet.observe(IP, signal, t0());
        assert_eq!(
            reasons(&out),
            vec![(None, Throttled, Reason::FeedThrottled)]
        );
        assert_eq!(out[0].evidence.as_deref(), Some(evidence));
        assert_eq!(fleet.view("google"), PairView::HEALTHY);
    }
    // Good figures (or trap hits with a GREEN result) throttle nothing.
    let mut fleet = Fleet::new(spec());
    assert!(fleet
        .observe(IP, scored_feed("GREEN", Some(10), 2, t0()), t0())
        .is_empty());
    assert!(fleet
        .observe(IP, scored_feed("YELLOW", Some(29), 0, at(10)), at(10))
        .is_empty());

    // The next poll with the same figures changes nothing; a clean window
    // does not lift the throttle while the feed still says RED.
    let mut fleet = Fleet::new(spec());
    fleet.observe(IP, scored_feed("RED", None, 0, t0()), t0());
    assert!(fleet
        .observe(IP, scored_feed("RED", None, 0, at(3600)), at(3600))
        .is_empty());
    assert!(fleet
        .observe(IP, feedback("microsoft", 100, 100, 0, 0), at(3700))
        .is_empty());
    assert_eq!(fleet.view("microsoft").allowance_percent, 50);
    // Once it clears, a clean window brings the pair back.
    assert!(fleet
        .observe(IP, scored_feed("GREEN", Some(0), 0, at(7200)), at(7200))
        .is_empty());
    let out = fleet.observe(IP, feedback("microsoft", 100, 100, 0, 0), at(7300));
    assert_eq!(
        reasons(&out),
        vec![(Some(Throttled), Healthy, Reason::WindowClean)]
    );
}

#[test]
fn bad_feed_figures_hold_a_recovering_pair_at_its_step() {
    let mut fleet = Fleet::new(spec());
    let probing_at = fleet.blocked_then_probing(t0());
    fleet.observe(IP, feedback("microsoft", 20, 20, 0, 0), probing_at);
    assert_eq!(fleet.view("microsoft").state, Recovering);
    let step = fleet.view("microsoft").allowance_percent;
    let when = super::clock::add_seconds(probing_at, 60);
    fleet.observe(IP, scored_feed("RED", None, 0, when), when);
    assert!(fleet
        .tick(super::clock::add_seconds(probing_at, 3 * 1800))
        .is_empty());
    assert_eq!(fleet.view("microsoft").allowance_percent, step);
    let clear = super::clock::add_seconds(probing_at, 3 * 1800 + 10);
    fleet.observe(IP, scored_feed("GREEN", None, 0, clear), clear);
    let out = fleet.tick(super::clock::add_seconds(probing_at, 5 * 1800));
    assert_eq!(
        reasons(&out)[0],
        (Some(Recovering), Recovering, Reason::RecoveryStep)
    );
}
