//! Reading one abuse feedback report (ARF, RFC 5965): a `multipart/report;
//! report-type=feedback-report` message with a human-readable part, a
//! `message/feedback-report` part of fields, and the original message (or its
//! headers). Yahoo's complaint feedback loop and Microsoft's JMRP send this shape.
//!
//! Pure: bytes in, a [`Complaint`] or an [`ArfError`] out. The input is bounded
//! first ([`MAX_REPORT_BYTES`]); a report that does not parse is an error with a
//! kind for metrics, never a guess.

use std::net::IpAddr;

use crate::reputation::classifier::Classifier;
use crate::reputation::providers::ProviderId;

/// The largest report read. Feedback loops send the original message with the
/// report; a bigger report is refused before any parsing.
pub const MAX_REPORT_BYTES: usize = 512 * 1024;

/// The most MIME parts looked at in one report (RFC 5965 needs three).
const MAX_PARTS: usize = 16;

/// What one report says about one message of ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Complaint {
    /// `Feedback-Type`, lowercased: `abuse`, `fraud`, `virus`, `not-spam`,
    /// `auth-failure`, `other` (RFC 5965 section 7.3).
    pub feedback_type: String,
    /// The IP the original message arrived from: the report's `Source-IP`, or
    /// else the address in the original's top `Received:` header (the one the
    /// receiving provider added).
    pub source_ip: Option<IpAddr>,
    /// Every address found in the original's `Received:` headers, top first,
    /// for matching a report whose `Source-IP` names a relay in front of us.
    pub received_ips: Vec<IpAddr>,
    /// `Incidents` (RFC 5965 section 3.2), 1 when absent.
    pub incidents: u32,
    /// `Reporting-MTA` host, without its `dns;` type.
    pub reporting_mta: Option<String>,
    /// The domain of `Original-Rcpt-To`, or else of the original's `To:`: the
    /// complaining user's mailbox provider.
    pub recipient_domain: Option<String>,
    /// `Arrival-Date` as written.
    pub arrival_date: Option<String>,
    /// The original message's `Message-ID`, to count a report sent twice once.
    pub original_message_id: Option<String>,
    /// The report's own `Message-ID`: the same report delivered twice (a
    /// feedback loop retrying, a copy in two folders) carries the same one.
    pub report_message_id: Option<String>,
}

/// A report that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArfError {
    #[error("the report is {bytes} bytes; at most {MAX_REPORT_BYTES} are read")]
    TooLarge { bytes: usize },
    #[error("not a feedback report: Content-Type is {content_type:?}, expected multipart/report; report-type=feedback-report (RFC 5965)")]
    NotFeedbackReport { content_type: String },
    #[error("the multipart/report has no boundary parameter")]
    NoBoundary,
    #[error("no message/feedback-report part among {parts} parts")]
    NoFeedbackPart { parts: usize },
    #[error("the feedback-report part has no {field} field (RFC 5965 section 3.1 requires it)")]
    MissingField { field: &'static str },
    #[error("{field} is {value:?}, not an IP address")]
    BadSourceIp { field: &'static str, value: String },
}

impl ArfError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ArfError::TooLarge { .. } => "too_large",
            ArfError::NotFeedbackReport { .. } => "not_feedback_report",
            ArfError::NoBoundary => "no_boundary",
            ArfError::NoFeedbackPart { .. } => "no_feedback_part",
            ArfError::MissingField { .. } => "missing_field",
            ArfError::BadSourceIp { .. } => "bad_source_ip",
        }
    }
}

impl Complaint {
    /// Which of `ours` the complaint is about: the `Source-IP` when it is ours,
    /// else the first of ours in the original's `Received:` headers. `None`:
    /// the report is not about mail we sent.
    pub fn sender_among(&self, ours: &[IpAddr]) -> Option<IpAddr> {
        self.source_ip
            .iter()
            .chain(&self.received_ips)
            .find(|ip| ours.contains(ip))
            .copied()
    }

    /// The provider of the complaining user: from the recipient domain, else
    /// from the reporting MTA's host (`other` when neither is known).
    pub fn provider(&self, classifier: &Classifier) -> ProviderId {
        let by_domain = self
            .recipient_domain
            .as_deref()
            .map(|d| classifier.provider_of(Some(d), None))
            .filter(|id| *id != ProviderId::OTHER);
        by_domain.unwrap_or_else(|| match self.reporting_mta.as_deref() {
            Some(host) => classifier.provider_of(Some(host), Some(host)),
            None => ProviderId::OTHER,
        })
    }
}

/// Reads one report.
pub fn parse_arf(raw: &[u8]) -> Result<Complaint, ArfError> {
    if raw.len() > MAX_REPORT_BYTES {
        return Err(ArfError::TooLarge { bytes: raw.len() });
    }
    let text = String::from_utf8_lossy(raw);
    let (headers, body) = split_head(&text);
    let content_type = header(&headers, "content-type").unwrap_or_default();
    let (media, params) = media_type(&content_type);
    let report_type = param(&params, "report-type").unwrap_or_default();
    if media != "multipart/report" || !report_type.eq_ignore_ascii_case("feedback-report") {
        return Err(ArfError::NotFeedbackReport { content_type });
    }
    let boundary = param(&params, "boundary").ok_or(ArfError::NoBoundary)?;
    let parts = split_parts(body, &boundary);
    let part_media = |part: &(Vec<(String, String)>, &str)| {
        media_type(&header(&part.0, "content-type").unwrap_or_default()).0
    };
    let fields = parts
        .iter()
        .find(|p| part_media(p) == "message/feedback-report")
        .ok_or(ArfError::NoFeedbackPart { parts: parts.len() })?;
    let (report, _) = split_head(fields.1.trim_start_matches(['\r', '\n']));
    let original = parts
        .iter()
        .find(|p| {
            matches!(
                part_media(p).as_str(),
                "message/rfc822" | "text/rfc822-headers"
            )
        })
        .map(|p| split_head(p.1.trim_start_matches(['\r', '\n'])).0)
        .unwrap_or_default();

    let feedback_type = header(&report, "feedback-type")
        .ok_or(ArfError::MissingField {
            field: "Feedback-Type",
        })?
        .to_ascii_lowercase();
    let source_ip = match header(&report, "source-ip") {
        Some(value) => Some(parse_ip(&value).ok_or(ArfError::BadSourceIp {
            field: "Source-IP",
            value,
        })?),
        None => None,
    };
    let received_ips: Vec<IpAddr> = original
        .iter()
        .filter(|(name, _)| name == "received")
        .filter_map(|(_, value)| bracketed_ip(value))
        .collect();
    let source_ip = source_ip.or_else(|| received_ips.first().copied());
    let incidents = header(&report, "incidents")
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    let reporting_mta = header(&report, "reporting-mta").map(|v| without_type(&v));
    let recipient_domain = header(&report, "original-rcpt-to")
        .or_else(|| header(&original, "to"))
        .and_then(|v| domain_of(&v));
    Ok(Complaint {
        feedback_type,
        source_ip,
        received_ips,
        incidents,
        reporting_mta,
        recipient_domain,
        arrival_date: header(&report, "arrival-date"),
        original_message_id: header(&original, "message-id"),
        report_message_id: header(&headers, "message-id"),
    })
}

/// Headers (lowercased names, unfolded values) and the body after the blank line.
fn split_head(text: &str) -> (Vec<(String, String)>, &str) {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (line, next) = match rest.find('\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            return (headers, next);
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = headers.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        rest = next;
    }
    (headers, "")
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
}

/// `type/subtype` lowercased, and the `; name=value` parameters.
fn media_type(value: &str) -> (String, Vec<(String, String)>) {
    let mut pieces = value.split(';');
    let media = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
    let params = pieces
        .filter_map(|p| p.split_once('='))
        .map(|(n, v)| {
            (
                n.trim().to_ascii_lowercase(),
                v.trim().trim_matches('"').to_string(),
            )
        })
        .collect();
    (media, params)
}

fn param(params: &[(String, String)], name: &str) -> Option<String> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
}

/// The parts between `--boundary` lines, each with its headers and body.
fn split_parts<'a>(body: &'a str, boundary: &str) -> Vec<(Vec<(String, String)>, &'a str)> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut offset = 0;
    for line in body.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']);
        if bare.starts_with(&delimiter) {
            if let Some(s) = start.take() {
                parts.push(split_head(&body[s..offset]));
                if parts.len() == MAX_PARTS {
                    break;
                }
            }
            if bare[delimiter.len()..].starts_with("--") {
                break;
            }
            start = Some(offset + line.len());
        }
        offset += line.len();
    }
    parts
}

fn parse_ip(value: &str) -> Option<IpAddr> {
    let v = value.trim().trim_start_matches('[').trim_end_matches(']');
    let v = v.strip_prefix("IPv6:").unwrap_or(v);
    v.parse().ok()
}

/// The first `[address]` of a `Received:` value that is an IP.
fn bracketed_ip(value: &str) -> Option<IpAddr> {
    value
        .split('[')
        .skip(1)
        .filter_map(|s| s.split_once(']').map(|(inside, _)| inside))
        .find_map(parse_ip)
}

fn without_type(value: &str) -> String {
    match value.split_once(';') {
        Some((_, host)) => host.trim().to_ascii_lowercase(),
        None => value.trim().to_ascii_lowercase(),
    }
}

/// The domain of an address such as `<user@example.com>` or `rfc822;u@x.y`.
fn domain_of(value: &str) -> Option<String> {
    let (_, domain) = value.rsplit_once('@')?;
    let domain = domain
        .trim_end_matches(|c: char| c == '>' || c.is_whitespace())
        .to_ascii_lowercase();
    (!domain.is_empty() && !domain.contains(['<', ' ', ','])).then_some(domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report in the shape of RFC 5965 section 3 and its appendix example,
    /// with documentation addresses.
    fn report(fields: &str, original: &str) -> String {
        format!(
            "From: <feedback@arf.mail.example.net>\r\n\
             Subject: FW: Earn money\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=feedback-report;\r\n\
             \tboundary=\"part1_13d.2e68ed54_boundary\"\r\n\
             \r\n\
             --part1_13d.2e68ed54_boundary\r\n\
             Content-Type: text/plain; charset=\"US-ASCII\"\r\n\
             \r\n\
             This is an email abuse report for an email message received from IP\r\n\
             203.0.113.10 on Thu, 8 Mar 2005 14:00:00 EDT.\r\n\
             --part1_13d.2e68ed54_boundary\r\n\
             Content-Type: message/feedback-report\r\n\
             \r\n\
             {fields}\
             \r\n\
             --part1_13d.2e68ed54_boundary\r\n\
             Content-Type: message/rfc822\r\n\
             Content-Disposition: inline\r\n\
             \r\n\
             {original}\
             \r\n\
             --part1_13d.2e68ed54_boundary--\r\n"
        )
    }

    const FIELDS: &str = "Feedback-Type: abuse\r\n\
        User-Agent: SomeGenerator/1.0\r\n\
        Version: 1\r\n\
        Original-Mail-From: <news@example.com>\r\n\
        Original-Rcpt-To: <user@yahoo.com>\r\n\
        Arrival-Date: Thu, 8 Mar 2005 14:00:00 EDT\r\n\
        Reporting-MTA: dns; mail.example.net\r\n\
        Source-IP: 203.0.113.10\r\n\
        Incidents: 3\r\n";

    const ORIGINAL: &str = "Received: from mailserver.example.com\r\n\
        \t(mailserver.example.com [203.0.113.10])\r\n\
        \tby mx.example.net with ESMTP id M63d4137594e46;\r\n\
        \tThu, 08 Mar 2005 14:00:00 -0400\r\n\
        Received: from [198.51.100.7] by mailserver.example.com; Thu, 08 Mar 2005\r\n\
        From: <news@example.com>\r\n\
        To: <Undisclosed Recipients>\r\n\
        Subject: Earn money\r\n\
        Message-ID: <8787KJKJ3K4J3K4J3K4J3.mail@example.com>\r\n\
        \r\n\
        Spam Spam Spam\r\n";

    #[test]
    fn a_feedback_report_gives_its_type_ip_recipient_and_original() {
        let c = parse_arf(report(FIELDS, ORIGINAL).as_bytes()).unwrap();
        assert_eq!(c.feedback_type, "abuse");
        assert_eq!(c.source_ip, Some("203.0.113.10".parse().unwrap()));
        assert_eq!(
            c.received_ips,
            vec![
                "203.0.113.10".parse::<IpAddr>().unwrap(),
                "198.51.100.7".parse().unwrap()
            ]
        );
        assert_eq!(c.incidents, 3);
        assert_eq!(c.reporting_mta.as_deref(), Some("mail.example.net"));
        assert_eq!(c.recipient_domain.as_deref(), Some("yahoo.com"));
        assert_eq!(
            c.original_message_id.as_deref(),
            Some("<8787KJKJ3K4J3K4J3K4J3.mail@example.com>")
        );
        let classifier = Classifier::builtin();
        assert_eq!(
            classifier.providers().name(c.provider(&classifier)),
            &"yahoo"
        );
    }

    #[test]
    fn without_source_ip_the_top_received_header_names_the_sender() {
        let fields = "Feedback-Type: abuse\nUser-Agent: x/1\nVersion: 1\n";
        let c = parse_arf(report(fields, ORIGINAL).as_bytes()).unwrap();
        assert_eq!(c.source_ip, Some("203.0.113.10".parse().unwrap()));
        assert_eq!(c.incidents, 1);
        assert_eq!(
            c.recipient_domain, None,
            "an undisclosed To names no domain"
        );
        let ours: Vec<IpAddr> = vec!["198.51.100.7".parse().unwrap()];
        assert_eq!(
            c.sender_among(&ours),
            Some(ours[0]),
            "a relay in front of us"
        );
        assert_eq!(c.sender_among(&["192.0.2.1".parse().unwrap()]), None);
    }

    #[test]
    fn what_is_not_a_readable_report_is_an_error_with_its_kind() {
        let too_big = vec![b'a'; MAX_REPORT_BYTES + 1];
        assert_eq!(parse_arf(&too_big).unwrap_err().kind(), "too_large");
        let plain = "Content-Type: text/plain\r\n\r\nhello\r\n";
        let e = parse_arf(plain.as_bytes()).unwrap_err();
        assert_eq!(e.kind(), "not_feedback_report");
        assert!(e.to_string().contains("text/plain"), "{e}");
        let no_boundary =
            "Content-Type: multipart/report; report-type=feedback-report\r\n\r\nx\r\n";
        assert_eq!(
            parse_arf(no_boundary.as_bytes()).unwrap_err(),
            ArfError::NoBoundary
        );
        let delivery = report(FIELDS, ORIGINAL).replace("message/feedback-report", "text/plain");
        assert_eq!(
            parse_arf(delivery.as_bytes()).unwrap_err().kind(),
            "no_feedback_part"
        );
        let untyped = report("User-Agent: x/1\r\nVersion: 1\r\n", ORIGINAL);
        assert_eq!(
            parse_arf(untyped.as_bytes()).unwrap_err(),
            ArfError::MissingField {
                field: "Feedback-Type"
            }
        );
        let bad_ip = report(
            "Feedback-Type: abuse\r\nSource-IP: 203.0.113.999\r\n",
            ORIGINAL,
        );
        assert_eq!(
            parse_arf(bad_ip.as_bytes()).unwrap_err().kind(),
            "bad_source_ip"
        );
    }

    #[test]
    fn an_ipv6_source_and_headers_only_original_are_read() {
        let fields = "Feedback-Type: abuse\r\nSource-IP: 2001:db8::25\r\n";
        let original = "Received: from a.example.com ([IPv6:2001:db8::25]) by mx.example.net\r\n\
             To: someone@outlook.com\r\n";
        let text = report(fields, original).replace("message/rfc822", "text/rfc822-headers");
        let c = parse_arf(text.as_bytes()).unwrap();
        assert_eq!(c.source_ip, Some("2001:db8::25".parse().unwrap()));
        assert_eq!(c.received_ips, vec![c.source_ip.unwrap()]);
        assert_eq!(c.recipient_domain.as_deref(), Some("outlook.com"));
    }
}
