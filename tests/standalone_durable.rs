//! A 200 from `mailfleet standalone` means the report is stored: the real
//! binary killed with SIGKILL right after answering, killed at random under
//! a flow of reports, and given a full or read-only output folder; one
//! sender's token refused for another sender's IP; a fleet at the CRDs'
//! limits killed and started again with its state; and a receiver's claim
//! that a block list names the IP checked at once with that list.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mailfleet::api::ReputationState;
use mailfleet::routing::postfix::PostfixOptions;
use mailfleet::standalone::core::Core;
use mailfleet::standalone::journal::Journal;
use mailfleet::standalone::state::{self, STATE_FILE};
use serde_json::{json, Value};

#[allow(dead_code)]
#[path = "support/rbldnsd.rs"]
mod rbldnsd;

const BLOCKED_IP: &str = "203.0.113.12";

struct Standalone {
    child: Child,
    address: String,
    log: mpsc::Receiver<String>,
}

impl Standalone {
    fn start(manifests: &Path, out: &Path, extra: &[&str]) -> Standalone {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mailfleet"))
            .args([
                "standalone",
                "--http-addr",
                "127.0.0.1:0",
                "--tick-ms",
                "50",
            ])
            .arg("--manifests")
            .arg(manifests)
            .arg("--out")
            .arg(out)
            .args(if extra.contains(&"--dnsbl-resolver") {
                &[][..]
            } else {
                &["--dnsbl-resolver", "127.0.0.1:9"][..]
            })
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
        // A fleet at the CRDs' limits takes a while to start in a debug build.
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut seen = Vec::new();
        while server.address.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = server.log.recv_timeout(left).unwrap_or_else(|_| {
                panic!("mailfleet standalone did not start:\n{}", seen.join("\n"))
            });
            if let Some(rest) = line.split("serving http://").nth(1) {
                server.address = rest.split('/').next().unwrap_or_default().to_string();
            }
            seen.push(line);
        }
        server
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stop(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One exchange; `None` when the connection broke before a whole answer.
fn request(
    address: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let (_, body) = answer.split_once("\r\n\r\n")?;
    Some((status, body.to_string()))
}

fn post(address: &str, token: Option<&str>, report: &Value) -> Option<(u16, Value)> {
    let (status, body) = request(address, "POST", "/v1/feedback", token, &report.to_string())?;
    Some((
        status,
        serde_json::from_str(&body).unwrap_or(json!({"raw": body})),
    ))
}

fn manifests() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let manifests = manifests_in(dir.path());
    (dir, manifests)
}

fn blocked_report(instance: &str, sequence: u64) -> Value {
    json!({
        "api_version": "feedback.mailfleet.io/v1",
        "agent": {"name": "bulk-203-0-113-12-0", "instance": instance},
        "sequence": sequence,
        "source_ip": BLOCKED_IP,
        "pool": {"namespace": "mail", "name": "bulk"},
        "period": {"start": "2026-11-29T08:10:00Z", "end": "2026-11-29T08:10:05Z"},
        "totals": [{"provider": "microsoft", "outcome": "deferred", "category": "ip_blocklisted", "count": 1}],
        "conclusive": [{
            "provider": "microsoft",
            "reply": format!("550 5.7.606 Access denied, banned sending IP [{BLOCKED_IP}]"),
            "at": "2026-11-29T08:10:01Z",
            "named_ip": BLOCKED_IP
        }]
    })
}

fn delivered_report(ip: &str, sequence: u64) -> Value {
    json!({
        "api_version": "feedback.mailfleet.io/v1",
        "agent": {"name": format!("bulk-{ip}"), "instance": format!("flow-{ip}")},
        "sequence": sequence,
        "source_ip": ip,
        "pool": {"namespace": "mail", "name": "bulk"},
        "period": {"start": "2026-11-29T08:10:00Z", "end": "2026-11-29T08:10:05Z"},
        "totals": [{"provider": "google", "outcome": "delivered", "category": "none", "count": 1}]
    })
}

/// What a restart starts from, computed the way `standalone::run` does:
/// the saved state, then the stored reports replayed over it.
fn recovered(manifests: &Path, out: &Path) -> Core {
    let saved = match std::fs::read_to_string(out.join(STATE_FILE)) {
        Ok(text) => Some(state::parse(&text, &out.join(STATE_FILE)).unwrap()),
        Err(_) => None,
    };
    let (_, replay) = Journal::open(out).unwrap();
    let loaded = mailfleet::manifests::load_dir(manifests).unwrap();
    let (mut core, _) = Core::start(
        loaded,
        saved,
        None,
        PostfixOptions::default(),
        jiff::Timestamp::now(),
    )
    .unwrap();
    core.replay(replay.entries.iter().map(|e| (&e.report, e.at)));
    core
}

fn pair_state(core: &Core, ip: &str, provider: &str) -> Option<ReputationState> {
    core.fleet()
        .pools
        .iter()
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| s.ips.iter())
        .find(|i| i.address == ip)?
        .reputation
        .iter()
        .find(|r| r.provider == provider)
        .map(|r| r.state)
}

fn attempts(core: &Core, ip: &str, provider: &str) -> i64 {
    core.fleet()
        .pools
        .iter()
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| s.ips.iter())
        .filter(|i| i.address == ip)
        .flat_map(|i| i.reputation.iter())
        .filter(|r| r.provider == provider)
        .flat_map(|r| r.window.iter())
        .map(|b| b.attempts)
        .sum()
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the saved state holds `ip`'s pair with `provider` as Blocked.
fn saved_blocked(out: &Path, ip: &str, provider: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(out.join(STATE_FILE)) else {
        return false;
    };
    let saved = state::parse(&text, &out.join(STATE_FILE)).unwrap();
    saved.pools.values().flat_map(|s| s.ips.iter()).any(|i| {
        i.address == ip
            && i.reputation
                .iter()
                .any(|r| r.provider == provider && r.state == ReputationState::Blocked)
    })
}

/// Before: answered 200 as soon as the block was counted in memory; the
/// block was gone after a SIGKILL in 20 of 20 runs. Each run kills the
/// process right after the 200 and finds the block on disk: in the saved
/// state, or in the write-ahead log that a restart replays (every tenth run
/// restarts the binary and asks it).
#[test]
fn a_block_answered_200_survives_sigkill_right_after() {
    let (_dir, manifests) = manifests();
    // Two runs at a time: most of a run is the process starting.
    let workers: Vec<_> = (0..2)
        .map(|worker| {
            let manifests = manifests.clone();
            std::thread::spawn(move || {
                for run in (worker..50).step_by(2) {
                    one_kill_after_200(&manifests, run);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
}

fn one_kill_after_200(manifests: &Path, run: usize) {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out");
    let mut server = Standalone::start(manifests, &out, &[]);
    let (status, body) = post(&server.address, None, &blocked_report("i-1", 1)).unwrap();
    assert_eq!(status, 200, "run {run}: {body}");
    server.kill();
    if run.is_multiple_of(10) {
        // The real restart: the state it writes at start holds the block.
        let mut again = Standalone::start(manifests, &out, &[]);
        assert!(
            saved_blocked(&out, BLOCKED_IP, "microsoft"),
            "run {run}: the block is gone after a restart"
        );
        let (status, body) = post(&again.address, None, &blocked_report("i-1", 1)).unwrap();
        assert_eq!((status, &body["duplicate"]), (200, &json!(true)), "{body}");
        again.stop();
    } else {
        let (_, replay) = Journal::open(&out).unwrap();
        let logged = replay
            .entries
            .iter()
            .any(|e| e.report.sequence == 1 && e.report.source_ip.to_string() == BLOCKED_IP);
        assert!(
            logged || saved_blocked(&out, BLOCKED_IP, "microsoft"),
            "run {run}: the block is neither in the log nor in the state"
        );
    }
}

/// Before: 121 acknowledged reports lost in 15 rounds of SIGKILL.
#[test]
fn a_flow_of_reports_killed_at_random_loses_none_and_counts_none_twice() {
    let (_dir, manifests) = manifests();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out");
    let ips = ["203.0.113.10", "203.0.113.11", "203.0.113.13"];
    let mut acked = [0u64; 3];
    // A fixed seed: the kill times differ per round, the same in every run.
    let mut seed: u64 = 0x5eed_1600;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    for _round in 0..6 {
        let mut server = Standalone::start(&manifests, &out, &[]);
        let address = server.address.clone();
        let kill_after = Duration::from_millis(50 + next() % 300);
        let senders: Vec<_> = ips
            .iter()
            .zip(acked)
            .map(|(ip, from)| {
                let address = address.clone();
                let ip = ip.to_string();
                std::thread::spawn(move || {
                    let mut last = from;
                    while let Some((status, body)) =
                        post(&address, None, &delivered_report(&ip, last + 1))
                    {
                        assert_eq!(status, 200, "{body}");
                        last += 1;
                    }
                    last
                })
            })
            .collect();
        std::thread::sleep(kill_after);
        server.kill();
        for (slot, sender) in acked.iter_mut().zip(senders) {
            *slot = sender.join().unwrap();
        }
    }
    // Like an agent, send the report left without an answer once more.
    let mut server = Standalone::start(&manifests, &out, &[]);
    for (slot, ip) in acked.iter_mut().zip(ips) {
        let (status, body) = post(&server.address, None, &delivered_report(ip, *slot + 1)).unwrap();
        assert_eq!(status, 200, "{body}");
        *slot += 1;
    }
    server.stop();
    let core = recovered(&manifests, &out);
    for (ip, sent) in ips.iter().zip(acked) {
        assert!(sent > 3, "too few reports to mean anything: {sent}");
        assert_eq!(
            attempts(&core, ip, "google"),
            sent as i64,
            "{ip}: every acknowledged report counted exactly once"
        );
    }
}

/// Mounts a small tmpfs for the output folder; only root may.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, options: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let target = c(path.to_str().unwrap());
        // SAFETY: plain C strings that live across the call.
        let rc = unsafe {
            libc::mount(
                c("tmpfs").as_ptr(),
                target.as_ptr(),
                c("tmpfs").as_ptr(),
                0,
                c(options).as_ptr().cast(),
            )
        };
        (rc == 0).then(|| Tmpfs(path.to_path_buf()))
    }

    fn remount(&self, flags: libc::c_ulong) {
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let target = c(self.0.to_str().unwrap());
        // SAFETY: as above.
        let rc = unsafe {
            libc::mount(
                c("tmpfs").as_ptr(),
                target.as_ptr(),
                c("tmpfs").as_ptr(),
                libc::MS_REMOUNT | flags,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "remount: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
        // SAFETY: unmounting what this test mounted.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Before: a full disk or a read-only folder kept answering 200 for reports
/// it never stored.
#[test]
fn a_full_disk_or_read_only_folder_answers_503_and_the_retry_is_kept() {
    let (_dir, manifests) = manifests();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out");
    let Some(tmpfs) = Tmpfs::mount(&out, "size=4m,mode=0755") else {
        eprintln!(
            "skipped: mounting a small tmpfs needs root ({})",
            std::io::Error::last_os_error()
        );
        return;
    };
    let mut server = Standalone::start(&manifests, &out, &[]);
    let address = server.address.clone();
    wait_for("the first state", Duration::from_secs(10), || {
        out.join(STATE_FILE).exists()
            && std::fs::metadata(out.join("feedback.wal")).is_ok_and(|m| m.len() == 0)
    });
    // Fill the folder to the last byte.
    let filler = out.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    while file.write_all(&[0u8]).is_ok() {}
    drop(file);
    let (status, body) = post(&address, None, &blocked_report("i-1", 1)).unwrap();
    assert_eq!(status, 503, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("No space left") && error.contains("send it again"),
        "{error}"
    );
    let (status, health) = request(&address, "GET", "/healthz", None, "").unwrap();
    assert_eq!(status, 503, "{health}");
    std::fs::remove_file(&filler).unwrap();
    let (status, body) = post(&address, None, &blocked_report("i-1", 1)).unwrap();
    assert_eq!(status, 200, "the retry after space came back: {body}");
    assert_eq!(body["duplicate"], json!(false), "{body}");

    // Read-only: the next report is refused, and kept once writable again.
    tmpfs.remount(libc::MS_RDONLY);
    let report = delivered_report("203.0.113.10", 1);
    let (status, body) = post(&address, None, &report).unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("Read-only"),
        "{body}"
    );
    tmpfs.remount(0);
    let (status, body) = post(&address, None, &report).unwrap();
    assert_eq!((status, &body["duplicate"]), (200, &json!(false)), "{body}");
    let (_, metrics) = request(&address, "GET", "/metrics", None, "").unwrap();
    assert!(
        metrics.contains("mailfleet_feedback_log_reports_total 2\n"),
        "the two answered 200 are the reports stored, the refused ones are not: {metrics}"
    );
    server.kill();
    let core = recovered(&manifests, &out);
    assert_eq!(
        pair_state(&core, BLOCKED_IP, "microsoft"),
        Some(ReputationState::Blocked)
    );
    assert_eq!(attempts(&core, "203.0.113.10", "google"), 1);
    drop(server);
    drop(tmpfs);
}

/// Before: any holder of the shared token reported for any IP, a sequence
/// of 2^64-1 silenced an instance, and PUT /log-level was open.
#[test]
fn one_senders_token_cannot_report_for_another_or_change_the_log_level() {
    let (dir, manifests) = manifests();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    std::fs::write(tokens.join("203.0.113.10"), "token-of-10\n").unwrap();
    std::fs::write(tokens.join(BLOCKED_IP), "token-of-12\n").unwrap();
    let out = dir.path().join("out");
    let mut server =
        Standalone::start(&manifests, &out, &["--token-dir", tokens.to_str().unwrap()]);
    let address = server.address.clone();
    let (status, body) = post(&address, Some("token-of-10"), &blocked_report("i-1", 1)).unwrap();
    assert_eq!(status, 403, "the agent of .10 reported for .12: {body}");
    let (status, _) = post(&address, None, &blocked_report("i-1", 1)).unwrap();
    assert_eq!(status, 401);
    let (status, body) = post(
        &address,
        Some("token-of-12"),
        &blocked_report("i-1", u64::MAX),
    )
    .unwrap();
    assert_eq!(status, 200, "a first sequence may be any number: {body}");
    let (status, body) = post(&address, Some("token-of-12"), &blocked_report("i-2", 1)).unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(
        &address,
        Some("token-of-12"),
        &blocked_report("i-2", 1 << 40),
    )
    .unwrap();
    assert_eq!(status, 422, "a jump of 2^40: {body}");
    let (status, body) = post(&address, Some("token-of-12"), &blocked_report("i-2", 2)).unwrap();
    assert_eq!((status, &body["duplicate"]), (200, &json!(false)), "{body}");
    let (status, body) =
        request(&address, "PUT", "/log-level", Some("token-of-12"), "debug").unwrap();
    assert_eq!(status, 403, "{body}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join(STATE_FILE))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the state holds the agents' instance ids");
    server.stop();
}

/// Before: a state file it could not read stopped the start, and the only
/// way out offered forgot every Blocked pair.
#[test]
fn an_unreadable_state_is_moved_aside_with_its_blocked_pairs_reported() {
    let (dir, manifests) = manifests();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // A state cut short in the middle of its second item.
    let pool = json!({
        "apiVersion": "mailfleet.io/v1alpha1", "kind": "SenderPool",
        "metadata": {"namespace": "mail", "name": "bulk"},
        "status": {"ips": [{"address": BLOCKED_IP, "reputation": [
            {"provider": "microsoft", "state": "Blocked", "since": "2026-11-29T08:10:00Z",
             "reason": "ConclusiveBlockReply", "allowancePercent": 0}]}]}
    });
    std::fs::write(
        out.join(STATE_FILE),
        format!("{{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[\n{pool},\n{{\"apiVersion\":\"mailfl"),
    )
    .unwrap();
    let mut server = Standalone::start(&manifests, &out, &[]);
    let moved: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("state.json.unreadable-"))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    wait_for("the state_discarded event", Duration::from_secs(10), || {
        std::fs::read_to_string(out.join("events.jsonl")).is_ok_and(|t| {
            t.contains("state_discarded") && t.contains("mail/bulk 203.0.113.12 microsoft")
        })
    });
    server.stop();
}

/// A bounce from a receiving server that quotes `zone` about `ip`.
fn quoting_report(ip: &str, zone: &str, sequence: u64) -> Value {
    let reply = format!("host mx.one.example[192.0.2.66] said: 554 5.7.1 Service unavailable; Client host [{ip}] blocked using {zone} (in reply to RCPT TO command)");
    json!({
        "api_version": "feedback.mailfleet.io/v1",
        "agent": {"name": format!("bulk-{ip}"), "instance": format!("claims-{ip}")},
        "sequence": sequence,
        "source_ip": ip,
        "pool": {"namespace": "mail", "name": "bulk"},
        "period": {"start": "2026-11-29T08:10:00Z", "end": "2026-11-29T08:10:05Z"},
        "totals": [{"provider": "other", "outcome": "bounced", "category": "ip_blocklisted", "count": 1}],
        "conclusive": [{"provider": "other", "reply": reply, "at": jiff::Timestamp::now().to_string(), "named_ip": ip}]
    })
}

fn saved_pair(out: &Path, ip: &str, provider: &str) -> Option<(ReputationState, String)> {
    let text = std::fs::read_to_string(out.join(STATE_FILE)).ok()?;
    let saved = state::parse(&text, &out.join(STATE_FILE)).ok()?;
    let pair = saved
        .pools
        .values()
        .flat_map(|s| s.ips.iter())
        .filter(|i| i.address == ip)
        .flat_map(|i| i.reputation.iter())
        .find(|r| r.provider == provider)?
        .clone();
    Some((pair.state, pair.reason))
}

/// Before: a reply quoting a list the pool does not probe needed three
/// receiving domains to agree. Now the named zone is asked at once through
/// the resolver (rbldnsd on loopback): it lists .12, so one receiver's
/// reply blocks .12; it does not list .11, so .11's claim only waits.
#[test]
fn a_claim_naming_a_zone_is_checked_at_once_with_that_zone() {
    let Some(dns) = rbldnsd::start(
        "a_claim_naming_a_zone_is_checked_at_once_with_that_zone",
        &[(
            "listed",
            ":127.0.0.2:Listed, see https://bl.example/$\n203.0.113.12\n",
        )],
        &[
            "bl.claims-i16.example:ip4set:listed",
            "clean.claims-i16.example:ip4set:listed",
        ],
        "12.113.0.203.bl.claims-i16.example.",
    ) else {
        return;
    };
    let (_dir, manifests) = manifests();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out");
    let resolver = dns.address.to_string();
    let mut server = Standalone::start(&manifests, &out, &["--dnsbl-resolver", &resolver]);
    let (status, body) = post(
        &server.address,
        None,
        &quoting_report(BLOCKED_IP, "bl.claims-i16.example", 1),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(
        &server.address,
        None,
        &quoting_report("203.0.113.11", "clean.claims-i16.example", 1),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    wait_for("the listed IP blocked", Duration::from_secs(20), || {
        saved_pair(&out, BLOCKED_IP, "other").is_some_and(|(state, reason)| {
            state == ReputationState::Blocked && reason == "DnsblClaimConfirmed"
        })
    });
    wait_for("both answers counted", Duration::from_secs(10), || {
        let (_, metrics) = request(&server.address, "GET", "/metrics", None, "").unwrap();
        metrics.contains("mailfleet_dnsbl_claim_checks_total{result=\"listed\"} 1")
            && metrics.contains("mailfleet_dnsbl_claim_checks_total{result=\"not_listed\"} 1")
    });
    // The state file is written after the answers are counted: wait for
    // the clean IP's pair to be in it before reading its state.
    wait_for("the clean IP's pair saved", Duration::from_secs(10), || {
        saved_pair(&out, "203.0.113.11", "other").is_some()
    });
    let (state, _) = saved_pair(&out, "203.0.113.11", "other").unwrap();
    assert_ne!(
        state,
        ReputationState::Blocked,
        "a zone that does not list .11"
    );
    server.stop();
}

/// Providers a user declares on top of the builtin ones (`--rules`).
const DECLARED_PROVIDERS: &str = "providers:
  - {name: gmx, domains: [gmx.net, gmx.de]}
  - {name: web-de, domains: [web.de]}
  - {name: mail-ru, domains: [mail.ru]}
";

/// Pools in the largest-fleet restart: `MAILFLEET_LARGEST_POOLS` (the bench
/// script raises it), else 2 (with the example's two, four pools): a first
/// start writes a sender folder per IP, which takes long in a debug build
/// on a loaded machine.
fn largest_pools() -> usize {
    std::env::var("MAILFLEET_LARGEST_POOLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2)
}

/// The address of IP `i` of generated pool `p`.
fn large_ip(p: usize, i: usize) -> String {
    format!("10.{}.{}.{}", 16 + p / 200, p % 200, i)
}

/// Whether the generated state holds pair (IP `i`, provider `k`) as Blocked.
fn large_blocked(i: usize, k: usize) -> bool {
    (i + k).is_multiple_of(4)
}

/// Pools of 256 IPs each (the CRD's maximum) added to the example fleet, and
/// a state where every IP has a pair with every provider (builtin, `other`,
/// declared in routes and in `--rules`), each with a full window, a quarter
/// of them Blocked. Returns (manifests, rules file, providers).
fn largest_fleet(root: &Path, out: &Path, pools: usize) -> (PathBuf, PathBuf, Vec<String>) {
    use mailfleet::api::{IpStatus, ProviderReputation, WindowBucket};
    use mailfleet::fleet::Fleet;
    use mailfleet::reputation::classifier::ClassifierConfig;
    use mailfleet::serve::ledger::FeedbackLedger;

    let example = manifests_in(root);
    let rules = root.join("rules.yaml");
    std::fs::write(&rules, DECLARED_PROVIDERS).unwrap();
    let loaded = mailfleet::manifests::load_dir(&example).unwrap();
    let mut template = serde_json::to_value(&loaded.pools[0]).unwrap();
    template["spec"]["reputation"]["dnsbl"] = json!({});
    template.as_object_mut().unwrap().remove("status");
    for p in 0..pools {
        let mut pool = template.clone();
        pool["metadata"] = json!({"name": format!("large-{p}"), "namespace": "mail"});
        pool["spec"]["ips"] = (0..256)
            .map(|i| json!({"address": large_ip(p, i)}))
            .collect();
        std::fs::write(
            example.join(format!("pool-large-{p}.yaml")),
            serde_json::to_string(&pool).unwrap(),
        )
        .unwrap();
    }
    let loaded = mailfleet::manifests::load_dir(&example).unwrap();
    let config = ClassifierConfig::from_yaml(DECLARED_PROVIDERS).unwrap();
    let mut fleet = Fleet::new(loaded, Some(config)).unwrap();
    let now = jiff::Timestamp::now();
    fleet.advance(now).unwrap();
    let mut providers: Vec<String> = mailfleet::vocab::BUILTIN_PROVIDERS
        .iter()
        .map(|p| p.to_string())
        .collect();
    providers.extend(["other", "yahoo-japan", "gmx", "web-de", "mail-ru"].map(String::from));
    let time = |seconds: i64| {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::from_second(now.as_second() + seconds).unwrap(),
        )
    };
    // windowSeconds 900: buckets of 60 s, the current one and 15 before it.
    let current = now.as_second() / 60 * 60 - now.as_second();
    for pool in &mut fleet.pools {
        let name = pool.metadata.name.clone().unwrap_or_default();
        let Some(p) = name.strip_prefix("large-").and_then(|p| p.parse().ok()) else {
            continue;
        };
        let status = pool.status.get_or_insert_with(Default::default);
        status.ips = (0..256)
            .map(|i| {
                let mut ip = IpStatus::new(large_ip(p, i));
                ip.reputation = providers
                    .iter()
                    .enumerate()
                    .map(|(k, provider)| {
                        let blocked = large_blocked(i, k);
                        ProviderReputation {
                            provider: provider.clone(),
                            state: if blocked {
                                ReputationState::Blocked
                            } else {
                                ReputationState::Healthy
                            },
                            since: time(-600),
                            reason: if blocked {
                                "ConclusiveBlockReply"
                            } else {
                                "WindowClean"
                            }
                            .into(),
                            last_evidence: blocked.then(|| {
                                format!(
                                    "550 5.7.606 Access denied, banned sending IP [{}]",
                                    large_ip(p, i)
                                )
                            }),
                            allowance_percent: if blocked { 0 } else { 100 },
                            hourly_cap: None,
                            overridden_by: None,
                            hold_down_seconds: blocked.then_some(3600),
                            block_count: i32::from(blocked),
                            next_step_at: blocked.then(|| time(3000)),
                            recovery_step: None,
                            throttle_step: None,
                            paused_until: None,
                            probe_successes: 0,
                            window: (0..16)
                                .rev()
                                .map(|b| WindowBucket {
                                    start: time(current - b * 60),
                                    attempts: 1_000,
                                    delivered: if blocked { 800 } else { 1_000 },
                                    ip_blocklisted: if blocked { 200 } else { 0 },
                                    ip_rate_limited: 0,
                                    complaints: 0,
                                })
                                .collect(),
                            dnsbl_claims: Vec::new(),
                            complaint_rate: None,
                        }
                    })
                    .collect();
                ip
            })
            .collect();
    }
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(
        out.join(STATE_FILE),
        state::render(&fleet, &FeedbackLedger::default()),
    )
    .unwrap();
    (example, rules, providers)
}

/// The example manifests copied into `root/manifests`.
fn manifests_in(root: &Path) -> PathBuf {
    let manifests = root.join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet");
    for entry in std::fs::read_dir(examples).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), manifests.join(entry.file_name())).unwrap();
    }
    manifests
}

/// Over the generated pools: (pairs, pairs with a full window, Blocked pairs)
/// in a saved state.
fn large_pairs(out: &Path) -> (usize, usize, Vec<String>) {
    let text = std::fs::read_to_string(out.join(STATE_FILE)).unwrap();
    let saved = state::parse(&text, &out.join(STATE_FILE)).unwrap();
    let mut pairs = 0;
    let mut full = 0;
    let mut blocked = Vec::new();
    for ((_, name), status) in &saved.pools {
        if !name.starts_with("large-") {
            continue;
        }
        for ip in &status.ips {
            for pair in &ip.reputation {
                pairs += 1;
                // A minute boundary passed during the test prunes the oldest bucket.
                full += usize::from(pair.window.len() >= 12);
                if pair.state == ReputationState::Blocked {
                    blocked.push(format!("{name} {} {}", ip.address, pair.provider));
                }
            }
        }
    }
    blocked.sort();
    (pairs, full, blocked)
}

/// Before: a YAML state of 400 IPs x 5 providers could not be read back, and
/// the test of the new format was a round trip inside one process. Here the
/// binary starts on a state at the CRDs' limits (pools of 256 IPs, every
/// provider, full windows), takes a block, is killed with SIGKILL, and the
/// next process holds every pair, every Blocked pair and the new block.
/// File size and start time at larger sizes: bench/largest_fleet.sh.
#[test]
fn a_fleet_at_the_crd_limits_is_killed_and_started_again_with_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let pools = largest_pools();
    let (manifests, rules, providers) = largest_fleet(dir.path(), &out, pools);
    let written = std::fs::metadata(out.join(STATE_FILE)).unwrap().len();
    let (pairs, full, mut blocked) = large_pairs(&out);
    assert_eq!(pairs, pools * 256 * providers.len());
    assert_eq!(full, pairs);
    let rules = rules.to_str().unwrap().to_string();
    let extra = ["--rules", rules.as_str()];

    let started = Instant::now();
    let mut first = Standalone::start(&manifests, &out, &extra);
    let first_start = started.elapsed();
    // microsoft (provider 0) on IP 1 of the first pool is Healthy.
    let ip = large_ip(0, 1);
    assert!(!large_blocked(1, 0));
    let mut report = blocked_report("large-1", 1);
    report["source_ip"] = json!(ip);
    report["pool"]["name"] = json!("large-0");
    report["conclusive"][0]["named_ip"] = json!(ip);
    report["conclusive"][0]["reply"] = json!(format!(
        "550 5.7.606 Access denied, banned sending IP [{ip}]"
    ));
    let (status, body) = post(&first.address, None, &report).unwrap();
    assert_eq!((status, &body["duplicate"]), (200, &json!(false)), "{body}");
    first.kill();

    let started = Instant::now();
    let mut second = Standalone::start(&manifests, &out, &extra);
    let second_start = started.elapsed();
    let (status, body) = post(&second.address, None, &report).unwrap();
    assert_eq!(
        (status, &body["duplicate"]),
        (200, &json!(true)),
        "the ledger came back: {body}"
    );
    second.stop();
    let (pairs_after, full_after, blocked_after) = large_pairs(&out);
    assert_eq!(pairs_after, pairs, "every pair came back");
    // All but the new block, whose window starts over.
    assert_eq!(full_after, pairs - 1, "the windows came back");
    blocked.push(format!("large-0 {ip} microsoft"));
    blocked.sort();
    assert_eq!(blocked_after.len(), blocked.len());
    assert!(
        blocked_after == blocked,
        "the Blocked pairs came back, and the new block"
    );
    eprintln!(
        "largest fleet: {pools} pools x 256 IPs x {} providers = {pairs} pairs; state.json {:.1} MiB; started in {:.1} s, again after SIGKILL in {:.1} s",
        providers.len(),
        written as f64 / 1048576.0,
        first_start.as_secs_f64(),
        second_start.as_secs_f64()
    );
}
