//! The rendered Postfix files, checked by a real Postfix: lookups with `postmap`,
//! the configuration with `postfix check` and `postconf`, and one live delivery
//! against a local SMTP server that answers like Microsoft blocking our IP (the
//! message must be deferred with 4.7.606, not bounced, and leave from the bound IP).
//!
//! Postfix must be installed (`apt-get install -y postfix`); set
//! `MAILFLEET_SKIP_POSTFIX=1` to skip these tests where it cannot be.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use mailfleet::api::{DomainRoute, NoHealthyIpPolicy, ReputationState, SenderPool};
use mailfleet::routing::example::{
    self, incident_fleet, known_domains, match_domains, pair, set_pair,
};
use mailfleet::routing::postfix::{
    render_sender, PostfixFiles, PostfixOptions, Sender, STATUS_FILTER_FILE, TRANSPORT_FILE,
};
use mailfleet::routing::{compile, RouteTable};

const POSTFIX: &str = "/usr/sbin/postfix";
const POSTMAP: &str = "/usr/sbin/postmap";
const POSTCONF: &str = "/usr/sbin/postconf";
const SENDMAIL: &str = "/usr/sbin/sendmail";

/// True when Postfix is there; fails the test with the install command when it
/// is not, unless MAILFLEET_SKIP_POSTFIX=1.
fn postfix_installed() -> bool {
    let missing: Vec<&str> = [POSTFIX, POSTMAP, POSTCONF, SENDMAIL]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("MAILFLEET_SKIP_POSTFIX").as_deref() == Ok("1") {
        eprintln!("\n######## SKIPPED: the real-Postfix checks did NOT run (MAILFLEET_SKIP_POSTFIX=1; missing {missing:?}) ########\n");
        return false;
    }
    panic!(
        "Postfix is not installed ({} missing). Install it with:\n\n    apt-get install -y postfix\n\n\
         (non-interactively: DEBIAN_FRONTEND=noninteractive apt-get install -y postfix), \
         or set MAILFLEET_SKIP_POSTFIX=1 to skip these tests.",
        missing.join(", ")
    );
}

/// `postfix check` and a running Postfix need root (queue ownership, postdrop).
fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("\n######## SKIPPED: `postfix check` and the live delivery need root; run the tests as root ########\n");
    }
    root
}

fn now() -> Timestamp {
    "2021-11-05T08:10:00Z".parse().unwrap()
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn postmap_query(key: &str, table: &str) -> Option<String> {
    let out = run(POSTMAP, &["-q", key, table]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.trim().is_empty(),
        "postmap -q {key:?} {table} complained: {stderr}"
    );
    match out.status.code() {
        Some(0) => Some(
            String::from_utf8_lossy(&out.stdout)
                .trim_end_matches('\n')
                .to_string(),
        ),
        Some(1) => None,
        other => panic!("postmap -q {key:?} {table} failed ({other:?}): {stderr}"),
    }
}

fn write_maps(dir: &Path, files: &PostfixFiles) {
    fs::write(dir.join(TRANSPORT_FILE), &files.transport).unwrap();
    fs::write(dir.join(STATUS_FILTER_FILE), &files.status_filter).unwrap();
}

fn incident_table() -> RouteTable {
    let (pools, routes) = incident_fleet(now());
    compile(&pools, &routes, now())
}

fn sender(namespace: &str, pool: &str, ip: &str) -> Sender {
    Sender {
        namespace: namespace.into(),
        pool: pool.into(),
        ip: ip.into(),
    }
}

#[test]
fn the_transport_map_answers_postmap_lookups() {
    if !postfix_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let files = render_sender(
        &incident_table(),
        &sender("mail", "bulk", "203.0.113.13"),
        &known_domains(),
        &PostfixOptions::default(),
    )
    .unwrap();
    write_maps(dir.path(), &files);
    let path = dir.path().join(TRANSPORT_FILE);
    let texthash = format!("texthash:{}", path.display());
    let hash = format!("hash:{}", path.display());
    let built = run(POSTMAP, &[&hash]);
    assert!(
        built.status.success(),
        "postmap {hash}: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    assert!(
        built.stderr.is_empty(),
        "postmap warned: {}",
        String::from_utf8_lossy(&built.stderr)
    );

    let expected = [
        ("hotmail.com", Some("smtp:[mf-route-microsoft.mail.svc]")),
        ("live.com.sg", Some("smtp:[mf-route-microsoft.mail.svc]")),
        ("acclaim.jp", Some("smtp:[mf-route-microsoft-365.mail.svc]")),
        (
            "passport.com",
            Some("smtp:[mf-route-microsoft-365.mail.svc]"),
        ),
        ("gmail.com", Some("mf-203-0-113-13-google:")),
        ("yahoo.co.jp", Some("mf-203-0-113-13-yahoo-japan:")),
        ("*", Some("mf-203-0-113-13-default:")),
        ("example.org", None),
    ];
    for table in [&texthash, &hash] {
        for (key, want) in expected {
            assert_eq!(
                postmap_query(key, table).as_deref(),
                want,
                "{key} in {table}"
            );
        }
    }
}

#[test]
fn the_status_filter_defers_conclusive_blocks_only() {
    if !postfix_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let files = render_sender(
        &incident_table(),
        &sender("mail", "bulk", "203.0.113.10"),
        &known_domains(),
        &PostfixOptions::default(),
    )
    .unwrap();
    write_maps(dir.path(), &files);
    let table = format!("regexp:{}", dir.path().join(STATUS_FILTER_FILE).display());
    let said = |host: &str, reply: &str| {
        format!("host {host}[192.0.2.1] said: {reply} (in reply to RCPT TO command)")
    };
    let ms = "contoso-com.mail.protection.outlook.com";
    let deferred = [
        format!("5.7.606 {}", said(ms, "550 5.7.606 Access denied, banned sending IP [203.0.113.10]. To request removal from this list please visit https://sender.office.com/")),
        format!("5.7.649 {}", said(ms, "550 5.7.649 Access denied, banned sending IP [203.0.113.10]")),
        format!("5.7.511 {}", said(ms, "550 5.7.511 Access denied, banned sender[203.0.113.10]")),
        format!("5.0.0 {}", said(ms, "550 5.7.606 Access denied, banned sending IP [203.0.113.10]")),
        format!("5.7.1 {}", said("eur.olc.protection.outlook.com", "550 5.7.1 Unfortunately, messages from [203.0.113.10] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3140).")),
        format!("5.7.1 {}", said("eur.olc.protection.outlook.com", "550 5.7.1 Unfortunately, messages from [203.0.113.10] weren't sent (S3150).")),
        format!("5.7.2 {}", said("mta5.am0.yahoodns.net", "553 5.7.2 [TSS09] All messages from 203.0.113.10 will be permanently deferred; Retrying will NOT succeed.")),
        format!("5.7.2 {}", said("mta5.am0.yahoodns.net", "553 5.7.2 [TSS11] All messages from 203.0.113.10 will be permanently deferred")),
        format!("5.7.1 {}", said("mta5.am0.yahoodns.net", "553 5.7.1 [BL21] Connections will not be accepted from 203.0.113.10, because the ip is in Spamhaus's list")),
        format!("5.7.1 {}", said("mta5.am0.yahoodns.net", "553 5.7.1 [BL23] Connections not accepted from IP addresses on Spamhaus XBL")),
        format!("5.7.0 {}", said("mx01.mail.icloud.com", "550 5.7.0 Blocked - see https://support.proofpoint.com/dnsbl-lookup.cgi?ip=203.0.113.10")),
        format!("5.7.1 {}", said("mx.example.org", "554 5.7.1 Service unavailable; Client host [203.0.113.10] blocked using zen.spamhaus.org")),
    ];
    for key in &deferred {
        let want = format!("4{}", &key[1..]);
        assert_eq!(
            postmap_query(key, &table),
            Some(want),
            "a conclusive block must be deferred: {key}"
        );
    }
    let untouched = [
        format!("5.1.1 {}", said(ms, "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found")),
        format!("5.7.513 {}", said(ms, "550 5.7.513 Service unavailable, Client host [203.0.113.10] blocked by contoso.com using Customer Block list")),
        format!("5.7.509 {}", said(ms, "550 5.7.509 Access denied, sending domain example.com does not pass DMARC verification")),
        format!("5.7.605 {}", said(ms, "550 5.7.605 Access denied, something else")),
        format!("5.7.1 {}", said("gmail-smtp-in.l.google.com", "550-5.7.1 Our system has detected that this message is likely unsolicited mail.")),
        format!("4.7.650 {}", said(ms, "451 4.7.650 The mail server [203.0.113.10] has been temporarily rate limited due to IP reputation.")),
        "2.0.0 Ok: queued as 4CE1198C053".to_string(),
    ];
    for key in &untouched {
        assert_eq!(
            postmap_query(key, &table),
            None,
            "must not be rewritten: {key}"
        );
    }
}

const BASE_MASTER_CF: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
        -o syslog_name=postfix/$service_name
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

/// A complete private Postfix: `root/etc` (config), `root/spool`, `root/data`,
/// `root/maillog`. The queue lives outside the config folder, as Postfix expects.
struct PrivatePostfix {
    _root: tempfile::TempDir,
    root: PathBuf,
    etc: PathBuf,
    started: bool,
}

impl PrivatePostfix {
    fn new(files: &PostfixFiles) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("mailfleet-postfix-")
            .tempdir()
            .unwrap();
        let root = dir.path().to_path_buf();
        let etc = root.join("etc");
        for sub in ["etc", "spool", "data"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        let chown = run("chown", &["postfix", root.join("data").to_str().unwrap()]);
        assert!(
            chown.status.success(),
            "chown postfix data: {}",
            String::from_utf8_lossy(&chown.stderr)
        );
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {root}/spool\n\
             data_directory = {root}/data\n\
             maillog_file = {root}/maillog\n\
             maillog_file_prefixes = {root}\n\
             myhostname = sender.mailfleet.test\n\
             mydomain = mailfleet.test\n\
             mydestination =\n\
             alias_maps =\n\
             alias_database =\n\
             inet_interfaces = loopback-only\n\
             inet_protocols = all\n\
             master_service_disable = inet\n\
             {fragment}",
            root = root.display(),
            fragment = files.main_cf
        );
        fs::write(etc.join("main.cf"), main_cf).unwrap();
        fs::write(
            etc.join("master.cf"),
            format!("{BASE_MASTER_CF}{}", files.master_cf),
        )
        .unwrap();
        write_maps(&etc, files);
        PrivatePostfix {
            _root: dir,
            root,
            etc,
            started: false,
        }
    }

    fn etc(&self) -> &str {
        self.etc.to_str().unwrap()
    }

    fn maillog(&self) -> String {
        fs::read_to_string(self.root.join("maillog")).unwrap_or_default()
    }

    /// `postfix check` must pass without a warning, and postconf must know every
    /// parameter the fragments set (it warns about unused ones).
    fn check(&self) {
        let out = run(POSTFIX, &["-c", self.etc(), "check"]);
        let log = self.maillog();
        assert!(
            out.status.success(),
            "postfix check failed:\n{log}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !log.contains("warning") && !log.contains("fatal"),
            "postfix check complained:\n{log}"
        );
        let out = run(POSTCONF, &["-c", self.etc(), "-n"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "postconf -n complained:\n{stderr}"
        );
    }

    fn start(&mut self) {
        let out = run(POSTFIX, &["-c", self.etc(), "start"]);
        assert!(
            out.status.success(),
            "postfix start failed:\n{}",
            self.maillog()
        );
        self.started = true;
    }

    fn send(&self, to: &str) {
        let mut child = Command::new(SENDMAIL)
            .args(["-C", self.etc(), "-f", "sender@mailfleet.test", to])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"Subject: mailfleet check\n\nhello\n")
            .unwrap();
        assert!(
            child.wait().unwrap().success(),
            "sendmail to {to} failed:\n{}",
            self.maillog()
        );
    }

    /// The first delivery log line for `to` that carries a status.
    fn wait_for_status(&self, to: &str) -> String {
        let needle = format!("to=<{to}>");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.maillog();
            if let Some(line) = log
                .lines()
                .find(|l| l.contains(&needle) && l.contains("status="))
            {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no delivery status for {to} within 30 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for PrivatePostfix {
    fn drop(&mut self) {
        if self.started {
            let _ = Command::new(POSTFIX)
                .args(["-c", self.etc(), "stop"])
                .output();
            reap_postfix_daemons();
        }
    }
}

/// Postfix daemonises: once stopped, its processes are orphans. This test made
/// itself their subreaper, so it collects them instead of leaving zombies; only
/// Postfix daemons are reaped, never another test's children.
fn reap_postfix_daemons() {
    const DAEMONS: [&str; 14] = [
        "master",
        "pickup",
        "qmgr",
        "cleanup",
        "trivial-rewrite",
        "smtp",
        "bounce",
        "postlogd",
        "error",
        "anvil",
        "scache",
        "proxymap",
        "showq",
        "tlsmgr",
    ];
    let me = std::process::id();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut alive = 0;
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ..."; comm may hold spaces, so split after the last ')'.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = &stat[open + 1..close];
            let mut rest = stat[close + 1..].split_whitespace();
            let (Some(state), Some(ppid)) = (rest.next(), rest.next()) else {
                continue;
            };
            if ppid.parse::<u32>().ok() != Some(me) || !DAEMONS.contains(&comm) {
                continue;
            }
            alive += 1;
            if state == "Z" {
                let mut status = 0;
                // SAFETY: waits for one known zombie child of this process, without blocking.
                unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            }
        }
        if alive == 0 || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn postfix_accepts_the_rendered_configuration() {
    if !postfix_installed() || !running_as_root() {
        return;
    }
    let (mut pools, routes) = incident_fleet(now());
    // An IPv6 sender too, so both bind parameters are checked.
    pools[0].spec.ips[7].address = "2001:db8::17".to_string();
    let table = compile(&pools, &routes, now());
    for ip in ["203.0.113.10", "203.0.113.13", "2001:db8::17"] {
        let files = render_sender(
            &table,
            &sender("mail", "bulk", ip),
            &known_domains(),
            &PostfixOptions::default(),
        )
        .unwrap();
        let postfix = PrivatePostfix::new(&files);
        postfix.check();
        let transports = run(POSTCONF, &["-c", postfix.etc(), "-M"]);
        let listed = String::from_utf8_lossy(&transports.stdout);
        let slug = mailfleet::routing::postfix::ip_slug(ip.parse::<IpAddr>().unwrap());
        assert!(listed.contains(&format!("{slug}-google unix")), "{listed}");
        let delay = run(
            POSTCONF,
            &[
                "-c",
                postfix.etc(),
                "-h",
                &format!("{slug}-google_transport_rate_delay"),
            ],
        );
        assert_eq!(String::from_utf8_lossy(&delay.stdout).trim(), "1s");
    }
}

/// A local server that answers every RCPT like Microsoft refusing a banned IP,
/// and records which source address each connection came from.
fn start_blocking_server() -> (u16, Arc<Mutex<Vec<IpAddr>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&peers);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            if let Ok(peer) = stream.peer_addr() {
                seen.lock().unwrap().push(peer.ip());
            }
            let mut writer = stream.try_clone().unwrap();
            let mut say = |line: &str| writer.write_all(format!("{line}\r\n").as_bytes());
            let _ = say("220 blocking.test ESMTP");
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let command = line.to_ascii_uppercase();
                let reply = if command.starts_with("EHLO")
                    || command.starts_with("HELO")
                    || command.starts_with("MAIL")
                    || command.starts_with("RSET")
                {
                    "250 ok"
                } else if command.starts_with("RCPT") {
                    "550 5.7.606 Access denied, banned sending IP [127.0.0.7]. To request removal from this list please visit https://sender.office.com/"
                } else if command.starts_with("QUIT") {
                    let _ = say("221 bye");
                    break;
                } else {
                    "502 5.5.2 not implemented"
                };
                if say(reply).is_err() {
                    break;
                }
            }
        }
    });
    (port, peers)
}

fn lab_fleet() -> (Vec<SenderPool>, Vec<DomainRoute>) {
    let mut pool = example::pool(
        "lab",
        "senders",
        &["127.0.0.7".to_string(), "127.0.0.8".to_string()],
    );
    for ip in ["127.0.0.7", "127.0.0.8"] {
        set_pair(
            &mut pool,
            ip,
            pair("yahoo-japan", ReputationState::Blocked, 0, now()),
        );
    }
    let microsoft = example::route(
        "lab",
        "microsoft",
        "microsoft",
        match_domains(&["hotmail.test"]),
        "senders",
    );
    let mut yahoo_japan = example::route(
        "lab",
        "yahoo-japan",
        "yahoo-japan",
        match_domains(&["yahoo-japan.test"]),
        "senders",
    );
    yahoo_japan.spec.when_no_healthy_ip = NoHealthyIpPolicy::Defer;
    (vec![pool], vec![microsoft, yahoo_japan])
}

#[test]
fn a_block_reply_is_deferred_not_bounced_and_a_deferring_route_keeps_mail_queued() {
    if !postfix_installed() || !running_as_root() {
        return;
    }
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes who adopts this process's orphans.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let (port, peers) = start_blocking_server();
    let (pools, routes) = lab_fleet();
    let table = compile(&pools, &routes, now());
    let options = PostfixOptions {
        direct_nexthop: Some(format!("[127.0.0.1]:{port}")),
        ..PostfixOptions::default()
    };
    let files = render_sender(
        &table,
        &sender("lab", "senders", "127.0.0.7"),
        &BTreeMap::new(),
        &options,
    )
    .unwrap();
    let mut postfix = PrivatePostfix::new(&files);
    postfix.check();
    postfix.start();

    postfix.send("user@hotmail.test");
    let line = postfix.wait_for_status("user@hotmail.test");
    assert!(
        line.contains("postfix/mf-127-0-0-7-microsoft/smtp["),
        "delivered by the route's own transport: {line}"
    );
    assert!(
        line.contains("dsn=4.7.606, status=deferred"),
        "the block must be deferred, not bounced: {line}"
    );
    assert!(
        line.contains("said: 550 5.7.606 Access denied, banned sending IP"),
        "{line}"
    );
    assert_eq!(
        peers.lock().unwrap().first(),
        Some(&"127.0.0.7".parse::<IpAddr>().unwrap()),
        "sent from the bound source IP"
    );

    postfix.send("user@yahoo-japan.test");
    let line = postfix.wait_for_status("user@yahoo-japan.test");
    assert!(line.contains("dsn=4.7.0, status=deferred"), "{line}");
    assert!(
        line.contains(
            "mailfleet route lab/yahoo-japan defers mail until a source IP may send to yahoo-japan"
        ),
        "{line}"
    );
    assert!(
        !postfix.maillog().contains("status=bounced"),
        "{}",
        postfix.maillog()
    );
}
