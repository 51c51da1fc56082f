//! The fixed vocabularies shared by JSON output, metrics labels and status.
//!
//! They are part of the public contract (docs/OUTPUTS.md): renaming a variant is a
//! breaking change for every dashboard and script that reads them.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What happened to one delivery attempt.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Delivered,
    Deferred,
    Bounced,
}

/// Why an attempt was not delivered (or `none` when it was).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    IpBlocklisted,
    IpRateLimited,
    ContentSpam,
    AuthFailure,
    RecipientUnknown,
    MailboxFull,
    PolicyOther,
    ConnectionFailure,
    OtherTransient,
    OtherPermanent,
    None,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Delivered, Outcome::Deferred, Outcome::Bounced];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Deferred => "deferred",
            Outcome::Bounced => "bounced",
        }
    }
}

impl Category {
    pub const ALL: [Category; 11] = [
        Category::IpBlocklisted,
        Category::IpRateLimited,
        Category::ContentSpam,
        Category::AuthFailure,
        Category::RecipientUnknown,
        Category::MailboxFull,
        Category::PolicyOther,
        Category::ConnectionFailure,
        Category::OtherTransient,
        Category::OtherPermanent,
        Category::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::IpBlocklisted => "ip_blocklisted",
            Category::IpRateLimited => "ip_rate_limited",
            Category::ContentSpam => "content_spam",
            Category::AuthFailure => "auth_failure",
            Category::RecipientUnknown => "recipient_unknown",
            Category::MailboxFull => "mailbox_full",
            Category::PolicyOther => "policy_other",
            Category::ConnectionFailure => "connection_failure",
            Category::OtherTransient => "other_transient",
            Category::OtherPermanent => "other_permanent",
            Category::None => "none",
        }
    }

    /// Categories that speak about the sending IP's reputation rather than about
    /// one message or one recipient; only these move the reputation engine.
    pub fn is_reputation_signal(self) -> bool {
        matches!(self, Category::IpBlocklisted | Category::IpRateLimited)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{value}`; expected one of: {expected}")]
pub struct UnknownWord {
    pub kind: &'static str,
    pub value: String,
    pub expected: String,
}

impl FromStr for Outcome {
    type Err = UnknownWord;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| UnknownWord {
                kind: "outcome",
                value: s.to_string(),
                expected: Outcome::ALL.map(Outcome::as_str).join(", "),
            })
    }
}

impl FromStr for Category {
    type Err = UnknownWord;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Category::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownWord {
                kind: "category",
                value: s.to_string(),
                expected: Category::ALL.map(Category::as_str).join(", "),
            })
    }
}

/// The mailbox providers mailfleet knows without configuration. Users may declare
/// more (for example `yahoo-japan`); those are plain names that pass
/// [`is_valid_provider_name`].
pub const BUILTIN_PROVIDERS: [&str; 4] = ["microsoft", "google", "yahoo", "apple"];

/// Business mail gateways mailfleet knows without configuration: providers too
/// (a block there holds for every company behind them), found by MX host.
pub const BUILTIN_GATEWAYS: [&str; 6] = [
    "proofpoint",
    "mimecast",
    "barracuda",
    "cisco",
    "trendmicro",
    "broadcom",
];

/// The provider every recipient falls into when no rule recognises it.
pub const OTHER_PROVIDER: &str = "other";

/// Provider names are used as metric labels, status keys and Postfix transport
/// names, so they are restricted to a DNS-label-like shape.
pub fn is_valid_provider_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_through_serde_and_from_str() {
        for o in Outcome::ALL {
            let json = serde_json::to_string(&o).unwrap();
            assert_eq!(json, format!("\"{}\"", o.as_str()));
            assert_eq!(o.as_str().parse::<Outcome>().unwrap(), o);
        }
        for c in Category::ALL {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            assert_eq!(c.as_str().parse::<Category>().unwrap(), c);
        }
        let err = "lost".parse::<Outcome>().unwrap_err().to_string();
        assert!(err.contains("delivered, deferred, bounced"), "{err}");
    }

    #[test]
    fn provider_names_are_label_shaped() {
        assert!(is_valid_provider_name("microsoft"));
        assert!(is_valid_provider_name("yahoo-japan"));
        assert!(!is_valid_provider_name("Yahoo"));
        assert!(!is_valid_provider_name("yahoo_japan"));
        assert!(!is_valid_provider_name(""));
        assert!(!is_valid_provider_name("-x"));
    }
}
