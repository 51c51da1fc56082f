//! The operator at scale (docs/BENCHMARKS.md, "Operator"): 200 SenderPools x
//! 8 IPs (one ready pod each) and 500 DomainRoutes in the fake API server,
//! `mailfleet operator` as its own process. Measures the initial convergence,
//! the time from a Blocked transition to the last affected route status and
//! EndpointSlice, the operator's resident memory, and the API writes during
//! a steady state. Ignored by `cargo test`; `bench/operator_scale.sh` runs it
//! in release mode.

mod support;

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mailfleet::agent::report::{
    AgentIdentity, ConclusiveEvidence, FeedbackReport, Period, PoolRef, TotalCount,
    FEEDBACK_API_VERSION,
};
use mailfleet::routing::postfix::ip_slug;
use mailfleet::vocab::{Category, Outcome};
use serde_json::{json, Value};
use support::fake_api::FakeApi;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "bench";
const CRD: &str = "mailfleet.io/v1alpha1";
const PROVIDERS: [&str; 4] = ["microsoft", "google", "yahoo", "apple"];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pool_name(p: usize) -> String {
    format!("pool-{p:03}")
}

fn ip_of(p: usize, i: usize) -> String {
    format!("10.{}.{}.{}", p / 250, p % 250, i + 1)
}

fn pod_of(p: usize, i: usize) -> String {
    format!("sender-{p:03}-{i}")
}

fn seed(api: &FakeApi, pools: usize, ips: usize, routes: usize) {
    for p in 0..pools {
        let addresses: Vec<Value> = (0..ips)
            .map(|i| json!({ "address": ip_of(p, i) }))
            .collect();
        api.insert(json!({
            "apiVersion": CRD, "kind": "SenderPool",
            "metadata": { "name": pool_name(p), "namespace": NS },
            "spec": {
                "ips": addresses,
                "replicasPerIp": { "min": 1, "max": 2 },
                "template": { "spec": { "containers": [
                    { "name": "postfix", "image": "registry.example.net/mail/postfix-sender:3.7" }
                ] } }
            }
        }));
        for i in 0..ips {
            let name = pod_of(p, i);
            api.insert(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": name, "namespace": NS, "labels": {
                    "mailfleet.io/pool": pool_name(p),
                    "mailfleet.io/ip": ip_slug(ip_of(p, i).parse().unwrap()),
                } },
                "spec": { "serviceAccountName": "sender",
                          "containers": [{ "name": "postfix", "image": "postfix" }] }
            }));
            api.set_pod_ready(NS, &name, true);
        }
    }
    for r in 0..routes {
        let provider = if r % 5 < 4 {
            PROVIDERS[r % 5].to_string()
        } else {
            format!("prov-{r:03}")
        };
        api.insert(json!({
            "apiVersion": CRD, "kind": "DomainRoute",
            "metadata": { "name": format!("route-{r:03}"), "namespace": NS },
            "spec": {
                "provider": provider,
                "match": { "domains": [format!("r{r:03}.example")] },
                "pool": pool_name(r % pools),
                "fallback": [{ "pool": pool_name((r + 7) % pools) }]
            }
        }));
    }
}

fn kubeconfig(api: &FakeApi, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let mut file = std::fs::File::create(&path).unwrap();
    write!(
        file,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {NS}\ncurrent-context: fake\n",
        api.url()
    )
    .unwrap();
    path
}

/// Kills the operator process however the test ends.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(child: &Child) -> (u64, u64) {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn status_of(api: &FakeApi, kind: &str, name: &str) -> Value {
    api.get(CRD, kind, NS, name)
        .map(|o| o["status"].clone())
        .unwrap_or(Value::Null)
}

fn slice_pods(api: &FakeApi, route: &str) -> Vec<String> {
    api.list_matching(
        "discovery.k8s.io/v1",
        "EndpointSlice",
        Some(NS),
        &format!("kubernetes.io/service-name=mf-route-{route}"),
    )
    .iter()
    .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
    .filter_map(|e| e["targetRef"]["name"].as_str().map(str::to_string))
    .collect()
}

fn ban_report(pool: &str, ip: &str, pod: &str) -> FeedbackReport {
    let now = jiff::Timestamp::now();
    FeedbackReport {
        api_version: FEEDBACK_API_VERSION.into(),
        agent: AgentIdentity {
            name: pod.into(),
            instance: "bench".into(),
        },
        sequence: 1,
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
            reply: format!("550 5.7.606 Access denied, banned sending IP [{ip}]"),
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
    }
}

async fn post(addr: &str, token: &str, report: &FeedbackReport) -> u16 {
    let body = serde_json::to_string(report).unwrap();
    let request = format!(
        "POST /v1/feedback HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run bench/operator_scale.sh"]
async fn operator_scale() {
    let pools = env_usize("SCALE_POOLS", 200);
    let ips = env_usize("SCALE_IPS", 8);
    let routes = env_usize("SCALE_ROUTES", 500);
    let steady_secs = env_usize("SCALE_STEADY_SECS", 60) as u64;
    let api = FakeApi::start().await;
    let seeding = Instant::now();
    seed(&api, pools, ips, routes);
    println!(
        "seeded {pools} pools x {ips} IPs ({} pods), {routes} routes in {:.1?}",
        pools * ips,
        seeding.elapsed()
    );

    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(&api, dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let log_level = std::env::var("SCALE_LOG").unwrap_or_else(|_| "warn".into());
    let child = Command::new(env!("CARGO_BIN_EXE_mailfleet"))
        .args([
            "operator",
            "--no-leader-election",
            "--namespace",
            NS,
            "--http-addr",
            &addr,
            "--log-level",
            &log_level,
            "--log-format",
            "text",
        ])
        .env("KUBECONFIG", &config)
        .env("POD_NAMESPACE", NS)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the mailfleet binary runs");
    let child = Reaper(child);

    // Initial convergence: every route with a status and slices, every pool
    // with its status and workloads.
    let started = Instant::now();
    // Polled twice a second: checking on every change would cost the
    // operator CPU (the fake API server runs in this process).
    let deadline =
        Instant::now() + Duration::from_secs(env_usize("SCALE_CONVERGE_SECS", 600) as u64);
    let converged = loop {
        let done = api.list("apps/v1", "Deployment").len() == pools * ips
            && api.list("discovery.k8s.io/v1", "EndpointSlice").len() >= routes
            && api
                .list(CRD, "DomainRoute")
                .iter()
                .all(|r| r["status"]["mode"].is_string())
            && api
                .list(CRD, "SenderPool")
                .iter()
                .all(|p| p["status"]["readyIps"] == ips);
        if done {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if !converged {
        let missing: Vec<String> = api
            .list(CRD, "DomainRoute")
            .iter()
            .filter(|r| !r["status"]["mode"].is_string())
            .map(|r| r["metadata"]["name"].to_string())
            .take(5)
            .collect();
        panic!(
            "the operator did not converge: {} deployments, {} slices, routes without status: {missing:?}",
            api.list("apps/v1", "Deployment").len(),
            api.list("discovery.k8s.io/v1", "EndpointSlice").len()
        );
    }
    println!(
        "initial convergence: {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Settle, then count writes over the steady state.
    loop {
        let before = api.write_count();
        tokio::time::sleep(Duration::from_secs(2)).await;
        if api.write_count() == before {
            break;
        }
    }
    let (rss, hwm) = rss_kib(&child.0);
    println!(
        "operator RSS after convergence: {} MiB (peak {} MiB)",
        rss / 1024,
        hwm / 1024
    );
    api.clear_requests();
    tokio::time::sleep(Duration::from_secs(steady_secs)).await;
    let steady_writes = api.writes();
    println!(
        "API writes over {steady_secs} s of steady state: {} {:?}",
        steady_writes.len(),
        steady_writes
            .iter()
            .take(5)
            .map(|w| format!("{} {}", w.method, w.path))
            .collect::<Vec<_>>()
    );

    // A Blocked transition: (10.0.0.1, microsoft) of pool-000. The routes of
    // microsoft on pool-000 must drop it from status and slices.
    let (pool, ip, pod) = (pool_name(0), ip_of(0, 0), pod_of(0, 0));
    api.allow_pod_token("bench-token", NS, &pod);
    let affected: Vec<String> = (0..routes)
        .filter(|r| r % pools == 0 && r % 5 == 0)
        .map(|r| format!("route-{r:03}"))
        .collect();
    let blocked_at = Instant::now();
    let code = post(&addr, "bench-token", &ban_report(&pool, &ip, &pod)).await;
    let answered = blocked_at.elapsed();
    assert_eq!(code, 200);
    let rerouted = api
        .wait_for(
            |api| {
                affected.iter().all(|route| {
                    let status = status_of(api, "DomainRoute", route);
                    let targets = status["targets"].as_array().cloned().unwrap_or_default();
                    !targets.iter().any(|t| t["ip"] == ip.as_str())
                        && !slice_pods(api, route).contains(&pod)
                })
            },
            Duration::from_secs(60),
        )
        .await;
    assert!(rerouted, "the affected routes were not rewritten");
    let took = blocked_at.elapsed();
    println!(
        "Blocked transition -> last of {} affected routes' status and EndpointSlice updated: {} ms (feedback answered in {} ms)",
        affected.len(),
        took.as_millis(),
        answered.as_millis()
    );
    let (rss, hwm) = rss_kib(&child.0);
    println!(
        "operator RSS after the block: {} MiB (peak {} MiB)",
        rss / 1024,
        hwm / 1024
    );
    drop(child);
}
