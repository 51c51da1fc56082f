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
use crate::fleet::{declared_provider, known_providers, Fleet, FleetError};
use crate::manifests::Manifests;
use crate::reputation::providers::ProviderSpec;
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
    /// Each pool's part of the fingerprint by `ns/name`, with the
    /// resourceVersion it was computed at: every reconcile fingerprints every
    /// pool, and serialising 1,600 IPs' reputation each time is what made a
    /// wake of 500 routes slow.
    pool_keys: Mutex<HashMap<String, (String, PoolKey)>>,
}

type PoolKey = (String, String, String, i64, String, u64);

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
        let fingerprint = self.fingerprint(pools, routes);
        if let Some(snapshot) = self.cached(namespace, fingerprint) {
            return Ok(snapshot);
        }
        // One build at a time: concurrent reconciles wanting the same new
        // snapshot wait for the first instead of compiling it again.
        let _building = self.building.lock().await;
        if let Some(snapshot) = self.cached(namespace, fingerprint) {
            return Ok(snapshot);
        }
        let previous = self.lock().get(namespace).map(|(_, s)| s.clone());
        let (validation, fleet) = fleet_reusing(
            namespace,
            pools,
            routes,
            previous.as_ref().map(|s| &s.fleet),
        )?;
        drop(previous);
        let snapshot = Arc::new(compiled(validation, fleet, now));
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

    /// A digest of what the table depends on (every pool's key, every route's
    /// generation), with each pool's part reused while its resourceVersion stays.
    fn fingerprint(&self, pools: &[Arc<SenderPool>], routes: &[Arc<DomainRoute>]) -> u64 {
        let mut memo = self.pool_keys.lock().unwrap_or_else(|e| e.into_inner());
        let pool_keys: Vec<PoolKey> = pools
            .iter()
            .map(|p| {
                let Some(version) = p.resource_version() else {
                    return pool_key(p);
                };
                let name = format!("{}/{}", namespace_of(&p.metadata), p.name_any());
                match memo.get(&name) {
                    Some((seen, key)) if *seen == version => key.clone(),
                    _ => {
                        let key = pool_key(p);
                        memo.insert(name, (version, key.clone()));
                        key
                    }
                }
            })
            .collect();
        // Deleted pools' entries go once they outnumber the live ones.
        if memo.len() > 2 * pools.len() + 16 {
            let live: std::collections::HashSet<String> = pools
                .iter()
                .map(|p| format!("{}/{}", namespace_of(&p.metadata), p.name_any()))
                .collect();
            memo.retain(|name, _| live.contains(name));
        }
        drop(memo);
        combine(pool_keys, routes)
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
    Ok(compiled(validation, fleet, now))
}

fn compiled(validation: FleetValidation, fleet: Fleet, now: Timestamp) -> Snapshot {
    let table = fleet.compile(now);
    let digest = {
        let mut h = DefaultHasher::new();
        (&validation, &table.routes, &table.problems).hash(&mut h);
        h.finish()
    };
    Snapshot {
        digest,
        validation,
        fleet,
        table,
    }
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
    fleet_reusing(namespace, pools, routes, None)
}

/// [`fleet_of`], taking the classifier of `previous` when the usable routes
/// declare the same providers: the classifier depends on nothing else, and
/// building it is most of the cost of a snapshot after a reputation change.
fn fleet_reusing(
    namespace: &str,
    pools: &[Arc<SenderPool>],
    routes: &[Arc<DomainRoute>],
    previous: Option<&Fleet>,
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
    if let Some(previous) = previous {
        if declared_providers(&previous.routes) == declared_providers(&routes) {
            let fleet = Fleet {
                known_providers: known_providers(&routes),
                pools,
                routes,
                classifier: previous.classifier.clone(),
            };
            return Ok((validation, fleet));
        }
    }
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

/// The providers `Fleet::new` adds to the classifier, in its order.
fn declared_providers(routes: &[DomainRoute]) -> Vec<ProviderSpec> {
    routes.iter().filter_map(declared_provider).collect()
}

/// A digest of what the routes read of a pool's status: every pair but its
/// window of counts, and the IPs whose `IpBound` is False (replica counts and
/// the other conditions change nothing compiled). Every counted report moves a window, and a
/// window alone never moves a route (a pair's state does, in the same
/// write): keyed on the windows, each feedback batch woke every route of
/// the namespace and rebuilt the snapshot.
pub fn routing_reputation_digest(p: &SenderPool) -> u64 {
    let mut h = DefaultHasher::new();
    for ip in p.status.iter().flat_map(|s| s.ips.iter()) {
        if !ip.reputation.is_empty() {
            ip.address.hash(&mut h);
            for pair in &ip.reputation {
                let mut pair = pair.clone();
                pair.window.clear();
                serde_json::to_string(&pair)
                    .unwrap_or_default()
                    .hash(&mut h);
            }
        }
        if crate::routing::ip_bound::not_bound(ip).is_some() {
            ("not bound", &ip.address).hash(&mut h);
        }
    }
    h.finish()
}

fn pool_key(p: &SenderPool) -> PoolKey {
    let reputation = routing_reputation_digest(p);
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
        reputation,
    )
}

fn combine(mut pool_keys: Vec<PoolKey>, routes: &[Arc<DomainRoute>]) -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::example::incident_fleet;

    #[test]
    fn a_reused_classifier_gives_the_fleet_a_fresh_build_gives() {
        let now = "2021-11-05T08:10:00Z".parse().unwrap();
        let (pools, routes) = incident_fleet(now);
        let pools: Vec<Arc<SenderPool>> = pools.into_iter().map(Arc::new).collect();
        let routes: Vec<Arc<DomainRoute>> = routes.into_iter().map(Arc::new).collect();
        let ns = namespace_of(&routes[0].metadata);
        let (_, previous) = fleet_of(&ns, &pools, &routes).unwrap();
        let (_, fresh) = fleet_of(&ns, &pools, &routes).unwrap();
        let (_, reused) = fleet_reusing(&ns, &pools, &routes, Some(&previous)).unwrap();
        assert_eq!(format!("{fresh:?}"), format!("{reused:?}"));
        // With other routes the result still matches a fresh build.
        let fewer = &routes[..routes.len() - 1];
        let (_, rebuilt) = fleet_reusing(&ns, &pools, fewer, Some(&previous)).unwrap();
        let (_, expected) = fleet_of(&ns, &pools, fewer).unwrap();
        assert_eq!(format!("{expected:?}"), format!("{rebuilt:?}"));
    }
}
