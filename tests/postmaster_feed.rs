//! The Postmaster Tools feed against a local HTTPS server on 127.0.0.1 with a
//! certificate made in the test: a token endpoint that checks the signed
//! assertion, and `trafficStats` answers in the API's shape (paged, with a
//! BAD IP and a spam rate over the threshold), then HTML instead of JSON,
//! entries missing fields, 429, a refused token and 401. Every failure is
//! counted and gives no verdict; none blocks.

#[path = "support/test_tls.rs"]
mod test_tls;
use test_tls::{localhost_tls, TestTls};

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jiff::Timestamp;
use mailfleet::api::{ReputationState, SenderPool, SenderPoolSpec};
use mailfleet::fleet::Fleet;
use mailfleet::manifests;
use mailfleet::probe::postmaster::{
    PostmasterFeed, PostmasterPoller, ServiceAccount, POSTMASTER_SCOPE, TOKEN_RENEW_MARGIN_SECONDS,
};
use mailfleet::probe::snds::{FeedClient, RetryPolicy, TrustRoots};
use mailfleet::probe::{ProbeOptions, SecretError, SecretSource, SignalProbes};
use mailfleet::reputation::engine::{Reason, Signal};

const TEST_KEY: &str = include_str!("fixtures/postmaster/test-rsa-key.pem");
const EMAIL: &str = "postmaster-reader@mail-project.iam.gserviceaccount.com";
const ACCESS_TOKEN: &str = "ya29.c.test-access-token";

fn now() -> Timestamp {
    "2026-12-07T09:00:00Z".parse().unwrap()
}

fn pool_ips() -> Vec<IpAddr> {
    (10..=12).map(|i| IpAddr::from([203, 0, 113, i])).collect()
}

/// Page 1 of news.example.com: an older day, then a page token.
const GOOD_PAGE_1: &str = r#"{
  "trafficStats": [
    {
      "name": "domains/news.example.com/trafficStats/20261204",
      "userReportedSpamRatio": 0.0008,
      "ipReputations": [
        {"reputation": "HIGH", "ipCount": "3", "sampleIps": ["203.0.113.10", "203.0.113.11", "203.0.113.12"]}
      ],
      "domainReputation": "HIGH",
      "spfSuccessRatio": 1,
      "dkimSuccessRatio": 1,
      "dmarcSuccessRatio": 1
    }
  ],
  "nextPageToken": "Cg8yMDI2MTIwNQ=="
}"#;

/// Page 2: the newest day, with one of our IPs BAD and a spam rate of 0.42 %.
const GOOD_PAGE_2: &str = r#"{
  "trafficStats": [
    {
      "name": "domains/news.example.com/trafficStats/20261206",
      "userReportedSpamRatio": 0.0042,
      "userReportedSpamRatioLowerBound": 0.0039,
      "userReportedSpamRatioUpperBound": 0.0045,
      "ipReputations": [
        {"reputation": "REPUTATION_CATEGORY_UNSPECIFIED"},
        {"reputation": "HIGH", "ipCount": "1", "sampleIps": ["203.0.113.10"]},
        {"reputation": "MEDIUM", "ipCount": "1", "sampleIps": ["203.0.113.12"]},
        {"reputation": "BAD", "ipCount": "1", "sampleIps": ["203.0.113.11"]}
      ],
      "domainReputation": "MEDIUM",
      "deliveryErrors": [{"errorClass": "PERMANENT_ERROR", "errorType": "REPUTATION_REJECT", "errorRatio": 0.01}]
    }
  ]
}"#;

/// A domain Gmail rates BAD whose IPs it rates HIGH, with a low spam rate.
const BAD_DOMAIN: &str = r#"{
  "trafficStats": [
    {
      "name": "domains/shady.example.com/trafficStats/20261206",
      "userReportedSpamRatio": 0.0001,
      "ipReputations": [
        {"reputation": "HIGH", "ipCount": "2", "sampleIps": ["203.0.113.10", "203.0.113.11"]}
      ],
      "domainReputation": "BAD"
    }
  ]
}"#;

/// Entries without a name, with an unknown category, a ratio out of range.
const MISSING_FIELDS: &str = r#"{
  "trafficStats": [
    {"userReportedSpamRatio": 0.2},
    {
      "name": "domains/partial.example.com/trafficStats/20261206",
      "userReportedSpamRatio": "high",
      "ipReputations": [{"ipCount": "2"}, {"reputation": "HIGH", "ipCount": "1", "sampleIps": ["203.0.113.10"]}]
    }
  ]
}"#;

const SIGN_IN: &str =
    "<!DOCTYPE html><html><head><title>Sign in - Google Accounts</title></head></html>";

struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
}

fn reply(status: u16, content_type: &'static str, body: &str) -> Reply {
    Reply {
        status,
        content_type,
        body: body.to_string(),
    }
}

/// What the server saw, for the assertions.
#[derive(Default)]
struct Seen {
    hits: HashMap<String, usize>,
    /// Assertions whose signature, issuer, audience and scope were right.
    good_assertions: usize,
    bad_assertions: usize,
}

struct PostmasterServer {
    address: SocketAddr,
    ca_pem: String,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PostmasterServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PostmasterServer {
    async fn start() -> Self {
        let TestTls { acceptor, ca_pem } = localhost_tls("mailfleet test Postmaster CA");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let public_key = account().public_key_der();
        let (seen_in, token_url) = (seen.clone(), format!("https://{address}/token"));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, seen, key, token_url) = (
                    acceptor.clone(),
                    seen_in.clone(),
                    public_key.clone(),
                    token_url.clone(),
                );
                tokio::spawn(async move { serve(acceptor, tcp, &seen, &key, &token_url).await });
            }
        });
        PostmasterServer {
            address,
            ca_pem,
            seen,
            task,
        }
    }

    fn base(&self) -> String {
        format!("https://{}", self.address)
    }

    fn feed(&self, token_path: &str, domains: &[&str]) -> PostmasterFeed {
        PostmasterFeed {
            api_url: self.base(),
            token_url: Some(format!("{}/{token_path}", self.base())),
            domains: domains.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn client(&self) -> FeedClient {
        let roots = TrustRoots::none().with_pem(self.ca_pem.as_bytes()).unwrap();
        let mut client = FeedClient::new(&roots).unwrap();
        client.timeout = Duration::from_millis(2000);
        client
    }

    fn hits(&self, what: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .hits
            .get(what)
            .copied()
            .unwrap_or(0)
    }
}

async fn serve(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    seen: &Mutex<Seen>,
    public_key: &[u8],
    token_url: &str,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut tls) = acceptor.accept(tcp).await else {
        return;
    };
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    while request.len() < head_end + length {
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let body = String::from_utf8_lossy(&request[head_end..]).to_string();
    let answer = answer_for(&head, &body, seen, public_key, token_url);
    let text = format!(
        "HTTP/1.1 {} X\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        answer.status,
        answer.content_type,
        answer.body.len(),
        answer.body
    );
    let _ = tls.write_all(text.as_bytes()).await;
    let _ = tls.shutdown().await;
}

fn answer_for(
    head: &str,
    body: &str,
    seen: &Mutex<Seen>,
    public_key: &[u8],
    token_url: &str,
) -> Reply {
    let json = "application/json; charset=UTF-8";
    let first = head.lines().next().unwrap_or_default();
    let target = first.split(' ').nth(1).unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut seen = seen.lock().unwrap();
    let key = match path.split('/').nth(3) {
        Some(domain) if path.starts_with("/v1/domains/") => {
            let page = if query.contains("pageToken=") {
                "2"
            } else {
                "1"
            };
            format!("{domain}/{page}")
        }
        _ => path.trim_start_matches('/').to_string(),
    };
    *seen.hits.entry(key.clone()).or_default() += 1;
    let hit = seen.hits[&key];
    if first.starts_with("POST /token") {
        let good = assertion_is_good(body, public_key, token_url);
        if good {
            seen.good_assertions += 1;
        } else {
            seen.bad_assertions += 1;
            return reply(
                400,
                json,
                r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
            );
        }
        return match path {
            "/token" => reply(
                200,
                json,
                &format!(
                    r#"{{"access_token":"{ACCESS_TOKEN}","expires_in":3599,"token_type":"Bearer"}}"#
                ),
            ),
            "/token-refused" => reply(
                400,
                json,
                r#"{"error":"invalid_grant","error_description":"Invalid grant: account not found"}"#,
            ),
            _ => reply(404, "text/plain", "not found"),
        };
    }
    let authorized = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {ACCESS_TOKEN}")));
    if !authorized {
        return reply(
            401,
            json,
            r#"{"error":{"code":401,"message":"Request is missing required authentication credential.","status":"UNAUTHENTICATED"}}"#,
        );
    }
    if !(query.contains("startDate.year=2026&startDate.month=12&startDate.day=4")
        && query.contains("endDate.year=2026&endDate.month=12&endDate.day=8"))
    {
        return reply(400, json, r#"{"error":{"code":400,"message":"bad dates"}}"#);
    }
    match key.as_str() {
        "news.example.com/1" => reply(200, json, GOOD_PAGE_1),
        "news.example.com/2" if query.contains("pageToken=Cg8yMDI2MTIwNQ%3D%3D") => {
            reply(200, json, GOOD_PAGE_2)
        }
        "quiet.example.com/1" => reply(200, json, "{}"),
        "shady.example.com/1" => reply(200, json, BAD_DOMAIN),
        "partial.example.com/1" => reply(200, json, MISSING_FIELDS),
        "html.example.com/1" => reply(200, "text/html; charset=UTF-8", SIGN_IN),
        "busy.example.com/1" => reply(
            429,
            json,
            r#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}"#,
        ),
        "flaky.example.com/1" if hit == 1 => reply(503, "text/plain", "Service Unavailable"),
        "flaky.example.com/1" => reply(200, json, GOOD_PAGE_2.replace("news.", "flaky.").as_str()),
        // A token that the API stops accepting before it expires: refused
        // once, then the same token's successor is accepted.
        "expired.example.com/1" if hit == 1 => reply(
            401,
            json,
            r#"{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED"}}"#,
        ),
        "expired.example.com/1" => {
            reply(200, json, GOOD_PAGE_2.replace("news.", "expired.").as_str())
        }
        "revoked.example.com/1" => reply(
            401,
            json,
            r#"{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED"}}"#,
        ),
        _ => reply(404, json, r#"{"error":{"code":404,"status":"NOT_FOUND"}}"#),
    }
}

/// The JWT bearer grant's form body: right grant type, and an assertion
/// signed by the test key for this endpoint with the Postmaster scope.
fn assertion_is_good(body: &str, public_key: &[u8], token_url: &str) -> bool {
    let mut grant = None;
    let mut assertion = None;
    for pair in body.split('&') {
        match pair.split_once('=') {
            Some(("grant_type", v)) => grant = Some(v),
            Some(("assertion", v)) => assertion = Some(v),
            _ => {}
        }
    }
    if grant != Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer") {
        return false;
    }
    let Some(parts) = assertion.map(|a| a.split('.').collect::<Vec<_>>()) else {
        return false;
    };
    if parts.len() != 3 {
        return false;
    }
    let Ok(signature) = URL_SAFE_NO_PAD.decode(parts[2]) else {
        return false;
    };
    let verifier = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public_key,
    );
    let signed = format!("{}.{}", parts[0], parts[1]);
    if verifier.verify(signed.as_bytes(), &signature).is_err() {
        return false;
    }
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["iss"] == EMAIL
        && claims["aud"]
            .as_str()
            .is_some_and(|a| a.starts_with(token_url))
        && claims["scope"] == POSTMASTER_SCOPE
        // Issued at the poll's injected time: `now()`, or the later polls
        // of the token cache test (within two hours of it).
        && claims["iat"]
            .as_i64()
            .is_some_and(|iat| (now().as_second()..=now().as_second() + 7200).contains(&iat))
}

fn key_file(token_uri: &str) -> Vec<u8> {
    serde_json::json!({
        "type": "service_account",
        "project_id": "mail-project",
        "private_key_id": "0123456789abcdef",
        "private_key": TEST_KEY,
        "client_email": EMAIL,
        "client_id": "100000000000000000000",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    })
    .to_string()
    .into_bytes()
}

fn account() -> ServiceAccount {
    ServiceAccount::from_key_file(&key_file("https://oauth2.googleapis.com/token")).unwrap()
}

fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        backoff: Duration::from_millis(10),
    }
}

fn poller(server: &PostmasterServer, token_path: &str, domains: &[&str]) -> PostmasterPoller {
    PostmasterPoller::new(
        server.feed(token_path, domains),
        account(),
        quick_retry(),
        server.client(),
    )
}

#[tokio::test]
async fn pages_are_followed_a_bad_ip_blocks_and_the_spam_rate_throttles() {
    let server = PostmasterServer::start().await;
    let mut postmaster = poller(&server, "token", &["news.example.com", "quiet.example.com"]);
    let poll = postmaster.poll(&pool_ips(), now()).await.unwrap();
    assert_eq!(server.hits("news.example.com/2"), 1, "page 2 was read");
    assert_eq!(server.seen.lock().unwrap().good_assertions, 1);
    assert_eq!(poll.days.len(), 1);
    assert_eq!(poll.days[0].date, "20261206");
    assert!(poll.domain_errors.is_empty());
    let v = |i: usize| &poll.verdicts.verdicts[i].verdict;
    assert_eq!(poll.verdicts.verdicts.len(), 3);
    assert!(v(1).blocked);
    assert_eq!(
        (v(1).feed.as_str(), v(1).provider.as_str()),
        ("postmaster", "google")
    );
    assert!(!v(0).blocked && !v(2).blocked);
    assert_eq!(
        v(0).scores.as_ref().unwrap().complaint_basis_points,
        Some(42)
    );
    assert!(
        v(2).reason
            .as_deref()
            .unwrap()
            .contains("reputation MEDIUM"),
        "{:?}",
        v(2)
    );

    // Into the engine: (.11, google) Blocked by the feed; the others
    // throttled for the spam rate (0.42 % over the 0.3 % threshold).
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet");
    let mut fleet = Fleet::new(manifests::load_dir(&examples).unwrap(), None).unwrap();
    let mut moved = Vec::new();
    for v in &poll.verdicts.verdicts {
        moved.extend(fleet.observe(&v.ip.to_string(), v.signal(), now()).unwrap());
    }
    assert!(moved.iter().all(|t| t.provider == "google"), "{moved:?}");
    let to = |ip: &str| {
        moved
            .iter()
            .find(|t| t.ip == ip)
            .map(|t| (t.to, t.reason))
            .unwrap_or_else(|| panic!("{ip} did not move: {moved:?}"))
    };
    assert_eq!(
        to("203.0.113.11"),
        (ReputationState::Blocked, Reason::FeedBlocked)
    );
    assert_eq!(
        to("203.0.113.10"),
        (ReputationState::Throttled, Reason::FeedThrottled)
    );

    let c = postmaster.counters();
    assert_eq!((c.polls, c.successful_polls, c.blocked_verdicts), (1, 1, 1));
    assert_eq!((c.retries, c.malformed_rows, c.withheld_clears), (0, 0, 0));
}

#[tokio::test]
async fn html_instead_of_json_fails_that_domain_and_clears_nobody() {
    let server = PostmasterServer::start().await;
    let mut postmaster = poller(&server, "token", &["news.example.com", "html.example.com"]);
    let poll = postmaster.poll(&pool_ips(), now()).await.unwrap();
    assert_eq!(poll.verdicts.verdicts.len(), 1, "only the BAD IP: {poll:?}");
    assert!(poll.verdicts.verdicts[0].verdict.blocked);
    assert_eq!(poll.verdicts.withheld_clears, 2);
    assert_eq!(poll.domain_errors.len(), 1);
    assert_eq!(poll.domain_errors[0].1.kind(), "html");
    let c = postmaster.counters();
    assert_eq!(
        (c.errors.get("html"), c.data_failures, c.withheld_clears),
        (Some(&1), 1, 2)
    );

    // Alone, the HTML domain fails the poll: no verdict at all.
    let mut alone = poller(&server, "token", &["html.example.com"]);
    let err = alone.poll(&pool_ips(), now()).await.unwrap_err();
    assert_eq!(err.kind(), "html");
    assert!(err.to_string().contains("HTML, not JSON"), "{err}");
    let c = alone.counters();
    assert_eq!((c.failed_polls, c.errors.get("html")), (1, Some(&1)));
}

#[tokio::test]
async fn entries_missing_fields_are_skipped_and_counted() {
    let server = PostmasterServer::start().await;
    let mut postmaster = poller(&server, "token", &["partial.example.com"]);
    let poll = postmaster.poll(&pool_ips(), now()).await.unwrap();
    // One entry without a name, a ratio that is text, a category without a name.
    assert_eq!(postmaster.counters().malformed_rows, 3);
    assert_eq!(poll.days.len(), 1);
    assert!(poll.verdicts.verdicts.iter().all(|v| !v.verdict.blocked));
    assert!(poll
        .verdicts
        .verdicts
        .iter()
        .all(|v| v.verdict.scores.is_none()));
}

#[tokio::test]
async fn rate_limits_are_retried_then_counted_never_a_block() {
    let server = PostmasterServer::start().await;
    let mut postmaster = poller(&server, "token", &["busy.example.com"]);
    let err = postmaster.poll(&pool_ips(), now()).await.unwrap_err();
    assert_eq!(err.kind(), "rate_limited");
    assert!(err.to_string().contains("HTTP 429"), "{err}");
    assert_eq!(server.hits("busy.example.com/1"), 3);
    let c = postmaster.counters();
    assert_eq!(
        (c.retries, c.failed_polls, c.errors.get("rate_limited")),
        (2, 1, Some(&1))
    );

    // A 503 that passes on the second try is a retry, not a failure.
    let mut flaky = poller(&server, "token", &["flaky.example.com"]);
    let poll = flaky.poll(&pool_ips(), now()).await.unwrap();
    assert_eq!(flaky.counters().retries, 1);
    assert_eq!(poll.verdicts.verdicts.len(), 3);
}

#[tokio::test]
async fn refused_tokens_and_401_are_clear_failures_that_show_no_secret() {
    let server = PostmasterServer::start().await;
    let mut refused = poller(&server, "token-refused", &["news.example.com"]);
    let err = refused.poll(&pool_ips(), now()).await.unwrap_err();
    assert_eq!(err.kind(), "token");
    let text = err.to_string();
    assert!(
        text.contains("HTTP 400: invalid_grant Invalid grant: account not found"),
        "{text}"
    );
    assert!(!text.contains("PRIVATE") && !text.contains("eyJ"), "{text}");
    assert_eq!(server.hits("news.example.com/1"), 0);

    let mut revoked = poller(&server, "token", &["revoked.example.com"]);
    let err = revoked.poll(&pool_ips(), now()).await.unwrap_err();
    assert_eq!(err.kind(), "unauthorized");
    assert!(err.to_string().contains("HTTP 401"), "{err}");
    assert!(!err.to_string().contains(ACCESS_TOKEN), "{err}");
    assert_eq!(revoked.counters().errors.get("unauthorized"), Some(&1));
}

#[tokio::test]
async fn the_access_token_is_kept_until_shortly_before_it_expires() {
    let server = PostmasterServer::start().await;
    let at = |seconds: i64| {
        now()
            .checked_add(jiff::SignedDuration::from_secs(seconds))
            .unwrap()
    };
    let mut first = poller(&server, "token", &["quiet.example.com"]);
    first.poll(&pool_ips(), now()).await.unwrap();
    assert_eq!(server.hits("token"), 1);
    // The next poll (a new poller, as the runner makes one per poll) keeps
    // the token while more than the margin of its 3599 s is left.
    let mut cache = first.into_token_cache();
    for seconds in [60, 1800, 3599 - TOKEN_RENEW_MARGIN_SECONDS - 1] {
        let mut next = poller(&server, "token", &["quiet.example.com"]).with_token_cache(cache);
        next.poll(&pool_ips(), at(seconds)).await.unwrap();
        assert_eq!(server.hits("token"), 1, "at +{seconds} s");
        cache = next.into_token_cache();
    }
    let mut late = poller(&server, "token", &["quiet.example.com"]).with_token_cache(cache);
    late.poll(&pool_ips(), at(3599 - TOKEN_RENEW_MARGIN_SECONDS))
        .await
        .unwrap();
    assert_eq!(server.hits("token"), 2, "renewed within the margin");
    // Another token endpoint (or account) does not use it.
    let other = poller(&server, "token-refused", &["quiet.example.com"])
        .with_token_cache(late.into_token_cache());
    let mut other = other;
    assert!(other.poll(&pool_ips(), at(3600)).await.is_err());
    assert_eq!(server.hits("token-refused"), 1);
}

#[tokio::test]
async fn a_refused_token_is_dropped_and_fetched_again_once() {
    let server = PostmasterServer::start().await;
    let mut postmaster = poller(&server, "token", &["expired.example.com"]);
    let poll = postmaster.poll(&pool_ips(), now()).await.unwrap();
    assert_eq!(server.hits("token"), 2, "a new token after the 401");
    assert_eq!(server.hits("expired.example.com/1"), 2);
    assert!(poll.domain_errors.is_empty(), "{poll:?}");
    assert_eq!(poll.days.len(), 1);
    assert!(postmaster.counters().errors.is_empty());

    // Refused again with the new token: one retry only, then the domain fails.
    let mut revoked = poller(&server, "token", &["revoked.example.com"]);
    revoked.poll(&pool_ips(), now()).await.unwrap_err();
    assert_eq!(server.hits("revoked.example.com/1"), 2);
    assert_eq!(server.hits("token"), 4);
}

/// Secrets from a map, as the operator reads them from the API server.
struct MapSecrets(BTreeMap<(String, String), Vec<u8>>);

impl SecretSource for MapSecrets {
    async fn secret(&self, ns: &str, name: &str, key: &str) -> Result<Vec<u8>, SecretError> {
        self.0
            .get(&(name.to_string(), key.to_string()))
            .cloned()
            .ok_or_else(|| SecretError::NoKey {
                namespace: ns.into(),
                name: name.into(),
                key: key.into(),
            })
    }
}

#[tokio::test]
async fn the_probes_poll_a_pools_postmaster_feed_with_its_secrets() {
    let server = PostmasterServer::start().await;
    let spec: SenderPoolSpec = serde_json::from_value(serde_json::json!({
        "ips": [{"address": "203.0.113.10"}, {"address": "203.0.113.11"}],
        "template": {},
        "reputation": {"feeds": {"postmaster": {
            "serviceAccountSecretRef": {"name": "postmaster-sa", "key": "key.json"},
            "domains": ["news.example.com"],
            "url": server.base(),
            "caBundleSecretRef": {"name": "postmaster-ca", "key": "ca.crt"},
        }}}
    }))
    .unwrap();
    let mut pool = SenderPool::new("bulk", spec);
    pool.metadata.namespace = Some("mail".into());
    let secrets = MapSecrets(BTreeMap::from([
        (
            ("postmaster-sa".to_string(), "key.json".to_string()),
            key_file(&format!("{}/token", server.base())),
        ),
        (
            ("postmaster-ca".to_string(), "ca.crt".to_string()),
            server.ca_pem.clone().into_bytes(),
        ),
    ]));
    let mut probes = SignalProbes::new(ProbeOptions {
        feed_retry: quick_retry(),
        http_timeout: Duration::from_secs(2),
        ..ProbeOptions::default()
    });
    let round = probes.run_due(&[pool.clone()], &secrets, now()).await;
    assert!(round.problems.is_empty(), "{:?}", round.problems);
    let blocked: Vec<&str> = round
        .signals
        .iter()
        .filter(|(_, s)| matches!(s, Signal::Feed(v) if v.blocked && v.provider == "google"))
        .map(|(ip, _)| ip.as_str())
        .collect();
    assert_eq!(blocked, ["203.0.113.11"]);
    assert_eq!(round.signals.len(), 2);
    // Not due again until the interval (default six hours) has passed.
    assert!(probes
        .run_due(&[pool.clone()], &secrets, now())
        .await
        .signals
        .is_empty());
    let metrics = mailfleet::metrics::render(&probes.metrics());
    assert!(
        metrics.contains("mailfleet_feed_blocked_verdicts_total{feed=\"postmaster\"} 1"),
        "{metrics}"
    );

    assert!(
        metrics.contains("mailfleet_postmaster_domain_reputation{pool=\"mail/bulk\",domain=\"news.example.com\",reputation=\"MEDIUM\"} 1"),
        "{metrics}"
    );

    // A domain rated BAD: a warning naming the domain, the gauge, and no IP
    // marked (its IPs are HIGH: Gmail judges the domain, not them).
    let mut shady = pool.clone();
    shady
        .spec
        .reputation
        .feeds
        .postmaster
        .as_mut()
        .unwrap()
        .domains = vec!["shady.example.com".into()];
    let round = probes.run_due(&[shady.clone()], &secrets, now()).await;
    assert!(
        round
            .signals
            .iter()
            .all(|(_, s)| matches!(s, Signal::Feed(v) if !v.blocked)),
        "{:?}",
        round.signals
    );
    assert_eq!(round.problems.len(), 1, "{:?}", round.problems);
    assert!(
        round.problems[0].contains("`shady.example.com`")
            && round.problems[0].contains("reputation BAD on 20261206")
            && round.problems[0].contains("no IP is marked"),
        "{:?}",
        round.problems
    );
    let metrics = mailfleet::metrics::render(&probes.metrics());
    assert!(
        metrics.contains("mailfleet_postmaster_domain_reputation{pool=\"mail/bulk\",domain=\"shady.example.com\",reputation=\"BAD\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("domain=\"news.example.com\""),
        "a domain no longer polled leaves: {metrics}"
    );

    // A key file that is not one: counted, named, polled again later.
    let broken = MapSecrets(BTreeMap::from([(
        ("postmaster-sa".to_string(), "key.json".to_string()),
        b"{\"type\": \"service_account\"}".to_vec(),
    )]));
    let mut probes = SignalProbes::new(ProbeOptions::default());
    let round = probes.run_due(&[pool], &broken, now()).await;
    assert!(round.signals.is_empty());
    assert!(
        round.problems[0].contains("spec.reputation.feeds.postmaster.serviceAccountSecretRef")
            && round.problems[0].contains("`client_email` is missing"),
        "{:?}",
        round.problems
    );
    assert_eq!(probes.postmaster_counters().errors.get("key"), Some(&1));
}
