//! The classifier on the cluster: the providers the DomainRoutes declare and
//! the rules of the ConfigMap a pool names reach the sender configuration,
//! and the real agent (`mailfleet agent run`, reading that configuration as
//! its mounted ConfigMap) judges a `yahoo.co.jp` refusal as `yahoo-japan`,
//! which blocks the `yahoo-japan` pair through the operator's feedback
//! endpoint. Rules that stop parsing give a condition and an event, and the
//! senders keep the last good ones.

mod operator_harness;
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use operator_harness::*;
use serde_json::{json, Value};
use support::fake_api::FakeApi;

const IP: &str = "203.0.113.10";

const RULES: &str = "rules:\n  - id: yahoo-japan-refused-by-policy\n    description: the refusal this test sends\n    provider: yahoo-japan\n    code: 5xx\n    text: [\"refused by policy\"]\n    category: ip_blocklisted\n    conclusive: true\n";

fn seed(api: &FakeApi) {
    seed_fleet(api, 2);
    let mut bulk = pool("bulk", &bulk_ips(2));
    bulk["spec"]["classifierRules"] = json!({ "configMap": "bulk-rules" });
    api.insert(bulk);
    api.insert(route(
        "yahoo-japan",
        "yahoo-japan",
        json!({ "domains": ["yahoo.co.jp"] }),
        json!([{ "pool": "reserve" }]),
    ));
    api.insert(rules_config_map(RULES));
    seed_pods(api, "bulk", &bulk_ips(2));
    let reserve: Vec<String> = RESERVE_IPS.iter().map(|s| s.to_string()).collect();
    seed_pods(api, "reserve", &reserve);
}

fn rules_config_map(text: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "bulk-rules", "namespace": NS },
        "data": { "rules.yaml": text }
    })
}

fn sender_data(api: &FakeApi) -> Value {
    api.get("v1", "ConfigMap", NS, "mf-bulk-203-0-113-10-config")
        .map(|cm| cm["data"].clone())
        .unwrap_or(Value::Null)
}

fn condition(api: &FakeApi, type_: &str) -> Value {
    pool_status(api, "bulk")["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or(Value::Null)
}

/// Writes the ConfigMap's data as the kubelet mounts it: one file per key.
fn mount(data: &Value, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (key, value) in data.as_object().unwrap() {
        std::fs::write(dir.join(key), value.as_str().unwrap()).unwrap();
    }
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yahoo_japan_refusal_seen_by_an_in_cluster_agent_blocks_the_yahoo_japan_pair() {
    let api = FakeApi::start().await;
    seed(&api);
    let operator = start_operator(&api, options()).await;
    converge(&api, "the sender config carries the classifier", |api| {
        let data = sender_data(api);
        data["classifier-providers.yaml"]
            .as_str()
            .is_some_and(|p| p.contains("yahoo-japan") && p.contains("yahoo.co.jp"))
            && data["classifier-rules.yaml"] == RULES
            && target_ips(api, "yahoo-japan").contains(&IP.to_string())
            && condition(api, "ClassifierRulesValid")["status"] == "True"
    })
    .await;

    // The agent of 203.0.113.10 with only its mounted ConfigMap: no --rules,
    // no --manifests.
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("config");
    mount(&sender_data(&api), &config_dir);
    let log = dir.path().join("maillog");
    std::fs::write(
        &log,
        format!("2026-12-07T06:00:01.000000+00:00 mx1 postfix/smtp[311]: 4TA1B2C3D4: to=<user1@yahoo.co.jp>, relay=mx.mail.yahoo.co.jp[183.79.57.1]:25, delay=0.5, delays=0/0/0.3/0.2, dsn=5.7.1, status=bounced (host mx.mail.yahoo.co.jp[183.79.57.1] said: 553 5.7.1 refused by policy: {IP} (in reply to MAIL FROM command))\n"),
    )
    .unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "token-yahoo-japan").unwrap();
    api.allow_pod_token("token-yahoo-japan", NS, &pod_name("bulk", IP));
    let endpoint = format!("http://{}/v1/feedback", operator.local_addr());
    let agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_mailfleet"))
            .args(["agent", "run", "--source-ip", IP, "--pool", "mail/bulk"])
            .args(["--agent-name", &pod_name("bulk", IP)])
            .arg("--log")
            .arg(&log)
            .arg("--state-file")
            .arg(dir.path().join("state.json"))
            .args(["--endpoint", &endpoint])
            .arg("--token-file")
            .arg(&token)
            .arg("--config-dir")
            .arg(&config_dir)
            .args(["--apply", "none", "--no-metrics", "--interval", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    converge(
        &api,
        "the yahoo-japan pair of 203.0.113.10 is blocked",
        |api| pair_state(api, "bulk", IP, "yahoo-japan").as_deref() == Some("Blocked"),
    )
    .await;
    converge(&api, "the yahoo-japan route sends around it", |api| {
        !target_ips(api, "yahoo-japan").contains(&IP.to_string())
    })
    .await;
    assert_ne!(
        pair_state(&api, "bulk", IP, "other").as_deref(),
        Some("Blocked"),
        "the refusal was judged as `other`"
    );
    drop(agent);

    // Rules that do not parse: a condition and an event naming the field,
    // and the sender configuration keeps the last good rules.
    api.insert(rules_config_map(
        "rules:\n  - id: broken\n    category: not-a-category\n",
    ));
    converge(&api, "ClassifierRulesValid=False", |api| {
        condition(api, "ClassifierRulesValid")["status"] == "False"
    })
    .await;
    let message = condition(&api, "ClassifierRulesValid")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("ConfigMap bulk-rules key rules.yaml") && message.contains("last good"),
        "{message}"
    );
    converge(&api, "a ClassifierRulesInvalid event", |api| {
        api.list("events.k8s.io/v1", "Event").iter().any(|e| {
            e["reason"] == "ClassifierRulesInvalid"
                && e["regarding"]["name"] == "bulk"
                && e["note"].as_str().unwrap_or("").contains("rules.yaml")
        })
    })
    .await;
    assert_eq!(sender_data(&api)["classifier-rules.yaml"], RULES);

    // A ConfigMap that goes away: the same, with the fix to create it.
    api.remove("v1", "ConfigMap", NS, "bulk-rules");
    converge(&api, "ClassifierRulesNotFound", |api| {
        condition(api, "ClassifierRulesValid")["reason"] == "ClassifierRulesNotFound"
    })
    .await;
    assert_eq!(sender_data(&api)["classifier-rules.yaml"], RULES);
}
