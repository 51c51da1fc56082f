//! The DNSBL probe against a real rbldnsd on 127.0.0.1 (listings with several
//! codes and TXT reasons, a non-listing, the Spamhaus error codes, an IPv6
//! listing), a server that never answers and one that answers SERVFAIL.
//!
//! rbldnsd comes from scripts/ensure-tools.sh. Without it these tests fail with
//! the install command, unless MAILFLEET_SKIP_RBLDNSD=1 (then they say so loudly).

mod support;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, OpCode, ResponseCode};
use jiff::Timestamp;
use mailfleet::api::ReputationState;
use mailfleet::fleet::Fleet;
use mailfleet::manifests;
use mailfleet::probe::dnsbl::{
    plan_from_settings, DnsblProbe, ProbeErrorKind, ProbeOutcome, Resolver, ResultCache,
    ZoneErrorCounters, ZoneRules,
};
use mailfleet::reputation::engine::Reason;
use support::rbldnsd::{self, Rbldnsd};

const SBL: &str = "\
:127.0.0.2:Listed in SBL, see https://check.spamhaus.example/query/ip/$
127.0.0.2
192.0.2.2
192.0.2.3 :127.0.0.3:SBL CSS listing for $
192.0.2.252 :127.255.255.252:typo in zone
192.0.2.254 :127.255.255.254:public resolver
192.0.2.255 :127.255.255.255:too many queries
192.0.2.8 :127.0.0.8:a code ZEN does not use
192.0.2.10 :10.0.0.1:hijacked NXDOMAIN
203.0.113.10 :127.0.0.2:SBL listing of $
203.0.113.11 :127.255.255.254:public resolver
203.0.113.12 :127.0.0.10:PBL $
";

const XBL: &str = "\
:127.0.0.4:XBL listing of $
192.0.2.2
";

const V6: &str = "\
:127.0.0.2:IPv6 listing of $
2001:db8::2
2001:db8:1::/48
";

const OTHER: &str = "\
:127.0.0.2:bl.test lists $
192.0.2.2
";

fn clock() -> Timestamp {
    "2026-11-28T10:00:00Z".parse().unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn resolver(address: SocketAddr) -> Resolver {
    Resolver::new(address, Duration::from_millis(1000), 2)
}

/// `None`: rbldnsd is missing and MAILFLEET_SKIP_RBLDNSD=1 asked to skip.
fn start_rbldnsd(test: &str) -> Option<Rbldnsd> {
    rbldnsd::start(
        test,
        &[("sbl", SBL), ("xbl", XBL), ("v6", V6), ("other", OTHER)],
        &[
            "zen.spamhaus.org:ip4set:sbl",
            "zen.spamhaus.org:ip4set:xbl",
            "zen.spamhaus.org:ip6trie:v6",
            "bl.test:ip4set:other",
        ],
        "2.0.0.127.zen.spamhaus.org.",
    )
}

/// A UDP server on 127.0.0.1 that reads every query and answers with
/// `reply` (or drops it when `reply` gives `None`). Stopped when dropped.
struct FakeServer {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    fn start(reply: fn(&[u8]) -> Option<Vec<u8>>) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let address = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    if let Some(answer) = reply(&buf[..n]) {
                        let _ = socket.send_to(&answer, from);
                    }
                }
            }
        });
        FakeServer {
            address,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let mut reply = Message::error_msg(request.metadata.id, OpCode::Query, ResponseCode::ServFail);
    reply.add_queries(request.queries.clone());
    reply.to_vec().ok()
}

fn find<'a>(outcomes: &'a [ProbeOutcome], ip_text: &str, zone: &str) -> &'a ProbeOutcome {
    outcomes
        .iter()
        .find(|o| o.ip == ip(ip_text) && o.result.zone == zone)
        .unwrap_or_else(|| panic!("no outcome for {ip_text} in {zone}"))
}

fn sorted(codes: &[String]) -> Vec<String> {
    let mut codes = codes.to_vec();
    codes.sort();
    codes
}

#[tokio::test]
async fn listings_non_listings_and_error_codes_from_a_real_rbldnsd() {
    let Some(server) = start_rbldnsd("listings_non_listings_and_error_codes_from_a_real_rbldnsd")
    else {
        return;
    };
    let zones = vec![
        ZoneRules::with_defaults("zen.spamhaus.org").unwrap(),
        ZoneRules::with_defaults("bl.test").unwrap(),
        ZoneRules::with_defaults("not-served.test").unwrap(),
    ];
    let ips: Vec<IpAddr> = [
        "192.0.2.2",
        "192.0.2.3",
        "192.0.2.1",
        "127.0.0.2",
        "127.0.0.1",
        "192.0.2.252",
        "192.0.2.254",
        "192.0.2.255",
        "192.0.2.8",
        "192.0.2.10",
        "2001:db8::2",
        "2001:db8:1::7",
        "2001:db8::3",
    ]
    .iter()
    .map(|s| ip(s))
    .collect();
    let probe = DnsblProbe::new(resolver(server.address), 8);
    let outcomes = probe.round(&ips, &zones, &clock).await;
    assert_eq!(outcomes.len(), ips.len() * zones.len());

    // Several codes, each with its TXT reason.
    let both = find(&outcomes, "192.0.2.2", "zen.spamhaus.org");
    assert!(both.result.listed, "{both:?}");
    assert_eq!(both.result.error, None);
    assert_eq!(sorted(&both.result.codes), vec!["127.0.0.2", "127.0.0.4"]);
    let reason = both.result.reason.as_deref().unwrap();
    assert!(
        reason.contains("Listed in SBL, see https://check.spamhaus.example/query/ip/192.0.2.2"),
        "{reason}"
    );
    assert!(reason.contains("XBL listing of 192.0.2.2"), "{reason}");
    assert_eq!(both.result.checked_at.0, clock());

    let css = find(&outcomes, "192.0.2.3", "zen.spamhaus.org");
    assert!(css.result.listed);
    assert_eq!(css.result.codes, vec!["127.0.0.3"]);
    assert_eq!(
        css.result.reason.as_deref(),
        Some("SBL CSS listing for 192.0.2.3")
    );

    // The conventional test entries.
    assert!(
        find(&outcomes, "127.0.0.2", "zen.spamhaus.org")
            .result
            .listed
    );
    for clean in ["192.0.2.1", "127.0.0.1", "2001:db8::3"] {
        let o = find(&outcomes, clean, "zen.spamhaus.org");
        assert!(
            !o.result.listed && o.result.error.is_none() && o.result.codes.is_empty(),
            "{o:?}"
        );
    }

    // Error answers: never listings, their kind counted.
    for (address, code, kind) in [
        ("192.0.2.252", "127.255.255.252", ProbeErrorKind::TypoInZone),
        (
            "192.0.2.254",
            "127.255.255.254",
            ProbeErrorKind::OpenResolver,
        ),
        (
            "192.0.2.255",
            "127.255.255.255",
            ProbeErrorKind::RateLimited,
        ),
        ("192.0.2.8", "127.0.0.8", ProbeErrorKind::UnexpectedCode),
        ("192.0.2.10", "10.0.0.1", ProbeErrorKind::OutsideLoopback),
    ] {
        let o = find(&outcomes, address, "zen.spamhaus.org");
        assert!(!o.result.listed, "{address} must not be a listing: {o:?}");
        assert_eq!(o.error.as_ref().map(|e| e.kind()), Some(kind), "{address}");
        assert_eq!(o.result.codes, vec![code]);
        assert!(
            o.result.error.as_deref().unwrap().contains(code),
            "{address}"
        );
        assert_eq!(
            o.result.reason, None,
            "no TXT is fetched for an error answer"
        );
    }

    // IPv6: 32 reversed nibbles, one address and one /48.
    for listed in ["2001:db8::2", "2001:db8:1::7"] {
        let o = find(&outcomes, listed, "zen.spamhaus.org");
        assert!(o.result.listed, "{o:?}");
        assert_eq!(
            o.result.reason.as_deref(),
            Some(format!("IPv6 listing of {listed}").as_str())
        );
    }

    // A second zone with its own data, and a zone the server does not serve.
    assert!(find(&outcomes, "192.0.2.2", "bl.test").result.listed);
    assert!(!find(&outcomes, "192.0.2.3", "bl.test").result.listed);
    let refused = find(&outcomes, "192.0.2.2", "not-served.test");
    assert!(!refused.result.listed);
    assert_eq!(
        refused.error.as_ref().map(|e| e.kind()),
        Some(ProbeErrorKind::Refused)
    );

    let mut counters = ZoneErrorCounters::default();
    counters.record_all(&outcomes);
    let zen = counters.zone("zen.spamhaus.org").unwrap();
    assert_eq!(
        (
            zen.queries,
            zen.listings,
            zen.not_listed,
            zen.errors_total()
        ),
        (13, 5, 3, 5)
    );
    assert_eq!(
        counters.errors("not-served.test", ProbeErrorKind::Refused),
        13
    );
}

#[tokio::test]
async fn results_feed_the_engine_with_the_pool_zone_rules() {
    let Some(server) = start_rbldnsd("results_feed_the_engine_with_the_pool_zone_rules") else {
        return;
    };
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet");
    let mut fleet = Fleet::new(manifests::load_dir(&examples).unwrap(), None).unwrap();
    let pool = fleet
        .pools
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("bulk"))
        .unwrap();
    let plan = plan_from_settings(&pool.spec.reputation.dnsbl).unwrap();
    let zen: Vec<ZoneRules> = plan
        .zones
        .into_iter()
        .filter(|z| z.zone() == "zen.spamhaus.org")
        .collect();
    assert_eq!(zen.len(), 1, "the example pool probes zen.spamhaus.org");

    let ips = [
        ip("203.0.113.10"),
        ip("203.0.113.11"),
        ip("203.0.113.12"),
        ip("203.0.113.13"),
    ];
    let outcomes = DnsblProbe::new(resolver(server.address), 4)
        .round(&ips, &zen, &clock)
        .await;
    let mut by_ip = std::collections::BTreeMap::new();
    for outcome in &outcomes {
        let transitions = fleet
            .observe(&outcome.ip.to_string(), outcome.signal(), clock())
            .unwrap();
        by_ip.insert(outcome.ip.to_string(), transitions);
    }
    // .10 is listed: every provider of the pool is blocked, with the TXT as evidence.
    let blocked = &by_ip["203.0.113.10"];
    assert!(!blocked.is_empty());
    assert!(blocked
        .iter()
        .all(|t| t.to == ReputationState::Blocked && t.reason == Reason::DnsblListed));
    assert!(blocked[0]
        .evidence
        .as_deref()
        .unwrap()
        .contains("SBL listing of 203.0.113.10"));
    // .11 answers 127.255.255.254 and .12 the PBL code the pool's listingCodes
    // leave out: both are probe errors and move nothing; .13 is clean.
    for quiet in ["203.0.113.11", "203.0.113.12", "203.0.113.13"] {
        assert!(by_ip[quiet].is_empty(), "{quiet}: {:?}", by_ip[quiet]);
    }
    let twelve = outcomes.iter().find(|o| o.ip == ips[2]).unwrap();
    assert_eq!(
        twelve.error.as_ref().map(|e| e.kind()),
        Some(ProbeErrorKind::UnexpectedCode)
    );
    let status = fleet
        .pools
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("bulk"))
        .unwrap();
    let stored = &status.status.as_ref().unwrap().ips;
    let eleven = stored.iter().find(|s| s.address == "203.0.113.11").unwrap();
    assert!(!eleven.dnsbl[0].listed);
    assert!(eleven.dnsbl[0]
        .error
        .as_deref()
        .unwrap()
        .contains("127.255.255.254"));
}

#[tokio::test]
async fn many_ips_keep_their_order_under_bounded_concurrency_and_the_cache_spares_queries() {
    let Some(server) = start_rbldnsd(
        "many_ips_keep_their_order_under_bounded_concurrency_and_the_cache_spares_queries",
    ) else {
        return;
    };
    let zones = vec![
        ZoneRules::with_defaults("zen.spamhaus.org").unwrap(),
        ZoneRules::with_defaults("bl.test").unwrap(),
    ];
    let ips: Vec<IpAddr> = (0..=255u8).map(|i| IpAddr::from([192, 0, 2, i])).collect();
    let probe = DnsblProbe::new(resolver(server.address), 16);
    let mut cache = ResultCache::new(
        jiff::SignedDuration::from_secs(900),
        jiff::SignedDuration::from_secs(60),
    );
    let first = probe.round_cached(&ips, &zones, &mut cache, &clock).await;
    assert_eq!(first.len(), 512);
    for (i, outcome) in first.iter().enumerate() {
        assert_eq!(outcome.ip, ips[i / 2]);
        assert_eq!(outcome.result.zone, zones[i % 2].zone());
        assert!(!outcome.cached);
    }
    assert_eq!(
        first.iter().filter(|o| o.result.listed).count(),
        3,
        "192.0.2.2 in both zones, .3 in one, none else"
    );

    // The same round again, through a resolver that never answers: everything
    // comes from the cache, so nothing times out.
    let silent = FakeServer::start(|_| None);
    let deaf = DnsblProbe::new(
        Resolver::new(silent.address, Duration::from_millis(100), 1),
        16,
    );
    let started = Instant::now();
    let again = deaf.round_cached(&ips, &zones, &mut cache, &clock).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "512 cached answers and no question asked (asking would time out for over 3 s)"
    );
    assert!(again.iter().all(|o| o.cached));
    assert_eq!(
        again.iter().map(|o| &o.result).collect::<Vec<_>>(),
        first.iter().map(|o| &o.result).collect::<Vec<_>>()
    );

    // Once stale, they are asked again: the silent resolver makes them errors.
    let later = || clock() + jiff::SignedDuration::from_secs(900);
    let stale = deaf
        .round_cached(&ips[..2], &zones, &mut cache, &later)
        .await;
    assert!(stale.iter().all(|o| !o.cached && !o.result.listed));
    assert!(stale
        .iter()
        .all(|o| o.error.as_ref().map(|e| e.kind()) == Some(ProbeErrorKind::Timeout)));
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_timeout_not_a_listing() {
    let silent = FakeServer::start(|_| None);
    let probe = DnsblProbe::new(
        Resolver::new(silent.address, Duration::from_millis(150), 2),
        4,
    );
    let zones = [ZoneRules::with_defaults("zen.spamhaus.org").unwrap()];
    let started = Instant::now();
    let outcomes = probe
        .round(&[ip("127.0.0.2"), ip("192.0.2.2")], &zones, &clock)
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by attempts x timeout"
    );
    for o in &outcomes {
        assert!(!o.result.listed);
        assert_eq!(
            o.error.as_ref().map(|e| e.kind()),
            Some(ProbeErrorKind::Timeout)
        );
        let text = o.result.error.as_deref().unwrap();
        assert!(
            text.starts_with("timeout: no answer from 127.0.0.1:"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn servfail_is_a_probe_error() {
    let failing = FakeServer::start(servfail);
    let probe = DnsblProbe::new(
        Resolver::new(failing.address, Duration::from_millis(500), 1),
        4,
    );
    let zones = [ZoneRules::with_defaults("zen.spamhaus.org").unwrap()];
    let outcomes = probe.round(&[ip("127.0.0.2")], &zones, &clock).await;
    assert!(!outcomes[0].result.listed);
    assert_eq!(
        outcomes[0].error.as_ref().map(|e| e.kind()),
        Some(ProbeErrorKind::ServFail)
    );
    assert!(outcomes[0]
        .result
        .error
        .as_deref()
        .unwrap()
        .starts_with("SERVFAIL from 127.0.0.1:"));
}

#[test]
fn the_command_prints_the_documented_json_and_names_bad_arguments() {
    let Some(server) =
        start_rbldnsd("the_command_prints_the_documented_json_and_names_bad_arguments")
    else {
        return;
    };
    let nameserver = server.address.to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_mailfleet"))
        .args([
            "probe",
            "dnsbl",
            "--nameserver",
            &nameserver,
            "--zone",
            "zen.spamhaus.org",
            "--zone",
            "bl.test",
        ])
        .args([
            "192.0.2.2",
            "192.0.2.1",
            "192.0.2.254",
            "2001:db8::2",
            "--format",
            "json",
            "--timeout-ms",
            "1000",
        ])
        .output()
        .unwrap();
    // One answer is a list's error code: that zone was not really asked, so
    // the round exits 1 (naming it) and still prints every result.
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("zen.spamhaus.org"));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), 8);
    let first = &results[0];
    assert_eq!(first["ip"], "192.0.2.2");
    assert_eq!(first["zone"], "zen.spamhaus.org");
    assert_eq!(first["listed"], true);
    assert_eq!(first["codes"].as_array().unwrap().len(), 2);
    assert!(first["reason"]
        .as_str()
        .unwrap()
        .contains("XBL listing of 192.0.2.2"));
    assert_eq!(first["error"], serde_json::Value::Null);
    let error = &results[4];
    assert_eq!(
        (error["ip"].as_str(), error["zone"].as_str()),
        (Some("192.0.2.254"), Some("zen.spamhaus.org"))
    );
    assert_eq!(error["listed"], false);
    assert!(error["error"].as_str().unwrap().contains("127.255.255.254"));
    for result in results {
        let keys: Vec<&str> = result
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 6, "{keys:?}");
    }

    let table = Command::new(env!("CARGO_BIN_EXE_mailfleet"))
        .args([
            "probe",
            "dnsbl",
            "--nameserver",
            &nameserver,
            "--zone",
            "zen.spamhaus.org",
            "192.0.2.2",
        ])
        .output()
        .unwrap();
    assert!(table.status.success());
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.starts_with("IP "), "{text}");
    assert!(text.contains("LISTED"), "{text}");

    let bad = Command::new(env!("CARGO_BIN_EXE_mailfleet"))
        .args([
            "probe",
            "dnsbl",
            "--nameserver",
            &nameserver,
            "--zone",
            "zen.spamhaus.org",
            "192.0.2.2",
            "192.0.2.999",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("IP argument `192.0.2.999`"), "{stderr}");
}
