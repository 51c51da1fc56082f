//! One run of a scenario: the slice-by-slice loop that moves mail from the
//! applications through the senders' queues to the providers and back.
//!
//! Within a slice, in this order: scheduled events (a provider lists an IP, a
//! DNS block list changes), the engine's timers and DNSBL probes, the mail due
//! (new submissions and retries) dispatched over the route in force, the
//! providers' answers, the agents' reports, and the providers' delisting rules.
//! A route change takes effect from the next slice, with a queue flush.

mod answer;
mod dispatch;
mod outcome;
mod setup;

use std::collections::{BTreeMap, BTreeSet};

use crate::api::RouteMode;
use crate::reputation::classifier::Classifier;

use super::filter::StatusFilter;
use super::provider::{IpStanding, ListingChange, ProviderModel, ReplyKind};
use super::queue::{DueQueue, Piece};
use super::recipients::Domain;
use super::report::{ProviderEvent, RouteChange, RunDetail, RunReport};
use super::rng::Rng;
use super::routes::Plan;
use super::watch::Watch;
use super::{HumanAction, Mode, Options, RunSetup, Scenario, SimError, WorldEvent};

/// Seconds from an attempt's start to the provider's answer.
const DELIVERY_SECONDS: u64 = 1;
/// Seconds from a reply to the agent reporting it.
const AGENT_DELAY_SECONDS: i64 = 1;
/// Address the simulated MX hosts answer from (documentation range).
const MX_ADDRESS: &str = "192.0.2.25";

/// One source IP (its pods together), or a delivery system that is not one.
struct Sender {
    /// The IP, or `relay` / `other system`.
    label: String,
    /// A real source IP (the relay and other delivery systems are not).
    real: bool,
    /// Index of its pool in the fleet, for IPs.
    pool: Option<usize>,
}

/// One provider the recipients belong to.
struct Destination {
    name: String,
    model: ProviderModel,
    /// Percent of all mail.
    share: f64,
    /// Its recipient domains, and the share of each (for picking one per batch).
    domains: Vec<Domain>,
    weights: Vec<f64>,
}

/// Totals of a run.
#[derive(Default)]
struct Totals {
    submitted: u64,
    delivered: u64,
    bounced: u64,
    bounced_by_block: u64,
    expired: u64,
    delayed: u64,
    refused: u64,
    deferrals: u64,
}

/// Runs one run of `scenario`.
pub fn simulate(
    scenario: &Scenario,
    setup: &RunSetup,
    options: &Options,
) -> Result<RunReport, SimError> {
    World::new(scenario, setup, options)?.run()
}

/// The state of one run. Senders and providers are referred to by index
/// (`s` into `senders`, `p` into `destinations`).
struct World<'a> {
    scenario: &'a Scenario,
    setup: &'a RunSetup,
    /// Seconds per slice.
    slice: i64,
    /// Slices in which applications submit mail.
    submit_slices: usize,
    /// The run's volume factor: providers' per-IP limits scale with it.
    scale: f64,
    classifier: Classifier,
    filter: StatusFilter,
    senders: Vec<Sender>,
    relay: usize,
    other_system: usize,
    destinations: Vec<Destination>,
    /// Each provider's view of each sender: `standing[s][p]`.
    standing: Vec<Vec<IpStanding>>,
    /// The DNSBL zones that list each sender now.
    dnsbl_listings: Vec<BTreeSet<String>>,
    /// When each sender began warming up, if it is new.
    warmup_start: Vec<Option<i64>>,
    /// Messages submitted per slice.
    submissions: Vec<u64>,
    /// Baseline spread: `(sender, pods)`.
    pods: Vec<(usize, u32)>,
    /// Baseline people: `(from, until, sender, provider, share)` moved away.
    moves: Vec<(i64, i64, usize, usize, f64)>,
    /// How each provider's mail leaves now.
    plans: Vec<Plan>,
    /// Hourly-cap allowance left this slice: `credit[s][p]`.
    credit: Vec<Vec<f64>>,
    due: DueQueue,
    /// The agents, engine and compiler (mailfleet runs only).
    watch: Option<Watch>,
    /// `(sender, zone, interval)` probed by the DNSBL prober.
    dnsbl_zones: Vec<(usize, String, i64)>,
    rng_dispatch: Rng,
    rng_replies: Rng,
    /// Reply texts, rendered once per sender, provider and kind.
    replies: BTreeMap<(usize, usize, ReplyKind), String>,
    totals: Totals,
    detail: RunDetail,
    /// The plans at the start, to tell what the first change changed.
    initial_shares: Vec<RouteChange>,
    /// The first reputation refusal an affected pair got.
    first_refusal: Option<i64>,
    /// The incident's `(sender, provider)` pairs, and their names.
    watched: Vec<(usize, usize)>,
    watched_names: Vec<(String, String)>,
    /// How long deferred mail may wait before it bounces: Postfix's default
    /// in a baseline, the pools' rendered `maximal_queue_lifetime` with mailfleet.
    queue_lifetime: i64,
    /// The longest any message waited in a queue (delivered, bounced or still queued).
    oldest_wait: i64,
}

impl World<'_> {
    fn mailfleet(&self) -> bool {
        self.setup.mode == Mode::Mailfleet
    }

    fn run(mut self) -> Result<RunReport, SimError> {
        let mut events: Vec<&WorldEvent> = self.scenario.events.iter().collect();
        events.sort_by_key(|e| e.at());
        let mut next_event = 0;
        let total_slices = self.due.slices();
        let mut last_slice = 0;
        let mut batches: Vec<Vec<Vec<Piece>>> =
            vec![vec![Vec::new(); self.destinations.len()]; self.senders.len()];
        let mut attempts: Vec<Vec<u64>> =
            vec![vec![0; self.destinations.len()]; self.senders.len()];
        for t in 0..total_slices {
            last_slice = t;
            let now = self.scenario.start + t as i64 * self.slice;
            let end = now + self.slice;
            while next_event < events.len() && events[next_event].at() < end {
                self.apply_event(events[next_event]);
                next_event += 1;
            }
            if let Some(watch) = self.watch.as_mut() {
                watch.tick(now)?;
                for (s, zone, interval) in &self.dnsbl_zones {
                    if (now - self.scenario.start) % interval == 0 {
                        let listed = self.dnsbl_listings[*s].contains(zone);
                        watch.dnsbl(&self.senders[*s].label, zone, listed, now)?;
                    }
                }
            }
            self.follow_routes(now, t);
            self.dispatch(t, now, &mut batches);
            for (s, per_provider) in batches.iter_mut().enumerate() {
                for (p, pieces) in per_provider.iter_mut().enumerate() {
                    if !pieces.is_empty() {
                        attempts[s][p] += pieces.iter().map(|x| x.count).sum::<u64>();
                        self.attempt(s, p, std::mem::take(pieces), t, now)?;
                    }
                }
            }
            for (s, row) in attempts.iter_mut().enumerate() {
                for (p, count) in row.iter_mut().enumerate() {
                    if self.senders[s].real {
                        let rules = &self.destinations[p].model.delisting;
                        if let Some(change) = self.standing[s][p].close_slice(*count, end, rules) {
                            let what = match change {
                                ListingChange::Delisted => "delisted",
                                ListingChange::Relisted => "listed again",
                            };
                            self.detail.provider_events.push(ProviderEvent {
                                at: end,
                                ip: self.senders[s].label.clone(),
                                by: self.destinations[p].name.clone(),
                                what,
                            });
                        }
                    }
                    *count = 0;
                }
            }
            if let Some(watch) = self.watch.as_mut() {
                watch.report(end)?;
            }
            self.follow_routes(end, t + 1);
            if t + 1 >= self.submit_slices && self.due.is_empty_from(t + 1) {
                break;
            }
        }
        let ended_at = self.scenario.start + (last_slice as i64 + 1) * self.slice;
        Ok(self.finish(ended_at, last_slice + 1))
    }

    fn apply_event(&mut self, event: &WorldEvent) {
        match event {
            WorldEvent::ListIp { at, ip, provider } => {
                let s = self.senders.iter().position(|x| x.real && &x.label == ip);
                let p = self.destinations.iter().position(|d| &d.name == provider);
                if let (Some(s), Some(p)) = (s, p) {
                    self.standing[s][p].list(*at);
                    self.detail.provider_events.push(ProviderEvent {
                        at: *at,
                        ip: ip.clone(),
                        by: provider.clone(),
                        what: "listed",
                    });
                }
            }
            WorldEvent::Dnsbl {
                at,
                ip,
                zone,
                listed,
            } => {
                if let Some(s) = self.senders.iter().position(|x| x.real && &x.label == ip) {
                    let changed = if *listed {
                        self.dnsbl_listings[s].insert(zone.clone())
                    } else {
                        self.dnsbl_listings[s].remove(zone)
                    };
                    if changed {
                        self.detail.provider_events.push(ProviderEvent {
                            at: *at,
                            ip: ip.clone(),
                            by: zone.clone(),
                            what: if *listed { "listed" } else { "delisted" },
                        });
                    }
                }
            }
        }
    }

    /// Picks up a changed route table: new plans from slice `t` on, and the
    /// queues flushed so deferred mail leaves by the new route.
    fn follow_routes(&mut self, at: i64, t: usize) {
        let changed = self.watch.as_mut().is_some_and(Watch::take_route_change);
        if !changed {
            return;
        }
        let plans = self.current_plans();
        for (p, plan) in plans.iter().enumerate() {
            let before = self.plans.get(p);
            if before.is_some_and(|b| b.mode != plan.mode || b.shares() != plan.shares()) {
                let change = self.describe_plan(p, plan, at);
                self.detail.route_changes.push(change);
            }
        }
        self.plans = plans;
        self.due.flush(t);
    }

    fn current_plans(&self) -> Vec<Plan> {
        match &self.watch {
            None => {
                let spread = Plan::spread(&self.pods);
                vec![spread; self.destinations.len()]
            }
            Some(watch) => {
                let sender_of: BTreeMap<(String, String), usize> = self
                    .senders
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| {
                        let pool = &watch.fleet.pools[s.pool?];
                        Some((
                            (
                                pool.metadata.name.clone().unwrap_or_default(),
                                s.label.clone(),
                            ),
                            i,
                        ))
                    })
                    .collect();
                let routes = watch.routes();
                self.destinations
                    .iter()
                    .map(|d| {
                        Plan::from_routes(&d.name, &routes, &sender_of).unwrap_or(Plan {
                            route: None,
                            mode: RouteMode::Defer,
                            targets: Vec::new(),
                        })
                    })
                    .collect()
            }
        }
    }

    fn describe_plan(&self, p: usize, plan: &Plan, at: i64) -> RouteChange {
        RouteChange {
            at,
            provider: self.destinations[p].name.clone(),
            mode: plan.mode,
            shares: plan
                .shares()
                .into_iter()
                .map(|(s, w)| (self.senders[s].label.clone(), w))
                .collect(),
        }
    }

    fn describe_plans(&self, at: i64) -> Vec<RouteChange> {
        self.plans
            .iter()
            .enumerate()
            .map(|(p, plan)| self.describe_plan(p, plan, at))
            .collect()
    }
}
