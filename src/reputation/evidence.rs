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

use crate::reputation::classifier::{extract_ip, Verdict};
use crate::reputation::providers::SharedName;
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
            self.rule = Some(SharedName::new(ANOTHER_IP_RULE));
        }
        self
    }
}

/// The `rule` of a verdict whose reply named another IP than the sender's.
pub const ANOTHER_IP_RULE: &str = "names-another-ip";

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
