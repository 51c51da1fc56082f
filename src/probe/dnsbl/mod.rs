//! The DNSBL probe: asks DNS block lists about source IPs and reads their answers.
//!
//! An answer is a listing only when the zone's rules say so; error answers
//! (Spamhaus 127.255.255.252/254/255), timeouts, SERVFAIL, REFUSED and answers
//! outside 127.0.0.0/8 are probe errors and never listings. See docs/PROBES.md.

mod cache;
mod error;
mod health;
mod name;
mod round;
mod transport;
mod wire;
mod zone;

pub use cache::{
    ProbeInterval, ResultCache, DEFAULT_ERROR_RETRY_SECONDS, DEFAULT_INTERVAL_SECONDS,
    MIN_INTERVAL_SECONDS,
};
pub use error::{ProbeError, ProbeErrorKind};
pub use health::{
    dnsbl_health, DnsblHealth, RecentResults, ZoneCounts, ZoneErrorCounters, DEFAULT_MIN_RESULTS,
    DEFAULT_RECENT_RESULTS, DNSBL_HEALTHY,
};
pub use name::{normalize_zone, query_name, ZoneNameError};
pub use round::{DnsblProbe, ProbeOutcome};
pub use transport::{
    parse_nameserver, Nameserver, NameserverLookupError, NameserverSyntaxError, Resolver,
};
pub use wire::{decode_reply, encode_query, Decoded, QueryType, Rcode, Reply, WireError};
pub use zone::{
    plan_from_settings, DnsblPlan, Reading, ZoneConfigError, ZoneRules, DEFAULT_ERROR_CODES,
    SPAMHAUS_ZEN, ZEN_LISTING_CODES,
};
