//! Reputation probes: DNS block lists and provider feeds.
//!
//! Each probe turns what an outside source says about a source IP into the
//! engine's signals (`Signal::Dnsbl`, `Signal::Feed`). Reading answers, caching,
//! health and counters are pure; only the network exchanges are async.

pub mod claim_check;
pub mod dnsbl;
pub mod postmaster;
pub mod reverse_dns;
pub mod reverse_dns_checks;
pub mod runner;
pub mod snds;

pub use runner::{ProbeOptions, ProbeRound, SecretError, SecretSource, SecretsDir, SignalProbes};
