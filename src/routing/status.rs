//! Projecting one compiled route onto `DomainRoute.status`.
//!
//! A steady fleet must write nothing new: `lastRewriteTime` only moves when what
//! carries the route (mode, targets, relay) changes, and the fields the operator
//! owns (conditions, observed generation) and the learned domains pass through.
//! `targetCount` counts every target, a Probing IP's trickle included, so a route
//! in mode Relay or Defer may show targets.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::DomainRouteStatus;

use super::model::RouteResult;

pub fn status_for(
    route: &RouteResult,
    previous: Option<&DomainRouteStatus>,
    now: Timestamp,
) -> DomainRouteStatus {
    let relay = route.relay.as_ref().map(|r| r.address());
    let unchanged = previous.is_some_and(|p| {
        p.mode == Some(route.mode) && p.targets == route.targets && p.relay == relay
    });
    let last_rewrite_time = match previous {
        Some(p) if unchanged && p.last_rewrite_time.is_some() => p.last_rewrite_time.clone(),
        _ => Some(Time(now)),
    };
    DomainRouteStatus {
        observed_generation: previous.and_then(|p| p.observed_generation),
        conditions: previous.map(|p| p.conditions.clone()).unwrap_or_default(),
        mode: Some(route.mode),
        targets: route.targets.clone(),
        relay,
        excluded: route.excluded.clone(),
        learned_domains: previous
            .map(|p| p.learned_domains.clone())
            .unwrap_or_default(),
        fallback_in_use: route.fallback_in_use(),
        last_rewrite_time,
        target_count: i32::try_from(route.targets.len()).unwrap_or(i32::MAX),
        excluded_count: i32::try_from(route.excluded.len()).unwrap_or(i32::MAX),
        queue: previous.and_then(|p| p.queue.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ConditionStatus, ReputationState, RouteMode};
    use crate::routing::compile;
    use crate::routing::example::{incident_fleet, pair, set_pair};
    use jiff::SignedDuration;

    fn now() -> Timestamp {
        "2021-11-05T08:10:00Z".parse().unwrap()
    }

    #[test]
    fn a_steady_route_keeps_its_rewrite_time_and_operator_fields() {
        let (mut pools, routes) = incident_fleet(now());
        let table = compile(&pools, &routes, now());
        let route = table.route("mail", "microsoft").unwrap();
        let mut first = status_for(route, None, now());
        assert_eq!(first.mode, Some(RouteMode::Primary));
        assert_eq!(
            (
                first.target_count,
                first.excluded_count,
                first.fallback_in_use
            ),
            (7, 1, false)
        );
        assert_eq!(first.last_rewrite_time, Some(Time(now())));
        assert_eq!(first.relay, None);

        // The operator's fields pass through untouched.
        first.observed_generation = Some(3);
        crate::api::conditions::set_condition(
            &mut first.conditions,
            "Ready",
            ConditionStatus::True,
            "Routed",
            "",
            Some(3),
            now(),
        );
        let later = now() + SignedDuration::from_mins(5);
        let second = status_for(route, Some(&first), later);
        assert_eq!(second, first, "a steady state writes nothing new");

        // A new block moves the rewrite time.
        set_pair(
            &mut pools[0],
            "203.0.113.10",
            pair("microsoft", ReputationState::Blocked, 0, later),
        );
        let table = compile(&pools, &routes, later);
        let third = status_for(
            table.route("mail", "microsoft").unwrap(),
            Some(&second),
            later,
        );
        assert_eq!(third.last_rewrite_time, Some(Time(later)));
        assert_eq!((third.target_count, third.excluded_count), (6, 2));
        assert_eq!(third.conditions, first.conditions);
        assert_eq!(third.observed_generation, Some(3));
    }

    #[test]
    fn relay_mode_reports_the_relay_address() {
        let (mut pools, routes) = incident_fleet(now());
        for p in pools.iter_mut() {
            let ips: Vec<String> = p.spec.ips.iter().map(|i| i.address.clone()).collect();
            for ip in ips {
                set_pair(
                    p,
                    &ip,
                    pair("microsoft", ReputationState::Blocked, 0, now()),
                );
            }
        }
        let table = compile(&pools, &routes, now());
        let status = status_for(table.route("mail", "microsoft").unwrap(), None, now());
        assert_eq!(status.mode, Some(RouteMode::Relay));
        assert_eq!(status.relay.as_deref(), Some("smtp.relay.example:587"));
        assert!(status.fallback_in_use);
        assert_eq!((status.target_count, status.excluded_count), (0, 10));
    }

    #[test]
    fn a_pool_of_probing_ips_reports_the_fallback_with_their_trickle() {
        let (mut pools, routes) = incident_fleet(now());
        let ips: Vec<String> = pools[0]
            .spec
            .ips
            .iter()
            .map(|i| i.address.clone())
            .collect();
        for ip in &ips {
            set_pair(
                &mut pools[0],
                ip,
                pair("microsoft", ReputationState::Probing, 2, now()),
            );
        }
        let table = compile(&pools, &routes, now());
        let status = status_for(table.route("mail", "microsoft").unwrap(), None, now());
        assert_eq!(status.mode, Some(RouteMode::FallbackPool));
        assert!(status.fallback_in_use);
        // Two reserve IPs carry the mail; every bulk IP keeps its probe trickle.
        assert_eq!(
            (status.target_count as usize, status.excluded_count),
            (2 + ips.len(), 0)
        );
        let probing = status
            .targets
            .iter()
            .filter(|t| t.state == ReputationState::Probing)
            .count();
        assert_eq!(probing, ips.len());
    }
}
