//! mailfleet: routes outbound mail around source IPs that a mailbox provider blocks.
//!
//! The pure core ([`reputation`], [`routing`]) decides; the drivers (operator,
//! standalone, agent, command line) only fetch, apply and report.

pub mod agent;
pub mod api;
pub mod cli;
pub mod digest;
pub mod fleet;
pub mod http_client;
pub mod manifests;
pub mod metrics;
pub mod operator;
pub mod probe;
pub mod reputation;
pub mod routing;
pub mod sender;
pub mod serve;
pub mod sim;
pub mod standalone;
pub mod vocab;
