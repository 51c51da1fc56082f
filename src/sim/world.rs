//! One run of a scenario: the slice-by-slice loop that moves mail from the
//! applications through the senders' queues to the providers and back.
//!
//! Within a slice, in this order: scheduled events (a provider lists an IP, a
//! DNS block list changes), the engine's timers and DNSBL probes, the mail due
//! (new submissions and retries) dispatched over the route in force, the
//! providers' answers, the agents' reports, and the providers' delisting rules.
//! A route change takes effect from the next slice, with a queue flush.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::{ReputationState, RouteMode};
use crate::fleet::Fleet;
use crate::manifests::Manifests;
use crate::reputation::classifier::Classifier;
use crate::reputation::engine::pair_view;

use super::filter::StatusFilter;
use super::provider::{IpStanding, ListingChange, ProviderModel, ReplyKind};
use super::queue::{
    backoff_seconds, split_off, DueQueue, Held, Holder, Piece, QUEUE_LIFETIME_SECONDS,
};
use super::recipients::Domain;
use super::report::{percentile, HourlyVolume, ProviderEvent, RouteChange, RunDetail, RunReport};
use super::rng::{apportion, Rng};
use super::routes::{fill, Plan};
use super::traffic;
use super::watch::{at, Watch};
use super::{HumanAction, Mode, Options, RunSetup, Scenario, SimError, WorldEvent};

/// Seconds from an attempt's start to the provider's answer.
const DELIVERY_SECONDS: u64 = 1;
/// Seconds from a reply to the agent reporting it.
const AGENT_DELAY_SECONDS: i64 = 1;
/// Address the simulated MX hosts answer from (documentation range).
const MX_ADDRESS: &str = "192.0.2.25";

struct Sender {
    label: String,
    /// A real source IP (the relay and other delivery systems are not).
    real: bool,
    /// Index of its pool in the fleet, for IPs.
    pool: Option<usize>,
}

struct Destination {
    name: String,
    model: ProviderModel,
    share: f64,
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

pub fn simulate(
    scenario: &Scenario,
    setup: &RunSetup,
    options: &Options,
) -> Result<RunReport, SimError> {
    World::new(scenario, setup, options)?.run()
}

struct World<'a> {
    scenario: &'a Scenario,
    setup: &'a RunSetup,
    slice: i64,
    submit_slices: usize,
    /// The run's volume factor: providers' per-IP limits scale with it.
    scale: f64,
    classifier: Classifier,
    filter: StatusFilter,
    senders: Vec<Sender>,
    relay: usize,
    other_system: usize,
    destinations: Vec<Destination>,
    standing: Vec<Vec<IpStanding>>,
    dnsbl_listings: Vec<BTreeSet<String>>,
    warmup_start: Vec<Option<i64>>,
    submissions: Vec<u64>,
    pods: Vec<(usize, u32)>,
    moves: Vec<(i64, i64, usize, usize, f64)>,
    plans: Vec<Plan>,
    credit: Vec<Vec<f64>>,
    due: DueQueue,
    watch: Option<Watch>,
    dnsbl_zones: Vec<(usize, String, i64)>,
    rng_dispatch: Rng,
    rng_replies: Rng,
    replies: BTreeMap<(usize, usize, ReplyKind), String>,
    totals: Totals,
    detail: RunDetail,
    initial_shares: Vec<RouteChange>,
    first_refusal: Option<i64>,
    watched: Vec<(usize, usize)>,
    watched_names: Vec<(String, String)>,
}

impl<'a> World<'a> {
    fn new(
        scenario: &'a Scenario,
        setup: &'a RunSetup,
        options: &Options,
    ) -> Result<Self, SimError> {
        let setup_error = |problem: String| SimError::Setup {
            scenario: scenario.name.clone(),
            problem,
        };
        let slice = scenario.slice_seconds.max(1);
        if scenario.submit_seconds < slice || 3600 % slice != 0 {
            return Err(setup_error(format!(
                "slices of {slice} s must divide an hour and fit {} s of submissions",
                scenario.submit_seconds
            )));
        }
        let submit_slices = usize::try_from(scenario.submit_seconds / slice).unwrap_or(0);
        let drain_slices = usize::try_from(scenario.drain_seconds.max(0) / slice).unwrap_or(0);
        let total_slices = submit_slices + drain_slices.max(1);
        let slices_per_hour = usize::try_from(3600 / slice).unwrap_or(60);
        let volume = (scenario.volume as f64 * options.scale).round() as u64;

        let manifests = Manifests {
            pools: setup.pools.clone(),
            routes: setup.routes.clone(),
            skipped: Vec::new(),
        };
        let fleet = Fleet::new(manifests, None)?;
        let classifier = fleet.classifier.clone();

        let mut senders = Vec::new();
        for (pool_index, pool) in fleet.pools.iter().enumerate() {
            for ip in &pool.spec.ips {
                senders.push(Sender {
                    label: ip.address.clone(),
                    real: true,
                    pool: Some(pool_index),
                });
            }
        }
        let relay = senders.len();
        senders.push(Sender {
            label: "relay".to_string(),
            real: false,
            pool: None,
        });
        let other_system = senders.len();
        senders.push(Sender {
            label: "other system".to_string(),
            real: false,
            pool: None,
        });
        let sender_index = |ip: &str| senders.iter().position(|s| s.real && s.label == ip);

        let mut by_provider: BTreeMap<String, (f64, Vec<Domain>, Vec<f64>)> = BTreeMap::new();
        for group in &scenario.destinations {
            if group.domains.is_empty() {
                continue;
            }
            let each = group.share_percent / group.domains.len() as f64;
            for domain in group.domains {
                let id = classifier.provider_of(Some(domain.name), Some(domain.mx_host));
                let name = classifier.providers().name(id).as_str().to_string();
                let entry = by_provider.entry(name).or_default();
                entry.0 += each;
                entry.1.push(*domain);
                entry.2.push(each);
            }
        }
        let destinations: Vec<Destination> = by_provider
            .into_iter()
            .map(|(name, (share, domains, weights))| Destination {
                model: scenario
                    .providers
                    .iter()
                    .find(|m| m.name == name)
                    .cloned()
                    .unwrap_or_else(|| ProviderModel::standard(&name)),
                name,
                share,
                domains,
                weights,
            })
            .collect();
        let provider_index = |name: &str| destinations.iter().position(|d| d.name == name);

        let mut pods = Vec::new();
        for (ip, count) in &setup.pods {
            let sender = sender_index(ip)
                .ok_or_else(|| setup_error(format!("pods name {ip}, which no pool has")))?;
            pods.push((sender, *count));
        }
        if setup.mode == Mode::Baseline && pods.is_empty() {
            return Err(setup_error(format!(
                "baseline run {} names no sender pods",
                setup.name
            )));
        }
        let total_pods: f64 = pods.iter().map(|(_, n)| f64::from(*n)).sum();
        let real_count = senders.iter().filter(|s| s.real).count().max(1) as f64;
        let hours = scenario.submit_seconds as f64 / 3600.0;
        let standing = senders
            .iter()
            .enumerate()
            .map(|(s, _)| {
                let fraction = match pods.iter().find(|(i, _)| *i == s) {
                    Some((_, n)) if total_pods > 0.0 => f64::from(*n) / total_pods,
                    _ if total_pods > 0.0 => 1.0 / pods.len().max(1) as f64,
                    _ => 1.0 / real_count,
                };
                destinations
                    .iter()
                    .map(|d| {
                        IpStanding::new(
                            slices_per_hour,
                            volume as f64 * d.share / 100.0 / hours * fraction,
                        )
                    })
                    .collect()
            })
            .collect();

        let mut moves = Vec::new();
        for action in &setup.people {
            if let HumanAction::MoveAway {
                from,
                until,
                ip,
                provider,
                share,
            } = action
            {
                let s = sender_index(ip)
                    .ok_or_else(|| setup_error(format!("a move names {ip}, which no pool has")))?;
                let p = provider_index(provider).ok_or_else(|| {
                    setup_error(format!(
                        "a move names provider {provider}, which gets no mail"
                    ))
                })?;
                moves.push((*from, *until, s, p, *share));
            }
        }
        let mut warmup_start = vec![None; senders.len()];
        for (ip, start) in &scenario.new_ips {
            let s = sender_index(ip)
                .ok_or_else(|| setup_error(format!("new IP {ip} is in no pool")))?;
            warmup_start[s] = Some(*start);
        }
        let mut watched = Vec::new();
        let mut watched_names = Vec::new();
        for (ip, provider) in scenario.incident.iter().flat_map(|i| &i.pairs) {
            let s = sender_index(ip).ok_or_else(|| {
                setup_error(format!("the incident names {ip}, which no pool has"))
            })?;
            let p = provider_index(provider).ok_or_else(|| {
                setup_error(format!(
                    "the incident names provider {provider}, which gets no mail"
                ))
            })?;
            watched.push((s, p));
            watched_names.push((ip.clone(), provider.clone()));
        }
        for event in &scenario.events {
            let (WorldEvent::ListIp { ip, .. } | WorldEvent::Dnsbl { ip, .. }) = event;
            if sender_index(ip).is_none() {
                return Err(setup_error(format!(
                    "an event names {ip}, which no pool has"
                )));
            }
            if let WorldEvent::ListIp { provider, .. } = event {
                if provider_index(provider).is_none() {
                    return Err(setup_error(format!(
                        "an event names provider {provider}, which gets no mail"
                    )));
                }
            }
        }

        let mut dnsbl_zones = Vec::new();
        if setup.mode == Mode::Mailfleet {
            for (s, sender) in senders.iter().enumerate() {
                let Some(pool) = sender.pool.map(|i| &fleet.pools[i]) else {
                    continue;
                };
                let interval = pool
                    .spec
                    .reputation
                    .dnsbl
                    .interval_seconds
                    .unwrap_or(300)
                    .max(slice);
                for zone in &pool.spec.reputation.dnsbl.zones {
                    dnsbl_zones.push((s, zone.zone.clone(), interval));
                }
            }
        }

        let submissions = traffic::submissions(
            volume,
            scenario.start,
            submit_slices,
            slice,
            &scenario.traffic,
            &mut Rng::derive(options.seed, 1),
        );
        let watch = match setup.mode {
            Mode::Mailfleet => Some(Watch::new(fleet, scenario.start)?),
            Mode::Baseline => None,
        };
        let sender_count = senders.len();
        let provider_count = destinations.len();
        let mut world = World {
            scenario,
            setup,
            slice,
            submit_slices,
            scale: options.scale,
            classifier,
            filter: StatusFilter::mailfleet()?,
            relay,
            other_system,
            destinations,
            standing,
            dnsbl_listings: vec![BTreeSet::new(); sender_count],
            warmup_start,
            submissions,
            pods,
            moves,
            plans: Vec::new(),
            credit: vec![vec![0.0; provider_count]; sender_count],
            due: DueQueue::new(total_slices),
            watch,
            dnsbl_zones,
            rng_dispatch: Rng::derive(options.seed, 2),
            rng_replies: Rng::derive(options.seed, 3),
            replies: BTreeMap::new(),
            totals: Totals::default(),
            detail: RunDetail {
                start: scenario.start,
                utc_offset_seconds: scenario.traffic.utc_offset_seconds,
                slice_seconds: slice,
                senders: senders.iter().map(|s| s.label.clone()).collect(),
                ..RunDetail::default()
            },
            senders,
            initial_shares: Vec::new(),
            first_refusal: None,
            watched,
            watched_names,
        };
        world.plans = world.current_plans();
        world.initial_shares = world.describe_plans(scenario.start);
        Ok(world)
    }

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

    /// Share of `provider`-bound mail that people have moved off sender `s` at `now`.
    fn moved_share(&self, s: usize, p: usize, now: i64) -> f64 {
        self.moves
            .iter()
            .filter(|(_, _, ms, mp, _)| *ms == s && *mp == p)
            .map(|(from, until, _, _, share)| {
                if now < *from {
                    0.0
                } else if now >= *until || until <= from {
                    *share
                } else {
                    share * ((now - from) as f64 / (until - from) as f64)
                }
            })
            .fold(0.0, f64::max)
    }

    /// Puts the mail due in slice `t` into per-sender, per-provider batches.
    fn dispatch(&mut self, t: usize, now: i64, batches: &mut [Vec<Vec<Piece>>]) {
        let providers = self.destinations.len();
        let mut for_route: Vec<Vec<Piece>> = vec![Vec::new(); providers];
        let mut pinned: Vec<Vec<Vec<Piece>>> =
            vec![vec![Vec::new(); providers]; self.senders.len()];
        for held in self.due.take(t) {
            match held.holder {
                Holder::Sender(s)
                    if !self.mailfleet() || self.plans[held.provider].target(s).is_some() =>
                {
                    pinned[s][held.provider].push(held.piece)
                }
                _ => for_route[held.provider].push(held.piece),
            }
        }
        if t < self.submit_slices {
            let count = self.submissions[t];
            self.totals.submitted += count;
            let shares: Vec<f64> = self.destinations.iter().map(|d| d.share).collect();
            let per_provider = apportion(count, &shares, &mut self.rng_dispatch);
            for (p, n) in per_provider.into_iter().enumerate() {
                if n == 0 {
                    continue;
                }
                let piece = Piece {
                    count: n,
                    submitted: t as u32,
                    attempts: 0,
                };
                if self.mailfleet() {
                    for_route[p].push(piece);
                } else {
                    let weights: Vec<f64> = self.pods.iter().map(|(_, n)| f64::from(*n)).collect();
                    let spread = apportion(n, &weights, &mut self.rng_dispatch);
                    for ((s, _), k) in self.pods.iter().zip(spread) {
                        if k > 0 {
                            pinned[*s][p].push(Piece { count: k, ..piece });
                        }
                    }
                }
            }
        }
        if !self.mailfleet() {
            for (s, per_provider) in pinned.into_iter().enumerate() {
                for (p, mut pieces) in per_provider.into_iter().enumerate() {
                    let total: u64 = pieces.iter().map(|x| x.count).sum();
                    let moved = self.moved_share(s, p, now);
                    if moved > 0.0 && total > 0 {
                        let away = self.rng_dispatch.round(total as f64 * moved).min(total);
                        batches[self.other_system][p].extend(split_off(&mut pieces, away));
                    }
                    batches[s][p].extend(pieces);
                }
            }
            return;
        }
        for p in 0..providers {
            let plan = self.plans[p].clone();
            match plan.mode {
                RouteMode::Relay => {
                    batches[self.relay][p].append(&mut for_route[p]);
                }
                RouteMode::Defer => {
                    for piece in std::mem::take(&mut for_route[p]) {
                        self.defer(Holder::Route, p, piece, t, now + self.slice);
                    }
                }
                RouteMode::Primary | RouteMode::FallbackPool => {
                    let mut rooms = Vec::with_capacity(plan.targets.len());
                    for target in &plan.targets {
                        let s = target.sender;
                        let room = match target.hourly_cap {
                            Some(cap) => {
                                let refill = cap as f64 * self.slice as f64 / 3600.0;
                                let credit = (self.credit[s][p] + refill).min(refill + 1.0);
                                self.credit[s][p] = credit;
                                credit.floor().max(0.0) as u64
                            }
                            None => u64::MAX,
                        };
                        let mut own = std::mem::take(&mut pinned[s][p]);
                        let own_total: u64 = own.iter().map(|x| x.count).sum();
                        let sent = split_off(&mut own, own_total.min(room));
                        let used: u64 = sent.iter().map(|x| x.count).sum();
                        batches[s][p].extend(sent);
                        for piece in own {
                            self.due.push(
                                t + 1,
                                Held {
                                    holder: Holder::Sender(s),
                                    provider: p,
                                    piece,
                                    deferred: false,
                                },
                            );
                        }
                        rooms.push(room - used);
                    }
                    let demand: u64 = for_route[p].iter().map(|x| x.count).sum();
                    let weights: Vec<f64> = plan.targets.iter().map(|x| x.weight).collect();
                    let given = fill(demand, &weights, &rooms, &mut self.rng_dispatch);
                    for (target, share) in plan.targets.iter().zip(&given) {
                        let s = target.sender;
                        if *share > 0 {
                            batches[s][p].extend(split_off(&mut for_route[p], *share));
                        }
                        if target.hourly_cap.is_some() {
                            let sent: u64 = batches[s][p].iter().map(|x| x.count).sum();
                            self.credit[s][p] = (self.credit[s][p] - sent as f64).max(0.0);
                        }
                    }
                    for piece in std::mem::take(&mut for_route[p]) {
                        self.due.push(
                            t + 1,
                            Held {
                                holder: Holder::Route,
                                provider: p,
                                piece,
                                deferred: false,
                            },
                        );
                    }
                }
            }
        }
    }

    /// Queues `piece` for a retry after a failed attempt at `end`, or bounces it
    /// when it has outlived the queue lifetime.
    fn defer(&mut self, holder: Holder, p: usize, piece: Piece, t: usize, end: i64) {
        self.totals.deferrals += piece.count;
        let submitted_at = self.scenario.start + i64::from(piece.submitted) * self.slice;
        if end - submitted_at >= QUEUE_LIFETIME_SECONDS {
            self.totals.expired += piece.count;
            self.totals.bounced += piece.count;
            return;
        }
        let attempts = piece.attempts.saturating_add(1);
        let wait = backoff_seconds(attempts);
        let slices = usize::try_from((wait + self.slice - 1) / self.slice)
            .unwrap_or(1)
            .max(1);
        self.due.push(
            t + slices,
            Held {
                holder,
                provider: p,
                piece: Piece { attempts, ..piece },
                deferred: true,
            },
        );
    }

    fn reply_text(&mut self, s: usize, p: usize, kind: ReplyKind) -> String {
        let template = self.destinations[p].model.reply(kind);
        let ip = &self.senders[s].label;
        self.replies
            .entry((s, p, kind))
            .or_insert_with(|| template.render(ip))
            .clone()
    }

    /// Hourly limit a provider holds sender `s` to at `now`, if any.
    fn hourly_limit(&self, s: usize, p: usize, now: i64) -> Option<f64> {
        let model = &self.destinations[p].model;
        let new_ip = self.warmup_start[s].and_then(|start| {
            let day = usize::try_from((now - start).div_euclid(86_400)).ok()?;
            model.new_ip_hourly_limits.get(day).copied()
        });
        let penalised = model
            .rate_limit_penalty
            .filter(|_| self.standing[s][p].penalty_until.is_some_and(|u| u > now));
        let own = model
            .per_ip_hourly_limit
            .map(|limit| limit * self.scale * penalised.map_or(1.0, |x| x.factor));
        match (own, new_ip) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One slice's attempts of sender `s` to provider `p`: the provider answers,
    /// the sender acts on the answer, the agent counts it.
    fn attempt(
        &mut self,
        s: usize,
        p: usize,
        mut pieces: Vec<Piece>,
        t: usize,
        now: i64,
    ) -> Result<(), SimError> {
        let total: u64 = pieces.iter().map(|x| x.count).sum();
        let mut classes: Vec<(ReplyKind, Vec<Piece>)> = Vec::new();
        if !self.senders[s].real {
            classes.push((ReplyKind::Delivered, pieces));
        } else if self.standing[s][p].is_listed() {
            classes.push((ReplyKind::Block, pieces));
        } else if self.destinations[p].model.honours_dnsbl && !self.dnsbl_listings[s].is_empty() {
            classes.push((ReplyKind::DnsblRefusal, pieces));
        } else {
            let limit = self.hourly_limit(s, p, now);
            let admitted = self.standing[s][p].admit(total, limit, now);
            let mut accepted = split_off(&mut pieces, admitted);
            if !pieces.is_empty() {
                let standing = &mut self.standing[s][p];
                if let Some(penalty) = self.destinations[p].model.rate_limit_penalty {
                    if standing.penalty_until.is_none_or(|u| u <= now) {
                        standing.penalty_until = Some(now + penalty.seconds);
                    }
                }
                classes.push((ReplyKind::RateLimited, pieces));
            }
            let share = self.destinations[p].model.greylist_share;
            if share > 0.0 {
                let mut greylisted = Vec::new();
                for piece in accepted.iter_mut().filter(|x| x.attempts == 0) {
                    let k = self
                        .rng_replies
                        .round(piece.count as f64 * share)
                        .min(piece.count);
                    if k > 0 {
                        greylisted.push(Piece { count: k, ..*piece });
                        piece.count -= k;
                    }
                }
                accepted.retain(|x| x.count > 0);
                if !greylisted.is_empty() {
                    classes.push((ReplyKind::Greylisted, greylisted));
                }
            }
            if !accepted.is_empty() {
                classes.push((ReplyKind::Delivered, accepted));
            }
        }

        let pick = self
            .rng_replies
            .pick_weighted(&self.destinations[p].weights)
            .unwrap_or(0);
        let domain = self.destinations[p].domains[pick];
        let first_reply_at = now + (self.slice / (total as i64 + 1)).max(1) + AGENT_DELAY_SECONDS;
        let hour = usize::try_from((now - self.scenario.start) / 3600).unwrap_or(0);
        for (kind, pieces) in classes {
            let count: u64 = pieces.iter().map(|x| x.count).sum();
            if count == 0 {
                continue;
            }
            let reply = self.reply_text(s, p, kind);
            let template_status = self.destinations[p].model.reply(kind).status;
            let status = if self.mailfleet() && kind != ReplyKind::Delivered {
                let said = format!(
                    "host {}[{MX_ADDRESS}] said: {reply} (in reply to RCPT TO command)",
                    domain.mx_host
                );
                self.filter.apply(template_status, &said)
            } else {
                template_status.to_string()
            };
            if self.senders[s].real {
                if let Some(watch) = self.watch.as_mut() {
                    let verdict = self.classifier.classify_text(
                        &reply,
                        Some(domain.name),
                        Some(domain.mx_host),
                    );
                    watch.record(
                        &self.senders[s].label,
                        &verdict,
                        &reply,
                        count,
                        first_reply_at,
                    )?;
                }
            }
            if kind.is_reputation()
                && self.watched.contains(&(s, p))
                && self.first_refusal.is_none()
            {
                self.first_refusal = Some(now);
            }
            if kind != ReplyKind::Delivered {
                let key = (
                    self.senders[s].label.clone(),
                    self.destinations[p].name.clone(),
                    kind.as_str(),
                );
                *self.detail.refused_by.entry(key).or_default() += count;
            }
            let volume = self.hourly_row(hour);
            match status.chars().next() {
                Some('2') => {
                    volume.delivered[s] += count;
                    let label = (
                        self.senders[s].label.clone(),
                        self.destinations[p].name.clone(),
                    );
                    let row = self.detail.delivered_hourly.entry(label).or_default();
                    if row.len() <= hour {
                        row.resize(hour + 1, 0);
                    }
                    row[hour] += count;
                    self.totals.delivered += count;
                    for piece in &pieces {
                        let waited = (t as u64 - u64::from(piece.submitted)) * self.slice as u64;
                        *self
                            .detail
                            .delays
                            .entry(waited + DELIVERY_SECONDS)
                            .or_default() += piece.count;
                        if waited > 0 {
                            self.totals.delayed += piece.count;
                        }
                    }
                }
                Some('4') => {
                    volume.failed[s] += count;
                    self.totals.refused += count;
                    for piece in pieces {
                        self.defer(Holder::Sender(s), p, Piece { ..piece }, t, now + self.slice);
                    }
                }
                _ => {
                    volume.failed[s] += count;
                    self.totals.refused += count;
                    self.totals.bounced += count;
                    if matches!(kind, ReplyKind::Block | ReplyKind::DnsblRefusal) {
                        self.totals.bounced_by_block += count;
                    }
                }
            }
        }
        Ok(())
    }

    fn hourly_row(&mut self, hour: usize) -> &mut HourlyVolume {
        let senders = self.senders.len();
        while self.detail.hourly.len() <= hour {
            self.detail.hourly.push(HourlyVolume {
                delivered: vec![0; senders],
                failed: vec![0; senders],
            });
        }
        &mut self.detail.hourly[hour]
    }

    fn finish(mut self, ended_at: i64, next_slice: usize) -> RunReport {
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
    fn engine_times(&self, incident_at: Option<i64>) -> (Option<f64>, Option<f64>, Option<f64>) {
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
