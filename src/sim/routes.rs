//! What the senders do with the route table: which IPs carry a provider's mail,
//! in what shares, up to which hourly caps.
//!
//! The table's targets are used as the JSON route table documents them:
//! `weight` is the IP's relative share of the route's mail and `hourly_cap` the
//! most it may send per hour; mail an IP may not take goes to the route's other
//! targets (the route Service), and mail no target can take waits in the queue.

use std::collections::BTreeMap;

use crate::api::{ReputationState, RouteMode};
use crate::routing::{ObjectKey, RouteResult};

use super::rng::{apportion, Rng};

/// One IP that may send for a route.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanTarget {
    pub sender: usize,
    pub weight: f64,
    pub hourly_cap: Option<i64>,
    pub state: ReputationState,
}

/// How one provider's mail leaves right now.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub route: Option<ObjectKey>,
    pub mode: RouteMode,
    pub targets: Vec<PlanTarget>,
}

impl Plan {
    /// Senders spread in proportion to their pods, with no cap: a fleet without
    /// mailfleet, as in the incident.
    pub fn spread(pods: &[(usize, u32)]) -> Plan {
        Plan {
            route: None,
            mode: RouteMode::Primary,
            targets: pods
                .iter()
                .map(|(sender, pods)| PlanTarget {
                    sender: *sender,
                    weight: f64::from(*pods),
                    hourly_cap: None,
                    state: ReputationState::Healthy,
                })
                .collect(),
        }
    }

    /// The plan of the route that serves `provider` (its own route, else the
    /// default route); `senders` maps `(pool, ip)` to a sender index.
    pub fn from_routes(
        provider: &str,
        routes: &[&RouteResult],
        senders: &BTreeMap<(String, String), usize>,
    ) -> Option<Plan> {
        let route = routes
            .iter()
            .find(|r| r.provider == provider && !r.matcher.default)
            .or_else(|| routes.iter().find(|r| r.matcher.default))?;
        Some(Plan {
            route: Some(route.key.clone()),
            mode: route.mode,
            targets: route
                .targets
                .iter()
                .filter_map(|t| {
                    let sender = *senders.get(&(t.pool.clone(), t.ip.clone()))?;
                    Some(PlanTarget {
                        sender,
                        weight: f64::from(t.weight.max(0)),
                        hourly_cap: t.hourly_cap,
                        state: t.state,
                    })
                })
                .collect(),
        })
    }

    pub fn target(&self, sender: usize) -> Option<&PlanTarget> {
        self.targets.iter().find(|t| t.sender == sender)
    }

    /// `(sender, weight)` of every target: what a route change is judged by.
    pub fn shares(&self) -> Vec<(usize, i64)> {
        self.targets
            .iter()
            .map(|t| (t.sender, t.weight.round() as i64))
            .collect()
    }
}

/// Shares `demand` over targets in proportion to `weights`, never giving a
/// target more than its `room`; what one target cannot take goes to the others.
/// Returns the share of each target; the rest (demand beyond all room) is
/// `demand - sum`.
pub fn fill(demand: u64, weights: &[f64], room: &[u64], rng: &mut Rng) -> Vec<u64> {
    let mut given = vec![0u64; weights.len()];
    let mut left = demand;
    loop {
        let open: Vec<f64> = weights
            .iter()
            .zip(room)
            .zip(&given)
            .map(|((w, r), g)| if *w > 0.0 && g < r { *w } else { 0.0 })
            .collect();
        if left == 0 || open.iter().all(|w| *w <= 0.0) {
            break;
        }
        let shares = apportion(left, &open, rng);
        let mut progress = 0;
        for i in 0..given.len() {
            let take = shares[i].min(room[i] - given[i]);
            given[i] += take;
            progress += take;
        }
        left -= progress;
        if progress == 0 {
            break;
        }
    }
    given
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_follows_weights_and_overflows_to_room() {
        let mut rng = Rng::new(1);
        let given = fill(1000, &[1.0, 1.0], &[u64::MAX, u64::MAX], &mut rng);
        assert_eq!(given, vec![500, 500]);
        let given = fill(1000, &[1.0, 100.0], &[u64::MAX, 20], &mut rng);
        assert_eq!(given[1], 20, "a capped target takes no more than its room");
        assert_eq!(given[0], 980, "the overflow goes to the target with room");
        let given = fill(1000, &[1.0, 1.0], &[100, 200], &mut rng);
        assert_eq!(given, vec![100, 200], "what nobody can take is left over");
        assert_eq!(fill(5, &[0.0], &[10], &mut rng), vec![0]);
    }
}
