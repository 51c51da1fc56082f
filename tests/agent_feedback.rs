//! `agent run` against a local feedback endpoint that fails, hangs, refuses
//! and accepts, while the log is written, rotated and truncated under it:
//! every attempt written to the log is counted by the receiver exactly once.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mailfleet::agent::apply::PostfixTarget;
use mailfleet::agent::backoff::Backoff;
use mailfleet::agent::follow::FollowOptions;
use mailfleet::agent::line::LogFormat;
use mailfleet::agent::replay::{replay_bytes, ReplayOptions};
use mailfleet::agent::report::{ConfigHint, PoolRef};
use mailfleet::agent::reporter::ReporterConfig;
use mailfleet::agent::run::{run, AgentOptions};
use mailfleet::agent::state::AgentState;
use mailfleet::reputation::classifier::Classifier;
use support::agent::{delivery_line, Behaviour, FakeEndpoint, Totals};

const SOURCE_IP: &str = "203.0.113.10";

fn ip() -> IpAddr {
    SOURCE_IP.parse().unwrap()
}

fn options(dir: &Path, endpoint: &FakeEndpoint) -> AgentOptions {
    let token = dir.join("token");
    fs::write(&token, "secret-token\n").unwrap();
    AgentOptions {
        log: dir.join("maillog"),
        format: LogFormat::Postfix,
        state_file: dir.join("state.json"),
        endpoint: endpoint.url().parse().unwrap(),
        token_file: Some(token),
        reporter: ReporterConfig {
            agent_name: "bulk-203-0-113-10-7d9f".into(),
            source_ip: ip(),
            pool: PoolRef {
                namespace: "mail".into(),
                name: "bulk".into(),
            },
            max_buffered_reports: 4,
        },
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
        poll: Duration::from_millis(10),
        follow: FollowOptions {
            drain_grace: Duration::from_millis(300),
            ..FollowOptions::default()
        },
        listen: None,
        config_dir: None,
        config_poll: Duration::from_millis(50),
        postfix: None,
        zone: jiff::tz::TimeZone::UTC,
        shutdown_timeout: Duration::from_secs(5),
        pace_window: None,
        queue_interval: None,
        hold_config: Default::default(),
        drained: Default::default(),
        bind_check: None,
        complaints_dir: None,
    }
}

struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    fn start(options: AgentOptions) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            run(options, Classifier::builtin(), flag).expect("the agent runs")
        });
        Running {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("the agent stops cleanly");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Appends to the log and remembers every byte written, in order.
struct Writer {
    path: PathBuf,
    written: Vec<u8>,
}

impl Writer {
    fn write(&mut self, bytes: &[u8]) {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .unwrap();
        f.write_all(bytes).unwrap();
        self.written.extend_from_slice(bytes);
    }

    fn lines(&mut self, range: std::ops::Range<usize>) {
        for i in range {
            self.write(format!("{}\n", delivery_line(i, i)).as_bytes());
        }
    }

    fn expected(&self) -> (Totals, u64) {
        let summary = replay_bytes(
            &Classifier::builtin(),
            ip(),
            &self.written,
            &ReplayOptions::default(),
        );
        let totals = summary
            .totals
            .iter()
            .map(|r| ((r.provider.clone(), r.outcome, r.category), r.count))
            .collect();
        (totals, summary.attempts)
    }
}

fn settle() {
    std::thread::sleep(Duration::from_millis(150));
}

#[test]
fn counts_are_neither_lost_nor_doubled_while_the_endpoint_fails_hangs_then_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = FakeEndpoint::start(&[
        Behaviour::Fail,
        Behaviour::Fail,
        Behaviour::Hang,
        Behaviour::Fail,
        Behaviour::Hang,
    ]);
    let mut log = Writer {
        path: dir.path().join("maillog"),
        written: Vec::new(),
    };
    log.lines(0..40);
    let agent = Running::start(options(dir.path(), &endpoint));
    settle();

    // Garbage, binary bytes, a line cut before its status, and a line written in two parts.
    log.write(b"\x00\x01\x02binary\xff\xfe\n");
    log.write(b"2021-11-05T08:10:01+09:00 mx1 postfix/smtp[9]: 4TAAAAAAAA: to=<cut@hotmail.com>, relay=x[192.0.2.1]:25, del\n");
    log.lines(40..60);
    let half = delivery_line(60, 0);
    log.write(&half.as_bytes()[..50]);
    settle();
    log.write(format!("{}\n", &half[50..]).as_bytes());
    settle();

    // Rotation by rename while the MTA still writes a little to the old file.
    fs::rename(dir.path().join("maillog"), dir.path().join("maillog.1")).unwrap();
    let mut old = Writer {
        path: dir.path().join("maillog.1"),
        written: Vec::new(),
    };
    old.lines(61..64);
    log.written.extend_from_slice(&old.written);
    log.lines(64..90);
    settle();

    // copytruncate, with lines written just before the copy.
    log.lines(90..100);
    fs::copy(dir.path().join("maillog"), dir.path().join("maillog.2")).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("maillog"))
        .unwrap()
        .set_len(0)
        .unwrap();
    log.lines(100..130);

    let (expected, attempts) = log.expected();
    assert!(
        attempts > 80,
        "the scenario writes enough attempts: {attempts}"
    );
    let all_in = endpoint.wait_for_attempts(attempts, Duration::from_secs(30));
    agent.stop();
    let s = endpoint.lock();
    assert!(
        all_in,
        "the endpoint counted {} of {attempts} attempts",
        s.attempts()
    );
    assert_eq!(s.totals(), expected, "per (provider, outcome, category)");
    assert_eq!(s.attempts(), attempts, "nothing counted twice");

    let sequences: Vec<u64> = s.counted.iter().map(|r| r.sequence).collect();
    assert_eq!(
        sequences,
        (1..=sequences.len() as u64).collect::<Vec<_>>(),
        "reports are counted in order without gaps"
    );
    assert!(
        s.duplicates >= 1,
        "the hung requests were retried and recognised"
    );
    for received in &s.received {
        assert_eq!(
            received.authorization.as_deref(),
            Some("Bearer secret-token")
        );
        let counted = s
            .counted
            .iter()
            .find(|r| r.sequence == received.report.sequence)
            .expect("every sequence is counted");
        assert_eq!(
            counted.totals, received.report.totals,
            "a retried report is the same report"
        );
    }
    let skipped: BTreeMap<String, u64> = s
        .counted
        .iter()
        .flat_map(|r| r.lines.skipped.clone())
        .fold(BTreeMap::new(), |mut m, (k, v)| {
            *m.entry(k).or_default() += v;
            m
        });
    assert_eq!(skipped.get("binary"), Some(&1), "{skipped:?}");
    assert_eq!(skipped.get("truncated"), Some(&1), "{skipped:?}");
    // Only evidence texts over the per-report cap may be left out; never attempts.
    assert!(s
        .counted
        .iter()
        .all(|r| r.dropped.reports == 0 && r.dropped.attempts == 0 && r.dropped.log_files == 0));
    assert!(s.conclusive() >= 1);

    let state = AgentState::load(&dir.path().join("state.json"))
        .unwrap()
        .unwrap();
    assert!(
        state.reporter.outbox.is_empty(),
        "every report acknowledged before stopping"
    );
}

#[test]
fn a_restart_resends_what_was_not_acknowledged_and_reads_on_from_the_saved_position() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Writer {
        path: dir.path().join("maillog"),
        written: Vec::new(),
    };
    log.lines(0..30);
    // The endpoint is down for the whole first run.
    let down = FakeEndpoint::start(&[Behaviour::Fail; 1000]);
    let mut first = options(dir.path(), &down);
    first.shutdown_timeout = Duration::from_millis(100);
    let agent = Running::start(first);
    std::thread::sleep(Duration::from_millis(500));
    log.lines(30..45);
    std::thread::sleep(Duration::from_millis(300));
    agent.stop();
    let waiting = AgentState::load(&dir.path().join("state.json"))
        .unwrap()
        .unwrap();
    assert!(
        !waiting.reporter.outbox.is_empty(),
        "the reports wait in the state file"
    );
    assert!(
        waiting.reporter.outbox.len() <= 4,
        "bounded by max_buffered_reports"
    );
    assert_eq!(down.lock().counted.len(), 0);

    log.lines(45..60);
    let up = FakeEndpoint::start(&[]);
    let agent = Running::start(options(dir.path(), &up));
    let (expected, attempts) = log.expected();
    let all_in = up.wait_for_attempts(attempts, Duration::from_secs(20));
    agent.stop();
    let s = up.lock();
    assert!(all_in, "counted {} of {attempts}", s.attempts());
    assert_eq!(s.totals(), expected);
    assert_eq!(
        s.counted[0].sequence, 1,
        "the first run's reports keep their numbers"
    );
    assert_eq!(s.counted[0].agent.instance, waiting.reporter.instance);
}

#[test]
fn a_refused_report_is_dropped_and_said_in_the_next_report() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = FakeEndpoint::start(&[Behaviour::Refuse]);
    let mut log = Writer {
        path: dir.path().join("maillog"),
        written: Vec::new(),
    };
    log.lines(0..12);
    let agent = Running::start(options(dir.path(), &endpoint));
    std::thread::sleep(Duration::from_millis(400));
    log.lines(12..24);
    let (_, attempts) = log.expected();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = endpoint.lock();
        let dropped: u64 = s.counted.iter().map(|r| r.dropped.attempts).sum();
        if s.attempts() + dropped == attempts && dropped > 0 {
            assert!(s.counted.iter().any(|r| r.dropped.reports == 1));
            break;
        }
        drop(s);
        assert!(
            std::time::Instant::now() < deadline,
            "the refused attempts are accounted for"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.stop();
}

#[test]
fn a_configuration_in_the_feedback_response_is_applied_and_reported_back() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let bin = dir.path().join("bin");
    fs::create_dir_all(&etc).unwrap();
    fs::create_dir_all(&bin).unwrap();
    fs::write(etc.join("main.cf"), "myhostname = sender.lab\n").unwrap();
    for name in ["postfix", "postmap", "postqueue"] {
        let script = format!(
            "#!/bin/sh\necho \"{name} $*\" >> {}\n",
            dir.path().join("calls").display()
        );
        fs::write(bin.join(name), script).unwrap();
        fs::set_permissions(bin.join(name), fs::Permissions::from_mode(0o755)).unwrap();
    }
    let endpoint = FakeEndpoint::start(&[]);
    endpoint.lock().config = Some(ConfigHint {
        version: "routes-42".into(),
        files: Some(BTreeMap::from([
            (
                "main.cf".to_string(),
                "transport_maps = texthash:${config_directory}/mailfleet_transport\n".to_string(),
            ),
            (
                "mailfleet_transport".to_string(),
                "hotmail.com smtp:[mf-route-microsoft.mail.svc]\n".to_string(),
            ),
        ])),
    });
    let mut log = Writer {
        path: dir.path().join("maillog"),
        written: Vec::new(),
    };
    log.lines(0..3);
    let mut opts = options(dir.path(), &endpoint);
    opts.postfix = Some(PostfixTarget {
        config_dir: etc.clone(),
        bin_dir: bin,
        relay_secrets_dir: None,
    });
    let agent = Running::start(opts);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !endpoint
        .lock()
        .counted
        .iter()
        .any(|r| r.config_version.as_deref() == Some("routes-42"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "a report names the applied version"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.stop();
    assert_eq!(
        fs::read_to_string(etc.join("mailfleet_transport")).unwrap(),
        "hotmail.com smtp:[mf-route-microsoft.mail.svc]\n"
    );
    assert!(fs::read_to_string(etc.join("main.cf"))
        .unwrap()
        .contains("transport_maps = texthash:"));
    let calls = fs::read_to_string(dir.path().join("calls")).unwrap();
    assert!(
        calls.contains("reload") && calls.contains("postqueue -c"),
        "{calls}"
    );
    assert_eq!(
        AgentState::load(&dir.path().join("state.json"))
            .unwrap()
            .unwrap()
            .applied_config
            .as_deref(),
        Some("routes-42")
    );
}

#[test]
fn json_lines_from_another_mta_are_counted_like_postfix_lines() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = FakeEndpoint::start(&[Behaviour::Fail]);
    let mut log = Writer {
        path: dir.path().join("maillog"),
        written: Vec::new(),
    };
    for i in 0..30 {
        let record = match i % 5 {
            0 => {
                serde_json::json!({"time": "2021-11-05T08:10:01Z", "recipient": format!("u{i}@hotmail.com"), "relay_host": "hotmail-com.olc.protection.outlook.com", "status": "deferred", "reply": "550 5.7.606 Access denied, banned sending IP [203.0.113.10]", "dsn": "5.7.606"})
            }
            1 => {
                serde_json::json!({"recipient": format!("u{i}@acclaim.jp"), "relay_host": "acclaim-jp.mail.protection.outlook.com", "status": "sent", "reply": "250 2.6.0 Queued mail for delivery"})
            }
            2 => {
                serde_json::json!({"recipient": format!("u{i}@yahoo.com"), "status": "deferred", "reply": "421 4.7.0 [TSS04] Messages from 203.0.113.10 temporarily deferred"})
            }
            3 => {
                serde_json::json!({"recipient": format!("u{i}@gmail.com"), "status": "bounced", "dsn": "5.1.1"})
            }
            _ => serde_json::json!({"event": "connection", "peer": "192.0.2.1"}),
        };
        log.write(format!("{record}\n").as_bytes());
    }
    log.write(b"{not json\n");
    let mut opts = options(dir.path(), &endpoint);
    opts.format = LogFormat::JsonLines;
    let agent = Running::start(opts);
    let summary = replay_bytes(
        &Classifier::builtin(),
        ip(),
        &log.written,
        &ReplayOptions {
            format: LogFormat::JsonLines,
            ..ReplayOptions::default()
        },
    );
    assert_eq!(summary.attempts, 24);
    assert_eq!(
        summary.skipped_by_reason,
        BTreeMap::from([("invalid_json", 1), ("missing_field", 6)])
    );
    let all_in = endpoint.wait_for_attempts(summary.attempts, Duration::from_secs(20));
    agent.stop();
    let s = endpoint.lock();
    assert!(all_in, "counted {} of {}", s.attempts(), summary.attempts);
    let expected: Totals = summary
        .totals
        .iter()
        .map(|r| ((r.provider.clone(), r.outcome, r.category), r.count))
        .collect();
    assert_eq!(s.totals(), expected);
    assert!(expected
        .keys()
        .any(|(p, _, c)| p == "microsoft" && c.as_str() == "ip_blocklisted"));
    // The ban replies are evidence, and so are Yahoo's [TSS04] replies, whose
    // rule asks for a pause.
    assert_eq!(
        s.conclusive(),
        12,
        "the ban and the pause replies are evidence"
    );
    assert_eq!(
        s.counted
            .iter()
            .find(|r| !r.conclusive.is_empty())
            .unwrap()
            .conclusive[0]
            .at
            .to_string(),
        "2021-11-05T08:10:01Z"
    );
}

#[test]
fn a_state_file_that_cannot_be_written_stops_the_agent_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = FakeEndpoint::start(&[]);
    let mut opts = options(dir.path(), &endpoint);
    // Nothing can be created in /proc, whoever runs the test.
    opts.state_file = PathBuf::from("/proc/self/mailfleet-agent-state.json");
    let err = run(opts, Classifier::builtin(), Arc::new(AtomicBool::new(true)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot write the state file"), "{err}");

    let mut opts = options(dir.path(), &endpoint);
    fs::write(&opts.state_file, "{garbage").unwrap();
    opts.state_file = dir.path().join("state.json");
    let err = run(opts, Classifier::builtin(), Arc::new(AtomicBool::new(true)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("Remove the file to start over"), "{err}");
}

fn arf(source_ip: &str, rcpt: &str, message_id: &str) -> String {
    format!(
        "Content-Type: multipart/report; report-type=feedback-report; boundary=b\r\n\
         \r\n\
         --b\r\n\
         Content-Type: text/plain\r\n\
         \r\n\
         A complaint.\r\n\
         --b\r\n\
         Content-Type: message/feedback-report\r\n\
         \r\n\
         Feedback-Type: abuse\r\n\
         User-Agent: test/1\r\n\
         Version: 1\r\n\
         Source-IP: {source_ip}\r\n\
         Original-Rcpt-To: <{rcpt}>\r\n\
         \r\n\
         --b\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n\
         Message-ID: <{message_id}>\r\n\
         \r\n\
         --b--\r\n"
    )
}

#[test]
fn complaints_from_a_maildir_reach_the_endpoint_once_and_their_files_are_filed() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("fbl");
    for sub in ["new", "cur", "tmp"] {
        fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    let new = maildir.join("new");
    fs::write(new.join("1"), arf(SOURCE_IP, "a@yahoo.com", "1@x")).unwrap();
    fs::write(new.join("2"), arf(SOURCE_IP, "b@yahoo.com", "2@x")).unwrap();
    fs::write(new.join("3"), arf(SOURCE_IP, "c@gmail.com", "3@x")).unwrap();
    fs::write(new.join("4"), arf(SOURCE_IP, "a@yahoo.com", "1@x")).unwrap();
    fs::write(new.join("5"), arf("192.0.2.99", "d@yahoo.com", "5@x")).unwrap();
    fs::write(new.join("6"), "not a report at all\r\n").unwrap();
    // The endpoint fails first: the complaints wait in the saved report.
    let endpoint = FakeEndpoint::start(&[Behaviour::Fail, Behaviour::Hang]);
    let mut opts = options(dir.path(), &endpoint);
    opts.complaints_dir = Some(maildir.clone());
    let agent = Running::start(opts);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let complaints = |endpoint: &FakeEndpoint| {
        let mut sum: BTreeMap<String, u64> = BTreeMap::new();
        for report in &endpoint.lock().counted {
            for row in &report.complaints {
                *sum.entry(row.provider.clone()).or_default() += row.count;
            }
        }
        sum
    };
    while complaints(&endpoint).values().sum::<u64>() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the complaints reach the endpoint"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    settle();
    agent.stop();
    assert_eq!(
        complaints(&endpoint),
        BTreeMap::from([("google".to_string(), 1), ("yahoo".to_string(), 2)]),
        "counted once, the repeat, the foreign and the broken report not at all"
    );
    let mut left: Vec<String> = fs::read_dir(&new)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec!["5"], "the other IP's report stays for its agent");
    assert_eq!(fs::read_dir(maildir.join("cur")).unwrap().count(), 5);

    // After a restart, a report delivered again (the same original message)
    // is a duplicate: the identities counted are in the state file.
    fs::write(new.join("7"), arf(SOURCE_IP, "a@yahoo.com", "1@x")).unwrap();
    let again = FakeEndpoint::start(&[]);
    let mut opts = options(dir.path(), &again);
    opts.complaints_dir = Some(maildir.clone());
    let agent = Running::start(opts);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while new.join("7").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the repeat is read and filed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    settle();
    agent.stop();
    assert!(
        complaints(&again).is_empty(),
        "the repeat is not counted again: {:?}",
        complaints(&again)
    );
}
