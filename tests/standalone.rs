//! `mailfleet standalone` as a process: the real binary on a copy of the
//! example fleet, talked to over loopback HTTP like an agent would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

const BLOCKED_IP: &str = "203.0.113.12";
const TOKEN: &str = "lab-token-1";

/// A running `mailfleet standalone`, stopped with SIGTERM when dropped.
struct Standalone {
    child: Child,
    address: String,
    log: mpsc::Receiver<String>,
}

impl Standalone {
    fn start(manifests: &Path, out: &Path, token: &Path) -> Standalone {
        Standalone::start_with(manifests, out, token, &[])
    }

    fn start_with(manifests: &Path, out: &Path, token: &Path, extra: &[&str]) -> Standalone {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mailfleet"))
            .args([
                "standalone",
                "--http-addr",
                "127.0.0.1:0",
                "--tick-ms",
                "100",
            ])
            .arg("--manifests")
            .arg(manifests)
            .arg("--out")
            .arg(out)
            .arg("--token-file")
            .arg(token)
            // DNSBL questions go to a closed loopback port, never the network.
            .args(["--dnsbl-resolver", "127.0.0.1:9"])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mailfleet starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (send, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Standalone {
            child,
            address: String::new(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while server.address.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            // A panic here drops `server`, which stops the process.
            let line = server.log.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "mailfleet standalone did not start serving:\n{}",
                    seen.join("\n")
                )
            });
            if let Some(rest) = line
                .split("://")
                .nth(1)
                .filter(|_| line.contains("serving http"))
            {
                server.address = rest.split('/').next().unwrap_or_default().to_string();
            }
            seen.push(line);
        }
        server
    }

    fn request(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"));
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// POSTs `body` as `content_type` to `path`.
    fn post_as(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &[u8],
    ) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        // A refusal from the head may close the connection before the body is sent.
        let _ = stream.write_all(body);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer).to_string();
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"));
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    fn post(&self, token: Option<&str>, report: &Value) -> (u16, Value) {
        let (status, body) = self.request("POST", "/v1/feedback", token, &report.to_string());
        let body = serde_json::from_str(&body).unwrap_or_else(|_| json!({"raw": body}));
        (status, body)
    }

    /// Stops it with SIGTERM and checks it exits 0.
    fn stop_cleanly(mut self) {
        let status = self.terminate();
        std::thread::sleep(Duration::from_millis(100));
        let log = self.log_so_far().join("\n");
        assert!(status.success(), "exit {status:?}; its last words:\n{log}");
    }

    fn terminate(&mut self) -> ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("mailfleet standalone did not stop on SIGTERM");
    }

    fn log_so_far(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

struct Lab {
    _dir: tempfile::TempDir,
    manifests: PathBuf,
    out: PathBuf,
    token: PathBuf,
}

fn lab() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet");
    for entry in std::fs::read_dir(examples).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), manifests.join(entry.file_name())).unwrap();
    }
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    Lab {
        out: dir.path().join("out"),
        manifests,
        token,
        _dir: dir,
    }
}

fn blocked_report(sequence: u64) -> Value {
    json!({
        "api_version": "feedback.mailfleet.io/v1",
        "agent": {"name": "bulk-203-0-113-12-0", "instance": "test-instance-1"},
        "sequence": sequence,
        "source_ip": BLOCKED_IP,
        "pool": {"namespace": "mail", "name": "bulk"},
        "period": {"start": "2026-11-29T08:10:00Z", "end": "2026-11-29T08:10:05Z"},
        "totals": [
            {"provider": "microsoft", "outcome": "deferred", "category": "ip_blocklisted", "count": 1},
            {"provider": "google", "outcome": "delivered", "category": "none", "count": 3}
        ],
        "conclusive": [{
            "provider": "microsoft",
            "reply": format!("host hotmail-com.olc.protection.outlook.com[104.47.22.161] said: 550 5.7.606 Access denied, banned sending IP [{BLOCKED_IP}]. (in reply to RCPT TO command)"),
            "at": "2026-11-29T08:10:01Z",
            "named_ip": BLOCKED_IP
        }]
    })
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether routes.json sends microsoft mail through `ip`.
fn microsoft_uses(out: &Path, ip: &str) -> bool {
    let table: Value = serde_json::from_str(&read(&out.join("routes.json"))).unwrap();
    let routes = table["routes"].as_array().unwrap();
    let microsoft = routes
        .iter()
        .find(|r| r["provider"] == "microsoft")
        .expect("a microsoft route");
    microsoft["targets"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["ip"] == ip)
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mtimes(out: &Path) -> Vec<(PathBuf, SystemTime)> {
    let mut files = vec![out.join("routes.json"), out.join("state.json")];
    for sender in std::fs::read_dir(out.join("senders")).unwrap() {
        let dir = sender.unwrap().path();
        for key in [
            "config-version",
            "mailfleet_transport",
            "main.cf",
            "sender.json",
        ] {
            files.push(dir.join(key));
        }
    }
    files
        .into_iter()
        .map(|f| {
            let modified = std::fs::metadata(&f).unwrap().modified().unwrap();
            (f, modified)
        })
        .collect()
}

#[test]
fn a_reported_block_rewrites_routes_and_survives_a_restart() {
    let lab = lab();
    let server = Standalone::start(&lab.manifests, &lab.out, &lab.token);
    let transport = lab.out.join("senders/mf-203-0-113-12/mailfleet_transport");
    let transport_before = read(&transport);
    let routes_before = read(&lab.out.join("routes.json"));
    assert!(microsoft_uses(&lab.out, BLOCKED_IP));
    let (status, body) = server.request("GET", "/healthz", None, "");
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // Without the shared token nothing is counted.
    for token in [None, Some("not-the-token")] {
        let (status, body) = server.post(token, &blocked_report(1));
        assert_eq!(status, 401, "{token:?}: {body}");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read(&lab.out.join("routes.json")), routes_before);
    assert!(!read(&lab.out.join("events.jsonl"))
        .contains("\"event\":\"transition\",\"evidence\":\"host hotmail"));

    let sent = Instant::now();
    let (status, answer) = server.post(Some(TOKEN), &blocked_report(1));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["duplicate"], false);
    let version = answer["config"]["version"].as_str().unwrap().to_string();
    wait_for(
        "routes.json drops the blocked IP",
        Duration::from_secs(3),
        || !microsoft_uses(&lab.out, BLOCKED_IP),
    );
    wait_for(
        "the sender's transport map changes",
        Duration::from_secs(3),
        || read(&transport) != transport_before,
    );
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "took {:?}",
        sent.elapsed()
    );
    assert_eq!(
        answer["config"]["files"]["mailfleet_transport"].as_str(),
        Some(read(&transport).as_str()),
        "the answer carries the configuration written to the folder"
    );
    assert_eq!(
        read(&lab.out.join("senders/mf-203-0-113-12/config-version")),
        version
    );
    assert!(microsoft_uses(&lab.out, "203.0.113.10"));

    let events: Vec<Value> = read(&lab.out.join("events.jsonl"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let blocked = events
        .iter()
        .find(|e| e["event"] == "transition" && e["ip"] == BLOCKED_IP && e["to"] == "Blocked")
        .expect("the transition is in events.jsonl");
    assert_eq!(blocked["provider"], "microsoft");
    assert_eq!(blocked["pool"], "mail/bulk");
    for field in ["at", "from", "reason"] {
        assert!(blocked.get(field).is_some(), "{field} missing in {blocked}");
    }
    assert!(events.iter().any(|e| e["event"] == "route"
        && e["route"] == "mail/microsoft"
        && e["from"] == "Primary"));

    let (status, again) = server.post(Some(TOKEN), &blocked_report(1));
    assert_eq!((status, &again["duplicate"]), (200, &json!(true)));
    let mut current = blocked_report(2);
    current["config_version"] = json!(version);
    let (_, answer) = server.post(Some(TOKEN), &current);
    assert!(answer["config"].get("files").is_none(), "{answer}");

    // Nothing changes: nothing is written (after the tick that writes the
    // counts of the last report).
    std::thread::sleep(Duration::from_millis(400));
    let before = mtimes(&lab.out);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(mtimes(&lab.out), before, "unchanged outputs were rewritten");

    let (_, metrics) = server.request("GET", "/metrics", None, "");
    for line in [
        "mailfleet_feedback_reports_total{pool=\"mail/bulk\",result=\"counted\"} 2",
        "mailfleet_feedback_reports_total{pool=\"mail/bulk\",result=\"duplicate\"} 1",
        "mailfleet_feedback_requests_total{code=\"401\"} 2",
        "mailfleet_ip_state{pool=\"mail/bulk\",ip=\"203.0.113.12\",provider=\"microsoft\",state=\"Blocked\"} 1",
        "mailfleet_route_targets{route=\"mail/microsoft\",mode=\"Primary\"} 5",
        "mailfleet_dnsbl_queries_total",
    ] {
        assert!(metrics.contains(line), "{line} missing in\n{metrics}");
    }
    server.stop_cleanly();

    let routes_blocked = read(&lab.out.join("routes.json"));
    let restarted = Standalone::start(&lab.manifests, &lab.out, &lab.token);
    assert!(
        !microsoft_uses(&lab.out, BLOCKED_IP),
        "the block was forgotten"
    );
    assert_eq!(read(&lab.out.join("routes.json")), routes_blocked);
    let (_, metrics) = restarted.request("GET", "/metrics", None, "");
    assert!(metrics.contains(
        "mailfleet_ip_state{pool=\"mail/bulk\",ip=\"203.0.113.12\",provider=\"microsoft\",state=\"Blocked\"} 1"
    ));
    let (status, answer) = restarted.post(Some(TOKEN), &blocked_report(2));
    assert_eq!(
        (status, &answer["duplicate"]),
        (200, &json!(true)),
        "the ledger was forgotten"
    );
    restarted.stop_cleanly();
}

#[test]
fn broken_manifests_keep_the_last_good_routes_and_show_on_healthz() {
    let lab = lab();
    let server = Standalone::start(&lab.manifests, &lab.out, &lab.token);
    let (status, _) = server.post(Some(TOKEN), &blocked_report(1));
    assert_eq!(status, 200);
    wait_for("the block is routed", Duration::from_secs(3), || {
        !microsoft_uses(&lab.out, BLOCKED_IP)
    });
    let routes = read(&lab.out.join("routes.json"));

    let google = lab.manifests.join("route-google.yaml");
    let good = read(&google);
    let broken = good.replace("  pool: bulk", "  pool: bulk\n  poool: typo");
    assert_ne!(broken, good);
    std::fs::write(&google, broken).unwrap();
    let mut last = (0, String::new());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(last.0 == 503 && last.1.contains("route-google.yaml")) {
        assert!(
            Instant::now() < deadline,
            "/healthz does not report the refused file: {last:?}\n{}",
            server.log_so_far().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
        last = server.request("GET", "/healthz", None, "");
    }
    assert!(last.1.contains("poool"), "{}", last.1);
    assert_eq!(read(&lab.out.join("routes.json")), routes);
    // Feedback keeps working on the last good manifests.
    let (status, answer) = server.post(Some(TOKEN), &blocked_report(2));
    assert_eq!((status, &answer["duplicate"]), (200, &json!(false)));
    let (_, metrics) = server.request("GET", "/metrics", None, "");
    assert!(
        metrics.contains("mailfleet_manifest_reload_errors_total{category=\"invalid\"} 1"),
        "{metrics}"
    );

    std::fs::write(&google, &good).unwrap();
    wait_for("/healthz recovers", Duration::from_secs(5), || {
        server.request("GET", "/healthz", None, "").0 == 200
    });
    assert!(
        !microsoft_uses(&lab.out, BLOCKED_IP),
        "a reload forgot the block"
    );
    server.stop_cleanly();
}

#[test]
fn a_restart_with_broken_manifests_starts_from_the_last_good_set_and_says_so() {
    let lab = lab();
    let server = Standalone::start(&lab.manifests, &lab.out, &lab.token);
    let (status, _) = server.post(Some(TOKEN), &blocked_report(1));
    assert_eq!(status, 200);
    wait_for("the block is routed", Duration::from_secs(3), || {
        !microsoft_uses(&lab.out, BLOCKED_IP)
    });
    server.stop_cleanly();

    // A broken push, then a reboot.
    let google = lab.manifests.join("route-google.yaml");
    let good = read(&google);
    std::fs::write(
        &google,
        good.replace("  pool: bulk", "  pool: bulk\n  poool: typo"),
    )
    .unwrap();
    let server = Standalone::start(&lab.manifests, &lab.out, &lab.token);
    let (status, health) = server.request("GET", "/healthz", None, "");
    assert_eq!(status, 503, "{health}");
    assert!(
        health.contains("poool") && health.contains("started from the last good manifests"),
        "{health}"
    );
    assert!(
        !microsoft_uses(&lab.out, BLOCKED_IP),
        "the restart on the last good set forgot the block"
    );
    let (status, answer) = server.post(Some(TOKEN), &blocked_report(2));
    assert_eq!((status, &answer["duplicate"]), (200, &json!(false)));

    // The fix is picked up as any change is.
    std::fs::write(&google, &good).unwrap();
    wait_for("/healthz recovers", Duration::from_secs(5), || {
        server.request("GET", "/healthz", None, "").0 == 200
    });
    server.stop_cleanly();
}

#[test]
fn broken_manifests_and_no_last_good_set_refuse_to_start() {
    let lab = lab();
    let google = lab.manifests.join("route-google.yaml");
    let good = read(&google);
    std::fs::write(
        &google,
        good.replace("  pool: bulk", "  pool: bulk\n  poool: typo"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mailfleet"))
        .arg("standalone")
        .arg("--manifests")
        .arg(&lab.manifests)
        .arg("--out")
        .arg(&lab.out)
        .args(["--http-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("poool"));
}

/// `--log-format json` (what a log collector wants): every line standalone
/// writes is one JSON object with its level and message; text on a pipe never
/// carries colour codes.
#[test]
fn logs_are_json_lines_when_asked_and_never_coloured_on_a_pipe() {
    let json = lab();
    let server = Standalone::start_with(
        &json.manifests,
        &json.out,
        &json.token,
        &["--log-format", "json"],
    );
    let (status, _) = server.post(Some(TOKEN), &blocked_report(1));
    assert_eq!(status, 200);
    let mut server = server;
    assert!(server.terminate().success());
    std::thread::sleep(Duration::from_millis(100));
    let lines = server.log_so_far();
    assert!(
        !lines.is_empty(),
        "standalone logged nothing after it started"
    );
    for line in &lines {
        let object: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(object["level"].is_string(), "{line}");
        assert!(object["message"].is_string(), "{line}");
    }

    let plain = lab();
    let server = Standalone::start(&plain.manifests, &plain.out, &plain.token);
    let (status, _) = server.post(Some(TOKEN), &blocked_report(1));
    assert_eq!(status, 200);
    let mut server = server;
    assert!(server.terminate().success());
    std::thread::sleep(Duration::from_millis(100));
    let text = server.log_so_far().join("\n");
    assert!(!text.contains('\u{1b}'), "colour codes on a pipe:\n{text}");
}

/// Agents on other machines report over TLS: standalone serves its port with
/// a certificate, the agent's own HTTP client (the code `mailfleet agent run`
/// posts with) trusts it through --ca-file, the report is stored and changes
/// the routes; plain HTTP (answered 400) and an untrusted certificate get
/// nothing through.
#[test]
fn agents_on_other_machines_report_over_tls() {
    use mailfleet::agent::http::{post, Endpoint, TlsTrust};
    use mailfleet::http_client::FetchError;
    let lab = lab();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();

    let server = Standalone::start_with(
        &lab.manifests,
        &lab.out,
        &lab.token,
        &[
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
        ],
    );
    let port = server.address.rsplit(':').next().unwrap().to_string();
    let url = format!("https://localhost:{port}/v1/feedback");
    let body = blocked_report(1).to_string();
    let auth = format!("Bearer {TOKEN}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let timeout = Duration::from_secs(10);

    // The public roots do not cover a self-signed certificate.
    let untrusted: Endpoint = url.parse().unwrap();
    match post(&untrusted, &headers, body.as_bytes(), timeout) {
        Err(FetchError::Tls { .. }) => {}
        other => panic!("an untrusted certificate must fail the handshake: {other:?}"),
    }
    // Plain HTTP on the TLS port is answered 400, saying why.
    let plain = post(
        &format!("http://localhost:{port}/v1/feedback")
            .parse()
            .unwrap(),
        &headers,
        body.as_bytes(),
        timeout,
    )
    .unwrap();
    assert_eq!(plain.status, 400);
    assert!(
        String::from_utf8_lossy(&plain.body).contains("this port speaks TLS"),
        "{}",
        String::from_utf8_lossy(&plain.body)
    );
    // Nothing of those two was counted.
    assert!(
        microsoft_uses(&lab.out, BLOCKED_IP),
        "a report that did not get through changed the routes"
    );

    let trusted = untrusted
        .trusting(TlsTrust::from_pem_file(&cert_file).unwrap())
        .unwrap();
    let answer = post(&trusted, &headers, body.as_bytes(), timeout).unwrap();
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    wait_for(
        "the blocked IP to leave the Microsoft route",
        Duration::from_secs(20),
        || !microsoft_uses(&lab.out, BLOCKED_IP),
    );
    server.stop_cleanly();
}

#[test]
fn a_tls_key_that_does_not_load_refuses_to_start_naming_the_file() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("tls.crt");
    std::fs::write(&cert, "not a certificate\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mailfleet"))
        .args(["standalone", "--http-addr", "127.0.0.1:0"])
        .arg("--manifests")
        .arg(&lab.manifests)
        .arg("--out")
        .arg(&lab.out)
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(dir.path().join("missing.key"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls.crt"), "{err}");
    assert!(err.contains("BEGIN CERTIFICATE"), "{err}");
}

/// The `listen` section of `route` in a rendered haproxy.cfg.
fn haproxy_listener(config: &str, route: &str) -> String {
    config
        .lines()
        .skip_while(|l| *l != format!("listen mf-route.mail.{route}"))
        .take_while(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_haproxy_hand_off_follows_a_block_and_a_refused_reload_keeps_the_last_good_file() {
    let lab = lab();
    let config = lab.out.join("haproxy.cfg");
    let reloaded = lab._dir.path().join("reloaded.cfg");
    let refuse = lab._dir.path().join("refuse");
    // Stands in for `systemctl reload haproxy`: refuses while `refuse` exists,
    // otherwise records the file HAProxy would now run.
    let reload = format!(
        "if [ -e {refuse} ]; then echo 'refused by the test' >&2; exit 1; fi; cp \"$MAILFLEET_HAPROXY_CONFIG\" {reloaded}",
        refuse = refuse.display(),
        reloaded = reloaded.display()
    );
    let config_arg = config.display().to_string();
    let server = Standalone::start_with(
        &lab.manifests,
        &lab.out,
        &lab.token,
        &[
            "--haproxy-config",
            &config_arg,
            "--haproxy-reload-cmd",
            &reload,
            "--haproxy-bind",
            "127.0.0.10",
            "--route-service-host",
            "127.0.0.10",
        ],
    );
    wait_for("the first reload", Duration::from_secs(5), || {
        reloaded.exists()
    });
    let first = read(&reloaded);
    assert_eq!(read(&config), first);
    let microsoft = haproxy_listener(&first, "microsoft");
    assert!(
        microsoft.contains(&format!("    server mf-203-0-113-12 {BLOCKED_IP}:25 ")),
        "{microsoft}"
    );
    let port: u16 = microsoft
        .lines()
        .find_map(|l| l.strip_prefix("    bind 127.0.0.10:"))
        .expect("a bind line")
        .parse()
        .unwrap();

    // HAProxy refuses the next file: the block still reaches the senders,
    // the last good file stays, /healthz and the metrics say so.
    std::fs::write(&refuse, "").unwrap();
    let (status, _) = server.post(Some(TOKEN), &blocked_report(1));
    assert_eq!(status, 200);
    wait_for("the block is routed", Duration::from_secs(3), || {
        !microsoft_uses(&lab.out, BLOCKED_IP)
    });
    let transport = lab.out.join("senders/mf-203-0-113-12/mailfleet_transport");
    wait_for(
        "the blocked sender hands Microsoft mail to its HAProxy port",
        Duration::from_secs(3),
        || read(&transport).contains(&format!("smtp:[127.0.0.10]:{port}")),
    );
    let mut health = (0, String::new());
    wait_for(
        "/healthz reports the refused reload",
        Duration::from_secs(5),
        || {
            health = server.request("GET", "/healthz", None, "");
            health.0 == 503
        },
    );
    assert!(health.1.contains("refused by the test"), "{}", health.1);
    assert_eq!(read(&config), first, "the last good file is put back");
    let (_, metrics) = server.request("GET", "/metrics", None, "");
    assert!(
        metrics.contains("mailfleet_haproxy_reloads_total{result=\"refused\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mailfleet_haproxy_reloads_total{result=\"ok\"} 1\n"),
        "{metrics}"
    );

    // HAProxy takes it again: the retry puts the block in force there too.
    std::fs::remove_file(&refuse).unwrap();
    wait_for("the retried reload", Duration::from_secs(20), || {
        read(&reloaded) != first
    });
    let now = read(&config);
    assert_eq!(read(&reloaded), now);
    let microsoft = haproxy_listener(&now, "microsoft");
    assert!(
        !microsoft.contains("server mf-203-0-113-12 "),
        "{microsoft}"
    );
    assert!(
        microsoft.contains("    # left out: 203.0.113.12 of pool bulk (Blocked"),
        "{microsoft}"
    );
    wait_for("/healthz recovers", Duration::from_secs(5), || {
        server.request("GET", "/healthz", None, "").0 == 200
    });
    server.stop_cleanly();
}

#[test]
fn haproxy_with_a_host_per_route_is_refused_before_start() {
    let lab = lab();
    let out = Command::new(env!("CARGO_BIN_EXE_mailfleet"))
        .arg("standalone")
        .arg("--manifests")
        .arg(&lab.manifests)
        .arg("--out")
        .arg(&lab.out)
        .args(["--haproxy-config", "/nonexistent/haproxy.cfg"])
        .args(["--haproxy-reload-cmd", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--route-service-host") && stderr.contains("{route}"),
        "{stderr}"
    );
}

fn arf_fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/arf")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value of one series in a metrics text, if present.
fn series(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[test]
fn abuse_reports_posted_are_counted_once_per_ip_and_provider_and_the_rest_refused() {
    let lab = lab();
    let server = Standalone::start(&lab.manifests, &lab.out, &lab.token);
    let path = "/v1/abuse-reports";
    let yahoo = arf_fixture("yahoo-cfl.eml");
    let jmrp = arf_fixture("microsoft-jmrp.eml");

    let (status, body) = server.post_as(path, None, "message/rfc822", &yahoo);
    assert_eq!(status, 401, "no token: {body}");
    let (status, body) = server.post_as(path, Some(TOKEN), "application/json", &yahoo);
    assert_eq!(status, 415, "{body}");
    assert!(body.contains("message/rfc822"), "{body}");

    let (status, body) = server.post_as(path, Some(TOKEN), "message/rfc822", &yahoo);
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["ip"], "203.0.113.10");
    assert_eq!(answer["provider"], "yahoo");
    assert_eq!(answer["pool"], "mail/bulk");
    assert_eq!(answer["duplicate"], false);
    let (status, body) = server.post_as(path, Some(TOKEN), "message/rfc822", &jmrp);
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (answer["ip"].as_str(), answer["provider"].as_str()),
        (Some("203.0.113.11"), Some("microsoft"))
    );

    // The same report again (a feedback loop retrying): acknowledged, not counted.
    let (status, body) = server.post_as(path, Some(TOKEN), "message/rfc822", &yahoo);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["duplicate"],
        true
    );

    // Garbage, another sender's report, and one past the bound.
    let (status, body) = server.post_as(
        path,
        Some(TOKEN),
        "message/rfc822",
        b"Subject: hi\r\n\r\nhello\r\n",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("multipart/report"), "{body}");
    let stranger = String::from_utf8(yahoo.clone())
        .unwrap()
        .replace("203.0.113.10", "192.0.2.99");
    let (status, body) = server.post_as(path, Some(TOKEN), "message/rfc822", stranger.as_bytes());
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("192.0.2.99") && body.contains("no IP of ours"),
        "{body}"
    );
    let mut huge = yahoo.clone();
    huge.resize(600 * 1024, b'x');
    let (status, body) = server.post_as(path, Some(TOKEN), "message/rfc822", &huge);
    assert_eq!(status, 413, "{body}");

    let metrics = || server.request("GET", "/metrics", None, "").1;
    wait_for(
        "the complaints show in the metrics",
        Duration::from_secs(3),
        || {
            series(&metrics(), "mailfleet_complaints_window{pool=\"mail/bulk\",ip=\"203.0.113.10\",provider=\"yahoo\"}").is_some()
        },
    );
    let text = metrics();
    assert_eq!(series(&text, "mailfleet_complaints_window{pool=\"mail/bulk\",ip=\"203.0.113.10\",provider=\"yahoo\"}"), Some(1.0), "{text}");
    assert_eq!(series(&text, "mailfleet_complaints_window{pool=\"mail/bulk\",ip=\"203.0.113.11\",provider=\"microsoft\"}"), Some(1.0), "{text}");
    for (result, n) in [
        ("counted", 2.0),
        ("duplicate", 1.0),
        ("not_ours", 1.0),
        ("not_feedback_report", 1.0),
        ("too_large", 1.0),
    ] {
        assert_eq!(
            series(
                &text,
                &format!("mailfleet_complaint_reports_total{{result=\"{result}\"}}")
            ),
            Some(n),
            "{result}: {text}"
        );
    }

    // Stored before the answer: after a restart the same report is still a duplicate.
    server.stop_cleanly();
    let server = Standalone::start(&lab.manifests, &lab.out, &lab.token);
    let (status, body) = server.post_as(path, Some(TOKEN), "message/rfc822", &yahoo);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["duplicate"],
        true,
        "{body}"
    );
    let text = server.request("GET", "/metrics", None, "").1;
    assert_eq!(series(&text, "mailfleet_complaints_window{pool=\"mail/bulk\",ip=\"203.0.113.10\",provider=\"yahoo\"}"), Some(1.0), "{text}");
    server.stop_cleanly();
}
