//! What every reconcile and every feedback post shares: the client, the
//! reflector stores, metrics, the event recorder and the settings.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;

use super::apply::Writer;
use super::build::events::{EventRecord, EventType as BuildEventType};
use super::metrics::Metrics;
use super::snapshot::SnapshotCache;
use super::stores::Stores;
use super::triggers::Epochs;
use crate::api::{DomainRoute, SenderPool};
use crate::metrics::{ProcessRegistry, Published};
use crate::probe::claim_check::ClaimCounts;
use crate::probe::runner::ProbeCounters;
use crate::routing::RouteResult;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `namespace/name` of an object, as the per-object maps are keyed.
pub fn object_key<K: kube::Resource>(object: &K) -> String {
    format!(
        "{}/{}",
        object.meta().namespace.as_deref().unwrap_or("default"),
        object.meta().name.as_deref().unwrap_or("")
    )
}

/// The name events are reported under (`reportingController`).
pub const CONTROLLER_NAME: &str = "mailfleet-operator";

/// What the operator was started with, as far as the controllers care.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Image of the agent sidecar; without it no sidecar is added.
    pub agent_image: Option<String>,
    /// Image of the sender (`mailfleet sender run` with Postfix), run by
    /// pools whose template has no `spec`.
    pub sender_image: Option<String>,
    /// Where the sidecars post their feedback.
    pub feedback_url: String,
    /// The PEM CA of the feedback port's certificate, handed to the agents.
    pub feedback_ca: Option<String>,
    /// This replica's name, for events and the lease.
    pub identity: String,
    /// Send feed keys to URLs other than the provider's own
    /// (`--allow-custom-feed-urls`, for an in-cluster proxy).
    pub allow_custom_feed_urls: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            agent_image: None,
            sender_image: None,
            feedback_url: "http://mailfleet.default.svc:8080/v1/feedback".to_string(),
            feedback_ca: None,
            identity: CONTROLLER_NAME.to_string(),
            allow_custom_feed_urls: false,
        }
    }
}

/// Read-only views of the cluster, filled by the reflectors.
#[derive(Clone)]
pub struct ClusterStores {
    pub pools: Stores<SenderPool>,
    pub routes: Stores<DomainRoute>,
    pub pods: Stores<Pod>,
    pub deployments: Stores<Deployment>,
    pub config_maps: Stores<ConfigMap>,
    pub services: Stores<Service>,
    pub slices: Stores<EndpointSlice>,
}

impl ClusterStores {
    pub async fn wait_until_ready(&self) -> bool {
        self.pools.wait_until_ready().await
            && self.routes.wait_until_ready().await
            && self.pods.wait_until_ready().await
            && self.deployments.wait_until_ready().await
            && self.config_maps.wait_until_ready().await
            && self.services.wait_until_ready().await
            && self.slices.wait_until_ready().await
    }
}

pub struct Context {
    pub client: Client,
    pub writer: Writer,
    pub stores: ClusterStores,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub settings: Settings,
    pub snapshots: SnapshotCache,
    /// The last compiled result of each route (`ns/name`), to tell what changed.
    pub last_routes: Mutex<HashMap<String, RouteResult>>,
    /// What each object's last complete reconcile saw (`ns/name` → digest,
    /// when): a reconcile that would see the same skips its work.
    pub memo: Mutex<HashMap<String, (u64, std::time::Instant)>>,
    /// Counters the reflectors move when pods or workloads change.
    pub epochs: Arc<Epochs>,
    /// One lock per pool: the pool controller and the feedback receiver both
    /// write a pool's status, and taking turns avoids needless 409s.
    status_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    leading: AtomicBool,
    synced: tokio::sync::watch::Sender<bool>,
    /// The process's metrics registry: the operator's counts, the probes',
    /// the claim checks', the reverse DNS gauges and the HTTP port's.
    pub registry: ProcessRegistry,
    /// The probes' own counters, as of their last round.
    probe_metrics: Published<ProbeCounters>,
    /// The claim checks' counters, as of their last pass.
    claim_metrics: Published<ClaimCounts>,
    /// Wakes the claim checks: the feedback port counted a report with
    /// conclusive replies, which may quote block lists.
    pub claims: tokio::sync::Notify,
    /// Reviewed feedback tokens and the pods they speak for.
    pub tokens: super::token_cache::TokenCache,
    /// The classifier rules last handed to each pool's senders.
    pub classifier_rules: super::sender_checks::RulesMemory,
    /// The reverse DNS verdicts, for `/metrics`.
    pub reverse_dns: super::reverse_dns::ReverseDnsGauges,
}

impl Context {
    pub fn new(client: Client, stores: ClusterStores, settings: Settings) -> Self {
        Self::with_metrics(client, stores, settings, Arc::new(Metrics::default()))
    }

    pub fn with_metrics(
        client: Client,
        stores: ClusterStores,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::with_parts(client, stores, settings, metrics, Arc::default())
    }

    pub fn with_parts(
        client: Client,
        stores: ClusterStores,
        settings: Settings,
        metrics: Arc<Metrics>,
        epochs: Arc<Epochs>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: CONTROLLER_NAME.to_string(),
                instance: Some(settings.identity.clone()),
            },
        );
        let registry = ProcessRegistry::new();
        let probe_metrics = Published::default();
        let claim_metrics = Published::default();
        let reverse_dns = super::reverse_dns::ReverseDnsGauges::default();
        registry.register(Arc::clone(&metrics));
        registry.register(probe_metrics.clone());
        registry.register(reverse_dns.clone());
        registry.register(claim_metrics.clone());
        Context {
            writer: Writer::new(client.clone(), metrics.clone()),
            client,
            stores,
            metrics,
            recorder,
            settings,
            snapshots: SnapshotCache::default(),
            last_routes: Mutex::new(HashMap::new()),
            memo: Mutex::new(HashMap::new()),
            epochs,
            status_locks: Mutex::new(HashMap::new()),
            leading: AtomicBool::new(false),
            synced: tokio::sync::watch::channel(false).0,
            registry,
            probe_metrics,
            claim_metrics,
            claims: tokio::sync::Notify::new(),
            tokens: Default::default(),
            classifier_rules: Default::default(),
            reverse_dns,
        }
    }

    pub fn status_lock(&self, namespace: &str, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.status_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks
            .entry(format!("{namespace}/{name}"))
            .or_default()
            .clone()
    }

    /// Whether `digest` is what the last complete reconcile of `key` saw,
    /// recently enough (a periodic full pass still repairs drift).
    pub fn unchanged(&self, key: &str, digest: u64) -> bool {
        let memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        memo.get(key).is_some_and(|(seen, at)| {
            *seen == digest && at.elapsed() < std::time::Duration::from_secs(300)
        })
    }

    pub fn remember(&self, key: &str, digest: u64) {
        self.memo
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), (digest, std::time::Instant::now()));
    }

    pub fn forget(&self, key: &str) {
        self.memo
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Drops everything kept about a deleted pool (`ns/name`): its memo,
    /// status lock, epoch and metric series.
    pub fn forget_pool(&self, pool: &str) {
        self.forget(&format!("SenderPool/{pool}"));
        lock(&self.status_locks).remove(pool);
        self.epochs.forget_pool(pool);
        self.metrics.forget_pool(pool);
        self.classifier_rules.forget(pool);
    }

    /// Drops everything kept about a deleted route (`ns/name`).
    pub fn forget_route(&self, route: &str) {
        self.forget(&format!("DomainRoute/{route}"));
        lock(&self.last_routes).remove(route);
        self.metrics.forget_route(route);
    }

    /// Forgets every pool and route the stores no longer hold: a watch that
    /// re-listed after a gap sees no delete events for what went in between.
    pub fn sweep(&self) {
        let pools: std::collections::HashSet<String> = self
            .stores
            .pools
            .all()
            .iter()
            .map(|p| object_key(p.as_ref()))
            .collect();
        let routes: std::collections::HashSet<String> = self
            .stores
            .routes
            .all()
            .iter()
            .map(|r| object_key(r.as_ref()))
            .collect();
        lock(&self.memo).retain(|k, _| match k.split_once('/') {
            Some(("SenderPool", key)) => pools.contains(key),
            Some(("DomainRoute", key)) => routes.contains(key),
            _ => true,
        });
        lock(&self.status_locks).retain(|k, _| pools.contains(k));
        lock(&self.last_routes).retain(|k, _| routes.contains(k));
        self.epochs.retain_pools(&pools);
    }

    /// How many per-object entries this replica keeps in memory (memos,
    /// locks, compiled routes, epochs, metric series): it follows
    /// the number of live pools and routes, never the number ever seen.
    pub fn footprint(&self) -> usize {
        lock(&self.memo).len()
            + lock(&self.status_locks).len()
            + lock(&self.last_routes).len()
            + self.epochs.tracked()
            + self.metrics.tracked()
    }

    pub fn set_probe_metrics(&self, counts: ProbeCounters) {
        self.probe_metrics.publish(counts);
    }

    pub fn set_claim_metrics(&self, counts: ClaimCounts) {
        self.claim_metrics.publish(counts);
    }

    /// Everything `/metrics` shows.
    pub fn render_metrics(&self) -> String {
        self.registry.encode()
    }

    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::SeqCst);
        self.metrics.set_leader(leading);
    }

    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    pub fn set_synced(&self) {
        self.synced.send_replace(true);
    }

    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Resolves once every store has listed its resources. (A reflector
    /// store's own `wait_until_ready` wakes only its latest waiter, so one
    /// task waits on the stores and everyone else waits here.)
    pub async fn synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|synced| *synced).await;
    }

    /// Publishes events about the object `regarding` refers to. An event that
    /// cannot be written is logged and otherwise ignored: events inform, they
    /// never block a reconcile.
    pub async fn publish(&self, regarding: &ObjectReference, records: &[EventRecord]) {
        for record in records {
            let event = Event {
                type_: match record.type_ {
                    BuildEventType::Normal => EventType::Normal,
                    BuildEventType::Warning => EventType::Warning,
                },
                reason: record.reason.clone(),
                note: Some(record.note.clone()),
                action: record.action.to_string(),
                secondary: None,
            };
            self.metrics.api_write("event");
            if let Err(err) = self.recorder.publish(&event, regarding).await {
                tracing::warn!(error = %err, reason = %record.reason, "cannot publish an event");
            }
        }
    }
}
