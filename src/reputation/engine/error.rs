//! Why the engine refused its input.

/// Bad input to the engine. Each message names what is wrong and how to fix it;
/// the status is left untouched when one is returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("IP {ip} is not in this SenderPool (spec.ips: {known}); add it to spec.ips or send its signals to the pool it belongs to")]
    UnknownIp { ip: String, known: String },

    #[error("{field} `{value}` is not an IP address; write an IPv4 or IPv6 address such as 203.0.113.10 or 2001:db8::10")]
    InvalidIp { field: String, value: String },

    #[error(
        "spec.ips lists {ip} twice (spec.ips[{first}] and spec.ips[{second}]); remove one of them"
    )]
    DuplicateIp {
        ip: String,
        first: usize,
        second: usize,
    },

    #[error("{field} is {value}: {problem}")]
    InvalidSetting {
        field: String,
        value: String,
        problem: String,
    },

    #[error("{field} `{name}` is not a provider name; use lowercase letters, digits and '-', such as microsoft or yahoo-japan")]
    InvalidProvider { field: String, name: String },

    #[error("feedback for {provider} from {ip} is inconsistent: {problem}")]
    InconsistentFeedback {
        ip: String,
        provider: String,
        problem: String,
    },

    #[error("DNSBL zone `{zone}` is not in spec.reputation.dnsbl.zones (configured: {known}); add it there or stop probing it")]
    UnknownDnsblZone { zone: String, known: String },

    #[error("feed verdict for {ip} has an empty feed name; name the feed, for example snds")]
    UnnamedFeed { ip: String },
}
