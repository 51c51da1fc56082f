//! `mailfleet classify`: one verdict per input line, for bare SMTP replies and
//! Postfix delivery log lines alike.

use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::common::FleetArgs;
use super::output::{table, Format};
use crate::reputation::classifier::{Classifier, Verdict};
use crate::reputation::postfix_log::{classify_attempt, parse_line_bytes, Skip};
use crate::vocab::{Category, Outcome};

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// A file of SMTP replies or Postfix log lines; `-` or nothing reads standard input.
    #[arg(value_name = "FILE")]
    pub input: Option<PathBuf>,

    #[arg(long, value_enum, default_value_t)]
    pub format: Format,

    /// Recipient domain to assume for bare replies (a log line carries its own).
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,

    /// MX host to assume for bare replies (a log line carries its own relay).
    #[arg(long, value_name = "HOST")]
    pub mx: Option<String>,

    /// Learn declared providers from these manifests' DomainRoutes.
    #[arg(long = "manifests", value_name = "DIR")]
    pub manifests: Vec<PathBuf>,

    /// Your own classifier rules and providers (YAML, see docs/CLASSIFIER.md;
    /// `-`: standard input, then give the replies as FILE).
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
}

/// One line's verdict; the field names are part of the JSON contract (docs/OUTPUTS.md).
#[derive(Debug, Serialize, PartialEq)]
pub struct LineVerdict {
    pub line: usize,
    pub provider: Option<String>,
    pub outcome: Option<Outcome>,
    pub category: Option<Category>,
    pub conclusive: bool,
    pub ip: Option<IpAddr>,
    pub rule: Option<String>,
    pub recipient_domain: Option<String>,
    pub skipped: Option<String>,
    /// `relay`, `domain`, `reply`, `given` or `none`: how the provider was found.
    pub provider_source: Option<&'static str>,
    /// The DNS block list zone a second-hand block claim names (docs/CLASSIFIER.md).
    pub dnsbl_zone: Option<String>,
    /// Seconds a rule's `pause` stops the pair after this reply (docs/REPUTATION.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_seconds: Option<i64>,
}

pub fn run(args: ClassifyArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let classifier = if args.manifests.is_empty() {
        let config = FleetArgs {
            manifests: Vec::new(),
            example: false,
            rules: args.rules.clone(),
        }
        .classifier_config()?;
        match config {
            Some(config) => Classifier::with_config(config)?,
            None => Classifier::builtin(),
        }
    } else {
        FleetArgs {
            manifests: args.manifests.clone(),
            example: false,
            rules: args.rules.clone(),
        }
        .load()?
        .classifier
    };
    let reader: Box<dyn BufRead> = match &args.input {
        None => {
            super::common::take_stdin("FILE")?;
            Box::new(std::io::stdin().lock())
        }
        Some(p) if p.as_os_str() == "-" => {
            super::common::take_stdin("FILE")?;
            Box::new(std::io::stdin().lock())
        }
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?,
        )),
    };
    let mut out = std::io::stdout().lock();
    let mut rows = Vec::new();
    for (index, line) in reader.split(b'\n').enumerate() {
        let line = line?;
        let verdict = classify_line(
            &classifier,
            &line,
            index + 1,
            args.domain.as_deref(),
            args.mx.as_deref(),
        );
        match args.format {
            Format::Json => {
                serde_json::to_writer(&mut out, &verdict)?;
                out.write_all(b"\n")?;
            }
            Format::Table => rows.push(vec![
                verdict.line.to_string(),
                verdict.provider.clone().unwrap_or_else(|| "-".into()),
                verdict.outcome.map_or("-".into(), |o| o.to_string()),
                verdict.category.map_or("-".into(), |c| c.to_string()),
                if verdict.conclusive {
                    "yes".into()
                } else {
                    "no".into()
                },
                verdict.ip.map_or("-".into(), |ip| ip.to_string()),
                verdict.skipped.clone().map_or_else(
                    || verdict.rule.clone().unwrap_or_else(|| "-".into()),
                    |s| format!("skipped: {s}"),
                ),
            ]),
        }
    }
    if args.format == Format::Table {
        out.write_all(
            table(
                &[
                    "LINE",
                    "PROVIDER",
                    "OUTCOME",
                    "CATEGORY",
                    "CONCLUSIVE",
                    "IP",
                    "RULE",
                ],
                &rows,
            )
            .as_bytes(),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A Postfix delivery line is classified with its own recipient and relay; a line
/// that starts with a three-digit reply code is a bare reply; anything else is skipped.
pub fn classify_line(
    classifier: &Classifier,
    raw: &[u8],
    line: usize,
    domain: Option<&str>,
    mx: Option<&str>,
) -> LineVerdict {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let skipped = |reason: String| LineVerdict {
        line,
        provider: None,
        outcome: None,
        category: None,
        conclusive: false,
        ip: None,
        rule: None,
        recipient_domain: None,
        skipped: Some(reason),
        provider_source: None,
        dnsbl_zone: None,
        pause_seconds: None,
    };
    let from = |v: Verdict, recipient_domain: Option<&str>| LineVerdict {
        line,
        provider: Some(v.provider.to_string()),
        outcome: Some(v.outcome),
        category: Some(v.category),
        conclusive: v.conclusive,
        ip: v.ip,
        rule: v.rule.map(|r| r.to_string()),
        recipient_domain: recipient_domain.map(str::to_string),
        skipped: None,
        provider_source: Some(v.provider_source.as_str()),
        dnsbl_zone: v.dnsbl_zone.map(|z| z.to_string()),
        pause_seconds: v.pause_seconds,
    };
    match parse_line_bytes(raw) {
        Ok(attempt) => from(
            classify_attempt(classifier, &attempt),
            attempt.recipient_domain,
        ),
        Err(Skip::NotDelivery) => {
            let Ok(text) = std::str::from_utf8(raw) else {
                return skipped(format!("binary: {}", Skip::Binary));
            };
            let text = text.trim();
            // A DSN's Diagnostic-Code (`smtp; 550 ...`), Exim's `host H [A] SMTP
            // error from remote mail server after ...: 550 ...` and Postfix's
            // bounce text `host H[A] said: 550 ...` carry a reply too.
            let reply_part = match text.get(..5) {
                Some(head) if head.eq_ignore_ascii_case("smtp;") => text[5..].trim_start(),
                _ => text
                    .split_once(" SMTP error from remote mail server after ")
                    .and_then(|(_, rest)| rest.split_once(": "))
                    .or_else(|| {
                        text.split_once(" said: ").filter(|(head, _)| {
                            let endpoint = head.strip_prefix("host ").unwrap_or(head);
                            !endpoint.contains(' ') || head.eq_ignore_ascii_case("remote host")
                        })
                    })
                    .map_or(text, |(_, reply)| reply.trim_start()),
            };
            let looks_like_reply = reply_part.len() >= 3
                && reply_part.as_bytes()[..3].iter().all(u8::is_ascii_digit)
                && matches!(reply_part.as_bytes()[0], b'2'..=b'5')
                && reply_part
                    .as_bytes()
                    .get(3)
                    .is_none_or(|b| *b == b' ' || *b == b'-');
            if looks_like_reply {
                from(classifier.classify_text(text, domain, mx), domain)
            } else {
                skipped(format!(
                    "{}: {} (and not an SMTP reply starting with a 2xx-5xx code)",
                    Skip::NotDelivery.as_str(),
                    Skip::NotDelivery
                ))
            }
        }
        Err(skip) => skipped(format!("{}: {skip}", skip.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pasted_postfix_bounce_names_its_relay() {
        let c = Classifier::builtin();
        let v = classify_line(
            &c,
            b"host mx1.hc1234-56.iphmx.com[192.0.2.1] said: 554 5.7.1 ACCESS DENIED (in reply to RCPT TO command)",
            1,
            None,
            None,
        );
        assert_eq!(v.skipped, None);
        assert_eq!(v.provider.as_deref(), Some("cisco"));
        assert_eq!(v.provider_source, Some("relay"));
        assert_eq!(v.outcome, Some(Outcome::Bounced));
        let v = classify_line(
            &c,
            b"Remote host said: 550 5.1.1 no such user",
            2,
            None,
            None,
        );
        assert_eq!(v.category, Some(Category::RecipientUnknown));
        let v = classify_line(&c, b"the boss said: 550 is fine", 3, None, None);
        assert!(v.skipped.is_some(), "prose, not a server's reply");
    }

    #[test]
    fn replies_and_log_lines_get_verdicts_and_garbage_is_skipped() {
        let c = Classifier::builtin();
        let v = classify_line(
            &c,
            b"550 5.7.606 Access denied, banned sending IP [203.0.113.12]",
            1,
            Some("hotmail.com"),
            None,
        );
        assert_eq!(v.provider.as_deref(), Some("microsoft"));
        assert_eq!(v.outcome, Some(Outcome::Bounced));
        assert_eq!(v.category, Some(Category::IpBlocklisted));
        assert!(v.conclusive);
        assert_eq!(v.ip, Some("203.0.113.12".parse().unwrap()));

        let log = b"2021-11-05T08:10:05+09:00 mail postfix/smtp[1]: 4TA1B2C3D4: to=<a@acclaim.jp>, relay=acclaim-jp.mail.protection.outlook.com[52.101.1.1]:25, delay=1, delays=0/0/0.5/0.5, dsn=5.7.606, status=bounced (host acclaim-jp.mail.protection.outlook.com[52.101.1.1] said: 550 5.7.606 Access denied, banned sending IP [203.0.113.12]. (in reply to RCPT TO command))";
        let v = classify_line(&c, log, 2, None, None);
        assert_eq!(
            v.provider.as_deref(),
            Some("microsoft"),
            "a Microsoft 365 tenant is recognised by its MX host"
        );
        assert_eq!(v.recipient_domain.as_deref(), Some("acclaim.jp"));
        assert!(v.conclusive);

        for garbage in [
            &b"hello world"[..],
            b"",
            b"\xff\xfe\x00binary",
            b"2021-11-05 postfix/qmgr[1]: 4TA1B2C3D4: removed",
        ] {
            let v = classify_line(&c, garbage, 3, None, None);
            assert_eq!(v.outcome, None, "{garbage:?}");
            assert!(v.skipped.is_some());
        }
        let json = serde_json::to_value(classify_line(&c, b"nonsense", 4, None, None)).unwrap();
        assert_eq!(json["outcome"], serde_json::Value::Null);
        assert!(json["skipped"]
            .as_str()
            .unwrap()
            .starts_with("not_delivery"));
    }
}
