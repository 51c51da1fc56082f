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
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::build::{IP_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, POOL_LABEL};
use super::context::{ClusterStores, Context, Settings};
use super::feedback::OperatorFeedback;
use super::leader::{LeaderError, Leadership, GRACE_SECONDS, LEASE_SECONDS};
use super::metrics::Metrics;
use super::stores::Stores;
use super::triggers::{ChangeFilter, Epochs, Trigger};
use super::{pool_controller, probes, route_controller};
use crate::api::{DomainRoute, SenderPool};
use crate::serve::{self, LogLevelHandle, Observability};

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
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Leader(#[from] LeaderError),
    #[error("the HTTP port failed: {0}")]
    Http(#[source] std::io::Error),
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
    fn metrics(&self) -> String {
        self.0.render_metrics()
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
    for scope in &scopes {
        let pool_trigger = Trigger::new();
        let route_trigger = Trigger::new();
        // A pool's reputation or spec changes every route and every sender
        // config of its namespace; a route's spec changes every sender config;
        // a pod changes the endpoints of the routes.
        let mut pool_changes = ChangeFilter::default();
        let to_routes = route_trigger.clone();
        let pool_metrics = metrics.clone();
        pools.push(reflect(
            &mut reflectors,
            api::<SenderPool>(&client, scope),
            watcher::Config::default(),
            move |event| {
                if let watcher::Event::Delete(pool) = event {
                    pool_metrics.forget_pool(&object_key(pool));
                }
                // The routes re-compile; the pools follow when the compiled
                // table moves (SnapshotCache::notify).
                if pool_changes.pool_event(event) {
                    to_routes.fire();
                }
            },
        ));
        let mut route_changes = ChangeFilter::default();
        let to_pools = pool_trigger.clone();
        let route_metrics = metrics.clone();
        routes.push(reflect(
            &mut reflectors,
            api::<DomainRoute>(&client, scope),
            watcher::Config::default(),
            move |event| {
                if let watcher::Event::Delete(route) = event {
                    route_metrics.forget_route(&object_key(route));
                }
                if route_changes.route_event(event) {
                    to_pools.fire();
                }
            },
        ));
        let mut pod_changes = ChangeFilter::default();
        let to_routes = route_trigger.clone();
        let pod_epochs = epochs.clone();
        pods.push(reflect(
            &mut reflectors,
            api::<Pod>(&client, scope),
            watcher::Config::default().labels(&format!("{POOL_LABEL},{IP_LABEL}")),
            move |event| {
                if pod_changes.pod_event(event) {
                    pod_epochs.bump_pods();
                    match event {
                        watcher::Event::Apply(pod) | watcher::Event::Delete(pod) => {
                            pod_epochs.bump_owner(pod)
                        }
                        _ => {}
                    }
                    to_routes.fire();
                }
            },
        ));
        let owned = watcher::Config::default().labels(&managed);
        let deployment_epochs = epochs.clone();
        deployments.push(reflect(
            &mut reflectors,
            api::<Deployment>(&client, scope),
            owned.clone(),
            move |event| match event {
                watcher::Event::Apply(d) | watcher::Event::Delete(d) => {
                    deployment_epochs.bump_owner(d)
                }
                _ => {}
            },
        ));
        // A ConfigMap is compared by its config-version annotation: its data
        // (the largest objects by far) is not kept. A deleted one wakes the pools.
        let to_pools = pool_trigger.clone();
        config_maps.push(reflect_with(
            &mut reflectors,
            api::<ConfigMap>(&client, scope),
            owned.clone(),
            |cm: &mut ConfigMap| {
                cm.managed_fields_mut().clear();
                cm.data = None;
                cm.binary_data = None;
            },
            move |event| {
                if matches!(event, watcher::Event::Delete(_)) {
                    to_pools.fire();
                }
            },
        ));
        services.push(reflect(
            &mut reflectors,
            api::<Service>(&client, scope),
            owned.clone(),
            |_| {},
        ));
        slices.push(reflect(
            &mut reflectors,
            api::<EndpointSlice>(&client, scope),
            owned,
            |_| {},
        ));
        wiring.push((scope.clone(), pool_trigger, route_trigger));
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
    for (_, pool_trigger, _) in &wiring {
        ctx.snapshots.notify(pool_trigger.clone());
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(supervise(
        client,
        options,
        ctx.clone(),
        listener,
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

type Wiring = Vec<(Option<String>, Trigger, Trigger)>;

#[allow(clippy::too_many_arguments)]
async fn supervise(
    client: Client,
    options: OperatorOptions,
    ctx: Arc<Context>,
    listener: TcpListener,
    log_level: Option<LogLevelHandle>,
    mut reflectors: JoinSet<()>,
    wiring: Wiring,
    stopped: oneshot::Receiver<()>,
) -> Result<(), RunError> {
    let (http_stop, http_stopped) = oneshot::channel::<()>();
    let http = tokio::spawn(serve::serve(
        listener,
        Arc::new(OperatorFeedback::new(ctx.clone())),
        Arc::new(Obs(ctx.clone())),
        log_level,
        http_stopped.map(|_| ()),
    ));
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
    let mut controllers = JoinSet::new();
    let mut stops = Vec::new();
    for (scope, pool_trigger, route_trigger) in wiring {
        let (stop_pools, pools_stopped) = oneshot::channel::<()>();
        let (stop_routes, routes_stopped) = oneshot::channel::<()>();
        stops.push(stop_pools);
        stops.push(stop_routes);
        let config = ControllerConfig::default().concurrency(options.concurrency);
        let pool_controller = Controller::new(
            api::<SenderPool>(client, &scope),
            watcher::Config::default(),
        )
        .with_config(config.clone())
        .owns(
            api::<Deployment>(client, &scope),
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")),
        )
        .watches(
            api::<Pod>(client, &scope),
            watcher::Config::default().labels(&format!("{POOL_LABEL},{IP_LABEL}")),
            |pod: Pod| {
                let pool = pod.labels().get(POOL_LABEL)?.clone();
                Some(reflector::ObjectRef::new(&pool).within(&pod.namespace()?))
            },
        )
        .reconcile_all_on(pool_trigger.stream())
        .graceful_shutdown_on(pools_stopped.map(|_| ()))
        .run(
            pool_controller::reconcile,
            pool_controller::error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});
        controllers.spawn(pool_controller.map(|_| "SenderPool"));
        let route_controller = Controller::new(
            api::<DomainRoute>(client, &scope),
            watcher::Config::default(),
        )
        .with_config(config)
        .owns(
            api::<Service>(client, &scope),
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")),
        )
        .owns(
            api::<EndpointSlice>(client, &scope),
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")),
        )
        .reconcile_all_on(route_trigger.stream())
        .graceful_shutdown_on(routes_stopped.map(|_| ()))
        .run(
            route_controller::reconcile,
            route_controller::error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});
        controllers.spawn(route_controller.map(|_| "DomainRoute"));
    }
    let (stop_probes, probes_stopped) = oneshot::channel::<()>();
    stops.push(stop_probes);
    let probe_task = tokio::spawn(probes::run(ctx.clone(), probes_stopped.map(|_| ())));
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
    if let (Ok(()), Some(leadership)) = (&outcome, leadership) {
        leadership.release().await;
    }
    outcome
}

fn object_key<K: Resource>(object: &K) -> String {
    format!(
        "{}/{}",
        object.meta().namespace.as_deref().unwrap_or("default"),
        object.meta().name.as_deref().unwrap_or("")
    )
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
    // Managed fields are never read and are a good share of each object.
    reflect_with(
        tasks,
        api,
        config,
        |o: &mut K| o.managed_fields_mut().clear(),
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
