//! How far a reply can be trusted as evidence against the sending IP.
//!
//! - A reply that quotes a public DNS block list ("blocked using
//!   zen.spamhaus.org", "listed in Spamhaus") can come from any receiving server,
//!   including one an attacker runs: it is a *claim* about a zone. [`dnsbl_zone_of`]
//!   finds the zone it names so the claim can be checked against that zone
//!   through the pool's own resolver; the engine blocks on a claim only once the
//!   zone confirms it or several distinct receivers agree.
//! - A reply naming another IP says nothing about ours: [`Verdict::for_sender`]
//!   turns its IP categories into `other_transient` / `other_permanent`.
//! - The sender's IP counts wherever the reply names it ([`names_ip`]), not only
//!   in the first bracketed address.

use std::net::IpAddr;

use crate::reputation::classifier::{extract_ip, parse_reply, Classifier, Verdict};
use crate::reputation::providers::{ProviderId, SharedName};
use crate::reputation::rules::Claim;
use crate::vocab::{Category, Outcome};

/// Block lists commonly quoted by name instead of by zone, with the zone to ask.
const NAMED_LISTS: [(&str, &str); 6] = [
    ("spamhaus", "zen.spamhaus.org"),
    ("spamcop", "bl.spamcop.net"),
    ("barracuda reputation", "b.barracudacentral.org"),
    ("barracudacentral", "b.barracudacentral.org"),
    ("sorbs", "dnsbl.sorbs.net"),
    ("uceprotect", "dnsbl-1.uceprotect.net"),
];

/// Words after which a reply names the list it used.
const ZONE_LEADS: [&str; 6] = [
    "blocked using ",
    "listed in the rbl at ",
    "listed at ",
    "listed in ",
    "listed on ",
    "listed by ",
];

/// The DNS block list zone a reply names (`zen.spamhaus.org`), or the zone of a
/// list it names by brand (`Spamhaus` → `zen.spamhaus.org`). `None` when it names
/// neither (Cloudmark's reputation, for example, has no public zone).
pub fn dnsbl_zone_of(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    for lead in ZONE_LEADS {
        let mut from = 0;
        while let Some(at) = lower[from..].find(lead) {
            let start = from + at + lead.len();
            let token: String = lower[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
                .collect();
            let token = token.trim_end_matches(['.', '-']);
            if is_zone_shaped(token) {
                return Some(token.to_string());
            }
            from = start;
        }
    }
    NAMED_LISTS
        .iter()
        .find(|(name, _)| lower.contains(name))
        .map(|(_, zone)| zone.to_string())
}

/// At least two labels and a letter-only last label (not an IP address).
fn is_zone_shaped(token: &str) -> bool {
    let mut labels = token.split('.');
    let count = token.split('.').count();
    count >= 2
        && labels.all(|l| !l.is_empty() && l.len() <= 63)
        && token
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()))
}

/// Whether `ip` appears in the reply as an address in any of the places replies
/// put one (brackets, parentheses, `ip=`, after "from" or "IP"), first or not.
pub fn names_ip(text: &str, ip: IpAddr) -> bool {
    let mut rest = text;
    // Each found address ends where the next search starts; at most a few per reply.
    for _ in 0..16 {
        let Some(found) = extract_ip(rest) else {
            return false;
        };
        if found == ip {
            return true;
        }
        let shown = found.to_string();
        match rest.find(&shown) {
            Some(at) => rest = &rest[at + shown.len()..],
            None => return false,
        }
    }
    false
}

/// Every address the reply names, in order (at most 16).
pub fn named_ips(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut rest = text;
    while out.len() < 16 {
        let Some(found) = extract_ip(rest) else { break };
        out.push(found);
        let shown = found.to_string();
        match rest.find(&shown) {
            Some(at) => rest = &rest[at + shown.len()..],
            None => break,
        }
    }
    out
}

impl Verdict {
    /// This verdict as seen by the IP that sent the mail: `ip` becomes the sender
    /// when the reply names it anywhere; a reply that names only other addresses
    /// is no evidence about the sender, so its `ip_blocklisted` or
    /// `ip_rate_limited` becomes `other_permanent` / `other_transient` and it is
    /// not conclusive. `reply` is the text the verdict was made from.
    pub fn for_sender(mut self, sender: IpAddr, reply: &str) -> Verdict {
        if self.ip.is_none() || self.ip == Some(sender) {
            return self;
        }
        if names_ip(reply, sender) {
            self.ip = Some(sender);
            return self;
        }
        if matches!(
            self.category,
            Category::IpBlocklisted | Category::IpRateLimited
        ) {
            self.category = if self.outcome == Outcome::Bounced {
                Category::OtherPermanent
            } else {
                Category::OtherTransient
            };
            self.conclusive = false;
            self.dnsbl_zone = None;
            self.pause_seconds = None;
            self.rule = Some(SharedName::new(ANOTHER_IP_RULE));
        }
        self
    }
}

/// The `rule` of a verdict whose reply named another IP than the sender's.
pub const ANOTHER_IP_RULE: &str = "names-another-ip";

/// A reply that only quotes a DNS block list: which zone, and who said it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimOf {
    pub zone: Option<String>,
    pub receiver: String,
}

/// Whether a reply received for `provider` is a DNS block list claim (a builtin
/// rule with `claim: dnsbl` decides it), and if so its zone and receiver. The
/// receiver is the domain of the host that replied (`mx1.example.net` →
/// `example.net`), else its address, else `unknown`. Providers the builtin table
/// does not know are judged as `other`: a declared provider's server quoting a
/// list is second-hand too.
pub fn claim_of(reply: &str, provider: &str) -> Option<ClaimOf> {
    let classifier = Classifier::builtin();
    let parsed = parse_reply(reply);
    let id = classifier
        .providers()
        .id_of(provider)
        .unwrap_or(ProviderId::OTHER);
    let verdict = classifier.classify_for(&parsed, id, None);
    let rule = verdict.rule.as_deref()?;
    let is_claim = classifier
        .rules()
        .iter()
        .any(|r| r.id.as_str() == rule && r.claim == Some(Claim::Dnsbl));
    if !is_claim {
        return None;
    }
    let receiver = parsed
        .remote_host
        .map(receiving_domain)
        .or_else(|| parsed.remote_addr.map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string());
    Some(ClaimOf {
        zone: verdict.dnsbl_zone.map(|z| z.to_string()),
        receiver,
    })
}

/// The domain a receiving host belongs to: its last two labels, or three under
/// a country's second level (`mx.example.co.jp` → `example.co.jp`).
fn receiving_domain(host: &str) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    let n = labels.len();
    let keep = if n >= 3 && labels[n - 1].len() == 2 && labels[n - 2].len() <= 3 {
        3
    } else {
        2
    };
    labels[n.saturating_sub(keep)..].join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reputation::classifier::Classifier;

    #[test]
    fn zones_are_read_from_the_common_wordings() {
        let z = |t: &str| dnsbl_zone_of(t);
        assert_eq!(
            z("554 5.7.1 Service unavailable; Client host [203.0.113.10] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/203.0.113.10").as_deref(),
            Some("zen.spamhaus.org")
        );
        assert_eq!(
            z("550 5.7.1 Service unavailable; client [203.0.113.10] blocked using prs.proofpoint.com").as_deref(),
            Some("prs.proofpoint.com")
        );
        assert_eq!(
            z("554 rejected: 203.0.113.10 is listed in the RBL at b.barracudacentral.org.")
                .as_deref(),
            Some("b.barracudacentral.org")
        );
        assert_eq!(
            z("550 5.7.1 Service unavailable, Client host [203.0.113.10] blocked using Spamhaus. To request removal").as_deref(),
            Some("zen.spamhaus.org")
        );
        assert_eq!(
            z("550 5.7.1 client [203.0.113.10] blocked using Cloudmark Sender Intelligence"),
            None
        );
        // An IP after "listed in" is not a zone.
        assert_eq!(z("listed in 203.0.113.10 twice"), None);
    }

    #[test]
    fn claims_are_told_from_a_provider_s_own_word() {
        let forged = "host mx.attacker.example[192.0.2.66] said: 554 5.7.1 Service unavailable; Client host [203.0.113.10] blocked using zen.spamhaus.org (in reply to RCPT TO command)";
        assert_eq!(
            claim_of(forged, "other"),
            Some(ClaimOf {
                zone: Some("zen.spamhaus.org".into()),
                receiver: "attacker.example".into()
            })
        );
        // Yahoo's own [BL21] is Yahoo's verdict, not a claim.
        let yahoo = "553 5.7.1 [BL21] Connections will not be accepted from 203.0.113.10, because the ip is in Spamhaus's list";
        assert_eq!(claim_of(yahoo, "yahoo"), None);
        // Proofpoint's own reputation list, answered by Proofpoint.
        let proofpoint =
            "550 5.7.1 Service unavailable; client [203.0.113.10] blocked using prs.proofpoint.com";
        assert_eq!(claim_of(proofpoint, "proofpoint"), None);
        assert!(claim_of(proofpoint, "other").is_some());
        assert_eq!(receiving_domain("mx1.mail.example.co.jp"), "example.co.jp");
        assert_eq!(receiving_domain("mx.example.net."), "example.net");
    }

    #[test]
    fn the_sender_is_found_wherever_the_reply_names_it() {
        let sender: IpAddr = "203.0.113.12".parse().unwrap();
        let text = "550 5.7.1 Relay [198.51.100.9] refused: messages from [203.0.113.12] are on our block list (S3140)";
        assert!(names_ip(text, sender));
        assert!(!names_ip(text, "203.0.113.13".parse().unwrap()));
        assert_eq!(named_ips(text).len(), 2);
        let v = Classifier::builtin()
            .classify_text(text, Some("hotmail.com"), None)
            .for_sender(sender, text);
        assert_eq!(v.ip, Some(sender));
        assert!(v.conclusive);
    }

    #[test]
    fn a_reply_naming_only_another_ip_is_no_evidence() {
        let sender: IpAddr = "203.0.113.12".parse().unwrap();
        let text = "550 5.7.606 Access denied, banned sending IP [198.51.100.1].";
        let v = Classifier::builtin()
            .classify_text(text, Some("hotmail.com"), None)
            .for_sender(sender, text);
        assert_eq!(
            (v.category, v.conclusive, v.rule.as_deref()),
            (Category::OtherPermanent, false, Some(ANOTHER_IP_RULE))
        );
        let text = "451 4.7.650 The mail server [198.51.100.1] has been temporarily rate limited due to IP reputation.";
        let v = Classifier::builtin()
            .classify_text(text, Some("hotmail.com"), None)
            .for_sender(sender, text);
        assert_eq!(v.category, Category::OtherTransient);
        // Replies naming no IP keep their verdict.
        let text = "421 4.7.0 [TSS04] Messages temporarily deferred";
        let v = Classifier::builtin()
            .classify_text(text, Some("yahoo.com"), None)
            .for_sender(sender, text);
        assert_eq!(v.category, Category::IpRateLimited);
    }
}
