//! Waking a whole controller when something every object of it depends on
//! changed (another pool's reputation, a route's spec, a sender pod), and only
//! then: a status write that changes nothing relevant wakes nobody.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use futures::channel::mpsc;
use futures::Stream;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::Event;
use kube::ResourceExt;

use super::build::POOL_LABEL;
use crate::api::{DomainRoute, SenderPool};

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

/// What was last seen of each object, as a hash of the fields that matter.
#[derive(Default)]
pub struct ChangeFilter {
    seen: HashMap<String, u64>,
}

impl ChangeFilter {
    /// A pool matters through its spec, its pairs' states and the IPs its
    /// senders cannot bind, not its replica counts nor the windows every
    /// counted report moves.
    pub fn pool_event(&mut self, event: &Event<SenderPool>) -> bool {
        self.event(event, |pool| {
            hash(&(
                pool.metadata.generation,
                super::snapshot::routing_reputation_digest(pool),
            ))
        })
    }

    /// A route matters to the sender configs through its spec only.
    pub fn route_event(&mut self, event: &Event<DomainRoute>) -> bool {
        self.event(event, |route| hash(&route.metadata.generation))
    }

    /// A pod matters through its readiness, address and labels.
    pub fn pod_event(&mut self, event: &Event<Pod>) -> bool {
        self.event(event, |pod| {
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
        })
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
    fn only_reputation_or_spec_changes_of_a_pool_fire() {
        let now = "2021-11-05T08:10:00Z".parse().unwrap();
        let (pools, _) = incident_fleet(now);
        let mut pool = pools[0].clone();
        pool.status = Some(SenderPoolStatus {
            ips: vec![IpStatus::new("203.0.113.10")],
            ..Default::default()
        });
        let mut filter = ChangeFilter::default();
        assert!(!filter.pool_event(&Event::InitApply(pool.clone())));
        assert!(filter.pool_event(&Event::InitDone));
        assert!(!filter.pool_event(&Event::Apply(pool.clone())));
        // Replica counts do not change any route.
        pool.status.as_mut().unwrap().ips[0].ready_replicas = 2;
        assert!(!filter.pool_event(&Event::Apply(pool.clone())));
        // A pair's window of counts moves with every counted report and
        // never moves a route; its state does.
        let since = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now);
        let mut pair = crate::api::ProviderReputation::first_seen("microsoft", since.clone());
        pool.status.as_mut().unwrap().ips[0].reputation = vec![pair.clone()];
        assert!(filter.pool_event(&Event::Apply(pool.clone())));
        pair.window.push(crate::api::WindowBucket {
            start: since,
            attempts: 40,
            delivered: 40,
            ip_blocklisted: 0,
            ip_rate_limited: 0,
            complaints: 0,
        });
        pool.status.as_mut().unwrap().ips[0].reputation = vec![pair.clone()];
        assert!(!filter.pool_event(&Event::Apply(pool.clone())));
        pair.state = crate::api::ReputationState::Blocked;
        pool.status.as_mut().unwrap().ips[0].reputation = vec![pair];
        assert!(filter.pool_event(&Event::Apply(pool.clone())));
        pool.metadata.generation = Some(7);
        assert!(filter.pool_event(&Event::Apply(pool.clone())));
        assert!(filter.pool_event(&Event::Delete(pool)));
    }
}
