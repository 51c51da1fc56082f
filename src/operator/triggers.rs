//! Waking a controller when something its objects depend on changed, and
//! only then: a status write that changes nothing relevant wakes nobody. A
//! pool's pair states wake only the routes naming it ([`route_wake`]), and
//! so does a change of one of its sender pods ([`pod_route_wake`]); a
//! pool's spec or a route's spec wake a whole controller.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use futures::channel::mpsc;
use futures::Stream;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;
use kube::ResourceExt;
use tokio::sync::broadcast;

use super::build::POOL_LABEL;
use super::route_index::PoolRouteIndex;
use crate::api::{DomainRoute, SenderPool};
use crate::routing::ObjectKey;

/// A wake-up signal for `Controller::reconcile_all_on`. Signals fired while
/// one is pending merge into it.
#[derive(Clone)]
pub struct Trigger {
    tx: mpsc::Sender<()>,
    rx: Arc<Mutex<Option<mpsc::Receiver<()>>>>,
}

impl Trigger {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(1);
        Trigger {
            tx,
            rx: Arc::new(Mutex::new(Some(rx))),
        }
    }

    pub fn fire(&self) {
        // A full channel already holds a wake-up: nothing is lost.
        let _ = self.tx.clone().try_send(());
    }

    /// The signals, for the one controller that consumes them.
    pub fn stream(&self) -> impl Stream<Item = ()> + Send + 'static {
        let rx = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        match rx {
            Some(rx) => futures::future::Either::Left(rx),
            None => futures::future::Either::Right(futures::stream::pending()),
        }
    }
}

impl Default for Trigger {
    fn default() -> Self {
        Self::new()
    }
}

/// Counters that move when what a reconcile reads besides its own object
/// changes, so an unchanged reconcile can be recognised (`Context::unchanged`).
#[derive(Default)]
pub struct Epochs {
    /// Any sender pod's readiness, address or labels.
    pods: std::sync::atomic::AtomicU64,
    /// Per pool (`ns/name`): its pods and its Deployments.
    pools: Mutex<HashMap<String, u64>>,
}

impl Epochs {
    pub fn pods(&self) -> u64 {
        self.pods.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn bump_pods(&self) {
        self.pods.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn pool(&self, pool: &str) -> u64 {
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(pool)
            .copied()
            .unwrap_or(0)
    }

    pub fn bump_pool(&self, pool: &str) {
        *self
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(pool.to_string())
            .or_default() += 1;
    }

    /// Drops a deleted pool's counter.
    pub fn forget_pool(&self, pool: &str) {
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(pool);
    }

    /// Keeps only the counters of `live` pools.
    pub fn retain_pools(&self, live: &std::collections::HashSet<String>) {
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| live.contains(k));
    }

    pub fn tracked(&self) -> usize {
        self.pools.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Bumps the pool an object labelled `mailfleet.io/pool` belongs to.
    pub fn bump_owner<K: kube::Resource>(&self, object: &K) {
        let meta = object.meta();
        if let Some(pool) = meta.labels.as_ref().and_then(|l| l.get(POOL_LABEL)) {
            let ns = meta.namespace.as_deref().unwrap_or("default");
            self.bump_pool(&format!("{ns}/{pool}"));
        }
    }
}

/// Wake-ups of single objects for `Controller::reconcile_on`, sent only
/// while a controller listens (on the leader). A controller that falls
/// behind by more than the buffer is woken whole through `on_lag`, so no
/// wake-up is lost.
pub struct Wakes<K: kube::Resource<DynamicType = ()>> {
    tx: broadcast::Sender<ObjectRef<K>>,
    on_lag: Trigger,
}

impl<K: kube::Resource<DynamicType = ()>> Clone for Wakes<K> {
    fn clone(&self) -> Self {
        Wakes {
            tx: self.tx.clone(),
            on_lag: self.on_lag.clone(),
        }
    }
}

/// Wake-ups a slow controller may fall behind by before it re-reads everything.
const WAKES_BUFFER: usize = 4096;

impl<K: kube::Resource<DynamicType = ()> + Send + Sync + 'static> Wakes<K> {
    /// Wake-ups whose loss falls back to `on_lag` (a wake of every object).
    pub fn new(on_lag: Trigger) -> Self {
        Wakes {
            tx: broadcast::channel(WAKES_BUFFER).0,
            on_lag,
        }
    }

    /// Wakes the objects `keys` names.
    pub fn wake(&self, keys: impl IntoIterator<Item = ObjectKey>) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        for key in keys {
            let _ = self
                .tx
                .send(ObjectRef::new(&key.name).within(&key.namespace));
        }
    }

    /// The wake-ups from now on, for `Controller::reconcile_on`.
    pub fn stream(&self) -> impl Stream<Item = ObjectRef<K>> + Send + 'static {
        futures::stream::unfold(
            (self.tx.subscribe(), self.on_lag.clone()),
            |(mut rx, on_lag)| async move {
                loop {
                    match rx.recv().await {
                        Ok(object) => return Some((object, (rx, on_lag))),
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, "wake-ups fell behind; waking every object");
                            on_lag.fire();
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        )
    }
}

/// What a pool's watch event changes for the routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolChange {
    /// Nothing a route reads (a window of counts, a replica count).
    Unchanged,
    /// Only the pool's pair states or unbound IPs: the routes naming it.
    Reputation(ObjectKey),
    /// Its spec, its creation or deletion, or a re-list: every route (the
    /// validation of IP claims and names is fleet-wide).
    Whole,
}

/// What the routes should be woken for a pool change: none, the routes the
/// index says name the pool, or all of them.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteWake {
    None,
    Routes(Vec<ObjectKey>),
    All,
}

/// The route wake-up for `change`, from the routes `index` says name the pool.
pub fn route_wake(change: &PoolChange, index: &PoolRouteIndex) -> RouteWake {
    match change {
        PoolChange::Unchanged => RouteWake::None,
        PoolChange::Reputation(pool) => match index.routes_naming(pool) {
            routes if routes.is_empty() => RouteWake::None,
            routes => RouteWake::Routes(routes),
        },
        PoolChange::Whole => RouteWake::All,
    }
}

/// What was last seen of each pool: what makes it another pool for the
/// fleet (uid, generation) apart from what the routes read of its status.
#[derive(Default)]
pub struct PoolChanges {
    seen: HashMap<String, (u64, u64)>,
}

impl PoolChanges {
    /// Classifies one event of the pool watch.
    pub fn classify(&mut self, event: &Event<SenderPool>) -> PoolChange {
        let parts = |pool: &SenderPool| {
            (
                hash(&(pool.metadata.uid.as_deref(), pool.metadata.generation)),
                super::snapshot::routing_reputation_digest(pool),
            )
        };
        match event {
            Event::Init => {
                self.seen.clear();
                PoolChange::Unchanged
            }
            Event::InitApply(pool) => {
                self.seen.insert(key(pool), parts(pool));
                PoolChange::Unchanged
            }
            Event::InitDone => PoolChange::Whole,
            Event::Apply(pool) => {
                let now = parts(pool);
                match self.seen.insert(key(pool), now) {
                    Some(before) if before == now => PoolChange::Unchanged,
                    Some((identity, _)) if identity == now.0 => PoolChange::Reputation(
                        ObjectKey::new(super::build::namespace_of(&pool.metadata), pool.name_any()),
                    ),
                    _ => PoolChange::Whole,
                }
            }
            Event::Delete(pool) => {
                self.seen.remove(&key(pool));
                PoolChange::Whole
            }
        }
    }
}

/// What a sender pod's event changes for the routes: nothing, the
/// endpoints of the routes naming some pools (the pod's pool, and its
/// former pool when its label moved), or anything (the end of a re-list).
#[derive(Debug, PartialEq, Eq)]
pub enum PodChange {
    Unchanged,
    Pools(BTreeSet<ObjectKey>),
    Whole,
}

/// The route wake-up for a pod change: only the routes naming one of the
/// changed pools as pool or fallback list that pool's pods as endpoints.
pub fn pod_route_wake(change: &PodChange, index: &PoolRouteIndex) -> RouteWake {
    match change {
        PodChange::Unchanged => RouteWake::None,
        PodChange::Pools(pools) => {
            let routes: BTreeSet<ObjectKey> = pools
                .iter()
                .flat_map(|pool| index.routes_naming(pool))
                .collect();
            if routes.is_empty() {
                RouteWake::None
            } else {
                RouteWake::Routes(routes.into_iter().collect())
            }
        }
        PodChange::Whole => RouteWake::All,
    }
}

/// What was last seen of each sender pod: a hash of what a route reads of
/// it (readiness, address, labels, deletion) and the pool it belongs to.
#[derive(Default)]
pub struct PodChanges {
    seen: HashMap<String, (u64, Option<ObjectKey>)>,
}

impl PodChanges {
    /// Classifies one event of the pod watch.
    pub fn classify(&mut self, event: &Event<Pod>) -> PodChange {
        match event {
            // A re-list repeats every live object: forget the ones gone
            // while the watch was down.
            Event::Init => {
                self.seen.clear();
                PodChange::Unchanged
            }
            Event::InitApply(pod) => {
                self.seen.insert(key(pod), (pod_digest(pod), pool_of(pod)));
                PodChange::Unchanged
            }
            Event::InitDone => PodChange::Whole,
            Event::Apply(pod) => {
                let now = (pod_digest(pod), pool_of(pod));
                match self.seen.insert(key(pod), now.clone()) {
                    Some(before) if before == now => PodChange::Unchanged,
                    before => {
                        let pools = before
                            .and_then(|(_, pool)| pool)
                            .into_iter()
                            .chain(now.1)
                            .collect();
                        PodChange::Pools(pools)
                    }
                }
            }
            Event::Delete(pod) => {
                let before = self.seen.remove(&key(pod)).and_then(|(_, pool)| pool);
                PodChange::Pools(before.into_iter().chain(pool_of(pod)).collect())
            }
        }
    }
}

/// What a route reads of a pod: its readiness, address, labels and deletion.
fn pod_digest(pod: &Pod) -> u64 {
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status == "True");
    let ip = status.and_then(|s| s.pod_ip.clone());
    hash(&(
        ready,
        ip,
        pod.labels(),
        pod.metadata.deletion_timestamp.is_some(),
    ))
}

/// The pool a sender pod belongs to (its pool label, in its namespace).
fn pool_of(pod: &Pod) -> Option<ObjectKey> {
    let pool = pod.labels().get(POOL_LABEL)?;
    Some(ObjectKey::new(
        super::build::namespace_of(&pod.metadata),
        pool.clone(),
    ))
}

/// What was last seen of each object, as a hash of the fields that matter.
#[derive(Default)]
pub struct ChangeFilter {
    seen: HashMap<String, u64>,
}

impl ChangeFilter {
    /// A route matters to the sender configs through its spec only.
    pub fn route_event(&mut self, event: &Event<DomainRoute>) -> bool {
        self.event(event, |route| hash(&route.metadata.generation))
    }

    fn event<K: kube::Resource>(&mut self, event: &Event<K>, digest: impl Fn(&K) -> u64) -> bool {
        match event {
            // A re-list repeats every live object: forget the ones gone
            // while the watch was down.
            Event::Init => {
                self.seen.clear();
                false
            }
            Event::InitApply(obj) => {
                self.seen.insert(key(obj), digest(obj));
                false
            }
            Event::InitDone => true,
            Event::Apply(obj) => {
                let d = digest(obj);
                self.seen.insert(key(obj), d) != Some(d)
            }
            Event::Delete(obj) => {
                self.seen.remove(&key(obj));
                true
            }
        }
    }
}

fn key<K: kube::Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or(""),
        obj.meta().name.as_deref().unwrap_or("")
    )
}

fn hash<T: Hash>(value: &T) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{IpStatus, SenderPoolStatus};
    use crate::routing::example::incident_fleet;

    #[test]
    fn only_reputation_or_spec_changes_of_a_pool_wake_routes() {
        let now = "2021-11-05T08:10:00Z".parse().unwrap();
        let (pools, _) = incident_fleet(now);
        let mut pool = pools[0].clone();
        let pool_key = ObjectKey::new("mail", pool.name_any());
        pool.status = Some(SenderPoolStatus {
            ips: vec![IpStatus::new("203.0.113.10")],
            ..Default::default()
        });
        let mut changes = PoolChanges::default();
        let reputation = PoolChange::Reputation(pool_key.clone());
        assert_eq!(changes.classify(&Event::Init), PoolChange::Unchanged);
        assert_eq!(
            changes.classify(&Event::InitApply(pool.clone())),
            PoolChange::Unchanged
        );
        // The end of a (re-)list: anything may have moved meanwhile.
        assert_eq!(changes.classify(&Event::InitDone), PoolChange::Whole);
        assert_eq!(
            changes.classify(&Event::Apply(pool.clone())),
            PoolChange::Unchanged
        );
        // Replica counts do not change any route.
        pool.status.as_mut().unwrap().ips[0].ready_replicas = 2;
        assert_eq!(
            changes.classify(&Event::Apply(pool.clone())),
            PoolChange::Unchanged
        );
        // A pair's window of counts moves with every counted report and
        // never moves a route; its state does, for the routes naming the pool.
        let since = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now);
        let mut pair = crate::api::ProviderReputation::first_seen("microsoft", since.clone());
        pool.status.as_mut().unwrap().ips[0].reputation = vec![pair.clone()];
        assert_eq!(changes.classify(&Event::Apply(pool.clone())), reputation);
        pair.window.push(crate::api::WindowBucket {
            start: since,
            attempts: 40,
            delivered: 40,
            ip_blocklisted: 0,
            ip_rate_limited: 0,
            complaints: 0,
        });
        pool.status.as_mut().unwrap().ips[0].reputation = vec![pair.clone()];
        assert_eq!(
            changes.classify(&Event::Apply(pool.clone())),
            PoolChange::Unchanged
        );
        pair.state = crate::api::ReputationState::Blocked;
        pool.status.as_mut().unwrap().ips[0].reputation = vec![pair];
        assert_eq!(changes.classify(&Event::Apply(pool.clone())), reputation);
        // A spec change, a new pool, a replaced pool (new uid) and a delete
        // reach every route.
        pool.metadata.generation = Some(7);
        assert_eq!(
            changes.classify(&Event::Apply(pool.clone())),
            PoolChange::Whole
        );
        let mut other = pool.clone();
        other.metadata.name = Some("other".into());
        assert_eq!(changes.classify(&Event::Apply(other)), PoolChange::Whole);
        pool.metadata.uid = Some("replaced".into());
        assert_eq!(
            changes.classify(&Event::Apply(pool.clone())),
            PoolChange::Whole
        );
        assert_eq!(changes.classify(&Event::Delete(pool)), PoolChange::Whole);
    }

    #[test]
    fn a_reputation_change_wakes_only_the_routes_naming_the_pool() {
        let now = "2021-11-05T08:10:00Z".parse().unwrap();
        let (_, mut routes) = incident_fleet(now);
        // A route on a pool of its own, not named by the others.
        let mut own = routes[0].clone();
        own.metadata.name = Some("transactional".into());
        own.spec.pool = "transactional".into();
        own.spec.fallback.clear();
        routes.push(own);
        let mut index = PoolRouteIndex::default();
        for route in &routes {
            index.apply(&Event::Apply(route.clone()));
        }
        let named = |pool: &str| {
            let mut names: Vec<ObjectKey> = routes
                .iter()
                .filter(|r| {
                    r.spec.pool == pool
                        || r.spec
                            .fallback
                            .iter()
                            .any(|f| f.pool.as_deref() == Some(pool))
                })
                .map(|r| ObjectKey::new("mail", r.name_any()))
                .collect();
            names.sort();
            names
        };
        let bulk = named("bulk");
        assert!(!bulk.is_empty() && bulk.len() < routes.len());
        assert_eq!(
            route_wake(
                &PoolChange::Reputation(ObjectKey::new("mail", "bulk")),
                &index
            ),
            RouteWake::Routes(bulk)
        );
        assert_eq!(
            route_wake(
                &PoolChange::Reputation(ObjectKey::new("mail", "transactional")),
                &index
            ),
            RouteWake::Routes(vec![ObjectKey::new("mail", "transactional")])
        );
        // A fallback pool's change reaches the routes it backs.
        assert_eq!(
            route_wake(
                &PoolChange::Reputation(ObjectKey::new("mail", "reserve")),
                &index
            ),
            RouteWake::Routes(named("reserve"))
        );
        assert_eq!(
            route_wake(
                &PoolChange::Reputation(ObjectKey::new("mail", "unnamed")),
                &index
            ),
            RouteWake::None
        );
        assert_eq!(route_wake(&PoolChange::Unchanged, &index), RouteWake::None);
        assert_eq!(route_wake(&PoolChange::Whole, &index), RouteWake::All);
    }

    fn sender_pod(name: &str, pool: &str, ready: bool) -> Pod {
        use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        pod.metadata.namespace = Some("mail".into());
        pod.metadata.labels = Some([(POOL_LABEL.to_string(), pool.to_string())].into());
        pod.status = Some(PodStatus {
            pod_ip: Some("10.1.0.7".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        pod
    }

    #[test]
    fn a_pod_change_wakes_only_the_routes_naming_its_pool() {
        let now = "2021-11-05T08:10:00Z".parse().unwrap();
        let (_, mut routes) = incident_fleet(now);
        let mut own = routes[0].clone();
        own.metadata.name = Some("transactional".into());
        own.spec.pool = "transactional".into();
        own.spec.fallback.clear();
        // And one on a pool no pod below belongs to.
        let mut other = own.clone();
        other.metadata.name = Some("other".into());
        other.spec.pool = "other".into();
        routes.push(own);
        routes.push(other);
        let mut index = PoolRouteIndex::default();
        for route in &routes {
            index.apply(&Event::Apply(route.clone()));
        }
        let pools = |names: &[&str]| -> BTreeSet<ObjectKey> {
            names.iter().map(|n| ObjectKey::new("mail", *n)).collect()
        };
        let mut changes = PodChanges::default();
        let pod = sender_pod("sender-0", "transactional", true);
        assert_eq!(changes.classify(&Event::Init), PodChange::Unchanged);
        assert_eq!(
            changes.classify(&Event::InitApply(pod.clone())),
            PodChange::Unchanged
        );
        assert_eq!(changes.classify(&Event::InitDone), PodChange::Whole);
        // The same pod again (a resync, a status field routes do not read).
        let mut unread = pod.clone();
        unread.metadata.resource_version = Some("9".into());
        assert_eq!(
            changes.classify(&Event::Apply(unread)),
            PodChange::Unchanged
        );
        // Readiness moves: the pool's routes only.
        let not_ready = sender_pod("sender-0", "transactional", false);
        let change = changes.classify(&Event::Apply(not_ready.clone()));
        assert_eq!(change, PodChange::Pools(pools(&["transactional"])));
        assert_eq!(
            pod_route_wake(&change, &index),
            RouteWake::Routes(vec![ObjectKey::new("mail", "transactional")])
        );
        // Relabelled into another pool: the routes of both pools, the
        // fallback routes of the new one included, each once.
        let moved = sender_pod("sender-0", "bulk", false);
        let change = changes.classify(&Event::Apply(moved.clone()));
        assert_eq!(change, PodChange::Pools(pools(&["bulk", "transactional"])));
        let expected: BTreeSet<ObjectKey> = routes
            .iter()
            .filter(|r| {
                r.spec.pool == "bulk"
                    || r.spec.pool == "transactional"
                    || r.spec
                        .fallback
                        .iter()
                        .any(|f| f.pool.as_deref() == Some("bulk"))
            })
            .map(|r| ObjectKey::new("mail", r.name_any()))
            .collect();
        assert!(expected.len() < routes.len());
        assert_eq!(
            pod_route_wake(&change, &index),
            RouteWake::Routes(expected.into_iter().collect())
        );
        // A pod of a pool no route names wakes nobody.
        let stray = sender_pod("sender-9", "unnamed", true);
        let change = changes.classify(&Event::Apply(stray));
        assert_eq!(pod_route_wake(&change, &index), RouteWake::None);
        // Deleted: its pool's routes.
        assert_eq!(
            changes.classify(&Event::Delete(moved)),
            PodChange::Pools(pools(&["bulk"]))
        );
        assert_eq!(pod_route_wake(&PodChange::Whole, &index), RouteWake::All);
        assert_eq!(
            pod_route_wake(&PodChange::Unchanged, &index),
            RouteWake::None
        );
    }

    #[tokio::test]
    async fn wakes_reach_a_listening_controller_and_a_lagging_one_is_woken_whole() {
        use futures::StreamExt;
        let all = Trigger::new();
        let mut all_signals = all.stream();
        let wakes: Wakes<SenderPool> = Wakes::new(all.clone());
        // Nobody listens (a follower): nothing is kept.
        wakes.wake([ObjectKey::new("mail", "before")]);
        let stream = wakes.stream();
        let mut stream = std::pin::pin!(stream);
        wakes.wake([ObjectKey::new("mail", "bulk")]);
        let first = stream.next().await.unwrap();
        assert_eq!(first, ObjectRef::new("bulk").within("mail"));
        wakes.wake((0..WAKES_BUFFER + 3).map(|i| ObjectKey::new("mail", format!("p{i}"))));
        let next = stream.next().await.unwrap();
        assert_ne!(next, ObjectRef::new("p0").within("mail"));
        assert!(all_signals.next().await.is_some());
    }
}
