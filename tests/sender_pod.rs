//! The sender image's process tried the way a pod runs it, without a
//! container runtime: `mailfleet sender run` with Debian's Postfix in a
//! network namespace of its own (`mf10-snd`, address 198.18.10.2 on a veth
//! pair), and the receiver in another (`mf10-rcv`, 198.18.10.1). The test
//! shows that the bind is real (the receiver sees 198.18.10.2), that HELO is
//! the configured name, that a client outside `spec.intake.allowedCidrs` is
//! refused relaying, that a new configuration is applied by the same process
//! (a new HELO name), and that SIGTERM stops it cleanly: the drain tries to
//! hand the deferred mail on (`--drain-to`), cannot within its time, says so
//! in the termination message and leaves the mail queued.
//!
//! Needs root, `ip netns`, Postfix and target/venv (aiosmtpd): skips with the
//! reason otherwise. Run it alone: `flock /tmp/mailfleet-live.lock cargo test
//! --test sender_pod`.

mod support;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mailfleet::routing::compile;
use mailfleet::routing::example;
use mailfleet::routing::postfix::{sender_in, PostfixOptions};
use mailfleet::routing::sender_config::sender_config;
use support::postfix::{
    become_subreaper, missing_programs, nothing_missing, reap_postfix_daemons, running_as_root,
    POSTFIX,
};

const SENDER_NS: &str = "mf10-snd";
const RECEIVER_NS: &str = "mf10-rcv";
const SENDER_IP: &str = "198.18.10.2";
const RECEIVER_IP: &str = "198.18.10.1";
const RECEIVER_PORT: u16 = 2525;
const PYTHON: &str = "target/venv/bin/python";

/// Records every session as a JSON line: peer, HELO, recipients; refuses
/// recipients starting with `defer` with a 451.
const RECEIVER: &str = r#"
import asyncio, json, sys
from aiosmtpd.controller import Controller
out = open(sys.argv[3], "a", buffering=1)
class Handler:
    async def handle_RCPT(self, server, session, envelope, address, options):
        if address.startswith("defer"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"
    async def handle_DATA(self, server, session, envelope):
        out.write(json.dumps({"peer": session.peer[0], "helo": session.host_name, "rcpt": envelope.rcpt_tos}) + "\n")
        return "250 2.0.0 stored"
c = Controller(Handler(), hostname=sys.argv[1], port=int(sys.argv[2]))
c.start()
open(sys.argv[3] + ".ready", "w").close()
import signal, threading
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
stop.wait()
c.stop()
"#;

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn must(args: &[&str]) {
    assert!(ip(args), "ip {}", args.join(" "));
}

/// The two namespaces and their veth pair, removed when dropped.
struct Network;

impl Network {
    fn create() -> Network {
        Network::remove();
        must(&["netns", "add", SENDER_NS]);
        must(&["netns", "add", RECEIVER_NS]);
        must(&[
            "link", "add", "mf10-s0", "type", "veth", "peer", "name", "mf10-r0",
        ]);
        must(&["link", "set", "mf10-s0", "netns", SENDER_NS]);
        must(&["link", "set", "mf10-r0", "netns", RECEIVER_NS]);
        for (ns, dev, addr) in [
            (SENDER_NS, "mf10-s0", SENDER_IP),
            (RECEIVER_NS, "mf10-r0", RECEIVER_IP),
        ] {
            must(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            must(&["-n", ns, "link", "set", dev, "up"]);
            must(&["-n", ns, "link", "set", "lo", "up"]);
        }
        Network
    }

    fn remove() {
        for ns in [SENDER_NS, RECEIVER_NS] {
            ip(&["netns", "del", ns]);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        Network::remove();
    }
}

struct Killed(Child);

/// Stops a Postfix the test left running (a failed assertion), by its config folder.
struct StopPostfix(PathBuf);

impl Drop for StopPostfix {
    fn drop(&mut self) {
        let _ = Command::new(POSTFIX)
            .args(["-c", &self.0.display().to_string(), "stop"])
            .output();
        reap_postfix_daemons();
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The ConfigMap the operator would render for the sender, laid out the way
/// the kubelet writes a ConfigMap volume.
fn write_config(dir: &Path, stamp: &str, helo: &str) {
    let mut pool = example::pool("mail", "bulk", &[SENDER_IP.to_string()]);
    pool.spec.ips[0].helo_name = Some(helo.to_string());
    // The application submitting in this test sends from the pod's own
    // address; the receiver's network is outside.
    pool.spec.intake.allowed_cidrs = vec![format!("{SENDER_IP}/32")];
    let routes = vec![example::route(
        "mail",
        "default",
        "other",
        mailfleet::api::RouteMatch {
            default: Some(true),
            ..Default::default()
        },
        "bulk",
    )];
    let now = "2021-11-05T08:10:00Z".parse().unwrap();
    let table = compile(std::slice::from_ref(&pool), &routes, now);
    let options = PostfixOptions {
        direct_nexthop: Some(format!("[{RECEIVER_IP}]:{RECEIVER_PORT}")),
        ..PostfixOptions::default()
    };
    let sender = sender_in(std::slice::from_ref(&pool), "mail", "bulk", SENDER_IP);
    let config = sender_config(&table, &sender, &Default::default(), &options).unwrap();
    let data = dir.join(format!("..{stamp}"));
    fs::create_dir_all(&data).unwrap();
    for (key, value) in &config.files {
        fs::write(data.join(key), value).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp);
    symlink(format!("..{stamp}"), &tmp).unwrap();
    fs::rename(&tmp, dir.join("..data")).unwrap();
    for key in config.files.keys() {
        let link = dir.join(key);
        if fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{key}"), &link).unwrap();
        }
    }
}

/// Submits one message over SMTP from inside `ns` to `host:25`; returns the
/// error text of a refusal.
fn submit(ns: &str, host: &str, to: &str) -> Result<(), String> {
    let script = format!(
        "import smtplib\ns = smtplib.SMTP('{host}', 25, timeout=10)\ns.sendmail('app@example.org', ['{to}'], 'Subject: t\\r\\n\\r\\nhello\\r\\n')\ns.quit()\n"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", ns, PYTHON, "-c", &script])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn sessions(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn queued(spool: &Path) -> usize {
    ["deferred", "active", "incoming"]
        .iter()
        .flat_map(|d| walk(&spool.join(d)))
        .count()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_sender_pod_binds_announces_refuses_outsiders_applies_and_stops_cleanly() {
    if !running_as_root("the sender pod test needs root (network namespaces, Postfix)") {
        return;
    }
    if !ip(&["netns", "list"]) {
        eprintln!("\n######## SKIPPED: the sender pod test needs `ip netns` (iproute2) ########\n");
        return;
    }
    let missing = missing_programs(&[POSTFIX, PYTHON]);
    if !nothing_missing(&missing, "the sender pod test", "scripts/ensure-tools.sh") {
        return;
    }
    become_subreaper();
    let _network = Network::create();
    let work = tempfile::Builder::new()
        .prefix("mf10-pod")
        .tempdir()
        .unwrap();
    let root = work.path();
    for sub in ["etc", "spool", "data", "log", "state", "config", "relay"] {
        fs::create_dir_all(root.join(sub)).unwrap();
    }
    // The image's own Postfix configuration, as Debian ships it.
    for file in ["main.cf", "master.cf"] {
        fs::copy(
            Path::new("/etc/postfix").join(file),
            root.join("etc").join(file),
        )
        .unwrap();
    }
    assert!(Command::new("chown")
        .args(["postfix", root.join("data").to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    write_config(&root.join("config"), "1", "mta10.mail.example.net");

    let received = root.join("received.jsonl");
    let script = root.join("receiver.py");
    fs::write(&script, RECEIVER).unwrap();
    let _receiver = Killed(
        Command::new("ip")
            .args(["netns", "exec", RECEIVER_NS, PYTHON])
            .arg(&script)
            .args([RECEIVER_IP, &RECEIVER_PORT.to_string()])
            .arg(&received)
            .spawn()
            .unwrap(),
    );
    let ready = received.with_extension("jsonl.ready");
    wait_for("the receiver", Duration::from_secs(15), || ready.exists());

    let _stop_postfix = StopPostfix(root.join("etc"));
    let log = root.join("log/maillog");
    let sender_log = fs::File::create(root.join("sender.stderr")).unwrap();
    let path = |p: &str| root.join(p).display().to_string();
    let mut sender = Killed(
        Command::new("ip")
            .args(["netns", "exec", SENDER_NS, env!("CARGO_BIN_EXE_mailfleet")])
            .args([
                "sender",
                "run",
                "--source-ip",
                SENDER_IP,
                "--pool",
                "mail/bulk",
            ])
            .args([
                "--endpoint",
                "http://127.0.0.1:9/v1/feedback",
                "--no-token",
                "--no-metrics",
            ])
            .args(["--config-dir", &path("config"), "--config-poll", "0.2"])
            .args([
                "--postfix-config-dir",
                &path("etc"),
                "--log",
                &path("log/maillog"),
            ])
            .args([
                "--state-file",
                &path("state/state.json"),
                "--relay-secrets-dir",
                &path("relay"),
            ])
            .args(["--shutdown-timeout", "1", "--interval", "1"])
            // On SIGTERM the queue is handed on; here to the receiver, which
            // keeps deferring what it deferred, so the drain cannot finish.
            .args([
                "--drain-to",
                &format!("{RECEIVER_IP}:{RECEIVER_PORT}"),
                "--drain-timeout",
                "3",
                "--termination-log",
                &path("termination-log"),
            ])
            .arg(format!("--postconf=queue_directory={}", path("spool")))
            .arg(format!("--postconf=data_directory={}", path("data")))
            .stderr(sender_log)
            .spawn()
            .unwrap(),
    );
    let stderr = || fs::read_to_string(root.join("sender.stderr")).unwrap_or_default();
    let maillog = || fs::read_to_string(&log).unwrap_or_default();
    wait_for("Postfix to listen", Duration::from_secs(30), || {
        maillog().contains("daemon started")
    });

    // An application inside the pod network hands over mail; it leaves from the bound IP.
    let mut tries = 0;
    while let Err(e) = submit(SENDER_NS, SENDER_IP, "taro@example.net") {
        tries += 1;
        assert!(
            tries < 50,
            "submission failed: {e}\n{}\n{}",
            stderr(),
            maillog()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for("the first delivery", Duration::from_secs(30), || {
        !sessions(&received).is_empty()
    });
    let first = &sessions(&received)[0];
    assert_eq!(first["peer"], SENDER_IP, "the receiver sees the pool IP");
    assert_eq!(first["helo"], "mta10.mail.example.net");

    // A client outside spec.intake.allowedCidrs may not relay.
    let refused = submit(RECEIVER_NS, SENDER_IP, "x@example.net").unwrap_err();
    assert!(refused.contains("Relay access denied"), "{refused}");

    // A new configuration (another HELO name) is applied by the same process.
    write_config(&root.join("config"), "2", "mta10-new.mail.example.net");
    wait_for("the new configuration", Duration::from_secs(30), || {
        stderr().matches("applied the sender configuration").count() >= 2
    });
    submit(SENDER_NS, SENDER_IP, "hanako@example.net").unwrap();
    wait_for("the second delivery", Duration::from_secs(30), || {
        sessions(&received).len() >= 2
    });
    assert_eq!(sessions(&received)[1]["helo"], "mta10-new.mail.example.net");

    // Mail the receiver defers stays queued through SIGTERM.
    submit(SENDER_NS, SENDER_IP, "defer@example.net").unwrap();
    wait_for("the deferral", Duration::from_secs(30), || {
        maillog().contains("status=deferred")
    });
    let pid = sender.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = sender.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the sender did not stop:\n{}",
            stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit {status}:\n{}", stderr());
    reap_postfix_daemons();
    assert!(
        !Command::new(POSTFIX)
            .args(["-c", &path("etc"), "status"])
            .output()
            .unwrap()
            .status
            .success(),
        "Postfix still runs after the sender stopped"
    );
    assert_eq!(
        queued(&root.join("spool")),
        1,
        "the deferred message is still queued"
    );
    // The drain tried to hand it on, could not, and said so.
    let said = fs::read_to_string(path("termination-log")).unwrap_or_default();
    assert!(
        said.starts_with("drain incomplete: 1 of 1 queued message(s) could not be handed to"),
        "termination message: {said:?}\n{}",
        stderr()
    );
    assert!(stderr().contains("drain incomplete"), "{}", stderr());
    // The agent counted the deliveries it read from the log Postfix wrote.
    let state = fs::read_to_string(path("state/state.json")).unwrap();
    assert!(state.contains("\"applied_config\""), "{state}");
}
