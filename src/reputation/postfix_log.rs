//! Reading Postfix delivery log lines:
//!
//! ```text
//! [PREFIX] QID: to=<rcpt>, [orig_to=<...>,] relay=HOST[ADDR]:PORT, [conn_use=N,] delay=T, delays=a/b/c/d, dsn=X.Y.Z, status=sent|deferred|bounced|expired (TEXT)
//! ```
//!
//! PREFIX is optional and is either the syslog / `maillog_file` form
//! `Nov  5 08:10:01 host postfix/smtp[123]:` (day space- or zero-padded, optional
//! fraction of a second) or the ISO form `2021-11-05T08:10:01.123456+09:00 host
//! postfix-out/smtp[123]:` that rsyslog and journald exports write; the process
//! may be any `name[pid]:` (multi-instance `postfix-out/smtp`, `postfix/lmtp`...).
//!
//! [`parse_line`] borrows everything from the line and never allocates; lines that
//! are not delivery lines (qmgr, cleanup, smtpd, `connect to` notices, garbage,
//! binary data, lines cut before their status) give a typed [`Skip`] reason. The
//! status (not the reply code) decides the outcome: `sent` is delivered, `expired`
//! is bounced, and a 5xx reply turned into a deferral by
//! `smtp_delivery_status_filter` is deferred, as Postfix logs it.
//!
//! `smtp_reply_filter` notices (`HOST[ADDR]:25: replacing server reply "<old>" with
//! "<new>"`) are skipped as [`Skip::ReplyReplacement`]; [`parse_reply_replacement`]
//! reads them for callers that want the original reply.

use std::sync::LazyLock;

use memchr::memmem::Finder;

use crate::reputation::classifier::{parse_reply, Classifier, Verdict};
use crate::reputation::rules::EnhancedCode;
use crate::vocab::Outcome;

/// One delivery attempt, as borrowed slices of its log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliveryAttempt<'a> {
    /// The timestamp text as logged (no year in the syslog form).
    pub timestamp: Option<&'a str>,
    /// The host name of the syslog prefix.
    pub hostname: Option<&'a str>,
    /// `postfix/smtp`, `postfix-out/smtp`, ...
    pub process: Option<&'a str>,
    pub pid: Option<u32>,
    pub queue_id: &'a str,
    pub recipient: &'a str,
    /// The part of the recipient after its last `@`.
    pub recipient_domain: Option<&'a str>,
    pub orig_to: Option<&'a str>,
    /// The relay host (the MX host Postfix talked to); `None` for `relay=none`.
    pub relay_host: Option<&'a str>,
    pub relay_addr: Option<&'a str>,
    pub relay_port: Option<u16>,
    pub dsn: Option<EnhancedCode>,
    pub status: Outcome,
    /// The status word as logged (`sent`, `deferred`, `bounced`, `expired`).
    pub status_word: &'a str,
    /// The text in parentheses after the status: the remote reply or Postfix's remark.
    pub text: &'a str,
}

/// Why a line is not a delivery attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Skip {
    #[error("empty line")]
    Empty,
    #[error("binary data (control characters or invalid UTF-8), not a log line")]
    Binary,
    #[error("not a delivery line (no `QID: to=<...>`)")]
    NotDelivery,
    #[error("a smtp_reply_filter notice (replacing server reply), not a delivery")]
    ReplyReplacement,
    #[error("delivery line cut short before its status")]
    Truncated,
    #[error("delivery status is not sent, deferred, bounced or expired")]
    UnknownStatus,
    #[error("delivery line with an unreadable prefix or queue id")]
    Malformed,
}

impl Skip {
    /// The reason as one snake_case word, for JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Empty => "empty",
            Skip::Binary => "binary",
            Skip::NotDelivery => "not_delivery",
            Skip::ReplyReplacement => "reply_replacement",
            Skip::Truncated => "truncated",
            Skip::UnknownStatus => "unknown_status",
            Skip::Malformed => "malformed",
        }
    }
}

/// A `smtp_reply_filter` notice: the server's reply and what Postfix used instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyReplacement<'a> {
    pub timestamp: Option<&'a str>,
    pub process: Option<&'a str>,
    pub server_host: Option<&'a str>,
    pub server_addr: Option<&'a str>,
    pub original: &'a str,
    pub replacement: &'a str,
}

const TO_MARKER: &str = ": to=<";
const STATUS_MARKER: &str = ", status=";
const REPLACING_MARKER: &str = ": replacing server reply \"";

// Built once: constructing a substring searcher per line costs more than the search.
static TO_FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(TO_MARKER));
static STATUS_FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(STATUS_MARKER));
static REPLACING_FINDER: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(REPLACING_MARKER));

/// Parses one delivery log line (a trailing newline is allowed).
pub fn parse_line(line: &str) -> Result<DeliveryAttempt<'_>, Skip> {
    let line = line.trim_end_matches(['\n', '\r']);
    if line.trim().is_empty() {
        return Err(Skip::Empty);
    }
    if has_control_bytes(line.as_bytes()) {
        return Err(Skip::Binary);
    }
    let Some(to_at) = TO_FINDER.find(line.as_bytes()) else {
        return Err(if REPLACING_FINDER.find(line.as_bytes()).is_some() {
            Skip::ReplyReplacement
        } else {
            Skip::NotDelivery
        });
    };

    let before = &line[..to_at];
    let queue_start = before.rfind(' ').map_or(0, |i| i + 1);
    let queue_id = &before[queue_start..];
    if !is_queue_id(queue_id) {
        return Err(Skip::NotDelivery);
    }
    let prefix = parse_prefix(&before[..queue_start])?;

    let rest = &line[to_at + TO_MARKER.len()..];
    let recipient_end = rest.find('>').ok_or(Skip::Truncated)?;
    let recipient = &rest[..recipient_end];
    let after_recipient = &rest[recipient_end..];
    let status_at = STATUS_FINDER
        .find(after_recipient.as_bytes())
        .ok_or(Skip::Truncated)?;
    let fields = after_recipient[..status_at].strip_prefix('>').unwrap_or("");

    let mut attempt = DeliveryAttempt {
        timestamp: prefix.timestamp,
        hostname: prefix.hostname,
        process: prefix.process,
        pid: prefix.pid,
        queue_id,
        recipient,
        recipient_domain: recipient
            .rsplit_once('@')
            .map(|(_, d)| d)
            .filter(|d| !d.is_empty()),
        orig_to: None,
        relay_host: None,
        relay_addr: None,
        relay_port: None,
        dsn: None,
        status: Outcome::Deferred,
        status_word: "",
        text: "",
    };
    // Field values hold no commas (addresses are in <>, relay is HOST[ADDR]:PORT).
    let mut rest_fields = fields;
    while !rest_fields.is_empty() {
        let end = memchr::memchr(b',', rest_fields.as_bytes()).unwrap_or(rest_fields.len());
        let field = rest_fields[..end].trim_start_matches(' ');
        rest_fields = rest_fields.get(end + 1..).unwrap_or("");
        if let Some(value) = field.strip_prefix("relay=") {
            (attempt.relay_host, attempt.relay_addr, attempt.relay_port) = split_relay(value);
        } else if let Some(value) = field.strip_prefix("dsn=") {
            attempt.dsn = EnhancedCode::parse(value);
        } else if let Some(value) = field.strip_prefix("orig_to=") {
            attempt.orig_to = Some(value.trim_start_matches('<').trim_end_matches('>'));
        }
    }

    let status_part = &after_recipient[status_at + STATUS_MARKER.len()..];
    let word_len = status_part.find([' ', ',']).unwrap_or(status_part.len());
    attempt.status_word = &status_part[..word_len];
    attempt.status = match attempt.status_word {
        "sent" => Outcome::Delivered,
        "deferred" => Outcome::Deferred,
        "bounced" | "expired" => Outcome::Bounced,
        "" => return Err(Skip::Truncated),
        _ => return Err(Skip::UnknownStatus),
    };
    let after_word = &status_part[word_len..];
    attempt.text = if let Some(text) = after_word.strip_prefix(" (") {
        // A line cut inside the text keeps what it has.
        text.strip_suffix(')').unwrap_or(text)
    } else {
        after_word.trim_start_matches([',', ' ']).trim_end()
    };
    Ok(attempt)
}

/// [`parse_line`] for raw bytes: invalid UTF-8 is [`Skip::Binary`].
pub fn parse_line_bytes(line: &[u8]) -> Result<DeliveryAttempt<'_>, Skip> {
    match std::str::from_utf8(line) {
        Ok(text) => parse_line(text),
        Err(_) => Err(Skip::Binary),
    }
}

/// Reads a `smtp_reply_filter` notice, or `None` for any other line.
pub fn parse_reply_replacement(line: &str) -> Option<ReplyReplacement<'_>> {
    let line = line.trim_end_matches(['\n', '\r']);
    let marker_at = REPLACING_FINDER.find(line.as_bytes())?;
    let before = &line[..marker_at];
    let endpoint_start = before.rfind(' ').map_or(0, |i| i + 1);
    let endpoint = &before[endpoint_start..];
    let prefix = parse_prefix(&before[..endpoint_start]).ok()?;
    let (server_host, server_addr, _) = split_relay(endpoint);
    let quoted = &line[marker_at + REPLACING_MARKER.len()..];
    let (original, replacement) = quoted.split_once("\" with \"")?;
    let replacement = replacement.strip_suffix('"')?;
    Some(ReplyReplacement {
        timestamp: prefix.timestamp,
        process: prefix.process,
        server_host,
        server_addr,
        original,
        replacement,
    })
}

/// Classifies a parsed attempt: provider from the relay host, else the recipient
/// domain; the logged status is the outcome; the logged `dsn` stands in for an
/// enhanced code the reply lacks.
pub fn classify_attempt(classifier: &Classifier, attempt: &DeliveryAttempt<'_>) -> Verdict {
    let mut reply = parse_reply(attempt.text);
    if reply.status.is_none() {
        reply.status = attempt.dsn;
    }
    let mx_host = attempt.relay_host.or(reply.remote_host);
    let (provider, source) = classifier.find_provider(attempt.recipient_domain, mx_host, &reply);
    classifier.classify_found(&reply, provider, source, Some(attempt.status))
}

/// [`parse_line`] then [`classify_attempt`].
pub fn classify_log_line<'a>(
    classifier: &Classifier,
    line: &'a str,
) -> Result<(DeliveryAttempt<'a>, Verdict), Skip> {
    let attempt = parse_line(line)?;
    let verdict = classify_attempt(classifier, &attempt);
    Ok((attempt, verdict))
}

/// Control characters other than tab mean this is not a text log line. Written
/// without an early exit so the compiler can vectorise it.
fn has_control_bytes(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |found, &b| {
        found | ((b < 0x20 && b != b'\t') || b == 0x7f)
    })
}

fn is_queue_id(text: &str) -> bool {
    (5..=32).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `HOST[ADDR]:PORT`, `HOST[ADDR]`, or a bare word (`none` means no relay).
fn split_relay(value: &str) -> (Option<&str>, Option<&str>, Option<u16>) {
    if value.is_empty() || value == "none" {
        return (None, None, None);
    }
    let Some((host, rest)) = value.split_once('[') else {
        return (Some(value), None, None);
    };
    let (addr, port) = match rest.split_once(']') {
        Some((addr, tail)) => (addr, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
        None => (rest, None),
    };
    (
        (!host.is_empty()).then_some(host),
        (!addr.is_empty()).then_some(addr),
        port,
    )
}

#[derive(Default)]
struct LinePrefix<'a> {
    timestamp: Option<&'a str>,
    hostname: Option<&'a str>,
    process: Option<&'a str>,
    pid: Option<u32>,
}

/// `[TIMESTAMP [HOST]] PROCESS[PID]:` or nothing at all.
fn parse_prefix(prefix: &str) -> Result<LinePrefix<'_>, Skip> {
    let prefix = prefix.trim();
    if prefix.is_empty() {
        return Ok(LinePrefix::default());
    }
    let (head, tag) = match prefix.rfind(' ') {
        Some(i) => (prefix[..i].trim_end(), &prefix[i + 1..]),
        None => ("", prefix),
    };
    let tag = tag.strip_suffix(':').ok_or(Skip::Malformed)?;
    let (process, pid) = match tag.split_once('[') {
        Some((name, pid)) => {
            let pid = pid
                .strip_suffix(']')
                .and_then(|p| p.parse::<u32>().ok())
                .ok_or(Skip::Malformed)?;
            (name, Some(pid))
        }
        None => (tag, None),
    };
    let process_ok = !process.is_empty()
        && process
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'));
    if !process_ok {
        return Err(Skip::Malformed);
    }
    let mut parsed = LinePrefix {
        process: Some(process),
        pid,
        ..LinePrefix::default()
    };
    if head.is_empty() {
        return Ok(parsed);
    }
    let stamp_len = bsd_timestamp_len(head)
        .or_else(|| iso_timestamp_len(head))
        .ok_or(Skip::Malformed)?;
    parsed.timestamp = Some(&head[..stamp_len]);
    let host = head[stamp_len..].trim();
    if host.contains(' ') {
        return Err(Skip::Malformed);
    }
    parsed.hostname = (!host.is_empty()).then_some(host);
    Ok(parsed)
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Length of a leading `Mmm dd HH:MM:SS[.ffffff]` (day space- or zero-padded).
fn bsd_timestamp_len(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    if !MONTHS.iter().any(|m| text.starts_with(m)) || b.get(3) != Some(&b' ') {
        return None;
    }
    let mut at = 4;
    while b.get(at) == Some(&b' ') {
        at += 1;
    }
    let day_len = digits_at(b, at, 2);
    if day_len == 0 || b.get(at + day_len) != Some(&b' ') {
        return None;
    }
    at = clock_end(b, at + day_len + 1)?;
    timestamp_end(b, at)
}

/// Length of a leading `YYYY-MM-DD[T ]HH:MM:SS[.f][Z|+HH:MM|+HHMM]`.
fn iso_timestamp_len(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let date_ok = digits_at(b, 0, 4) == 4
        && b.get(4) == Some(&b'-')
        && digits_at(b, 5, 2) == 2
        && b.get(7) == Some(&b'-')
        && digits_at(b, 8, 2) == 2
        && matches!(b.get(10), Some(b'T' | b' '));
    if !date_ok {
        return None;
    }
    let mut at = clock_end(b, 11)?;
    match b.get(at) {
        Some(b'Z') => at += 1,
        Some(b'+' | b'-') => {
            let hours = digits_at(b, at + 1, 2);
            if hours != 2 {
                return None;
            }
            at += 3;
            if b.get(at) == Some(&b':') {
                at += 1;
            }
            let minutes = digits_at(b, at, 2);
            if minutes != 0 && minutes != 2 {
                return None;
            }
            at += minutes;
        }
        _ => {}
    }
    timestamp_end(b, at)
}

/// After `HH:MM:SS` and an optional fraction, the index past them.
fn clock_end(b: &[u8], at: usize) -> Option<usize> {
    let ok = digits_at(b, at, 2) == 2
        && b.get(at + 2) == Some(&b':')
        && digits_at(b, at + 3, 2) == 2
        && b.get(at + 5) == Some(&b':')
        && digits_at(b, at + 6, 2) == 2;
    if !ok {
        return None;
    }
    let mut end = at + 8;
    if b.get(end) == Some(&b'.') {
        let fraction = digits_at(b, end + 1, 9);
        if fraction == 0 {
            return None;
        }
        end += 1 + fraction;
    }
    Some(end)
}

/// A timestamp ends the text or is followed by a space.
fn timestamp_end(b: &[u8], at: usize) -> Option<usize> {
    matches!(b.get(at), None | Some(b' ')).then_some(at)
}

/// How many ASCII digits (at most `max`) start at `at`.
fn digits_at(b: &[u8], at: usize, max: usize) -> usize {
    b.get(at..).map_or(0, |tail| {
        tail.iter()
            .take(max)
            .take_while(|c| c.is_ascii_digit())
            .count()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFERRED: &str = "Nov  5 08:10:01 mx1 postfix/smtp[12345]: 4HmB2x0Z7Qz9vD: to=<taro@hotmail.co.jp>, relay=hotmail-com.olc.protection.outlook.com[104.47.22.161]:25, delay=0.52, delays=0.01/0/0.31/0.2, dsn=4.7.606, status=deferred (host hotmail-com.olc.protection.outlook.com[104.47.22.161] said: 550 5.7.606 Access denied, banned sending IP [203.0.113.10]. (in reply to MAIL FROM command))";

    #[test]
    fn reads_every_field_of_a_syslog_delivery_line() {
        let a = parse_line(DEFERRED).unwrap();
        assert_eq!(a.timestamp, Some("Nov  5 08:10:01"));
        assert_eq!(a.hostname, Some("mx1"));
        assert_eq!((a.process, a.pid), (Some("postfix/smtp"), Some(12345)));
        assert_eq!(a.queue_id, "4HmB2x0Z7Qz9vD");
        assert_eq!(
            (a.recipient, a.recipient_domain),
            ("taro@hotmail.co.jp", Some("hotmail.co.jp"))
        );
        assert_eq!(a.relay_host, Some("hotmail-com.olc.protection.outlook.com"));
        assert_eq!(
            (a.relay_addr, a.relay_port),
            (Some("104.47.22.161"), Some(25))
        );
        assert_eq!(a.dsn, Some(EnhancedCode::new(4, 7, 606)));
        assert_eq!((a.status, a.status_word), (Outcome::Deferred, "deferred"));
        assert!(
            a.text.starts_with("host hotmail-com")
                && a.text.ends_with("(in reply to MAIL FROM command)")
        );
    }

    #[test]
    fn timestamps_in_every_supported_shape() {
        let tail = "postfix/smtp[1]: ABCDEF12345: to=<a@b.example>, relay=none, delay=1, dsn=4.4.1, status=deferred (x)";
        for (prefix, stamp) in [
            ("Nov 05 08:10:01 h ", "Nov 05 08:10:01"),
            ("Nov  5 08:10:01.123456 h ", "Nov  5 08:10:01.123456"),
            (
                "2021-11-05T08:10:01.123456+09:00 h ",
                "2021-11-05T08:10:01.123456+09:00",
            ),
            ("2021-11-05T08:10:01Z h ", "2021-11-05T08:10:01Z"),
            ("2021-11-05 08:10:01+0900 h ", "2021-11-05 08:10:01+0900"),
            ("2021-11-05T08:10:01 ", "2021-11-05T08:10:01"),
        ] {
            let line = format!("{prefix}{tail}");
            assert_eq!(parse_line(&line).unwrap().timestamp, Some(stamp), "{line}");
        }
        let bare =
            parse_line("ABCDEF12345: to=<a@b.example>, relay=none, status=bounced (x)").unwrap();
        assert_eq!(
            (bare.timestamp, bare.process, bare.relay_host),
            (None, None, None)
        );
        for bad in [
            "Nov 5 08:10 h ",
            "Someday h ",
            "2021-11-05X08:10:01 h ",
            "Nov  5 08:10:01 h extra ",
        ] {
            assert_eq!(
                parse_line(&format!("{bad}{tail}")),
                Err(Skip::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn skips_what_is_not_a_delivery() {
        let skip = |l: &str| parse_line(l).unwrap_err();
        assert_eq!(skip(""), Skip::Empty);
        assert_eq!(skip("   \n"), Skip::Empty);
        assert_eq!(skip("Nov  5 08:10:01 mx1 postfix/qmgr[9]: 4HmB2x0Z7Qz9vD: from=<a@b>, size=1, nrcpt=1 (queue active)"), Skip::NotDelivery);
        assert_eq!(
            skip("Nov  5 08:10:01 mx1 postfix/cleanup[9]: 4HmB2x0Z7Qz9vD: message-id=<x@y>"),
            Skip::NotDelivery
        );
        assert_eq!(skip("Nov  5 08:10:01 mx1 postfix/smtp[9]: connect to mx.example[192.0.2.1]:25: Connection refused"), Skip::NotDelivery);
        assert_eq!(skip("Nov  5 08:10:01 mx1 postfix/smtpd[9]: NOQUEUE: reject: RCPT from x[192.0.2.1]: 554 5.7.1 no; from=<a@b> to=<c@d> proto=ESMTP"), Skip::NotDelivery);
        assert_eq!(skip("Nov  5 08:10:01 mx1 postfix/smtp[9]: 4HmB2x0Z7Qz9vD: to=<a@b.example>, relay=x[192.0.2.1]:25, delay=1, del"), Skip::Truncated);
        assert_eq!(
            skip("Nov  5 08:10:01 mx1 postfix/smtp[9]: 4HmB2x0Z7Qz9vD: to=<a@b.ex"),
            Skip::Truncated
        );
        assert_eq!(skip("Nov  5 08:10:01 mx1 postfix/smtp[9]: 4HmB2x0Z7Qz9vD: to=<a@b.example>, status=undeliverable (x)"), Skip::UnknownStatus);
        assert_eq!(skip("bin\0ary: to=<a@b>, status=sent (x)"), Skip::Binary);
        assert_eq!(parse_line_bytes(b"\xff\xfe: to=<a@b>"), Err(Skip::Binary));
        assert_eq!(skip("x: to=<a@b>, status=sent"), Skip::NotDelivery);
        assert_eq!(
            skip("Nov  5 08:10:01 mx1 postfix/smtp[x]: ABCDEF12345: to=<a@b>, status=sent (x)"),
            Skip::Malformed
        );
    }

    #[test]
    fn expired_counts_as_bounced_and_text_may_be_cut() {
        let a = parse_line("ABCDEF12345: to=<a@b.example>, relay=none, delay=432000, dsn=4.4.1, status=expired, returned to sender").unwrap();
        assert_eq!(
            (a.status, a.status_word, a.text),
            (Outcome::Bounced, "expired", "returned to sender")
        );
        let a = parse_line("ABCDEF12345: to=<a@b.example>, relay=x[192.0.2.1]:25, dsn=5.1.1, status=bounced (host x[192.0.2.1] said: 550 5.1.1 unkn").unwrap();
        assert_eq!(a.text, "host x[192.0.2.1] said: 550 5.1.1 unkn");
    }

    #[test]
    fn reads_reply_filter_notices() {
        let line = "Sep 27 21:25:31 h postfix/smtp[5]: hotmail-com.olc.protection.outlook.com[104.47.22.161]:25: replacing server reply \"550 5.7.1 blocked (S3140)\" with \"450 5.7.1 blocked (S3140)\"";
        assert_eq!(parse_line(line), Err(Skip::ReplyReplacement));
        let r = parse_reply_replacement(line).unwrap();
        assert_eq!(
            r.server_host,
            Some("hotmail-com.olc.protection.outlook.com")
        );
        assert_eq!(r.server_addr, Some("104.47.22.161"));
        assert_eq!(
            (r.original, r.replacement),
            ("550 5.7.1 blocked (S3140)", "450 5.7.1 blocked (S3140)")
        );
        assert_eq!(parse_reply_replacement(DEFERRED), None);
    }

    #[test]
    fn skip_reasons_have_stable_words() {
        assert_eq!(
            serde_json::to_string(&Skip::NotDelivery).unwrap(),
            "\"not_delivery\""
        );
        assert_eq!(Skip::ReplyReplacement.as_str(), "reply_replacement");
    }
}
