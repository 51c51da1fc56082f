//! The agent against real Postfix output. Two private Postfix instances send
//! from 127.0.0.7 and 127.0.0.8 (transports bound with `smtp_bind_address`,
//! rendered by mailfleet) to an aiosmtpd receiver on 127.0.0.1
//! (tests/lab/receiver.py) that answers like Microsoft, Gmail and Yahoo do,
//! depending on the client IP and the recipient, and records every answer.
//! Then:
//! - `mailfleet agent replay` over each instance's log counts exactly what the
//!   receiver answered, per (provider, outcome, category);
//! - `mailfleet agent run` follows the 127.0.0.7 log while Postfix writes it and
//!   reports the same counts to a local feedback endpoint, the ban reply at once;
//! - when the configuration folder changes (Microsoft blocked for 127.0.0.7,
//!   so its mail goes to the route's Service), the agent applies it: the mail
//!   the block held in the deferred queue leaves through the new route.
//!
//! No log line is written by hand. Needs root, Postfix and target/venv with
//! aiosmtpd (scripts/ensure-tools.sh); MAILFLEET_SKIP_POSTFIX=1 skips it.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use mailfleet::agent::apply::PostfixTarget;
use mailfleet::agent::config::read_config_dir;
use mailfleet::agent::state::AgentState;
use mailfleet::api::{DomainRoute, ReputationState, SenderPool};
use mailfleet::routing::compile;
use mailfleet::routing::example::{self, match_domains, pair, set_pair};
use mailfleet::routing::postfix::{
    render_sender, PostfixOptions, Sender, STATUS_FILTER_FILE, TRANSPORT_FILE,
};
use support::agent::FakeEndpoint;
use support::lab_receiver::{self, LabReceiver};
use support::postfix::{
    self, reap_postfix_daemons, PrivatePostfix, BIN_DIR, POSTFIX, POSTMAP, POSTQUEUE, SENDMAIL,
};

const BIN: &str = env!("CARGO_BIN_EXE_mailfleet");

/// True when the lab can run; a missing piece fails with the command that
/// installs it, unless MAILFLEET_SKIP_POSTFIX=1.
fn lab_available() -> bool {
    let mut missing = postfix::missing_programs(&[POSTFIX, SENDMAIL, POSTMAP, POSTQUEUE]);
    missing.extend(lab_receiver::missing());
    postfix::nothing_missing(
        &missing,
        "the agent's real-Postfix test",
        "scripts/ensure-tools.sh    (or `make tools`)",
    ) && postfix::running_as_root(
        "the agent's real-Postfix test needs root (Postfix queue ownership)",
    )
}

/// What the receiver says, per client IP and provider (tests/lab/receiver.py).
const POLICY: &str = r#"{
  "domains": {"hotmail.com": "microsoft", "outlook.com": "microsoft", "gmail.com": "google", "yahoo.com": "yahoo"},
  "clients": {
    "127.0.0.7": {"microsoft": "ms_banned", "yahoo": "yahoo_tss04"},
    "127.0.0.8": {"microsoft": "ms_rate_limited", "google": "google_low_reputation", "yahoo": "yahoo_tss09"}
  },
  "local_parts": {"nobody": "unknown_user", "full": "mailbox_full"}
}"#;

/// What each answer must become in the agent's counts: the outcome Postfix
/// gives it (the rendered status filter defers conclusive bans) and the
/// category the classifier must find; and whether it is conclusive.
fn expected_for(kind: &str) -> (&'static str, &'static str, bool) {
    match kind {
        "ok" => ("delivered", "none", false),
        "ms_banned" => ("deferred", "ip_blocklisted", true),
        "ms_rate_limited" => ("deferred", "ip_rate_limited", false),
        "google_low_reputation" => ("bounced", "ip_blocklisted", false),
        // A rate limit, but its rule asks for a pause: reported as evidence.
        "yahoo_tss04" => ("deferred", "ip_rate_limited", true),
        "yahoo_tss09" => ("deferred", "ip_blocklisted", true),
        "unknown_user" => ("bounced", "recipient_unknown", false),
        "mailbox_full" => ("bounced", "mailbox_full", false),
        other => panic!("the test has no expectation for answer kind {other}"),
    }
}

/// One message per recipient; the receiver answers each by client IP.
const RECIPIENTS: [&str; 6] = [
    "alice@hotmail.com",
    "bob@outlook.com",
    "carol@gmail.com",
    "nobody@gmail.com",
    "erin@yahoo.com",
    "full@hotmail.com",
];

/// A private Postfix sending from one source IP, its transports configured
/// later by the agent's `PostfixTarget`.
fn lab_postfix(name: &str) -> PrivatePostfix {
    PrivatePostfix::new(
        &format!("mailfleet-agent-{name}-"),
        &format!(
            "myhostname = {name}.sender.mailfleet.test\n\
             inet_protocols = ipv4\n\
             smtp_host_lookup = native\n\
             disable_dns_lookups = yes\n\
             smtp_connection_cache_on_demand = no\n"
        ),
        "",
    )
}

/// Submits one message with a null sender (no bounce messages to route).
fn send(postfix: &PrivatePostfix, to: &str) {
    let message = format!("Subject: mailfleet agent lab\nTo: {to}\n\nhello\n");
    postfix.send("<>", to, &message);
}

struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now() -> Timestamp {
    "2021-11-05T08:10:00Z".parse().unwrap()
}

fn lab_fleet() -> (SenderPool, Vec<DomainRoute>) {
    let pool = example::pool(
        "lab",
        "senders",
        &["127.0.0.7".to_string(), "127.0.0.8".to_string()],
    );
    let routes = vec![
        example::route(
            "lab",
            "microsoft",
            "microsoft",
            match_domains(&["hotmail.com", "outlook.com"]),
            "senders",
        ),
        example::route(
            "lab",
            "google",
            "google",
            match_domains(&["gmail.com"]),
            "senders",
        ),
        example::route(
            "lab",
            "yahoo",
            "yahoo",
            match_domains(&["yahoo.com"]),
            "senders",
        ),
    ];
    (pool, routes)
}

/// The ConfigMap the operator would render for `ip`, as key -> content.
fn rendered_config(
    pool: &SenderPool,
    routes: &[DomainRoute],
    ip: &str,
    receiver_port: u16,
    version: &str,
) -> Vec<(String, String)> {
    let table = compile(std::slice::from_ref(pool), routes, now());
    let options = PostfixOptions {
        direct_nexthop: Some(format!("[127.0.0.1]:{receiver_port}")),
        // The route Service stands in as the receiver on 127.0.0.1: mail a
        // blocked IP hands over arrives from 127.0.0.1, which the receiver accepts.
        route_service_host: "127.0.0.1".to_string(),
        route_service_port: receiver_port,
        ..PostfixOptions::default()
    };
    let sender = Sender {
        namespace: "lab".into(),
        pool: "senders".into(),
        ip: ip.into(),
        settings: Default::default(),
    };
    let files = render_sender(&table, &sender, &BTreeMap::new(), &options).unwrap();
    vec![
        ("config-version".into(), version.into()),
        ("main.cf".into(), files.main_cf),
        ("master.cf".into(), files.master_cf),
        (TRANSPORT_FILE.into(), files.transport),
        (STATUS_FILTER_FILE.into(), files.status_filter),
    ]
}

/// Writes a config folder the way the kubelet updates a ConfigMap volume.
fn kubelet_write(dir: &Path, stamp: &str, files: &[(String, String)]) {
    fs::create_dir_all(dir).unwrap();
    let data = dir.join(format!("..{stamp}"));
    fs::create_dir_all(&data).unwrap();
    for (k, v) in files {
        fs::write(data.join(k), v).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp);
    symlink(format!("..{stamp}"), &tmp).unwrap();
    fs::rename(&tmp, dir.join("..data")).unwrap();
    for (k, _) in files {
        if fs::symlink_metadata(dir.join(k)).is_err() {
            symlink(format!("..data/{k}"), dir.join(k)).unwrap();
        }
    }
}

type Totals = BTreeMap<(String, String, String), u64>;

/// What the receiver answered to the clients of one sender, as the agent must count it.
fn expected_from_answers(answers: &[serde_json::Value], clients: &[&str]) -> (Totals, usize) {
    let mut totals = Totals::new();
    let mut conclusive = 0;
    for a in answers
        .iter()
        .filter(|a| clients.contains(&a["client_ip"].as_str().unwrap()))
    {
        let (outcome, category, is_conclusive) = expected_for(a["kind"].as_str().unwrap());
        let key = (
            a["provider"].as_str().unwrap().to_string(),
            outcome.to_string(),
            category.to_string(),
        );
        *totals.entry(key).or_default() += 1;
        conclusive += usize::from(is_conclusive);
    }
    (totals, conclusive)
}

fn replay(log: &Path, ip: &str) -> serde_json::Value {
    let out = Command::new(BIN)
        .args([
            "agent",
            "replay",
            "--source-ip",
            ip,
            "--format",
            "json",
            "--log",
        ])
        .arg(log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "agent replay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn replay_totals(json: &serde_json::Value) -> Totals {
    json["totals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let key = (
                r["provider"].as_str().unwrap().into(),
                r["outcome"].as_str().unwrap().into(),
                r["category"].as_str().unwrap().into(),
            );
            (key, r["count"].as_u64().unwrap())
        })
        .collect()
}

/// Waits until the log holds one delivery line per receiver answer to `clients`,
/// at least `min` of them, and nothing moved for a moment.
fn wait_settled(postfix: &PrivatePostfix, receiver: &LabReceiver, clients: &[&str], min: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stable_since: Option<(usize, Instant)> = None;
    loop {
        let answers = receiver
            .answers()
            .iter()
            .filter(|a| clients.contains(&a["client_ip"].as_str().unwrap()))
            .count();
        let lines = postfix.status_lines();
        if lines >= min && lines == answers {
            match stable_since {
                Some((n, since)) if n == lines && since.elapsed() > Duration::from_millis(500) => {
                    return
                }
                Some((n, _)) if n == lines => {}
                _ => stable_since = Some((lines, Instant::now())),
            }
        } else {
            stable_since = None;
        }
        assert!(
            Instant::now() < deadline,
            "{lines} delivery lines, {answers} answers to {clients:?} (want >= {min}, equal):\n{}\n{:#?}",
            postfix.maillog(),
            receiver.answers()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_agent_counts_what_a_real_postfix_was_answered_and_applies_a_new_route() {
    if !lab_available() {
        return;
    }
    postfix::become_subreaper();
    let work = tempfile::tempdir().unwrap();
    let receiver = LabReceiver::start(work.path(), POLICY, None);
    let (mut pool, routes) = lab_fleet();

    // Sender A (127.0.0.7): its configuration comes from a ConfigMap folder, and its agent runs.
    let mut a = lab_postfix("a");
    let config_dir = work.path().join("configmap");
    let v1 = rendered_config(&pool, &routes, "127.0.0.7", receiver.port, "v1");
    kubelet_write(&config_dir, "2021_11_05_08_10_00.1", &v1);
    let target = PostfixTarget {
        config_dir: a.etc.clone(),
        bin_dir: BIN_DIR.into(),
        relay_secrets_dir: None,
    };
    target
        .apply(&read_config_dir(&config_dir).unwrap())
        .unwrap();

    // Sender B (127.0.0.8): configured once, replayed only.
    let mut b = lab_postfix("b");
    let v1_b = rendered_config(&pool, &routes, "127.0.0.8", receiver.port, "v1");
    let files_b: BTreeMap<String, Vec<u8>> = v1_b
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    PostfixTarget {
        config_dir: b.etc.clone(),
        bin_dir: BIN_DIR.into(),
        relay_secrets_dir: None,
    }
    .apply(&mailfleet::agent::config::ConfigSnapshot::from_files(files_b).unwrap())
    .unwrap();
    PrivatePostfix::control(&mut [&mut a, &mut b], "start");

    let endpoint = FakeEndpoint::start(&[]);
    fs::write(work.path().join("token"), "lab-token").unwrap();
    let mut agent = AgentProcess(
        Command::new(BIN)
            .args([
                "agent",
                "run",
                "--source-ip",
                "127.0.0.7",
                "--pool",
                "lab/senders",
                "--no-metrics",
            ])
            .arg("--log")
            .arg(a.maillog_path())
            .arg("--state-file")
            .arg(work.path().join("agent-state.json"))
            .args([
                "--endpoint",
                &endpoint.url(),
                "--interval",
                "0.5",
                "--poll",
                "0.05",
                "--config-poll",
                "0.2",
                "--timeout",
                "2",
            ])
            .arg("--token-file")
            .arg(work.path().join("token"))
            .arg("--config-dir")
            .arg(&config_dir)
            .arg("--postfix-config-dir")
            .arg(&a.etc)
            .args(["--postfix-bin-dir", BIN_DIR])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let state_file = work.path().join("agent-state.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    while AgentState::load(&state_file)
        .ok()
        .flatten()
        .and_then(|s| s.applied_config)
        .as_deref()
        != Some("v1")
    {
        assert!(Instant::now() < deadline, "the agent applies v1");
        assert!(agent.0.try_wait().unwrap().is_none(), "the agent exited");
        std::thread::sleep(Duration::from_millis(50));
    }

    for to in RECIPIENTS {
        send(&a, to);
        send(&b, to);
    }
    wait_settled(&a, &receiver, &["127.0.0.7"], RECIPIENTS.len());
    wait_settled(&b, &receiver, &["127.0.0.8"], RECIPIENTS.len());

    // Replay of each real log matches the receiver's answers.
    let answers = receiver.answers();
    for (postfix, ip) in [(&b, "127.0.0.8"), (&a, "127.0.0.7")] {
        let (expected, conclusive) = expected_from_answers(&answers, &[ip]);
        let json = replay(&postfix.maillog_path(), ip);
        assert_eq!(
            replay_totals(&json),
            expected,
            "replay of {ip}'s log against the receiver's answers:\n{}",
            postfix.maillog()
        );
        assert_eq!(json["attempts"].as_u64().unwrap(), RECIPIENTS.len() as u64);
        assert_eq!(
            json["conclusive"].as_array().unwrap().len(),
            conclusive,
            "{json:#}"
        );
        assert!(
            json["lines"].as_u64().unwrap() > json["attempts"].as_u64().unwrap(),
            "Postfix logs more than deliveries"
        );
    }

    // The agent reported the ban at once, and the counts it sent match.
    let deadline = Instant::now() + Duration::from_secs(20);
    while endpoint.lock().conclusive() == 0 {
        assert!(
            Instant::now() < deadline,
            "the conclusive reply reaches the endpoint"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let first = endpoint
        .lock()
        .counted
        .iter()
        .find(|r| !r.conclusive.is_empty())
        .cloned()
        .unwrap();
    assert!(
        first.conclusive[0]
            .reply
            .contains("5.7.606 Access denied, banned sending IP [127.0.0.7]"),
        "{first:?}"
    );
    assert_eq!(
        first.conclusive[0].named_ip,
        Some("127.0.0.7".parse().unwrap())
    );

    // The operator blocks Microsoft on 127.0.0.7: its mail goes to the route's Service.
    set_pair(
        &mut pool,
        "127.0.0.7",
        pair("microsoft", ReputationState::Blocked, 0, now()),
    );
    let v2 = rendered_config(&pool, &routes, "127.0.0.7", receiver.port, "v2");
    assert!(
        v2.iter().any(|(k, v)| k == TRANSPORT_FILE
            && v.contains(&format!("hotmail.com\tsmtp:[127.0.0.1]:{}", receiver.port))),
        "{v2:?}"
    );
    kubelet_write(&config_dir, "2021_11_05_08_12_00.2", &v2);

    // The held Microsoft mail leaves through the new route (from 127.0.0.1), without waiting for a queue run.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rerouted: Vec<String> = receiver
            .answers()
            .iter()
            .filter(|a| a["client_ip"] == "127.0.0.1" && a["kind"] == "ok")
            .map(|a| a["recipient"].as_str().unwrap().to_string())
            .collect();
        if rerouted.len() >= 2 {
            assert!(
                rerouted.contains(&"alice@hotmail.com".to_string())
                    && rerouted.contains(&"bob@outlook.com".to_string()),
                "{rerouted:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deferred Microsoft mail was not re-sent through the new route:\n{}",
            a.maillog()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        a.maillog()
            .contains("to=<alice@hotmail.com>, relay=127.0.0.1[127.0.0.1]"),
        "{}",
        a.maillog()
    );
    assert!(fs::read_to_string(a.etc.join("main.cf"))
        .unwrap()
        .contains("# BEGIN mailfleet"));
    // `postqueue -f` retries all of A's deferred mail: the two rerouted, and Yahoo's (deferred again).
    wait_settled(
        &a,
        &receiver,
        &["127.0.0.7", "127.0.0.1"],
        RECIPIENTS.len() + 3,
    );

    // Everything A's Postfix logged, counted three ways: receiver, replay, and the running agent.
    let answers = receiver.answers();
    let (expected, _) = expected_from_answers(&answers, &["127.0.0.7", "127.0.0.1"]);
    let json = replay(&a.maillog_path(), "127.0.0.7");
    assert_eq!(
        replay_totals(&json),
        expected,
        "replay after the reroute:\n{}",
        a.maillog()
    );
    let attempts = json["attempts"].as_u64().unwrap();
    let all_in = endpoint.wait_for_attempts(attempts, Duration::from_secs(20));
    let s = endpoint.lock();
    assert!(
        all_in,
        "the running agent reported {} of {attempts} attempts",
        s.attempts()
    );
    let reported: Totals = s
        .totals()
        .into_iter()
        .map(|((p, o, c), n)| ((p, o.to_string(), c.to_string()), n))
        .collect();
    assert_eq!(
        reported, expected,
        "agent run against the receiver's answers"
    );
    assert!(
        s.counted
            .iter()
            .any(|r| r.config_version.as_deref() == Some("v2")),
        "reports name the applied version"
    );
    assert!(s
        .received
        .iter()
        .all(|r| r.authorization.as_deref() == Some("Bearer lab-token")));
    drop(s);

    // SAFETY: SIGTERM to the agent this test started.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let status = agent.0.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(agent.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("applied the sender configuration from the config folder")
            && stderr.contains("reloaded Postfix"),
        "{stderr}"
    );
    PrivatePostfix::control(&mut [&mut a, &mut b], "stop");
    reap_postfix_daemons();
}
