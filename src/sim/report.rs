//! What a run produced: the figures of the JSON report (stable field names,
//! docs/SIMULATOR.md) and the detail behind them for charts and tests.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::api::RouteMode;
use crate::reputation::engine::Transition;

use super::{Mode, Options, Scenario};

/// One scenario's report: `{"scenario": ..., "runs": [...]}` plus context.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub runs: Vec<RunReport>,
    pub title: String,
    pub seed: u64,
    pub scale: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
}

/// How the baseline compares with the published figures it is calibrated on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Calibration {
    pub reported_messages: u64,
    pub reported_failed: u64,
    /// `reported_failed` times the scale of this run.
    pub target_failed: u64,
    /// Messages the baseline run bounced because of the block.
    pub baseline_failed: u64,
    /// `(baseline_failed - target_failed) / target_failed`, in percent.
    pub deviation_percent: f64,
    /// Percent of all submitted mail bound for Microsoft (consumer domains and
    /// Microsoft 365 tenants): the share that reproduces the reported failures.
    pub microsoft_share_percent: f64,
    pub microsoft_365_share_of_microsoft_percent: f64,
}

/// One run's figures. The first ten fields are the documented contract.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub name: String,
    pub submitted: u64,
    pub delivered: u64,
    pub bounced: u64,
    /// Delivered later than in the minute they were submitted (deferred at
    /// least once, or waiting for a cap).
    pub delayed: u64,
    /// Submission-to-delivery time of delivered mail, 50th and 99th percentile.
    pub delay_p50_s: f64,
    pub delay_p99_s: f64,
    /// From the start of the incident to the moment it was noticed (the engine's
    /// first move of an affected pair; in a baseline, a person).
    pub detection_s: Option<f64>,
    /// From detection to the routes (or, in a baseline, the traffic) being changed.
    pub reroute_s: Option<f64>,
    /// From the start of the incident until the affected pairs are back to full
    /// allowance (a baseline: until the provider delisted the IP).
    pub recovered_s: Option<f64>,
    pub mode: Mode,
    pub description: String,
    /// Bounced on a block or block-list reply (the incident's "failed").
    pub bounced_by_block: u64,
    /// Bounced because they outlived the queue lifetime (`queue_lifetime_s`).
    pub expired: u64,
    /// The longest any message waited in a queue, delivered or not.
    #[serde(default)]
    pub oldest_wait_s: f64,
    /// The senders' `maximal_queue_lifetime` in this run: Postfix's 5 days in a
    /// baseline, the pools' rendered lifetime with mailfleet.
    #[serde(default)]
    pub queue_lifetime_s: f64,
    /// Neither delivered nor bounced when the run ended.
    pub queued_at_end: u64,
    /// Delivery attempts the providers refused (any reason).
    pub refused_attempts: u64,
    /// Attempts that ended in a deferral (retried later).
    pub deferrals: u64,
    pub delayed_p50_s: Option<f64>,
    pub delayed_p99_s: Option<f64>,
    pub delay_max_s: f64,
    /// From the start of the incident until the provider delisted the last affected IP.
    pub delisted_s: Option<f64>,
    pub engine_transitions: u64,
    /// Engine transitions into Blocked.
    pub blocks: u64,
    /// Changes of the route a provider's mail takes (mode or target shares).
    pub route_changes: u64,
    /// Start and end of the simulated time.
    pub started_at: String,
    pub ended_at: String,
    #[serde(skip)]
    pub detail: RunDetail,
}

/// What a run did, in detail.
#[derive(Clone, Debug, Default)]
pub struct RunDetail {
    pub start: i64,
    /// Offset of the senders' local time from UTC, for people reading times.
    pub utc_offset_seconds: i64,
    pub slice_seconds: i64,
    /// The senders (IPs, then the relay and any other delivery system), by index.
    pub senders: Vec<String>,
    /// Delivered mail, and attempts that failed (refused for the IP's
    /// reputation: a block, a block list, a rate limit; or bounced), per hour
    /// and sender. Greylisting, a per-message matter, is not a failure here.
    pub hourly: Vec<HourlyVolume>,
    pub transitions: Vec<Transition>,
    pub route_changes: Vec<RouteChange>,
    pub provider_events: Vec<ProviderEvent>,
    /// When the incident began, if it did.
    pub incident_at: Option<i64>,
    /// The (IP, provider) pairs the scenario is about.
    pub watched: Vec<(String, String)>,
    /// Delivered messages by delay in seconds.
    pub delays: BTreeMap<u64, u64>,
    /// Refused attempts per (sender, provider, reply): `block`, `dnsbl`,
    /// `rate_limited` or `greylisted`.
    pub refused_by: BTreeMap<(String, String, &'static str), u64>,
    /// Messages delivered per hour, per (sender, provider).
    pub delivered_hourly: BTreeMap<(String, String), Vec<u64>>,
    /// Whether the incremental route table equalled a full compile at the end.
    pub routes_consistent: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HourlyVolume {
    pub delivered: Vec<u64>,
    pub failed: Vec<u64>,
}

/// A change of the way one provider's mail leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteChange {
    /// When the senders apply it.
    pub at: i64,
    pub provider: String,
    pub mode: RouteMode,
    /// `(IP, weight)` of every target.
    pub shares: Vec<(String, i64)>,
}

/// A provider or block list changing its mind about an IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderEvent {
    pub at: i64,
    pub ip: String,
    /// The provider, or the DNS block list zone.
    pub by: String,
    pub what: &'static str,
}

impl RunDetail {
    /// What happened to the watched pairs, in time order: the providers'
    /// listings and the engine's transitions, as `(time, IP, provider, text)`.
    pub fn timeline(&self) -> Vec<(i64, String, String, String)> {
        let watched =
            |ip: &str, provider: &str| self.watched.iter().any(|(i, p)| i == ip && p == provider);
        let watched_ip = |ip: &str| self.watched.iter().any(|(i, _)| i == ip);
        let mut lines: Vec<(i64, String, String, String)> = self
            .provider_events
            .iter()
            .filter(|e| watched_ip(&e.ip))
            .map(|e| (e.at, e.ip.clone(), e.by.clone(), e.what.to_string()))
            .collect();
        let providers: Vec<&str> = self.watched.iter().map(|(_, p)| p.as_str()).collect();
        let mut before: BTreeMap<&str, (RouteMode, Vec<&str>)> = BTreeMap::new();
        for change in self
            .route_changes
            .iter()
            .filter(|c| providers.contains(&c.provider.as_str()))
        {
            let ips: Vec<&str> = change.shares.iter().map(|(ip, _)| ip.as_str()).collect();
            let now = (change.mode, ips.clone());
            if before.insert(change.provider.as_str(), now.clone()) != Some(now) {
                let via = if ips.is_empty() {
                    String::new()
                } else {
                    format!(" via {}", ips.join(" "))
                };
                let text = format!(
                    "route: {}{via}",
                    crate::routing::model::mode_name(change.mode)
                );
                lines.push((change.at, "-".to_string(), change.provider.clone(), text));
            }
        }
        for t in self
            .transitions
            .iter()
            .filter(|t| watched(&t.ip, &t.provider))
        {
            let from = t.from.map_or("(new)", |f| f.as_str());
            let text = format!(
                "engine: {from} -> {} ({}, allowance {} %)",
                t.to.as_str(),
                t.reason,
                t.allowance_percent
            );
            lines.push((t.at.as_second(), t.ip.clone(), t.provider.clone(), text));
        }
        lines.sort();
        lines
    }
}

impl ScenarioReport {
    pub fn new(scenario: &Scenario, options: &Options, runs: Vec<RunReport>) -> Self {
        let calibration = scenario.calibration.as_ref().and_then(|target| {
            let baseline = runs.iter().find(|r| r.mode == Mode::Baseline)?;
            let target_failed = (target.reported_failed as f64 * options.scale).round() as u64;
            let deviation = if target_failed > 0 {
                (baseline.bounced_by_block as f64 - target_failed as f64) / target_failed as f64
                    * 100.0
            } else {
                0.0
            };
            Some(Calibration {
                reported_messages: target.reported_messages,
                reported_failed: target.reported_failed,
                target_failed,
                baseline_failed: baseline.bounced_by_block,
                deviation_percent: round2(deviation),
                microsoft_share_percent: target.microsoft_share_percent,
                microsoft_365_share_of_microsoft_percent: round2(
                    target.tenant_share_of_microsoft * 100.0,
                ),
            })
        });
        ScenarioReport {
            scenario: scenario.name.clone(),
            runs,
            title: scenario.title.clone(),
            seed: options.seed,
            scale: options.scale,
            calibration,
        }
    }

    pub fn run(&self, name: &str) -> Option<&RunReport> {
        self.runs.iter().find(|r| r.name == name)
    }

    /// The report as pretty JSON with a final newline.
    pub fn to_json(&self) -> String {
        // serde_json escapes the error text; a report of plain numbers and
        // strings does not fail to serialise, but a failure stays JSON.
        let mut text = serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}).to_string());
        text.push('\n');
        text
    }
}

/// The delay below which `quantile` of the messages were delivered.
pub fn percentile(delays: &BTreeMap<u64, u64>, quantile: f64) -> Option<u64> {
    let total: u64 = delays.values().sum();
    if total == 0 {
        return None;
    }
    let wanted = ((total as f64) * quantile).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (delay, count) in delays {
        seen += count;
        if seen >= wanted {
            return Some(*delay);
        }
    }
    delays.keys().next_back().copied()
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_histogram() {
        let delays = BTreeMap::from([(1, 98), (61, 1), (301, 1)]);
        assert_eq!(percentile(&delays, 0.5), Some(1));
        assert_eq!(percentile(&delays, 0.99), Some(61));
        assert_eq!(percentile(&delays, 1.0), Some(301));
        assert_eq!(percentile(&BTreeMap::new(), 0.5), None);
    }
}
