//! The operator at scale (docs/BENCHMARKS.md, "Operator"): SenderPools of
//! many IPs (one ready pod each) and DomainRoutes in the fake API server,
//! `mailfleet operator` as its own process. Measures the initial convergence,
//! the operator's resident memory and the API writes of a steady fleet; then
//! every pod's agent is simulated over HTTP (its own bound token, a report
//! with delivery counts every interval) and it measures the API requests per
//! second by verb, the feedback answer time, and the time from a Blocked
//! transition to the last affected route status and EndpointSlice while
//! every agent reports. Ignored by `cargo test`; `bench/operator_scale.sh`
//! runs it in release mode.

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

/// Declared providers of the routes: the status is designed for every
/// builtin and 16 declared providers at most (api::compact).
const DECLARED_PROVIDERS: usize = 16;

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
            format!("prov-{:02}", (r / 5) % DECLARED_PROVIDERS)
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

/// The report of an agent that saw Microsoft's ban of its IP.
fn ban_report(pool: &str, ip: &str, pod: &str) -> FeedbackReport {
    let delivery = delivery_report(pool, ip, pod, 1, 1);
    FeedbackReport {
        totals: vec![TotalCount {
            provider: "microsoft".into(),
            outcome: Outcome::Deferred,
            category: Category::IpBlocklisted,
            count: 1,
        }],
        conclusive: vec![ConclusiveEvidence {
            provider: "microsoft".into(),
            reply: format!("550 5.7.606 Access denied, banned sending IP [{ip}]"),
            at: delivery.period.end,
            named_ip: ip.parse().ok(),
            pause_seconds: None,
        }],
        ..delivery
    }
}

async fn post(addr: &str, token: &str, report: &FeedbackReport) -> u16 {
    post_for_config(addr, token, report).await.0
}

/// Posts `report`; the status and the config version the answer names (an
/// agent reports the version it runs with its next report).
async fn post_for_config(
    addr: &str,
    token: &str,
    report: &FeedbackReport,
) -> (u16, Option<String>) {
    let body = serde_json::to_string(report).unwrap();
    let request = format!(
        "POST /v1/feedback HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // A refused or reset connection is status 0: an agent keeps the report.
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return (0, None);
    };
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, None);
    }
    let mut response = Vec::new();
    if stream.read_to_end(&mut response).await.is_err() {
        return (0, None);
    }
    let text = String::from_utf8_lossy(&response);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let version = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str::<Value>(body).ok())
        .and_then(|body| body["config"]["version"].as_str().map(str::to_string));
    (code, version)
}

/// A report of `count` deliveries to microsoft and google: what a sending
/// agent posts every interval.
fn delivery_report(pool: &str, ip: &str, pod: &str, sequence: u64, count: u64) -> FeedbackReport {
    let now = jiff::Timestamp::now();
    let row = |provider: &str| TotalCount {
        provider: provider.into(),
        outcome: Outcome::Delivered,
        category: Category::None,
        count,
    };
    FeedbackReport {
        api_version: FEEDBACK_API_VERSION.into(),
        agent: AgentIdentity {
            name: pod.into(),
            instance: "bench".into(),
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
        totals: vec![row("microsoft"), row("google")],
        conclusive: Vec::new(),
        lines: Default::default(),
        dropped: Default::default(),
        config_version: None,
        queue: None,
        drain: None,
        ip_binding: None,
        complaints: Vec::new(),
    }
}

/// A token shaped like a pod's projected token: a JWT whose `exp` is an
/// hour away (the operator trusts a review until then; the fake API server
/// reviews it by its whole text).
fn projected_token(pod: &str) -> String {
    use base64::Engine;
    let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let exp = jiff::Timestamp::now().as_second() + 3600;
    format!(
        "{}.{}.bench",
        enc(br#"{"alg":"RS256"}"#),
        enc(json!({ "sub": pod, "aud": ["mailfleet"], "exp": exp })
            .to_string()
            .as_bytes())
    )
}

/// What the simulated agents saw.
#[derive(Default)]
struct AgentLog {
    /// Answer time of every post in the window, microseconds.
    answers: Vec<u64>,
    /// Posts answered otherwise than 200, or not at all.
    failed: usize,
    /// Every status other than 200, with a count.
    codes: std::collections::BTreeMap<u16, usize>,
}

/// Every pod's agent: a post every `interval`, spread evenly over it,
/// each with its own token, until `stop`; answers are logged while `measure`.
fn start_agents(
    addr: &str,
    agents: Vec<(String, String, String, String)>,
    interval: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    measure: std::sync::Arc<std::sync::atomic::AtomicBool>,
    log: std::sync::Arc<std::sync::Mutex<AgentLog>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    use std::sync::atomic::Ordering;
    let n = agents.len().max(1) as u32;
    agents
        .into_iter()
        .enumerate()
        .map(|(index, (pool, ip, pod, token))| {
            let (addr, stop, measure, log) =
                (addr.to_string(), stop.clone(), measure.clone(), log.clone());
            tokio::spawn(async move {
                let start = tokio::time::Instant::now() + interval * index as u32 / n;
                let mut ticks = tokio::time::interval_at(start, interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut sequence = 0;
                // The config the agent runs: the one its last answer named.
                let mut config_version = None;
                while !stop.load(Ordering::Relaxed) {
                    ticks.tick().await;
                    sequence += 1;
                    let report = FeedbackReport {
                        config_version: config_version.clone(),
                        ..delivery_report(&pool, &ip, &pod, sequence, 3)
                    };
                    let sent = Instant::now();
                    let (code, answered) = tokio::time::timeout(
                        Duration::from_secs(30),
                        post_for_config(&addr, &token, &report),
                    )
                    .await
                    .unwrap_or((0, None));
                    if answered.is_some() {
                        config_version = answered;
                    }
                    // A refused report is sent again with the next (an
                    // agent keeps it): the sequence stays.
                    if code != 200 {
                        sequence -= 1;
                    }
                    if measure.load(Ordering::Relaxed) {
                        let mut log = log.lock().unwrap();
                        log.answers.push(sent.elapsed().as_micros() as u64);
                        if code != 200 {
                            log.failed += 1;
                            *log.codes.entry(code).or_default() += 1;
                        }
                    }
                }
            })
        })
        .collect()
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[at] as f64 / 1000.0
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
    // Each report waits up to 2 s for its pool's status write: room for
    // half the agents at once (a quarter wait at any time).
    let max_connections = env_usize("SCALE_MAX_CONNECTIONS", (pools * ips / 2).max(1024));
    // SCALE_OPERATOR_WRAPPER: a program given the operator's command line
    // (a heap profiler, bench/heaptrack_exec.sh); it must exec the operator,
    // so that the RSS read from /proc is still the operator's.
    let mut command = match std::env::var("SCALE_OPERATOR_WRAPPER") {
        Ok(wrapper) if !wrapper.is_empty() => {
            let mut c = Command::new(wrapper);
            c.arg(env!("CARGO_BIN_EXE_mailfleet"));
            c
        }
        _ => Command::new(env!("CARGO_BIN_EXE_mailfleet")),
    };
    let child = command
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
            "--max-connections",
            &max_connections.to_string(),
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

    // Every agent reports at its interval, each with its own bound token,
    // every report counting deliveries (the busiest steady state: no
    // heartbeat that costs nothing). Pod 0 of pool-000 is left out: it
    // posts the ban below.
    let interval = Duration::from_millis(env_usize("SCALE_INTERVAL_MS", 5000) as u64);
    let agent_secs = env_usize("SCALE_AGENT_SECS", 60) as u64;
    let mut agents = Vec::new();
    for p in 0..pools {
        for i in 0..ips {
            if (p, i) == (0, 0) {
                continue;
            }
            let token = projected_token(&pod_of(p, i));
            api.allow_pod_token(&token, NS, &pod_of(p, i));
            agents.push((pool_name(p), ip_of(p, i), pod_of(p, i), token));
        }
    }
    let agent_count = agents.len();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let measure = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let log = std::sync::Arc::new(std::sync::Mutex::new(AgentLog::default()));
    let tasks = start_agents(
        &addr,
        agents,
        interval,
        stop.clone(),
        measure.clone(),
        log.clone(),
    );
    // Warm-up: every token reviewed once, every pool's first batch written.
    tokio::time::sleep(interval * 3).await;
    api.clear_requests();
    measure.store(true, std::sync::atomic::Ordering::Relaxed);
    let window_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(agent_secs / 2)).await;

    // A Blocked transition while every agent reports: (10.0.0.1, microsoft)
    // of pool-000. The routes of microsoft on pool-000 must drop it from
    // status and slices.
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
    // Measured either way: a block that does not reach the routes under
    // this load fails the run after the figures are printed.
    let took = blocked_at.elapsed();

    let rest = Duration::from_secs(agent_secs).saturating_sub(window_start.elapsed());
    tokio::time::sleep(rest).await;
    measure.store(false, std::sync::atomic::Ordering::Relaxed);
    let window = window_start.elapsed().as_secs_f64();
    let requests = api.requests();
    let (rss, hwm) = rss_kib(&child.0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in tasks {
        task.abort();
    }

    let mut by_verb: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &requests {
        let verb = if r.is_token_review() {
            "POST tokenreviews".to_string()
        } else if r.query.contains("watch=true") || r.query.contains("watch=1") {
            "WATCH".to_string()
        } else {
            let kind = r
                .path
                .split('/')
                .filter(|s| !s.is_empty())
                .find(|s| {
                    [
                        "senderpools",
                        "domainroutes",
                        "deployments",
                        "configmaps",
                        "services",
                        "endpointslices",
                        "pods",
                        "events",
                        "leases",
                    ]
                    .contains(s)
                })
                .unwrap_or("other");
            let sub = if r.path.ends_with("/status") {
                "/status"
            } else {
                ""
            };
            format!("{} {kind}{sub}", r.method)
        };
        *by_verb.entry(verb).or_default() += 1;
    }
    let log = std::mem::take(&mut *log.lock().unwrap());
    let mut answers = log.answers;
    answers.sort_unstable();
    println!(
        "{agent_count} agents, one report of deliveries every {} ms each ({:.0} reports/s), measured over {window:.0} s:",
        interval.as_millis(),
        agent_count as f64 / interval.as_secs_f64()
    );
    println!(
        "  API requests: {:.1}/s ({} in all)",
        requests.len() as f64 / window,
        requests.len()
    );
    for (verb, n) in &by_verb {
        println!("    {verb}: {:.2}/s ({n})", *n as f64 / window);
    }
    println!(
        "  feedback answers: {} posts, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; not answered 200: {} {:?}",
        answers.len(),
        percentile(&answers, 0.5),
        percentile(&answers, 0.99),
        percentile(&answers, 1.0),
        log.failed,
        log.codes
    );
    if rerouted {
        println!(
            "  Blocked transition -> last of {} affected routes' status and EndpointSlice updated: {} ms (feedback answered in {} ms)",
            affected.len(),
            took.as_millis(),
            answered.as_millis()
        );
    } else {
        println!(
            "  Blocked transition: the {} affected routes were NOT rewritten within {} ms (feedback answered in {} ms)",
            affected.len(),
            took.as_millis(),
            answered.as_millis()
        );
    }
    println!(
        "  operator RSS while every agent reports: {} MiB (peak {} MiB)",
        rss / 1024,
        hwm / 1024
    );
    drop(child);
    assert!(
        rerouted,
        "the affected routes were not rewritten under load"
    );
}
