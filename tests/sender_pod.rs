//! The sender image's process tried the way a pod runs it, without a
//! container runtime: `mailfleet sender run` with Debian's Postfix, each
//! sender in a network namespace of its own (`mf10-snd` with 198.18.10.2,
//! `mf10-snd2` with 198.18.10.3), the receiver in another (`mf10-rcv`,
//! 198.18.10.1, on the bridge every namespace's veth pair joins), and the
//! hand-off address of the `acme` route (198.18.10.4, standing in for its
//! `mf-route-acme` Service: a TCP forwarder to the healthy sender, as
//! kube-proxy forwards) in a third (`mf10-hof`). The test shows that the bind
//! is real (the receiver sees 198.18.10.2), that HELO is the configured name,
//! that mail for `acme`, blocked on 198.18.10.2, leaves through the hand-off
//! and reaches the receiver from the healthy 198.18.10.3 with its own HELO,
//! that a client outside `spec.intake.allowedCidrs` is refused relaying, that
//! a new configuration is applied by the same process (a new HELO name),
//! that SIGTERM stops it cleanly with the deferred mail still queued, and
//! that started as the pod starts it (`--drain-to` the pool's intake) SIGTERM
//! first hands every queued message to the healthy sender.
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

use mailfleet::api::ReputationState;
use mailfleet::routing::compile;
use mailfleet::routing::example;
use mailfleet::routing::postfix::{sender_in, PostfixOptions};
use mailfleet::routing::sender_config::sender_config;
use support::postfix::{
    become_subreaper, missing_programs, nothing_missing, reap_postfix_daemons, running_as_root,
    POSTFIX,
};

const SENDER_NS: &str = "mf10-snd";
const HEALTHY_NS: &str = "mf10-snd2";
const HANDOFF_NS: &str = "mf10-hof";
const RECEIVER_NS: &str = "mf10-rcv";
const SENDER_IP: &str = "198.18.10.2";
const HEALTHY_IP: &str = "198.18.10.3";
const HANDOFF_IP: &str = "198.18.10.4";
const RECEIVER_IP: &str = "198.18.10.1";
const HEALTHY_HELO: &str = "mta11.mail.example.net";
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

/// The hand-off address: forwards every connection to the healthy sender.
const FORWARDER: &str = r#"
import asyncio, sys
async def pipe(r, w):
    try:
        while True:
            data = await r.read(65536)
            if not data:
                break
            w.write(data)
            await w.drain()
    finally:
        w.close()
async def handle(cr, cw):
    ur, uw = await asyncio.open_connection(sys.argv[3], 25)
    await asyncio.gather(pipe(cr, uw), pipe(ur, cw), return_exceptions=True)
async def main():
    server = await asyncio.start_server(handle, sys.argv[1], int(sys.argv[2]))
    open(sys.argv[4], "w").close()
    await server.serve_forever()
asyncio.run(main())
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

/// The four namespaces, each joined to a bridge in the receiver's by a veth
/// pair; removed when dropped.
struct Network;

const NAMESPACES: [(&str, &str, &str); 3] = [
    (SENDER_NS, "mf10-a", SENDER_IP),
    (HEALTHY_NS, "mf10-b", HEALTHY_IP),
    (HANDOFF_NS, "mf10-h", HANDOFF_IP),
];

impl Network {
    fn create() -> Network {
        Network::remove();
        must(&["netns", "add", RECEIVER_NS]);
        must(&["-n", RECEIVER_NS, "link", "set", "lo", "up"]);
        must(&[
            "-n",
            RECEIVER_NS,
            "link",
            "add",
            "mf10-br",
            "type",
            "bridge",
        ]);
        must(&[
            "-n",
            RECEIVER_NS,
            "addr",
            "add",
            &format!("{RECEIVER_IP}/24"),
            "dev",
            "mf10-br",
        ]);
        must(&["-n", RECEIVER_NS, "link", "set", "mf10-br", "up"]);
        for (ns, dev, addr) in NAMESPACES {
            let (inner, outer) = (format!("{dev}0"), format!("{dev}1"));
            must(&["netns", "add", ns]);
            must(&[
                "link", "add", &inner, "type", "veth", "peer", "name", &outer,
            ]);
            must(&["link", "set", &inner, "netns", ns]);
            must(&["link", "set", &outer, "netns", RECEIVER_NS]);
            must(&[
                "-n",
                RECEIVER_NS,
                "link",
                "set",
                &outer,
                "master",
                "mf10-br",
            ]);
            must(&["-n", RECEIVER_NS, "link", "set", &outer, "up"]);
            must(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &inner,
            ]);
            must(&["-n", ns, "link", "set", &inner, "up"]);
            must(&["-n", ns, "link", "set", "lo", "up"]);
        }
        Network
    }

    fn remove() {
        for ns in [SENDER_NS, HEALTHY_NS, HANDOFF_NS, RECEIVER_NS] {
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

/// The ConfigMap the operator would render for the sender of `ip`, laid out
/// the way the kubelet writes a ConfigMap volume. The pool `bulk` has both
/// senders; `acme` is Blocked on 198.18.10.2, so its route hands that IP's
/// `acme` mail to the route's Service (the hand-off address).
fn write_config(dir: &Path, ip: &str, stamp: &str, helo: &str) {
    let mut pool = example::pool(
        "mail",
        "bulk",
        &[SENDER_IP.to_string(), HEALTHY_IP.to_string()],
    );
    pool.spec.ips[0].helo_name = Some(helo.to_string());
    pool.spec.ips[1].helo_name = Some(HEALTHY_HELO.to_string());
    // The application submitting in this test sends from the pod's own
    // address, the hand-off reaches the healthy sender from its own (in a
    // cluster: the sending pod's, which the pod CIDR covers); the
    // receiver's network is outside.
    pool.spec.intake.allowed_cidrs = vec![format!("{SENDER_IP}/32"), format!("{HANDOFF_IP}/32")];
    let now = "2021-11-05T08:10:00Z".parse().unwrap();
    example::set_pair(
        &mut pool,
        SENDER_IP,
        example::pair("acme", ReputationState::Blocked, 0, now),
    );
    let routes = vec![
        example::route("mail", "default", "other", example::match_default(), "bulk"),
        example::route(
            "mail",
            "acme",
            "acme",
            example::match_domains(&["acme.example"]),
            "bulk",
        ),
    ];
    let table = compile(std::slice::from_ref(&pool), &routes, now);
    let options = PostfixOptions {
        direct_nexthop: Some(format!("[{RECEIVER_IP}]:{RECEIVER_PORT}")),
        route_service_host: HANDOFF_IP.to_string(),
        ..PostfixOptions::default()
    };
    let sender = sender_in(std::slice::from_ref(&pool), "mail", "bulk", ip);
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

/// The `postconf -e` settings images/sender/Dockerfile gives the image's
/// main.cf.
fn image_settings() -> Vec<String> {
    let dockerfile =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("images/sender/Dockerfile"))
            .unwrap();
    let start = dockerfile
        .find("postconf -e ")
        .expect("the sender Dockerfile runs postconf -e");
    let mut settings = Vec::new();
    for line in dockerfile[start + "postconf -e ".len()..].lines() {
        settings.extend(
            line.split_whitespace()
                .filter(|t| t.contains('='))
                .map(str::to_string),
        );
        if !line.trim_end().ends_with('\\') {
            break;
        }
    }
    assert!(
        !settings.is_empty(),
        "no postconf -e settings in the Dockerfile"
    );
    settings
}

/// A sender pod's folders: the image's Postfix configuration made as
/// images/sender/Dockerfile makes it (Debian's main.cf.debian and the
/// Dockerfile's settings, the package's master.cf), a queue, a data folder
/// Postfix owns, the log, the agent state, the mounted ConfigMap and relay
/// Secrets.
fn pod_root(root: &Path, ip: &str, helo: &str) {
    for sub in ["etc", "spool", "data", "log", "state", "config", "relay"] {
        fs::create_dir_all(root.join(sub)).unwrap();
    }
    let etc = root.join("etc");
    fs::copy("/usr/share/postfix/main.cf.debian", etc.join("main.cf")).unwrap();
    fs::copy("/etc/postfix/master.cf", etc.join("master.cf")).unwrap();
    assert!(Command::new("postconf")
        .args(["-c", etc.to_str().unwrap(), "-e"])
        .args(image_settings())
        .status()
        .unwrap()
        .success());
    assert!(Command::new("chown")
        .args(["postfix", root.join("data").to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    write_config(&root.join("config"), ip, "1", helo);
}

/// `mailfleet sender run` as the image runs it, inside `ns`. Both senders
/// share this machine's host name, as `hostNetwork` pods on one node share
/// the node's: Postfix's own name is the pod's, given as the operator gives
/// it (`--postconf=myhostname=$(MAILFLEET_POD_NAME)`), or the hand-off
/// between them would look like a mail loop.
fn start_sender(root: &Path, ns: &str, ip: &str, pod: &str) -> Killed {
    start_sender_with(root, ns, ip, pod, &[])
}

/// [`start_sender`] with more arguments (the drain's, as the pod passes them).
fn start_sender_with(root: &Path, ns: &str, ip: &str, pod: &str, extra: &[&str]) -> Killed {
    let path = |p: &str| root.join(p).display().to_string();
    let stderr = fs::File::create(root.join("sender.stderr")).unwrap();
    Killed(
        Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_mailfleet")])
            .args(["sender", "run", "--source-ip", ip, "--pool", "mail/bulk"])
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
            .arg(format!("--postconf=queue_directory={}", path("spool")))
            .arg(format!("--postconf=data_directory={}", path("data")))
            .arg(format!("--postconf=myhostname={pod}"))
            .args(extra)
            .stderr(stderr)
            .spawn()
            .unwrap(),
    )
}

/// Sends SIGTERM and waits for a clean exit.
fn terminate(sender: &mut Killed, root: &Path) {
    let stderr = || fs::read_to_string(root.join("sender.stderr")).unwrap_or_default();
    assert!(Command::new("kill")
        .args(["-TERM", &sender.0.id().to_string()])
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
            .args(["-c", &root.join("etc").display().to_string(), "status"])
            .output()
            .unwrap()
            .status
            .success(),
        "Postfix still runs after the sender stopped"
    );
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
    // The hold queue is where the agent's pacer parks mail waiting for its cap.
    ["deferred", "active", "incoming", "hold"]
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
fn a_sender_pod_binds_announces_hands_off_refuses_outsiders_applies_and_stops_cleanly() {
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
    let root = work.path().join("blocked");
    let healthy = work.path().join("healthy");
    pod_root(&root, SENDER_IP, "mta10.mail.example.net");
    pod_root(&healthy, HEALTHY_IP, "mta10.mail.example.net");

    let received = work.path().join("received.jsonl");
    let script = work.path().join("receiver.py");
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
    let forwarder = work.path().join("forwarder.py");
    fs::write(&forwarder, FORWARDER).unwrap();
    let forwarding = work.path().join("forwarder.ready");
    let _handoff = Killed(
        Command::new("ip")
            .args(["netns", "exec", HANDOFF_NS, PYTHON])
            .arg(&forwarder)
            .args([HANDOFF_IP, "25", HEALTHY_IP])
            .arg(&forwarding)
            .spawn()
            .unwrap(),
    );
    wait_for("the hand-off address", Duration::from_secs(15), || {
        forwarding.exists()
    });

    let _stop_postfix = StopPostfix(root.join("etc"));
    let _stop_healthy = StopPostfix(healthy.join("etc"));
    let log = root.join("log/maillog");
    let path = |p: &str| root.join(p).display().to_string();
    let mut sender = start_sender(&root, SENDER_NS, SENDER_IP, "mf-bulk-198-18-10-2-7d9f8");
    let mut healthy_sender = start_sender(
        &healthy,
        HEALTHY_NS,
        HEALTHY_IP,
        "mf-bulk-198-18-10-3-5c4b2",
    );
    let stderr = || fs::read_to_string(root.join("sender.stderr")).unwrap_or_default();
    let maillog = || fs::read_to_string(&log).unwrap_or_default();
    let healthy_log = || fs::read_to_string(healthy.join("log/maillog")).unwrap_or_default();
    wait_for("Postfix to listen", Duration::from_secs(30), || {
        maillog().contains("daemon started") && healthy_log().contains("daemon started")
    });

    // The image's own main.cf does not set again what the fragment sets.
    assert!(
        !maillog().contains("overriding earlier entry"),
        "{}",
        maillog()
    );

    // The sender checked its Bind address the way Postfix will bind it: on
    // the pod's interface (IpBound True in its reports).
    let on_interface = format!("{SENDER_IP} is on an interface of this pod");
    assert!(stderr().contains(&on_interface), "{}", stderr());

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

    // Mail for a provider that blocked this IP leaves through the hand-off
    // and reaches the receiver from the healthy sender.
    submit(SENDER_NS, SENDER_IP, "jiro@acme.example").unwrap();
    wait_for("the handed-off delivery", Duration::from_secs(30), || {
        sessions(&received).len() >= 2
    });
    let handed = &sessions(&received)[1];
    assert_eq!(
        handed["rcpt"][0],
        "jiro@acme.example",
        "{}\n{}",
        maillog(),
        healthy_log()
    );
    assert_eq!(
        handed["peer"],
        HEALTHY_IP,
        "the healthy sender delivered it\n{}\n{}",
        maillog(),
        healthy_log()
    );
    assert_eq!(handed["helo"], HEALTHY_HELO);
    assert!(
        maillog().contains(&format!(
            "to=<jiro@acme.example>, relay={HANDOFF_IP}[{HANDOFF_IP}]:25"
        )),
        "{}",
        maillog()
    );

    // A client outside spec.intake.allowedCidrs may not relay.
    let refused = submit(RECEIVER_NS, SENDER_IP, "x@example.net").unwrap_err();
    assert!(refused.contains("Relay access denied"), "{refused}");

    // A new configuration (another HELO name) is applied by the same process.
    write_config(
        &root.join("config"),
        SENDER_IP,
        "2",
        "mta10-new.mail.example.net",
    );
    wait_for("the new configuration", Duration::from_secs(30), || {
        stderr().matches("applied the sender configuration").count() >= 2
    });
    submit(SENDER_NS, SENDER_IP, "hanako@example.net").unwrap();
    wait_for("the third delivery", Duration::from_secs(30), || {
        sessions(&received).len() >= 3
    });
    assert_eq!(sessions(&received)[2]["helo"], "mta10-new.mail.example.net");

    // Mail the receiver defers stays queued through SIGTERM.
    submit(SENDER_NS, SENDER_IP, "defer@example.net").unwrap();
    wait_for("the deferral", Duration::from_secs(30), || {
        maillog().lines().any(|l| {
            l.contains("to=<defer@example.net>")
                && l.contains("status=deferred")
                && !l.contains("(deferred transport)")
        })
    });
    terminate(&mut sender, &root);
    assert_eq!(
        queued(&root.join("spool")),
        1,
        "the deferred message is still queued"
    );
    // The agent counted the deliveries it read from the log Postfix wrote.
    let state = fs::read_to_string(path("state/state.json")).unwrap();
    assert!(state.contains("\"applied_config\""), "{state}");

    // Started as the pod starts it (`--drain-to` the pool's intake), SIGTERM
    // hands every queued message to the pool's other senders before Postfix
    // stops: the queue is on an emptyDir and would leave with the pod.
    let termination_log = root.join("termination-log");
    let hand_off = format!("{HANDOFF_IP}:25");
    let started_before = maillog().matches("daemon started").count();
    let mut sender = start_sender_with(
        &root,
        SENDER_NS,
        SENDER_IP,
        "mf-bulk-198-18-10-2-7d9f8",
        &[
            "--drain-to",
            &hand_off,
            "--drain-timeout",
            "20",
            "--termination-log",
            &termination_log.display().to_string(),
        ],
    );
    wait_for("Postfix to start again", Duration::from_secs(30), || {
        maillog().matches("daemon started").count() > started_before
    });
    let mut tries = 0;
    while let Err(e) = submit(SENDER_NS, SENDER_IP, "defer-later@example.net") {
        tries += 1;
        assert!(tries < 50, "submission failed: {e}\n{}", stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for("the second deferral", Duration::from_secs(30), || {
        maillog()
            .lines()
            .any(|l| l.contains("to=<defer-later@example.net>") && l.contains("status=deferred"))
    });
    assert_eq!(queued(&root.join("spool")), 2, "{}", maillog());
    terminate(&mut sender, &root);
    assert_eq!(
        queued(&root.join("spool")),
        0,
        "the drain left mail behind\n{}\n{}",
        stderr(),
        maillog()
    );
    let outcome = fs::read_to_string(&termination_log).unwrap_or_default();
    assert!(
        outcome.starts_with(&format!(
            "drained: 2 queued message(s) handed to {hand_off}"
        )),
        "{outcome}\n{}",
        stderr()
    );
    // The healthy sender took both; the receiver still defers them, so they
    // wait in its queue, not lost with the stopped pod.
    for to in ["defer@example.net", "defer-later@example.net"] {
        wait_for(
            "the drained message on the healthy sender",
            Duration::from_secs(30),
            || {
                healthy_log()
                    .lines()
                    .any(|l| l.contains(&format!("to=<{to}>")) && l.contains("status=deferred"))
            },
        );
    }
    terminate(&mut healthy_sender, &healthy);
    assert_eq!(
        queued(&healthy.join("spool")),
        2,
        "the healthy sender delivered all it was handed and keeps the two the receiver defers\n{}",
        healthy_log()
    );
}
