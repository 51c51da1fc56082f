//! The pure reputation core: recognising providers, classifying SMTP replies and
//! Postfix log lines, and the per-(IP, provider) state machine.
//! No I/O, no wall clock, no randomness: callers pass `now`.

pub mod arf;
pub mod classifier;
pub mod complaints;
pub mod engine;
pub mod evidence;
pub mod fingerprints;
pub mod postfix_log;
pub mod providers;
pub mod rules;
pub mod tally;
