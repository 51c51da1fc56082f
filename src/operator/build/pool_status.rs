//! SenderPool status besides reputation: per-IP replicas, the counts
//! `kubectl get sp` shows, `observedGeneration` and the conditions Ready,
//! Degraded and Progressing. The reputation (per-IP `reputation`, `dnsbl`,
//! `feeds`) is the engine's and passes through unchanged.
//!
//! - Ready: True when every IP has as many ready pods as desired and the pool
//!   is usable; False with the validation reason, or `IpsNotReady` naming them.
//! - Degraded: True when any (IP, provider) pair is Blocked, naming them.
//! - Progressing: True while a Deployment rolls out or scales.
//! - Accepted: from the fleet validation ([`set_accepted`]).

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;

use crate::api::conditions::set_condition;
use crate::api::{IpStatus, ReputationState, SenderPool, SenderPoolStatus};

use super::same_address;
use super::validate::{set_accepted, ObjectProblem};

/// What the cluster shows for one IP's Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpWorkload {
    /// The address as the spec writes it.
    pub address: String,
    /// What the operator asked for.
    pub desired_replicas: i32,
    /// `status.readyReplicas` of the Deployment (0 when it does not exist yet).
    pub ready_replicas: i32,
    /// The Deployment runs its current template everywhere: its
    /// `status.observedGeneration` reached `metadata.generation` and
    /// `status.updatedReplicas` equals the desired replicas.
    pub rolled_out: bool,
}

impl IpWorkload {
    /// The workload of `address` from its Deployment as the cluster shows it
    /// (`None`: not created yet).
    pub fn from_deployment(
        address: &str,
        desired_replicas: i32,
        deployment: Option<&Deployment>,
    ) -> Self {
        let status = deployment.and_then(|d| d.status.as_ref());
        let generation = deployment.and_then(|d| d.metadata.generation);
        let observed = status.and_then(|s| s.observed_generation);
        let current = match (generation, observed) {
            (Some(g), Some(o)) => o >= g,
            _ => false,
        };
        let updated = status.and_then(|s| s.updated_replicas).unwrap_or(0);
        let total = status.and_then(|s| s.replicas).unwrap_or(0);
        IpWorkload {
            address: address.to_string(),
            desired_replicas,
            ready_replicas: status.and_then(|s| s.ready_replicas).unwrap_or(0),
            rolled_out: deployment.is_some()
                && current
                && updated == desired_replicas
                && total == desired_replicas,
        }
    }
}

/// How many IPs a condition message names before it only counts.
const NAMED_IN_MESSAGE: usize = 10;

fn listing(items: &[String]) -> String {
    let shown: Vec<&str> = items
        .iter()
        .take(NAMED_IN_MESSAGE)
        .map(String::as_str)
        .collect();
    let more = items.len().saturating_sub(NAMED_IN_MESSAGE);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// The pool's status from its current status (reputation kept), the IPs'
/// workloads and the fleet validation's problems for this pool (empty when
/// none; `unusable` says the pool's objects are not managed).
pub fn pool_status(
    pool: &SenderPool,
    workloads: &[IpWorkload],
    problems: &[ObjectProblem],
    unusable: bool,
    now: Timestamp,
) -> SenderPoolStatus {
    let previous = pool.status.clone().unwrap_or_default();
    let generation = pool.metadata.generation;
    let mut status = SenderPoolStatus {
        observed_generation: generation,
        conditions: previous.conditions.clone(),
        feedback_ledger: previous.feedback_ledger.clone(),
        queues: previous.queues.clone(),
        ips: ip_statuses(pool, &previous, workloads),
        ..SenderPoolStatus::default()
    };
    status.ip_count = i32::try_from(status.ips.len()).unwrap_or(i32::MAX);
    let tally = IpTally::of(&status.ips);
    status.healthy_ips = tally.healthy;
    status.blocked_pairs = i32::try_from(tally.blocked.len()).unwrap_or(i32::MAX);
    status.ready_ips = tally.ready;

    let rolling = rolling_ips(pool, workloads);
    let conditions = [
        ready_condition(unusable, problems, status.ip_count, &tally.not_ready),
        degraded_condition(&tally.blocked),
        progressing_condition(unusable, &rolling, &tally.not_ready),
    ];
    set_accepted(&mut status.conditions, problems, generation, now);
    for condition in conditions {
        set_condition(
            &mut status.conditions,
            condition.type_,
            condition.status.into(),
            &condition.reason,
            condition.message,
            generation,
            now,
        );
    }
    status
}

/// One IP status per spec IP: the previous one (reputation kept) with the
/// replicas of its workload.
fn ip_statuses(
    pool: &SenderPool,
    previous: &SenderPoolStatus,
    workloads: &[IpWorkload],
) -> Vec<IpStatus> {
    pool.spec
        .ips
        .iter()
        .map(|ip| {
            let mut ip_status = previous
                .ips
                .iter()
                .find(|s| same_address(&s.address, &ip.address))
                .cloned()
                .unwrap_or_else(|| IpStatus::new(ip.address.clone()));
            ip_status.address = ip.address.clone();
            let workload = workloads
                .iter()
                .find(|w| same_address(&w.address, &ip.address));
            ip_status.desired_replicas = workload.map_or(0, |w| w.desired_replicas);
            ip_status.ready_replicas = workload.map_or(0, |w| w.ready_replicas);
            ip_status
        })
        .collect()
}

/// The counts and names the conditions and `kubectl get sp` show.
struct IpTally {
    /// IPs none of whose pairs is throttled or blocked.
    healthy: i32,
    /// IPs with at least one ready sender pod.
    ready: i32,
    /// `IP (provider)` of every blocked pair.
    blocked: Vec<String>,
    /// `IP (ready/desired)` of every IP short of ready pods.
    not_ready: Vec<String>,
}

impl IpTally {
    fn of(ips: &[IpStatus]) -> Self {
        let mut tally = IpTally {
            healthy: 0,
            ready: 0,
            blocked: Vec::new(),
            not_ready: Vec::new(),
        };
        for ip in ips {
            let all_healthy = ip
                .reputation
                .iter()
                .all(|r| matches!(r.state, ReputationState::Healthy | ReputationState::Warming));
            if all_healthy {
                tally.healthy += 1;
            }
            for pair in ip
                .reputation
                .iter()
                .filter(|r| r.state == ReputationState::Blocked)
            {
                tally
                    .blocked
                    .push(format!("{} ({})", ip.address, pair.provider));
            }
            if ip.ready_replicas >= 1 {
                tally.ready += 1;
            }
            if ip.ready_replicas < ip.desired_replicas {
                tally.not_ready.push(format!(
                    "{} ({}/{})",
                    ip.address, ip.ready_replicas, ip.desired_replicas
                ));
            }
        }
        tally
    }
}

/// A condition as the pool's status is to show it.
struct ConditionVerdict {
    type_: &'static str,
    status: bool,
    reason: String,
    message: String,
}

fn ready_condition(
    unusable: bool,
    problems: &[ObjectProblem],
    ip_count: i32,
    not_ready: &[String],
) -> ConditionVerdict {
    let (status, reason, message) = if let (true, Some(problem)) = (unusable, problems.first()) {
        (
            false,
            problem.reason,
            format!(
                "the operator does not manage this pool's workloads until it is fixed: {}",
                problem.message
            ),
        )
    } else if not_ready.is_empty() {
        (
            true,
            "AllIpsReady",
            format!("{ip_count} IPs have their desired sender pods ready"),
        )
    } else {
        (
            false,
            "IpsNotReady",
            format!("ready/desired sender pods: {}", listing(not_ready)),
        )
    };
    ConditionVerdict {
        type_: "Ready",
        status,
        reason: reason.to_string(),
        message,
    }
}

fn degraded_condition(blocked: &[String]) -> ConditionVerdict {
    let (reason, message) = if blocked.is_empty() {
        (
            "NoIpBlocked",
            "no provider blocks an IP of this pool".to_string(),
        )
    } else {
        (
            "IpBlocked",
            format!(
                "{} blocked (IP and provider): {}; routes send around them",
                blocked.len(),
                listing(blocked)
            ),
        )
    };
    ConditionVerdict {
        type_: "Degraded",
        status: !blocked.is_empty(),
        reason: reason.to_string(),
        message,
    }
}

/// The spec IPs whose Deployment does not run its current template everywhere.
fn rolling_ips(pool: &SenderPool, workloads: &[IpWorkload]) -> Vec<String> {
    workloads
        .iter()
        .filter(|w| {
            !w.rolled_out
                && pool
                    .spec
                    .ips
                    .iter()
                    .any(|ip| same_address(&ip.address, &w.address))
        })
        .map(|w| w.address.clone())
        .collect()
}

fn progressing_condition(
    unusable: bool,
    rolling: &[String],
    not_ready: &[String],
) -> ConditionVerdict {
    let (status, reason, message) = if unusable {
        (
            false,
            "NotManaged",
            "no rollout while the pool is unusable".to_string(),
        )
    } else if rolling.is_empty() && not_ready.is_empty() {
        (
            false,
            "RolledOut",
            "every IP runs its current template".to_string(),
        )
    } else if rolling.is_empty() {
        (
            true,
            "PodsStarting",
            format!("waiting for sender pods of {}", listing(not_ready)),
        )
    } else {
        (
            true,
            "RollingOut",
            format!("rolling out or scaling: {}", listing(rolling)),
        )
    };
    ConditionVerdict {
        type_: "Progressing",
        status,
        reason: reason.to_string(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Condition, ConditionStatus};
    use crate::operator::build::fixtures::{fleet, now};

    fn workloads(pool: &SenderPool, ready: i32) -> Vec<IpWorkload> {
        pool.spec
            .ips
            .iter()
            .map(|ip| IpWorkload {
                address: ip.address.clone(),
                desired_replicas: 2,
                ready_replicas: ready,
                rolled_out: true,
            })
            .collect()
    }

    fn condition<'a>(status: &'a SenderPoolStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn counts_replicas_and_the_blocked_pair() {
        let pool = fleet().0.remove(0);
        let status = pool_status(&pool, &workloads(&pool, 2), &[], false, now());
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.ip_count, 8);
        assert_eq!(status.ready_ips, 8);
        assert_eq!(status.blocked_pairs, 1);
        // .13 is blocked by microsoft and .15 throttled by google.
        assert_eq!(status.healthy_ips, 6);
        assert_eq!(status.ips[0].desired_replicas, 2);
        assert_eq!(
            status.ips[3].reputation,
            pool.status.as_ref().unwrap().ips[3].reputation,
            "reputation passes through"
        );
        let ready = condition(&status, "Ready");
        assert_eq!(
            (ready.status, ready.reason.as_str()),
            (ConditionStatus::True, "AllIpsReady")
        );
        let degraded = condition(&status, "Degraded");
        assert_eq!(degraded.status, ConditionStatus::True);
        assert!(
            degraded.message.contains("203.0.113.13 (microsoft)"),
            "{}",
            degraded.message
        );
        assert_eq!(
            condition(&status, "Progressing").status,
            ConditionStatus::False
        );
    }

    #[test]
    fn missing_pods_and_rollouts_show_in_ready_and_progressing() {
        let pool = fleet().0.remove(0);
        let mut w = workloads(&pool, 2);
        w[1].ready_replicas = 0;
        w[2].rolled_out = false;
        let status = pool_status(&pool, &w, &[], false, now());
        assert_eq!(status.ready_ips, 7);
        let ready = condition(&status, "Ready");
        assert_eq!(ready.status, ConditionStatus::False);
        assert!(
            ready.message.contains("203.0.113.11 (0/2)"),
            "{}",
            ready.message
        );
        let progressing = condition(&status, "Progressing");
        assert_eq!(
            (progressing.status, progressing.reason.as_str()),
            (ConditionStatus::True, "RollingOut")
        );
        assert!(progressing.message.contains("203.0.113.12"));
    }

    #[test]
    fn workloads_read_the_deployment_status() {
        use k8s_openapi::api::apps::v1::DeploymentStatus;
        assert_eq!(
            IpWorkload::from_deployment("203.0.113.10", 2, None),
            IpWorkload {
                address: "203.0.113.10".into(),
                desired_replicas: 2,
                ready_replicas: 0,
                rolled_out: false
            }
        );
        let mut d = Deployment::default();
        d.metadata.generation = Some(4);
        d.status = Some(DeploymentStatus {
            observed_generation: Some(4),
            replicas: Some(2),
            updated_replicas: Some(2),
            ready_replicas: Some(1),
            ..Default::default()
        });
        let w = IpWorkload::from_deployment("203.0.113.10", 2, Some(&d));
        assert!(w.rolled_out);
        assert_eq!(w.ready_replicas, 1);
        d.metadata.generation = Some(5);
        assert!(!IpWorkload::from_deployment("203.0.113.10", 2, Some(&d)).rolled_out);
        d.metadata.generation = Some(4);
        assert!(!IpWorkload::from_deployment("203.0.113.10", 3, Some(&d)).rolled_out);
    }

    #[test]
    fn removed_ips_leave_the_status_and_new_ones_start_empty() {
        let mut pool = fleet().0.remove(0);
        pool.spec.ips.retain(|ip| ip.address != "203.0.113.17");
        pool.spec.ips.push(crate::api::PoolIp {
            address: "203.0.113.30".into(),
            warmup_start: None,
            override_: None,
            node_selector: None,
            helo_name: None,
        });
        let status = pool_status(&pool, &[], &[], false, now());
        let addresses: Vec<&str> = status.ips.iter().map(|i| i.address.as_str()).collect();
        assert!(!addresses.contains(&"203.0.113.17"));
        assert_eq!(addresses.last(), Some(&"203.0.113.30"));
        assert_eq!(status.ready_ips, 0);
    }

    #[test]
    fn an_unusable_pool_is_not_ready_with_the_problem() {
        let pool = fleet().0.remove(0);
        let problem = ObjectProblem {
            reason: "TemplateHasNoContainer",
            field: "spec.template.spec.containers".into(),
            message: "spec.template.spec.containers is empty; add the sender container".into(),
        };
        let status = pool_status(&pool, &[], &[problem], true, now());
        let ready = condition(&status, "Ready");
        assert_eq!(ready.status, ConditionStatus::False);
        assert_eq!(ready.reason, "TemplateHasNoContainer");
        assert!(ready.message.contains("spec.template.spec.containers"));
        let accepted = condition(&status, "Accepted");
        assert_eq!(
            (accepted.status, accepted.reason.as_str()),
            (ConditionStatus::False, "TemplateHasNoContainer")
        );
        // A second reconcile with nothing new keeps the transition time.
        let mut again_pool = pool.clone();
        again_pool.status = Some(status.clone());
        let later: Timestamp = "2021-11-05T09:00:00Z".parse().unwrap();
        let problem = ObjectProblem {
            reason: "TemplateHasNoContainer",
            field: "spec.template.spec.containers".into(),
            message: "spec.template.spec.containers is empty; add the sender container".into(),
        };
        let again = pool_status(&again_pool, &[], &[problem], true, later);
        assert_eq!(again, status);
    }
}
