//! Recognising a provider from the reply's own words, for bare replies where
//! neither the MX host nor the recipient domain is known (`mailfleet classify`
//! on a pasted bounce, a DSN's `Diagnostic-Code`).
//!
//! Every marker below is something the provider writes into its own replies
//! (docs/CLASSIFIER.md, "Provider from the reply", gives the public source of
//! each): its host names, its support links, its bracketed reason codes. The
//! first provider with a marker in the text wins, in this order: Apple before
//! Proofpoint (Apple's own replies cite a Proofpoint lookup page), the mailbox
//! providers before the gateways.
//!
//! The markers only name a provider; they never make a reply conclusive. A log
//! line always names its relay, so a receiving server of its own cannot use
//! these words to pass for Microsoft.

use crate::reputation::classifier::SmtpReply;

/// (provider, lowercase markers). A marker matches as a plain substring of the
/// lowercased reply text or of the replying host's name.
const MARKERS: &[(&str, &[&str])] = &[
    (
        "apple",
        &[
            "[cs0",
            "[hm0",
            "support.apple.com",
            "icloud.com",
            "mail.me.com",
        ],
    ),
    (
        "microsoft",
        &[
            "protection.outlook.com",
            "prod.outlook.com",
            "[outlook.com]",
            "postmaster.live.com",
            "mail.live.com",
            "sender.office.com",
            "go.microsoft.com",
            "olc.protection",
            "(s3140)",
            "(s3150)",
            "banned sending ip",
        ],
    ),
    (
        "google",
        &[
            " gsmtp",
            "-gsmtp",
            "support.google.com/mail",
            "mail.google.com/support",
            "google.com/mail",
            // Gmail's own words (managedserver.eu, cloudmailin.com quotes).
            "gmail has detected",
            "google's message size limits",
        ],
    ),
    (
        "yahoo",
        &[
            "[tss0",
            "[tss1",
            "[ts0",
            "[bl21]",
            "[bl23]",
            "[ph01]",
            "yahooinc.com",
            "yahoodns.net",
            "postmaster.yahoo",
            ".yahoo.com",
            // help.yahoo.com SLN3444 / abuse-57, and AOL's own MX (Yahoo runs AOL mail).
            "yahoo.com account",
            "@yahoo.com)",
            ".mx.aol.com",
        ],
    ),
    ("mimecast", &["mimecast"]),
    (
        "proofpoint",
        &["pphosted.com", "ppe-hosted.com", "proofpoint.com"],
    ),
    ("barracuda", &["cuda_nsu", "barracudanetworks.com"]),
    ("cisco", &["iphmx.com"]),
    ("trendmicro", &["tmes.trendmicro", "mx.trendmicro.com"]),
    (
        "broadcom",
        &[
            "messagelabs.com",
            "symanteccloud.com",
            "knowledge.broadcom.com",
        ],
    ),
];

/// The builtin provider whose marker the reply carries, if any.
pub fn provider_from_reply(reply: &SmtpReply<'_>) -> Option<&'static str> {
    let mut haystack = reply.text.to_ascii_lowercase();
    if let Some(host) = reply.remote_host {
        haystack.push(' ');
        haystack.push_str(&host.to_ascii_lowercase());
    }
    MARKERS
        .iter()
        .find(|(_, markers)| markers.iter().any(|m| haystack.contains(m)))
        .map(|(name, _)| *name)
}

/// Every provider name that has markers (the builtin providers, gateways included).
pub fn providers_with_markers() -> impl Iterator<Item = &'static str> {
    MARKERS.iter().map(|(name, _)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reputation::classifier::parse_reply;
    use crate::reputation::providers::builtin_provider_specs;

    fn found(text: &str) -> Option<&'static str> {
        provider_from_reply(&parse_reply(text))
    }

    #[test]
    fn each_provider_is_found_by_its_own_words() {
        assert_eq!(found("550 5.7.606 Access denied, banned sending IP [203.0.113.10]. To request removal from this list please visit https://sender.office.com/"), Some("microsoft"));
        assert_eq!(found("550 5.5.0 Requested action not taken: mailbox unavailable. [DB8EUR06FT056.eop-eur06.prod.protection.outlook.com]"), Some("microsoft"));
        assert_eq!(found("421 4.7.0 [TSS04] Messages from 203.0.113.10 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"), Some("yahoo"));
        assert_eq!(found("550 5.1.1 The email account that you tried to reach does not exist. https://support.google.com/mail/?p=NoSuchUser x - gsmtp"), Some("google"));
        assert_eq!(found("550 5.7.0 Blocked - see https://support.proofpoint.com/dnsbl-lookup.cgi?ip=203.0.113.10 [CS01]"), Some("apple"));
        assert_eq!(
            found("550 5.7.0 Blocked - see https://ipcheck.proofpoint.com/?ip=203.0.113.10"),
            Some("proofpoint")
        );
        assert_eq!(found("550 Rejected by header based Anti-Spoofing policy - https://community.mimecast.com/docs/DOC-1369#550"), Some("mimecast"));
        assert_eq!(
            found("550 cuda_nsu 5.1.1 <a@example.com>... User unknown"),
            Some("barracuda")
        );
        assert_eq!(
            found("host mx1.hc1234-56.iphmx.com[192.0.2.1] said: 550 5.7.1 rejected"),
            Some("cisco")
        );
        assert_eq!(found("553 Message filtered. Refer to the Troubleshooting page at http://www.symanteccloud.com/troubleshooting"), Some("broadcom"));
    }

    #[test]
    fn a_reply_without_markers_names_no_provider() {
        assert_eq!(found("550 5.1.1 user unknown"), None);
        assert_eq!(
            found("554 5.7.1 Service unavailable; Client host [203.0.113.10] blocked using zen.spamhaus.org"),
            None
        );
        // A Barracuda reputation list is queried by anyone: no gateway behind it.
        assert_eq!(
            found("550 rejected: listed in the RBL at b.barracudacentral.org"),
            None
        );
    }

    #[test]
    fn every_marked_provider_is_builtin() {
        let builtin: Vec<String> = builtin_provider_specs()
            .into_iter()
            .map(|s| s.name)
            .collect();
        for name in providers_with_markers() {
            assert!(builtin.iter().any(|b| b == name), "{name}");
        }
    }
}
