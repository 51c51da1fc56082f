//! Building a run: the fleet, the senders, the providers each recipient
//! belongs to, the providers' view of each IP, and the scenario's people and
//! events resolved to indexes.

use std::collections::{BTreeMap, BTreeSet};

use crate::fleet::Fleet;
use crate::manifests::Manifests;
use crate::reputation::classifier::Classifier;

use super::super::filter::StatusFilter;
use super::super::provider::{IpStanding, ProviderModel};
use super::super::queue::DueQueue;
use super::super::recipients::Domain;
use super::super::report::RunDetail;
use super::super::rng::Rng;
use super::super::traffic;
use super::super::watch::Watch;
use super::{
    Destination, HumanAction, Mode, Options, RunSetup, Scenario, Sender, SimError, Totals, World,
    WorldEvent,
};

/// Default DNSBL probe interval when a pool names none.
const DNSBL_INTERVAL_SECONDS: i64 = 300;

impl<'a> World<'a> {
    pub(super) fn new(
        scenario: &'a Scenario,
        setup: &'a RunSetup,
        options: &Options,
    ) -> Result<Self, SimError> {
        let problem = |text: String| SimError::Setup {
            scenario: scenario.name.clone(),
            problem: text,
        };
        let slice = scenario.slice_seconds.max(1);
        if scenario.submit_seconds < slice || 3600 % slice != 0 {
            return Err(problem(format!(
                "slices of {slice} s must divide an hour and fit {} s of submissions",
                scenario.submit_seconds
            )));
        }
        let submit_slices = usize::try_from(scenario.submit_seconds / slice).unwrap_or(0);
        let drain_slices = usize::try_from(scenario.drain_seconds.max(0) / slice).unwrap_or(0);
        let volume = (scenario.volume as f64 * options.scale).round() as u64;

        let manifests = Manifests {
            pools: setup.pools.clone(),
            routes: setup.routes.clone(),
            skipped: Vec::new(),
        };
        let extra = match &setup.rules {
            Some(yaml) => Some(
                crate::reputation::classifier::ClassifierConfig::from_yaml(yaml)
                    .map_err(|e| problem(format!("run {}: rules: {e}", setup.name)))?,
            ),
            None => None,
        };
        let fleet = Fleet::new(manifests, extra)?;
        let classifier = fleet.classifier.clone();
        let senders = senders_of(&fleet);
        let destinations = destinations_of(scenario, &classifier);
        let names = Names {
            senders: &senders,
            destinations: &destinations,
            problem: &problem,
        };

        let pods = setup
            .pods
            .iter()
            .map(|(ip, count)| Ok((names.sender(ip, "the pods")?, *count)))
            .collect::<Result<Vec<_>, SimError>>()?;
        if setup.mode == Mode::Baseline && pods.is_empty() {
            return Err(problem(format!(
                "baseline run {} names no sender pods",
                setup.name
            )));
        }
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
                let s = names.sender(ip, "a move")?;
                let p = names.provider(provider, "a move")?;
                moves.push((*from, *until, s, p, *share));
            }
        }
        let mut warmup_start = vec![None; senders.len()];
        for (ip, start) in &scenario.new_ips {
            warmup_start[names.sender(ip, "the new IPs")?] = Some(*start);
        }
        let mut watched = Vec::new();
        let mut watched_names = Vec::new();
        for (ip, provider) in scenario.incident.iter().flat_map(|i| &i.pairs) {
            watched.push((
                names.sender(ip, "the incident")?,
                names.provider(provider, "the incident")?,
            ));
            watched_names.push((ip.clone(), provider.clone()));
        }
        for event in &scenario.events {
            let (WorldEvent::ListIp { ip, .. } | WorldEvent::Dnsbl { ip, .. }) = event;
            names.sender(ip, "an event")?;
            if let WorldEvent::ListIp { provider, .. } = event {
                names.provider(provider, "an event")?;
            }
        }
        let dnsbl_zones = match setup.mode {
            Mode::Mailfleet => dnsbl_zones(&fleet, &senders, slice),
            Mode::Baseline => Vec::new(),
        };
        let standing = standings(
            &senders,
            &destinations,
            &pods,
            volume as f64 / (scenario.submit_seconds as f64 / 3600.0),
            usize::try_from(3600 / slice).unwrap_or(60),
        );
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
        let relay = senders.iter().position(|s| s.label == RELAY).unwrap_or(0);
        let other_system = senders
            .iter()
            .position(|s| s.label == OTHER_SYSTEM)
            .unwrap_or(0);
        let (sender_count, provider_count) = (senders.len(), destinations.len());
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
            standing,
            dnsbl_listings: vec![BTreeSet::new(); sender_count],
            warmup_start,
            submissions,
            pods,
            moves,
            plans: Vec::new(),
            credit: vec![vec![0.0; provider_count]; sender_count],
            due: DueQueue::new(submit_slices + drain_slices.max(1)),
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
            destinations,
            initial_shares: Vec::new(),
            first_refusal: None,
            watched,
            watched_names,
            queue_lifetime: match setup.mode {
                Mode::Baseline => super::super::queue::QUEUE_LIFETIME_SECONDS,
                Mode::Mailfleet => setup
                    .pools
                    .iter()
                    .map(|p| {
                        crate::api::QueueLifetimes::resolve(
                            &p.spec.queue,
                            p.spec.reputation.max_hold_down_seconds,
                        )
                        .maximal_seconds
                    })
                    .min()
                    .unwrap_or(super::super::queue::QUEUE_LIFETIME_SECONDS),
            },
            oldest_wait: 0,
        };
        world.plans = world.current_plans();
        world.initial_shares = world.describe_plans(scenario.start);
        Ok(world)
    }
}

const RELAY: &str = "relay";
const OTHER_SYSTEM: &str = "other system";

/// Every IP of every pool, then the relay and the other delivery system people
/// may move mail to.
fn senders_of(fleet: &Fleet) -> Vec<Sender> {
    let mut senders: Vec<Sender> = fleet
        .pools
        .iter()
        .enumerate()
        .flat_map(|(pool, p)| {
            p.spec.ips.iter().map(move |ip| Sender {
                label: ip.address.clone(),
                real: true,
                pool: Some(pool),
            })
        })
        .collect();
    for label in [RELAY, OTHER_SYSTEM] {
        senders.push(Sender {
            label: label.to_string(),
            real: false,
            pool: None,
        });
    }
    senders
}

/// The providers the scenario's recipients belong to, as the classifier
/// recognises them (MX host first), with their shares and domains.
fn destinations_of(scenario: &Scenario, classifier: &Classifier) -> Vec<Destination> {
    let mut by_provider: BTreeMap<String, (f64, Vec<Domain>, Vec<f64>)> = BTreeMap::new();
    for group in scenario
        .destinations
        .iter()
        .filter(|g| !g.domains.is_empty())
    {
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
    by_provider
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
        .collect()
}

/// Each provider's view of each sender. Its usual hourly volume is the
/// sender's share of the traffic: its pods' share in a baseline fleet, an even
/// share for IPs the baseline does not use.
fn standings(
    senders: &[Sender],
    destinations: &[Destination],
    pods: &[(usize, u32)],
    messages_per_hour: f64,
    slices_per_hour: usize,
) -> Vec<Vec<IpStanding>> {
    let total_pods: f64 = pods.iter().map(|(_, n)| f64::from(*n)).sum();
    let real = senders.iter().filter(|s| s.real).count().max(1) as f64;
    (0..senders.len())
        .map(|s| {
            let fraction = match pods.iter().find(|(i, _)| *i == s) {
                Some((_, n)) if total_pods > 0.0 => f64::from(*n) / total_pods,
                _ if total_pods > 0.0 => 1.0 / pods.len() as f64,
                _ => 1.0 / real,
            };
            destinations
                .iter()
                .map(|d| {
                    IpStanding::new(
                        slices_per_hour,
                        messages_per_hour * d.share / 100.0 * fraction,
                    )
                })
                .collect()
        })
        .collect()
}

/// `(sender, zone, interval)` for every DNSBL zone a sender's pool probes.
fn dnsbl_zones(fleet: &Fleet, senders: &[Sender], slice: i64) -> Vec<(usize, String, i64)> {
    let mut zones = Vec::new();
    for (s, sender) in senders.iter().enumerate() {
        let Some(pool) = sender.pool.and_then(|i| fleet.pools.get(i)) else {
            continue;
        };
        let dnsbl = &pool.spec.reputation.dnsbl;
        let interval = dnsbl
            .interval_seconds
            .unwrap_or(DNSBL_INTERVAL_SECONDS)
            .max(slice);
        zones.extend(dnsbl.zones.iter().map(|z| (s, z.zone.clone(), interval)));
    }
    zones
}

/// Resolves the names a scenario uses to indexes, refusing unknown ones.
struct Names<'n> {
    senders: &'n [Sender],
    destinations: &'n [Destination],
    problem: &'n dyn Fn(String) -> SimError,
}

impl Names<'_> {
    fn sender(&self, ip: &str, what: &str) -> Result<usize, SimError> {
        self.senders
            .iter()
            .position(|s| s.real && s.label == ip)
            .ok_or_else(|| {
                (self.problem)(format!("{what} names {ip}, which is in no pool of the run"))
            })
    }

    fn provider(&self, name: &str, what: &str) -> Result<usize, SimError> {
        self.destinations
            .iter()
            .position(|d| d.name == name)
            .ok_or_else(|| {
                (self.problem)(format!(
                    "{what} names provider {name}, which receives no mail"
                ))
            })
    }
}
