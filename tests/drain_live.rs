//! Drain on stop against real Postfix: a sender (127.0.11.31) takes 1,000
//! messages over SMTP and holds them (`defer_transports`, as a route in
//! Defer or the pacer does) when it is stopped; `mailfleet sender drain` (what `sender run --drain-to` does on
//! SIGTERM) hands what is still queued to a sibling sender (127.0.11.32),
//! which delivers it. Every message must reach the receiver: 0 lost, and
//! nothing left in either queue. Needs root and Postfix (skipped without);
//! run it under `flock /tmp/mailfleet-live.lock`.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::postfix::{self, PrivatePostfix, BIN_DIR, POSTFIX, POSTQUEUE};

const BIN: &str = env!("CARGO_BIN_EXE_mailfleet");
const STOPPED: &str = "127.0.11.31";
const SIBLING: &str = "127.0.11.32";
const MESSAGES: usize = 1000;

/// Recipient -> the source addresses it was delivered from (once each, unless duplicated).
type Record = Arc<Mutex<BTreeMap<String, Vec<IpAddr>>>>;

/// An SMTP server that accepts everything after `latency` per message and
/// records every recipient with the address it came from.
fn receiver(latency: Duration) -> (u16, Record) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let record: Record = Arc::default();
    let shared = Arc::clone(&record);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let _ = serve(stream, latency, &shared);
            });
        }
    });
    (port, record)
}

fn serve(stream: TcpStream, latency: Duration, record: &Record) -> std::io::Result<()> {
    let peer = stream.peer_addr()?.ip();
    let mut out = stream.try_clone()?;
    let mut lines = BufReader::new(stream);
    out.write_all(b"220 receiver.mailfleet.test ESMTP\r\n")?;
    let mut line = String::new();
    let mut rcpts: Vec<String> = Vec::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("RCPT TO:") {
            let address = line[8..].trim().trim_matches(['<', '>']).to_string();
            rcpts.push(address.split_whitespace().next().unwrap_or("").to_string());
            out.write_all(b"250 ok\r\n")?;
        } else if upper.starts_with("DATA") {
            out.write_all(b"354 go ahead\r\n")?;
            loop {
                line.clear();
                if lines.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
            }
            std::thread::sleep(latency);
            {
                let mut seen = record.lock().unwrap();
                for r in rcpts.drain(..) {
                    seen.entry(r).or_default().push(peer);
                }
            }
            out.write_all(b"250 2.0.0 stored\r\n")?;
        } else if upper.starts_with("QUIT") {
            out.write_all(b"221 bye\r\n")?;
            return Ok(());
        } else if upper.starts_with("RSET") {
            rcpts.clear();
            out.write_all(b"250 ok\r\n")?;
        } else {
            out.write_all(b"250 ok\r\n")?;
        }
    }
}

fn free_port(address: &str) -> u16 {
    TcpListener::bind((address, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A sender with an SMTP intake on `address:port`, delivering everything to
/// the receiver from `address`, one connection at a time.
fn sender(name: &str, address: &str, port: u16, receiver_port: u16, extra: &str) -> PrivatePostfix {
    PrivatePostfix::new(
        &format!("mailfleet-drain-{name}-"),
        &format!(
            "myhostname = {name}.sender.mailfleet.test\n\
             inet_protocols = ipv4\n\
             mynetworks = 127.0.0.0/8\n\
             smtpd_relay_restrictions = permit_mynetworks, reject\n\
             smtp_bind_address = {address}\n\
             default_transport = smtp:[127.0.0.1]:{receiver_port}\n\
             default_destination_concurrency_limit = 2\n\
             {extra}"
        ),
        &format!("{address}:{port} inet n - n - - smtpd\n"),
    )
}

fn expect(lines: &mut impl BufRead, code: &str) {
    let mut line = String::new();
    loop {
        line.clear();
        lines.read_line(&mut line).unwrap();
        assert!(line.starts_with(code), "expected {code}, got {line:?}");
        if line.as_bytes().get(3) != Some(&b'-') {
            return;
        }
    }
}

/// Submits `count` messages, one recipient each, over one SMTP session.
fn submit(address: &str, port: u16, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match TcpStream::connect((address, port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("the sender's intake {address}:{port} does not answer: {e}"),
        }
    };
    let mut out = stream.try_clone().unwrap();
    let mut lines = BufReader::new(stream);
    expect(&mut lines, "220");
    out.write_all(b"EHLO loadgen.mailfleet.test\r\n").unwrap();
    expect(&mut lines, "250");
    for i in 0..count {
        write!(
            out,
            "MAIL FROM:<news@example.net>\r\nRCPT TO:<r{i:04}@example.org>\r\nDATA\r\n"
        )
        .unwrap();
        expect(&mut lines, "250");
        expect(&mut lines, "250");
        expect(&mut lines, "354");
        write!(out, "Subject: drain {i}\r\n\r\nmessage {i}\r\n.\r\n").unwrap();
        expect(&mut lines, "250");
    }
    out.write_all(b"QUIT\r\n").unwrap();
}

fn queued(p: &PrivatePostfix) -> usize {
    let out = Command::new(POSTQUEUE)
        .args(["-c", p.etc(), "-j"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn a_stopped_sender_hands_its_queue_to_a_sibling_and_loses_nothing() {
    if !postfix::nothing_missing(
        &postfix::missing_programs(&[POSTFIX, POSTQUEUE]),
        "the drain test",
        "scripts/ensure-tools.sh",
    ) || !postfix::running_as_root("the drain test starts Postfix")
    {
        return;
    }
    postfix::become_subreaper();
    let (receiver_port, record) = receiver(Duration::from_millis(20));
    let (stopped_port, sibling_port) = (free_port(STOPPED), free_port(SIBLING));
    // The stopped sender holds its mail (as a route in Defer or the pacer's
    // hold does): all 1,000 are queued when it stops.
    let mut stopped = sender(
        "stopped",
        STOPPED,
        stopped_port,
        receiver_port,
        "defer_transports = smtp\n",
    );
    let mut sibling = sender("sibling", SIBLING, sibling_port, receiver_port, "");
    for p in [&stopped, &sibling] {
        // The base instance has no inet services; these take mail over SMTP.
        let out = Command::new(postfix::POSTCONF)
            .args(["-c", p.etc(), "-e", "master_service_disable="])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        p.check();
    }
    PrivatePostfix::control(&mut [&mut stopped, &mut sibling], "start");

    submit(STOPPED, stopped_port, MESSAGES);
    let settle = Instant::now() + Duration::from_secs(30);
    while queued(&stopped) < MESSAGES && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(200));
    }
    let queued_at_stop = queued(&stopped);
    assert_eq!(queued_at_stop, MESSAGES, "{}", stopped.maillog());
    let drain = Command::new(BIN)
        .args([
            "sender",
            "drain",
            "--to",
            &format!("{SIBLING}:{sibling_port}"),
        ])
        .args(["--timeout", "90", "--postfix-bin-dir", BIN_DIR])
        .arg("--postfix-config-dir")
        .arg(&stopped.etc)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&drain.stdout).to_string();
    assert!(
        drain.status.success(),
        "the drain left mail: {said}\n{}\n{}",
        String::from_utf8_lossy(&drain.stderr),
        stopped.maillog()
    );
    assert!(said.contains(" 0 left"), "{said}");
    // The stopped sender takes no new mail.
    assert!(TcpStream::connect((STOPPED, stopped_port)).is_err());

    // Everything the sibling took leaves it (its own pace, no timing asserted
    // beyond a generous bound).
    let deadline = Instant::now() + Duration::from_secs(180);
    while record.lock().unwrap().len() < MESSAGES || queued(&sibling) > 0 {
        assert!(
            Instant::now() < deadline,
            "after 3 minutes the receiver has {} of {MESSAGES}; the sibling still queues {}\n{}",
            record.lock().unwrap().len(),
            queued(&sibling),
            sibling.maillog()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let seen = record.lock().unwrap().clone();
    let lost: Vec<String> = (0..MESSAGES)
        .map(|i| format!("r{i:04}@example.org"))
        .filter(|r| !seen.contains_key(r))
        .collect();
    let duplicated = seen.values().filter(|from| from.len() > 1).count();
    let from_sibling = seen
        .values()
        .filter(|from| from.iter().any(|ip| ip.to_string() == SIBLING))
        .count();
    eprintln!(
        "drain: {MESSAGES} submitted, {queued_at_stop} queued at the stop; {} delivered by the stopped sender, {from_sibling} by the sibling, {} lost, {duplicated} delivered twice; {said}",
        seen.len() - from_sibling,
        lost.len()
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert_eq!(queued(&stopped), 0);
    assert_eq!(duplicated, 0);
    assert_eq!(
        from_sibling, MESSAGES,
        "every message left through the sibling"
    );
    PrivatePostfix::control(&mut [&mut stopped, &mut sibling], "stop");
    postfix::reap_postfix_daemons();
}
