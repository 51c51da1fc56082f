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
use crate::api::{DomainRoute, SenderPool};
use crate::fleet::{Fleet, FleetError};
use crate::manifests::Manifests;
use crate::routing::RouteTable;

/// One namespace's fleet and the route table compiled from it.
pub struct Snapshot {
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
}

impl SnapshotCache {
    /// The snapshot of `namespace` from every pool of the cluster and the
    /// namespace's routes, compiled at `now` unless an identical input was
    /// compiled before.
    pub fn get(
        &self,
        namespace: &str,
        pools: &[Arc<SenderPool>],
        routes: &[Arc<DomainRoute>],
        now: Timestamp,
    ) -> Result<Arc<Snapshot>, FleetError> {
        let fingerprint = fingerprint(pools, routes);
        if let Some((seen, snapshot)) = self.lock().get(namespace) {
            if *seen == fingerprint {
                return Ok(snapshot.clone());
            }
        }
        let snapshot = Arc::new(build(namespace, pools, routes, now)?);
        self.lock()
            .insert(namespace.to_string(), (fingerprint, snapshot.clone()));
        Ok(snapshot)
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
    Ok(Snapshot {
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
    let mut pool_keys: Vec<(String, String, String, String)> = pools
        .iter()
        .map(|p| {
            (
                namespace_of(&p.metadata),
                p.name_any(),
                p.uid().unwrap_or_default(),
                p.resource_version().unwrap_or_default(),
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
