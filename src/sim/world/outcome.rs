//! The run's figures: totals, delays, and when the incident was detected,
//! re-routed and recovered from.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::ReputationState;
use crate::reputation::engine::pair_view;

use super::super::report::{percentile, RunReport};
use super::super::watch::at;
use super::{HumanAction, Mode, World, DELIVERY_SECONDS};

impl World<'_> {
    pub(super) fn finish(mut self, ended_at: i64, next_slice: usize) -> RunReport {
        let queued_at_end = self.due.queued_from(next_slice);
        let incident_at = self
            .scenario
            .incident
            .as_ref()
            .and_then(|i| i.at)
            .or(self.first_refusal);
        self.detail.incident_at = incident_at;
        self.detail.watched = self.watched_names.clone();
        if let Some(watch) = &self.watch {
            self.detail.transitions = watch.transitions.clone();
            self.detail.routes_consistent = Some(watch.routes_consistent(ended_at));
        }
        let since = |t: i64| incident_at.map(|start| (t - start) as f64);
        let watched_ips: BTreeSet<&str> = self
            .watched_names
            .iter()
            .map(|(ip, _)| ip.as_str())
            .collect();
        let last_delisting = self
            .detail
            .provider_events
            .iter()
            .filter(|e| e.what == "delisted" && watched_ips.contains(e.ip.as_str()))
            .map(|e| e.at)
            .max();
        let still_listed = self
            .watched
            .iter()
            .any(|(s, p)| self.standing[*s][*p].is_listed())
            || self
                .watched
                .iter()
                .any(|(s, _)| !self.dnsbl_listings[*s].is_empty());
        let delisted_at = if still_listed { None } else { last_delisting };

        let (detection, reroute, recovered) = match self.setup.mode {
            Mode::Baseline => {
                let notice = self.setup.people.iter().find_map(|a| match a {
                    HumanAction::Notice { at } => Some(*at),
                    _ => None,
                });
                let moved = self
                    .setup
                    .people
                    .iter()
                    .filter_map(|a| match a {
                        HumanAction::MoveAway { until, .. } => Some(*until),
                        _ => None,
                    })
                    .max();
                let detection = notice.filter(|n| incident_at.is_some_and(|i| *n >= i));
                let reroute = detection
                    .and(moved)
                    .zip(notice)
                    .map(|(m, n)| (m - n) as f64);
                (
                    detection.and_then(since),
                    reroute,
                    delisted_at.and_then(since),
                )
            }
            Mode::Mailfleet => self.engine_times(incident_at),
        };
        let delays = &self.detail.delays;
        let delayed: BTreeMap<u64, u64> = delays
            .iter()
            .filter(|(d, _)| **d > DELIVERY_SECONDS)
            .map(|(d, c)| (*d, *c))
            .collect();
        let transitions = &self.detail.transitions;
        RunReport {
            name: self.setup.name.clone(),
            submitted: self.totals.submitted,
            delivered: self.totals.delivered,
            bounced: self.totals.bounced,
            delayed: self.totals.delayed,
            delay_p50_s: percentile(delays, 0.5).unwrap_or(0) as f64,
            delay_p99_s: percentile(delays, 0.99).unwrap_or(0) as f64,
            detection_s: detection,
            reroute_s: reroute,
            recovered_s: recovered,
            mode: self.setup.mode,
            description: self.setup.description.clone(),
            bounced_by_block: self.totals.bounced_by_block,
            expired: self.totals.expired,
            queued_at_end,
            refused_attempts: self.totals.refused,
            deferrals: self.totals.deferrals,
            delayed_p50_s: percentile(&delayed, 0.5).map(|d| d as f64),
            delayed_p99_s: percentile(&delayed, 0.99).map(|d| d as f64),
            delay_max_s: delays.keys().next_back().copied().unwrap_or(0) as f64,
            oldest_wait_s: self
                .oldest_wait
                .max(delays.keys().next_back().copied().unwrap_or(0) as i64)
                as f64,
            queue_lifetime_s: self.queue_lifetime as f64,
            delisted_s: delisted_at.and_then(since),
            engine_transitions: transitions.len() as u64,
            blocks: transitions
                .iter()
                .filter(|t| {
                    t.to == ReputationState::Blocked && t.from != Some(ReputationState::Blocked)
                })
                .count() as u64,
            route_changes: self.detail.route_changes.len() as u64,
            started_at: at(self.scenario.start).to_string(),
            ended_at: at(ended_at).to_string(),
            detail: self.detail,
        }
    }

    /// Detection, re-route and recovery as the engine and the route table saw them.
    pub(super) fn engine_times(
        &self,
        incident_at: Option<i64>,
    ) -> (Option<f64>, Option<f64>, Option<f64>) {
        let Some(start) = incident_at else {
            return (None, None, None);
        };
        let Some(watch) = &self.watch else {
            return (None, None, None);
        };
        let watched = |ip: &str, provider: &str| {
            self.watched_names
                .iter()
                .any(|(i, p)| i == ip && p == provider)
        };
        let detected_at = watch
            .transitions
            .iter()
            .filter(|t| t.at.as_second() >= start && watched(&t.ip, &t.provider))
            .find(|t| matches!(t.to, ReputationState::Blocked | ReputationState::Throttled))
            .map(|t| t.at.as_second());
        let Some(detected_at) = detected_at else {
            return (None, None, None);
        };

        let mut previous: BTreeMap<String, Vec<(String, i64)>> = self
            .initial_shares
            .iter()
            .map(|c| (c.provider.clone(), c.shares.clone()))
            .collect();
        let mut rerouted_at = None;
        for change in &self.detail.route_changes {
            let before = previous
                .insert(change.provider.clone(), change.shares.clone())
                .unwrap_or_default();
            if change.at < detected_at {
                continue;
            }
            let weight_of = |shares: &[(String, i64)], ip: &str| {
                shares.iter().find(|(i, _)| i == ip).map(|(_, w)| *w)
            };
            let moved = self.watched_names.iter().any(|(ip, provider)| {
                provider == &change.provider
                    && weight_of(&before, ip) != weight_of(&change.shares, ip)
            });
            if moved {
                rerouted_at = Some(change.at);
                break;
            }
        }

        let resting = self.watched_names.iter().all(|(ip, provider)| {
            watch
                .fleet
                .pools
                .iter()
                .filter_map(|pool| pool.status.as_ref())
                .all(|status| {
                    if !status.ips.iter().any(|s| &s.address == ip) {
                        return true;
                    }
                    let view = pair_view(status, ip, provider);
                    view.state == ReputationState::Healthy && view.allowance_percent == 100
                        || view.state == ReputationState::Warming
                })
        });
        let recovered_at = resting
            .then(|| {
                watch
                    .transitions
                    .iter()
                    .filter(|t| watched(&t.ip, &t.provider) && t.at.as_second() >= start)
                    .map(|t| t.at.as_second())
                    .max()
            })
            .flatten()
            .filter(|t| *t > detected_at);
        (
            Some((detected_at - start) as f64),
            rerouted_at.map(|r| (r - detected_at) as f64),
            recovered_at.map(|r| (r - start) as f64),
        )
    }
}
