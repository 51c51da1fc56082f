//! How many sender pods one IP runs.
//!
//! Every pod of an IP sends to every provider, so the IP needs as many pods as
//! its busiest provider allows:
//!
//! ```text
//! peak     = max over providers of the IP's effective allowance (0-100)
//! replicas = min + round_half_up((max - min) * peak / 100)
//! replicas = max(replicas, 1)   when peak > 0 (a probing trickle needs a pod)
//! ```
//!
//! The providers are the fleet's known providers plus every provider the IP
//! has a pair for. A provider without a pair is Healthy at 100 % (as the route
//! compiler reads it), so an IP blocked by one provider keeps its full size for
//! the others. The effective allowance is 0 for a Blocked pair, else the pair's
//! `allowancePercent`, lowered by a manual override in `spec.ips[].override`
//! that covers the provider. An IP blocked (or drained) everywhere has peak 0
//! and keeps `min` pods, so it can be probed when its hold-down ends.

use crate::api::{PoolIp, ReputationState, SenderPool};

use super::same_address;

/// The IP's effective allowance (0-100) towards `provider`.
pub fn allowance(pool: &SenderPool, ip: &PoolIp, provider: &str) -> i32 {
    let pair = pool
        .status
        .as_ref()
        .and_then(|s| s.ips.iter().find(|i| same_address(&i.address, &ip.address)))
        .and_then(|s| s.pair(provider));
    let mut percent = match pair {
        Some(p) if p.state == ReputationState::Blocked => 0,
        Some(p) => p.allowance_percent.clamp(0, 100),
        None => 100,
    };
    if let Some(over) = ip
        .override_
        .as_ref()
        .filter(|o| o.providers.is_empty() || o.providers.iter().any(|p| p == provider))
    {
        percent = percent.min(over.allowance_percent.clamp(0, 100));
    }
    percent
}

/// The highest allowance of the IP over `known_providers` and the providers it
/// has a pair for.
pub fn peak_allowance(pool: &SenderPool, ip: &PoolIp, known_providers: &[String]) -> i32 {
    let recorded = pool
        .status
        .as_ref()
        .and_then(|s| s.ips.iter().find(|i| same_address(&i.address, &ip.address)))
        .map(|s| {
            s.reputation
                .iter()
                .map(|r| r.provider.as_str())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    known_providers
        .iter()
        .map(String::as_str)
        .chain(recorded)
        .map(|provider| allowance(pool, ip, provider))
        .max()
        // A fleet without providers still sends (to `other`): full allowance.
        .unwrap_or_else(|| allowance(pool, ip, crate::vocab::OTHER_PROVIDER))
}

/// Desired replicas of one IP, between `spec.replicasPerIp.min` and `max`.
pub fn desired_replicas(pool: &SenderPool, ip: &PoolIp, known_providers: &[String]) -> i32 {
    let min = pool.spec.replicas_per_ip.min.max(0);
    // The schema keeps min <= max; a spec that slipped past it gets min.
    let max = pool.spec.replicas_per_ip.max.max(min);
    let peak = i64::from(peak_allowance(pool, ip, known_providers));
    let extra = (i64::from(max - min) * peak + 50) / 100;
    let replicas = i32::try_from(i64::from(min) + extra).unwrap_or(max);
    if peak > 0 {
        replicas.max(1)
    } else {
        replicas
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ManualOverride, ReplicaRange};
    use crate::operator::build::fixtures::{fleet, now};
    use crate::routing::example::{pair, set_pair};

    fn providers() -> Vec<String> {
        ["apple", "google", "microsoft", "other", "yahoo"]
            .map(String::from)
            .to_vec()
    }

    fn bulk(min: i32, max: i32) -> SenderPool {
        let mut pool = fleet().0.remove(0);
        pool.spec.replicas_per_ip = ReplicaRange { min, max };
        pool
    }

    fn ip<'a>(pool: &'a SenderPool, address: &str) -> &'a PoolIp {
        pool.spec.ips.iter().find(|i| i.address == address).unwrap()
    }

    #[test]
    fn a_healthy_ip_runs_max_and_one_blocked_provider_changes_nothing() {
        let pool = bulk(1, 4);
        assert_eq!(
            desired_replicas(&pool, ip(&pool, "203.0.113.10"), &providers()),
            4
        );
        // 203.0.113.13 is blocked by microsoft only.
        assert_eq!(
            desired_replicas(&pool, ip(&pool, "203.0.113.13"), &providers()),
            4
        );
    }

    #[test]
    fn blocked_everywhere_keeps_min_and_probing_keeps_at_least_one() {
        let mut pool = bulk(2, 5);
        for provider in providers() {
            set_pair(
                &mut pool,
                "203.0.113.10",
                pair(&provider, ReputationState::Blocked, 0, now()),
            );
        }
        assert_eq!(
            desired_replicas(&pool, ip(&pool, "203.0.113.10"), &providers()),
            2
        );
        // Another provider the IP has never met still counts as healthy.
        let mut more = providers();
        more.push("yahoo-japan".into());
        assert_eq!(desired_replicas(&pool, ip(&pool, "203.0.113.10"), &more), 5);

        let mut pool = bulk(0, 3);
        for provider in providers() {
            set_pair(
                &mut pool,
                "203.0.113.10",
                pair(&provider, ReputationState::Blocked, 0, now()),
            );
        }
        assert_eq!(
            desired_replicas(&pool, ip(&pool, "203.0.113.10"), &providers()),
            0
        );
        set_pair(
            &mut pool,
            "203.0.113.10",
            pair("microsoft", ReputationState::Probing, 2, now()),
        );
        assert_eq!(
            desired_replicas(&pool, ip(&pool, "203.0.113.10"), &providers()),
            1
        );
    }

    #[test]
    fn throttled_everywhere_scales_halfway_rounding_half_up() {
        let mut pool = bulk(1, 4);
        for provider in providers() {
            set_pair(
                &mut pool,
                "203.0.113.11",
                pair(&provider, ReputationState::Throttled, 50, now()),
            );
        }
        // 1 + round(3 * 0.5) = 1 + 2
        assert_eq!(
            desired_replicas(&pool, ip(&pool, "203.0.113.11"), &providers()),
            3
        );
        assert_eq!(
            peak_allowance(&pool, ip(&pool, "203.0.113.11"), &providers()),
            50
        );
    }

    #[test]
    fn an_override_lowers_the_allowance_and_a_full_drain_keeps_min() {
        let mut pool = bulk(1, 3);
        pool.spec.ips[0].override_ = Some(ManualOverride {
            allowance_percent: 0,
            providers: vec![],
            reason: "maintenance".into(),
        });
        let first = pool.spec.ips[0].clone();
        assert_eq!(desired_replicas(&pool, &first, &providers()), 1);
        assert_eq!(allowance(&pool, &first, "google"), 0);
        pool.spec.ips[0].override_ = Some(ManualOverride {
            allowance_percent: 0,
            providers: vec!["microsoft".into()],
            reason: "microsoft only".into(),
        });
        let first = pool.spec.ips[0].clone();
        assert_eq!(desired_replicas(&pool, &first, &providers()), 3);
    }

    #[test]
    fn a_range_the_schema_refuses_does_not_panic() {
        let pool = bulk(5, 2);
        assert_eq!(
            desired_replicas(&pool, ip(&pool, "203.0.113.10"), &providers()),
            5
        );
        let pool = bulk(-3, 2);
        assert_eq!(desired_replicas(&pool, ip(&pool, "203.0.113.10"), &[]), 2);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn replicas_stay_within_the_range_and_grow_with_allowance(
            min in 0i32..5,
            span in 0i32..6,
            states in proptest::collection::vec((0usize..6, 0i32..=100), 0..5),
        ) {
            let all = [
                ReputationState::Healthy,
                ReputationState::Warming,
                ReputationState::Throttled,
                ReputationState::Blocked,
                ReputationState::Probing,
                ReputationState::Recovering,
            ];
            let max = min + span;
            let mut pool = bulk(min, max);
            let names = providers();
            for (i, (state, percent)) in states.iter().enumerate() {
                set_pair(&mut pool, "203.0.113.10", pair(&names[i], all[*state], *percent, now()));
            }
            let ip = pool.spec.ips[0].clone();
            let replicas = desired_replicas(&pool, &ip, &names);
            let peak = peak_allowance(&pool, &ip, &names);
            proptest::prop_assert!(replicas >= min && replicas <= max.max(1));
            if peak == 0 {
                proptest::prop_assert_eq!(replicas, min);
            } else {
                proptest::prop_assert!(replicas >= 1);
            }
            if peak == 100 {
                proptest::prop_assert_eq!(replicas, max.max(1));
            }
        }
    }
}
