//! How a pool's senders talk to providers: connection shaping per provider and
//! how long mail may wait in a sender's queue. Shared by `SenderPool`
//! (`spec.connections`, `spec.queue`) and `DomainRoute` (`spec.connections`).

use std::collections::BTreeMap;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// The most simultaneous connections one sender may open to one provider: the
/// process limit of one Postfix transport, which Postfix forks per connection.
pub const MAX_CONNECTIONS: i32 = 1000;
/// The most messages one SMTP connection may carry
/// (`smtp_connection_reuse_count_limit`).
pub const MAX_MESSAGES_PER_CONNECTION: i32 = 100_000;
/// The most recipients one delivery may carry
/// (`<transport>_destination_recipient_limit`).
pub const MAX_RECIPIENTS_PER_MESSAGE: i32 = 10_000;
/// Postfix refuses queue lifetimes above 100 days.
pub const MAX_QUEUE_LIFETIME_SECONDS: i64 = 8_640_000;
/// The shortest queue lifetime mailfleet accepts: an hour.
pub const MIN_QUEUE_LIFETIME_SECONDS: i64 = 3600;

/// Connection shaping towards one provider. Unset fields fall back to the
/// pool's `perProvider` entry, then the pool's `default`, then the built-in
/// value for the provider (docs/ROUTE-TABLE.md lists them).
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionLimits {
    /// Simultaneous SMTP connections one IP may hold to the provider, shared
    /// by the IP's ready replicas (each keeps at least one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000").message("maxConnections must be from 1 to 1000 (the process limit of one Postfix transport); the provider's limit per IP is usually 2 to 20").reason(Reason::FieldValueInvalid))]
    pub max_connections: Option<i32>,

    /// Messages delivered over one SMTP connection before it is closed and a
    /// new one opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100000").message("maxMessagesPerConnection must be from 1 to 100000 (Postfix's smtp_connection_reuse_count_limit)").reason(Reason::FieldValueInvalid))]
    pub max_messages_per_connection: Option<i32>,

    /// Recipients in one delivery (one SMTP transaction); a message to more
    /// recipients of the provider is split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 10000").message("maxRecipientsPerMessage must be from 1 to 10000 (Postfix's destination recipient limit); most providers accept 50 to 100").reason(Reason::FieldValueInvalid))]
    pub max_recipients_per_message: Option<i32>,
}

impl ConnectionLimits {
    /// `self` with its unset fields taken from `fallback`.
    pub fn or(&self, fallback: &ConnectionLimits) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections.or(fallback.max_connections),
            max_messages_per_connection: self
                .max_messages_per_connection
                .or(fallback.max_messages_per_connection),
            max_recipients_per_message: self
                .max_recipients_per_message
                .or(fallback.max_recipients_per_message),
        }
    }

    pub fn is_empty(&self) -> bool {
        self == &ConnectionLimits::default()
    }
}

/// A pool's connection shaping: defaults for every provider, and per provider.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionSettings {
    /// Limits for every provider without its own entry in `perProvider`.
    #[serde(default, skip_serializing_if = "ConnectionLimits::is_empty")]
    pub default: ConnectionLimits,

    /// Limits for a named provider (`microsoft`, `orange`, ...), over `default`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub per_provider: BTreeMap<String, ConnectionLimits>,
}

impl ConnectionSettings {
    pub fn is_empty(&self) -> bool {
        self.default.is_empty() && self.per_provider.is_empty()
    }
}

/// How long mail may wait in a sender's queue. While a route defers (a block
/// on every IP, `whenNoHealthyIp: Defer`) its mail waits here; past the
/// lifetime Postfix returns it to its sender as undeliverable.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.maximalLifetimeSeconds) || !has(self.bounceLifetimeSeconds) || self.bounceLifetimeSeconds <= self.maximalLifetimeSeconds").message("queue.bounceLifetimeSeconds must not exceed queue.maximalLifetimeSeconds (Postfix would cut it to that)").reason(Reason::FieldValueInvalid))]
pub struct QueueSettings {
    /// Seconds a message may wait before it is returned as undeliverable.
    /// Default: 14 days, or the pool's longest hold-down plus a day when that
    /// is longer. Must be at least `reputation.maxHoldDownSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 3600, max = 8640000))]
    #[x_kube(validation = Rule::new("self >= 3600 && self <= 8640000").message("queue.maximalLifetimeSeconds must be from 3600 (an hour) to 8640000 (100 days, Postfix's limit)").reason(Reason::FieldValueInvalid))]
    pub maximal_lifetime_seconds: Option<i64>,

    /// Seconds a bounce (a delivery status notification) may wait. Default:
    /// 5 days, at most the maximal lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 3600, max = 8640000))]
    #[x_kube(validation = Rule::new("self >= 3600 && self <= 8640000").message("queue.bounceLifetimeSeconds must be from 3600 (an hour) to 8640000 (100 days, Postfix's limit)").reason(Reason::FieldValueInvalid))]
    pub bounce_lifetime_seconds: Option<i64>,
}

impl QueueSettings {
    pub fn is_empty(&self) -> bool {
        self == &QueueSettings::default()
    }
}

/// The default maximal queue lifetime: two weeks, so a block as long as the
/// longest seen in practice (13.5 days) expires nothing.
pub const DEFAULT_QUEUE_LIFETIME_SECONDS: i64 = 14 * 86_400;
/// Postfix's own default bounce lifetime.
pub const DEFAULT_BOUNCE_LIFETIME_SECONDS: i64 = 5 * 86_400;

/// The queue lifetimes a pool's senders use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLifetimes {
    pub maximal_seconds: i64,
    pub bounce_seconds: i64,
}

impl QueueLifetimes {
    /// The lifetimes of a pool: what `spec.queue` says, else the defaults (at
    /// least the longest hold-down plus a day).
    pub fn resolve(queue: &QueueSettings, max_hold_down_seconds: i64) -> QueueLifetimes {
        let maximal = queue.maximal_lifetime_seconds.unwrap_or_else(|| {
            DEFAULT_QUEUE_LIFETIME_SECONDS
                .max(max_hold_down_seconds.saturating_add(86_400))
                .min(MAX_QUEUE_LIFETIME_SECONDS)
        });
        let bounce = queue
            .bounce_lifetime_seconds
            .unwrap_or(DEFAULT_BOUNCE_LIFETIME_SECONDS)
            .min(maximal);
        QueueLifetimes {
            maximal_seconds: maximal,
            bounce_seconds: bounce,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_lifetime_outlasts_the_longest_hold_down_by_a_day() {
        let default = QueueLifetimes::resolve(&QueueSettings::default(), 48 * 3600);
        assert_eq!(default.maximal_seconds, 14 * 86_400);
        assert_eq!(default.bounce_seconds, 5 * 86_400);
        let long = QueueLifetimes::resolve(&QueueSettings::default(), 20 * 86_400);
        assert_eq!(long.maximal_seconds, 21 * 86_400);
        let capped = QueueLifetimes::resolve(&QueueSettings::default(), 200 * 86_400);
        assert_eq!(capped.maximal_seconds, MAX_QUEUE_LIFETIME_SECONDS);
    }

    #[test]
    fn the_bounce_lifetime_never_exceeds_the_maximal_one() {
        let queue = QueueSettings {
            maximal_lifetime_seconds: Some(2 * 86_400),
            bounce_lifetime_seconds: None,
        };
        let resolved = QueueLifetimes::resolve(&queue, 3600);
        assert_eq!(resolved.maximal_seconds, 2 * 86_400);
        assert_eq!(resolved.bounce_seconds, 2 * 86_400);
    }

    #[test]
    fn unset_limits_come_from_the_fallback() {
        let route = ConnectionLimits {
            max_connections: Some(2),
            ..Default::default()
        };
        let pool = ConnectionLimits {
            max_connections: Some(10),
            max_recipients_per_message: Some(50),
            ..Default::default()
        };
        let merged = route.or(&pool);
        assert_eq!(merged.max_connections, Some(2));
        assert_eq!(merged.max_recipients_per_message, Some(50));
        assert_eq!(merged.max_messages_per_connection, None);
    }
}
