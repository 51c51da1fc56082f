//! Starting and stopping the operator: reflectors, the HTTP port, leader
//! election, and the two controllers while this replica leads.

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::controller::Config as ControllerConfig;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::sync::{Mutex, OnceLock, Weak};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::build::{IP_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, POOL_LABEL};
use super::context::{object_key, ClusterStores, Context, Settings};
use super::fanout::Fanout;
use super::feedback::OperatorFeedback;
use super::leader::{LeaderError, Leadership, GRACE_SECONDS, LEASE_SECONDS};
use super::leader_route::{self, OwnPod};
use super::metrics::Metrics;
use super::route_index::PoolRouteIndex;
use super::slim;
use super::stores::Stores;
use super::triggers::{
    pod_route_wake, route_wake, ChangeFilter, Epochs, PodChange, PodChanges, PoolChanges,
    RouteWake, Trigger, Wakes,
};
use super::{pool_controller, probes, route_controller};
use crate::api::{DomainRoute, SenderPool};
use crate::serve::{self, LogLevelHandle, Observability, ServeLimits, TlsError, TlsFiles};

/// How long controllers get to finish their reconciles after shutdown is asked.
const CONTROLLER_GRACE: Duration = Duration::from_secs(10);

/// Everything `mailfleet operator` was started with.
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    pub leader_election: bool,
    pub lease_name: String,
    pub lease_namespace: String,
    /// Lease duration and renewal grace, in seconds.
    pub lease_timing: (u64, u64),
    /// Reconciles running at once, per controller and watched namespace.
    pub concurrency: u16,
    pub settings: Settings,
    /// Serve the port over TLS with this certificate (`--tls-cert`/`--tls-key`).
    pub tls: Option<TlsFiles>,
    /// The port's bounds (`--max-connections`).
    pub serve_limits: ServeLimits,
    /// This replica's pod, labelled while it leads so the Service sends
    /// feedback to it only ([`leader_route`](super::leader_route)); `None`
    /// outside a pod or without leader election.
    pub own_pod: Option<OwnPod>,
}

impl Default for OperatorOptions {
    fn default() -> Self {
        OperatorOptions {
            namespaces: Vec::new(),
            leader_election: false,
            lease_name: "mailfleet-operator".to_string(),
            lease_namespace: "default".to_string(),
            lease_timing: (LEASE_SECONDS, GRACE_SECONDS),
            concurrency: 4,
            settings: Settings::default(),
            tls: None,
            serve_limits: ServeLimits::default(),
            own_pod: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Leader(#[from] LeaderError),
    #[error("the HTTP port failed: {0}")]
    Http(#[source] std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the {0} controller stopped unexpectedly")]
    ControllerEnded(&'static str),
}

/// A running operator.
pub struct Operator {
    ctx: Arc<Context>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), RunError>>,
}

impl Operator {
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The address the HTTP port listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops gracefully: controllers finish their reconciles, the port closes.
    pub async fn shutdown(mut self) -> Result<(), RunError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.wait().await
    }

    /// Runs until stopped by `shutdown`, lost leadership or a failure.
    pub async fn wait(self) -> Result<(), RunError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(RunError::Http(std::io::Error::other(e.to_string()))),
        }
    }

    /// Like [`wait`](Self::wait), but stops gracefully when `signal` completes.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<(), RunError> {
        let stop = self.stop.take();
        let mut task = self.task;
        tokio::select! {
            result = &mut task => return flatten(result),
            () = signal => {}
        }
        tracing::info!("shutting down");
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        flatten(task.await)
    }
}

fn flatten(result: Result<Result<(), RunError>, tokio::task::JoinError>) -> Result<(), RunError> {
    result.unwrap_or_else(|e| Err(RunError::Http(std::io::Error::other(e.to_string()))))
}

struct Obs(Arc<Context>);

impl Observability for Obs {
    fn registry(&self) -> &crate::metrics::ProcessRegistry {
        &self.0.registry
    }
    fn health(&self) -> Result<String, String> {
        Ok("ok\n".into())
    }
    fn ready(&self) -> Result<String, String> {
        if self.0.is_synced() {
            Ok(if self.0.is_leading() {
                "ready (leader)\n".into()
            } else {
                "ready (follower)\n".into()
            })
        } else {
            Err("waiting for the first list of every watched resource\n".into())
        }
    }
}

/// Starts the operator on `listener`.
pub async fn start(
    client: Client,
    options: OperatorOptions,
    listener: TcpListener,
    log_level: Option<LogLevelHandle>,
) -> Result<Operator, RunError> {
    let addr = listener.local_addr().map_err(RunError::Http)?;
    // Refused before anything runs: a key that does not load must not
    // leave a plain-HTTP port behind.
    let tls = options.tls.as_ref().map(TlsFiles::acceptor).transpose()?;
    let scopes: Vec<Option<String>> = if options.namespaces.is_empty() {
        vec![None]
    } else {
        options.namespaces.iter().cloned().map(Some).collect()
    };
    let metrics = Arc::new(Metrics::default());
    let epochs = Arc::new(Epochs::default());
    let mut reflectors = JoinSet::new();
    let mut wiring = Vec::new();
    let mut pools = Vec::new();
    let mut routes = Vec::new();
    let mut pods = Vec::new();
    let mut deployments = Vec::new();
    let mut config_maps = Vec::new();
    let mut services = Vec::new();
    let mut slices = Vec::new();
    let managed = format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}");
    // The reflectors start before the context exists; a deleted pool or
    // route is forgotten through this once the context is made.
    let forget: Arc<OnceLock<Weak<Context>>> = Arc::default();
    for scope in &scopes {
        let pool_trigger = Trigger::new();
        let route_trigger = Trigger::new();
        let pool_wakes = Wakes::new(pool_trigger.clone());
        let route_wakes = Wakes::new(route_trigger.clone());
        let feeds = Feeds::default();
        // Which routes name which pool, from the route watch below.
        let index: Arc<Mutex<PoolRouteIndex>> = Arc::default();
        // A pool's pair states change the routes naming it; its spec every
        // route and every sender config of its namespace; a route's spec
        // changes every sender config; a pod changes the endpoints of the
        // routes naming its pool.
        let mut pool_changes = PoolChanges::default();
        let to_routes = route_trigger.clone();
        let to_named_routes = route_wakes.clone();
        let pool_index = index.clone();
        let pool_forget = forget.clone();
        let pool_feed = feeds.pools.clone();
        let pool_store = reflect(
            &mut reflectors,
            api::<SenderPool>(&client, scope),
            watcher::Config::default(),
            move |event| {
                pool_feed.send(event);
                forget_gone(&pool_forget, event, Context::forget_pool);
                // The routes re-compile; the pools whose view of the table
                // moved follow (SnapshotCache::notify).
                let change = pool_changes.classify(event);
                let wake = route_wake(
                    &change,
                    &pool_index.lock().unwrap_or_else(|e| e.into_inner()),
                );
                match wake {
                    RouteWake::None => {}
                    RouteWake::Routes(routes) => to_named_routes.wake(routes),
                    RouteWake::All => to_routes.fire(),
                }
            },
        );
        pools.push(pool_store.clone());
        let mut route_changes = ChangeFilter::default();
        let to_pools = pool_trigger.clone();
        let route_forget = forget.clone();
        let route_feed = feeds.routes.clone();
        let route_index = index.clone();
        let route_store = reflect(
            &mut reflectors,
            api::<DomainRoute>(&client, scope),
            watcher::Config::default(),
            move |event| {
                // The index first: a pool change read after this event
                // reaches the route's new pools.
                route_index
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .apply(event);
                route_feed.send(event);
                forget_gone(&route_forget, event, Context::forget_route);
                if route_changes.route_event(event) {
                    to_pools.fire();
                }
            },
        );
        routes.push(route_store.clone());
        let mut pod_changes = PodChanges::default();
        let to_routes = route_trigger.clone();
        let to_pod_routes = route_wakes.clone();
        let pod_index = index;
        let pod_epochs = epochs.clone();
        let pod_feed = feeds.pods.clone();
        let pod_pools = pool_store.clone();
        pods.push(reflect_with(
            &mut reflectors,
            api::<Pod>(&client, scope),
            watcher::Config::default().labels(&format!("{POOL_LABEL},{IP_LABEL}")),
            slim::slim_pod,
            move |event| {
                pod_feed.send(event);
                let change = pod_changes.classify(event);
                if change != PodChange::Unchanged {
                    pod_epochs.bump_pods();
                    match event {
                        watcher::Event::Apply(pod) | watcher::Event::Delete(pod)
                            if owner_alive(&pod_pools, pod) =>
                        {
                            pod_epochs.bump_owner(pod)
                        }
                        _ => {}
                    }
                    // Only the routes naming the pod's pool list its pods.
                    let wake = pod_route_wake(
                        &change,
                        &pod_index.lock().unwrap_or_else(|e| e.into_inner()),
                    );
                    match wake {
                        RouteWake::None => {}
                        RouteWake::Routes(routes) => to_pod_routes.wake(routes),
                        RouteWake::All => to_routes.fire(),
                    }
                }
            },
        ));
        let owned = watcher::Config::default().labels(&managed);
        let deployment_epochs = epochs.clone();
        let deployment_feed = feeds.deployments.clone();
        let deployment_pools = pool_store.clone();
        deployments.push(reflect_with(
            &mut reflectors,
            api::<Deployment>(&client, scope),
            owned.clone(),
            slim::slim_deployment,
            move |event| {
                deployment_feed.send(event);
                match event {
                    watcher::Event::Apply(d) | watcher::Event::Delete(d)
                        if owner_alive(&deployment_pools, d) =>
                    {
                        deployment_epochs.bump_owner(d)
                    }
                    _ => {}
                }
            },
        ));
        // A ConfigMap is compared by its config-version annotation: its data
        // (the largest objects by far) is not kept. The one ConfigMap watch
        // sees every ConfigMap of the scope, not only ours: the classifier
        // rules a pool names (`spec.classifierRules`) are the user's own, with
        // no label of ours. A deleted ConfigMap of ours wakes the pools; a
        // change of one a pool names wakes that pool, which reads it.
        let to_pools = pool_trigger.clone();
        let rules_epochs = epochs.clone();
        let rules_pools = pool_store.clone();
        config_maps.push(reflect_with(
            &mut reflectors,
            api::<ConfigMap>(&client, scope),
            watcher::Config::default(),
            slim::slim_config_map,
            move |event| {
                let changed = match event {
                    watcher::Event::Apply(cm) | watcher::Event::Delete(cm) => cm,
                    _ => return,
                };
                let ours = changed.labels().get(MANAGED_BY_LABEL).map(String::as_str)
                    == Some(MANAGED_BY_VALUE);
                let named = super::sender_checks::pools_naming(&rules_pools.state(), changed);
                for pool in &named {
                    rules_epochs.bump_pool(pool);
                }
                if !named.is_empty() || (ours && matches!(event, watcher::Event::Delete(_))) {
                    to_pools.fire();
                }
            },
        ));
        let service_feed = feeds.services.clone();
        services.push(reflect(
            &mut reflectors,
            api::<Service>(&client, scope),
            owned.clone(),
            move |event| service_feed.send(event),
        ));
        let slice_feed = feeds.slices.clone();
        slices.push(reflect(
            &mut reflectors,
            api::<EndpointSlice>(&client, scope),
            owned,
            move |event| slice_feed.send(event),
        ));
        wiring.push(ScopeWiring {
            pool_trigger,
            route_trigger,
            pool_wakes,
            route_wakes,
            pool_store,
            route_store,
            feeds,
        });
    }
    let stores = ClusterStores {
        pools: Stores::new(pools),
        routes: Stores::new(routes),
        pods: Stores::new(pods),
        deployments: Stores::new(deployments),
        config_maps: Stores::new(config_maps),
        services: Stores::new(services),
        slices: Stores::new(slices),
    };
    let ctx = Arc::new(Context::with_parts(
        client.clone(),
        stores.clone(),
        options.settings.clone(),
        metrics,
        epochs,
    ));
    let _ = forget.set(Arc::downgrade(&ctx));
    for w in &wiring {
        ctx.snapshots
            .notify(w.pool_trigger.clone(), w.pool_wakes.clone());
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(supervise(
        client,
        options,
        ctx.clone(),
        listener,
        tls,
        log_level,
        reflectors,
        wiring,
        stopped,
    ));
    Ok(Operator {
        ctx,
        addr,
        stop: Some(stop),
        task,
    })
}

/// What the reflectors of one watched scope hand the controllers.
#[derive(Default)]
struct Feeds {
    pools: Fanout<SenderPool>,
    routes: Fanout<DomainRoute>,
    pods: Fanout<Pod>,
    deployments: Fanout<Deployment>,
    services: Fanout<Service>,
    slices: Fanout<EndpointSlice>,
}

struct ScopeWiring {
    pool_trigger: Trigger,
    route_trigger: Trigger,
    /// Single pools and routes to look at again.
    pool_wakes: Wakes<SenderPool>,
    route_wakes: Wakes<DomainRoute>,
    pool_store: Store<SenderPool>,
    route_store: Store<DomainRoute>,
    feeds: Feeds,
}

type Wiring = Vec<ScopeWiring>;

/// Whether the pool an object is labelled with still exists (the workloads
/// of a deleted pool go after it, and must not bring its epoch back).
fn owner_alive<K: Resource>(pools: &Store<SenderPool>, object: &K) -> bool {
    let meta = object.meta();
    match (
        meta.labels.as_ref().and_then(|l| l.get(POOL_LABEL)),
        &meta.namespace,
    ) {
        (Some(pool), Some(ns)) => pools
            .get(&reflector::ObjectRef::new(pool).within(ns))
            .is_some(),
        _ => false,
    }
}

/// Forgets what the context keeps about a deleted object; after a re-list
/// (which sends no deletes for what went while the watch was down), sweeps.
fn forget_gone<K: Resource>(
    ctx: &OnceLock<Weak<Context>>,
    event: &watcher::Event<K>,
    forget: fn(&Context, &str),
) {
    let Some(ctx) = ctx.get().and_then(Weak::upgrade) else {
        return;
    };
    match event {
        watcher::Event::Delete(object) => forget(&ctx, &object_key(object)),
        watcher::Event::InitDone => ctx.sweep(),
        _ => {}
    }
}

#[allow(clippy::too_many_arguments)]
async fn supervise(
    client: Client,
    options: OperatorOptions,
    ctx: Arc<Context>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    log_level: Option<LogLevelHandle>,
    mut reflectors: JoinSet<()>,
    wiring: Wiring,
    stopped: oneshot::Receiver<()>,
) -> Result<(), RunError> {
    let (http_stop, http_stopped) = oneshot::channel::<()>();
    let receiver = Arc::new(OperatorFeedback::new(ctx.clone()));
    let obs = Arc::new(Obs(ctx.clone()));
    let http_stopped = http_stopped.map(|_| ());
    let http = match tls {
        None => tokio::spawn(serve::serve_with(
            listener,
            receiver,
            obs,
            log_level,
            options.serve_limits.clone(),
            http_stopped,
        )),
        Some(acceptor) => tokio::spawn(serve::serve_tls(
            listener,
            acceptor,
            receiver,
            obs,
            log_level,
            options.serve_limits.clone(),
            http_stopped,
        )),
    };
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if ctx.stores.wait_until_ready().await {
                tracing::info!("every watched resource is listed");
                ctx.set_synced();
            }
        });
    }
    let mut stopped = stopped.fuse();
    let result = lead_and_run(&client, &options, &ctx, wiring, &mut stopped).await;
    let _ = http_stop.send(());
    match http.await {
        Ok(Err(e)) if result.is_ok() => return Err(RunError::Http(e)),
        _ => {}
    }
    reflectors.abort_all();
    result
}

async fn lead_and_run(
    client: &Client,
    options: &OperatorOptions,
    ctx: &Arc<Context>,
    wiring: Wiring,
    stopped: &mut futures::future::Fuse<oneshot::Receiver<()>>,
) -> Result<(), RunError> {
    // Only with leader election: a single replica needs no routing.
    let own_pod = options.own_pod.clone().filter(|_| options.leader_election);
    if let Some(pod) = &own_pod {
        // A container restarted in a former leader's pod is not the leader.
        leader_route::unmark(client, pod).await;
    }
    let mut leadership = if options.leader_election {
        let mut leadership = Leadership::start(
            client.clone(),
            &options.lease_namespace,
            &options.lease_name,
            &options.settings.identity,
            options.lease_timing,
        )
        .await?;
        tracing::info!(lease = %options.lease_name, identity = %options.settings.identity, "waiting to lead");
        tokio::select! {
            acquired = leadership.acquired() => acquired?,
            _ = &mut *stopped => {
                leadership.release().await;
                return Ok(());
            }
        }
        Some(leadership)
    } else {
        None
    };
    // Reconciles read the stores: they start once everything is listed.
    tokio::select! {
        () = ctx.synced() => {}
        _ = &mut *stopped => return Ok(()),
    }
    tracing::info!("leading: starting the controllers");
    ctx.set_leading(true);
    let route_here = own_pod
        .clone()
        .map(|pod| tokio::spawn(leader_route::mark_leading(client.clone(), pod)));
    let mut controllers = JoinSet::new();
    let mut stops = Vec::new();
    let mut wake_all = Vec::new();
    for ScopeWiring {
        pool_trigger,
        route_trigger,
        pool_wakes,
        route_wakes,
        pool_store,
        route_store,
        feeds,
    } in wiring
    {
        let (stop_pools, pools_stopped) = oneshot::channel::<()>();
        let (stop_routes, routes_stopped) = oneshot::channel::<()>();
        stops.push(stop_pools);
        stops.push(stop_routes);
        let config = ControllerConfig::default().concurrency(options.concurrency);
        // The controllers read the reflectors' stores and changes: each
        // kind is watched once. They start after the stores are listed, so
        // every object is reconciled once at the start (the wake-ups below).
        let pool_controller =
            Controller::for_stream(feeds.pools.subscribe(pool_trigger.clone()), pool_store)
                .with_config(config.clone())
                .owns_stream(feeds.deployments.subscribe(pool_trigger.clone()))
                .watches_stream(feeds.pods.subscribe(pool_trigger.clone()), |pod: Pod| {
                    let pool = pod.labels().get(POOL_LABEL)?.clone();
                    Some(reflector::ObjectRef::new(&pool).within(&pod.namespace()?))
                })
                .reconcile_all_on(pool_trigger.stream())
                .reconcile_on(pool_wakes.stream())
                .graceful_shutdown_on(pools_stopped.map(|_| ()))
                .run(
                    pool_controller::reconcile,
                    pool_controller::error_policy,
                    ctx.clone(),
                )
                .for_each(|_| async {});
        controllers.spawn(pool_controller.map(|_| "SenderPool"));
        let route_controller =
            Controller::for_stream(feeds.routes.subscribe(route_trigger.clone()), route_store)
                .with_config(config)
                .owns_stream(feeds.services.subscribe(route_trigger.clone()))
                .owns_stream(feeds.slices.subscribe(route_trigger.clone()))
                .reconcile_all_on(route_trigger.stream())
                .reconcile_on(route_wakes.stream())
                .graceful_shutdown_on(routes_stopped.map(|_| ()))
                .run(
                    route_controller::reconcile,
                    route_controller::error_policy,
                    ctx.clone(),
                )
                .for_each(|_| async {});
        controllers.spawn(route_controller.map(|_| "DomainRoute"));
        wake_all.push(pool_trigger);
        wake_all.push(route_trigger);
    }
    for trigger in wake_all {
        trigger.fire();
    }
    let (stop_probes, probes_stopped) = oneshot::channel::<()>();
    stops.push(stop_probes);
    let probe_task = tokio::spawn(probes::run(ctx.clone(), probes_stopped.map(|_| ())));
    let (stop_reverse_dns, reverse_dns_stopped) = oneshot::channel::<()>();
    stops.push(stop_reverse_dns);
    tokio::spawn(super::reverse_dns::run(
        ctx.clone(),
        reverse_dns_stopped.map(|_| ()),
    ));
    let (stop_claims, claims_stopped) = oneshot::channel::<()>();
    stops.push(stop_claims);
    let claim_task = tokio::spawn(probes::run_claim_checks(
        ctx.clone(),
        claims_stopped.map(|_| ()),
    ));
    let outcome = tokio::select! {
        _ = &mut *stopped => Ok(()),
        lost = async {
            match leadership.as_mut() {
                Some(l) => l.lost().await,
                None => futures::future::pending().await,
            }
        } => Err(RunError::Leader(lost)),
        Some(ended) = controllers.join_next() => {
            Err(RunError::ControllerEnded(ended.unwrap_or("a")))
        }
    };
    ctx.set_leading(false);
    if let Some(task) = route_here {
        task.abort();
    }
    if let Some(pod) = &own_pod {
        leader_route::unmark(client, pod).await;
    }
    for stop in stops {
        let _ = stop.send(());
    }
    let drained = tokio::time::timeout(CONTROLLER_GRACE, async {
        while controllers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("controllers did not stop in time; aborting them");
        controllers.abort_all();
    }
    if tokio::time::timeout(CONTROLLER_GRACE, probe_task)
        .await
        .is_err()
    {
        tracing::warn!("the probes did not stop in time");
    }
    if tokio::time::timeout(CONTROLLER_GRACE, claim_task)
        .await
        .is_err()
    {
        tracing::warn!("the claim checks did not stop in time");
    }
    if let (Ok(()), Some(leadership)) = (&outcome, leadership) {
        leadership.release().await;
    }
    outcome
}

fn api<K>(client: &Client, scope: &Option<String>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs a reflector for `api` in `tasks` and returns its store; `on_event`
/// sees every event after the store applied it.
fn reflect<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    on_event: impl FnMut(&watcher::Event<K>) + Send + 'static,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    // Managed fields and kubectl's copy are never read (`slim`).
    reflect_with(
        tasks,
        api,
        config,
        |o: &mut K| slim::slim_metadata(o.meta_mut()),
        on_event,
    )
}

/// Like [`reflect`], with `trim` applied to every object before it is stored.
fn reflect_with<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    trim: impl FnMut(&mut K) + Send + 'static,
    mut on_event: impl FnMut(&watcher::Event<K>) + Send + 'static,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(trim)
        .reflect(writer);
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => on_event(&event),
                Err(err) => {
                    tracing::warn!(kind = %K::kind(&()), error = %err, "watch failed; retrying")
                }
            }
        }
    });
    reader
}
