//! The reputation engine: the state machine of every (source IP, provider) pair.
//!
//! States Healthy, Warming, Throttled, Blocked, Probing and Recovering, each with
//! an allowance (0-100 % of normal volume). The engine's whole state lives in the
//! `SenderPool` status (`IpStatus` → `ProviderReputation`, window buckets, DNSBL
//! answers, feed verdicts), so an operator restarted mid-incident continues from
//! there. It is pure: no I/O, no clock (`now` is passed in), no randomness, and
//! the same calls give byte-identical status. Timestamps are kept to the whole
//! second, the resolution of Kubernetes `Time`.
//!
//! - [`observe`] takes one [`Signal`] (classified delivery counts, a DNSBL
//!   answer, a feed verdict, spam complaints) about one IP;
//! - [`tick`] advances timers and follows the spec (new IPs, warm-up, overrides);
//! - [`next_wakeup`] says when [`tick`] next has something to do;
//! - [`pair_view`] reads what one pair may send.
//!
//! docs/REPUTATION.md describes the rules, the diagram and every reason word.

mod clock;
mod error;
mod pair;
mod pool;
mod settings;
mod signal;
mod transition;
mod view;
mod warmup;
mod window;

#[cfg(test)]
mod tests;

pub use error::EngineError;
pub use pool::{next_wakeup, observe, tick};
pub use signal::{Complaints, ConclusiveReply, Feedback, Signal};
pub use transition::{is_allowed_edge, Reason, Transition, UnknownReason};
pub use view::{pair_view, PairView};
