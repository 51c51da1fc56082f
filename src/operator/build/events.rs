//! Kubernetes Events from what changed: the reputation engine's transitions
//! (on the SenderPool), route changes (on the DomainRoute) and validation
//! problems. The runtime publishes them; here only their words are decided.
//!
//! | reason | type | when |
//! |---|---|---|
//! | `IpBlocked` | Warning | a pair enters Blocked (note: IP, provider, cause, evidence, hold-down) |
//! | `IpProbing` | Normal | hold-down over, the trickle starts |
//! | `IpRecovering` | Normal | clean probe, or a recovery step |
//! | `IpRecovered` | Normal | back to full volume |
//! | `IpThrottled` / `IpUnthrottled` | Warning / Normal | rate limiting or a complaint rate over its threshold starts / ends |
//! | `WarmupProgress` | Normal | warm-up starts, steps or completes |
//! | `OverrideApplied` / `OverrideLifted` | Normal | a manual override takes or leaves effect |
//! | `FallbackEngaged` | Warning | a route moves to a fallback pool |
//! | `RelayEngaged` | Warning | a route moves to its relay |
//! | `RouteDeferred` | Warning | a route defers its mail |
//! | `RouteRestored` | Normal | a route is back on its own pool |
//! | `RouteRewritten` | Normal | same mode, other targets |
//! | `UnreadableStatus` | Warning | a stored status could not be read in full and was rewritten (note: each field and why) |
//! | `QueueAging` | Warning | a route's oldest queued message has used half of its lifetime |
//! | `Drained` / `DrainIncomplete` | Normal / Warning | a stopping sender handed on all / not all of its queue |
//! | `IpNotBound` / `IpBound` | Warning / Normal | a sender reports that its `Bind` address is not / is again on an interface (note: the field and the fix) |
//! | validation reasons | Warning | see [`super::validate`] |

use crate::api::{ReputationState, RouteMode};
use crate::reputation::engine::{Reason, Transition};
use crate::routing::model::mode_name;
use crate::routing::{ObjectKey, RouteResult, RouteTable};

use super::validate::ObjectProblem;

/// Kubernetes caps an event note at 1 KiB.
pub const MAX_NOTE_BYTES: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// One event to publish about `regarding`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// `SenderPool` or `DomainRoute`.
    pub kind: &'static str,
    pub regarding: ObjectKey,
    pub type_: EventType,
    /// CamelCase reason.
    pub reason: String,
    /// CamelCase action (`Reputation`, `Route`, `Validate`).
    pub action: &'static str,
    /// A sentence for a person, at most [`MAX_NOTE_BYTES`].
    pub note: String,
}

fn truncate(mut note: String) -> String {
    if note.len() > MAX_NOTE_BYTES {
        let mut cut = MAX_NOTE_BYTES - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}

/// The warning that a stored status was read in part and rewritten.
pub fn unreadable_status_event(
    kind: &'static str,
    regarding: &ObjectKey,
    unreadable: &crate::api::unreadable::UnreadableStatus,
) -> EventRecord {
    EventRecord {
        kind,
        regarding: regarding.clone(),
        type_: EventType::Warning,
        reason: "UnreadableStatus".to_string(),
        action: "Repair",
        note: truncate(format!(
            "{kind} {regarding}: {}; written by another operator version or by hand? The operator keeps what it could read and rewrites the status.",
            unreadable.summary()
        )),
    }
}

/// Events for the transitions of one pool's pairs.
pub fn transition_events(pool: &ObjectKey, transitions: &[Transition]) -> Vec<EventRecord> {
    transitions
        .iter()
        .map(|t| {
            let from = t.from.map_or("no record".to_string(), |s| s.to_string());
            let evidence = t
                .evidence
                .as_deref()
                .map(|e| format!("; evidence: {e}"))
                .unwrap_or_default();
            let (type_, reason, what) = match (t.to, t.reason) {
                (ReputationState::Blocked, _) => (
                    EventType::Warning,
                    "IpBlocked",
                    format!(
                        "{} blocks {}: routes for {} send around it",
                        t.provider, t.ip, t.provider
                    ),
                ),
                (ReputationState::Probing, _) => (
                    EventType::Normal,
                    "IpProbing",
                    format!(
                        "{} may send a {}% trickle to {} to see whether it is delisted",
                        t.ip, t.allowance_percent, t.provider
                    ),
                ),
                (ReputationState::Recovering, _) => (
                    EventType::Normal,
                    "IpRecovering",
                    format!(
                        "{} sends {}% of its volume to {}",
                        t.ip, t.allowance_percent, t.provider
                    ),
                ),
                (ReputationState::Throttled, Reason::PauseReply) => (
                    EventType::Warning,
                    "IpPaused",
                    format!(
                        "{} asked {} to pause: it sends {} nothing, then probes",
                        t.provider, t.ip, t.provider
                    ),
                ),
                (ReputationState::Throttled, Reason::FeedThrottled) => (
                    EventType::Warning,
                    "IpThrottled",
                    format!(
                        "{}'s feed scores mail from {} badly: allowance {}%",
                        t.provider, t.ip, t.allowance_percent
                    ),
                ),
                (ReputationState::Throttled, Reason::ComplaintRate) => (
                    EventType::Warning,
                    "IpThrottled",
                    format!(
                        "{} users complain of mail from {}: allowance {}%",
                        t.provider, t.ip, t.allowance_percent
                    ),
                ),
                (ReputationState::Throttled, _) => (
                    EventType::Warning,
                    "IpThrottled",
                    format!(
                        "{} rate-limits {}: allowance {}%",
                        t.provider, t.ip, t.allowance_percent
                    ),
                ),
                (_, Reason::Recovered) => (
                    EventType::Normal,
                    "IpRecovered",
                    format!("{} is back to full volume with {}", t.ip, t.provider),
                ),
                (_, Reason::WindowClean) => (
                    EventType::Normal,
                    "IpUnthrottled",
                    format!("{} no longer rate-limits {}", t.provider, t.ip),
                ),
                (_, Reason::ManualOverride) => (
                    EventType::Normal,
                    "OverrideApplied",
                    format!(
                        "a manual override caps {} at {}% for {}",
                        t.ip, t.allowance_percent, t.provider
                    ),
                ),
                (_, Reason::OverrideLifted) => (
                    EventType::Normal,
                    "OverrideLifted",
                    format!(
                        "the manual override of {} for {} is lifted",
                        t.ip, t.provider
                    ),
                ),
                _ => (
                    EventType::Normal,
                    "WarmupProgress",
                    format!(
                        "{} warm-up with {}: allowance {}%",
                        t.ip, t.provider, t.allowance_percent
                    ),
                ),
            };
            EventRecord {
                kind: "SenderPool",
                regarding: pool.clone(),
                type_,
                reason: reason.to_string(),
                action: "Reputation",
                note: truncate(format!(
                    "{what} ({from} -> {}, {}){evidence}",
                    t.to, t.reason
                )),
            }
        })
        .collect()
}

/// The event a stopping sender's drain gets on its pool: what it handed on,
/// and, when mail was left, how much goes with the pod.
pub fn drain_event(
    pool: &ObjectKey,
    pod: &str,
    ip: &str,
    drain: &crate::agent::report::DrainReport,
) -> EventRecord {
    let seconds = drain.took_ms as f64 / 1000.0;
    let handed = drain.queued_at_start.saturating_sub(drain.left);
    let (type_, reason, note) = if drain.left == 0 {
        (
            EventType::Normal,
            "Drained",
            format!(
                "sender pod {pod} ({ip}) stopped and handed its {} queued message(s) to {} in {seconds:.1}s",
                drain.queued_at_start, drain.to
            ),
        )
    } else {
        (
            EventType::Warning,
            "DrainIncomplete",
            format!(
                "sender pod {pod} ({ip}) stopped with {} of {} queued message(s) still in its queue: they could not be handed to {} within {seconds:.0}s ({handed} were) and went with the pod. Check that the pool's other senders were up and reachable on its intake Service",
                drain.left, drain.queued_at_start, drain.to
            ),
        )
    };
    EventRecord {
        kind: "SenderPool",
        regarding: pool.clone(),
        type_,
        reason: reason.to_string(),
        action: "Drain",
        note: truncate(note),
    }
}

/// The event of an IP whose `IpBound` condition changed status; `None` when
/// the condition was removed (the pool moved to `Snat`).
pub fn ip_bound_event(
    pool: &ObjectKey,
    change: &crate::routing::ip_bound::BoundChange,
) -> Option<EventRecord> {
    let (type_, reason) = match change.bound? {
        false => (EventType::Warning, "IpNotBound"),
        true => (EventType::Normal, "IpBound"),
    };
    Some(EventRecord {
        kind: "SenderPool",
        regarding: pool.clone(),
        type_,
        reason: reason.to_string(),
        action: "Bind",
        note: truncate(change.message.clone()),
    })
}

fn targets_text(route: &RouteResult) -> String {
    if route.targets.is_empty() {
        return "no IP".to_string();
    }
    route
        .targets
        .iter()
        .map(|t| format!("{} ({})", t.ip, t.state))
        .collect::<Vec<_>>()
        .join(", ")
}

fn excluded_text(route: &RouteResult) -> String {
    let blocked: Vec<String> = route
        .excluded
        .iter()
        .filter(|e| e.state == ReputationState::Blocked)
        .map(|e| format!("{}/{}", e.pool, e.ip))
        .collect();
    if blocked.is_empty() {
        String::new()
    } else {
        format!("; {} blocks {}", route.provider, blocked.join(", "))
    }
}

/// The event for one route whose result changed (`before` is `None` for a
/// new route, which gets an event only when it does not start on its pool).
pub fn route_event(before: Option<&RouteResult>, after: &RouteResult) -> Option<EventRecord> {
    let mode_changed =
        before.is_none_or(|b| b.mode != after.mode || b.serving_pool != after.serving_pool);
    let targets_changed =
        before.is_none_or(|b| b.targets != after.targets || b.relay != after.relay);
    if !mode_changed && !targets_changed {
        return None;
    }
    if before.is_none() && after.mode == RouteMode::Primary {
        return None;
    }
    let name = &after.key;
    let (type_, reason, note) = if mode_changed {
        match after.mode {
            RouteMode::Primary => (
                EventType::Normal,
                "RouteRestored",
                format!(
                    "route {name} is back on its pool {}: {}",
                    after.pool,
                    targets_text(after)
                ),
            ),
            RouteMode::FallbackPool => (
                EventType::Warning,
                "FallbackEngaged",
                format!(
                    "no IP of pool {} may send to {}: fallback pool {} carries route {name}: {}{}",
                    after.pool,
                    after.provider,
                    after.serving_pool.as_deref().unwrap_or("?"),
                    targets_text(after),
                    excluded_text(after)
                ),
            ),
            RouteMode::Relay => (
                EventType::Warning,
                "RelayEngaged",
                format!(
                    "no pool may send route {name} to {}: relay {} carries it{}",
                    after.provider,
                    after
                        .relay
                        .as_ref()
                        .map_or("?".to_string(), |r| r.address()),
                    excluded_text(after)
                ),
            ),
            RouteMode::Defer => (
                EventType::Warning,
                "RouteDeferred",
                format!(
                    "no IP may send route {name} to {}: its mail stays queued until one may{}",
                    after.provider,
                    excluded_text(after)
                ),
            ),
        }
    } else {
        (
            EventType::Normal,
            "RouteRewritten",
            format!(
                "route {name} ({}) now sends through {}{}",
                mode_name(after.mode),
                targets_text(after),
                excluded_text(after)
            ),
        )
    };
    Some(EventRecord {
        kind: "DomainRoute",
        regarding: after.key.clone(),
        type_,
        reason: reason.to_string(),
        action: "Route",
        note: truncate(note),
    })
}

/// Events for every route whose result differs between two tables.
pub fn route_table_events(before: Option<&RouteTable>, after: &RouteTable) -> Vec<EventRecord> {
    after
        .routes
        .iter()
        .filter_map(|route| {
            let old = before.and_then(|b| b.route(&route.key.namespace, &route.key.name));
            route_event(old, route)
        })
        .collect()
}

/// Warning events for validation problems of one object.
pub fn problem_events(
    kind: &'static str,
    regarding: &ObjectKey,
    problems: &[ObjectProblem],
) -> Vec<EventRecord> {
    problems
        .iter()
        .map(|p| EventRecord {
            kind,
            regarding: regarding.clone(),
            type_: EventType::Warning,
            reason: p.reason.to_string(),
            action: "Validate",
            note: truncate(format!("{}: {}", p.field, p.message)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::build::fixtures::{fleet, now};
    use crate::routing::compile;
    use crate::routing::example::{pair, set_pair};

    fn transition(to: ReputationState, reason: Reason) -> Transition {
        Transition {
            ip: "203.0.113.13".into(),
            provider: "microsoft".into(),
            from: Some(ReputationState::Healthy),
            to,
            reason,
            evidence: Some("550 5.7.606 Access denied, banned sending IP [203.0.113.13]".into()),
            allowance_percent: 0,
            at: now(),
        }
    }

    #[test]
    fn a_drain_that_left_mail_is_a_warning_with_the_count() {
        let mut drain = crate::agent::report::DrainReport {
            to: "mf-pool-bulk.mail.svc:25".into(),
            queued_at_start: 1000,
            left: 0,
            took_ms: 3_400,
        };
        let pool = ObjectKey::new("mail", "bulk");
        let done = drain_event(&pool, "bulk-0", "203.0.113.10", &drain);
        assert_eq!(
            (done.type_, done.reason.as_str()),
            (EventType::Normal, "Drained")
        );
        assert!(
            done.note
                .contains("1000 queued message(s) to mf-pool-bulk.mail.svc:25 in 3.4s"),
            "{}",
            done.note
        );
        drain.left = 7;
        let left = drain_event(&pool, "bulk-0", "203.0.113.10", &drain);
        assert_eq!(
            (left.type_, left.reason.as_str()),
            (EventType::Warning, "DrainIncomplete")
        );
        assert!(left.note.contains("7 of 1000"), "{}", left.note);
    }

    #[test]
    fn a_block_is_a_warning_naming_ip_provider_and_evidence() {
        let events = transition_events(
            &ObjectKey::new("mail", "bulk"),
            &[transition(
                ReputationState::Blocked,
                Reason::ConclusiveBlockReply,
            )],
        );
        let e = &events[0];
        assert_eq!(
            (e.kind, e.type_, e.reason.as_str()),
            ("SenderPool", EventType::Warning, "IpBlocked")
        );
        assert!(
            e.note.contains("microsoft blocks 203.0.113.13"),
            "{}",
            e.note
        );
        assert!(e.note.contains("ConclusiveBlockReply"));
        assert!(e.note.contains("banned sending IP [203.0.113.13]"));
    }

    #[test]
    fn recovery_and_other_moves_have_their_reasons() {
        let mut recovered = transition(ReputationState::Healthy, Reason::Recovered);
        recovered.from = Some(ReputationState::Recovering);
        let cases = [
            (
                transition(ReputationState::Probing, Reason::HoldDownElapsed),
                "IpProbing",
            ),
            (
                transition(ReputationState::Recovering, Reason::ProbeClean),
                "IpRecovering",
            ),
            (recovered, "IpRecovered"),
            (
                transition(ReputationState::Throttled, Reason::RateLimited),
                "IpThrottled",
            ),
            (
                transition(ReputationState::Healthy, Reason::WindowClean),
                "IpUnthrottled",
            ),
            (
                transition(ReputationState::Throttled, Reason::PauseReply),
                "IpPaused",
            ),
            (
                transition(ReputationState::Throttled, Reason::ThrottleStepDown),
                "IpThrottled",
            ),
            (
                transition(ReputationState::Throttled, Reason::ComplaintRate),
                "IpThrottled",
            ),
            (
                transition(ReputationState::Healthy, Reason::ManualOverride),
                "OverrideApplied",
            ),
            (
                transition(ReputationState::Warming, Reason::WarmupStep),
                "WarmupProgress",
            ),
        ];
        for (t, reason) in cases {
            let events = transition_events(&ObjectKey::new("mail", "bulk"), &[t]);
            assert_eq!(events[0].reason, reason);
        }
    }

    #[test]
    fn route_changes_engage_fallback_then_relay_then_restore() {
        let (mut pools, routes) = fleet();
        let first = compile(&pools, &routes, now());
        assert!(
            route_table_events(None, &first).is_empty(),
            "all on their pools"
        );
        assert!(route_table_events(Some(&first), &first).is_empty());

        set_pair(
            &mut pools[0],
            "203.0.113.10",
            pair("google", ReputationState::Blocked, 0, now()),
        );
        let rewritten = compile(&pools, &routes, now());
        let events = route_table_events(Some(&first), &rewritten);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].reason, "RouteRewritten");
        assert_eq!(events[0].regarding, ObjectKey::new("mail", "google"));
        assert!(
            events[0].note.contains("google blocks bulk/203.0.113.10"),
            "{}",
            events[0].note
        );

        for ip in (10..18).map(|i| format!("203.0.113.{i}")) {
            set_pair(
                &mut pools[0],
                &ip,
                pair("microsoft", ReputationState::Blocked, 0, now()),
            );
        }
        let fallback = compile(&pools, &routes, now());
        let events = route_table_events(Some(&rewritten), &fallback);
        let microsoft = events
            .iter()
            .find(|e| e.regarding.name == "microsoft")
            .unwrap();
        assert_eq!(
            (microsoft.type_, microsoft.reason.as_str()),
            (EventType::Warning, "FallbackEngaged")
        );
        assert!(
            microsoft.note.contains("fallback pool reserve"),
            "{}",
            microsoft.note
        );

        for ip in ["198.51.100.20", "198.51.100.21"] {
            set_pair(
                &mut pools[1],
                ip,
                pair("microsoft", ReputationState::Blocked, 0, now()),
            );
        }
        let relay = compile(&pools, &routes, now());
        let events = route_table_events(Some(&fallback), &relay);
        let reasons: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e.regarding.name.as_str(), e.reason.as_str()))
            .collect();
        assert!(
            reasons.contains(&("microsoft", "RelayEngaged")),
            "{reasons:?}"
        );
        assert!(
            reasons.contains(&("microsoft-365", "RouteDeferred")),
            "{reasons:?}"
        );

        let restored = route_table_events(Some(&relay), &first);
        assert!(restored
            .iter()
            .any(|e| e.regarding.name == "microsoft" && e.reason == "RouteRestored"));
    }

    #[test]
    fn notes_are_capped_at_one_kib_on_a_char_boundary() {
        let mut t = transition(ReputationState::Blocked, Reason::ConclusiveBlockReply);
        t.evidence = Some("é".repeat(2000));
        let events = transition_events(&ObjectKey::new("mail", "bulk"), &[t]);
        assert!(events[0].note.len() <= MAX_NOTE_BYTES);
        assert!(events[0].note.ends_with("..."));
    }

    #[test]
    fn problems_become_warnings_naming_the_field() {
        let problems = [ObjectProblem {
            reason: "PoolNotFound",
            field: "spec.pool".into(),
            message: "spec.pool names SenderPool mail/x, which does not exist".into(),
        }];
        let events = problem_events("DomainRoute", &ObjectKey::new("mail", "r"), &problems);
        assert_eq!(events[0].type_, EventType::Warning);
        assert!(events[0].note.starts_with("spec.pool: "));
    }
}
