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
use crate::api::{DomainRoute, SenderPool};
use crate::routing::RouteResult;
use crate::serve::ledger::FeedbackLedger;

/// The name events are reported under (`reportingController`).
pub const CONTROLLER_NAME: &str = "mailfleet-operator";

/// What the operator was started with, as far as the controllers care.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Image of the agent sidecar; without it no sidecar is added.
    pub agent_image: Option<String>,
    /// Where the sidecars post their feedback.
    pub feedback_url: String,
    /// This replica's name, for events and the lease.
    pub identity: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            agent_image: None,
            feedback_url: "http://mailfleet.default.svc:8080/v1/feedback".to_string(),
            identity: CONTROLLER_NAME.to_string(),
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
    /// Sequences of the feedback reports counted by this replica.
    pub ledger: tokio::sync::Mutex<FeedbackLedger>,
    /// One lock per pool: the pool controller and the feedback receiver both
    /// write a pool's status, and taking turns avoids needless 409s.
    status_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    leading: AtomicBool,
    synced: AtomicBool,
}

impl Context {
    pub fn new(client: Client, stores: ClusterStores, settings: Settings) -> Self {
        let metrics = Arc::new(Metrics::default());
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: CONTROLLER_NAME.to_string(),
                instance: Some(settings.identity.clone()),
            },
        );
        Context {
            writer: Writer::new(client.clone(), metrics.clone()),
            client,
            stores,
            metrics,
            recorder,
            settings,
            snapshots: SnapshotCache::default(),
            last_routes: Mutex::new(HashMap::new()),
            ledger: tokio::sync::Mutex::new(FeedbackLedger::new()),
            status_locks: Mutex::new(HashMap::new()),
            leading: AtomicBool::new(false),
            synced: AtomicBool::new(false),
        }
    }

    pub fn status_lock(&self, namespace: &str, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.status_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks
            .entry(format!("{namespace}/{name}"))
            .or_default()
            .clone()
    }

    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::SeqCst);
        self.metrics.set_leader(leading);
    }

    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::SeqCst);
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
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
