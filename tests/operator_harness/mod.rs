//! What the operator scenario tests share: a fleet seeded into the fake API
//! server, the operator running in-process against it, sender pods, and
//! feedback posts over real HTTP.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use jiff::Timestamp;
use mailfleet::agent::report::{
    AgentIdentity, ConclusiveEvidence, FeedbackReport, Period, PoolRef, TotalCount,
    FEEDBACK_API_VERSION,
};
use mailfleet::operator::context::Settings;
use mailfleet::operator::run::{start, Operator, OperatorOptions};
use mailfleet::routing::postfix::ip_slug;
use mailfleet::vocab::{Category, Outcome};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::support::fake_api::FakeApi;

pub const NS: &str = "mail";
pub const CRD: &str = "mailfleet.io/v1alpha1";
/// How long a test waits for the operator to converge before failing.
pub const CONVERGE: Duration = Duration::from_secs(10);

/// `count` addresses from 203.0.113.10 up.
pub fn bulk_ips(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("203.0.113.{}", 10 + i))
        .collect()
}

pub const RESERVE_IPS: [&str; 2] = ["198.51.100.20", "198.51.100.21"];

pub fn pool(name: &str, ips: &[String]) -> Value {
    let ips: Vec<Value> = ips.iter().map(|ip| json!({ "address": ip })).collect();
    json!({
        "apiVersion": CRD, "kind": "SenderPool",
        "metadata": { "name": name, "namespace": NS },
        "spec": {
            "ips": ips,
            "replicasPerIp": { "min": 1, "max": 2 },
            "template": { "spec": { "containers": [
                { "name": "postfix", "image": "registry.example.net/mail/postfix-sender:3.7" }
            ] } }
        }
    })
}

pub fn route(name: &str, provider: &str, matcher: Value, fallback: Value) -> Value {
    json!({
        "apiVersion": CRD, "kind": "DomainRoute",
        "metadata": { "name": name, "namespace": NS },
        "spec": {
            "provider": provider,
            "match": matcher,
            "pool": "bulk",
            "fallback": fallback,
            "whenNoHealthyIp": "Fallback"
        }
    })
}

/// Pool `bulk` with `ips` addresses, pool `reserve` with two, and the routes
/// `microsoft` and `google`, both on `bulk` with `reserve` as fallback.
pub fn seed_fleet(api: &FakeApi, ips: usize) {
    api.insert(pool("bulk", &bulk_ips(ips)));
    let reserve: Vec<String> = RESERVE_IPS.iter().map(|s| s.to_string()).collect();
    api.insert(pool("reserve", &reserve));
    api.insert(route(
        "microsoft",
        "microsoft",
        json!({ "mxHostSuffixes": [".mail.protection.outlook.com"] }),
        json!([{ "pool": "reserve" }]),
    ));
    api.insert(route(
        "google",
        "google",
        json!({ "mxHostSuffixes": [".google.com"] }),
        json!([{ "pool": "reserve" }]),
    ));
}

/// The name of the sender pod the tests give an IP.
pub fn pod_name(pool: &str, ip: &str) -> String {
    format!("mf-{pool}-{}-0", ip_slug(ip.parse().unwrap()))
}

/// One ready sender pod per IP, labelled as the operator's Deployments label them.
pub fn seed_pods(api: &FakeApi, pool: &str, ips: &[String]) {
    for ip in ips {
        let name = pod_name(pool, ip);
        api.insert(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": NS,
                "labels": {
                    "mailfleet.io/pool": pool,
                    "mailfleet.io/ip": ip_slug(ip.parse().unwrap()),
                    "app.kubernetes.io/managed-by": "mailfleet-operator"
                },
                "annotations": { "mailfleet.io/source-ip": ip }
            },
            "spec": {
                "serviceAccountName": "sender",
                "containers": [{ "name": "postfix", "image": "postfix" }]
            }
        }));
        api.set_pod_ready(NS, &name, true);
    }
}

pub fn options() -> OperatorOptions {
    OperatorOptions {
        namespaces: vec![NS.to_string()],
        leader_election: false,
        concurrency: 4,
        settings: Settings {
            identity: "mailfleet-operator-test".into(),
            ..Settings::default()
        },
        ..OperatorOptions::default()
    }
}

/// Starts the operator against `api` and waits until it has listed everything.
pub async fn start_operator(api: &FakeApi, options: OperatorOptions) -> Operator {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let operator = start(api.client(), options, listener, None)
        .await
        .expect("the operator starts");
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while !operator.context().is_synced() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the operator never listed its resources"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    operator
}

pub fn names(objects: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = objects
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    out.sort();
    out
}

pub fn deployments(api: &FakeApi, pool: &str) -> Vec<String> {
    names(&api.list_matching(
        "apps/v1",
        "Deployment",
        Some(NS),
        &format!("mailfleet.io/pool={pool}"),
    ))
}

pub fn config_maps(api: &FakeApi, pool: &str) -> Vec<String> {
    names(&api.list_matching(
        "v1",
        "ConfigMap",
        Some(NS),
        &format!("mailfleet.io/pool={pool}"),
    ))
}

pub fn route_status(api: &FakeApi, route: &str) -> Value {
    api.get(CRD, "DomainRoute", NS, route)
        .map(|r| r["status"].clone())
        .unwrap_or(Value::Null)
}

pub fn pool_status(api: &FakeApi, pool: &str) -> Value {
    api.get(CRD, "SenderPool", NS, pool)
        .map(|r| r["status"].clone())
        .unwrap_or(Value::Null)
}

/// The IPs a route's status lists as targets.
pub fn target_ips(api: &FakeApi, route: &str) -> Vec<String> {
    let mut ips: Vec<String> = route_status(api, route)["targets"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| t["ip"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    ips.sort();
    ips
}

pub fn route_mode(api: &FakeApi, route: &str) -> String {
    route_status(api, route)["mode"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// The pods the EndpointSlices of a route point at.
pub fn slice_pods(api: &FakeApi, route: &str) -> Vec<String> {
    let slices = api.list_matching(
        "discovery.k8s.io/v1",
        "EndpointSlice",
        Some(NS),
        &format!("kubernetes.io/service-name=mf-route-{route}"),
    );
    let mut pods: Vec<String> = slices
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["targetRef"]["name"].as_str().map(str::to_string))
        .collect();
    pods.sort();
    pods
}

/// The state of (ip, provider) in a pool's status, read as the operator
/// reads it (plain pairs are packed in `healthyPairs`, not listed).
pub fn pair_state(api: &FakeApi, pool: &str, ip: &str, provider: &str) -> Option<String> {
    let status: mailfleet::api::SenderPoolStatus =
        serde_json::from_value(pool_status(api, pool)).ok()?;
    let pair = status
        .ips
        .iter()
        .find(|i| i.address == ip)?
        .pair(provider)?;
    match serde_json::to_value(pair.state).ok()? {
        Value::String(state) => Some(state),
        _ => None,
    }
}

/// An agent report of one `550 5.7.606` reply from Microsoft naming `ip`.
pub fn ban_report(pool: &str, ip: &str, sequence: u64) -> FeedbackReport {
    let now = Timestamp::now();
    let reply = format!("550 5.7.606 Access denied, banned sending IP [{ip}]");
    FeedbackReport {
        api_version: FEEDBACK_API_VERSION.into(),
        agent: AgentIdentity {
            name: pod_name(pool, ip),
            instance: format!("instance-{ip}"),
        },
        sequence,
        source_ip: ip.parse().unwrap(),
        pool: PoolRef {
            namespace: NS.into(),
            name: pool.into(),
        },
        period: Period {
            start: now,
            end: now,
        },
        totals: vec![TotalCount {
            provider: "microsoft".into(),
            outcome: Outcome::Deferred,
            category: Category::IpBlocklisted,
            count: 1,
        }],
        conclusive: vec![ConclusiveEvidence {
            provider: "microsoft".into(),
            reply,
            at: now,
            named_ip: ip.parse().ok(),
            pause_seconds: None,
        }],
        lines: Default::default(),
        dropped: Default::default(),
        config_version: None,
        queue: None,
        drain: None,
        ip_binding: None,
        complaints: Vec::new(),
    }
}

/// POSTs a report to the operator's port; returns the status and the body.
pub async fn post_feedback(
    addr: SocketAddr,
    token: Option<&str>,
    report: &FeedbackReport,
) -> (u16, String) {
    let body = serde_json::to_string(report).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST /v1/feedback HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// GETs a path of the operator's port.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Waits until `condition` holds, or fails naming `what`.
pub async fn converge(api: &FakeApi, what: &str, condition: impl FnMut(&FakeApi) -> bool) {
    assert!(
        api.wait_for(condition, CONVERGE).await,
        "timed out waiting for: {what}"
    );
}

/// Waits until the operator has written nothing for `quiet` (or fails).
pub async fn settle(api: &FakeApi, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let before = api.write_count();
        tokio::time::sleep(quiet).await;
        if api.write_count() == before {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the operator kept writing: {:?}",
            api.writes()
                .iter()
                .rev()
                .take(10)
                .map(|w| format!("{} {}", w.method, w.path))
                .collect::<Vec<_>>()
        );
    }
}
