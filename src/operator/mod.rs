//! The Kubernetes driver: SenderPool and DomainRoute controllers, the
//! feedback receiver for agents, leader election, metrics and health.
//!
//! [`build`] is the pure part (objects, status, events from the fleet);
//! everything else here talks to the API server. docs/ARCHITECTURE.md,
//! "Operator", describes how the pieces fit.

pub mod apply;
pub mod build;
pub mod context;
pub mod error;
pub mod fanout;
pub mod feedback;
pub mod feedback_cert;
pub mod feedback_cert_keeper;
pub mod leader;
pub mod leader_route;
pub mod metrics;
pub mod pool_controller;
pub mod probes;
pub mod rendered;
pub mod reverse_dns;
pub mod route_controller;
pub mod route_index;
pub mod run;
pub mod sender_checks;
pub mod slim;
pub mod snapshot;
pub mod status_write;
pub mod stores;
pub mod token_cache;
pub mod triggers;
