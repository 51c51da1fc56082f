//! The `mailfleet agent` binary: `replay` output, and `run` killed with
//! SIGKILL twice while the log grows (a real crash, not a clean stop), then
//! stopped with SIGTERM: the endpoint counts every attempt exactly once, and
//! `/metrics` serves the counters.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mailfleet::agent::replay::{replay_bytes, ReplayOptions};
use mailfleet::agent::state::AgentState;
use mailfleet::reputation::classifier::Classifier;
use support::agent::{delivery_line, FakeEndpoint};

const BIN: &str = env!("CARGO_BIN_EXE_mailfleet");

fn write_lines(path: &Path, range: std::ops::Range<usize>, all: &mut Vec<u8>) {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for i in range {
        let line = format!("{}\n", delivery_line(i, i));
        f.write_all(line.as_bytes()).unwrap();
        all.extend_from_slice(line.as_bytes());
    }
}

#[test]
fn replay_prints_the_documented_json_and_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("maillog");
    let mut all = Vec::new();
    write_lines(&log, 0..60, &mut all);
    fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(b"\xff\xfe garbage\n")
        .unwrap();
    let out = Command::new(BIN)
        .args([
            "agent",
            "replay",
            "--source-ip",
            "203.0.113.10",
            "--log",
            log.to_str().unwrap(),
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "attempts",
            "conclusive",
            "lines",
            "skipped",
            "source_ip",
            "totals"
        ]
    );
    assert_eq!(json["source_ip"], "203.0.113.10");
    assert_eq!(json["lines"], 61);
    assert_eq!(json["skipped"], 11, "10 qmgr lines and the garbage");
    assert_eq!(json["attempts"], 50);
    let rows = json["totals"].as_array().unwrap();
    let keys: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["provider"].as_str().unwrap().into(),
                r["outcome"].as_str().unwrap().into(),
                r["category"].as_str().unwrap().into(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "totals sorted by provider, outcome, category");
    assert!(rows.iter().all(|r| r.as_object().unwrap().len() == 4));
    let microsoft_blocked = rows
        .iter()
        .find(|r| r["provider"] == "microsoft" && r["category"] == "ip_blocklisted")
        .expect("the ban replies are counted");
    assert_eq!(microsoft_blocked["count"], 10);
    assert_eq!(microsoft_blocked["outcome"], "deferred");
    let conclusive = json["conclusive"].as_array().unwrap();
    // The ban replies, and Yahoo's [TSS04] replies, whose rule asks for a pause.
    let of = |provider: &str| {
        conclusive
            .iter()
            .filter(|c| c["provider"] == provider)
            .count()
    };
    assert_eq!(
        (of("microsoft"), of("yahoo"), conclusive.len()),
        (10, 10, 20)
    );
    assert_eq!(conclusive[0]["provider"], "microsoft");
    assert_eq!(conclusive[0]["at"], "2021-11-04T23:00:00Z");
    assert!(conclusive[0]["reply"].as_str().unwrap().contains("5.7.606"));

    let out = Command::new(BIN)
        .args([
            "agent",
            "replay",
            "--source-ip",
            "203.0.113.10",
            "--log",
            log.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("source IP 203.0.113.10: 61 lines, 50 delivery attempts, 11 skipped (binary 1, not_delivery 10)"), "{text}");
    assert!(
        text.contains("PROVIDER   OUTCOME    CATEGORY           COUNT"),
        "{text}"
    );

    let out = Command::new(BIN)
        .args([
            "agent",
            "replay",
            "--source-ip",
            "203.0.113.10",
            "--log",
            "/nonexistent/maillog",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read --log /nonexistent/maillog"));
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_agent(dir: &Path, endpoint: &FakeEndpoint, metrics_port: u16) -> Agent {
    let child = Command::new(BIN)
        .args([
            "agent",
            "run",
            "--source-ip",
            "203.0.113.10",
            "--pool",
            "mail/bulk",
            "--agent-name",
            "bulk-pod",
        ])
        .arg("--log")
        .arg(dir.join("maillog"))
        .arg("--state-file")
        .arg(dir.join("state.json"))
        .args([
            "--endpoint",
            &endpoint.url(),
            "--interval",
            "0.1",
            "--timeout",
            "1",
            "--poll",
            "0.02",
            "--drain-grace",
            "0.3",
        ])
        .arg("--token-file")
        .arg(dir.join("token"))
        .args(["--listen", &format!("127.0.0.1:{metrics_port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Agent(child)
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

#[test]
fn run_survives_kill_9_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("token"), "t0ken").unwrap();
    let log = dir.path().join("maillog");
    let endpoint = FakeEndpoint::start(&[]);
    let mut all = Vec::new();
    let mut next = 0;
    for round in 0..2 {
        let port = free_port();
        let mut agent = start_agent(dir.path(), &endpoint, port);
        for _ in 0..8 {
            write_lines(&log, next..next + 9, &mut all);
            next += 9;
            std::thread::sleep(Duration::from_millis(40 + 20 * round));
        }
        agent.0.kill().unwrap();
        agent.0.wait().unwrap();
    }
    write_lines(&log, next..next + 20, &mut all);

    let port = free_port();
    let mut agent = start_agent(dir.path(), &endpoint, port);
    let expected = replay_bytes(
        &Classifier::builtin(),
        "203.0.113.10".parse().unwrap(),
        &all,
        &ReplayOptions::default(),
    );
    let all_in = endpoint.wait_for_attempts(expected.attempts, Duration::from_secs(30));
    {
        let s = endpoint.lock();
        assert!(all_in, "counted {} of {}", s.attempts(), expected.attempts);
        assert_eq!(
            s.attempts(),
            expected.attempts,
            "nothing counted twice after two crashes"
        );
        let totals: Vec<(String, String, String, u64)> = s
            .totals()
            .into_iter()
            .map(|((p, o, c), n)| (p, o.to_string(), c.to_string(), n))
            .collect();
        let want: Vec<(String, String, String, u64)> = expected
            .totals
            .iter()
            .map(|r| {
                (
                    r.provider.clone(),
                    r.outcome.to_string(),
                    r.category.to_string(),
                    r.count,
                )
            })
            .collect();
        let (mut totals, mut want) = (totals, want);
        totals.sort();
        want.sort();
        assert_eq!(totals, want);
        assert!(s
            .received
            .iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer t0ken")));
        assert!(s.counted.iter().all(|r| r.agent.name == "bulk-pod"
            && r.pool.name == "bulk"
            && r.source_ip.to_string() == "203.0.113.10"));
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        if let Some(text) =
            get(port, "/metrics").filter(|t| t.contains("mailfleet_agent_reports_sent_total"))
        {
            break text;
        }
        assert!(Instant::now() < deadline, "/metrics answers");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    assert!(metrics.contains("mailfleet_agent_attempts_total{provider=\"microsoft\",outcome=\"deferred\",category=\"ip_blocklisted\"}"), "{metrics}");
    assert!(
        metrics.contains("mailfleet_agent_lines_skipped_total{reason=\"not_delivery\"}"),
        "{metrics}"
    );
    assert!(get(port, "/healthz").unwrap().ends_with("ok\n"));
    assert!(get(port, "/nothing").unwrap().starts_with("HTTP/1.1 404"));

    // SAFETY: sends SIGTERM to the agent this test started.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let status = agent.0.wait().unwrap();
    let mut stderr = String::new();
    agent
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        status.success(),
        "clean exit on SIGTERM: {status}\n{stderr}"
    );
    assert!(
        stderr.contains("stopped; every report was acknowledged"),
        "{stderr}"
    );
    let state = AgentState::load(&dir.path().join("state.json"))
        .unwrap()
        .unwrap();
    assert!(state.reporter.outbox.is_empty());
}
