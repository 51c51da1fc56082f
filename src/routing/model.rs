//! The compiled route table: what every route sends through right now.
//!
//! These are plain data types with no serde: the JSON renderer ([`super::json`])
//! owns the versioned wire format, so the Rust types can evolve without breaking it.

use std::fmt;

use jiff::Timestamp;

use crate::api::{ExcludedIp, NoHealthyIpPolicy, ReputationState, RouteMode, RouteTarget};

/// Namespace and name of one object. Objects without a namespace are read as
/// being in `default`, as `kubectl` does.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Something in the input that a person should fix. Problems are data, not
/// errors: the compiler still produces the safest route it can.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Problem {
    /// Path of the offending field in the object named by the route (for example
    /// `spec.fallback[1].pool`), or the object itself for fleet-wide problems.
    pub field: String,
    /// What is wrong and what happens meanwhile.
    pub message: String,
}

impl Problem {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The recipients one route serves, normalised: lowercase, no trailing dot,
/// sorted, without duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RouteMatcher {
    /// Exact recipient domains.
    pub domains: Vec<String>,
    /// Recipient domain suffixes as written (`.co.jp` or `example.com`).
    pub domain_suffixes: Vec<String>,
    /// MX host suffixes (`.mail.protection.outlook.com`).
    pub mx_host_suffixes: Vec<String>,
    /// Whether the route serves every recipient no other route matches.
    pub default: bool,
}

/// The external relay a route hands its mail to in mode `Relay`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RelayTarget {
    pub host: String,
    pub port: u16,
    /// Name of the Secret (same namespace) with `username` and `password`.
    pub credentials_secret: Option<String>,
}

impl RelayTarget {
    /// `host:port`, the form `DomainRoute.status.relay` uses.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The compiled result of one `DomainRoute`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteResult {
    pub key: ObjectKey,
    /// The provider whose reputation decided the targets.
    pub provider: String,
    pub matcher: RouteMatcher,
    /// Domains learned from MX observations that have not expired, sorted.
    pub learned_domains: Vec<String>,
    /// The route's own pool (`spec.pool`).
    pub pool: String,
    pub when_no_healthy_ip: NoHealthyIpPolicy,
    pub mode: RouteMode,
    /// Index into `spec.fallback` of the fallback carrying the route, if any.
    pub fallback_index: Option<usize>,
    /// The pool that carries the route (`None` in modes Relay and Defer).
    pub serving_pool: Option<String>,
    /// Route-wide cap (`spec.throttle.maxPerHour`) when one applies.
    pub throttle_per_hour: Option<i64>,
    /// The IPs that send: the serving pool's in address order, then, when the
    /// route's own pool cannot carry it, that pool's Probing IPs (their trickle)
    /// in address order. Modes Relay and Defer have only such Probing targets.
    pub targets: Vec<RouteTarget>,
    /// IPs of every pool consulted that were left out, and why.
    pub excluded: Vec<ExcludedIp>,
    /// Set exactly in mode Relay.
    pub relay: Option<RelayTarget>,
    /// Input problems found while compiling this route.
    pub problems: Vec<Problem>,
    /// `spec.connections`: connection limits of this route over its senders'
    /// pool settings (unset fields come from the pool, then the built-ins).
    pub connections: crate::api::ConnectionLimits,
}

impl RouteResult {
    /// Whether a fallback (pool or relay) carries the route.
    pub fn fallback_in_use(&self) -> bool {
        matches!(self.mode, RouteMode::FallbackPool | RouteMode::Relay)
    }

    /// The target for `ip` of `pool`, when that IP sends for this route.
    pub fn target(&self, pool: &str, ip: &str) -> Option<&RouteTarget> {
        self.targets.iter().find(|t| t.pool == pool && t.ip == ip)
    }
}

/// Whether an IP in `state` can carry a route's mail. A Probing IP only sends
/// its trickle, and a Blocked one sends nothing.
pub fn carries_mail(state: ReputationState) -> bool {
    match state {
        ReputationState::Healthy
        | ReputationState::Warming
        | ReputationState::Throttled
        | ReputationState::Recovering => true,
        ReputationState::Probing | ReputationState::Blocked => false,
    }
}

/// The effective route table of a fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTable {
    /// The `now` the table was compiled at (it only decides which learned
    /// domains have expired).
    pub generated_at: Timestamp,
    /// Every route, sorted by namespace then name.
    pub routes: Vec<RouteResult>,
    /// Problems that belong to no single route (for example duplicate objects).
    pub problems: Vec<Problem>,
}

impl RouteTable {
    pub fn route(&self, namespace: &str, name: &str) -> Option<&RouteResult> {
        self.routes
            .binary_search_by(|r| {
                (r.key.namespace.as_str(), r.key.name.as_str()).cmp(&(namespace, name))
            })
            .ok()
            .map(|i| &self.routes[i])
    }
}

/// The API's mode words, as `kubectl get mfroute` shows them.
pub fn mode_name(mode: RouteMode) -> &'static str {
    match mode {
        RouteMode::Primary => "Primary",
        RouteMode::FallbackPool => "FallbackPool",
        RouteMode::Relay => "Relay",
        RouteMode::Defer => "Defer",
    }
}

/// The API's policy words.
pub fn policy_name(policy: NoHealthyIpPolicy) -> &'static str {
    match policy {
        NoHealthyIpPolicy::Fallback => "Fallback",
        NoHealthyIpPolicy::Defer => "Defer",
    }
}
