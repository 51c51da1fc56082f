//! What the engine is told: already-classified delivery counts, DNSBL answers,
//! provider feed verdicts, spam complaints.

use std::net::IpAddr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::{DnsblResult, FeedVerdict};

/// One observation about one source IP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Delivery results towards one provider over a short interval ending now.
    Feedback(Feedback),
    /// One DNS block list answer. The zone must be one of
    /// `spec.reputation.dnsbl.zones`; its `providers` say which pairs a listing blocks.
    Dnsbl(DnsblResult),
    /// One provider feed verdict (for example Microsoft SNDS) for its provider.
    Feed(FeedVerdict),
    /// Spam complaints (abuse feedback reports) received now about mail this
    /// IP sent to one provider's users.
    Complaints(Complaints),
}

/// Spam complaints about one IP from one provider's users, counted into the
/// pair's window and judged against the mail it delivered there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct Complaints {
    pub provider: String,
    /// Complaints received (at least 1).
    pub count: i64,
}

/// Delivery attempts of one IP towards one provider, already classified.
///
/// The counts are categories of the same attempts: `delivered + ip_blocklisted
/// + ip_rate_limited <= attempts` (the rest failed for reasons that say nothing
/// about the IP). `conclusive` lists the explicit IP-ban replies among the
/// `ip_blocklisted` attempts, and the replies asking for a pause (those with
/// `pause_seconds`) among the `ip_rate_limited` attempts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct Feedback {
    pub provider: String,
    pub attempts: i64,
    #[serde(default)]
    pub delivered: i64,
    #[serde(default)]
    pub ip_blocklisted: i64,
    #[serde(default)]
    pub ip_rate_limited: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conclusive: Vec<ConclusiveReply>,
}

/// An explicit IP-ban reply (Microsoft 5.7.606, Yahoo TSS09, "blocked using <zone>" ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct ConclusiveReply {
    /// The reply text, kept as the pair's evidence.
    pub reply: String,
    /// The IP the reply names, if it names one. A reply naming another IP is
    /// no evidence against this one.
    #[serde(default)]
    pub named_ip: Option<IpAddr>,
    /// When the reply was received.
    pub at: Timestamp,
    /// Set for a rate-limit reply whose rule asks for a pause (Yahoo `[TSS04]`):
    /// the pair sends nothing for this many seconds, then probes. Not a block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_seconds: Option<i64>,
}
