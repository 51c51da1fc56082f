//! Applying one feedback report to a [`Fleet`], once: the operator and
//! standalone mode count reports identically.
//!
//! A report is counted only when its `(source_ip, agent.instance, sequence)`
//! is new (docs/FEEDBACK-API.md, Idempotency), and either all of it is
//! counted or none: a report that the fleet refuses leaves the ledger and the
//! pool's status as they were, so the agent can send it again.
//!
//! The ledger is keyed by source IP as well as instance, so a report for one
//! IP can never mark another IP's reports as seen; and a sequence may only
//! move forward by [`MAX_SEQUENCE_STEP`], so one report cannot silence an
//! instance for good by jumping to the largest number. Providers neither
//! builtin nor declared are counted under `other`: made-up names never become
//! new (IP, provider) pairs.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::FeedbackRefusal;
use crate::agent::report::{Admission, FeedbackReport, SequenceLedger};
use crate::fleet::{Fleet, FleetError};
use crate::reputation::engine::{Signal, Transition};
use crate::routing::ip_bound::{self, BoundChange};
use crate::vocab::OTHER_PROVIDER;

/// Agent instances silent for this long are forgotten (a day, as documented).
pub const FORGET_AFTER_SECONDS: i64 = 24 * 3600;

/// How far past the last counted sequence of an (IP, instance) a report may
/// be. An agent numbers its reports one by one, so a larger step is no
/// agent's report.
pub const MAX_SEQUENCE_STEP: u64 = 1_000_000;

/// The sequences counted per agent instance. Persist it together with the
/// pool status it counted into (a receiver that keeps the counts but loses
/// the ledger could count a retried report twice).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FeedbackLedger {
    sequences: SequenceLedger,
}

/// What one report did.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// Counted before: acknowledged, not counted again.
    pub duplicate: bool,
    /// The SenderPool of the report's IP, as `namespace/name`.
    pub pool: String,
    /// The IP as written in that pool's spec.
    pub ip: String,
    /// The reputation moves the report caused.
    pub transitions: Vec<Transition>,
    /// The IP's `IpBound` condition changed status with this report's
    /// binding check ([`crate::routing::ip_bound`]).
    pub ip_bound: Option<BoundChange>,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("source_ip {ip} is not in any SenderPool; add it to a pool's spec.ips or fix the agent's --source-ip")]
    UnknownIp { ip: String },
    #[error("pool is {reported} but {ip} belongs to SenderPool {owner}; fix the agent's --pool")]
    WrongPool {
        ip: String,
        reported: String,
        owner: String,
    },
    #[error("sequence {sequence} is {step} past the last one counted ({last}) for {ip} and agent instance {instance}; reports are numbered one by one, at most {MAX_SEQUENCE_STEP} apart (a new agent instance starts again at 1)")]
    SequenceJump {
        ip: String,
        instance: String,
        sequence: u64,
        last: u64,
        step: u64,
    },
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

/// Whether a report would be counted, before anything is changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// New: counting it changes the fleet.
    New,
    /// Counted before; answering it changes nothing.
    Duplicate,
}

impl LedgerError {
    /// How a receiver answers: a report for an IP or pool the fleet does not
    /// have can never be counted (422); an engine failure may pass (503).
    pub fn refusal(&self) -> FeedbackRefusal {
        match self {
            LedgerError::UnknownIp { .. }
            | LedgerError::WrongPool { .. }
            | LedgerError::SequenceJump { .. } => FeedbackRefusal::Invalid(self.to_string()),
            LedgerError::Fleet(_) => FeedbackRefusal::Unavailable(self.to_string()),
        }
    }
}

impl FeedbackLedger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Continues from a ledger saved earlier.
    pub fn from_sequences(sequences: SequenceLedger) -> Self {
        FeedbackLedger { sequences }
    }

    pub fn sequences(&self) -> &SequenceLedger {
        &self.sequences
    }

    /// What [`apply`](Self::apply) would do with `report`, changing nothing:
    /// the refusal it would answer, or whether the report is new.
    pub fn check(&self, fleet: &Fleet, report: &FeedbackReport) -> Result<Check, LedgerError> {
        let (index, ip) = owner_of(fleet, report)?;
        let owner = pool_name(fleet, index);
        let reported = format!("{}/{}", report.pool.namespace, report.pool.name);
        if reported != owner {
            return Err(LedgerError::WrongPool {
                ip,
                reported,
                owner,
            });
        }
        match self.sequences.last(&ledger_key(report)) {
            Some(last) if report.sequence <= last => Ok(Check::Duplicate),
            Some(last) if report.sequence - last > MAX_SEQUENCE_STEP => {
                Err(LedgerError::SequenceJump {
                    ip,
                    instance: report.agent.instance.clone(),
                    sequence: report.sequence,
                    last,
                    step: report.sequence - last,
                })
            }
            _ => Ok(Check::New),
        }
    }

    /// Counts `report` (which passed `validate`) into `fleet` unless it was
    /// counted before. On error nothing changed.
    pub fn apply(
        &mut self,
        fleet: &mut Fleet,
        report: &FeedbackReport,
        now: Timestamp,
    ) -> Result<Applied, LedgerError> {
        let check = self.check(fleet, report)?;
        let (index, ip) = owner_of(fleet, report)?;
        let owner = pool_name(fleet, index);
        let before = self.sequences.clone();
        if check == Check::Duplicate
            || self
                .sequences
                .admit(&ledger_key(report), report.sequence, now)
                == Admission::Duplicate
        {
            return Ok(Applied {
                duplicate: true,
                pool: owner,
                ip,
                transitions: Vec::new(),
                ip_bound: None,
            });
        }
        if report
            .agent
            .instance
            .starts_with(super::abuse::ABUSE_INSTANCE_PREFIX)
        {
            self.sequences.keep_newest(
                super::abuse::ABUSE_INSTANCE_PREFIX,
                super::abuse::MAX_REMEMBERED_ABUSE_REPORTS,
            );
        }
        let status_before = fleet.pools[index].status.clone();
        let mut transitions = Vec::new();
        let known = known_providers_only(fleet, report);
        let signals = known
            .to_feedback()
            .into_iter()
            .map(Signal::Feedback)
            .chain(known.to_complaints().into_iter().map(Signal::Complaints));
        for signal in signals {
            match fleet.observe(&ip, signal, now) {
                Ok(moves) => transitions.extend(moves),
                Err(err) => {
                    fleet.pools[index].status = status_before;
                    self.sequences = before;
                    return Err(err.into());
                }
            }
        }
        let ip_bound = report.ip_binding.as_ref().and_then(|check| {
            ip_bound::record(&mut fleet.pools[index], &ip, &report.agent.name, check, now)
        });
        Ok(Applied {
            duplicate: false,
            pool: owner,
            ip,
            transitions,
            ip_bound,
        })
    }

    /// Forgets agent instances silent for [`FORGET_AFTER_SECONDS`].
    pub fn expire(&mut self, now: Timestamp) {
        self.sequences.expire(now, FORGET_AFTER_SECONDS);
    }
}

/// Sequences are remembered per (source IP, instance): a report for one IP
/// never touches what another IP's reports count.
fn ledger_key(report: &FeedbackReport) -> String {
    format!("{} {}", report.source_ip, report.agent.instance)
}

fn pool_name(fleet: &Fleet, index: usize) -> String {
    let pool = &fleet.pools[index];
    format!(
        "{}/{}",
        pool.metadata.namespace.as_deref().unwrap_or("default"),
        pool.metadata.name.as_deref().unwrap_or("")
    )
}

/// The report with every provider the fleet does not know (neither builtin
/// nor declared by a route or the user's rules) counted as `other`.
fn known_providers_only<'r>(
    fleet: &Fleet,
    report: &'r FeedbackReport,
) -> std::borrow::Cow<'r, FeedbackReport> {
    let known = |name: &str| {
        fleet.known_providers.iter().any(|p| p == name)
            || fleet.classifier.providers().id_of(name).is_some()
    };
    let all_known = report.totals.iter().all(|t| known(&t.provider))
        && report.conclusive.iter().all(|c| known(&c.provider))
        && report.complaints.iter().all(|c| known(&c.provider));
    if all_known {
        return std::borrow::Cow::Borrowed(report);
    }
    let mut mapped = report.clone();
    for row in &mut mapped.totals {
        if !known(&row.provider) {
            row.provider = OTHER_PROVIDER.to_string();
        }
    }
    for reply in &mut mapped.conclusive {
        if !known(&reply.provider) {
            reply.provider = OTHER_PROVIDER.to_string();
        }
    }
    for row in &mut mapped.complaints {
        if !known(&row.provider) {
            row.provider = OTHER_PROVIDER.to_string();
        }
    }
    std::borrow::Cow::Owned(mapped)
}

/// The pool holding the report's IP, and the IP as its spec writes it. The
/// pool the report names is looked in first: it is the owner unless the
/// agent is misconfigured, and a fleet may hold tens of thousands of IPs.
fn owner_of(fleet: &Fleet, report: &FeedbackReport) -> Result<(usize, String), LedgerError> {
    let named = fleet.pools.iter().position(|p| {
        p.metadata.name.as_deref() == Some(report.pool.name.as_str())
            && p.metadata.namespace.as_deref().unwrap_or("default") == report.pool.namespace
    });
    let others = (0..fleet.pools.len()).filter(|i| Some(*i) != named);
    for index in named.into_iter().chain(others) {
        let pool = &fleet.pools[index];
        for ip in &pool.spec.ips {
            if ip.address.trim().parse().ok() == Some(report.source_ip) {
                return Ok((index, ip.address.clone()));
            }
        }
    }
    Err(LedgerError::UnknownIp {
        ip: report.source_ip.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::report::{ConclusiveEvidence, TotalCount};
    use crate::api::ReputationState;
    use crate::vocab::{Category, Outcome};
    use std::path::Path;

    fn now() -> Timestamp {
        "2026-11-29T08:10:00Z".parse().unwrap()
    }

    fn fleet() -> Fleet {
        let m = crate::manifests::load_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet"),
        )
        .unwrap();
        let mut fleet = Fleet::new(m, None).unwrap();
        fleet.advance(now()).unwrap();
        fleet
    }

    fn blocked_report(ip: &str, sequence: u64) -> FeedbackReport {
        let reply = format!("550 5.7.606 Access denied, banned sending IP [{ip}]");
        FeedbackReport {
            totals: vec![TotalCount {
                provider: "microsoft".into(),
                outcome: Outcome::Deferred,
                category: Category::IpBlocklisted,
                count: 1,
            }],
            conclusive: vec![ConclusiveEvidence {
                provider: "microsoft".into(),
                reply,
                at: now(),
                named_ip: ip.parse().ok(),
                pause_seconds: None,
            }],
            ..FeedbackReport::counting_nothing(ip, sequence, now())
        }
    }

    fn state_of(fleet: &Fleet, ip: &str, provider: &str) -> Option<ReputationState> {
        fleet
            .pools
            .iter()
            .filter_map(|p| p.status.as_ref())
            .flat_map(|s| s.ips.iter())
            .find(|s| s.address == ip)?
            .reputation
            .iter()
            .find(|r| r.provider == provider)
            .map(|r| r.state)
    }

    #[test]
    fn a_conclusive_report_blocks_once_and_its_retry_is_a_duplicate() {
        let mut fleet = fleet();
        let mut ledger = FeedbackLedger::new();
        let report = blocked_report("203.0.113.12", 1);
        let applied = ledger.apply(&mut fleet, &report, now()).unwrap();
        assert!(!applied.duplicate);
        assert_eq!(applied.pool, "mail/bulk");
        assert_eq!(applied.ip, "203.0.113.12");
        assert!(applied
            .transitions
            .iter()
            .any(|t| t.provider == "microsoft" && t.to == ReputationState::Blocked));
        assert_eq!(
            state_of(&fleet, "203.0.113.12", "microsoft"),
            Some(ReputationState::Blocked)
        );
        let status = fleet.pools[0].status.clone();
        let again = ledger.apply(&mut fleet, &report, now()).unwrap();
        assert!(again.duplicate && again.transitions.is_empty());
        assert_eq!(
            fleet.pools[0].status, status,
            "a duplicate changed the status"
        );
        assert!(
            !ledger
                .apply(&mut fleet, &blocked_report("203.0.113.12", 2), now())
                .unwrap()
                .duplicate
        );
    }

    #[test]
    fn a_bind_check_sets_ip_bound_and_an_unbound_ip_carries_no_route() {
        let mut fleet = fleet();
        let set_mode = |fleet: &mut Fleet, mode: crate::api::BindMode| {
            for pool in &mut fleet.pools {
                if pool.metadata.name.as_deref() == Some("bulk") {
                    pool.spec.ip_binding.mode = mode;
                }
            }
        };
        set_mode(&mut fleet, crate::api::BindMode::Bind);
        let mut ledger = FeedbackLedger::new();
        let ip = "203.0.113.10";
        let carries = |fleet: &Fleet| {
            fleet
                .compile(now())
                .routes
                .iter()
                .any(|r| r.target("bulk", ip).is_some())
        };
        assert!(carries(&fleet));
        let check = |bound: bool| crate::agent::report::IpBindingReport {
            address: ip.parse().unwrap(),
            bound,
            detail: (!bound).then(|| "Cannot assign requested address (os error 99)".into()),
        };
        let mut report = blocked_report(ip, 1);
        report.totals.clear();
        report.conclusive.clear();
        report.ip_binding = Some(check(false));
        let applied = ledger.apply(&mut fleet, &report, now()).unwrap();
        let change = applied.ip_bound.expect("the condition is new");
        assert_eq!(change.bound, Some(false));
        assert!(
            change.message.contains("spec.ips[0].address"),
            "{}",
            change.message
        );
        assert!(
            !carries(&fleet),
            "an IP its senders cannot bind sends nothing"
        );
        // The agent's next report says the same: no change.
        report.sequence = 2;
        assert_eq!(
            ledger.apply(&mut fleet, &report, now()).unwrap().ip_bound,
            None
        );
        report.sequence = 3;
        report.ip_binding = Some(check(true));
        let applied = ledger.apply(&mut fleet, &report, now()).unwrap();
        assert_eq!(applied.ip_bound.unwrap().bound, Some(true));
        assert!(carries(&fleet));
        // Under Snat the address is on the gateway: the condition goes.
        set_mode(&mut fleet, crate::api::BindMode::Snat);
        report.sequence = 4;
        report.ip_binding = Some(check(false));
        let applied = ledger.apply(&mut fleet, &report, now()).unwrap();
        assert_eq!(applied.ip_bound.unwrap().bound, None);
        assert!(carries(&fleet));
    }

    #[test]
    fn an_unknown_ip_or_a_wrong_pool_is_refused_and_not_admitted() {
        let mut fleet = fleet();
        let mut ledger = FeedbackLedger::new();
        let err = ledger
            .apply(&mut fleet, &blocked_report("192.0.2.1", 1), now())
            .unwrap_err();
        assert!(matches!(err.refusal(), FeedbackRefusal::Invalid(_)));
        assert!(err.to_string().contains("192.0.2.1"), "{err}");
        let mut wrong = blocked_report("203.0.113.12", 1);
        wrong.pool.name = "reserve".into();
        let err = ledger.apply(&mut fleet, &wrong, now()).unwrap_err();
        assert!(
            err.to_string().contains("mail/reserve") && err.to_string().contains("mail/bulk"),
            "{err}"
        );
        assert!(
            ledger.sequences().is_empty(),
            "a refused report was admitted"
        );
        let applied = ledger
            .apply(&mut fleet, &blocked_report("203.0.113.12", 1), now())
            .unwrap();
        assert!(!applied.duplicate);
    }

    #[test]
    fn the_ledger_survives_serialisation_and_expires_silent_instances() {
        let mut fleet = fleet();
        let mut ledger = FeedbackLedger::new();
        ledger
            .apply(&mut fleet, &blocked_report("203.0.113.12", 3), now())
            .unwrap();
        let text = serde_json::to_string(&ledger).unwrap();
        let mut restored: FeedbackLedger = serde_json::from_str(&text).unwrap();
        assert!(
            restored
                .apply(&mut fleet, &blocked_report("203.0.113.12", 3), now())
                .unwrap()
                .duplicate
        );
        restored.expire(now() + jiff::SignedDuration::from_secs(FORGET_AFTER_SECONDS + 1));
        assert!(restored.sequences().is_empty());
    }

    #[test]
    fn a_sequence_jump_is_refused_and_one_ip_never_silences_another() {
        let mut fleet = fleet();
        let mut ledger = FeedbackLedger::new();
        ledger
            .apply(&mut fleet, &blocked_report("203.0.113.11", 1), now())
            .unwrap();
        let jump = blocked_report("203.0.113.11", u64::MAX);
        let err = ledger.apply(&mut fleet, &jump, now()).unwrap_err();
        assert!(
            matches!(err, LedgerError::SequenceJump { last: 1, .. }),
            "{err}"
        );
        assert!(matches!(err.refusal(), FeedbackRefusal::Invalid(_)));
        let next = ledger
            .apply(&mut fleet, &blocked_report("203.0.113.11", 2), now())
            .unwrap();
        assert!(!next.duplicate, "a refused jump moved the ledger");
        // The same instance name reporting for another IP is its own sequence:
        // a high number for .11 does not make .12's reports duplicates.
        ledger
            .apply(&mut fleet, &blocked_report("203.0.113.11", 900_000), now())
            .unwrap();
        let other = ledger
            .apply(&mut fleet, &blocked_report("203.0.113.12", 1), now())
            .unwrap();
        assert!(!other.duplicate);
        assert!(other
            .transitions
            .iter()
            .any(|t| t.to == ReputationState::Blocked));
    }

    #[test]
    fn complaints_in_a_report_reach_the_pair_and_throttle_it_over_the_threshold() {
        let mut fleet = fleet();
        let mut ledger = FeedbackLedger::new();
        let mut report = blocked_report("203.0.113.12", 1);
        report.conclusive.clear();
        report.totals = vec![TotalCount {
            provider: "yahoo".into(),
            outcome: Outcome::Delivered,
            category: Category::None,
            count: 2000,
        }];
        report.complaints = vec![crate::agent::report::ComplaintCount {
            provider: "yahoo".into(),
            count: 7,
        }];
        report.validate().unwrap();
        let applied = ledger.apply(&mut fleet, &report, now()).unwrap();
        assert!(
            applied
                .transitions
                .iter()
                .any(|t| t.provider == "yahoo" && t.reason.as_str() == "ComplaintRate"),
            "{:?}",
            applied.transitions
        );
        assert_eq!(
            state_of(&fleet, "203.0.113.12", "yahoo"),
            Some(ReputationState::Throttled)
        );
        // A retry counts nothing twice.
        let status = fleet.pools[0].status.clone();
        assert!(ledger.apply(&mut fleet, &report, now()).unwrap().duplicate);
        assert_eq!(fleet.pools[0].status, status);
        // A made-up provider's complaints go to `other`.
        let mut odd = blocked_report("203.0.113.12", 2);
        odd.conclusive.clear();
        odd.totals.clear();
        odd.complaints = vec![crate::agent::report::ComplaintCount {
            provider: "made-up".into(),
            count: 1,
        }];
        ledger.apply(&mut fleet, &odd, now()).unwrap();
        let ip = fleet.pools[0]
            .status
            .as_ref()
            .unwrap()
            .ips
            .iter()
            .find(|s| s.address == "203.0.113.12")
            .unwrap();
        assert!(ip.pair("made-up").is_none());
        assert_eq!(
            ip.pair("other")
                .unwrap()
                .complaint_rate
                .as_ref()
                .unwrap()
                .complaints,
            1
        );
    }

    #[test]
    fn made_up_providers_are_counted_as_other_and_make_no_pairs() {
        let mut fleet = fleet();
        let mut ledger = FeedbackLedger::new();
        let pairs = |fleet: &Fleet| -> usize {
            fleet
                .pools
                .iter()
                .filter_map(|p| p.status.as_ref())
                .flat_map(|s| s.ips.iter())
                .map(|i| i.reputation.len())
                .sum()
        };
        let before = pairs(&fleet);
        let mut report = blocked_report("203.0.113.10", 1);
        report.conclusive.clear();
        report.totals = (0..4096)
            .map(|i| TotalCount {
                provider: format!("made-up-{i}"),
                outcome: Outcome::Delivered,
                category: Category::None,
                count: 1,
            })
            .collect();
        report.validate().unwrap();
        ledger.apply(&mut fleet, &report, now()).unwrap();
        let providers: std::collections::BTreeSet<String> = fleet
            .pools
            .iter()
            .filter_map(|p| p.status.as_ref())
            .flat_map(|s| s.ips.iter())
            .flat_map(|i| i.reputation.iter().map(|r| r.provider.clone()))
            .collect();
        assert!(
            providers.iter().all(|p| !p.starts_with("made-up")),
            "{providers:?}"
        );
        assert!(
            pairs(&fleet) <= before.max(1) * 2,
            "{} pairs",
            pairs(&fleet)
        );
    }

    #[test]
    fn an_ipv6_report_matches_the_spec_written_differently() {
        let mut fleet = fleet();
        fleet.pools[0].spec.ips[0].address = "2001:DB8:0::10".into();
        let mut report = blocked_report("2001:db8::10", 1);
        report.conclusive[0].reply =
            "550 5.7.606 Access denied, banned sending IP [2001:db8::10]".into();
        let applied = FeedbackLedger::new()
            .apply(&mut fleet, &report, now())
            .unwrap();
        assert_eq!(applied.ip, "2001:DB8:0::10");
    }
}
