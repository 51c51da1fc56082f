//! The fleet of one namespace as the stores see it, compiled once and shared.
//!
//! Both controllers and the feedback receiver need the route table of a whole
//! namespace; compiling it for each of 500 route reconciles would be wasted
//! work, so the compiled snapshot is cached under a fingerprint of what the
//! table depends on (every pool's resourceVersion, every route's generation).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use kube::ResourceExt;

use super::build::namespace_of;
use super::build::validate::{validate_fleet, FleetValidation};
use super::triggers::Trigger;
use crate::api::{DomainRoute, SenderPool};
use crate::fleet::{Fleet, FleetError};
use crate::manifests::Manifests;
use crate::routing::RouteTable;

/// One namespace's fleet and the route table compiled from it.
pub struct Snapshot {
    /// A digest of what the pools' workloads depend on (the validation and
    /// the compiled routes): when it moves, every pool must be planned again.
    pub digest: u64,
    /// Problems of every pool (cluster-wide: an IP is claimed across
    /// namespaces) and of this namespace's routes.
    pub validation: FleetValidation,
    /// The usable part of the namespace: unusable objects and lost IPs left out.
    pub fleet: Fleet,
    pub table: RouteTable,
}

#[derive(Default)]
pub struct SnapshotCache {
    by_namespace: Mutex<HashMap<String, (u64, Arc<Snapshot>)>>,
    /// Fired when a namespace's digest moves (the pool controllers' triggers).
    on_change: Mutex<Vec<Trigger>>,
    building: tokio::sync::Mutex<()>,
}

impl SnapshotCache {
    /// The snapshot of `namespace` from every pool of the cluster and the
    /// namespace's routes, compiled at `now` unless an identical input was
    /// compiled before.
    pub async fn get(
        &self,
        namespace: &str,
        pools: &[Arc<SenderPool>],
        routes: &[Arc<DomainRoute>],
        now: Timestamp,
    ) -> Result<Arc<Snapshot>, FleetError> {
        let fingerprint = fingerprint(pools, routes);
        if let Some(snapshot) = self.cached(namespace, fingerprint) {
            return Ok(snapshot);
        }
        // One build at a time: concurrent reconciles wanting the same new
        // snapshot wait for the first instead of compiling it again.
        let _building = self.building.lock().await;
        if let Some(snapshot) = self.cached(namespace, fingerprint) {
            return Ok(snapshot);
        }
        let snapshot = Arc::new(build(namespace, pools, routes, now)?);
        let previous = self
            .lock()
            .insert(namespace.to_string(), (fingerprint, snapshot.clone()));
        if previous.is_some_and(|(_, p)| p.digest != snapshot.digest) {
            for trigger in self
                .on_change
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
            {
                trigger.fire();
            }
        }
        Ok(snapshot)
    }

    fn cached(&self, namespace: &str, fingerprint: u64) -> Option<Arc<Snapshot>> {
        self.lock()
            .get(namespace)
            .filter(|(seen, _)| *seen == fingerprint)
            .map(|(_, snapshot)| snapshot.clone())
    }

    /// Fires `trigger` whenever the routes or the validation of a namespace change.
    pub fn notify(&self, trigger: Trigger) {
        self.on_change
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(trigger);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Arc<Snapshot>)>> {
        self.by_namespace.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Builds and compiles a snapshot without the cache (the feedback path edits
/// its own copy of the fleet).
pub fn build(
    namespace: &str,
    pools: &[Arc<SenderPool>],
    routes: &[Arc<DomainRoute>],
    now: Timestamp,
) -> Result<Snapshot, FleetError> {
    let (validation, fleet) = fleet_of(namespace, pools, routes)?;
    let table = fleet.compile(now);
    let digest = {
        let mut h = DefaultHasher::new();
        format!("{validation:?}").hash(&mut h);
        format!("{:?}", table.routes).hash(&mut h);
        format!("{:?}", table.problems).hash(&mut h);
        h.finish()
    };
    Ok(Snapshot {
        digest,
        validation,
        fleet,
        table,
    })
}

/// The validation of these objects and the usable fleet of `namespace`,
/// sorted by name so the result does not depend on the order a store returns
/// them in. `pools` may hold every pool of the cluster; `routes` those of
/// `namespace`.
pub fn fleet_of(
    namespace: &str,
    pools: &[Arc<SenderPool>],
    routes: &[Arc<DomainRoute>],
) -> Result<(FleetValidation, Fleet), FleetError> {
    let mut pools: Vec<SenderPool> = pools.iter().map(|p| (**p).clone()).collect();
    let mut routes: Vec<DomainRoute> = routes
        .iter()
        .filter(|r| namespace_of(&r.metadata) == namespace)
        .map(|r| (**r).clone())
        .collect();
    pools.sort_by_key(|p| (namespace_of(&p.metadata), p.name_any()));
    routes.sort_by_key(|r| r.name_any());
    let validation = validate_fleet(&pools, &routes);
    let (mut pools, routes) = validation.usable_fleet(&pools, &routes);
    pools.retain(|p| namespace_of(&p.metadata) == namespace);
    let fleet = Fleet::new(
        Manifests {
            pools,
            routes,
            skipped: Vec::new(),
        },
        None,
    )?;
    Ok((validation, fleet))
}

fn fingerprint(pools: &[Arc<SenderPool>], routes: &[Arc<DomainRoute>]) -> u64 {
    // Of a pool's status only the reputation reaches the table: replica
    // counts and conditions change nothing compiled.
    let mut pool_keys: Vec<(String, String, String, i64, String, u64)> = pools
        .iter()
        .map(|p| {
            let mut h = DefaultHasher::new();
            for ip in p.status.iter().flat_map(|s| s.ips.iter()) {
                if !ip.reputation.is_empty() {
                    ip.address.hash(&mut h);
                    serde_json::to_string(&ip.reputation)
                        .unwrap_or_default()
                        .hash(&mut h);
                }
            }
            (
                namespace_of(&p.metadata),
                p.name_any(),
                p.uid().unwrap_or_default(),
                p.metadata.generation.unwrap_or_default(),
                p.metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default(),
                h.finish(),
            )
        })
        .collect();
    // A route's status never changes the table (learned domains aside, which
    // only the status writer itself adds), so its generation is enough.
    let mut route_keys: Vec<(String, String, i64)> = routes
        .iter()
        .map(|r| {
            (
                r.name_any(),
                r.uid().unwrap_or_default(),
                r.metadata.generation.unwrap_or_default(),
            )
        })
        .collect();
    pool_keys.sort();
    route_keys.sort();
    let mut h = DefaultHasher::new();
    pool_keys.hash(&mut h);
    route_keys.hash(&mut h);
    h.finish()
}
