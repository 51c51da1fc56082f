//! Which DomainRoutes name which SenderPool (as `spec.pool` or as a
//! `spec.fallback[].pool`), kept from the route watch's events.
//!
//! A pair-state change of one pool changes the compiled result of only the
//! routes that name it: with this index the pool watch wakes those routes
//! instead of every route of the namespace (a block reached the last of the
//! affected routes only after the whole namespace's routes had been woken).
//! The index is pure: it is fed watch events and answers lookups, with no
//! client, so it is tested on its own.

use std::collections::{BTreeSet, HashMap};

use kube::runtime::watcher::Event;
use kube::ResourceExt;

use super::build::namespace_of;
use crate::api::DomainRoute;
use crate::routing::ObjectKey;

/// Pool → the routes naming it, and route → the pools it names.
#[derive(Debug, Default)]
pub struct PoolRouteIndex {
    routes_of_pool: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    pools_of_route: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// The routes of a re-list under way: the index is replaced by them at
    /// its end, so routes deleted while the watch was down leave it.
    relisting: Option<Vec<(ObjectKey, BTreeSet<ObjectKey>)>>,
}

impl PoolRouteIndex {
    /// Follows one event of the route watch.
    pub fn apply(&mut self, event: &Event<DomainRoute>) {
        match event {
            Event::Init => self.relisting = Some(Vec::new()),
            Event::InitApply(route) => {
                let entry = (route_key(route), pools_named(route));
                match &mut self.relisting {
                    Some(relisted) => relisted.push(entry),
                    // A re-list's objects without its start: keep them anyway.
                    None => self.insert(entry.0, entry.1),
                }
            }
            Event::InitDone => {
                if let Some(relisted) = self.relisting.take() {
                    self.routes_of_pool.clear();
                    self.pools_of_route.clear();
                    for (route, pools) in relisted {
                        self.insert(route, pools);
                    }
                }
            }
            Event::Apply(route) => self.insert(route_key(route), pools_named(route)),
            Event::Delete(route) => self.remove(&route_key(route)),
        }
    }

    /// The routes naming `pool`, in name order.
    pub fn routes_naming(&self, pool: &ObjectKey) -> Vec<ObjectKey> {
        self.routes_of_pool
            .get(pool)
            .map(|routes| routes.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How many routes the index holds.
    pub fn len(&self) -> usize {
        self.pools_of_route.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pools_of_route.is_empty()
    }

    fn insert(&mut self, route: ObjectKey, pools: BTreeSet<ObjectKey>) {
        self.remove(&route);
        for pool in &pools {
            self.routes_of_pool
                .entry(pool.clone())
                .or_default()
                .insert(route.clone());
        }
        self.pools_of_route.insert(route, pools);
    }

    fn remove(&mut self, route: &ObjectKey) {
        let Some(pools) = self.pools_of_route.remove(route) else {
            return;
        };
        for pool in pools {
            if let Some(routes) = self.routes_of_pool.get_mut(&pool) {
                routes.remove(route);
                if routes.is_empty() {
                    self.routes_of_pool.remove(&pool);
                }
            }
        }
    }
}

fn route_key(route: &DomainRoute) -> ObjectKey {
    ObjectKey::new(namespace_of(&route.metadata), route.name_any())
}

/// The pools a route names (its own namespace's): its pool and its fallback pools.
pub fn pools_named(route: &DomainRoute) -> BTreeSet<ObjectKey> {
    let ns = namespace_of(&route.metadata);
    std::iter::once(route.spec.pool.as_str())
        .chain(route.spec.fallback.iter().filter_map(|f| f.pool.as_deref()))
        .map(|pool| ObjectKey::new(ns.clone(), pool))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DomainRoute, DomainRouteSpec, Fallback, RouteMatch};

    fn route(ns: &str, name: &str, pool: &str, fallbacks: &[&str]) -> DomainRoute {
        let mut route = DomainRoute::new(
            name,
            DomainRouteSpec {
                provider: "microsoft".into(),
                match_: RouteMatch::default(),
                pool: pool.into(),
                fallback: fallbacks
                    .iter()
                    .map(|p| Fallback {
                        pool: Some(p.to_string()),
                        relay: None,
                    })
                    .collect(),
                throttle: None,
                connections: None,
                when_no_healthy_ip: Default::default(),
            },
        );
        route.metadata.namespace = Some(ns.into());
        route
    }

    fn key(ns: &str, name: &str) -> ObjectKey {
        ObjectKey::new(ns, name)
    }

    #[test]
    fn a_pool_maps_to_the_routes_naming_it_as_pool_or_fallback() {
        let mut index = PoolRouteIndex::default();
        index.apply(&Event::Apply(route("mail", "ms", "east", &["west"])));
        index.apply(&Event::Apply(route("mail", "gmail", "west", &[])));
        index.apply(&Event::Apply(route("other", "ms", "east", &[])));
        assert_eq!(
            index.routes_naming(&key("mail", "east")),
            [key("mail", "ms")]
        );
        assert_eq!(
            index.routes_naming(&key("mail", "west")),
            [key("mail", "gmail"), key("mail", "ms")]
        );
        // Same pool name in another namespace is another pool.
        assert_eq!(
            index.routes_naming(&key("other", "east")),
            [key("other", "ms")]
        );
        assert!(index.routes_naming(&key("mail", "north")).is_empty());
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn a_route_whose_pools_change_or_that_goes_leaves_its_old_pools() {
        let mut index = PoolRouteIndex::default();
        index.apply(&Event::Apply(route("mail", "ms", "east", &["west"])));
        index.apply(&Event::Apply(route("mail", "ms", "north", &[])));
        assert!(index.routes_naming(&key("mail", "east")).is_empty());
        assert!(index.routes_naming(&key("mail", "west")).is_empty());
        assert_eq!(
            index.routes_naming(&key("mail", "north")),
            [key("mail", "ms")]
        );
        // A route created later, naming a pool that does not exist yet.
        index.apply(&Event::Apply(route("mail", "late", "south", &["north"])));
        assert_eq!(
            index.routes_naming(&key("mail", "south")),
            [key("mail", "late")]
        );
        index.apply(&Event::Delete(route("mail", "ms", "north", &[])));
        assert_eq!(
            index.routes_naming(&key("mail", "north")),
            [key("mail", "late")]
        );
        index.apply(&Event::Delete(route("mail", "late", "south", &["north"])));
        assert!(index.is_empty());
        assert!(index.routes_of_pool.is_empty());
    }

    #[test]
    fn a_relist_replaces_the_index_and_drops_routes_gone_meanwhile() {
        let mut index = PoolRouteIndex::default();
        index.apply(&Event::Apply(route("mail", "gone", "east", &[])));
        index.apply(&Event::Apply(route("mail", "kept", "east", &[])));
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(route("mail", "kept", "east", &["west"])));
        // Until the re-list completes, lookups answer from the old index.
        assert_eq!(
            index.routes_naming(&key("mail", "east")),
            [key("mail", "gone"), key("mail", "kept")]
        );
        index.apply(&Event::InitDone);
        assert_eq!(
            index.routes_naming(&key("mail", "east")),
            [key("mail", "kept")]
        );
        assert_eq!(
            index.routes_naming(&key("mail", "west")),
            [key("mail", "kept")]
        );
        assert_eq!(index.len(), 1);
    }
}
