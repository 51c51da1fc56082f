//! What the engine reports when a pair moves: the [`Transition`] and its [`Reason`].

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::ReputationState;

/// Why a pair moved. Serialised as the CamelCase word, which is also what
/// `ProviderReputation.reason`, Kubernetes events and the demo timeline show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Reason {
    /// Stored reason of a pair created in its resting state; never a transition's reason.
    FirstSeen,
    /// One explicit IP-ban reply naming this IP (or no IP) was received.
    ConclusiveBlockReply,
    /// The share of attempts refused for IP reputation reached `feedback.blockPercent`.
    BlockRateOverThreshold,
    /// The share of rate-limited attempts reached `feedback.throttlePercent`.
    RateLimited,
    /// A Throttled pair's window at its first step fell below half the
    /// throttle threshold: back to full volume (or the warm-up schedule).
    WindowClean,
    /// A reply whose rule asks for a pause (Yahoo `[TSS04]`): the pair sends
    /// nothing until `pausedUntil`. Not a block.
    PauseReply,
    /// The pause is over: probing starts.
    PauseElapsed,
    /// A Throttled pair still rate-limited at its step: one step lower.
    ThrottleStepDown,
    /// A Throttled pair clean at its step for `throttle.stepSeconds`: one step higher.
    ThrottleStepUp,
    /// Spam complaints reached `complaints.thresholdBasisPoints` of the mail
    /// delivered in the window: Throttled, or one step lower if it already was.
    ComplaintRate,
    /// A provider feed's figures (SNDS: a RED filter result, a complaint rate
    /// at or over `complaints.thresholdBasisPoints`, trap hits with a filter
    /// result that is not GREEN) say the provider's users do not want the
    /// IP's mail: Throttled. It does not climb while the feed says so.
    FeedThrottled,
    /// A DNS block list lists the IP.
    DnsblListed,
    /// A provider feed (for example Microsoft SNDS) says the IP is blocked.
    FeedBlocked,
    /// Replies quoting a DNS block list were confirmed: the named zone lists the
    /// IP through the pool's own resolver, or several distinct receivers said so.
    DnsblClaimConfirmed,
    /// The hold-down of a Blocked pair is over: probing starts.
    HoldDownElapsed,
    /// Enough clean deliveries while Probing: recovery starts.
    ProbeClean,
    /// One recovery step passed without failure: the next, larger step.
    RecoveryStep,
    /// The last recovery step passed: back to full volume (or to the warm-up schedule).
    Recovered,
    /// The IP has a `warmupStart` and its schedule runs.
    WarmupStarted,
    /// A new warm-up day with a different hourly cap.
    WarmupStep,
    /// The warm-up schedule is over (or `warmupStart` was removed).
    WarmupComplete,
    /// A manual override now caps this pair.
    ManualOverride,
    /// The manual override of this pair was removed.
    OverrideLifted,
}

impl Reason {
    pub const ALL: [Reason; 23] = [
        Reason::FirstSeen,
        Reason::ConclusiveBlockReply,
        Reason::BlockRateOverThreshold,
        Reason::RateLimited,
        Reason::WindowClean,
        Reason::PauseReply,
        Reason::PauseElapsed,
        Reason::ThrottleStepDown,
        Reason::ThrottleStepUp,
        Reason::ComplaintRate,
        Reason::FeedThrottled,
        Reason::DnsblListed,
        Reason::FeedBlocked,
        Reason::DnsblClaimConfirmed,
        Reason::HoldDownElapsed,
        Reason::ProbeClean,
        Reason::RecoveryStep,
        Reason::Recovered,
        Reason::WarmupStarted,
        Reason::WarmupStep,
        Reason::WarmupComplete,
        Reason::ManualOverride,
        Reason::OverrideLifted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::FirstSeen => "FirstSeen",
            Reason::ConclusiveBlockReply => "ConclusiveBlockReply",
            Reason::BlockRateOverThreshold => "BlockRateOverThreshold",
            Reason::RateLimited => "RateLimited",
            Reason::WindowClean => "WindowClean",
            Reason::PauseReply => "PauseReply",
            Reason::PauseElapsed => "PauseElapsed",
            Reason::ThrottleStepDown => "ThrottleStepDown",
            Reason::ThrottleStepUp => "ThrottleStepUp",
            Reason::ComplaintRate => "ComplaintRate",
            Reason::FeedThrottled => "FeedThrottled",
            Reason::DnsblListed => "DnsblListed",
            Reason::FeedBlocked => "FeedBlocked",
            Reason::DnsblClaimConfirmed => "DnsblClaimConfirmed",
            Reason::HoldDownElapsed => "HoldDownElapsed",
            Reason::ProbeClean => "ProbeClean",
            Reason::RecoveryStep => "RecoveryStep",
            Reason::Recovered => "Recovered",
            Reason::WarmupStarted => "WarmupStarted",
            Reason::WarmupStep => "WarmupStep",
            Reason::WarmupComplete => "WarmupComplete",
            Reason::ManualOverride => "ManualOverride",
            Reason::OverrideLifted => "OverrideLifted",
        }
    }

    /// Reasons that put a pair into Blocked.
    pub fn is_block(self) -> bool {
        matches!(
            self,
            Reason::ConclusiveBlockReply
                | Reason::BlockRateOverThreshold
                | Reason::DnsblListed
                | Reason::FeedBlocked
                | Reason::DnsblClaimConfirmed
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason word that is not one of [`Reason::ALL`].
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown reputation reason `{0}`; expected one of the CamelCase words in docs/REPUTATION.md"
)]
pub struct UnknownReason(pub String);

impl FromStr for Reason {
    type Err = UnknownReason;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_string()))
    }
}

/// One move of one (IP, provider) pair: a state change, a recovery or warm-up
/// step, or a manual override taking or leaving effect. Every state change
/// yields exactly one; steps and overrides keep `from == to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct Transition {
    /// The source IP, as written in the SenderPool spec.
    pub ip: String,
    pub provider: String,
    /// The state before; `None` when the pair had no record before this call.
    pub from: Option<ReputationState>,
    pub to: ReputationState,
    pub reason: Reason,
    /// The reply, listing, feed line or figures behind the move.
    pub evidence: Option<String>,
    /// Allowance (0-100) right after the move, manual override included.
    pub allowance_percent: i32,
    /// When the move took effect. Timer-driven moves carry the instant they were
    /// due, which may be before the `now` of the call that noticed them.
    pub at: Timestamp,
}

/// Whether the state machine may move a pair from `from` to `to` for `reason`.
/// `from == None` (a pair without a record) stands for the resting states,
/// Healthy or Warming. This table is the state diagram of docs/REPUTATION.md.
pub fn is_allowed_edge(from: Option<ReputationState>, to: ReputationState, reason: Reason) -> bool {
    use ReputationState::*;
    match from {
        None => [Healthy, Warming]
            .into_iter()
            .any(|resting| edge(resting, to, reason)),
        Some(state) => edge(state, to, reason),
    }
}

fn edge(from: ReputationState, to: ReputationState, reason: Reason) -> bool {
    use ReputationState::*;
    match reason {
        Reason::FirstSeen => false,
        Reason::ConclusiveBlockReply
        | Reason::BlockRateOverThreshold
        | Reason::DnsblListed
        | Reason::FeedBlocked
        | Reason::DnsblClaimConfirmed => to == Blocked && from != Blocked,
        Reason::RateLimited => to == Throttled && matches!(from, Healthy | Warming),
        Reason::WindowClean => from == Throttled && matches!(to, Healthy | Warming),
        Reason::PauseReply => to == Throttled && !matches!(from, Blocked),
        Reason::PauseElapsed => from == Throttled && to == Probing,
        Reason::ThrottleStepDown | Reason::ThrottleStepUp => from == Throttled && to == Throttled,
        Reason::ComplaintRate => to == Throttled && matches!(from, Healthy | Warming | Throttled),
        Reason::FeedThrottled => to == Throttled && matches!(from, Healthy | Warming),
        Reason::HoldDownElapsed => from == Blocked && to == Probing,
        Reason::ProbeClean => from == Probing && to == Recovering,
        Reason::RecoveryStep => from == Recovering && to == Recovering,
        Reason::Recovered => from == Recovering && matches!(to, Healthy | Warming),
        Reason::WarmupStarted => from == Healthy && to == Warming,
        Reason::WarmupStep => from == Warming && to == Warming,
        Reason::WarmupComplete => from == Warming && to == Healthy,
        Reason::ManualOverride | Reason::OverrideLifted => from == to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReputationState::*;

    #[test]
    fn reasons_round_trip_as_camel_case_words() {
        for reason in Reason::ALL {
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
            assert_eq!(reason.as_str().parse::<Reason>().unwrap(), reason);
            assert!(reason
                .as_str()
                .starts_with(|c: char| c.is_ascii_uppercase()));
        }
        assert!("Blocked".parse::<Reason>().is_err());
    }

    #[test]
    fn transitions_serialise_with_snake_case_fields() {
        let t = Transition {
            ip: "203.0.113.10".into(),
            provider: "microsoft".into(),
            from: Some(Healthy),
            to: Blocked,
            reason: Reason::ConclusiveBlockReply,
            evidence: Some("550 5.7.606".into()),
            allowance_percent: 0,
            at: "2021-11-05T08:10:00Z".parse().unwrap(),
        };
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["reason"], "ConclusiveBlockReply");
        assert_eq!(json["from"], "Healthy");
        assert_eq!(json["allowance_percent"], 0);
        assert_eq!(serde_json::from_value::<Transition>(json).unwrap(), t);
    }

    #[test]
    fn the_edge_table_matches_the_diagram() {
        assert!(is_allowed_edge(
            Some(Healthy),
            Blocked,
            Reason::ConclusiveBlockReply
        ));
        assert!(is_allowed_edge(None, Blocked, Reason::DnsblListed));
        assert!(is_allowed_edge(None, Warming, Reason::WarmupStarted));
        assert!(is_allowed_edge(
            Some(Recovering),
            Blocked,
            Reason::FeedBlocked
        ));
        assert!(!is_allowed_edge(
            Some(Blocked),
            Blocked,
            Reason::ConclusiveBlockReply
        ));
        assert!(!is_allowed_edge(Some(Blocked), Healthy, Reason::Recovered));
        assert!(!is_allowed_edge(
            Some(Blocked),
            Recovering,
            Reason::ProbeClean
        ));
        assert!(!is_allowed_edge(
            Some(Probing),
            Throttled,
            Reason::RateLimited
        ));
        assert!(is_allowed_edge(
            Some(Blocked),
            Blocked,
            Reason::ManualOverride
        ));
        assert!(!is_allowed_edge(
            Some(Blocked),
            Healthy,
            Reason::ManualOverride
        ));
        assert!(!is_allowed_edge(None, Healthy, Reason::FirstSeen));
    }
}
