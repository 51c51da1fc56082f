//! One delivery log line → one classified delivery attempt, or the reason it is
//! not one. Two formats: Postfix's delivery log, and JSON lines for other MTAs
//! (docs/AGENT.md):
//!
//! ```json
//! {"time": "2021-11-05T08:10:01Z", "recipient": "taro@hotmail.co.jp",
//!  "relay_host": "hotmail-com.olc.protection.outlook.com", "status": "deferred",
//!  "reply": "550 5.7.606 Access denied, banned sending IP [203.0.113.10]", "dsn": "5.7.606"}
//! ```
//!
//! Both go through the core classifier the same way: provider by relay (MX)
//! host, else recipient domain; the logged status is the outcome.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use crate::reputation::classifier::{parse_reply, Classifier, Verdict};
use crate::reputation::postfix_log::{classify_attempt, parse_line_bytes, Skip};
use crate::reputation::rules::EnhancedCode;
use crate::vocab::Outcome;

/// How the MTA writes its delivery log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Postfix,
    JsonLines,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Postfix => "postfix",
            LogFormat::JsonLines => "json-lines",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A delivery log format this agent does not read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown log format `{0}`; expected postfix or json-lines")]
pub struct UnknownLogFormat(pub String);

impl FromStr for LogFormat {
    type Err = UnknownLogFormat;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "postfix" => Ok(LogFormat::Postfix),
            "json-lines" | "jsonl" => Ok(LogFormat::JsonLines),
            _ => Err(UnknownLogFormat(s.to_string())),
        }
    }
}

/// Why a line is not counted as a delivery attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum LineSkip {
    #[error("{0}")]
    Log(Skip),
    #[error("line longer than the agent's limit; skipped up to its end")]
    TooLong,
    #[error("not a JSON object of a delivery record")]
    InvalidJson,
    #[error("JSON record without `{0}`")]
    MissingField(&'static str),
}

impl LineSkip {
    /// The reason as one snake_case word (metrics label, report key).
    pub fn as_str(self) -> &'static str {
        match self {
            LineSkip::Log(skip) => skip.as_str(),
            LineSkip::TooLong => "too_long",
            LineSkip::InvalidJson => "invalid_json",
            LineSkip::MissingField(_) => "missing_field",
        }
    }

    /// The position of [`LineSkip::as_str`] in [`LineSkip::WORDS`].
    pub fn index(self) -> usize {
        match self {
            LineSkip::Log(Skip::Empty) => 0,
            LineSkip::Log(Skip::Binary) => 1,
            LineSkip::Log(Skip::NotDelivery) => 2,
            LineSkip::Log(Skip::ReplyReplacement) => 3,
            LineSkip::Log(Skip::Truncated) => 4,
            LineSkip::Log(Skip::UnknownStatus) => 5,
            LineSkip::Log(Skip::Malformed) => 6,
            LineSkip::TooLong => 7,
            LineSkip::InvalidJson => 8,
            LineSkip::MissingField(_) => 9,
        }
    }

    /// Every reason word, for metrics that list them all.
    pub const WORDS: [&'static str; 10] = [
        "empty",
        "binary",
        "not_delivery",
        "reply_replacement",
        "truncated",
        "unknown_status",
        "malformed",
        "too_long",
        "invalid_json",
        "missing_field",
    ];
}

/// A delivery attempt with its verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassifiedLine<'a> {
    pub verdict: Verdict,
    /// The reply (or the MTA's remark) as logged: the conclusive evidence.
    pub reply: Cow<'a, str>,
    /// The time as logged, if the line has one.
    pub time: Option<Cow<'a, str>>,
}

/// Classifies one line (without its newline).
pub fn classify_line<'a>(
    classifier: &Classifier,
    format: LogFormat,
    line: &'a [u8],
) -> Result<ClassifiedLine<'a>, LineSkip> {
    match format {
        LogFormat::Postfix => {
            let attempt = parse_line_bytes(line).map_err(LineSkip::Log)?;
            let verdict = classify_attempt(classifier, &attempt);
            Ok(ClassifiedLine {
                verdict,
                reply: Cow::Borrowed(attempt.text),
                time: attempt.timestamp.map(Cow::Borrowed),
            })
        }
        LogFormat::JsonLines => classify_json(classifier, line),
    }
}

#[derive(Deserialize)]
struct JsonRecord<'a> {
    #[serde(borrow, default)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    recipient: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    relay_host: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reply: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    dsn: Option<Cow<'a, str>>,
}

fn classify_json<'a>(
    classifier: &Classifier,
    line: &'a [u8],
) -> Result<ClassifiedLine<'a>, LineSkip> {
    let text = std::str::from_utf8(line).map_err(|_| LineSkip::Log(Skip::Binary))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(LineSkip::Log(Skip::Empty));
    }
    if text.bytes().any(|b| b < 0x20 && b != b'\t') {
        return Err(LineSkip::Log(Skip::Binary));
    }
    let record: JsonRecord<'a> = serde_json::from_str(text).map_err(|_| LineSkip::InvalidJson)?;
    let recipient = record
        .recipient
        .ok_or(LineSkip::MissingField("recipient"))?;
    let status = record.status.ok_or(LineSkip::MissingField("status"))?;
    let outcome = match status.as_ref() {
        "sent" | "delivered" => Outcome::Delivered,
        "deferred" => Outcome::Deferred,
        "bounced" | "expired" => Outcome::Bounced,
        _ => return Err(LineSkip::Log(Skip::UnknownStatus)),
    };
    let reply_text = record.reply.unwrap_or(Cow::Borrowed(""));
    let verdict = {
        let mut reply = parse_reply(&reply_text);
        if reply.status.is_none() {
            reply.status = record.dsn.as_deref().and_then(EnhancedCode::parse);
        }
        let domain = recipient
            .rsplit_once('@')
            .map(|(_, d)| d)
            .filter(|d| !d.is_empty());
        let mx_host = record
            .relay_host
            .as_deref()
            .filter(|h| !h.is_empty())
            .or(reply.remote_host);
        let (provider, source) = classifier.find_provider(domain, mx_host, &reply);
        classifier.classify_found(&reply, provider, source, Some(outcome))
    };
    Ok(ClassifiedLine {
        verdict,
        reply: reply_text,
        time: record.time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::Category;

    #[test]
    fn a_postfix_line_and_its_json_twin_get_the_same_verdict() {
        let c = Classifier::builtin();
        let postfix = b"2021-11-05T08:10:01+09:00 mx1 postfix/smtp[7]: 4HmB2x0Z7Qz9vD: to=<taro@acclaim.jp>, relay=acclaim-jp.mail.protection.outlook.com[52.101.1.1]:25, delay=1, delays=0/0/0.5/0.5, dsn=5.7.606, status=bounced (host acclaim-jp.mail.protection.outlook.com[52.101.1.1] said: 550 5.7.606 Access denied, banned sending IP [203.0.113.10]. (in reply to RCPT TO command))";
        let json = br#"{"time":"2021-11-05T08:10:01+09:00","recipient":"taro@acclaim.jp","relay_host":"acclaim-jp.mail.protection.outlook.com","status":"bounced","reply":"550 5.7.606 Access denied, banned sending IP [203.0.113.10].","queue_id":"ignored"}"#;
        let a = classify_line(&c, LogFormat::Postfix, postfix).unwrap();
        let b = classify_line(&c, LogFormat::JsonLines, json).unwrap();
        assert_eq!(a.verdict, b.verdict);
        assert_eq!(a.verdict.provider.as_str(), "microsoft");
        assert!(a.verdict.conclusive && a.verdict.category == Category::IpBlocklisted);
        assert_eq!(a.time.as_deref(), Some("2021-11-05T08:10:01+09:00"));
        assert_eq!(b.time, a.time);
        assert!(a.reply.starts_with("host acclaim-jp"));
    }

    #[test]
    fn json_records_without_a_reply_use_the_dsn() {
        let c = Classifier::builtin();
        let line = br#"{"recipient":"a@gmail.com","status":"deferred","dsn":"4.4.1"}"#;
        let v = classify_line(&c, LogFormat::JsonLines, line)
            .unwrap()
            .verdict;
        assert_eq!(
            (v.provider.as_str(), v.outcome),
            ("google", Outcome::Deferred)
        );
        let escaped =
            br#"{"recipient":"a@gmail.com","status":"sent","reply":"250 2.0.0 OK \"queued\""}"#;
        let line = classify_line(&c, LogFormat::JsonLines, escaped).unwrap();
        assert_eq!(line.reply, "250 2.0.0 OK \"queued\"");
    }

    #[test]
    fn bad_lines_give_reasons() {
        let c = Classifier::builtin();
        let skip = |f, l: &[u8]| classify_line(&c, f, l).unwrap_err();
        assert_eq!(
            skip(LogFormat::JsonLines, b"not json"),
            LineSkip::InvalidJson
        );
        assert_eq!(skip(LogFormat::JsonLines, b"[1,2]"), LineSkip::InvalidJson);
        assert_eq!(
            skip(LogFormat::JsonLines, br#"{"recipient":5,"status":"sent"}"#),
            LineSkip::InvalidJson
        );
        assert_eq!(
            skip(LogFormat::JsonLines, br#"{"status":"sent"}"#),
            LineSkip::MissingField("recipient")
        );
        assert_eq!(
            skip(
                LogFormat::JsonLines,
                br#"{"recipient":"a@b","status":"lost"}"#
            ),
            LineSkip::Log(Skip::UnknownStatus)
        );
        assert_eq!(
            skip(LogFormat::JsonLines, b"\xff\xfe{}"),
            LineSkip::Log(Skip::Binary)
        );
        assert_eq!(
            skip(LogFormat::JsonLines, b"  "),
            LineSkip::Log(Skip::Empty)
        );
        assert_eq!(
            skip(LogFormat::Postfix, b"\x00\x01garbage"),
            LineSkip::Log(Skip::Binary)
        );
        assert_eq!(
            skip(
                LogFormat::Postfix,
                b"Nov  5 08:10:01 mx1 postfix/qmgr[9]: 4HmB2x0Z7Qz9vD: removed"
            )
            .as_str(),
            "not_delivery"
        );
        let all = [
            Skip::Empty,
            Skip::Binary,
            Skip::NotDelivery,
            Skip::ReplyReplacement,
            Skip::Truncated,
            Skip::UnknownStatus,
            Skip::Malformed,
        ]
        .map(LineSkip::Log);
        for skip in all.into_iter().chain([
            LineSkip::TooLong,
            LineSkip::InvalidJson,
            LineSkip::MissingField("x"),
        ]) {
            assert_eq!(LineSkip::WORDS[skip.index()], skip.as_str());
        }
        assert_eq!("jsonl".parse::<LogFormat>(), Ok(LogFormat::JsonLines));
        assert!("csv"
            .parse::<LogFormat>()
            .unwrap_err()
            .to_string()
            .contains("postfix or json-lines"));
    }
}
