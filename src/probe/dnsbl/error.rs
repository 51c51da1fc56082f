//! Why a DNSBL query gave no usable answer. None of these is ever a listing.

use std::net::{Ipv4Addr, SocketAddr};

/// One failed DNSBL query. The text is what lands in `DnsblResult.error`: it
/// starts with the kind of failure and says what it most likely means.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("timeout: no answer from {nameserver} after {attempts} attempt(s) of {timeout_ms} ms")]
    Timeout {
        nameserver: SocketAddr,
        attempts: u32,
        timeout_ms: u64,
    },

    #[error(
        "SERVFAIL from {nameserver}: the resolver could not get an answer from the list's servers"
    )]
    ServFail { nameserver: SocketAddr },

    #[error("REFUSED by {nameserver}: it does not serve this zone or refuses this client")]
    Refused { nameserver: SocketAddr },

    #[error("{nameserver} answered with response code {code}")]
    OtherRcode {
        nameserver: SocketAddr,
        code: String,
    },

    #[error("error answer {code}: {meaning}")]
    ErrorCode { code: Ipv4Addr, meaning: String },

    #[error("answer {codes} lies outside 127.0.0.0/8: the resolver rewrites answers (NXDOMAIN redirection), it is not a listing")]
    OutsideLoopback { codes: String },

    #[error("answer {codes} is not one of this zone's listing codes ({expected}); add it to listingCodes if the list documents it as a listing")]
    UnexpectedCode { codes: String, expected: String },

    #[error("truncated reply from {nameserver} with no answer in it")]
    Truncated { nameserver: SocketAddr },

    #[error("network error talking to {nameserver}: {detail}")]
    Network {
        nameserver: SocketAddr,
        detail: String,
    },

    #[error("unreadable reply from {nameserver}: {detail}")]
    MalformedReply {
        nameserver: SocketAddr,
        detail: String,
    },

    #[error("cannot build the query: {detail}")]
    QueryName { detail: String },
}

/// The kind of a probe error: the `kind` label of the error counters and the
/// key of the likely fix. A closed vocabulary, stable for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeErrorKind {
    Timeout,
    ServFail,
    Refused,
    Rcode,
    /// Spamhaus 127.255.255.252.
    TypoInZone,
    /// Spamhaus 127.255.255.254.
    OpenResolver,
    /// Spamhaus 127.255.255.255.
    RateLimited,
    /// Another configured error code.
    ErrorCode,
    OutsideLoopback,
    UnexpectedCode,
    Truncated,
    Network,
    MalformedReply,
    QueryName,
}

impl ProbeError {
    pub fn kind(&self) -> ProbeErrorKind {
        match self {
            ProbeError::Timeout { .. } => ProbeErrorKind::Timeout,
            ProbeError::ServFail { .. } => ProbeErrorKind::ServFail,
            ProbeError::Refused { .. } => ProbeErrorKind::Refused,
            ProbeError::OtherRcode { .. } => ProbeErrorKind::Rcode,
            ProbeError::ErrorCode { code, .. } => match code.octets() {
                [127, 255, 255, 252] => ProbeErrorKind::TypoInZone,
                [127, 255, 255, 254] => ProbeErrorKind::OpenResolver,
                [127, 255, 255, 255] => ProbeErrorKind::RateLimited,
                _ => ProbeErrorKind::ErrorCode,
            },
            ProbeError::OutsideLoopback { .. } => ProbeErrorKind::OutsideLoopback,
            ProbeError::UnexpectedCode { .. } => ProbeErrorKind::UnexpectedCode,
            ProbeError::Truncated { .. } => ProbeErrorKind::Truncated,
            ProbeError::Network { .. } => ProbeErrorKind::Network,
            ProbeError::MalformedReply { .. } => ProbeErrorKind::MalformedReply,
            ProbeError::QueryName { .. } => ProbeErrorKind::QueryName,
        }
    }
}

impl ProbeErrorKind {
    pub const ALL: [ProbeErrorKind; 14] = [
        ProbeErrorKind::Timeout,
        ProbeErrorKind::ServFail,
        ProbeErrorKind::Refused,
        ProbeErrorKind::Rcode,
        ProbeErrorKind::TypoInZone,
        ProbeErrorKind::OpenResolver,
        ProbeErrorKind::RateLimited,
        ProbeErrorKind::ErrorCode,
        ProbeErrorKind::OutsideLoopback,
        ProbeErrorKind::UnexpectedCode,
        ProbeErrorKind::Truncated,
        ProbeErrorKind::Network,
        ProbeErrorKind::MalformedReply,
        ProbeErrorKind::QueryName,
    ];

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            ProbeErrorKind::Timeout => "timeout",
            ProbeErrorKind::ServFail => "servfail",
            ProbeErrorKind::Refused => "refused",
            ProbeErrorKind::Rcode => "rcode",
            ProbeErrorKind::TypoInZone => "typo_in_zone",
            ProbeErrorKind::OpenResolver => "open_resolver",
            ProbeErrorKind::RateLimited => "rate_limited",
            ProbeErrorKind::ErrorCode => "error_code",
            ProbeErrorKind::OutsideLoopback => "outside_loopback",
            ProbeErrorKind::UnexpectedCode => "unexpected_code",
            ProbeErrorKind::Truncated => "truncated",
            ProbeErrorKind::Network => "network",
            ProbeErrorKind::MalformedReply => "malformed_reply",
            ProbeErrorKind::QueryName => "query_name",
        }
    }

    /// What a person should most likely change when a zone answers only this.
    pub fn likely_fix(self) -> &'static str {
        match self {
            ProbeErrorKind::OpenResolver | ProbeErrorKind::Refused => {
                "the list refuses queries from public or shared resolvers: set spec.reputation.dnsbl.resolver to your own recursive resolver (HOST:PORT)"
            }
            ProbeErrorKind::RateLimited => {
                "the list rate-limits the resolver: use your own recursive resolver (spec.reputation.dnsbl.resolver), raise intervalSeconds, or use the list's paid data feed"
            }
            ProbeErrorKind::TypoInZone => {
                "the list says the zone name is wrong: check the spelling in spec.reputation.dnsbl.zones"
            }
            ProbeErrorKind::ServFail => {
                "the resolver cannot reach the list's servers: check its upstream access, or use your own recursive resolver"
            }
            ProbeErrorKind::Timeout | ProbeErrorKind::Network => {
                "the resolver does not answer: check that spec.reputation.dnsbl.resolver is reachable from the operator on UDP"
            }
            ProbeErrorKind::OutsideLoopback => {
                "the resolver rewrites answers (NXDOMAIN redirection): use your own recursive resolver"
            }
            ProbeErrorKind::UnexpectedCode | ProbeErrorKind::ErrorCode => {
                "the zone answers codes its rules do not expect: set listingCodes and errorCodes as the list documents them"
            }
            ProbeErrorKind::Rcode | ProbeErrorKind::Truncated | ProbeErrorKind::MalformedReply => {
                "the resolver answers in a way the probe cannot read: use your own recursive resolver"
            }
            ProbeErrorKind::QueryName => "use a shorter zone name",
        }
    }
}

impl std::fmt::Display for ProbeErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spamhaus_error_codes_have_their_own_kinds() {
        let kind = |last: u8| {
            ProbeError::ErrorCode {
                code: Ipv4Addr::new(127, 255, 255, last),
                meaning: String::new(),
            }
            .kind()
        };
        assert_eq!(kind(252), ProbeErrorKind::TypoInZone);
        assert_eq!(kind(254), ProbeErrorKind::OpenResolver);
        assert_eq!(kind(255), ProbeErrorKind::RateLimited);
        assert_eq!(kind(250), ProbeErrorKind::ErrorCode);
    }

    #[test]
    fn labels_are_unique_snake_case() {
        let labels: std::collections::BTreeSet<&str> =
            ProbeErrorKind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(labels.len(), ProbeErrorKind::ALL.len());
        assert!(labels
            .iter()
            .all(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    }
}
