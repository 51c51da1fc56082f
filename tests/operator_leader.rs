//! Two replicas, one leader (a Lease in the fake API server): only the leader
//! runs the controllers and counts feedback; the follower answers 503 so the
//! agent retries, and takes over when the leader stops.

mod operator_harness;
mod support;

use std::time::{Duration, Instant};

use mailfleet::operator::run::OperatorOptions;
use operator_harness::*;
use support::fake_api::FakeApi;

fn replica(identity: &str) -> OperatorOptions {
    let mut options = options();
    options.leader_election = true;
    options.lease_namespace = NS.to_string();
    // Short leases keep the takeover quick in a test.
    options.lease_timing = (3, 1);
    options.settings.identity = identity.to_string();
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_the_other_refuses_feedback_until_it_takes_over() {
    let api = FakeApi::start().await;
    seed_fleet(&api, 2);
    seed_pods(&api, "bulk", &bulk_ips(2));
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
    converge(&api, "the leader serves the routes", |api| {
        target_ips(api, "microsoft").len() == 2
    })
    .await;

    let ip = "203.0.113.11";
    let token = format!("token-{ip}");
    api.allow_pod_token(&token, NS, &pod_name("bulk", ip));
    let (status, body) = post_feedback(
        follower.local_addr(),
        Some(&token),
        &ban_report("bulk", ip, 1),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("leader"), "{body}");
    assert_eq!(get(follower.local_addr(), "/readyz").await.0, 200);
    assert_eq!(pair_state(&api, "bulk", ip, "microsoft"), None);

    // The leader stops gracefully and gives the lease up: the follower leads.
    leader.shutdown().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !follower.context().is_leading() {
        assert!(Instant::now() < deadline, "the follower never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
