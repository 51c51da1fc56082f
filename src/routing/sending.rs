//! What a sender needs besides the route table to render its limits: how many
//! ready replicas share its IP, its pool's connection shaping and queue
//! lifetimes, and the built-in connection limits of the big providers.

use crate::api::sending::{
    MAX_CONNECTIONS, MAX_MESSAGES_PER_CONNECTION, MAX_RECIPIENTS_PER_MESSAGE,
};
use crate::api::{ConnectionLimits, ConnectionSettings, QueueLifetimes, QueueSettings, SenderPool};

use super::index::lookup_key;
use super::postfix::Sender;

/// The pool- and pod-level settings of one sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendingSettings {
    /// Ready replicas of the sender's IP (0 and 1 both mean "alone").
    pub ready_replicas: u32,
    /// The pool's `spec.connections`.
    pub connections: ConnectionSettings,
    /// The pool's queue lifetimes, defaults resolved.
    pub queue: QueueLifetimes,
}

impl Default for SendingSettings {
    fn default() -> Self {
        SendingSettings {
            ready_replicas: 1,
            connections: ConnectionSettings::default(),
            queue: QueueLifetimes::resolve(
                &QueueSettings::default(),
                crate::api::ReputationSettings::default().max_hold_down_seconds,
            ),
        }
    }
}

impl SendingSettings {
    /// The settings of the sender of `ip` in `pool`: the pool's spec, and the
    /// ready replicas its status counts for that IP.
    pub fn of_pool(pool: &SenderPool, ip: &str) -> SendingSettings {
        let key = lookup_key(ip);
        let ready = pool
            .status
            .as_ref()
            .and_then(|s| s.ips.iter().find(|i| lookup_key(&i.address) == key))
            .map_or(0, |i| i.ready_replicas);
        SendingSettings {
            ready_replicas: u32::try_from(ready).unwrap_or(0).max(1),
            connections: pool.spec.connections.clone(),
            queue: QueueLifetimes::resolve(
                &pool.spec.queue,
                pool.spec.reputation.max_hold_down_seconds,
            ),
        }
    }

    /// The settings of `sender`, found among `pools` (defaults when its pool is missing).
    pub fn find(pools: &[SenderPool], sender: &Sender) -> SendingSettings {
        pools
            .iter()
            .find(|p| {
                p.metadata.name.as_deref() == Some(sender.pool.as_str())
                    && p.metadata.namespace.as_deref().unwrap_or("default") == sender.namespace
            })
            .map_or_else(SendingSettings::default, |p| {
                SendingSettings::of_pool(p, &sender.ip)
            })
    }

    /// The connection limits towards `provider` for a route with `route_limits`:
    /// the route's, then the pool's per-provider entry, then the pool's
    /// default, then the built-in values.
    pub fn limits_for(&self, provider: &str, route_limits: &ConnectionLimits) -> ResolvedLimits {
        let pool_provider = self
            .connections
            .per_provider
            .get(provider)
            .cloned()
            .unwrap_or_default();
        let merged = route_limits
            .or(&pool_provider)
            .or(&self.connections.default)
            .or(&builtin_limits(provider));
        let clamp = |value: Option<i32>, max: i32| -> u32 {
            u32::try_from(value.unwrap_or(max).clamp(1, max)).unwrap_or(1)
        };
        ResolvedLimits {
            max_connections: clamp(merged.max_connections, MAX_CONNECTIONS),
            max_messages_per_connection: clamp(
                merged.max_messages_per_connection,
                MAX_MESSAGES_PER_CONNECTION,
            ),
            max_recipients_per_message: clamp(
                merged.max_recipients_per_message,
                MAX_RECIPIENTS_PER_MESSAGE,
            ),
        }
    }
}

/// Connection limits with every value decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedLimits {
    /// Per IP: the sender's replicas share it.
    pub max_connections: u32,
    pub max_messages_per_connection: u32,
    pub max_recipients_per_message: u32,
}

/// The built-in connection limits of a provider. No provider publishes exact
/// numbers (Orange's postmaster pages are the exception, at 2 connections per
/// IP); the others are the conservative values bulk senders commonly use
/// (docs/ROUTE-TABLE.md, "Connection shaping"). Every other provider gets
/// Postfix's own defaults for concurrency (20) and recipients (50), with 100
/// messages per connection.
pub fn builtin_limits(provider: &str) -> ConnectionLimits {
    let (connections, messages, recipients) = match provider {
        "microsoft" => (10, 20, 100),
        "yahoo" => (10, 20, 100),
        "google" => (20, 100, 100),
        "apple" => (10, 20, 50),
        "orange" => (2, 20, 50),
        _ => (20, 100, 50),
    };
    ConnectionLimits {
        max_connections: Some(connections),
        max_messages_per_connection: Some(messages),
        max_recipients_per_message: Some(recipients),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::example::pool;
    use std::collections::BTreeMap;

    #[test]
    fn the_route_outranks_the_pool_which_outranks_the_built_ins() {
        let mut settings = SendingSettings::default();
        assert_eq!(
            settings.limits_for("orange", &ConnectionLimits::default()),
            ResolvedLimits {
                max_connections: 2,
                max_messages_per_connection: 20,
                max_recipients_per_message: 50
            }
        );
        settings.connections = ConnectionSettings {
            default: ConnectionLimits {
                max_recipients_per_message: Some(25),
                ..Default::default()
            },
            per_provider: BTreeMap::from([(
                "microsoft".to_string(),
                ConnectionLimits {
                    max_connections: Some(4),
                    ..Default::default()
                },
            )]),
        };
        let route = ConnectionLimits {
            max_messages_per_connection: Some(7),
            ..Default::default()
        };
        assert_eq!(
            settings.limits_for("microsoft", &route),
            ResolvedLimits {
                max_connections: 4,
                max_messages_per_connection: 7,
                max_recipients_per_message: 25
            }
        );
    }

    #[test]
    fn ready_replicas_and_lifetimes_come_from_the_pool() {
        let mut p = pool("mail", "bulk", &["203.0.113.10".to_string()]);
        p.status.as_mut().unwrap().ips[0].ready_replicas = 3;
        p.spec.queue.maximal_lifetime_seconds = Some(20 * 86_400);
        let sender = Sender {
            namespace: "mail".into(),
            pool: "bulk".into(),
            ip: "203.0.113.10".into(),
            settings: Default::default(),
        };
        let settings = SendingSettings::find(&[p], &sender);
        assert_eq!(settings.ready_replicas, 3);
        assert_eq!(settings.queue.maximal_seconds, 20 * 86_400);
        let missing = SendingSettings::find(&[], &sender);
        assert_eq!(missing, SendingSettings::default());
        assert_eq!(missing.queue.maximal_seconds, 14 * 86_400);
    }
}
