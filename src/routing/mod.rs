//! The pure route compiler and its renderers (JSON route table, Postfix config).
//!
//! [`compile`] turns pools (whose status holds the reputation engine's state) and
//! routes into a [`RouteTable`]; [`RouteCompiler`] keeps its indexes to re-route
//! after one IP changes; [`status_for`] projects a route onto its status; [`json`]
//! and [`postfix`] render what senders consume, [`haproxy`] the hand-off between
//! senders on VMs.

pub mod caps;
pub mod classifier_files;
pub mod compiler;
pub mod example;
pub mod haproxy;
mod index;
pub mod ip_bound;
pub mod json;
mod judge;
pub mod learned;
pub mod model;
pub mod postfix;
pub mod queues;
pub mod sender_config;
pub mod sender_settings;
pub mod sending;
mod share;
pub mod status;

pub use compiler::{compile, CompileError, RouteCompiler};
pub use model::{ObjectKey, Problem, RelayTarget, RouteMatcher, RouteResult, RouteTable};
pub use status::status_for;
