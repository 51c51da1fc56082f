//! An in-process fake Kubernetes API server, good enough for the real
//! kube-runtime `Controller`, `watcher`, `reflector`, typed `kube::Api`
//! calls, server-side apply and the events `Recorder` to run against it
//! (DESIGN.md, "Testing without a cluster", level L3).
//!
//! It serves, for any resource in its table (core `/api/v1/...` and
//! `/apis/{group}/{version}/...`, namespaced and all-namespaces):
//! GET, LIST (label and field selectors, `limit`/`continue`), WATCH (from a
//! resourceVersion, ADDED/MODIFIED/DELETED, BOOKMARK, `timeoutSeconds`,
//! 410 Gone after [`FakeApi::compact_history`]), POST, PUT, PATCH (apply,
//! merge, strategic-as-merge, JSON patch), DELETE (finalizers, owner
//! garbage collection), DELETE on a collection, the `/status` subresource,
//! TokenReviews and minimal discovery (`/api`, `/apis`, `/apis/{group}`,
//! `/api/v1`, `/apis/{group}/{version}`, `/version`).
//!
//! Served from the start: ConfigMap, Secret, Service, Pod, Namespace,
//! ServiceAccount, Endpoints, Event (`v1` and `events.k8s.io/v1`),
//! Deployment, ReplicaSet, EndpointSlice, Lease, SenderPool, DomainRoute
//! and TokenReview; any other kind once a test inserts one (plural derived
//! from the kind) or registers it ([`FakeApi::register`]).
//!
//! Every request is logged ([`FakeApi::requests`], [`FakeApi::writes`]);
//! a long benchmark may call [`FakeApi::clear_requests`] now and then.
//!
//! Simplifications, on purpose:
//! - server-side apply merges the applied configuration recursively; lists
//!   are atomic (owned and replaced whole), where the real server merges
//!   keyed lists (`containers`, `ports`) item by item. Field ownership is
//!   tracked per manager: an apply that changes a field another manager
//!   owns is a 409 Conflict unless `force`, and fields a manager applied
//!   before and leaves out now are removed (if no one else owns them);
//! - a strategic merge patch is read as a JSON merge patch;
//! - `metadata.generation` starts at 1 for every kind and goes up when
//!   anything but metadata and status changes; no-op writes store nothing
//!   and keep the resourceVersion, like the real server;
//! - no admission, no defaulting, no schema validation, no conversion, no
//!   controllers running by themselves: Deployments make no Pods until a
//!   test calls [`FakeApi::run_deployment`] (or inserts Pods itself);
//! - garbage collection is immediate (background propagation) when the
//!   last owner is deleted; `propagationPolicy: Orphan` keeps dependents.
//!
//! Typical use:
//!
//! ```ignore
//! let fake = FakeApi::start().await;
//! fake.insert(json!({"apiVersion": "mailfleet.io/v1alpha1", "kind": "SenderPool", ...}));
//! tokio::spawn(run_operator(fake.client()));
//! assert!(fake.wait_for(|api| api.list("apps/v1", "Deployment").len() == 8, WAIT).await);
//! fake.fail_next("PATCH", "/deployments/", 409, 1);
//! let before = fake.write_count();
//! ```
//!
//! Stop it by dropping it.

mod fields;
mod resources;
mod selector;
mod server;
mod store;
mod workloads;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

pub use resources::ResourceType;
pub use selector::{FieldSelector, LabelSelector};
pub use store::{Failure, TokenUser, Write};

/// `status.user.extra` key of a bound pod token: the pod's name.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// `status.user.extra` key of a bound pod token: the pod's uid.
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

use server::{lock, Shared};

fn now_text() -> String {
    let now = jiff::Timestamp::now();
    now.round(jiff::Unit::Second).unwrap_or(now).to_string()
}

/// The fake API server; see the module docs.
pub struct FakeApi {
    shared: Shared,
    url: String,
    _shutdown: watch::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeApi {
    /// Starts serving on 127.0.0.1 (a free port) in a tokio task of the
    /// current runtime.
    pub async fn start() -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the fake API server needs a local port");
        let address = listener
            .local_addr()
            .expect("a bound listener has an address");
        let shared: Shared = Arc::new(Mutex::new(store::Store::default()));
        let (shutdown, stopped) = watch::channel(());
        let server = tokio::spawn(server::serve(listener, shared.clone(), stopped));
        FakeApi {
            shared,
            url: format!("http://{address}"),
            _shutdown: shutdown,
            server,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A client for this server (default namespace `default`). Note that
    /// kube retries 429, 503 and 504 answers by itself.
    pub fn client(&self) -> kube::Client {
        let url = self.url.parse().expect("the server URL is a valid URI");
        kube::Client::try_from(kube::Config::new(url))
            .expect("a kube client for the fake API server")
    }

    /// Seeds or replaces an object exactly as given (status included), as
    /// if another actor had written it: sets uid (kept when replacing),
    /// resourceVersion, creationTimestamp and generation unless given, and
    /// notifies watches. Namespaced objects without a namespace land in
    /// `default`. Unknown kinds are served from now on under a derived
    /// plural. Returns the stored object. Panics on an object without
    /// apiVersion, kind or name.
    pub fn insert(&self, object: Value) -> Value {
        lock(&self.shared)
            .insert(object)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// One object (`namespace` is ignored for cluster-scoped kinds).
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let store = lock(&self.shared);
        let rt = store.resources.by_kind(api_version, kind)?;
        let namespace = if rt.namespaced { namespace } else { "" };
        store.find(&rt.key(), namespace, name).map(|o| (*o).clone())
    }

    /// Every object of a kind, all namespaces, ordered by namespace and name.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        self.list_matching(api_version, kind, None, "")
    }

    /// Objects of a kind in one namespace (or all) matching a label
    /// selector in API syntax (`""` matches everything). Panics on a
    /// malformed selector.
    pub fn list_matching(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        labels: &str,
    ) -> Vec<Value> {
        let labels = LabelSelector::parse(labels).unwrap_or_else(|e| panic!("{e}"));
        let store = lock(&self.shared);
        let Some(rt) = store.resources.by_kind(api_version, kind) else {
            return Vec::new();
        };
        store
            .list(&rt.key(), namespace, &labels, &FieldSelector::default())
            .into_iter()
            .map(|o| (*o).clone())
            .collect()
    }

    /// Deletes as a DELETE request would (finalizers hold it, the objects it
    /// owns are garbage-collected). Returns whether it existed.
    pub fn remove(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        lock(&self.shared).remove(api_version, kind, namespace, name)
    }

    /// Changes a stored object in place, as a controller outside the
    /// operator would (generation bumps if more than metadata/status
    /// changed). Returns the stored object; panics if it does not exist.
    pub fn modify(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> Value {
        lock(&self.shared)
            .modify(api_version, kind, namespace, name, change)
            .unwrap_or_else(|e| panic!("modify: {e}"))
    }

    /// Every request so far, in order (reads and watches included).
    pub fn requests(&self) -> Vec<Write> {
        lock(&self.shared).requests.clone()
    }

    /// Every mutating request (POST, PUT, PATCH, DELETE; TokenReviews are
    /// questions, not writes, and are left out), failed ones included.
    pub fn writes(&self) -> Vec<Write> {
        lock(&self.shared)
            .requests
            .iter()
            .filter(|w| w.is_mutating() && !w.is_token_review())
            .cloned()
            .collect()
    }

    /// `writes().len()` without copying them.
    pub fn write_count(&self) -> usize {
        lock(&self.shared)
            .requests
            .iter()
            .filter(|w| w.is_mutating() && !w.is_token_review())
            .count()
    }

    /// Forgets the request log (objects stay).
    pub fn clear_requests(&self) {
        lock(&self.shared).requests.clear();
    }

    /// The next `times` requests whose method is `method` (any case; `"*"`
    /// for any) and whose `path?query` contains `path_contains` are answered
    /// with `status` and a Status body of the matching reason (409 Conflict,
    /// 404 NotFound, 500 InternalError, …) instead of being served. kube's
    /// client retries 429, 503 and 504 by itself.
    pub fn fail_next(&self, method: &str, path_contains: &str, status: u16, times: usize) {
        lock(&self.shared).failures.push(Failure {
            method: method.to_string(),
            path_contains: path_contains.to_string(),
            status,
            remaining: times,
        });
    }

    /// TokenReviews of `token` authenticate as `user`; any other token is
    /// answered `authenticated: false`.
    pub fn allow_token(&self, token: &str, user: TokenUser) {
        lock(&self.shared).tokens.insert(token.to_string(), user);
    }

    /// Allows `token` as the bound ServiceAccount token of an existing pod
    /// (its uid and `spec.serviceAccountName`, default `default`). Panics if
    /// the pod does not exist.
    pub fn allow_pod_token(&self, token: &str, namespace: &str, pod_name: &str) -> TokenUser {
        let pod = self
            .get("v1", "Pod", namespace, pod_name)
            .unwrap_or_else(|| {
                panic!("allow_pod_token: pod {namespace}/{pod_name} does not exist")
            });
        let service_account = pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default");
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
        let user = TokenUser::pod(namespace, service_account, pod_name, uid);
        self.allow_token(token, user.clone());
        user
    }

    /// Marks a pod Running and Ready (or not ready): `status.phase`, the
    /// Ready and ContainersReady conditions, each container's `ready`, and a
    /// pod IP if it has none. Panics if the pod does not exist.
    pub fn set_pod_ready(&self, namespace: &str, name: &str, ready: bool) {
        let now = now_text();
        self.modify("v1", "Pod", namespace, name, |pod| {
            workloads::mark_ready(pod, ready, &now)
        });
    }

    /// Acts as the Deployment controller and kubelet for one Deployment:
    /// brings its Pods to `spec.replicas` copies of the current template
    /// (named `<deployment>-<template hash>-<n>`, labelled like the
    /// template plus `pod-template-hash`, owned by the Deployment; a changed
    /// template replaces them all), ready or not, and writes the
    /// Deployment's status. Returns the Pod names; panics if the Deployment
    /// does not exist.
    pub fn run_deployment(&self, namespace: &str, name: &str, ready: bool) -> Vec<String> {
        let now = now_text();
        workloads::run_deployment(&mut lock(&self.shared), namespace, name, ready, &now)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The newest resourceVersion issued.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared).current_rv()
    }

    /// Forgets the change history, so every open or later watch from an
    /// older resourceVersion gets 410 Gone (and kube's watcher lists again).
    pub fn compact_history(&self) {
        lock(&self.shared).compact();
    }

    /// How many changes are kept for watches to replay (default 20 000).
    pub fn set_history_limit(&self, changes: usize) {
        lock(&self.shared).history_limit = changes.max(1);
    }

    /// Serves another resource type (a kind whose derived plural or scope
    /// would be wrong).
    pub fn register(&self, resource: ResourceType) {
        lock(&self.shared).resources.register(resource);
    }

    /// Waits until `condition` holds (checked on every change, and every
    /// 20 ms for conditions on the request log). False on timeout.
    pub async fn wait_for(
        &self,
        mut condition: impl FnMut(&FakeApi) -> bool,
        timeout: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = lock(&self.shared).subscribe();
        loop {
            changes.borrow_and_update();
            if condition(self) {
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            let wake = (now + Duration::from_millis(20)).min(deadline);
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}
