//! `mailfleet agent`: the sidecar in each sender pod, and the offline replay of
//! a finished delivery log (docs/AGENT.md).
//!
//! The sidecar follows the MTA's delivery log ([`follow`]), classifies each
//! line with the core classifier ([`line`]), counts per (provider, outcome,
//! category) ([`counts`]), and reports the counts to the feedback endpoint
//! ([`report`] is the wire format, docs/FEEDBACK-API.md; [`reporter`] the
//! exactly-once bookkeeping; [`state`] what survives a restart). It serves
//! `/metrics` ([`metrics`]) and applies the rendered sender configuration when
//! it changes ([`config`], [`apply`]), and counts the spam complaints about
//! its IP from a feedback loop's folder ([`complaint_inbox`]). [`run`] puts these together;
//! [`replay`] is the same classification over a finished log.

pub mod apply;
pub mod backoff;
pub mod complaint_inbox;
pub mod config;
pub mod counts;
pub mod flush;
pub mod follow;
pub mod http;
pub mod line;
pub mod metrics;
pub mod pacer;
pub mod queue;
pub mod replay;
pub mod report;
pub mod reporter;
pub mod run;
pub mod state;
pub mod time;
