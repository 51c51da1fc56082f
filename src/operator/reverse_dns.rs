//! The leader's forward-confirmed reverse DNS checks of every pool IP
//! ([`crate::probe::reverse_dns_checks`], the same checks standalone mode
//! runs), written as the IPs' `ReverseDnsConfirmed` conditions in each
//! pool's status, guarded by its resourceVersion.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use super::context::Context;
use super::error::OperatorError;
use super::status_write::{self, Attempt};
use crate::api::SenderPool;
use crate::probe::reverse_dns_checks::{set_conditions, PoolVerdicts, ReverseDnsChecks};
use crate::routing::ObjectKey;

pub use crate::probe::reverse_dns_checks::{ReverseDnsGauges, REVERSE_DNS_CONFIRMED};

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
                tracing::warn!(pool = %ObjectKey::new(&verdicts.namespace, &verdicts.name), error = %e, "cannot record the reverse DNS checks");
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
async fn record(ctx: &Context, verdicts: &PoolVerdicts) -> Result<(), OperatorError> {
    let key = ObjectKey::new(&verdicts.namespace, &verdicts.name);
    // A pool deleted while its IPs were checked: nothing to record (and no
    // status lock to leave behind).
    if ctx.stores.pools.get(&key.namespace, &key.name).is_none() {
        return Ok(());
    }
    let lock = ctx.status_lock(&key.namespace, &key.name);
    let _turn = lock.lock().await;
    let now = Timestamp::now();
    let compute =
        |fresh: Arc<SenderPool>| std::future::ready(verdict_status(&key, verdicts, &fresh, now));
    status_write::write_status(ctx, &key, None, compute).await?;
    Ok(())
}

/// The stored status with the verdicts of the IPs the pool still lists (an
/// IP's status entry may not be written yet: the verdict creates it).
fn verdict_status(
    key: &ObjectKey,
    verdicts: &PoolVerdicts,
    fresh: &SenderPool,
    now: Timestamp,
) -> Result<Attempt<()>, OperatorError> {
    let old_status = fresh.status.clone().unwrap_or_default();
    let mut status = old_status.clone();
    let listed: Vec<_> = verdicts
        .ips
        .iter()
        .filter(|v| fresh.spec.ips.iter().any(|ip| ip.address == v.ip))
        .cloned()
        .collect();
    set_conditions(&mut status, &listed, fresh.metadata.generation, now);
    if status == old_status {
        return Ok(Attempt::Unchanged(()));
    }
    Ok(Attempt::Write {
        old: status_write::encode("SenderPool", key, &old_status)?,
        new: status_write::encode("SenderPool", key, &status)?,
        then: (),
    })
}
