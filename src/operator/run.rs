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
use crate::serve::{
    self, LogLevelHandle, Observability, ProbeFailure, ProbeReport, ProblemCategory, ServeLimits,
    TlsError, TlsFiles,
};

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
    /// Serve TLS with a certificate the operator keeps in a Secret
    /// (`--feedback-tls-secret`); wins over `tls`.
    pub managed_tls: Option<super::feedback_cert_keeper::ManagedTls>,
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
            managed_tls: None,
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
    #[error(transparent)]
    FeedbackCert(#[from] Box<super::feedback_cert_keeper::KeeperError>),
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
    fn health(&self) -> Result<ProbeReport, ProbeFailure> {
        Ok(ProbeReport::Healthy)
    }
    fn ready(&self) -> Result<ProbeReport, ProbeFailure> {
        match (self.0.is_synced(), self.0.is_leading()) {
            (true, true) => Ok(ProbeReport::Leading),
            (true, false) => Ok(ProbeReport::Following),
            (false, _) => Err(ProbeFailure::single(
                ProblemCategory::Starting,
                "waiting for the first list of every watched resource",
            )),
        }
    }
}

/// Starts the operator on `listener`: the reflectors of every watched scope,
/// the context over their stores, then (in the background) the port and,
/// while this replica leads, the controllers.
pub async fn start(
    client: Client,
    mut options: OperatorOptions,
    listener: TcpListener,
    log_level: Option<LogLevelHandle>,
) -> Result<Operator, RunError> {
    let addr = listener.local_addr().map_err(RunError::Http)?;
    // Refused before anything runs: a key that does not load must not
    // leave a plain-HTTP port behind.
    let (tls, served_cert) = super::feedback_cert_keeper::port_tls(&client, &mut options).await?;
    let mut watches = Watches::new(client.clone());
    let wiring: Wiring = watched_scopes(&options)
        .iter()
        .map(|scope| watches.scope(scope))
        .collect();
    let Watches {
        tasks: reflectors,
        stores,
        epochs,
        forget,
        ..
    } = watches;
    let ctx = Arc::new(Context::with_parts(
        client.clone(),
        stores.into_cluster_stores(),
        options.settings.clone(),
        Arc::new(Metrics::default()),
        epochs,
    ));
    // The reflectors started before the context existed; from now on they
    // reach it.
    let _ = forget.set(Arc::downgrade(&ctx));
    if let Some(served) = served_cert {
        ctx.registry.register(served);
    }
    for w in &wiring {
        ctx.snapshots
            .notify(w.pool_trigger.clone(), w.pool_wakes.clone());
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(supervise(
        client,
        options,
        ctx.clone(),
        Port {
            listener,
            tls,
            log_level,
        },
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

/// The namespaces watched, one reflector set each; `None` is every namespace.
fn watched_scopes(options: &OperatorOptions) -> Vec<Option<String>> {
    if options.namespaces.is_empty() {
        vec![None]
    } else {
        options.namespaces.iter().cloned().map(Some).collect()
    }
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

/// The stores the reflectors fill, one per kind and watched scope.
#[derive(Default)]
struct ScopeStores {
    pools: Vec<Store<SenderPool>>,
    routes: Vec<Store<DomainRoute>>,
    pods: Vec<Store<Pod>>,
    deployments: Vec<Store<Deployment>>,
    config_maps: Vec<Store<ConfigMap>>,
    services: Vec<Store<Service>>,
    slices: Vec<Store<EndpointSlice>>,
}

impl ScopeStores {
    fn into_cluster_stores(self) -> ClusterStores {
        ClusterStores {
            pools: Stores::new(self.pools),
            routes: Stores::new(self.routes),
            pods: Stores::new(self.pods),
            deployments: Stores::new(self.deployments),
            config_maps: Stores::new(self.config_maps),
            services: Stores::new(self.services),
            slices: Stores::new(self.slices),
        }
    }
}

/// Starts the reflectors: each kind is watched once per scope, and what the
/// watch sees fills the store, the context's bookkeeping and the
/// controllers' shared streams ([`Feeds`]).
struct Watches {
    client: Client,
    tasks: JoinSet<()>,
    stores: ScopeStores,
    epochs: Arc<Epochs>,
    /// The reflectors start before the context exists; a deleted pool or
    /// route is forgotten through this once the context is made.
    forget: Arc<OnceLock<Weak<Context>>>,
}

impl Watches {
    fn new(client: Client) -> Self {
        Watches {
            client,
            tasks: JoinSet::new(),
            stores: ScopeStores::default(),
            epochs: Arc::default(),
            forget: Arc::default(),
        }
    }

    /// Watches every kind of one scope. A pool's pair states change the
    /// routes naming it; its spec every route and every sender config of its
    /// namespace; a route's spec changes every sender config; a pod changes
    /// the endpoints of the routes.
    fn scope(&mut self, scope: &Option<String>) -> ScopeWiring {
        let pool_trigger = Trigger::new();
        let route_trigger = Trigger::new();
        let pool_wakes = Wakes::new(pool_trigger.clone());
        let route_wakes = Wakes::new(route_trigger.clone());
        let feeds = Feeds::default();
        // Which routes name which pool, from the route watch.
        let index: Arc<Mutex<PoolRouteIndex>> = Arc::default();
        let all = watcher::Config::default;
        let managed = format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}");
        let owned = || watcher::Config::default().labels(&managed);
        let on_pool = self.on_pool_event(index.clone(), route_trigger.clone(), &route_wakes);
        let pool_store = self.kind(scope, all(), slim_meta, &feeds.pools, on_pool);
        self.stores.pools.push(pool_store.clone());
        let on_route = self.on_route_event(index.clone(), pool_trigger.clone());
        let route_store = self.kind(scope, all(), slim_meta, &feeds.routes, on_route);
        self.stores.routes.push(route_store.clone());
        let senders = all().labels(&format!("{POOL_LABEL},{IP_LABEL}"));
        let on_pod = self.on_pod_event(
            pool_store.clone(),
            index,
            route_trigger.clone(),
            &route_wakes,
        );
        let pods = self.kind(scope, senders, slim::slim_pod, &feeds.pods, on_pod);
        self.stores.pods.push(pods);
        let on_deployment = self.on_deployment_event(pool_store.clone());
        let deployments = self.kind(
            scope,
            owned(),
            slim::slim_deployment,
            &feeds.deployments,
            on_deployment,
        );
        self.stores.deployments.push(deployments);
        let config_maps = self.config_maps(scope, pool_store.clone(), pool_trigger.clone());
        self.stores.config_maps.push(config_maps);
        let services = self.kind(scope, owned(), slim_meta, &feeds.services, |_| {});
        self.stores.services.push(services);
        let slices = self.kind(scope, owned(), slim_meta, &feeds.slices, |_| {});
        self.stores.slices.push(slices);
        ScopeWiring {
            pool_trigger,
            route_trigger,
            pool_wakes,
            route_wakes,
            pool_store,
            route_store,
            feeds,
        }
    }

    /// Watches one kind in one scope and returns its store. Every event
    /// reaches the store first, then `bookkeeping` (epochs, the route index,
    /// wake-ups), then the controllers through `feed`: a controller that
    /// hears of a change finds the bookkeeping already done.
    fn kind<K>(
        &mut self,
        scope: &Option<String>,
        config: watcher::Config,
        trim: fn(&mut K),
        feed: &Fanout<K>,
        mut bookkeeping: impl FnMut(&watcher::Event<K>) + Send + 'static,
    ) -> Store<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug
            + Send
            + Sync
            + 'static,
    {
        let feed = feed.clone();
        reflect_with(
            &mut self.tasks,
            api::<K>(&self.client, scope),
            config,
            trim,
            move |event| {
                bookkeeping(event);
                feed.send(event);
            },
        )
    }

    /// A pool's change re-compiles the routes it moves; the pools whose
    /// view of the table moved follow (SnapshotCache::notify).
    fn on_pool_event(
        &self,
        index: Arc<Mutex<PoolRouteIndex>>,
        to_routes: Trigger,
        to_named_routes: &Wakes<DomainRoute>,
    ) -> impl FnMut(&watcher::Event<SenderPool>) + Send + 'static {
        let forget = self.forget.clone();
        let to_named_routes = to_named_routes.clone();
        let mut pool_changes = PoolChanges::default();
        move |event| {
            forget_gone(&forget, event, Context::forget_pool);
            let change = pool_changes.classify(event);
            let wake = route_wake(&change, &index.lock().unwrap_or_else(|e| e.into_inner()));
            match wake {
                RouteWake::None => {}
                RouteWake::Routes(routes) => to_named_routes.wake(routes),
                RouteWake::All => to_routes.fire(),
            }
        }
    }

    /// A route's spec change wakes every pool (their sender configs carry
    /// the routes). The index is updated first: a pool change read after
    /// this event reaches the route's new pools.
    fn on_route_event(
        &self,
        index: Arc<Mutex<PoolRouteIndex>>,
        to_pools: Trigger,
    ) -> impl FnMut(&watcher::Event<DomainRoute>) + Send + 'static {
        let forget = self.forget.clone();
        let mut route_changes = ChangeFilter::default();
        move |event| {
            index.lock().unwrap_or_else(|e| e.into_inner()).apply(event);
            forget_gone(&forget, event, Context::forget_route);
            if route_changes.route_event(event) {
                to_pools.fire();
            }
        }
    }

    /// A sender pod's change moves its pool's observed state and the
    /// endpoints of the routes naming its pool (only those list its pods).
    fn on_pod_event(
        &self,
        pools: Store<SenderPool>,
        index: Arc<Mutex<PoolRouteIndex>>,
        to_routes: Trigger,
        to_named_routes: &Wakes<DomainRoute>,
    ) -> impl FnMut(&watcher::Event<Pod>) + Send + 'static {
        let epochs = self.epochs.clone();
        let to_named_routes = to_named_routes.clone();
        let mut pod_changes = PodChanges::default();
        move |event| {
            let change = pod_changes.classify(event);
            if change == PodChange::Unchanged {
                return;
            }
            epochs.bump_pods();
            bump_live_owner(&epochs, &pools, event);
            let wake = pod_route_wake(&change, &index.lock().unwrap_or_else(|e| e.into_inner()));
            match wake {
                RouteWake::None => {}
                RouteWake::Routes(routes) => to_named_routes.wake(routes),
                RouteWake::All => to_routes.fire(),
            }
        }
    }

    /// A Deployment of ours changes its pool's observed state.
    fn on_deployment_event(
        &self,
        pools: Store<SenderPool>,
    ) -> impl FnMut(&watcher::Event<Deployment>) + Send + 'static {
        let epochs = self.epochs.clone();
        move |event| bump_live_owner(&epochs, &pools, event)
    }

    /// A ConfigMap is compared by its config-version annotation: its data
    /// (the largest objects by far) is not kept. The one ConfigMap watch
    /// sees every ConfigMap of the scope, not only ours: the classifier
    /// rules a pool names (`spec.classifierRules`) are the user's own, with
    /// no label of ours. A deleted ConfigMap of ours wakes the pools; a
    /// change of one a pool names wakes that pool, which reads it. No
    /// controller follows ConfigMaps, so there is no feed.
    fn config_maps(
        &mut self,
        scope: &Option<String>,
        pools: Store<SenderPool>,
        to_pools: Trigger,
    ) -> Store<ConfigMap> {
        let epochs = self.epochs.clone();
        reflect_with(
            &mut self.tasks,
            api::<ConfigMap>(&self.client, scope),
            watcher::Config::default(),
            slim::slim_config_map,
            move |event| {
                let changed = match event {
                    watcher::Event::Apply(cm) | watcher::Event::Delete(cm) => cm,
                    _ => return,
                };
                let ours = changed.labels().get(MANAGED_BY_LABEL).map(String::as_str)
                    == Some(MANAGED_BY_VALUE);
                let named = super::sender_checks::pools_naming(&pools.state(), changed);
                for pool in &named {
                    epochs.bump_pool(pool);
                }
                if !named.is_empty() || (ours && matches!(event, watcher::Event::Delete(_))) {
                    to_pools.fire();
                }
            },
        )
    }
}

/// A changed or deleted workload moves its pool's epoch, unless the pool is
/// gone (the workloads of a deleted pool go after it, and must not bring
/// its epoch back).
fn bump_live_owner<K: Resource>(
    epochs: &Epochs,
    pools: &Store<SenderPool>,
    event: &watcher::Event<K>,
) {
    if let watcher::Event::Apply(object) | watcher::Event::Delete(object) = event {
        if owner_alive(pools, object) {
            epochs.bump_owner(object);
        }
    }
}

/// Whether the pool an object is labelled with still exists.
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

/// The HTTP port, before it serves.
struct Port {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    log_level: Option<LogLevelHandle>,
}

/// Serves the port and marks the context synced once every store is
/// listed, leads while it may, then stops the port and the reflectors.
async fn supervise(
    client: Client,
    options: OperatorOptions,
    ctx: Arc<Context>,
    port: Port,
    mut reflectors: JoinSet<()>,
    wiring: Wiring,
    stopped: oneshot::Receiver<()>,
) -> Result<(), RunError> {
    let (http_stop, http_stopped) = oneshot::channel::<()>();
    let http = spawn_port(&ctx, port, &options, http_stopped.map(|_| ()));
    tokio::spawn(mark_synced(ctx.clone()));
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

/// Spawns the port, plain or over TLS, until `stopped`.
fn spawn_port(
    ctx: &Arc<Context>,
    port: Port,
    options: &OperatorOptions,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let receiver = Arc::new(OperatorFeedback::new(ctx.clone()));
    let obs = Arc::new(Obs(ctx.clone()));
    let limits = options.serve_limits.clone();
    let Port {
        listener,
        tls,
        log_level,
    } = port;
    tokio::spawn(serve::serve_on(
        listener, tls, receiver, obs, log_level, limits, stopped,
    ))
}

/// `/readyz` passes, and the controllers may start, once every watched
/// resource is listed.
async fn mark_synced(ctx: Arc<Context>) {
    if ctx.stores.wait_until_ready().await {
        tracing::info!("every watched resource is listed");
        ctx.set_synced();
    }
}

type Stopped = futures::future::Fuse<oneshot::Receiver<()>>;

/// Waits for the lease (with leader election) and the first lists, runs the
/// controllers and background tasks while leading, and steps down when
/// stopped, when the lease is lost or when a controller ends.
async fn lead_and_run(
    client: &Client,
    options: &OperatorOptions,
    ctx: &Arc<Context>,
    wiring: Wiring,
    stopped: &mut Stopped,
) -> Result<(), RunError> {
    // Only with leader election: a single replica needs no routing.
    let own_pod = options.own_pod.clone().filter(|_| options.leader_election);
    if let Some(pod) = &own_pod {
        // A container restarted in a former leader's pod is not the leader.
        leader_route::unmark(client, pod).await;
    }
    let Some(mut leadership) = wait_to_lead(client, options, stopped).await? else {
        return Ok(());
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
    let mut leading = Leading::start(options, ctx, wiring);
    let outcome = leading.until_done(stopped, leadership.as_mut()).await;
    ctx.set_leading(false);
    if let Some(task) = route_here {
        task.abort();
    }
    if let Some(pod) = &own_pod {
        leader_route::unmark(client, pod).await;
    }
    leading.stop().await;
    if let (Ok(()), Some(leadership)) = (&outcome, leadership) {
        leadership.release().await;
    }
    outcome
}

/// With leader election, waits until this replica holds the lease:
/// `Some(Some(lease))`; without, leads at once: `Some(None)`. `None` when
/// stopped while waiting (the lease is released).
async fn wait_to_lead(
    client: &Client,
    options: &OperatorOptions,
    stopped: &mut Stopped,
) -> Result<Option<Option<Leadership>>, RunError> {
    if !options.leader_election {
        return Ok(Some(None));
    }
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
            return Ok(None);
        }
    }
    Ok(Some(Some(leadership)))
}

/// What runs while this replica leads: the two controllers of every scope
/// and the background tasks (probes, reverse DNS, claim checks), each with
/// the sender that asks it to stop.
struct Leading {
    controllers: JoinSet<&'static str>,
    background: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
    stops: Vec<oneshot::Sender<()>>,
}

impl Leading {
    fn start(options: &OperatorOptions, ctx: &Arc<Context>, wiring: Wiring) -> Self {
        let mut leading = Leading {
            controllers: JoinSet::new(),
            background: Vec::new(),
            stops: Vec::new(),
        };
        let config = ControllerConfig::default().concurrency(options.concurrency);
        for scope in &wiring {
            let stopped = leading.stop_signal();
            let pools = pool_controller(scope, config.clone(), ctx, stopped);
            leading.controllers.spawn(pools.map(|()| "SenderPool"));
            let stopped = leading.stop_signal();
            let routes = route_controller(scope, config.clone(), ctx, stopped);
            leading.controllers.spawn(routes.map(|()| "DomainRoute"));
        }
        // They start after the stores are listed, so every object is
        // reconciled once at the start.
        for scope in &wiring {
            scope.pool_trigger.fire();
            scope.route_trigger.fire();
        }
        let stop = leading.stop_signal();
        leading.spawn("the probes", probes::run(ctx.clone(), stop));
        let stop = leading.stop_signal();
        leading.spawn(
            "the reverse DNS checks",
            super::reverse_dns::run(ctx.clone(), stop),
        );
        let stop = leading.stop_signal();
        leading.spawn(
            "the claim checks",
            probes::run_claim_checks(ctx.clone(), stop),
        );
        leading
    }

    /// A future that completes when [`stop`](Self::stop) is called.
    fn stop_signal(&mut self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let (stop, stopped) = oneshot::channel::<()>();
        self.stops.push(stop);
        stopped.map(|_| ())
    }

    fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.background.push((name, tokio::spawn(task)));
    }

    /// Runs until stopped, the lease is lost or a controller ends.
    async fn until_done(
        &mut self,
        stopped: &mut Stopped,
        leadership: Option<&mut Leadership>,
    ) -> Result<(), RunError> {
        tokio::select! {
            _ = &mut *stopped => Ok(()),
            lost = async {
                match leadership {
                    Some(l) => l.lost().await,
                    None => futures::future::pending().await,
                }
            } => Err(RunError::Leader(lost)),
            Some(ended) = self.controllers.join_next() => {
                Err(RunError::ControllerEnded(ended.unwrap_or("a")))
            }
        }
    }

    /// Asks everything to stop and gives it [`CONTROLLER_GRACE`] to finish
    /// its work; controllers that take longer are aborted.
    async fn stop(mut self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        let drained = tokio::time::timeout(CONTROLLER_GRACE, async {
            while self.controllers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("controllers did not stop in time; aborting them");
            self.controllers.abort_all();
        }
        for (name, task) in self.background {
            if tokio::time::timeout(CONTROLLER_GRACE, task).await.is_err() {
                tracing::warn!("{name} did not stop in time");
            }
        }
    }
}

/// The pool controller of one scope. It reads the reflectors' stores and
/// changes ([`Feeds`]): each kind is watched once.
fn pool_controller(
    scope: &ScopeWiring,
    config: ControllerConfig,
    ctx: &Arc<Context>,
    stopped: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let trigger = &scope.pool_trigger;
    let feeds = &scope.feeds;
    Controller::for_stream(
        feeds.pools.subscribe(trigger.clone()),
        scope.pool_store.clone(),
    )
    .with_config(config)
    .owns_stream(feeds.deployments.subscribe(trigger.clone()))
    .watches_stream(feeds.pods.subscribe(trigger.clone()), |pod: Pod| {
        let pool = pod.labels().get(POOL_LABEL)?.clone();
        Some(reflector::ObjectRef::new(&pool).within(&pod.namespace()?))
    })
    .reconcile_all_on(trigger.stream())
    .reconcile_on(scope.pool_wakes.stream())
    .graceful_shutdown_on(stopped)
    .run(
        pool_controller::reconcile,
        pool_controller::error_policy,
        ctx.clone(),
    )
    .for_each(|_| async {})
}

/// The route controller of one scope, on the same shared streams.
fn route_controller(
    scope: &ScopeWiring,
    config: ControllerConfig,
    ctx: &Arc<Context>,
    stopped: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let trigger = &scope.route_trigger;
    let feeds = &scope.feeds;
    Controller::for_stream(
        feeds.routes.subscribe(trigger.clone()),
        scope.route_store.clone(),
    )
    .with_config(config)
    .owns_stream(feeds.services.subscribe(trigger.clone()))
    .owns_stream(feeds.slices.subscribe(trigger.clone()))
    .reconcile_all_on(trigger.stream())
    .reconcile_on(scope.route_wakes.stream())
    .graceful_shutdown_on(stopped)
    .run(
        route_controller::reconcile,
        route_controller::error_policy,
        ctx.clone(),
    )
    .for_each(|_| async {})
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

/// Drops what no reader reads from any kind's object (`slim`).
fn slim_meta<K: Resource>(object: &mut K) {
    slim::slim_metadata(object.meta_mut());
}

/// Runs a reflector for `api` in `tasks` and returns its store: `trim`
/// shapes every object before it is stored, and `on_event` sees every event
/// after the store applied it.
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
