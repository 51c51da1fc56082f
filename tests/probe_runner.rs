//! `SignalProbes::run_due` over the example fleet: DNSBL rounds against a real
//! rbldnsd on 127.0.0.1 (a listing, clean IPs, and a zone that answers only
//! error codes), SNDS polls from a local feed server over HTTP and HTTPS with
//! the key (and a CA bundle) read from Secret files. Checks the signals (and
//! what the engine makes of them), the `DnsblHealthy` verdict, the schedule,
//! the problems and the metrics.
//!
//! rbldnsd comes from scripts/ensure-tools.sh. Without it the rbldnsd tests
//! fail with the install command, unless MAILFLEET_SKIP_RBLDNSD=1 (then they
//! say loudly that they were skipped).

#[path = "support/test_tls.rs"]
mod test_tls;
use test_tls::{localhost_tls, TestTls};

mod support;

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use mailfleet::api::conditions::ConditionStatus;
use mailfleet::api::{DnsblZone, ReputationState, SecretKeySelector, SenderPool, SndsFeedSettings};
use mailfleet::fleet::Fleet;
use mailfleet::manifests;
use mailfleet::probe::dnsbl::parse_nameserver;
use mailfleet::probe::snds::RetryPolicy;
use mailfleet::probe::{ProbeOptions, ProbeRound, SecretsDir, SignalProbes};
use mailfleet::reputation::engine::{Reason, Signal};
use support::rbldnsd::{self, Rbldnsd};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const KEY: &str = "5a4b3c2d-1e0f-4a5b-8c7d-6e5f4a3b2c1d";

/// zen.spamhaus.org: 203.0.113.12 listed (SBL), the other pool IPs clean.
const SBL: &str = "\
:127.0.0.2:Listed in SBL, see https://check.spamhaus.example/query/ip/$
203.0.113.12
";

/// broken.test answers every pool IP with 127.255.255.254, the error code of
/// a list queried through a public resolver: never a listing.
const BROKEN: &str = "\
203.0.113.0/24 :127.255.255.254:query through a public resolver refused
198.51.100.0/24 :127.255.255.254:query through a public resolver refused
";

const STATUS: &str = "\
203.0.113.10,203.0.113.10,Yes,\"Blocked due to user complaints or other evidence of spamming\"\r
";

const DATA: &str = "\
203.0.113.11,11/5/2021 12:00 AM,11/5/2021 11:59 PM,61203,60877,61544,RED,12.3%,11/5/2021 8:12 AM,11/5/2021 9:40 PM,214,mta1.example.jp,bounce@example.jp,\r
";

const LOGIN_PAGE: &str =
    "<!DOCTYPE html><html><head><title>Sign in to your account</title></head></html>";

fn t0() -> Timestamp {
    "2026-11-29T06:00:00Z".parse().unwrap()
}

fn at(seconds: i64) -> Timestamp {
    t0().checked_add(SignedDuration::from_secs(seconds))
        .unwrap()
}

// ---- rbldnsd -------------------------------------------------------------

/// `None`: rbldnsd is missing and MAILFLEET_SKIP_RBLDNSD=1 asked to skip.
fn start_rbldnsd(test: &str) -> Option<Rbldnsd> {
    rbldnsd::start(
        test,
        &[("sbl", SBL), ("broken", BROKEN)],
        &["zen.spamhaus.org:ip4set:sbl", "broken.test:ip4set:broken"],
        "12.113.0.203.zen.spamhaus.org.",
    )
}

// ---- the SNDS feed server ------------------------------------------------

/// A feed server on 127.0.0.1, plain HTTP or TLS with a certificate from a CA
/// made here. `/good/...` serves the files, `/html/...` a login page; a
/// request without the key gets 403. Stopped when dropped.
struct FeedServer {
    address: SocketAddr,
    tls: bool,
    ca_pem: Option<String>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FeedServer {
    async fn start(tls: bool) -> Self {
        let (acceptor, ca_pem) = if tls {
            let (acceptor, ca_pem) = tls_acceptor();
            (Some(acceptor), Some(ca_pem))
        } else {
            (None, None)
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let hits_in = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, hits) = (acceptor.clone(), hits_in.clone());
                tokio::spawn(async move {
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(mut stream) = acceptor.accept(tcp).await {
                                serve(&mut stream, &hits).await;
                            }
                        }
                        None => {
                            let mut tcp = tcp;
                            serve(&mut tcp, &hits).await;
                        }
                    }
                });
            }
        });
        FeedServer {
            address,
            tls,
            ca_pem,
            hits,
            task,
        }
    }

    fn url(&self, scenario: &str, file: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/{scenario}/snds/{file}", self.address)
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
    let TestTls { acceptor, ca_pem } = localhost_tls("mailfleet test feed CA");
    (acceptor, ca_pem)
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    hits: &Mutex<HashMap<String, usize>>,
) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request);
    let target = text.split(' ').nth(1).unwrap_or("/").to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    *hits.lock().unwrap().entry(path.to_string()).or_default() += 1;
    let (status, content_type, body) = if !query.split('&').any(|p| p == format!("key={KEY}")) {
        (403, "text/plain", "Forbidden")
    } else if path.starts_with("/html/") {
        (200, "text/html; charset=utf-8", LOGIN_PAGE)
    } else if path.ends_with("/ipStatus.aspx") {
        (200, "text/csv", STATUS)
    } else if path.ends_with("/data.aspx") {
        (200, "text/csv", DATA)
    } else {
        (404, "text/plain", "not found")
    };
    let reply = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

// ---- the fleet -----------------------------------------------------------

fn example_fleet() -> Fleet {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet");
    Fleet::new(manifests::load_dir(&examples).unwrap(), None).unwrap()
}

fn zone(name: &str) -> DnsblZone {
    DnsblZone {
        zone: name.into(),
        listing_codes: Vec::new(),
        error_codes: Vec::new(),
        providers: Vec::new(),
    }
}

fn snds_settings(server: &FeedServer, scenario: &str) -> SndsFeedSettings {
    SndsFeedSettings {
        url: server.url(scenario, "ipStatus.aspx"),
        data_url: Some(server.url(scenario, "data.aspx")),
        key_secret_ref: SecretKeySelector {
            name: "snds-key".into(),
            key: "key".into(),
        },
        interval_seconds: 3600,
        ca_bundle_secret_ref: None,
    }
}

/// The `bulk` pool of the example fleet probing zen.spamhaus.org and
/// broken.test, and reading SNDS from `server`.
fn bulk_pool(fleet: &mut Fleet, server: &FeedServer, scenario: &str) -> usize {
    let index = fleet
        .pools
        .iter()
        .position(|p| p.metadata.name.as_deref() == Some("bulk"))
        .unwrap();
    let reputation = &mut fleet.pools[index].spec.reputation;
    reputation.dnsbl.zones = vec![zone("zen.spamhaus.org"), zone("broken.test")];
    reputation.dnsbl.interval_seconds = Some(900);
    reputation.feeds.snds = Some(snds_settings(server, scenario));
    index
}

/// A Secret folder as mounted volumes lay it out: DIR/<secret>/<key>.
fn secrets_dir(entries: &[(&str, &str, &str)]) -> (tempfile::TempDir, SecretsDir) {
    let dir = tempfile::tempdir().unwrap();
    for (secret, key, value) in entries {
        fs::create_dir_all(dir.path().join(secret)).unwrap();
        fs::write(dir.path().join(secret).join(key), value).unwrap();
    }
    let source = SecretsDir::new(dir.path());
    (dir, source)
}

fn options(resolver: SocketAddr) -> ProbeOptions {
    ProbeOptions {
        resolver: Some(parse_nameserver(&resolver.to_string()).unwrap()),
        dns_timeout: Duration::from_millis(500),
        feed_retry: RetryPolicy {
            attempts: 2,
            backoff: Duration::from_millis(10),
        },
        http_timeout: Duration::from_secs(2),
        ..ProbeOptions::default()
    }
}

fn dnsbl_signals<'a>(round: &'a ProbeRound, zone: &str) -> Vec<(&'a str, bool, Option<&'a str>)> {
    round
        .signals
        .iter()
        .filter_map(|(ip, signal)| match signal {
            Signal::Dnsbl(r) if r.zone == zone => Some((ip.as_str(), r.listed, r.error.as_deref())),
            _ => None,
        })
        .collect()
}

fn feed_signals(round: &ProbeRound) -> Vec<(&str, bool)> {
    round
        .signals
        .iter()
        .filter_map(|(ip, signal)| match signal {
            Signal::Feed(v) => Some((ip.as_str(), v.blocked)),
            _ => None,
        })
        .collect()
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no `{series}` in\n{text}"))
}

#[tokio::test]
async fn dnsbl_and_snds_rounds_feed_the_engine_on_their_schedules() {
    let Some(rbldnsd) = start_rbldnsd("dnsbl_and_snds_rounds_feed_the_engine_on_their_schedules")
    else {
        return;
    };
    let server = FeedServer::start(false).await;
    let mut fleet = example_fleet();
    bulk_pool(&mut fleet, &server, "good");
    let (_dir, secrets) = secrets_dir(&[("snds-key", "key", &format!("{KEY}\n"))]);
    let mut probes = SignalProbes::new(options(rbldnsd.address));

    let round = probes.run_due(&fleet.pools, &secrets, t0()).await;
    assert!(round.problems.is_empty(), "{:#?}", round.problems);

    // zen.spamhaus.org: one listing with its TXT reason, the rest clean.
    let zen = dnsbl_signals(&round, "zen.spamhaus.org");
    assert_eq!(zen.len(), 6, "{zen:?}");
    assert_eq!(
        zen.iter()
            .filter(|(_, listed, _)| *listed)
            .map(|s| s.0)
            .collect::<Vec<_>>(),
        vec!["203.0.113.12"]
    );
    assert!(zen.iter().all(|(_, _, error)| error.is_none()));
    let listing = round
        .signals
        .iter()
        .find_map(|(_, s)| match s {
            Signal::Dnsbl(r) if r.listed => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(listing.codes, vec!["127.0.0.2"]);
    assert_eq!(
        listing.reason.as_deref(),
        Some("Listed in SBL, see https://check.spamhaus.example/query/ip/203.0.113.12")
    );
    assert_eq!(
        listing.checked_at.0,
        t0(),
        "stamped with the caller's clock"
    );

    // broken.test: every answer an error, none a listing.
    let broken = dnsbl_signals(&round, "broken.test");
    assert_eq!(broken.len(), 6);
    assert!(broken
        .iter()
        .all(|(_, listed, error)| !listed && error.is_some_and(|e| e.contains("127.255.255.254"))));

    // SNDS: 203.0.113.10 blocked, the other IPv4 pool IPs cleared (the
    // reserve pool has no feed).
    let feeds = feed_signals(&round);
    assert_eq!(feeds.len(), 6, "{feeds:?}");
    assert_eq!(
        feeds
            .iter()
            .filter(|(_, b)| *b)
            .map(|f| f.0)
            .collect::<Vec<_>>(),
        vec!["203.0.113.10"]
    );
    assert_eq!(server.hits("/good/snds/ipStatus.aspx"), 1);
    assert_eq!(server.hits("/good/snds/data.aspx"), 1);

    // The zone that answers only errors makes DnsblHealthy False, naming it
    // and the fix.
    assert_eq!(round.dnsbl_health.len(), 1);
    let (pool, health) = &round.dnsbl_health[0];
    assert_eq!(pool, "mail/bulk");
    let health = health.as_ref().unwrap();
    assert_eq!(health.status, ConditionStatus::False);
    assert_eq!(health.reason, "ZoneAnswersOnlyErrors");
    assert!(
        health
            .message
            .contains("zone broken.test answered only errors")
            && health.message.contains("open_resolver 6")
            && health.message.contains("spec.reputation.dnsbl.resolver"),
        "{}",
        health.message
    );
    assert!(!health.message.contains("zen.spamhaus.org"));

    // Into the engine: the listing blocks 203.0.113.12 for every provider,
    // SNDS blocks 203.0.113.10 for microsoft only, errors move nothing.
    let mut moved = Vec::new();
    for (ip, signal) in round.signals.clone() {
        moved.extend(fleet.observe(&ip, signal, t0()).unwrap());
    }
    let blocked = |ip: &str| {
        let mut providers: Vec<(String, Reason)> = moved
            .iter()
            .filter(|t| t.ip == ip && t.to == ReputationState::Blocked)
            .map(|t| (t.provider.clone(), t.reason))
            .collect();
        providers.sort();
        providers
    };
    assert_eq!(
        blocked("203.0.113.10"),
        vec![("microsoft".to_string(), Reason::FeedBlocked)]
    );
    let twelve = blocked("203.0.113.12");
    assert_eq!(twelve.len(), fleet.known_providers.len(), "{twelve:?}");
    assert!(twelve.iter().all(|(_, r)| *r == Reason::DnsblListed));
    // SNDS's data file scores 203.0.113.11's mail RED (12.3 % complaints,
    // 214 trap hits): a signal that throttles it for microsoft, not a block.
    let eleven: Vec<(String, ReputationState, Reason)> = moved
        .iter()
        .filter(|t| t.ip == "203.0.113.11")
        .map(|t| (t.provider.clone(), t.to, t.reason))
        .collect();
    assert_eq!(
        eleven,
        vec![(
            "microsoft".to_string(),
            ReputationState::Throttled,
            Reason::FeedThrottled
        )]
    );
    assert!(moved
        .iter()
        .all(|t| ["203.0.113.10", "203.0.113.11", "203.0.113.12"].contains(&t.ip.as_str())));

    // Metrics.
    let text = mailfleet::metrics::render(&probes.metrics());
    assert_eq!(
        metric(
            &text,
            "mailfleet_dnsbl_queries_total{zone=\"zen.spamhaus.org\"}"
        ),
        6
    );
    assert_eq!(
        metric(
            &text,
            "mailfleet_dnsbl_listings_total{zone=\"zen.spamhaus.org\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &text,
            "mailfleet_dnsbl_listings_total{zone=\"broken.test\"}"
        ),
        0
    );
    assert_eq!(
        metric(
            &text,
            "mailfleet_dnsbl_probe_errors_total{zone=\"broken.test\",kind=\"open_resolver\"}"
        ),
        6
    );
    assert!(!text.contains("probe_errors_total{zone=\"zen.spamhaus.org\""));
    assert_eq!(
        metric(&text, "mailfleet_feed_polls_total{feed=\"snds\"}"),
        1
    );
    assert_eq!(
        metric(&text, "mailfleet_feed_poll_failures_total{feed=\"snds\"}"),
        0
    );
    assert_eq!(
        metric(
            &text,
            "mailfleet_feed_blocked_verdicts_total{feed=\"snds\"}"
        ),
        1
    );

    // The schedule: nothing before the DNSBL interval, then DNSBL only, then
    // SNDS at its own interval.
    assert_eq!(probes.next_due(), Some(at(900)));
    let quiet = probes.run_due(&fleet.pools, &secrets, at(899)).await;
    assert_eq!(quiet, ProbeRound::default());
    let second = probes.run_due(&fleet.pools, &secrets, at(900)).await;
    assert_eq!(dnsbl_signals(&second, "zen.spamhaus.org").len(), 6);
    assert!(feed_signals(&second).is_empty());
    assert_eq!(server.hits("/good/snds/ipStatus.aspx"), 1);
    assert_eq!(probes.next_due(), Some(at(1800)));
    let metrics = mailfleet::metrics::render(&probes.metrics());
    assert_eq!(
        metric(
            &metrics,
            "mailfleet_dnsbl_queries_total{zone=\"zen.spamhaus.org\"}"
        ),
        12
    );
    let mut now = 900;
    while now < 3600 {
        now += 900;
        probes.run_due(&fleet.pools, &secrets, at(now)).await;
    }
    assert_eq!(
        server.hits("/good/snds/ipStatus.aspx"),
        2,
        "polled again at 3600 s"
    );
    assert_eq!(
        metric(
            &mailfleet::metrics::render(&probes.metrics()),
            "mailfleet_feed_polls_total{feed=\"snds\"}"
        ),
        2
    );
}

#[tokio::test]
async fn a_login_page_or_a_missing_key_is_a_problem_never_a_block() {
    let Some(rbldnsd) = start_rbldnsd("a_login_page_or_a_missing_key_is_a_problem_never_a_block")
    else {
        return;
    };
    let server = FeedServer::start(false).await;
    let mut fleet = example_fleet();
    let bulk = bulk_pool(&mut fleet, &server, "html");
    fleet.pools[bulk].spec.reputation.dnsbl.zones = vec![zone("zen.spamhaus.org")];
    let (_dir, secrets) = secrets_dir(&[("snds-key", "key", KEY)]);
    let mut probes = SignalProbes::new(options(rbldnsd.address));

    let round = probes.run_due(&fleet.pools, &secrets, t0()).await;
    assert!(
        feed_signals(&round).is_empty(),
        "no verdict from a failed poll"
    );
    assert_eq!(round.problems.len(), 1, "{:#?}", round.problems);
    let problem = &round.problems[0];
    assert!(
        problem.starts_with(
            "mail/bulk: spec.reputation.feeds.snds: SNDS: the ip-status response is HTML, not CSV"
        ),
        "{problem}"
    );
    assert!(
        !problem.contains(KEY) && !problem.contains("key="),
        "{problem}"
    );
    assert_eq!(
        server.hits("/html/snds/ipStatus.aspx"),
        1,
        "HTML is not retried"
    );
    // The DNSBL round is not held back by the feed, and zen answers: True.
    let health = round.dnsbl_health[0].1.as_ref().unwrap();
    assert_eq!(health.status, ConditionStatus::True, "{health:?}");
    let text = mailfleet::metrics::render(&probes.metrics());
    assert_eq!(
        metric(
            &text,
            "mailfleet_feed_errors_total{feed=\"snds\",kind=\"html\"}"
        ),
        1
    );
    assert_eq!(
        metric(&text, "mailfleet_feed_poll_failures_total{feed=\"snds\"}"),
        1
    );

    // A failed poll is tried again after 300 s, not after the hour.
    assert_eq!(probes.next_due(), Some(at(300)));

    // The Secret gone: a problem naming the field and the file, counted.
    let (_empty, no_secrets) = secrets_dir(&[]);
    let round = probes.run_due(&fleet.pools, &no_secrets, at(300)).await;
    assert_eq!(round.problems.len(), 1, "{:#?}", round.problems);
    assert!(
        round.problems[0].starts_with(
            "mail/bulk: spec.reputation.feeds.snds.keySecretRef: cannot read key `key` of Secret mail/snds-key"
        ),
        "{}",
        round.problems[0]
    );
    assert_eq!(
        metric(
            &mailfleet::metrics::render(&probes.metrics()),
            "mailfleet_feed_errors_total{feed=\"snds\",kind=\"secret\"}"
        ),
        1
    );
}

#[tokio::test]
async fn https_feed_with_a_ca_bundle_from_a_secret() {
    let server = FeedServer::start(true).await;
    let mut fleet = example_fleet();
    let bulk = bulk_pool(&mut fleet, &server, "good");
    // No DNSBL here: only the feed.
    fleet.pools[bulk].spec.reputation.dnsbl.zones.clear();
    let ca_pem = server.ca_pem.clone().unwrap();
    let (_dir, secrets) = secrets_dir(&[
        ("snds-key", "key", KEY),
        ("feed-ca", "ca.crt", ca_pem.as_str()),
        ("feed-ca", "garbage.crt", "not a certificate"),
    ]);
    let unused_resolver: SocketAddr = "127.0.0.1:9".parse().unwrap();

    // Without the bundle, the private CA is not trusted: a TLS problem
    // naming the field to set.
    let mut probes = SignalProbes::new(options(unused_resolver));
    let round = probes.run_due(&fleet.pools, &secrets, t0()).await;
    assert!(round.signals.is_empty());
    assert_eq!(round.problems.len(), 1, "{:#?}", round.problems);
    assert!(
        round.problems[0].contains("not trusted")
            && round.problems[0].contains("caBundleSecretRef"),
        "{}",
        round.problems[0]
    );
    assert_eq!(
        metric(
            &mailfleet::metrics::render(&probes.metrics()),
            "mailfleet_feed_errors_total{feed=\"snds\",kind=\"tls\"}"
        ),
        1
    );

    // A bundle that holds no certificate is refused, naming the field.
    let snds = fleet.pools[bulk]
        .spec
        .reputation
        .feeds
        .snds
        .as_mut()
        .unwrap();
    snds.ca_bundle_secret_ref = Some(SecretKeySelector {
        name: "feed-ca".into(),
        key: "garbage.crt".into(),
    });
    let round = probes.run_due(&fleet.pools, &secrets, at(1)).await;
    assert_eq!(round.problems.len(), 1, "{:#?}", round.problems);
    assert!(
        round.problems[0].starts_with(
            "mail/bulk: spec.reputation.feeds.snds.caBundleSecretRef (key `garbage.crt` of Secret mail/feed-ca): the CA bundle holds no PEM certificate"
        ),
        "{}",
        round.problems[0]
    );

    // With the CA from its Secret, the HTTPS feed is read.
    let snds = fleet.pools[bulk]
        .spec
        .reputation
        .feeds
        .snds
        .as_mut()
        .unwrap();
    snds.ca_bundle_secret_ref = Some(SecretKeySelector {
        name: "feed-ca".into(),
        key: "ca.crt".into(),
    });
    let round = probes.run_due(&fleet.pools, &secrets, at(2)).await;
    assert!(round.problems.is_empty(), "{:#?}", round.problems);
    let feeds = feed_signals(&round);
    assert_eq!(feeds.len(), 6);
    assert_eq!(
        feeds
            .iter()
            .filter(|(_, b)| *b)
            .map(|f| f.0)
            .collect::<Vec<_>>(),
        vec!["203.0.113.10"]
    );
    let reason = round
        .signals
        .iter()
        .find_map(|(ip, s)| match s {
            Signal::Feed(v) if ip == "203.0.113.11" => v.reason.clone(),
            _ => None,
        })
        .unwrap();
    assert!(reason.contains("filter result RED"), "{reason}");
    assert!(round.dnsbl_health.is_empty(), "no zones, no DNSBL verdict");
    assert_eq!(probes.next_due(), Some(at(2 + 3600)));
}

#[test]
fn the_example_pool_is_what_the_tests_expect() {
    let fleet = example_fleet();
    let bulk: &SenderPool = fleet
        .pools
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("bulk"))
        .unwrap();
    let ips: Vec<&str> = bulk.spec.ips.iter().map(|i| i.address.as_str()).collect();
    assert_eq!(
        ips,
        vec![
            "203.0.113.10",
            "203.0.113.11",
            "203.0.113.12",
            "203.0.113.13",
            "203.0.113.14",
            "203.0.113.15"
        ]
    );
    assert_eq!(bulk.metadata.namespace.as_deref(), Some("mail"));
}

#[test]
fn the_crd_refuses_a_key_in_the_url_and_a_bad_interval() {
    use kube::CustomResourceExt;
    use mailfleet::api::validate::{crd_schema, validate};
    let schema = crd_schema(&SenderPool::crd());
    let manifest = |snds: serde_json::Value| {
        serde_json::json!({
            "apiVersion": "mailfleet.io/v1alpha1",
            "kind": "SenderPool",
            "metadata": {"name": "bulk", "namespace": "mail"},
            "spec": {
                "ips": [{"address": "203.0.113.10"}],
                "template": {},
                "reputation": {"feeds": {"snds": snds}},
            },
        })
    };
    let key_ref = serde_json::json!({"name": "snds-key", "key": "key"});
    let good = manifest(serde_json::json!({
        "url": "https://sendersupport.olc.protection.outlook.com/snds/ipStatus.aspx",
        "dataUrl": "http://snds-proxy.mail.svc/snds/data.aspx?date=110521",
        "keySecretRef": key_ref,
        "caBundleSecretRef": {"name": "feed-ca", "key": "ca.crt"},
    }));
    assert_eq!(validate(&schema, &good), vec![]);

    let violations = |snds: serde_json::Value| -> Vec<String> {
        validate(&schema, &manifest(snds))
            .iter()
            .map(|v| v.to_string())
            .collect()
    };
    let in_url = violations(serde_json::json!({
        "url": "https://sendersupport.olc.protection.outlook.com/snds/ipStatus.aspx?key=abc",
        "keySecretRef": key_ref,
    }));
    assert_eq!(in_url.len(), 1, "{in_url:?}");
    assert!(
        in_url[0].contains("url carries the SNDS key") && in_url[0].contains("keySecretRef"),
        "{in_url:?}"
    );
    let in_data_url = violations(serde_json::json!({
        "url": "https://h/ipStatus.aspx",
        "dataUrl": "https://h/data.aspx?date=1&KEY=abc",
        "keySecretRef": key_ref,
    }));
    assert!(
        in_data_url.len() == 1 && in_data_url[0].contains("dataUrl carries the SNDS key"),
        "{in_data_url:?}"
    );
    let ftp = violations(serde_json::json!({"url": "ftp://h/x", "keySecretRef": key_ref}));
    assert!(
        ftp.len() == 1 && ftp[0].contains("must start with https://"),
        "{ftp:?}"
    );
    let often = violations(serde_json::json!({
        "url": "https://h/x", "keySecretRef": key_ref, "intervalSeconds": 60,
    }));
    assert!(
        often.len() == 1 && often[0].contains("intervalSeconds"),
        "{often:?}"
    );
    let no_ref = violations(serde_json::json!({"url": "https://h/x"}));
    assert!(
        no_ref.len() == 1 && no_ref[0].contains("keySecretRef"),
        "{no_ref:?}"
    );
}
