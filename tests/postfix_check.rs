//! The rendered Postfix files, checked by a real Postfix: lookups with `postmap`,
//! the configuration with `postfix check` and `postconf`, and one live delivery
//! against a local SMTP server that answers like Microsoft blocking our IP (the
//! message must be deferred with 4.7.606, not bounced, and leave from the bound IP).
//!
//! Postfix must be installed (`apt-get install -y postfix`); set
//! `MAILFLEET_SKIP_POSTFIX=1` to skip these tests where it cannot be.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;

use mailfleet::api::{DomainRoute, NoHealthyIpPolicy, ReputationState, SenderPool};
use mailfleet::routing::example::{
    self, incident_fleet, known_domains, match_domains, pair, set_pair,
};
use mailfleet::routing::postfix::{
    render_sender, render_sender_with, PostfixFiles, PostfixOptions, Sender, STATUS_FILTER_FILE,
    TRANSPORT_FILE,
};
use mailfleet::routing::sending::SendingSettings;
use mailfleet::routing::{compile, RouteTable};
use support::postfix::{self, run, PrivatePostfix, POSTCONF, POSTFIX, POSTMAP, SENDMAIL};

/// True when Postfix is there; fails the test with the install command when it
/// is not, unless MAILFLEET_SKIP_POSTFIX=1.
fn postfix_installed() -> bool {
    postfix::nothing_missing(
        &postfix::missing_programs(&[POSTFIX, POSTMAP, POSTCONF, SENDMAIL]),
        "the real-Postfix checks",
        "apt-get install -y postfix    \
         (non-interactively: DEBIAN_FRONTEND=noninteractive apt-get install -y postfix)",
    )
}

/// `postfix check` and a running Postfix need root (queue ownership, postdrop).
fn running_as_root() -> bool {
    postfix::running_as_root(
        "`postfix check` and the live delivery need root; run the tests as root",
    )
}

fn now() -> Timestamp {
    "2021-11-05T08:10:00Z".parse().unwrap()
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
        settings: Default::default(),
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

/// What these checks run beyond the harness's base services: TLS, the relay
/// and local transports and proxywrite, as a complete installation has them.
const EXTRA_MASTER_CF: &str = "\
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
proxywrite unix -       -       n       -       1       proxymap
relay     unix  -       -       n       -       -       smtp
        -o syslog_name=postfix/$service_name
local     unix  -       n       n       -       -       local
";

/// A private Postfix configured with one sender's rendered files.
fn rendered_postfix(files: &PostfixFiles) -> PrivatePostfix {
    let postfix = PrivatePostfix::new(
        "mailfleet-postfix-",
        &format!(
            "myhostname = sender.mailfleet.test\ninet_protocols = all\n{}",
            files.main_cf
        ),
        &format!("{EXTRA_MASTER_CF}{}", files.master_cf),
    );
    write_maps(&postfix.etc, files);
    postfix
}

/// What the live delivery submits.
const MESSAGE: &str = "Subject: mailfleet check\n\nhello\n";
const FROM: &str = "sender@mailfleet.test";

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
        let postfix = rendered_postfix(&files);
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
        // 10,000/h is above one message a second: no Postfix delay, the pacer keeps it.
        assert_eq!(String::from_utf8_lossy(&delay.stdout).trim(), "0s");
    }
}

#[test]
fn postfix_accepts_the_rendered_limits_and_lifetimes() {
    if !postfix_installed() || !running_as_root() {
        return;
    }
    let (mut pools, routes) = incident_fleet(now());
    pools[0].spec.queue.maximal_lifetime_seconds = Some(20 * 86_400);
    pools[0].spec.connections.per_provider.insert(
        "google".to_string(),
        mailfleet::api::ConnectionLimits {
            max_connections: Some(1000),
            max_messages_per_connection: Some(100_000),
            max_recipients_per_message: Some(10_000),
        },
    );
    pools[0].status.as_mut().unwrap().ips[0].ready_replicas = 3;
    let table = compile(&pools, &routes, now());
    let sender = sender("mail", "bulk", "203.0.113.10");
    let settings = SendingSettings::find(&pools, &sender);
    let files = render_sender_with(
        &table,
        &sender,
        &known_domains(),
        &PostfixOptions::default(),
        &settings,
    )
    .unwrap();
    let postfix = rendered_postfix(&files);
    postfix.check();
    let value = |name: &str| {
        let out = run(POSTCONF, &["-c", postfix.etc(), "-h", name]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(value("maximal_queue_lifetime"), "1728000s");
    assert_eq!(value("bounce_queue_lifetime"), "432000s");
    // The largest limits the CRD accepts, shared by three replicas.
    assert_eq!(
        value("mf-203-0-113-10-google_destination_concurrency_limit"),
        "333"
    );
    assert_eq!(
        value("mf-203-0-113-10-google_destination_recipient_limit"),
        "10000"
    );
    let transports = run(POSTCONF, &["-c", postfix.etc(), "-M"]);
    // postconf -M aligns the columns: compare words.
    let listed = String::from_utf8_lossy(&transports.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        listed.contains("mf-203-0-113-10-google unix - - n - 333 smtp"),
        "{listed}"
    );
    assert!(
        listed.contains("smtp_connection_reuse_count_limit=100000"),
        "{listed}"
    );
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
    postfix::become_subreaper();
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
    let mut postfix = rendered_postfix(&files);
    postfix.check();
    postfix.start();

    postfix.send(FROM, "user@hotmail.test", MESSAGE);
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

    postfix.send(FROM, "user@yahoo-japan.test", MESSAGE);
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
