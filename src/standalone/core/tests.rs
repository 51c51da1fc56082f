use std::path::Path;

use super::*;
use crate::agent::report::{AgentIdentity, ConclusiveEvidence, TotalCount};
use crate::api::conditions::ConditionStatus;
use crate::probe::dnsbl::DnsblHealth;
use crate::vocab::{Category, Outcome};

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn now() -> Timestamp {
    at("2026-11-29T08:10:00Z")
}

fn example() -> Manifests {
    crate::manifests::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet"))
        .unwrap()
}

fn start() -> Core {
    let (core, gone) =
        Core::start(example(), None, None, PostfixOptions::default(), now()).unwrap();
    assert!(gone.is_empty());
    core
}

fn report(ip: &str, sequence: u64, conclusive: bool) -> FeedbackReport {
    let reply = format!("550 5.7.606 Access denied, banned sending IP [{ip}]");
    FeedbackReport {
        agent: AgentIdentity {
            name: "bulk-0".into(),
            instance: format!("agent-{ip}"),
        },
        totals: vec![if conclusive {
            TotalCount {
                provider: "microsoft".into(),
                outcome: Outcome::Deferred,
                category: Category::IpBlocklisted,
                count: 1,
            }
        } else {
            TotalCount {
                provider: "google".into(),
                outcome: Outcome::Delivered,
                category: Category::None,
                count: 5,
            }
        }],
        conclusive: if conclusive {
            vec![ConclusiveEvidence {
                provider: "microsoft".into(),
                reply,
                at: now(),
                named_ip: ip.parse().ok(),
                pause_seconds: None,
            }]
        } else {
            Vec::new()
        },
        ..FeedbackReport::counting_nothing(ip, sequence, now())
    }
}

fn events(core: &mut Core) -> Vec<Value> {
    core.take_events()
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn microsoft_targets(core: &Core) -> Vec<String> {
    core.table()
        .routes
        .iter()
        .find(|r| r.provider == "microsoft")
        .unwrap()
        .targets
        .iter()
        .map(|t| t.ip.clone())
        .collect()
}

#[test]
fn a_conclusive_report_reroutes_at_once_and_answers_with_the_new_config() {
    let mut core = start();
    let first = events(&mut core);
    let routes = first.iter().filter(|e| e["event"] == "route").count();
    assert_eq!(
        routes,
        core.fleet().routes.len(),
        "the first compile announces every route"
    );
    let before = core.outputs();
    assert!(microsoft_targets(&core).contains(&"203.0.113.12".to_string()));

    let answer = core
        .receive(&report("203.0.113.12", 1, true), now())
        .unwrap();
    assert!(!answer.duplicate);
    assert!(!microsoft_targets(&core).contains(&"203.0.113.12".to_string()));
    let after = core.outputs();
    let hint = answer.config.unwrap();
    let sender = &after.senders["203.0.113.12"];
    assert_eq!(hint.version, sender.config.version);
    assert_ne!(hint.version, before.senders["203.0.113.12"].config.version);
    assert_eq!(
        hint.files.as_ref(),
        Some(&sender.config.files),
        "files go with a new version"
    );
    assert_eq!(sender.slug, "mf-203-0-113-12");
    assert_ne!(before.routes, after.routes);

    let lines = events(&mut core);
    let transition = lines.iter().find(|e| e["event"] == "transition").unwrap();
    assert_eq!(transition["pool"], "mail/bulk");
    assert_eq!(transition["ip"], "203.0.113.12");
    assert_eq!(transition["provider"], "microsoft");
    assert_eq!(transition["to"], "Blocked");
    assert!(transition["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(transition.get("from").is_some() && transition.get("at").is_some());
    let route = lines.iter().find(|e| e["event"] == "route").unwrap();
    assert_eq!(route["route"], "mail/microsoft");
    assert!(!route["targets"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["ip"] == "203.0.113.12"));

    let again = core
        .receive(&report("203.0.113.12", 1, true), now())
        .unwrap();
    assert!(again.duplicate);
    assert!(events(&mut core).is_empty());
    let mut up_to_date = report("203.0.113.12", 2, false);
    up_to_date.config_version = Some(sender.config.version.clone());
    let hint = core.receive(&up_to_date, now()).unwrap().config.unwrap();
    assert_eq!(
        hint.files, None,
        "an agent on the current version gets no files"
    );

    let metrics = core.metrics();
    for line in [
        "mailfleet_feedback_reports_total{pool=\"mail/bulk\",result=\"counted\"} 2",
        "mailfleet_feedback_reports_total{pool=\"mail/bulk\",result=\"duplicate\"} 1",
        "mailfleet_ip_state{pool=\"mail/bulk\",ip=\"203.0.113.12\",provider=\"microsoft\",state=\"Blocked\"} 1",
        "mailfleet_ip_state{pool=\"mail/bulk\",ip=\"203.0.113.12\",provider=\"microsoft\",state=\"Healthy\"} 0",
        "mailfleet_route_targets{route=\"mail/microsoft\",mode=\"Primary\"}",
        "mailfleet_reputation_transitions_total{provider=\"microsoft\",",
        "mailfleet_manifests_valid 1",
    ] {
        assert!(metrics.contains(line), "{line} missing in\n{metrics}");
    }
}

#[test]
fn a_refused_report_is_counted_as_refused_and_changes_nothing() {
    let mut core = start();
    events(&mut core);
    let before = core.outputs();
    let refusal = core
        .receive(&report("192.0.2.77", 1, true), now())
        .unwrap_err();
    assert!(matches!(refusal, FeedbackRefusal::Invalid(_)));
    assert_eq!(core.outputs(), before);
    assert!(core
        .metrics()
        .contains("mailfleet_feedback_reports_total{pool=\"mail/bulk\",result=\"refused\"} 1"));

    // A pool the fleet does not have never becomes a label value.
    let mut stranger = report("203.0.113.12", 1, true);
    stranger.pool.name = "made-up".into();
    assert!(core.receive(&stranger, now()).is_err());
    let metrics = core.metrics();
    assert!(
        metrics.contains("mailfleet_feedback_reports_total{pool=\"\",result=\"refused\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("made-up"), "{metrics}");
}

#[test]
fn a_steady_fleet_gives_the_same_outputs_tick_after_tick() {
    let mut core = start();
    events(&mut core);
    let first = core.outputs();
    core.tick(at("2026-11-29T08:10:01Z")).unwrap();
    core.tick(at("2026-11-29T08:10:02Z")).unwrap();
    assert_eq!(core.outputs(), first);
    assert!(events(&mut core).is_empty());
}

#[test]
fn refused_manifests_leave_the_last_good_ones_and_a_fix_clears_the_problem() {
    let mut core = start();
    core.receive(&report("203.0.113.12", 1, true), now())
        .unwrap();
    events(&mut core);
    let routes = core.outputs().routes;
    let broken = crate::manifests::ManifestError::Empty {
        path: "manifests/".into(),
    };
    core.reload(Err(broken), now());
    let problems = core.problems();
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].contains("manifests/ has no .yaml"),
        "{problems:?}"
    );
    assert_eq!(core.outputs().routes, routes);
    assert!(core
        .metrics()
        .contains("mailfleet_manifest_reload_errors_total{category=\"io\"} 1"));
    assert!(core.metrics().contains("mailfleet_manifests_valid 0"));

    let mut fewer = example();
    fewer.routes.retain(|r| r.spec.provider != "yahoo-japan");
    core.reload(Ok(fewer), now());
    assert!(core.problems().is_empty());
    assert!(!core.outputs().routes.contains("yahoo-japan"));
    assert!(
        !microsoft_targets(&core).contains(&"203.0.113.12".to_string()),
        "a reload forgot the block"
    );
}

#[test]
fn a_restart_from_the_saved_state_keeps_the_block_and_the_ledger() {
    let mut core = start();
    core.receive(&report("203.0.113.12", 1, true), now())
        .unwrap();
    let saved = state::parse(&core.outputs().state, Path::new("state.yaml")).unwrap();
    let later = at("2026-11-29T08:11:00Z");
    let (mut restarted, gone) = Core::start(
        example(),
        Some(saved),
        None,
        PostfixOptions::default(),
        later,
    )
    .unwrap();
    assert!(gone.is_empty());
    assert!(!microsoft_targets(&restarted).contains(&"203.0.113.12".to_string()));
    assert!(
        events(&mut restarted).is_empty(),
        "a restart is not a route change"
    );
    assert!(
        restarted
            .receive(&report("203.0.113.12", 1, true), later)
            .unwrap()
            .duplicate
    );
}

#[test]
fn probe_results_set_the_pool_condition_and_feed_the_engine() {
    let mut core = start();
    let health = DnsblHealth {
        status: ConditionStatus::False,
        reason: "ZoneAnswersOnlyErrors",
        message: "zen.spamhaus.org answered only errors".into(),
    };
    let problems = core.apply_probes(
        vec![("192.0.2.200".into(), Signal::Feedback(Default::default()))],
        &[("mail/bulk".into(), Some(health))],
        now(),
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    let conditions = &core.fleet().pools[0].status.as_ref().unwrap().conditions;
    let dnsbl = conditions
        .iter()
        .find(|c| c.type_ == DNSBL_HEALTHY)
        .unwrap();
    assert_eq!(dnsbl.status, ConditionStatus::False);
    assert!(core.outputs().state.contains("ZoneAnswersOnlyErrors"));
    core.apply_probes(Vec::new(), &[("mail/bulk".into(), None)], now());
    let conditions = &core.fleet().pools[0].status.as_ref().unwrap().conditions;
    assert!(conditions.iter().all(|c| c.type_ != DNSBL_HEALTHY));
}

#[test]
fn a_sender_that_cannot_bind_its_address_shows_in_the_state_and_the_events() {
    let mut core = start();
    events(&mut core);
    let ip = "198.51.100.20";
    let mut unbound = report(ip, 1, false);
    unbound.pool.name = "reserve".into();
    unbound.agent.name = "reserve-198-51-100-20-0".into();
    unbound.ip_binding = Some(crate::agent::report::IpBindingReport {
        address: ip.parse().unwrap(),
        bound: false,
        detail: Some("Cannot assign requested address (os error 99)".into()),
    });
    core.receive(&unbound, now()).unwrap();
    let state: Value = {
        let text = core.outputs().state;
        serde_json::from_str(&text).unwrap()
    };
    let reserve = state["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "SenderPool" && i["metadata"]["name"] == "reserve")
        .unwrap();
    let ip_status = reserve["status"]["ips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["address"] == ip)
        .unwrap();
    let condition = ip_status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "IpBound")
        .expect("the state file shows IpBound");
    assert_eq!(condition["status"], "False");
    let message = condition["message"].as_str().unwrap();
    assert!(
        message.contains("spec.ips[0].address") && message.contains("spec.ipBinding.mode: Snat"),
        "{message}"
    );
    let said = events(&mut core);
    assert!(
        said.iter()
            .any(|e| e["event"] == "ip_bound" && e["ip"] == ip && e["status"] == "False"),
        "{said:?}"
    );
    // Its sender keeps a configuration: mail handed to it goes on.
    assert!(core.outputs().senders.contains_key(ip));
}
