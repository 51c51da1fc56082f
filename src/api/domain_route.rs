//! `DomainRoute`: which pool serves one provider's recipients, and what it falls back to.

// kube's printcolumn(...) entries each repeat `type_ = ...`; clippy reads them as one attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::{conditions_schema, Condition};
use super::sender_pool::ReputationState;

/// Routes the mail of one mailbox provider through a sender pool, with ordered
/// fallbacks. The operator never edits this spec; the route in force is in status.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mailfleet.io",
    version = "v1alpha1",
    kind = "DomainRoute",
    doc = "Routes one mailbox provider's recipients through a SenderPool with ordered fallbacks; status holds the route in force.",
    namespaced,
    status = "DomainRouteStatus",
    shortname = "mfroute",
    category = "mailfleet",
    cel,
    printcolumn(
        name = "Provider",
        type_ = "string",
        json_path = ".spec.provider",
        description = "Mailbox provider this route serves"
    ),
    printcolumn(
        name = "Pool",
        type_ = "string",
        json_path = ".spec.pool",
        description = "Primary sender pool"
    ),
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".status.mode",
        description = "Primary, FallbackPool, Relay or Defer"
    ),
    printcolumn(
        name = "Targets",
        type_ = "integer",
        json_path = ".status.targetCount",
        description = "IPs currently sending for this route"
    ),
    printcolumn(
        name = "Excluded",
        type_ = "integer",
        json_path = ".status.excludedCount",
        description = "IPs taken out of this route"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "The Ready condition: the route in force is written to its senders"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        description = "Why the route is or is not ready",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DomainRouteSpec {
    /// The provider whose reputation decides which IPs this route may use:
    /// `microsoft`, `google`, `yahoo`, `apple`, `other`, or a name you declare.
    #[schemars(length(min = 1, max = 40))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("provider must be a lowercase name such as microsoft, google or yahoo-japan (letters, digits and '-')").reason(Reason::FieldValueInvalid))]
    pub provider: String,

    /// Which recipients this route serves: exactly one of `domains`,
    /// `domainSuffixes`, `mxHostSuffixes` or `default: true`.
    #[serde(rename = "match")]
    pub match_: RouteMatch,

    /// The SenderPool (same namespace) whose IPs carry this route.
    #[schemars(length(min = 1, max = 253))]
    pub pool: String,

    /// Tried in order when no IP of `pool` may send to this provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub fallback: Vec<Fallback>,

    /// A route-wide cap, spread over the route's IPs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.maxPerHour >= 1 && self.maxPerHour <= 100000000").message("throttle.maxPerHour is messages per hour for the whole route and must be from 1 to 100000000; to stop a route use whenNoHealthyIp: Defer with an override").reason(Reason::FieldValueInvalid))]
    pub throttle: Option<Throttle>,

    /// Connection shaping for this route's provider, over the pool's
    /// `spec.connections` (unset fields come from the pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<super::sending::ConnectionLimits>,

    /// What happens when no IP of the pool may send: `Fallback` tries `fallback`
    /// in order and then defers; `Defer` keeps the mail queued at once. Mail is never
    /// dropped and never sent through a blocked IP.
    #[serde(default)]
    pub when_no_healthy_ip: NoHealthyIpPolicy,
}

/// The recipients a route serves.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.domains) ? 1 : 0) + (has(self.domainSuffixes) ? 1 : 0) + (has(self.mxHostSuffixes) ? 1 : 0) + ((has(self.default) && self.default) ? 1 : 0) == 1").message("match needs exactly one of domains, domainSuffixes, mxHostSuffixes or default: true").reason(Reason::FieldValueInvalid))]
pub struct RouteMatch {
    /// Exact recipient domains, for example `hotmail.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 10000))]
    pub domains: Option<Vec<String>>,

    /// Recipient domain suffixes, for example `.co.jp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000))]
    pub domain_suffixes: Option<Vec<String>>,

    /// MX host suffixes, for example `.mail.protection.outlook.com`: catches company
    /// domains hosted by the provider, which their names do not reveal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub mx_host_suffixes: Option<Vec<String>>,

    /// Serves every recipient no other route matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
}

/// One fallback: another pool, or an external relay.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.pool) != has(self.relay)").message("each fallback is either a pool or a relay, not both and not neither").reason(Reason::FieldValueInvalid))]
pub struct Fallback {
    /// Another SenderPool in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub pool: Option<String>,

    /// An external smarthost that accepts the mail for delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<Relay>,
}

/// An external relay host.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Relay {
    /// Host name or IP of the relay.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,

    /// SMTP port of the relay (587 for submission, 25 for plain relay).
    #[serde(default = "default_relay_port")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("relay.port must be a TCP port from 1 to 65535"))]
    pub port: i32,

    /// Secret (same namespace) holding `username` and `password` for SMTP AUTH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<SecretKeyRef>,
}

fn default_relay_port() -> i32 {
    587
}

/// A reference to a Secret in the same namespace.
#[derive(JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A route-wide volume cap.
#[derive(JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Throttle {
    /// Messages per hour for the whole route, shared by its IPs by weight.
    #[schemars(range(min = 1))]
    pub max_per_hour: i64,
}

/// What a route does when its pool has no IP that may send.
#[derive(JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum NoHealthyIpPolicy {
    /// Try the fallbacks in order, then defer.
    #[default]
    Fallback,
    /// Keep the mail queued (temporary failure) until an IP is allowed again.
    Defer,
}

/// Which kind of target carries a route right now.
#[derive(JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RouteMode {
    /// The route's own pool.
    Primary,
    /// A fallback pool.
    FallbackPool,
    /// An external relay (blocked IPs that are probing still send their small trickle).
    Relay,
    /// No IP may carry the route: mail stays queued (probing IPs still send their trickle).
    Defer,
}

/// The route in force, as compiled by the operator.
#[derive(JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DomainRouteStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Accepted (the spec can work), Ready, Degraded (on fallback or deferring).
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,

    /// Which kind of target carries the route now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<RouteMode>,

    /// The IPs that send for this route, with weight and hourly cap (probing IPs with their trickle).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<RouteTarget>,

    /// The relay in use (`host:port`) when mode is Relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,

    /// IPs of the route's pools taken out of it, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<ExcludedIp>,

    /// Recipient domains seen with an MX host this route matches (bounded, expiring).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10000))]
    pub learned_domains: Vec<LearnedDomain>,

    /// Whether a fallback (pool or relay) carries the route.
    #[serde(default)]
    pub fallback_in_use: bool,

    /// When the targets last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rewrite_time: Option<Time>,

    /// Number of targets (for `kubectl get mfroute`).
    #[serde(default)]
    pub target_count: i32,

    /// Number of excluded IPs (for `kubectl get mfroute`).
    #[serde(default)]
    pub excluded_count: i32,

    /// Mail waiting for this route in the senders' queues, as their agents
    /// last reported it; absent when none waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<super::queue_status::RouteQueueStatus>,
}

/// One IP that sends for a route.
#[derive(JsonSchema, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteTarget {
    /// The pool the IP belongs to.
    pub pool: String,
    /// The source IP.
    pub ip: String,
    /// Relative share of the route's mail (follows the IP's allowance).
    pub weight: i32,
    /// Messages per hour this IP may send on this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly_cap: Option<i64>,
    /// The IP's reputation state with the route's provider.
    pub state: ReputationState,
}

/// An IP left out of a route.
#[derive(JsonSchema, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExcludedIp {
    /// The pool the IP belongs to.
    pub pool: String,
    /// The source IP.
    pub ip: String,
    /// Its reputation state with the route's provider.
    pub state: ReputationState,
    /// Why it is left out.
    pub reason: String,
}

/// A recipient domain learned from an MX observation.
#[derive(JsonSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LearnedDomain {
    /// The recipient domain.
    pub domain: String,
    /// The MX host it was delivered to.
    pub mx_host: String,
    /// When it was last seen.
    pub last_seen: Time,
    /// When it is forgotten unless seen again.
    pub expires_at: Time,
}
