//! The forward-confirmed reverse DNS of every pool IP
//! ([`crate::probe::reverse_dns`]), checked by the leader beside the DNSBL
//! probes: once an hour per IP (every five minutes while the resolver
//! fails), through the pool's `spec.reputation.dnsbl.resolver` (a pool
//! without one is not checked: the operator sends DNS questions only where
//! the pool says).
//!
//! Each verdict is the IP's condition `ReverseDnsConfirmed` in
//! `status.ips[]` and the gauge `mailfleet_reverse_dns_confirmed{pool,ip}`
//! (1 confirmed, 0 not); a resolver error leaves the last answer.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use kube::api::Api;
use kube::ResourceExt;

use super::build::namespace_of;
use super::context::Context;
use super::error::api_status;
use crate::api::conditions::set_condition;
use crate::api::{ConditionStatus, SenderPool};
use crate::probe::dnsbl::{parse_nameserver, Resolver};
use crate::probe::reverse_dns::{check, ReverseDns};

/// The per-IP condition type.
pub const REVERSE_DNS_CONFIRMED: &str = "ReverseDnsConfirmed";
const EVERY: Duration = Duration::from_secs(3600);
const RETRY: Duration = Duration::from_secs(300);
const STATUS_ATTEMPTS: u32 = 5;

/// The last verdict per (pool, ip), for the metric.
#[derive(Default)]
pub struct ReverseDnsGauges {
    confirmed: Mutex<BTreeMap<(String, String), bool>>,
}

impl ReverseDnsGauges {
    fn set(&self, pool: &str, ip: &str, confirmed: bool) {
        self.confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((pool.to_string(), ip.to_string()), confirmed);
    }

    /// Drops the series of IPs no pool holds any more.
    fn retain(&self, live: &std::collections::BTreeSet<(String, String)>) {
        self.confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| live.contains(k));
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let confirmed = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
        if confirmed.is_empty() {
            return String::new();
        }
        let mut text = String::from("# HELP mailfleet_reverse_dns_confirmed 1 when the IP's PTR name resolves back to it (forward-confirmed reverse DNS), else 0.\n# TYPE mailfleet_reverse_dns_confirmed gauge\n");
        for ((pool, ip), ok) in confirmed.iter() {
            text.push_str(&format!(
                "mailfleet_reverse_dns_confirmed{{pool=\"{pool}\",ip=\"{ip}\"}} {}\n",
                u8::from(*ok)
            ));
        }
        text
    }
}

async fn resolver_of(pool: &SenderPool) -> Option<Resolver> {
    let text = pool.spec.reputation.dnsbl.resolver.as_ref()?;
    let address = parse_nameserver(text).ok()?.resolve().await.ok()?;
    Some(Resolver::new(address, Duration::from_secs(2), 2))
}

/// Checks every IP when due until `stop` completes.
pub async fn run(ctx: Arc<Context>, stop: impl std::future::Future<Output = ()>) {
    let mut stop = std::pin::pin!(stop);
    let mut due: BTreeMap<(String, String), std::time::Instant> = BTreeMap::new();
    loop {
        let pools = ctx.stores.pools.all();
        let mut live = std::collections::BTreeSet::new();
        for pool in &pools {
            let key = format!("{}/{}", namespace_of(&pool.metadata), pool.name_any());
            let mut verdicts = Vec::new();
            let mut resolver = None;
            for ip in &pool.spec.ips {
                let id = (key.clone(), ip.address.clone());
                live.insert(id.clone());
                if due
                    .get(&id)
                    .is_some_and(|at| *at > std::time::Instant::now())
                {
                    continue;
                }
                let Ok(address) = ip.address.trim().parse::<IpAddr>() else {
                    continue;
                };
                if resolver.is_none() {
                    resolver = Some(resolver_of(pool).await);
                }
                let Some(Some(r)) = &resolver else {
                    due.insert(id, std::time::Instant::now() + RETRY);
                    continue;
                };
                let verdict = check(r, address).await;
                let retry = matches!(verdict, ReverseDns::Unknown { .. });
                due.insert(
                    id,
                    std::time::Instant::now() + if retry { RETRY } else { EVERY },
                );
                if let ReverseDns::Unknown { detail } = &verdict {
                    tracing::warn!(pool = %key, ip = %ip.address, "reverse DNS: {detail}");
                }
                verdicts.push((ip.address.clone(), address, ip.helo_name.clone(), verdict));
            }
            if verdicts.is_empty() {
                continue;
            }
            for (ip, address, helo, verdict) in &verdicts {
                if let (Some(ok), _, _) = verdict.condition(*address, helo.as_deref()) {
                    ctx.reverse_dns.set(&key, ip, ok);
                }
            }
            if let Err(e) = record(&ctx, pool, &verdicts).await {
                tracing::warn!(pool = %key, error = %e, "cannot record the reverse DNS checks");
            }
        }
        ctx.reverse_dns.retain(&live);
        due.retain(|k, _| live.contains(k));
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
            () = &mut stop => return,
        }
    }
}

type Verdict = (String, IpAddr, Option<String>, ReverseDns);

/// Writes the verdicts as the IPs' `ReverseDnsConfirmed` conditions.
async fn record(ctx: &Context, pool: &SenderPool, verdicts: &[Verdict]) -> Result<(), String> {
    let ns = namespace_of(&pool.metadata);
    let name = pool.name_any();
    // A pool deleted while its IPs were checked: nothing to record (and no
    // status lock to leave behind).
    if ctx.stores.pools.get(&ns, &name).is_none() {
        return Ok(());
    }
    let lock = ctx.status_lock(&ns, &name);
    let _turn = lock.lock().await;
    let api: Api<SenderPool> = Api::namespaced(ctx.client.clone(), &ns);
    let now = Timestamp::now();
    for _ in 0..STATUS_ATTEMPTS {
        let fresh = api.get(&name).await.map_err(|e| e.to_string())?;
        let old_status = fresh.status.clone().unwrap_or_default();
        let mut status = old_status.clone();
        for (ip, address, helo, verdict) in verdicts {
            let (Some(ok), reason, message) = verdict.condition(*address, helo.as_deref()) else {
                continue;
            };
            let Some(ip_status) = status.ips.iter_mut().find(|s| s.address == *ip) else {
                continue;
            };
            set_condition(
                &mut ip_status.conditions,
                REVERSE_DNS_CONFIRMED,
                if ok {
                    ConditionStatus::True
                } else {
                    ConditionStatus::False
                },
                reason,
                message,
                fresh.metadata.generation,
                now,
            );
        }
        let old = serde_json::to_value(&old_status).map_err(|e| e.to_string())?;
        let new = serde_json::to_value(&status).map_err(|e| e.to_string())?;
        if old == new {
            return Ok(());
        }
        match ctx
            .writer
            .patch_status::<SenderPool>(&ns, &name, fresh.resource_version(), &old, &new)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if api_status(&e) == Some(409) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("the pool's status kept changing".into())
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
}
