//! The forward-confirmed reverse DNS of every pool IP
//! ([`super::reverse_dns`]) on a schedule, for the operator's leader and for
//! standalone mode alike: once an hour per IP (every five minutes while the
//! resolver fails), through the pool's `spec.reputation.dnsbl.resolver` or,
//! in standalone mode, `--dnsbl-resolver` (a pool with neither is not
//! checked: DNS questions go only where the operator says).
//!
//! Each verdict is the IP's condition `ReverseDnsConfirmed` in
//! `status.ips[]` ([`set_conditions`]) and the gauge
//! `mailfleet_reverse_dns_confirmed{pool,ip}` (1 confirmed, 0 not); a
//! resolver error leaves the last answer.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use prometheus_client::encoding::DescriptorEncoder;

use super::dnsbl::{parse_nameserver, Nameserver, Resolver};
use super::reverse_dns::{check, ReverseDns};
use crate::api::conditions::{set_condition, ConditionStatus};
use crate::api::{IpStatus, SenderPool, SenderPoolStatus};
use crate::metrics::catalogue;
use crate::metrics::Families;

/// The per-IP condition type.
pub const REVERSE_DNS_CONFIRMED: &str = "ReverseDnsConfirmed";
/// How often a confirmed or refuted IP is checked again.
pub const EVERY: Duration = Duration::from_secs(3600);
/// How soon an IP is checked again after the resolver failed.
pub const RETRY: Duration = Duration::from_secs(300);

/// The last verdict per (pool, ip), for the metric; clones share them.
#[derive(Default, Clone)]
pub struct ReverseDnsGauges {
    confirmed: Arc<Mutex<BTreeMap<(String, String), bool>>>,
}

impl ReverseDnsGauges {
    fn set(&self, pool: &str, ip: &str, confirmed: bool) {
        self.confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((pool.to_string(), ip.to_string()), confirmed);
    }

    /// Drops the series of IPs no pool holds any more.
    fn retain(&self, live: &BTreeSet<(String, String)>) {
        self.confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| live.contains(k));
    }

    /// This source alone, as Prometheus text.
    pub fn render(&self) -> String {
        crate::metrics::render(self)
    }
}

impl Families for ReverseDnsGauges {
    fn encode(&self, out: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let confirmed = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
        if confirmed.is_empty() {
            return Ok(());
        }
        catalogue::REVERSE_DNS_CONFIRMED.write(
            out,
            confirmed
                .iter()
                .map(|((pool, ip), ok)| ([pool.as_str(), ip.as_str()], *ok)),
        )
    }
}

/// One IP's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpVerdict {
    /// The IP as the pool's spec writes it.
    pub ip: String,
    pub address: IpAddr,
    /// The pool's `heloName` for it.
    pub helo: Option<String>,
    pub verdict: ReverseDns,
}

/// The verdicts of one pool in a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolVerdicts {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpVerdict>,
}

/// When each IP is due, and the resolver that overrides the pools' own.
pub struct ReverseDnsChecks {
    resolver: Option<Nameserver>,
    due: BTreeMap<(String, String), Instant>,
}

impl ReverseDnsChecks {
    /// `resolver`: ask it instead of each pool's `spec.reputation.dnsbl.resolver`.
    pub fn new(resolver: Option<Nameserver>) -> Self {
        ReverseDnsChecks {
            resolver,
            due: BTreeMap::new(),
        }
    }

    async fn resolver_of(&self, pool: &SenderPool) -> Option<Resolver> {
        let nameserver = match &self.resolver {
            Some(ns) => ns.clone(),
            None => parse_nameserver(pool.spec.reputation.dnsbl.resolver.as_ref()?).ok()?,
        };
        let address = nameserver.resolve().await.ok()?;
        Some(Resolver::new(address, Duration::from_secs(2), 2))
    }

    /// Checks every IP that is due (`now` is the driver's clock), sets the
    /// gauges and returns the verdicts of each pool that had one.
    pub async fn round<P: std::borrow::Borrow<SenderPool>>(
        &mut self,
        pools: &[P],
        gauges: &ReverseDnsGauges,
        now: Instant,
    ) -> Vec<PoolVerdicts> {
        let mut live = BTreeSet::new();
        let mut rounds = Vec::new();
        for pool in pools {
            let pool = pool.borrow();
            let namespace = pool
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let name = pool.metadata.name.clone().unwrap_or_default();
            let key = format!("{namespace}/{name}");
            let mut verdicts = Vec::new();
            let mut resolver = None;
            for ip in &pool.spec.ips {
                let id = (key.clone(), ip.address.clone());
                live.insert(id.clone());
                if self.due.get(&id).is_some_and(|at| *at > now) {
                    continue;
                }
                let Ok(address) = ip.address.trim().parse::<IpAddr>() else {
                    continue;
                };
                if resolver.is_none() {
                    resolver = Some(self.resolver_of(pool).await);
                }
                let Some(Some(r)) = &resolver else {
                    self.due.insert(id, now + RETRY);
                    continue;
                };
                let verdict = check(r, address).await;
                let retry = matches!(verdict, ReverseDns::Unknown { .. });
                self.due.insert(id, now + if retry { RETRY } else { EVERY });
                if let ReverseDns::Unknown { detail } = &verdict {
                    tracing::warn!(pool = %key, ip = %ip.address, "reverse DNS: {detail}");
                }
                if let (Some(ok), _, _) = verdict.condition(address, ip.helo_name.as_deref()) {
                    gauges.set(&key, &ip.address, ok);
                }
                verdicts.push(IpVerdict {
                    ip: ip.address.clone(),
                    address,
                    helo: ip.helo_name.clone(),
                    verdict,
                });
            }
            if !verdicts.is_empty() {
                rounds.push(PoolVerdicts {
                    namespace,
                    name,
                    ips: verdicts,
                });
            }
        }
        gauges.retain(&live);
        self.due.retain(|k, _| live.contains(k));
        rounds
    }
}

/// Writes the verdicts as the IPs' `ReverseDnsConfirmed` conditions (an
/// unknown verdict leaves the last answer).
pub fn set_conditions(
    status: &mut SenderPoolStatus,
    verdicts: &[IpVerdict],
    generation: Option<i64>,
    now: Timestamp,
) {
    for v in verdicts {
        let (Some(ok), reason, message) = v.verdict.condition(v.address, v.helo.as_deref()) else {
            continue;
        };
        let at = match status.ips.iter().position(|s| s.address == v.ip) {
            Some(at) => at,
            None => {
                status.ips.push(IpStatus::new(v.ip.clone()));
                status.ips.len() - 1
            }
        };
        set_condition(
            &mut status.ips[at].conditions,
            REVERSE_DNS_CONFIRMED,
            ConditionStatus::from(ok),
            reason,
            message,
            generation,
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gauge_has_one_series_per_checked_ip() {
        let gauges = ReverseDnsGauges::default();
        gauges.set("mail/bulk", "203.0.113.10", true);
        gauges.set("mail/bulk", "203.0.113.11", false);
        let text = gauges.render();
        assert!(text
            .contains("mailfleet_reverse_dns_confirmed{pool=\"mail/bulk\",ip=\"203.0.113.11\"} 0"));
        gauges.retain(&[("mail/bulk".to_string(), "203.0.113.10".to_string())].into());
        assert!(!gauges.render().contains("203.0.113.11"));
    }

    #[test]
    fn verdicts_become_conditions_and_an_unknown_one_keeps_the_last() {
        let mut status = SenderPoolStatus::default();
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        let verdict = |v: ReverseDns| IpVerdict {
            ip: "203.0.113.10".into(),
            address: "203.0.113.10".parse().unwrap(),
            helo: None,
            verdict: v,
        };
        set_conditions(&mut status, &[verdict(ReverseDns::NoPtr)], Some(3), t);
        let condition = |s: &SenderPoolStatus| s.ips[0].conditions[0].clone();
        assert_eq!(condition(&status).status, ConditionStatus::False);
        assert_eq!(condition(&status).reason, "NoPtr");
        set_conditions(
            &mut status,
            &[verdict(ReverseDns::Unknown {
                detail: "timeout".into(),
            })],
            Some(3),
            t,
        );
        assert_eq!(condition(&status).reason, "NoPtr", "kept");
        set_conditions(
            &mut status,
            &[verdict(ReverseDns::Confirmed {
                name: "mta10.example.net".into(),
            })],
            Some(3),
            t,
        );
        assert_eq!(condition(&status).status, ConditionStatus::True);
        assert_eq!(status.ips.len(), 1);
    }
}
