//! Two replicas, one leader (a Lease in the fake API server): only the leader
//! runs the controllers and counts feedback, and labels its pod so the
//! chart's Service sends feedback to it alone; a post that still reaches the
//! follower gets 503 with Retry-After (the agent keeps it and retries) and
//! stores nothing. The follower takes over, label included, when the leader
//! stops.

mod operator_harness;
mod support;

use std::time::{Duration, Instant};

use mailfleet::operator::leader_route::{OwnPod, LEADER, ROLE_LABEL};
use mailfleet::operator::run::OperatorOptions;
use operator_harness::*;
use serde_json::json;
use support::fake_api::FakeApi;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn replica(identity: &str) -> OperatorOptions {
    let mut options = options();
    options.leader_election = true;
    options.lease_namespace = NS.to_string();
    // Short leases keep the takeover quick in a test.
    options.lease_timing = (3, 1);
    options.settings.identity = identity.to_string();
    options.own_pod = Some(OwnPod {
        namespace: NS.to_string(),
        name: identity.to_string(),
    });
    options
}

/// The operator pod of a replica, as the Deployment of the chart runs it.
fn operator_pod(api: &FakeApi, name: &str) {
    api.insert(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": NS,
                      "labels": { "app.kubernetes.io/name": "mailfleet" } },
        "spec": { "containers": [{ "name": "operator", "image": "mailfleet" }] }
    }));
}

fn role_of(api: &FakeApi, pod: &str) -> Option<String> {
    api.get("v1", "Pod", NS, pod)?["metadata"]["labels"][ROLE_LABEL]
        .as_str()
        .map(str::to_string)
}

/// The whole response head and body of a feedback post.
async fn post_raw(
    addr: std::net::SocketAddr,
    token: &str,
    report: &impl serde::Serialize,
) -> String {
    let body = serde_json::to_string(report).unwrap();
    let request = format!(
        "POST /v1/feedback HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_the_other_refuses_feedback_until_it_takes_over() {
    let api = FakeApi::start().await;
    seed_fleet(&api, 2);
    seed_pods(&api, "bulk", &bulk_ips(2));
    operator_pod(&api, "replica-a");
    operator_pod(&api, "replica-b");
    // A label left by a former leader's container goes at start.
    api.modify("v1", "Pod", NS, "replica-b", |pod| {
        pod["metadata"]["labels"][ROLE_LABEL] = json!(LEADER)
    });
    let a = start_operator(&api, replica("replica-a")).await;
    let b = start_operator(&api, replica("replica-b")).await;
    let deadline = Instant::now() + CONVERGE;
    while a.context().is_leading() == b.context().is_leading() {
        assert!(Instant::now() < deadline, "no single leader emerged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (leader, follower) = if a.context().is_leading() {
        (a, b)
    } else {
        (b, a)
    };
    assert!(api
        .get("coordination.k8s.io/v1", "Lease", NS, "mailfleet-operator")
        .is_some());
    let (leader_pod, follower_pod) = (
        leader.context().settings.identity.clone(),
        follower.context().settings.identity.clone(),
    );
    converge(&api, "the leader serves the routes", |api| {
        target_ips(api, "microsoft").len() == 2
    })
    .await;
    converge(
        &api,
        "the leader's pod alone carries the leader label",
        |api| {
            role_of(api, &leader_pod).as_deref() == Some(LEADER)
                && role_of(api, &follower_pod).is_none()
        },
    )
    .await;

    let ip = "203.0.113.11";
    let token = format!("token-{ip}");
    api.allow_pod_token(&token, NS, &pod_name("bulk", ip));
    let pool_before = pool_status(&api, "bulk");
    api.clear_requests();
    let response = post_raw(follower.local_addr(), &token, &ban_report("bulk", ip, 1)).await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("\r\nretry-after: 1\r\n"),
        "the agent is told when to retry: {response}"
    );
    assert!(response.contains("leader"), "{response}");
    assert_eq!(get(follower.local_addr(), "/readyz").await.0, 200);
    // Nothing stored: no pair, no ledger entry, not even a TokenReview (the
    // leader's own status writes go on meanwhile).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pair_state(&api, "bulk", ip, "microsoft"), None);
    assert_eq!(
        pool_status(&api, "bulk")["feedbackLedger"],
        pool_before["feedbackLedger"]
    );
    let reviews = api
        .requests()
        .iter()
        .filter(|r| r.is_token_review())
        .count();
    assert_eq!(reviews, 0, "the standby reviewed a token");

    // The leader stops gracefully and gives the lease up: the follower leads.
    leader.shutdown().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !follower.context().is_leading() {
        assert!(Instant::now() < deadline, "the follower never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    converge(&api, "the label moves to the new leader", |api| {
        role_of(api, &follower_pod).as_deref() == Some(LEADER)
            && role_of(api, &leader_pod).is_none()
    })
    .await;
    let (status, body) = post_feedback(
        follower.local_addr(),
        Some(&token),
        &ban_report("bulk", ip, 1),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    converge(&api, "the new leader re-routes", |api| {
        target_ips(api, "microsoft") == vec!["203.0.113.10".to_string()]
    })
    .await;
    follower.shutdown().await.unwrap();
}
