//! Queue figures in status: what waits in the senders' queues, per sender pod
//! (SenderPool `status.queues`, as each pod's agent last reported it) and per
//! route (DomainRoute `status.queue`, summed over the pods that carry it).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The queue of one sender pod, as its agent last reported it.
#[derive(JsonSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SenderQueue {
    /// The sender pod.
    pub pod: String,
    /// Its source IP.
    pub ip: String,
    /// When the agent read the queue.
    pub read_time: Time,
    /// Every message in the pod's queue.
    pub messages: i64,
    /// The oldest message's arrival.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_arrival_time: Option<Time>,
    /// The pod's `maximal_queue_lifetime`, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_seconds: Option<i64>,
    /// False when the agent's read stopped at its deadline (part of the queue counted).
    #[serde(default = "yes")]
    pub complete: bool,
    /// Routes with waiting mail, oldest first (at most 32).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub routes: Vec<SenderRouteQueue>,
}

fn yes() -> bool {
    true
}

/// Mail one sender pod holds for one route.
#[derive(JsonSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SenderRouteQueue {
    /// The DomainRoute (same namespace).
    pub route: String,
    /// The route's provider.
    pub provider: String,
    /// Messages with a recipient on the route.
    pub messages: i64,
    /// The oldest such message's arrival.
    pub oldest_arrival_time: Time,
}

/// Mail waiting for a route in every sender that reported it.
#[derive(JsonSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteQueueStatus {
    /// Messages waiting, summed over the senders.
    pub messages: i64,
    /// Sender pods holding some.
    pub senders: i32,
    /// The oldest waiting message's arrival.
    pub oldest_arrival_time: Time,
    /// When the oldest message is returned to its sender
    /// (its arrival plus the shortest `maximal_queue_lifetime` of those senders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_time: Option<Time>,
    /// The oldest message has waited half of its lifetime or more
    /// (a Warning event `QueueAging` was sent when this became true).
    #[serde(default)]
    pub aging: bool,
}
