//! A probe round: every (IP, zone) asked with bounded concurrency, the TXT
//! reason fetched for listings, each answer read by its zone's rules.

use std::net::IpAddr;

use futures::stream::{self, StreamExt};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::cache::ResultCache;
use super::error::ProbeError;
use super::name::query_name;
use super::transport::Resolver;
use super::wire::{QueryType, Rcode};
use super::zone::{Reading, ZoneRules};
use crate::api::DnsblResult;
use crate::reputation::engine::Signal;

/// One answer about one IP in one zone.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeOutcome {
    pub ip: IpAddr,
    /// What the engine and the status get; `error` holds the error's text.
    pub result: DnsblResult,
    /// The typed error behind `result.error`, for counters and conditions.
    pub error: Option<ProbeError>,
    /// Taken from the cache rather than asked in this round.
    pub cached: bool,
}

impl ProbeOutcome {
    /// The engine signal about `self.ip`.
    pub fn signal(&self) -> Signal {
        Signal::Dnsbl(self.result.clone())
    }
}

/// Asks one resolver about many IPs, at most `concurrency` questions at a time.
#[derive(Clone, Debug)]
pub struct DnsblProbe {
    resolver: Resolver,
    concurrency: usize,
}

impl DnsblProbe {
    pub fn new(resolver: Resolver, concurrency: usize) -> Self {
        DnsblProbe {
            resolver,
            concurrency: concurrency.max(1),
        }
    }

    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// One (IP, zone) question; `clock` stamps the answer when it arrives.
    pub async fn check(
        &self,
        ip: IpAddr,
        zone: &ZoneRules,
        clock: &(dyn Fn() -> Timestamp + Sync),
    ) -> ProbeOutcome {
        let (listed, codes, reason, error) = match self.ask(ip, zone).await {
            Ok((codes, reason)) => (true, codes, reason, None),
            Err(Answer::NotListed) => (false, Vec::new(), None, None),
            Err(Answer::Failed { codes, error }) => (false, codes, None, Some(error)),
        };
        ProbeOutcome {
            ip,
            result: DnsblResult {
                zone: zone.zone().to_string(),
                listed,
                codes: codes.iter().map(|c| c.to_string()).collect(),
                reason,
                error: error.as_ref().map(|e| e.to_string()),
                checked_at: Time(clock()),
            },
            error,
            cached: false,
        }
    }

    /// Every IP against every zone. Outcomes come back in the order of `ips`,
    /// then of `zones`, whatever order the answers arrived in.
    pub async fn round(
        &self,
        ips: &[IpAddr],
        zones: &[ZoneRules],
        clock: &(dyn Fn() -> Timestamp + Sync),
    ) -> Vec<ProbeOutcome> {
        let jobs: Vec<(IpAddr, usize)> = ips
            .iter()
            .flat_map(|ip| (0..zones.len()).map(move |zone| (*ip, zone)))
            .collect();
        self.run(jobs, zones, clock).await
    }

    /// Like [`round`](Self::round), but an (IP, zone) with a fresh cached
    /// answer is not asked again; new answers are stored in `cache`.
    pub async fn round_cached(
        &self,
        ips: &[IpAddr],
        zones: &[ZoneRules],
        cache: &mut ResultCache,
        clock: &(dyn Fn() -> Timestamp + Sync),
    ) -> Vec<ProbeOutcome> {
        let now = clock();
        let mut outcomes: Vec<Option<ProbeOutcome>> = Vec::with_capacity(ips.len() * zones.len());
        let mut jobs = Vec::new();
        let mut slots = Vec::new();
        for ip in ips {
            for (z, zone) in zones.iter().enumerate() {
                match cache.get(*ip, zone.zone(), now) {
                    Some(hit) => outcomes.push(Some(ProbeOutcome {
                        cached: true,
                        ..hit.clone()
                    })),
                    None => {
                        slots.push(outcomes.len());
                        outcomes.push(None);
                        jobs.push((*ip, z));
                    }
                }
            }
        }
        let fresh = self.run(jobs, zones, clock).await;
        let stored_at = clock();
        for (slot, outcome) in slots.into_iter().zip(fresh) {
            cache.put(outcome.clone(), stored_at);
            outcomes[slot] = Some(outcome);
        }
        outcomes.into_iter().flatten().collect()
    }

    /// Jobs name their zone by index: a stream item holding a reference
    /// would make the round's future not `Send` (a known limit of the
    /// compiler with higher-ranked closures), and the operator spawns it.
    async fn run(
        &self,
        jobs: Vec<(IpAddr, usize)>,
        zones: &[ZoneRules],
        clock: &(dyn Fn() -> Timestamp + Sync),
    ) -> Vec<ProbeOutcome> {
        let mut indexed: Vec<(usize, ProbeOutcome)> = stream::iter(jobs.into_iter().enumerate())
            .map(|(i, (ip, zone))| {
                let zone = &zones[zone];
                async move { (i, self.check(ip, zone, clock).await) }
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        indexed.sort_by_key(|(i, _)| *i);
        indexed.into_iter().map(|(_, outcome)| outcome).collect()
    }

    /// `Ok` is a listing with its codes and TXT reason.
    async fn ask(
        &self,
        ip: IpAddr,
        zone: &ZoneRules,
    ) -> Result<(Vec<std::net::Ipv4Addr>, Option<String>), Answer> {
        let name = query_name(ip, zone.query_zone()).map_err(Answer::failed)?;
        let reply = self
            .resolver
            .query(&name, QueryType::A)
            .await
            .map_err(Answer::failed)?;
        let nameserver = self.resolver.address;
        match reply.rcode {
            Rcode::NxDomain => return Err(Answer::NotListed),
            Rcode::NoError => {}
            Rcode::ServFail => return Err(Answer::failed(ProbeError::ServFail { nameserver })),
            Rcode::Refused => return Err(Answer::failed(ProbeError::Refused { nameserver })),
            Rcode::Other(code) => {
                return Err(Answer::failed(ProbeError::OtherRcode { nameserver, code }))
            }
        }
        if reply.truncated && reply.addresses.is_empty() {
            return Err(Answer::failed(ProbeError::Truncated { nameserver }));
        }
        match zone.read(&reply.addresses) {
            Reading::NotListed => Err(Answer::NotListed),
            Reading::Error(error) => Err(Answer::Failed {
                codes: reply.addresses,
                error,
            }),
            Reading::Listed => {
                let reason = self.reason(&name).await;
                Ok((reply.addresses, reason))
            }
        }
    }

    /// The TXT reason of a listing. A listing stands without it: a failed TXT
    /// query only leaves the reason empty.
    async fn reason(&self, name: &str) -> Option<String> {
        match self.resolver.query(name, QueryType::Txt).await {
            Ok(reply) if reply.rcode == Rcode::NoError && !reply.texts.is_empty() => {
                Some(reply.texts.join("; "))
            }
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(%name, error = %e, "no TXT reason for a listing");
                None
            }
        }
    }
}

/// Why `ask` found no listing.
enum Answer {
    NotListed,
    Failed {
        codes: Vec<std::net::Ipv4Addr>,
        error: ProbeError,
    },
}

impl Answer {
    fn failed(error: ProbeError) -> Self {
        Answer::Failed {
            codes: Vec::new(),
            error,
        }
    }
}
