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
use super::triggers::{Trigger, Wakes};
use crate::api::{DomainRoute, SenderPool};
use crate::fleet::{declared_provider, known_providers, Fleet, FleetError};
use crate::manifests::Manifests;
use crate::reputation::providers::ProviderSpec;
use crate::routing::{ObjectKey, RouteTable};

/// One namespace's fleet and the route table compiled from it.
pub struct Snapshot {
    /// A digest of what the pools' workloads depend on (the validation and
    /// the compiled routes): when it moves, every pool must be planned again.
    pub digest: u64,
    /// A digest of the validation alone (it reads only specs, fleet-wide).
    pub validation_digest: u64,
    /// Problems of every pool (cluster-wide: an IP is claimed across
    /// namespaces) and of this namespace's routes.
    pub validation: FleetValidation,
    /// The usable part of the namespace: unusable objects and lost IPs left out.
    pub fleet: Fleet,
    pub table: RouteTable,
    /// Each of the namespace's pools' [`pool_view`] (filled by the cache).
    pub pool_views: HashMap<ObjectKey, u64>,
}

impl Snapshot {
    /// What the workloads of `pool` read of this snapshot, as a digest.
    pub fn pool_view(&self, pool: &ObjectKey) -> u64 {
        match self.pool_views.get(pool) {
            Some(view) => *view,
            None => pool_views(self, std::slice::from_ref(pool))
                .remove(pool)
                .unwrap_or_default(),
        }
    }
}

#[derive(Default)]
pub struct SnapshotCache {
    by_namespace: Mutex<HashMap<String, (u64, Arc<Snapshot>)>>,
    /// Told the pools whose view moved when a namespace's digest moves (the
    /// pool controllers' wake-ups).
    on_change: Mutex<Vec<(Trigger, Wakes<SenderPool>)>>,
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
        let mut snapshot = compiled(validation, fleet, now);
        let keys: Vec<ObjectKey> = pools
            .iter()
            .filter(|p| namespace_of(&p.metadata) == namespace)
            .map(|p| ObjectKey::new(namespace, p.name_any()))
            .collect();
        snapshot.pool_views = pool_views(&snapshot, &keys);
        let snapshot = Arc::new(snapshot);
        let previous = self
            .lock()
            .insert(namespace.to_string(), (fingerprint, snapshot.clone()));
        if let Some((_, previous)) = previous.filter(|(_, p)| p.digest != snapshot.digest) {
            let listeners = self.on_change.lock().unwrap_or_else(|e| e.into_inner());
            if previous.validation_digest != snapshot.validation_digest {
                // A spec moved: the validation is fleet-wide (an IP claimed
                // across namespaces), so every pool of every scope looks again.
                for (all, _) in listeners.iter() {
                    all.fire();
                }
            } else {
                // Only the pools whose workloads read something that moved:
                // a pair blocked in one pool moves that pool's targets, not
                // the other pools' (unless a route's mode moved, which every
                // sender config names).
                let moved = moved_pools(&previous.pool_views, &snapshot.pool_views);
                for (_, wakes) in listeners.iter() {
                    wakes.wake(moved.iter().cloned());
                }
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

    /// When a namespace's compiled routes or validation change: wakes
    /// through `wakes` the pools whose [`pool_view`] moved, or fires `all`
    /// when the validation moved.
    pub fn notify(&self, all: Trigger, wakes: Wakes<SenderPool>) {
        self.on_change
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((all, wakes));
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
    let validation_digest = {
        let mut h = DefaultHasher::new();
        validation.hash(&mut h);
        h.finish()
    };
    let digest = {
        let mut h = DefaultHasher::new();
        (validation_digest, &table.routes, &table.problems).hash(&mut h);
        h.finish()
    };
    Snapshot {
        digest,
        validation_digest,
        validation,
        fleet,
        table,
        pool_views: HashMap::new(),
    }
}

/// What the workloads of each of `pools` read of `snapshot`, as a digest per
/// pool: every route's shape (each sender config lists every route with its
/// mode), the route's targets and excluded IPs in that pool, the pool's
/// problems and lost IPs, and the known providers. One pass over the table
/// for all the pools: a wake of 100 pools reads 1,000 routes once.
pub fn pool_views(snapshot: &Snapshot, pools: &[ObjectKey]) -> HashMap<ObjectKey, u64> {
    let mut shared = DefaultHasher::new();
    snapshot.fleet.known_providers.hash(&mut shared);
    // The pools of one namespace, by name (targets name their pool only).
    let mut own: HashMap<&str, DefaultHasher> = pools
        .iter()
        .map(|p| (p.name.as_str(), DefaultHasher::new()))
        .collect();
    for (i, r) in snapshot.table.routes.iter().enumerate() {
        (
            &r.key,
            &r.provider,
            &r.matcher,
            &r.learned_domains,
            &r.pool,
            r.when_no_healthy_ip,
            r.mode,
            r.fallback_index,
            &r.serving_pool,
            r.throttle_per_hour,
            &r.relay,
            &r.connections,
        )
            .hash(&mut shared);
        for t in &r.targets {
            if let Some(h) = own.get_mut(t.pool.as_str()) {
                (i, "target", t).hash(h);
            }
        }
        for e in &r.excluded {
            if let Some(h) = own.get_mut(e.pool.as_str()) {
                (i, "excluded", e).hash(h);
            }
        }
    }
    let shared = shared.finish();
    pools
        .iter()
        .map(|pool| {
            let mut h = own.get(pool.name.as_str()).cloned().unwrap_or_default();
            shared.hash(&mut h);
            snapshot.validation.pool_usable(pool).hash(&mut h);
            snapshot.validation.problems_of_pool(pool).hash(&mut h);
            snapshot.validation.lost_ips.get(pool).hash(&mut h);
            (pool.clone(), h.finish())
        })
        .collect()
}

/// The pools whose view differs between two snapshots of one namespace
/// (including pools only one of them has), in name order.
pub fn moved_pools(
    before: &HashMap<ObjectKey, u64>,
    after: &HashMap<ObjectKey, u64>,
) -> Vec<ObjectKey> {
    let mut moved: Vec<ObjectKey> = after
        .iter()
        .filter(|(pool, view)| before.get(*pool) != Some(view))
        .map(|(pool, _)| pool.clone())
        .chain(before.keys().filter(|p| !after.contains_key(*p)).cloned())
        .collect();
    moved.sort();
    moved
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
    use crate::api::ReputationState;
    use crate::routing::example::{incident_fleet, match_domains, pair, pool, route, set_pair};
    use futures::StreamExt;

    /// The incident fleet plus a pool with a route of its own.
    fn fleet_with_a_bystander(now: Timestamp) -> (Vec<SenderPool>, Vec<Arc<DomainRoute>>) {
        let (mut pools, mut routes) = incident_fleet(now);
        let ips: Vec<String> = (30..32).map(|i| format!("192.0.2.{i}")).collect();
        pools.push(pool("mail", "transactional", &ips));
        routes.push(route(
            "mail",
            "receipts",
            "google",
            match_domains(&["receipts.example"]),
            "transactional",
        ));
        (pools, routes.into_iter().map(Arc::new).collect())
    }

    fn arcs(pools: &[SenderPool]) -> Vec<Arc<SenderPool>> {
        pools.iter().cloned().map(Arc::new).collect()
    }

    #[tokio::test]
    async fn a_pair_blocked_in_one_pool_wakes_only_the_pools_whose_view_moved() {
        let now = "2021-11-05T08:10:00Z".parse().unwrap();
        let (mut pools, routes) = fleet_with_a_bystander(now);
        let cache = SnapshotCache::default();
        let all = Trigger::new();
        let mut all_signals = all.stream();
        let wakes: Wakes<SenderPool> = Wakes::new(all.clone());
        cache.notify(all, wakes.clone());
        let woken = wakes.stream();
        let mut woken = std::pin::pin!(woken);
        let first = cache
            .get("mail", &arcs(&pools), &routes, now)
            .await
            .unwrap();
        assert_eq!(first.pool_views.len(), 3);

        // One more microsoft IP of bulk blocked: bulk still carries the
        // route with fewer targets; reserve and transactional read nothing new.
        set_pair(
            &mut pools[0],
            "203.0.113.10",
            pair("microsoft", ReputationState::Blocked, 0, now),
        );
        let second = cache
            .get("mail", &arcs(&pools), &routes, now)
            .await
            .unwrap();
        assert_ne!(first.digest, second.digest);
        assert_eq!(
            moved_pools(&first.pool_views, &second.pool_views),
            [ObjectKey::new("mail", "bulk")]
        );
        assert_eq!(
            woken.next().await.unwrap(),
            kube::runtime::reflector::ObjectRef::new("bulk").within("mail")
        );

        // Every bulk IP blocked for microsoft: the routes fall back to
        // reserve, whose senders now carry them, and every sender config
        // names the routes' new mode.
        for ip in (10..18).map(|i| format!("203.0.113.{i}")) {
            set_pair(
                &mut pools[0],
                &ip,
                pair("microsoft", ReputationState::Blocked, 0, now),
            );
        }
        let third = cache
            .get("mail", &arcs(&pools), &routes, now)
            .await
            .unwrap();
        let moved = moved_pools(&second.pool_views, &third.pool_views);
        assert!(
            moved.contains(&ObjectKey::new("mail", "reserve")),
            "{moved:?}"
        );
        assert!(
            moved.contains(&ObjectKey::new("mail", "transactional")),
            "{moved:?}"
        );
        // No spec moved: nothing woke every pool.
        assert!(futures::poll!(all_signals.next()).is_pending());

        // A spec change that moves the validation wakes every pool.
        let claimed = pools[0].spec.ips[0].clone();
        pools[2].spec.ips.push(claimed);
        pools[2].metadata.generation = Some(2);
        let fourth = cache
            .get("mail", &arcs(&pools), &routes, now)
            .await
            .unwrap();
        assert_ne!(third.validation_digest, fourth.validation_digest);
        assert!(all_signals.next().await.is_some());
    }

    #[test]
    fn the_views_computed_together_match_one_pool_at_a_time() {
        let now = "2021-11-05T08:10:00Z".parse().unwrap();
        let (pools, routes) = fleet_with_a_bystander(now);
        let snapshot = build("mail", &arcs(&pools), &routes, now).unwrap();
        let keys: Vec<ObjectKey> = ["bulk", "reserve", "transactional"]
            .iter()
            .map(|n| ObjectKey::new("mail", *n))
            .collect();
        let together = pool_views(&snapshot, &keys);
        for key in &keys {
            assert_eq!(together[key], snapshot.pool_view(key));
        }
        assert_ne!(together[&keys[0]], together[&keys[1]]);
    }

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
