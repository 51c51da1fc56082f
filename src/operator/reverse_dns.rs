//! The leader's forward-confirmed reverse DNS checks of every pool IP
//! ([`crate::probe::reverse_dns_checks`], the same checks standalone mode
//! runs), written as the IPs' `ReverseDnsConfirmed` conditions in each
//! pool's status, guarded by its resourceVersion.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::api::Api;
use kube::ResourceExt;

use super::context::Context;
use super::error::api_status;
use crate::api::SenderPool;
use crate::probe::reverse_dns_checks::{set_conditions, PoolVerdicts, ReverseDnsChecks};

pub use crate::probe::reverse_dns_checks::{ReverseDnsGauges, REVERSE_DNS_CONFIRMED};

const STATUS_ATTEMPTS: u32 = 5;

/// Checks every IP when due until `stop` completes.
pub async fn run(ctx: Arc<Context>, stop: impl std::future::Future<Output = ()>) {
    let mut stop = std::pin::pin!(stop);
    let mut checks = ReverseDnsChecks::new(None);
    loop {
        let pools = ctx.stores.pools.all();
        let rounds = checks
            .round(&pools, &ctx.reverse_dns, std::time::Instant::now())
            .await;
        for verdicts in &rounds {
            if let Err(e) = record(&ctx, verdicts).await {
                tracing::warn!(pool = %format!("{}/{}", verdicts.namespace, verdicts.name), error = %e, "cannot record the reverse DNS checks");
            }
        }
        // Until the pools are listed, look again soon.
        let wait = if pools.is_empty() { 1 } else { 30 };
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(wait)) => {}
            () = &mut stop => return,
        }
    }
}

/// Writes one pool's verdicts as its IPs' `ReverseDnsConfirmed` conditions.
async fn record(ctx: &Context, verdicts: &PoolVerdicts) -> Result<(), String> {
    let (ns, name) = (verdicts.namespace.as_str(), verdicts.name.as_str());
    // A pool deleted while its IPs were checked: nothing to record (and no
    // status lock to leave behind).
    if ctx.stores.pools.get(ns, name).is_none() {
        return Ok(());
    }
    let lock = ctx.status_lock(ns, name);
    let _turn = lock.lock().await;
    let api: Api<SenderPool> = Api::namespaced(ctx.client.clone(), ns);
    let now = Timestamp::now();
    for _ in 0..STATUS_ATTEMPTS {
        let fresh = api.get(name).await.map_err(|e| e.to_string())?;
        let old_status = fresh.status.clone().unwrap_or_default();
        let mut status = old_status.clone();
        // Only the IPs the pool still lists (an IP's status entry may not be
        // written yet: the verdict creates it).
        let listed: Vec<_> = verdicts
            .ips
            .iter()
            .filter(|v| fresh.spec.ips.iter().any(|ip| ip.address == v.ip))
            .cloned()
            .collect();
        set_conditions(&mut status, &listed, fresh.metadata.generation, now);
        let old = serde_json::to_value(&old_status).map_err(|e| e.to_string())?;
        let new = serde_json::to_value(&status).map_err(|e| e.to_string())?;
        if old == new {
            return Ok(());
        }
        match ctx
            .writer
            .patch_status::<SenderPool>(ns, name, fresh.resource_version(), &old, &new)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if api_status(&e) == Some(409) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("the pool's status kept changing".into())
}
