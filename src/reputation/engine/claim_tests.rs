//! Second-hand evidence: replies quoting a DNS block list, and replies naming
//! another IP, as an attacker running a receiving server can send them.

use super::*;
use crate::reputation::classifier::Classifier;
use crate::reputation::tally::Tally;

/// A bounce as Postfix logs it from a receiving server at `host`.
fn forged(host: &str, ip: &str) -> String {
    format!("host {host}[192.0.2.66] said: 554 5.7.1 Service unavailable; Client host [{ip}] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/{ip} (in reply to RCPT TO command)")
}

/// What the agent of IP reports for these replies to unknown company domains.
fn reported(replies: &[String], when: jiff::Timestamp) -> Signal {
    let classifier = Classifier::builtin();
    let mut tally = Tally::for_sender(IP.parse().unwrap());
    for reply in replies {
        let verdict = classifier.classify_text(reply, Some("example.com"), None);
        tally.add(&verdict, reply, when);
    }
    Signal::Feedback(tally.drain().remove(0))
}

#[test]
fn a_forged_dnsbl_bounce_from_an_unknown_receiver_blocks_nothing() {
    let mut fleet = Fleet::new(spec());
    let reply = forged("mx.attacker.example", IP);
    let moves = fleet.observe(IP, reported(&[reply.clone(), reply], t0()), t0());
    assert!(moves.iter().all(|m| m.to != Blocked), "{moves:?}");
    let pair = fleet.pair("other");
    assert_eq!(pair.state, Healthy);
    assert_eq!(pair.dnsbl_claims.len(), 1, "one receiver, one claim");
    assert_eq!(pair.dnsbl_claims[0].receiver, "attacker.example");
    assert_eq!(
        pair.dnsbl_claims[0].zone.as_deref(),
        Some("zen.spamhaus.org")
    );
    // The same attacker under many host names of one domain is still one receiver.
    let replies: Vec<String> = (0..8)
        .map(|i| forged(&format!("mx{i}.attacker.example"), IP))
        .collect();
    fleet.observe(IP, reported(&replies, at(60)), at(60));
    assert_eq!(fleet.pair("other").state, Healthy);
}

#[test]
fn several_receiving_domains_quoting_the_list_block() {
    let mut fleet = Fleet::new(spec());
    let replies = [forged("mx.one.example", IP), forged("mx.two.example", IP)];
    fleet.observe(IP, reported(&replies, t0()), t0());
    assert_eq!(fleet.pair("other").state, Healthy);
    let moves = fleet.observe(
        IP,
        reported(&[forged("mx.three.example", IP)], at(30)),
        at(30),
    );
    assert_eq!(
        reasons(&moves),
        [(Some(Healthy), Blocked, Reason::DnsblClaimConfirmed)]
    );
    let evidence = fleet.pair("other").last_evidence.clone().unwrap();
    assert!(evidence.contains("3 receiving domains"), "{evidence}");
}

#[test]
fn claims_older_than_the_window_do_not_add_up() {
    let mut fleet = Fleet::new(spec());
    let window = fleet.spec.reputation.feedback.window_seconds;
    fleet.observe(IP, reported(&[forged("mx.one.example", IP)], t0()), t0());
    fleet.observe(IP, reported(&[forged("mx.two.example", IP)], t0()), t0());
    let later = at(window + 60);
    fleet.observe(
        IP,
        reported(&[forged("mx.three.example", IP)], later),
        later,
    );
    assert_eq!(fleet.pair("other").state, Healthy);
    assert_eq!(fleet.pair("other").dnsbl_claims.len(), 1);
}

#[test]
fn the_named_zone_listing_the_ip_confirms_a_claim() {
    let mut s = spec();
    s.reputation.dnsbl.zones = vec![zone("zen.spamhaus.org", &["microsoft"])];
    let mut fleet = Fleet::new(s);
    fleet.observe(IP, reported(&[forged("mx.one.example", IP)], t0()), t0());
    assert_eq!(fleet.pair("other").state, Healthy);
    // The pool's own resolver says the zone lists the IP: the claim is confirmed,
    // for the receivers' provider too, not only the zone's declared providers.
    let moves = fleet.observe(IP, dnsbl("zen.spamhaus.org", true, None, at(10)), at(10));
    assert!(
        moves
            .iter()
            .any(|m| m.provider == "other" && m.to == Blocked),
        "{moves:?}"
    );
    // And once a listing is known, a fresh claim naming the zone blocks at once.
    let mut fleet = Fleet::new(fleet.spec.clone());
    fleet.observe(IP, dnsbl("zen.spamhaus.org", true, None, t0()), t0());
    let moves = fleet.observe(IP, reported(&[forged("mx.one.example", IP)], at(5)), at(5));
    assert_eq!(
        reasons(&moves),
        [(None, Blocked, Reason::DnsblClaimConfirmed)]
    );
}

/// A bounce from a receiving server quoting a list the pool does not probe.
fn quoting(host: &str, zone: &str) -> String {
    format!("host {host}[192.0.2.66] said: 554 5.7.1 Service unavailable; Client host [{IP}] blocked using {zone} (in reply to RCPT TO command)")
}

#[test]
fn the_answer_of_a_claimed_zone_the_pool_does_not_probe_confirms_the_claim() {
    // The pool probes no zone at all: the driver asked the claimed one at once.
    let mut fleet = Fleet::new(spec());
    let zone = "bl.claimed.example";
    fleet.observe(IP, reported(&[quoting("mx.one.example", zone)], t0()), t0());
    assert_eq!(fleet.pair("other").state, Healthy);
    // Not listed, or the question failed: the claim waits for more receivers.
    assert!(fleet
        .observe(IP, dnsbl(zone, false, None, at(1)), at(1))
        .is_empty());
    assert!(fleet
        .observe(IP, dnsbl(zone, false, Some("timeout"), at(2)), at(2))
        .is_empty());
    let moves = fleet.observe(IP, dnsbl(zone, true, None, at(3)), at(3));
    assert_eq!(
        reasons(&moves),
        [(Some(Healthy), Blocked, Reason::DnsblClaimConfirmed)],
        "only the pair whose receiver quoted the zone"
    );
    let evidence = fleet.pair("other").last_evidence.clone().unwrap();
    assert!(
        evidence.contains(&format!("bl.claimed.example lists {IP}"))
            && evidence.contains("asked at once")
            && evidence.contains("one.example"),
        "{evidence}"
    );
    // Kept out of status.ips[].dnsbl, which lists the zones the pool probes.
    let ip = fleet.status.ips.iter().find(|s| s.address == IP).unwrap();
    assert!(ip.dnsbl.is_empty(), "{:?}", ip.dnsbl);
    // A zone no claim names is still refused: nobody may add lists by answering.
    let err = observe(
        &fleet.spec,
        &mut fleet.status,
        IP,
        dnsbl("other.example", true, None, at(4)),
        &known(),
        at(4),
    )
    .unwrap_err();
    assert!(err.to_string().contains("other.example"), "{err}");
}

#[test]
fn a_reply_naming_another_ip_is_counted_as_other() {
    let mut fleet = Fleet::new(spec());
    let classifier = Classifier::builtin();
    let mut tally = Tally::for_sender(IP.parse().unwrap());
    let reply = "550 5.7.606 Access denied, banned sending IP [203.0.113.12].";
    for _ in 0..60 {
        tally.add(
            &classifier.classify_text(reply, Some("hotmail.com"), None),
            reply,
            t0(),
        );
    }
    let feedback = tally.drain().remove(0);
    assert_eq!((feedback.attempts, feedback.ip_blocklisted), (60, 0));
    assert!(feedback.conclusive.is_empty());
    fleet.observe(IP, Signal::Feedback(feedback), t0());
    assert_eq!(fleet.pair("microsoft").state, Healthy);
}

#[test]
fn the_sender_named_second_is_still_found() {
    let mut fleet = Fleet::new(spec());
    let reply = format!("550 5.7.1 Relay [198.51.100.9] says: messages from [{IP}] weren't sent, on our block list (S3140)");
    let signal = Signal::Feedback(Feedback {
        provider: "microsoft".into(),
        attempts: 1,
        ip_blocklisted: 1,
        conclusive: vec![ConclusiveReply {
            reply,
            named_ip: Some("198.51.100.9".parse().unwrap()),
            at: t0(),
            pause_seconds: None,
        }],
        ..Feedback::default()
    });
    fleet.observe(IP, signal, t0());
    assert_eq!(fleet.pair("microsoft").state, Blocked);
}

#[test]
fn a_provider_s_own_list_reply_still_blocks_at_once() {
    let mut fleet = Fleet::new(spec());
    let reply = format!("host mx.mail.protection.outlook.com[52.101.1.1] said: 550 5.7.1 Service unavailable, Client host [{IP}] blocked using Spamhaus. (in reply to RCPT TO command)");
    // Microsoft quoting Spamhaus is a claim like any other...
    fleet.observe(IP, reported(&[reply], t0()), t0());
    // ...but Microsoft's own ban is not.
    fleet.observe(IP, ban("microsoft", Some(IP), at(1)), at(1));
    assert_eq!(fleet.pair("microsoft").state, Blocked);
}
