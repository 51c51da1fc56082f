//! The custom resources: `SenderPool` and `DomainRoute` (group `mailfleet.io`, `v1alpha1`).

pub mod compact;
pub mod conditions;
pub mod crd;
pub mod domain_route;
pub mod queue_status;
mod schema_util;
pub mod sender_pool;
pub mod sending;
pub mod unreadable;
pub mod validate;

pub use conditions::{Condition, ConditionStatus};
pub use domain_route::*;
pub use queue_status::{RouteQueueStatus, SenderQueue, SenderRouteQueue};
pub use sender_pool::*;
pub use sending::{ConnectionLimits, ConnectionSettings, QueueLifetimes, QueueSettings};
