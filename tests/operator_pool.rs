//! The SenderPool controller against the fake API server: per-IP workloads,
//! pruning, bad input.

mod operator_harness;
mod support;

use operator_harness::*;
use serde_json::json;
use support::fake_api::FakeApi;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_ips_yield_eight_deployments_and_config_maps() {
    let api = FakeApi::start().await;
    seed_fleet(&api, 8);
    let operator = start_operator(&api, options()).await;
    converge(&api, "8 Deployments and 8 ConfigMaps for bulk", |api| {
        deployments(api, "bulk").len() == 8 && config_maps(api, "bulk").len() == 8
    })
    .await;
    let expected: Vec<String> = bulk_ips(8)
        .iter()
        .map(|ip| mailfleet::operator::build::deployment_name("bulk", ip).unwrap())
        .collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(deployments(&api, "bulk"), expected_sorted);
    let deployment = api.get("apps/v1", "Deployment", NS, &expected[0]).unwrap();
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["kind"],
        "SenderPool"
    );
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["controller"],
        true
    );
    assert_eq!(deployment["spec"]["replicas"], 2);
    let config = api
        .get("v1", "ConfigMap", NS, &format!("{}-config", expected[0]))
        .unwrap();
    assert!(config["data"]["sender.json"].is_string());
    assert!(config["data"]["config-version"].is_string());
    // Every apply names the operator as field manager.
    assert!(api
        .writes()
        .iter()
        .filter(|w| w.method == "PATCH" && w.path.contains("/deployments/"))
        .all(|w| w.field_manager().as_deref() == Some("mailfleet-operator")));
    converge(&api, "pool status with 8 IPs", |api| {
        pool_status(api, "bulk")["ipCount"] == 8
    })
    .await;
    operator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_ip_prunes_its_objects() {
    let api = FakeApi::start().await;
    seed_fleet(&api, 8);
    let operator = start_operator(&api, options()).await;
    converge(&api, "8 Deployments", |api| {
        deployments(api, "bulk").len() == 8 && config_maps(api, "bulk").len() == 8
    })
    .await;
    let removed = "203.0.113.17";
    let deployment = mailfleet::operator::build::deployment_name("bulk", removed).unwrap();
    api.modify(CRD, "SenderPool", NS, "bulk", |pool| {
        let ips = pool["spec"]["ips"].as_array_mut().unwrap();
        ips.retain(|ip| ip["address"] != removed);
    });
    converge(&api, "the removed IP's objects pruned", |api| {
        deployments(api, "bulk").len() == 7 && config_maps(api, "bulk").len() == 7
    })
    .await;
    assert!(!deployments(&api, "bulk").contains(&deployment));
    assert!(!config_maps(&api, "bulk").contains(&format!("{deployment}-config")));
    // The other pool's objects are untouched.
    assert_eq!(deployments(&api, "reserve").len(), 2);
    converge(&api, "pool status without the IP", |api| {
        pool_status(api, "bulk")["ipCount"] == 7
    })
    .await;
    operator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_sets_conditions_and_events_and_disturbs_nothing_else() {
    let api = FakeApi::start().await;
    seed_fleet(&api, 3);
    // A pool whose template has no container.
    let mut empty = pool("empty", &["192.0.2.50".to_string()]);
    empty["spec"]["template"] = json!({ "spec": { "containers": [] } });
    api.insert(empty);
    // A pool claiming an IP of bulk (created later, so bulk keeps it).
    api.insert(pool(
        "thief",
        &["203.0.113.10".to_string(), "192.0.2.60".to_string()],
    ));
    // A route naming a pool that does not exist.
    let mut lost = route(
        "yahoo",
        "yahoo",
        json!({ "domains": ["yahoo.com"] }),
        json!([]),
    );
    lost["spec"]["pool"] = json!("missing");
    api.insert(lost);
    let operator = start_operator(&api, options()).await;

    converge(&api, "conditions on the three bad objects", |api| {
        let accepted = |status: serde_json::Value| {
            status["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Accepted").cloned())
        };
        let empty = accepted(pool_status(api, "empty"));
        let thief = accepted(pool_status(api, "thief"));
        let yahoo = accepted(route_status(api, "yahoo"));
        empty.is_some_and(|c| c["status"] == "False" && c["reason"] == "TemplateHasNoContainer")
            && thief
                .is_some_and(|c| c["status"] == "False" && c["reason"] == "IpClaimedByAnotherPool")
            && yahoo.is_some_and(|c| c["status"] == "False" && c["reason"] == "PoolNotFound")
    })
    .await;
    // Nothing for the unusable pool, only the free IP for the thief, all of bulk.
    converge(&api, "workloads of the good parts", |api| {
        deployments(api, "bulk").len() == 3 && deployments(api, "thief").len() == 1
    })
    .await;
    assert!(deployments(&api, "empty").is_empty());
    let message = pool_status(&api, "thief")["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Accepted")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("spec.ips") && message.contains("mail/bulk"),
        "{message}"
    );
    // Events name the problems.
    converge(&api, "warning events", |api| {
        let reasons: Vec<String> = api
            .list("events.k8s.io/v1", "Event")
            .iter()
            .filter_map(|e| e["reason"].as_str().map(str::to_string))
            .collect();
        [
            "TemplateHasNoContainer",
            "IpClaimedByAnotherPool",
            "PoolNotFound",
        ]
        .iter()
        .all(|r| reasons.iter().any(|x| x == r))
    })
    .await;
    // The good routes still route.
    converge(&api, "microsoft routed on bulk", |api| {
        route_mode(api, "microsoft") == "Primary" && target_ips(api, "microsoft").len() == 3
    })
    .await;
    // No crash loop: a few seconds later the failures did not pile up.
    let metrics = operator.context().metrics.render();
    assert!(!metrics.contains("category=\"config\"} 1"), "{metrics}");
    operator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_removed_from_the_template_leaves_and_a_hand_edit_is_put_back() {
    let api = FakeApi::start().await;
    let mut bulk = pool("bulk", &bulk_ips(2));
    bulk["spec"]["template"]["spec"]["nodeSelector"] = json!({ "mail/egress": "a" });
    bulk["spec"]["template"]["spec"]["containers"][0]["env"] =
        json!([{ "name": "RELAY_MODE", "value": "strict" }]);
    api.insert(bulk);
    let operator = start_operator(&api, options()).await;
    let name = mailfleet::operator::build::deployment_name("bulk", "203.0.113.10").unwrap();
    let template = |api: &FakeApi| {
        api.get("apps/v1", "Deployment", NS, &name)
            .map(|d| d["spec"]["template"]["spec"].clone())
            .unwrap_or_default()
    };
    converge(&api, "Deployments with the nodeSelector", |api| {
        template(api)["nodeSelector"]["mail/egress"] == "a"
    })
    .await;
    settle(&api, std::time::Duration::from_millis(300)).await;

    // Removing keys from the template removes them from the Deployments.
    api.modify(CRD, "SenderPool", NS, "bulk", |pool| {
        let spec = &mut pool["spec"]["template"]["spec"];
        spec.as_object_mut().unwrap().remove("nodeSelector");
        spec["containers"][0].as_object_mut().unwrap().remove("env");
    });
    converge(&api, "the nodeSelector and the env var gone", |api| {
        let spec = template(api);
        spec["nodeSelector"].get("mail/egress").is_none()
            && !spec["containers"][0]["env"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["name"] == "RELAY_MODE")
    })
    .await;
    settle(&api, std::time::Duration::from_millis(300)).await;

    // A hand edit of a field the operator sets is put back.
    api.modify("apps/v1", "Deployment", NS, &name, |d| {
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("hand/edited:1");
    });
    converge(&api, "the image put back", |api| {
        template(api)["containers"][0]["image"] == "registry.example.net/mail/postfix-sender:3.7"
    })
    .await;

    // And a fleet that does not change sends no write.
    settle(&api, std::time::Duration::from_millis(300)).await;
    let before = api.write_count();
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let after: Vec<_> = api.writes().into_iter().skip(before).collect();
    assert!(after.is_empty(), "writes at steady state: {after:?}");
    // Each kind is watched once: the controllers share the reflectors' watches.
    for kind in [
        "/senderpools",
        "/deployments",
        "/pods",
        "/services",
        "/endpointslices",
    ] {
        let watches = api
            .requests()
            .iter()
            .filter(|r| {
                r.method == "GET" && r.path.ends_with(kind) && r.query.contains("watch=true")
            })
            .count();
        assert_eq!(watches, 1, "watches of {kind}");
    }
    operator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_created_and_deleted_leave_nothing_in_memory() {
    let api = FakeApi::start().await;
    seed_fleet(&api, 2);
    let operator = start_operator(&api, options()).await;
    converge(&api, "the seed fleet reconciled", |api| {
        pool_status(api, "bulk")["ipCount"] == 2 && route_mode(api, "microsoft") == "Primary"
    })
    .await;
    settle(&api, std::time::Duration::from_millis(300)).await;
    let ctx = operator.context().clone();
    // A pass that writes nothing (its memo says nothing changed) can still
    // be running after the writes stop, and adds its entry when it ends: on
    // a loaded machine the baseline is taken once the count holds for 1 s.
    let mut start = ctx.footprint();
    let mut held_since = tokio::time::Instant::now();
    let baseline_deadline = held_since + std::time::Duration::from_secs(30);
    while held_since.elapsed() < std::time::Duration::from_secs(1)
        && tokio::time::Instant::now() < baseline_deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let now = ctx.footprint();
        if now != start {
            (start, held_since) = (now, tokio::time::Instant::now());
        }
    }
    // In waves of 25: the point is what each created and deleted pool leaves
    // behind. 200 pools by default keep the test quick in a debug build;
    // MAILFLEET_LIFECYCLE_POOLS=1000 runs the full thousand (about 100 s).
    const WAVE: usize = 25;
    let total: usize = std::env::var("MAILFLEET_LIFECYCLE_POOLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    for wave in 0..total.div_ceil(WAVE) {
        let names: Vec<String> = (0..WAVE).map(|i| format!("tmp-{wave}-{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            let mut p = pool(name, &[format!("198.18.{wave}.{}", 1 + i)]);
            // No workloads: the test is about what the operator keeps per pool.
            p["spec"]["replicasPerIp"] = json!({ "min": 0, "max": 1 });
            api.insert(p);
        }
        assert!(
            api.wait_for(
                |api| {
                    api.list(CRD, "SenderPool")
                        .iter()
                        .filter(|p| p["status"]["ipCount"] == 1)
                        .count()
                        >= WAVE
                },
                std::time::Duration::from_secs(30),
            )
            .await,
            "wave {wave}: the pools were not all reconciled"
        );
        assert!(ctx.footprint() >= start + WAVE, "{}", ctx.footprint());
        for name in &names {
            api.remove(CRD, "SenderPool", NS, name);
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while ctx.footprint() > start && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(
            ctx.footprint() <= start,
            "wave {wave}: after deleting the pools the operator keeps {} entries, {} before",
            ctx.footprint(),
            start
        );
    }
    operator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_status_is_written_only_after_its_service_is_applied() {
    let api = FakeApi::start().await;
    seed_fleet(&api, 2);
    seed_pods(&api, "bulk", &bulk_ips(2));
    // The first apply of the route's Service fails.
    api.fail_next("PATCH", "/services/mf-route-microsoft", 500, 1);
    let operator = start_operator(&api, options()).await;
    converge(&api, "the route served once its Service applies", |api| {
        route_mode(api, "microsoft") == "Primary"
    })
    .await;
    let writes = api.writes();
    let failed = writes
        .iter()
        .position(|w| w.path.contains("/services/mf-route-microsoft") && w.status == 500);
    let service = writes
        .iter()
        .position(|w| w.path.contains("/services/mf-route-microsoft") && w.status < 300);
    let status = writes
        .iter()
        .position(|w| w.path.contains("/domainroutes/microsoft/status") && w.status < 300);
    assert!(failed.is_some(), "the injected failure was not met");
    assert!(
        service < status,
        "route status written (request {status:?}) before its Service (request {service:?})"
    );
    operator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_that_does_not_parse_is_reported_and_repaired_and_the_rest_reconciles() {
    let api = FakeApi::start().await;
    seed_fleet(&api, 2);
    let ips = bulk_ips(2);
    let now = jiff::Timestamp::now();
    let hold_down_ends = now + jiff::SignedDuration::from_secs(3600);
    // As another operator version (or a hand edit) might leave it: a state
    // this version does not know, and a ledger of the wrong type, beside a
    // block that must survive the repair.
    api.modify(CRD, "SenderPool", NS, "bulk", |p| {
        p["status"] = json!({
            "ipCount": 2,
            "ips": [{
                "address": ips[0],
                "reputation": [
                    {
                        "provider": "microsoft", "state": "Blocked",
                        "since": now.to_string(), "reason": "ConclusiveBlockReply",
                        "allowancePercent": 0, "holdDownSeconds": 3600, "blockCount": 1,
                        "nextStepAt": hold_down_ends.to_string()
                    },
                    {
                        "provider": "google", "state": "Quarantined",
                        "since": now.to_string(), "reason": "NewerVersion",
                        "allowancePercent": 0
                    }
                ]
            }],
            "feedbackLedger": "not a ledger"
        });
    });
    let operator = start_operator(&api, options()).await;
    // The other pool, and one created later, are reconciled as usual.
    api.insert(pool("late", &["198.51.100.40".to_string()]));
    converge(&api, "the other pools reconciled", |api| {
        deployments(api, "reserve").len() == 2
            && deployments(api, "late").len() == 1
            && pool_status(api, "late")["ipCount"] == 1
    })
    .await;
    converge(&api, "bulk's status repaired", |api| {
        let status = pool_status(api, "bulk");
        status["feedbackLedger"] != "not a ledger"
            && !status.to_string().contains("Quarantined")
            && status["ipCount"] == 2
    })
    .await;
    assert_eq!(deployments(&api, "bulk").len(), 2);
    // What could be read is kept: the block is still there.
    assert_eq!(
        pair_state(&api, "bulk", &ips[0], "microsoft").as_deref(),
        Some("Blocked")
    );
    // The stored status now reads in full.
    let stored: mailfleet::api::SenderPool =
        serde_json::from_value(api.get(CRD, "SenderPool", NS, "bulk").unwrap()).unwrap();
    assert_eq!(stored.status.unwrap().unreadable, None);
    // Reported on the object, naming each field, and counted.
    converge(&api, "an UnreadableStatus event on bulk", |api| {
        api.list("events.k8s.io/v1", "Event").iter().any(|e| {
            let note = e["note"].as_str().unwrap_or("");
            e["reason"] == "UnreadableStatus"
                && e["type"] == "Warning"
                && e["regarding"]["name"] == "bulk"
                && note.contains("status.ips[0].reputation[1].state")
                && note.contains("Quarantined")
                && note.contains("status.feedbackLedger")
        })
    })
    .await;
    let (code, metrics) = get(operator.local_addr(), "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("mailfleet_unreadable_status_total{kind=\"SenderPool\"} 1"),
        "{metrics}"
    );
    // Repaired once: no write loop.
    settle(&api, std::time::Duration::from_millis(300)).await;
    operator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_replaced_or_restored_without_status_keeps_its_ips_blocked() {
    let api = FakeApi::start().await;
    seed_fleet(&api, 2);
    let ips = bulk_ips(2);
    let operator = start_operator(&api, options()).await;
    converge(&api, "bulk reconciled", |api| {
        pool_status(api, "bulk")["ipCount"] == 2
    })
    .await;
    let token = "token-bulk-0";
    seed_pods(&api, "bulk", &ips);
    api.allow_pod_token(token, NS, &pod_name("bulk", &ips[0]));
    let (code, body) = post_feedback(
        operator.local_addr(),
        Some(token),
        &ban_report("bulk", &ips[0], 1),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    converge(&api, "the IP's block kept outside the pool", |api| {
        api.get("v1", "ConfigMap", NS, "mf-reputation-bulk")
            .is_some_and(|cm| {
                let pairs = cm["data"]["pairs.json"].as_str().unwrap_or("");
                pairs.contains(&ips[0]) && pairs.contains("Blocked")
            })
    })
    .await;

    // GitOps replaces the pool: deleted, created again without status.
    api.remove(CRD, "SenderPool", NS, "bulk");
    converge(&api, "bulk's workloads collected", |api| {
        deployments(api, "bulk").is_empty()
    })
    .await;
    assert!(api
        .get("v1", "ConfigMap", NS, "mf-reputation-bulk")
        .is_some());
    api.insert(pool("bulk", &ips));
    converge(&api, "the re-created pool keeps the block", |api| {
        pool_status(api, "bulk")["ipCount"] == 2
            && pair_state(api, "bulk", &ips[0], "microsoft").as_deref() == Some("Blocked")
    })
    .await;
    converge(&api, "a ReputationRestored event", |api| {
        api.list("events.k8s.io/v1", "Event")
            .iter()
            .any(|e| e["reason"] == "ReputationRestored" && e["regarding"]["name"] == "bulk")
    })
    .await;
    converge(&api, "microsoft's route without the blocked IP", |api| {
        let targets = target_ips(api, "microsoft");
        targets.contains(&ips[1]) && !targets.contains(&ips[0])
    })
    .await;

    // Restored from a backup that drops status.
    api.modify(CRD, "SenderPool", NS, "bulk", |p| {
        p["status"] = json!({});
    });
    converge(
        &api,
        "the block back after a restore without status",
        |api| pair_state(api, "bulk", &ips[0], "microsoft").as_deref() == Some("Blocked"),
    )
    .await;
    assert_ne!(
        pair_state(&api, "bulk", &ips[1], "microsoft").as_deref(),
        Some("Blocked")
    );
    settle(&api, std::time::Duration::from_millis(300)).await;
    operator.shutdown().await.unwrap();
}
