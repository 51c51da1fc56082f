//! The block → re-route story through the operator's feedback endpoint, with
//! the real controllers running against the fake API server.

mod operator_harness;
mod support;

use std::time::{Duration, Instant};

use operator_harness::*;
use support::fake_api::FakeApi;

/// Eight bulk IPs, two reserve IPs, a ready pod for each; the operator
/// started and both routes served by all of bulk.
async fn fleet_with_pods() -> (FakeApi, mailfleet::operator::run::Operator) {
    let api = FakeApi::start().await;
    seed_fleet(&api, 8);
    pods_and_operator(api).await
}

/// The pods of `seed_fleet`'s pools, the operator started and converged.
async fn pods_and_operator(api: FakeApi) -> (FakeApi, mailfleet::operator::run::Operator) {
    seed_pods(&api, "bulk", &bulk_ips(8));
    let reserve: Vec<String> = RESERVE_IPS.iter().map(|s| s.to_string()).collect();
    seed_pods(&api, "reserve", &reserve);
    let operator = start_operator(&api, options()).await;
    converge(&api, "both routes on the eight bulk pods", |api| {
        slice_pods(api, "microsoft").len() == 8
            && slice_pods(api, "google").len() == 8
            && target_ips(api, "microsoft").len() == 8
            && pool_status(api, "bulk")["readyIps"] == 8
            && pool_status(api, "reserve")["readyIps"] == 2
    })
    .await;
    settle(&api, Duration::from_millis(300)).await;
    (api, operator)
}

fn token_for(api: &FakeApi, pool: &str, ip: &str) -> String {
    let token = format!("token-{pool}-{ip}");
    api.allow_pod_token(&token, NS, &pod_name(pool, ip));
    token
}

async fn block(api: &FakeApi, addr: std::net::SocketAddr, pool: &str, ip: &str, sequence: u64) {
    let token = token_for(api, pool, ip);
    let (status, body) = post_feedback(addr, Some(&token), &ban_report(pool, ip, sequence)).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_reply_blocks_the_ip_for_microsoft_only_and_reroutes_within_one_reconcile() {
    let (api, operator) = fleet_with_pods().await;
    let addr = operator.local_addr();
    let ip = "203.0.113.12";
    let pod = pod_name("bulk", ip);
    let token = token_for(&api, "bulk", ip);

    let started = Instant::now();
    let (status, body) = post_feedback(addr, Some(&token), &ban_report("bulk", ip, 1)).await;
    assert_eq!(status, 200, "{body}");
    let response: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(response["duplicate"], false);
    assert!(response["config"]["version"].is_string(), "{body}");
    assert!(
        response["config"]["files"]["sender.json"].is_string(),
        "{body}"
    );
    // The answer came after the state was stored.
    assert_eq!(
        pair_state(&api, "bulk", ip, "microsoft").as_deref(),
        Some("Blocked")
    );

    converge(&api, "microsoft route without the blocked IP", |api| {
        !target_ips(api, "microsoft").contains(&ip.to_string())
            && !slice_pods(api, "microsoft").contains(&pod)
    })
    .await;
    let rerouted_in = started.elapsed();
    assert!(
        rerouted_in < Duration::from_secs(3),
        "re-routing took {rerouted_in:?}"
    );
    assert_eq!(target_ips(&api, "microsoft").len(), 7);
    assert_eq!(slice_pods(&api, "microsoft").len(), 7);
    let excluded = &route_status(&api, "microsoft")["excluded"];
    assert!(
        excluded
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["ip"] == ip && e["state"] == "Blocked"),
        "{excluded}"
    );
    // Google still sends through it.
    assert!(target_ips(&api, "google").contains(&ip.to_string()));
    assert!(slice_pods(&api, "google").contains(&pod));
    assert_ne!(
        pair_state(&api, "bulk", ip, "google").as_deref(),
        Some("Blocked")
    );

    // Degraded condition, event, metrics.
    converge(&api, "the pool's Degraded condition", |api| {
        pool_status(api, "bulk")["conditions"]
            .as_array()
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Degraded" && c["status"] == "True")
            })
    })
    .await;
    let events = api.list("events.k8s.io/v1", "Event");
    assert!(
        events.iter().any(|e| e["reason"] == "IpBlocked"
            && e["regarding"]["name"] == "bulk"
            && e["note"].as_str().unwrap_or("").contains(ip)),
        "no IpBlocked event"
    );
    let blocked_series = format!(
        "mailfleet_ip_state{{pool=\"mail/bulk\",ip=\"{ip}\",provider=\"microsoft\",state=\"Blocked\"}} 1"
    );
    let (code, metrics) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(metrics.contains(&blocked_series), "{metrics}");
    assert!(metrics
        .contains("mailfleet_feedback_reports_total{pool=\"mail/bulk\",result=\"counted\"} 1"));
    assert!(
        metrics.contains("mailfleet_route_targets{route=\"mail/microsoft\",mode=\"Primary\"} 7")
    );

    // A retried report is acknowledged and not counted again.
    let (status, body) = post_feedback(addr, Some(&token), &ban_report("bulk", ip, 1)).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"duplicate\":true"), "{body}");
    operator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ip_blocked_for_microsoft_engages_the_fallback_pool_then_defers() {
    let (api, operator) = fleet_with_pods().await;
    let addr = operator.local_addr();
    for (n, ip) in bulk_ips(8).iter().enumerate() {
        block(&api, addr, "bulk", ip, n as u64 + 1).await;
    }
    converge(&api, "microsoft on the reserve pool", |api| {
        route_mode(api, "microsoft") == "FallbackPool"
            && target_ips(api, "microsoft") == RESERVE_IPS.to_vec()
            && slice_pods(api, "microsoft").len() == 2
    })
    .await;
    assert!(slice_pods(&api, "microsoft")
        .iter()
        .all(|p| p.starts_with("mf-reserve-")));
    assert_eq!(route_status(&api, "microsoft")["fallbackInUse"], true);
    assert_eq!(route_mode(&api, "google"), "Primary");
    assert_eq!(slice_pods(&api, "google").len(), 8);

    for (n, ip) in RESERVE_IPS.iter().enumerate() {
        block(&api, addr, "reserve", ip, n as u64 + 1).await;
    }
    converge(&api, "microsoft deferred", |api| {
        route_mode(api, "microsoft") == "Defer"
            && target_ips(api, "microsoft").is_empty()
            && slice_pods(api, "microsoft").is_empty()
    })
    .await;
    let ready = route_status(&api, "microsoft")["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "Deferred");
    let reasons: Vec<String> = api
        .list("events.k8s.io/v1", "Event")
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect();
    assert!(
        reasons.iter().any(|r| r == "FallbackEngaged"),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r == "RouteDeferred"), "{reasons:?}");
    assert_eq!(route_mode(&api, "google"), "Primary");
    operator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_restarted_mid_block_keeps_the_state_and_the_routes() {
    let (api, operator) = fleet_with_pods().await;
    let ip = "203.0.113.12";
    block(&api, operator.local_addr(), "bulk", ip, 1).await;
    converge(&api, "re-routed", |api| {
        target_ips(api, "microsoft").len() == 7 && slice_pods(api, "microsoft").len() == 7
    })
    .await;
    operator.shutdown().await.unwrap();
    let before_pool = pool_status(&api, "bulk");
    let before_route = route_status(&api, "microsoft");
    api.clear_requests();

    let restarted = start_operator(&api, options()).await;
    // Let every object be reconciled once by the new process.
    let deadline = Instant::now() + CONVERGE;
    loop {
        let metrics = restarted.context().metrics.render();
        let reconciled = |controller: &str, at_least: u64| {
            metrics
                .lines()
                .find(|l| {
                    l.starts_with(&format!(
                        "mailfleet_reconciles_total{{controller=\"{controller}\"}}"
                    ))
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .is_some_and(|n| n >= at_least)
        };
        if reconciled("senderpool", 2) && reconciled("domainroute", 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted operator did not reconcile"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        pair_state(&api, "bulk", ip, "microsoft").as_deref(),
        Some("Blocked")
    );
    assert_eq!(
        route_status(&api, "microsoft")["targets"],
        before_route["targets"]
    );
    assert_eq!(
        route_status(&api, "microsoft")["lastRewriteTime"],
        before_route["lastRewriteTime"]
    );
    assert_eq!(slice_pods(&api, "microsoft").len(), 7);
    assert!(!slice_pods(&api, "microsoft").contains(&pod_name("bulk", ip)));
    let reputation = |s: &serde_json::Value| {
        s["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["reputation"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        reputation(&pool_status(&api, "bulk")),
        reputation(&before_pool)
    );
    // Nothing needed rewriting.
    let writes = api.writes();
    assert!(
        writes
            .iter()
            .all(|w| !w.path.contains("/domainroutes/") && !w.path.contains("/endpointslices/")),
        "the restart rewrote routes: {:?}",
        writes
            .iter()
            .map(|w| format!("{} {}", w.method, w.path))
            .collect::<Vec<_>>()
    );
    // The report retried across the restart is acknowledged as counted
    // before: the ledger of sequences was stored with the counts.
    let token = token_for(&api, "bulk", ip);
    let (status, body) = post_feedback(
        restarted.local_addr(),
        Some(&token),
        &ban_report("bulk", ip, 1),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"duplicate\":true"), "{body}");
    assert_eq!(
        reputation(&pool_status(&api, "bulk")),
        reputation(&before_pool)
    );
    restarted.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_or_wrong_ip_posts_are_refused_and_change_nothing() {
    let (api, operator) = fleet_with_pods().await;
    let addr = operator.local_addr();
    let before = pool_status(&api, "bulk");
    api.clear_requests();

    // No token.
    let (status, _) = post_feedback(addr, None, &ban_report("bulk", "203.0.113.12", 1)).await;
    assert_eq!(status, 401);
    // A token the API server does not know.
    let (status, _) =
        post_feedback(addr, Some("forged"), &ban_report("bulk", "203.0.113.12", 1)).await;
    assert_eq!(status, 401);
    // The pod of .13 speaking for .12.
    let token = token_for(&api, "bulk", "203.0.113.13");
    let (status, body) =
        post_feedback(addr, Some(&token), &ban_report("bulk", "203.0.113.12", 1)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("mailfleet.io/ip"), "{body}");
    // The right IP but another pool's name.
    let mut wrong_pool = ban_report("bulk", "203.0.113.13", 1);
    wrong_pool.pool.name = "reserve".into();
    let (status, _) = post_feedback(addr, Some(&token), &wrong_pool).await;
    assert_eq!(status, 403);
    // A token of the right pod but for the API server's audience.
    let mut user = api.allow_pod_token("api-audience", NS, &pod_name("bulk", "203.0.113.12"));
    user.audiences = vec!["https://kubernetes.default.svc".into()];
    api.allow_token("api-audience", user);
    let (status, body) = post_feedback(
        addr,
        Some("api-audience"),
        &ban_report("bulk", "203.0.113.12", 1),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("mailfleet"), "{body}");

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pool_status(&api, "bulk"), before);
    let writes: Vec<String> = api
        .writes()
        .iter()
        .filter(|w| w.path.contains("/senderpools/"))
        .map(|w| format!("{} {}", w.method, w.path))
        .collect();
    assert!(writes.is_empty(), "a refused post wrote a pool: {writes:?}");
    assert_eq!(target_ips(&api, "microsoft").len(), 8);
    operator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_is_retried() {
    let (api, operator) = fleet_with_pods().await;
    let addr = operator.local_addr();
    // The first status write of the pool and of the route both meet a 409.
    api.fail_next("PATCH", "/senderpools/bulk/status", 409, 1);
    api.fail_next("PATCH", "/domainroutes/microsoft/status", 409, 1);
    block(&api, addr, "bulk", "203.0.113.12", 1).await;
    assert_eq!(
        pair_state(&api, "bulk", "203.0.113.12", "microsoft").as_deref(),
        Some("Blocked")
    );
    converge(&api, "re-routed despite the conflicts", |api| {
        target_ips(api, "microsoft").len() == 7 && slice_pods(api, "microsoft").len() == 7
    })
    .await;
    let conflicts = api.requests().iter().filter(|r| r.status == 409).count();
    // The two injected ones at least (a pool reconcile racing the feedback
    // write may meet a real one, retried the same way).
    assert!(conflicts >= 2, "{conflicts} conflicts");
    operator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_reviewed_once_and_the_pod_read_from_the_store() {
    let (api, operator) = fleet_with_pods().await;
    let addr = operator.local_addr();
    let token = token_for(&api, "bulk", "203.0.113.14");
    api.clear_requests();
    for sequence in 1..=5 {
        let mut report = ban_report("bulk", "203.0.113.14", sequence);
        report.conclusive.clear();
        let (status, body) = post_feedback(addr, Some(&token), &report).await;
        assert_eq!(status, 200, "{body}");
    }
    let requests = api.requests();
    let reviews = requests.iter().filter(|r| r.is_token_review()).count();
    let pod_reads = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/pods/"))
        .count();
    assert_eq!(reviews, 1, "one TokenReview for five reports");
    assert_eq!(pod_reads, 0, "the pod comes from the store");
    // The pool too: the server is read only after a write met a conflict
    // (the watch had not brought the previous write back yet).
    let pool_reads = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/senderpools/bulk"))
        .count();
    let conflicts = requests
        .iter()
        .filter(|r| r.status == 409 && r.path.ends_with("/senderpools/bulk/status"))
        .count();
    assert!(
        pool_reads <= conflicts,
        "{pool_reads} reads of the pool for {conflicts} conflicts"
    );
    operator.shutdown().await.unwrap();
}

/// A report of `count` messages delivered to Google from `ip`.
fn delivered_report(
    pool: &str,
    ip: &str,
    sequence: u64,
    count: u64,
) -> mailfleet::agent::report::FeedbackReport {
    let mut report = ban_report(pool, ip, sequence);
    report.conclusive.clear();
    report.totals = vec![mailfleet::agent::report::TotalCount {
        provider: "google".into(),
        outcome: mailfleet::vocab::Outcome::Delivered,
        category: mailfleet::vocab::Category::None,
        count,
    }];
    report
}

fn pool_status_writes(api: &FakeApi, pool: &str) -> usize {
    let path = format!("/senderpools/{pool}/status");
    api.writes()
        .iter()
        .filter(|w| w.method == "PATCH" && w.path.ends_with(&path))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_of_one_pool_share_a_status_write_and_are_answered_after_it() {
    let (api, operator) = fleet_with_pods().await;
    let addr = operator.local_addr();
    let ips = bulk_ips(8);
    let before = pool_status_writes(&api, "bulk");
    let posts = ips.iter().map(|ip| {
        let token = token_for(&api, "bulk", ip);
        let report = delivered_report("bulk", ip, 1, 25);
        async move { post_feedback(addr, Some(&token), &report).await }
    });
    let answers = futures::future::join_all(posts).await;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert!(body.contains("\"duplicate\":false"), "{body}");
    }
    let writes = pool_status_writes(&api, "bulk") - before;
    assert!(
        (1..=2).contains(&writes),
        "eight reports took {writes} status writes"
    );
    // Answered after the write: every count is stored.
    let stored: mailfleet::api::SenderPool =
        serde_json::from_value(api.get(CRD, "SenderPool", NS, "bulk").unwrap()).unwrap();
    let status = stored.status.unwrap();
    for ip in &ips {
        let pair = status
            .ips
            .iter()
            .find(|s| &s.address == ip)
            .and_then(|s| s.pair("google"))
            .unwrap_or_else(|| panic!("no google pair for {ip}"));
        let delivered: i64 = pair.window.iter().map(|b| b.delivered).sum();
        assert_eq!(delivered, 25, "{ip}");
    }
    let (_, metrics) = get(addr, "/metrics").await;
    assert!(
        metrics
            .contains("mailfleet_feedback_reports_total{pool=\"mail/bulk\",result=\"counted\"} 8"),
        "{metrics}"
    );
    assert!(metrics.contains("mailfleet_feedback_batched_reports_total 8"));

    // A heartbeat (nothing counted) is answered without any write.
    let quiet = api.write_count();
    let token = token_for(&api, "bulk", &ips[0]);
    let mut heartbeat = delivered_report("bulk", &ips[0], 2, 0);
    heartbeat.totals.clear();
    let (status, body) = post_feedback(addr, Some(&token), &heartbeat).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"duplicate\":false"), "{body}");
    assert!(body.contains("\"config\""), "{body}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(api.write_count(), quiet, "a heartbeat wrote");
    // A retried report is a duplicate, without a write either.
    let (status, body) = post_feedback(
        addr,
        Some(&token),
        &delivered_report("bulk", &ips[0], 1, 25),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"duplicate\":true"), "{body}");
    assert_eq!(api.write_count(), quiet);
    operator.shutdown().await.unwrap();
}

/// A request head announcing a body that never comes.
const HEAD_WITHOUT_TOKEN: &[u8] = b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 65536\r\n\r\n{";

/// The operator serves the same bounded port as standalone mode
/// (`src/serve`): a report without a token is refused from its head, before
/// any body byte is waited for; past the cap of 1024 connections the oldest
/// idle ones are closed, and `/healthz` and a real agent's report are still
/// answered. (Memory under 10,000 hostile connections:
/// `bench/feedback_port.sh --operator`, docs/BENCHMARKS.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_port_refuses_from_the_head_and_holds_its_connection_cap() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (api, operator) = fleet_with_pods().await;
    let addr = operator.local_addr();

    let mut drip = tokio::net::TcpStream::connect(addr).await.unwrap();
    drip.write_all(HEAD_WITHOUT_TOKEN).await.unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), drip.read_exact(&mut head))
        .await
        .expect("answered without the body")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 401");

    const IDLE: usize = 1200;
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let (status, body) = get(addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    block(&api, addr, "bulk", "203.0.113.12", 1).await;
    // Closed by the port: the read ends at once with nothing.
    let deadline = Instant::now() + Duration::from_secs(20);
    let closed = loop {
        let mut closed = 0;
        for stream in &mut idle {
            let mut byte = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(1), stream.read(&mut byte)).await
            {
                closed += 1;
            }
        }
        if closed >= IDLE + 2 - 1024 || Instant::now() > deadline {
            break closed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The cap counts every connection: the idle ones, /healthz, the report.
    assert!(
        IDLE - closed <= 1024,
        "{} of {IDLE} idle connections still open past the cap",
        IDLE - closed
    );
    let (_, metrics) = get(addr, "/metrics").await;
    assert!(
        metrics.contains("mailfleet_http_connections_refused_total"),
        "{metrics}"
    );
    drop(idle);
    operator.shutdown().await.unwrap();
}

/// Not part of `make test`: `bench/feedback_port.sh --operator [N]` runs the
/// attacks of bench/feedback_port.py against the operator's port (this
/// process) and prints the rows for docs/BENCHMARKS.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn operator_port_memory_under_hostile_connections() {
    let (api, operator) = fleet_with_pods().await;
    let addr = operator.local_addr();
    let ip = "203.0.113.10";
    let token = token_for(&api, "bulk", ip);
    let connections =
        std::env::var("MAILFLEET_BENCH_CONNECTIONS").unwrap_or_else(|_| "10000".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/feedback_port.py");
    let mut attack = std::process::Command::new("python3");
    attack
        .arg(script)
        .arg("--attach")
        .arg(std::process::id().to_string())
        .arg(addr.to_string())
        .arg(&token)
        .arg("bulk")
        .arg(ip)
        .arg(pod_name("bulk", ip))
        .arg(&connections);
    let status = tokio::task::spawn_blocking(move || attack.status())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    operator.shutdown().await.unwrap();
}

/// A bounce quoting a block list (a claim) from one receiving server: the
/// operator asks the named zone at once through the pool's
/// `spec.reputation.dnsbl.resolver` (rbldnsd on loopback), a zone the pool
/// does not probe. It lists the IP, so the pair is Blocked without waiting
/// for two more receiving domains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_naming_a_zone_is_checked_at_once_through_the_pools_resolver() {
    const ZONE: &str = "bl.claims-operator.example";
    let ips = bulk_ips(8);
    let listed = ips[2].clone();
    let reversed: Vec<&str> = listed.split('.').rev().collect();
    let Some(dns) = support::rbldnsd::start(
        "a_claim_naming_a_zone_is_checked_at_once_through_the_pools_resolver",
        &[("listed", &format!(":127.0.0.2:Listed\n{listed}\n"))],
        &[&format!("{ZONE}:ip4set:listed")],
        &format!("{}.{ZONE}.", reversed.join(".")),
    ) else {
        return;
    };
    let api = FakeApi::start().await;
    let mut bulk = pool("bulk", &ips);
    bulk["spec"]["reputation"] =
        serde_json::json!({"dnsbl": {"resolver": dns.address.to_string()}});
    api.insert(bulk);
    let reserve: Vec<String> = RESERVE_IPS.iter().map(|s| s.to_string()).collect();
    api.insert(pool("reserve", &reserve));
    for (provider, suffix) in [
        ("microsoft", ".mail.protection.outlook.com"),
        ("google", ".google.com"),
    ] {
        api.insert(route(
            provider,
            provider,
            serde_json::json!({ "mxHostSuffixes": [suffix] }),
            serde_json::json!([{ "pool": "reserve" }]),
        ));
    }
    let (api, operator) = pods_and_operator(api).await;
    let addr = operator.local_addr();

    let mut report = ban_report("bulk", &listed, 1);
    report.totals[0].provider = "other".into();
    report.conclusive[0].provider = "other".into();
    report.conclusive[0].reply = format!(
        "host mx.one.example[192.0.2.66] said: 554 5.7.1 Service unavailable; Client host [{listed}] blocked using {ZONE} (in reply to RCPT TO command)"
    );
    let token = token_for(&api, "bulk", &listed);
    let (status, body) = post_feedback(addr, Some(&token), &report).await;
    assert_eq!(status, 200, "{body}");
    converge(
        &api,
        "the claimed pair Blocked once the zone answered",
        |api| {
            pool_status(api, "bulk")["ips"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|ip| ip["address"] == listed.as_str())
                .flat_map(|ip| ip["reputation"].as_array().into_iter().flatten())
                .any(|pair| pair["provider"] == "other" && pair["state"] == "Blocked")
        },
    )
    .await;
    // The counters are published just after the answer is recorded.
    let counted = "mailfleet_dnsbl_claim_checks_total{result=\"listed\"} 1";
    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let (_, metrics) = get(addr, "/metrics").await;
        if metrics.contains(counted) || Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(metrics.contains(counted), "{metrics}");
    operator.shutdown().await.unwrap();
}

/// A pod's queue report reaches the pool's `status.queues`, the route's
/// `status.queue` (with the Warning at half the lifetime) and the metrics; its
/// drain report then takes the pod out of them and says what it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_mail_shows_on_the_route_and_a_drain_says_what_it_left() {
    use jiff::{SignedDuration, Timestamp};
    use mailfleet::agent::report::{DrainReport, QueueReport, RouteQueueReport};

    let (api, operator) = fleet_with_pods().await;
    let addr = operator.local_addr();
    let ip = "203.0.113.12";
    let pod = pod_name("bulk", ip);
    let token = token_for(&api, "bulk", ip);
    let now = Timestamp::now();
    // Eight days of a 14-day lifetime used: more than half.
    let oldest = now - SignedDuration::from_hours(8 * 24);
    let mut report = ban_report("bulk", ip, 1);
    report.totals.clear();
    report.conclusive.clear();
    report.queue = Some(QueueReport {
        read_at: now,
        messages: 41,
        oldest_arrival: Some(oldest),
        maximal_lifetime_seconds: Some(14 * 86_400),
        complete: true,
        routes: vec![RouteQueueReport {
            namespace: NS.into(),
            route: "microsoft".into(),
            provider: "microsoft".into(),
            messages: 40,
            oldest_arrival: oldest,
        }],
    });
    let (status, body) = post_feedback(addr, Some(&token), &report).await;
    assert_eq!(status, 200, "{body}");

    let queues = pool_status(&api, "bulk")["queues"].clone();
    assert_eq!(queues[0]["pod"], pod.as_str(), "{queues}");
    assert_eq!(queues[0]["messages"], 41, "{queues}");
    converge(&api, "the route's status.queue", |api| {
        route_status(api, "microsoft")["queue"]["messages"] == 40
    })
    .await;
    let queue = route_status(&api, "microsoft")["queue"].clone();
    assert_eq!(queue["senders"], 1, "{queue}");
    assert_eq!(queue["aging"], true, "{queue}");
    assert!(queue["expiresTime"].is_string(), "{queue}");
    let events = api.list("events.k8s.io/v1", "Event");
    let aging = events
        .iter()
        .find(|e| e["reason"] == "QueueAging" && e["regarding"]["name"] == "microsoft")
        .expect("a QueueAging event on the route");
    assert_eq!(aging["type"], "Warning");
    assert!(aging["note"].as_str().unwrap().contains("8d00h"), "{aging}");
    let (_, metrics) = get(addr, "/metrics").await;
    assert!(
        metrics.contains("mailfleet_route_queue_messages{route=\"mail/microsoft\"} 40"),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "mailfleet_route_queue_oldest_arrival_timestamp_seconds{{route=\"mail/microsoft\"}} {}",
        oldest.as_second()
    )));

    // The pod is deleted: its drain hands 38 on and leaves 3.
    let mut last = ban_report("bulk", ip, 2);
    last.totals.clear();
    last.conclusive.clear();
    last.queue = report.queue.clone();
    last.drain = Some(DrainReport {
        to: "mf-pool-bulk.mail.svc:25".into(),
        queued_at_start: 41,
        left: 3,
        took_ms: 45_000,
    });
    let (status, body) = post_feedback(addr, Some(&token), &last).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        pool_status(&api, "bulk")["queues"].is_null(),
        "the drained pod's queue left the status"
    );
    converge(&api, "the route's queue gone", |api| {
        route_status(api, "microsoft")["queue"].is_null()
    })
    .await;
    let events = api.list("events.k8s.io/v1", "Event");
    let drain = events
        .iter()
        .find(|e| e["reason"] == "DrainIncomplete" && e["regarding"]["name"] == "bulk")
        .expect("a DrainIncomplete event on the pool");
    assert_eq!(drain["type"], "Warning");
    let note = drain["note"].as_str().unwrap();
    assert!(note.contains(&pod) && note.contains("3 of 41"), "{note}");
    let (_, metrics) = get(addr, "/metrics").await;
    assert!(
        metrics.contains("mailfleet_drain_left_messages_total{pool=\"mail/bulk\"} 3"),
        "{metrics}"
    );
    assert!(!metrics.contains("mailfleet_route_queue_messages{route=\"mail/microsoft\"}"));
    operator.shutdown().await.unwrap();
}

/// The condition `type_` of one IP in a pool's status (Null when absent).
fn ip_condition(api: &FakeApi, pool: &str, ip: &str, type_: &str) -> serde_json::Value {
    pool_status(api, pool)["ips"]
        .as_array()
        .and_then(|ips| ips.iter().find(|s| s["address"] == ip))
        .and_then(|s| s["conditions"].as_array())
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// A sender whose `Bind` address is on none of its interfaces says so in a
/// heartbeat: the IP's `IpBound` condition turns False (stored before the
/// answer) with a Warning event naming the field and the fix, its routes
/// leave the IP for the pool's other IPs, and a later report of a bound
/// address brings them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_the_sender_cannot_bind_is_a_condition_an_event_and_leaves_the_routes() {
    use mailfleet::agent::report::IpBindingReport;

    let (api, operator) = fleet_with_pods().await;
    let addr = operator.local_addr();
    let ip = "203.0.113.12";
    let token = token_for(&api, "bulk", ip);
    let heartbeat = |sequence: u64, bound: bool| {
        let mut report = ban_report("bulk", ip, sequence);
        report.totals.clear();
        report.conclusive.clear();
        report.ip_binding = Some(IpBindingReport {
            address: ip.parse().unwrap(),
            bound,
            detail: (!bound).then(|| "Cannot assign requested address (os error 99)".to_string()),
        });
        report
    };

    let (status, body) = post_feedback(addr, Some(&token), &heartbeat(1, false)).await;
    assert_eq!(status, 200, "{body}");
    let condition = ip_condition(&api, "bulk", ip, "IpBound");
    assert_eq!(condition["status"], "False", "{condition}");
    assert_eq!(condition["reason"], "AddressNotOnInterface");
    let message = condition["message"].as_str().unwrap();
    assert!(
        message.contains("spec.ips[2].address")
            && message.contains("spec.ipBinding.mode: Snat")
            && message.contains(&pod_name("bulk", ip)),
        "{message}"
    );
    converge(&api, "both routes without the unbound IP", |api| {
        !target_ips(api, "microsoft").contains(&ip.to_string())
            && !target_ips(api, "google").contains(&ip.to_string())
    })
    .await;
    assert_eq!(
        target_ips(&api, "microsoft").len(),
        7,
        "the pool's other IPs carry its share"
    );
    let excluded = &route_status(&api, "google")["excluded"];
    assert!(
        excluded
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["ip"] == ip && e["reason"].as_str().unwrap_or("").contains("IpBound")),
        "{excluded}"
    );
    let events = api.list("events.k8s.io/v1", "Event");
    let warning = events
        .iter()
        .find(|e| e["reason"] == "IpNotBound" && e["regarding"]["name"] == "bulk")
        .expect("an IpNotBound event on the pool");
    assert_eq!(warning["type"], "Warning");
    assert!(
        warning["note"]
            .as_str()
            .unwrap()
            .contains("spec.ips[2].address"),
        "{warning}"
    );

    // The address came up (a secondary interface): the routes come back.
    let (status, body) = post_feedback(addr, Some(&token), &heartbeat(2, true)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ip_condition(&api, "bulk", ip, "IpBound")["status"], "True");
    converge(&api, "the routes back on the IP", |api| {
        target_ips(api, "microsoft").contains(&ip.to_string())
            && target_ips(api, "google").contains(&ip.to_string())
    })
    .await;
    let events = api.list("events.k8s.io/v1", "Event");
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "IpBound" && e["type"] == "Normal"),
        "no IpBound event"
    );
    operator.shutdown().await.unwrap();
}

/// The operator's port over TLS, as the chart runs it with `tls.enabled`:
/// the agent posts to https:// trusting only the CA the operator hands the
/// sender pods (`--ca-env`, the code `mailfleet agent run` posts with). The
/// report is counted; plain HTTP (answered 400: the port speaks TLS) and a
/// client trusting other roots get nothing through and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_over_tls_is_counted_and_plain_http_is_not() {
    use mailfleet::agent::http::{post, Endpoint, TlsTrust};
    use mailfleet::http_client::FetchError;
    use mailfleet::serve::TlsFiles;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    std::fs::write(&tls.cert, cert.pem()).unwrap();
    std::fs::write(&tls.key, key.serialize_pem()).unwrap();

    let api = FakeApi::start().await;
    seed_fleet(&api, 8);
    seed_pods(&api, "bulk", &bulk_ips(8));
    let reserve: Vec<String> = RESERVE_IPS.iter().map(|s| s.to_string()).collect();
    seed_pods(&api, "reserve", &reserve);
    let mut options = options();
    options.tls = Some(tls);
    options.settings.agent_image = Some("registry.example.net/mailfleet:1".into());
    options.settings.feedback_url = "https://localhost:8080/v1/feedback".into();
    options.settings.feedback_ca = Some(cert.pem());
    let operator = start_operator(&api, options).await;
    converge(&api, "the routes on the eight bulk pods", |api| {
        target_ips(api, "microsoft").len() == 8 && deployments(api, "bulk").len() == 8
    })
    .await;
    // Every agent is told to trust that CA only.
    let deployment = api
        .get("apps/v1", "Deployment", NS, "mf-bulk-203-0-113-12")
        .unwrap();
    let agent = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "mailfleet-agent")
        .cloned()
        .expect("an agent sidecar");
    let args: Vec<String> = serde_json::from_value(agent["args"].clone()).unwrap();
    let at = args.iter().position(|a| a == "--ca-env").expect("--ca-env");
    assert_eq!(args[at + 1], "MAILFLEET_FEEDBACK_CA");
    assert!(args.contains(&"https://localhost:8080/v1/feedback".to_string()));
    assert_eq!(agent["env"][0]["name"], "MAILFLEET_FEEDBACK_CA");
    assert_eq!(agent["env"][0]["value"], cert.pem());

    let ip = "203.0.113.12";
    let token = token_for(&api, "bulk", ip);
    let port = operator.local_addr().port();
    let url = format!("https://localhost:{port}/v1/feedback");
    let report = serde_json::to_vec(&ban_report("bulk", ip, 1)).unwrap();
    let ca = cert.pem();
    let (untrusted, plain, trusted) = tokio::task::spawn_blocking(move || {
        let auth = format!("Bearer {token}");
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        let timeout = Duration::from_secs(10);
        let endpoint: Endpoint = url.parse().unwrap();
        let untrusted = post(&endpoint, &headers, &report, timeout);
        let plain = post(
            &format!("http://localhost:{port}/v1/feedback")
                .parse()
                .unwrap(),
            &headers,
            &report,
            timeout,
        );
        let plain_refused = matches!(&plain, Ok(answer) if answer.status == 400
            && String::from_utf8_lossy(&answer.body).contains("this port speaks TLS"));
        let before_trusted = plain_refused && matches!(untrusted, Err(FetchError::Tls { .. }));
        let trust =
            TlsTrust::from_pem(ca.as_bytes(), "MAILFLEET_FEEDBACK_CA", "the test CA".into())
                .unwrap();
        let trusted = endpoint
            .trusting(trust)
            .map(|e| post(&e, &headers, &report, timeout));
        (untrusted, before_trusted, trusted)
    })
    .await
    .unwrap();
    assert!(
        matches!(untrusted, Err(FetchError::Tls { .. })),
        "a client trusting other roots must fail the handshake: {untrusted:?}"
    );
    assert!(
        plain,
        "plain HTTP on the TLS port must be answered 400, saying it speaks TLS"
    );
    let answer = trusted.unwrap().unwrap();
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(
        pair_state(&api, "bulk", ip, "microsoft").as_deref(),
        Some("Blocked")
    );
    converge(&api, "the microsoft route without the blocked IP", |api| {
        !target_ips(api, "microsoft").contains(&ip.to_string())
    })
    .await;
    operator.shutdown().await.unwrap();
}

/// POSTs an abuse report (`content_type`) to the operator's port.
async fn post_abuse_report(
    addr: std::net::SocketAddr,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST /v1/abuse-reports HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    // A refusal from the head may close the connection before the body is sent.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
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

fn arf_fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/arf")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The complaints in the window of (ip, provider), as the pool's status holds them.
fn complaints_of(api: &FakeApi, pool: &str, ip: &str, provider: &str) -> Option<i64> {
    let status: mailfleet::api::SenderPoolStatus =
        serde_json::from_value(pool_status(api, pool)).ok()?;
    let pair = status
        .ips
        .iter()
        .find(|i| i.address == ip)?
        .pair(provider)?;
    pair.complaint_rate.as_ref().map(|rate| rate.complaints)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_reports_posted_to_the_operator_are_stored_before_the_answer_and_counted_once() {
    let (api, operator) = fleet_with_pods().await;
    let addr = operator.local_addr();
    let yahoo = arf_fixture("yahoo-cfl.eml");
    let jmrp = arf_fixture("microsoft-jmrp.eml");
    let rfc822 = "message/rfc822";

    let (status, body) = post_abuse_report(addr, None, rfc822, &yahoo).await;
    assert_eq!(status, 401, "{body}");
    // Any pod of the namespace with the `mailfleet` token may post.
    let token = token_for(&api, "bulk", "203.0.113.17");

    let (status, body) = post_abuse_report(addr, Some(&token), rfc822, &yahoo).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["ip"], "203.0.113.10");
    assert_eq!(answer["provider"], "yahoo");
    assert_eq!(answer["pool"], "mail/bulk");
    assert_eq!(answer["duplicate"], false);
    // Acknowledged only once stored: the status holds it when the answer comes.
    assert_eq!(
        complaints_of(&api, "bulk", "203.0.113.10", "yahoo"),
        Some(1)
    );

    let (status, body) = post_abuse_report(addr, Some(&token), rfc822, &jmrp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        complaints_of(&api, "bulk", "203.0.113.11", "microsoft"),
        Some(1)
    );

    let writes = pool_status_writes(&api, "bulk");
    let (status, body) = post_abuse_report(addr, Some(&token), rfc822, &yahoo).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"duplicate\":true"), "{body}");
    assert_eq!(
        complaints_of(&api, "bulk", "203.0.113.10", "yahoo"),
        Some(1)
    );
    assert_eq!(
        pool_status_writes(&api, "bulk"),
        writes,
        "a duplicate writes nothing"
    );

    let (status, body) =
        post_abuse_report(addr, Some(&token), rfc822, b"Subject: hi\r\n\r\nhello\r\n").await;
    assert_eq!(status, 400, "{body}");
    let stranger = String::from_utf8(yahoo.clone())
        .unwrap()
        .replace("203.0.113.10", "192.0.2.99");
    let (status, body) = post_abuse_report(addr, Some(&token), rfc822, stranger.as_bytes()).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("192.0.2.99") && body.contains("namespace mail"),
        "{body}"
    );
    let mut huge = yahoo.clone();
    huge.resize(600 * 1024, b'x');
    let (status, body) = post_abuse_report(addr, Some(&token), rfc822, &huge).await;
    assert_eq!(status, 413, "{body}");
    // A pod of another namespace speaks for no pool of this one.
    api.allow_token(
        "elsewhere-token",
        support::fake_api::TokenUser::pod("elsewhere", "default", "some-pod", "uid-1"),
    );
    let (status, body) = post_abuse_report(addr, Some("elsewhere-token"), rfc822, &yahoo).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("namespace elsewhere"), "{body}");

    let (_, metrics) = get(addr, "/metrics").await;
    for (result, n) in [
        ("counted", 2),
        ("duplicate", 1),
        ("not_ours", 2),
        ("not_feedback_report", 1),
        ("too_large", 1),
        ("refused", 1),
    ] {
        let line = format!("mailfleet_complaint_reports_total{{result=\"{result}\"}} {n}");
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    operator.shutdown().await.unwrap();
}
