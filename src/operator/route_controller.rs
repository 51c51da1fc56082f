//! The DomainRoute controller: compiles the namespace's route table from the
//! routes and the pools' reputation, writes the route's status, and keeps the
//! route Service and its EndpointSlices listing the ready pods of the IPs the
//! route may use. It never writes a spec.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::build::events::{problem_events, route_event};
use super::build::plan::{plan_route, OwnedKind, OwnedObject, PruneTarget};
use super::build::route_service::SenderPod;
use super::build::validate::{set_accepted, ObjectProblem, ACCEPTED};
use super::build::{namespace_of, POOL_LABEL};
use super::context::Context;
use super::error::{OperatorError, Result};
use super::status_write::{self, Attempt};
use crate::api::conditions::set_condition;
use crate::api::{ConditionStatus, DomainRoute, DomainRouteStatus, RouteMode};
use crate::routing::model::mode_name;
use crate::routing::{status_for, ObjectKey, RouteResult};

pub const CONTROLLER: &str = "domainroute";
/// A route that is fine is looked at again this often even without a change.
const RESYNC: Duration = Duration::from_secs(600);
/// A route that cannot work is looked at again this often (no crash loop).
const INVALID_RETRY: Duration = Duration::from_secs(300);

pub async fn reconcile(route: Arc<DomainRoute>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let span = tracing::info_span!("reconcile", controller = CONTROLLER, route = %key(&route));
    let result = tracing::Instrument::instrument(reconcile_route(&route, &ctx), span).await;
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    // Deleted while this pass ran: forget what the pass remembered.
    if ctx
        .stores
        .routes
        .get(&namespace_of(&route.metadata), &route.name_any())
        .is_none()
    {
        ctx.forget_route(&key(&route));
    }
    result
}

pub fn error_policy(route: Arc<DomainRoute>, error: &OperatorError, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(CONTROLLER, error.category());
    tracing::warn!(route = %key(&route), category = error.category(), error = %error, "reconcile failed");
    Action::requeue(retry_after(error))
}

/// How soon a failed reconcile runs again, by what failed.
pub fn retry_after(error: &OperatorError) -> Duration {
    match error.category() {
        "conflict" => Duration::from_secs(1),
        "kube" | "not_ready" => Duration::from_secs(5),
        _ => INVALID_RETRY,
    }
}

fn key(route: &DomainRoute) -> String {
    format!("{}/{}", namespace_of(&route.metadata), route.name_any())
}

async fn reconcile_route(route: &Arc<DomainRoute>, ctx: &Arc<Context>) -> Result<Action> {
    let ns = namespace_of(&route.metadata);
    let name = route.name_any();
    let route_key = ObjectKey::new(ns.clone(), name.clone());
    if route.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the Service and slices.
        ctx.forget_route(&route_key.to_string());
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let pools = ctx.stores.pools.all();
    let mut routes: Vec<Arc<DomainRoute>> = ctx
        .stores
        .routes
        .in_namespace(&ns)
        .into_iter()
        .filter(|r| r.name_any() != name)
        .collect();
    routes.push(route.clone());
    let snapshot = ctx.snapshots.get(&ns, &pools, &routes, now).await?;
    let problems = snapshot.validation.problems_of_route(&route_key).to_vec();
    let result = if snapshot.validation.route_usable(&route_key) {
        snapshot.table.route(&ns, &name).cloned()
    } else {
        None
    };
    // What this reconcile depends on besides its own object: when nothing
    // moved since the last complete pass, there is nothing to do.
    let pods_epoch = ctx.epochs.pods();
    let inputs = {
        let mut h = DefaultHasher::new();
        (&result, &problems).hash(&mut h);
        h.finish()
    };
    let seen = |rv: Option<String>| {
        let mut h = DefaultHasher::new();
        (inputs, pods_epoch, rv).hash(&mut h);
        h.finish()
    };
    let memo_key = format!("DomainRoute/{route_key}");
    let requeue = if problems.is_empty() {
        RESYNC
    } else {
        INVALID_RETRY
    };
    if ctx.unchanged(&memo_key, seen(route.resource_version())) {
        return Ok(Action::requeue(requeue));
    }
    let Some(result) = result else {
        let written = write_status(ctx, route, None, &problems, now).await?;
        let rv_after = written.or_else(|| route.resource_version());
        ctx.remember(&memo_key, seen(rv_after));
        tracing::warn!(problems = ?problems, "the route cannot be served until it is fixed");
        return Ok(Action::requeue(INVALID_RETRY));
    };

    let owned = owned_route_objects(ctx, &ns);
    let pods = sender_pods(ctx, &ns, &result);
    let plan =
        plan_route(route, Some(&result), &pods, &owned).map_err(|e| OperatorError::Build {
            what: format!("the Service of DomainRoute {route_key}"),
            message: e.to_string(),
        })?;
    if let Some(plan) = plan {
        let service_name = plan.service.name_any();
        ctx.writer
            .apply(
                &plan.service,
                ctx.stores.services.get(&ns, &service_name).as_deref(),
            )
            .await?;
        for slice in &plan.slices {
            ctx.writer
                .apply(
                    slice,
                    ctx.stores.slices.get(&ns, &slice.name_any()).as_deref(),
                )
                .await?;
        }
        prune(ctx, &ns, &plan.prune).await?;
    }
    ctx.metrics.set_route_targets(
        &route_key.to_string(),
        mode_name(result.mode),
        result.targets.len(),
    );
    let before = lock(&ctx.last_routes).insert(route_key.to_string(), result.clone());
    if let Some(record) = route_event(before.as_ref(), &result) {
        ctx.publish(&route.object_ref(&()), &[record]).await;
    }
    // Status last: it claims only what the Service and slices now carry.
    let written = write_status(ctx, route, Some(&result), &problems, now).await?;
    let rv_after = written.or_else(|| route.resource_version());
    ctx.remember(&memo_key, seen(rv_after));
    Ok(Action::requeue(requeue))
}

/// The Services and EndpointSlices of a namespace the operator manages.
fn owned_route_objects(ctx: &Context, ns: &str) -> Vec<OwnedObject> {
    let services = ctx
        .stores
        .services
        .in_namespace(ns)
        .into_iter()
        .map(|s| OwnedObject {
            kind: OwnedKind::Service,
            name: s.name_any(),
            labels: s.labels().clone(),
        });
    let slices = ctx
        .stores
        .slices
        .in_namespace(ns)
        .into_iter()
        .map(|s| OwnedObject {
            kind: OwnedKind::EndpointSlice,
            name: s.name_any(),
            labels: s.labels().clone(),
        });
    services.chain(slices).collect()
}

/// Deletes what a plan no longer wants.
pub async fn prune(ctx: &Context, ns: &str, targets: &[PruneTarget]) -> Result<()> {
    for target in targets {
        tracing::info!(kind = ?target.kind, name = %target.name, "pruning");
        match target.kind {
            OwnedKind::Deployment => ctx.writer.delete::<Deployment>(ns, &target.name).await?,
            OwnedKind::ConfigMap => ctx.writer.delete::<ConfigMap>(ns, &target.name).await?,
            OwnedKind::Service => ctx.writer.delete::<Service>(ns, &target.name).await?,
            OwnedKind::EndpointSlice => {
                ctx.writer.delete::<EndpointSlice>(ns, &target.name).await?
            }
        }
    }
    Ok(())
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sender pods of the pools `result` targets, as the route builder reads
/// them.
pub fn sender_pods(ctx: &Context, namespace: &str, result: &RouteResult) -> Vec<SenderPod> {
    // Only the pods of the route's target pools can be its endpoints: at
    // 20,000 pods, converting every pod of the namespace for each of 1,000
    // routes was most of a convergence.
    let pools: std::collections::BTreeSet<&str> =
        result.targets.iter().map(|t| t.pool.as_str()).collect();
    ctx.stores
        .pods
        .in_namespace(namespace)
        .iter()
        .filter(|pod| {
            pod.labels()
                .get(POOL_LABEL)
                .is_some_and(|pool| pools.contains(pool.as_str()))
        })
        .map(|pod| SenderPod::from_pod(pod))
        .collect()
}

/// The status of `route`: the compiled targets (when the route is usable)
/// plus the conditions Accepted (the spec can work with the fleet), Ready
/// (mail flows, possibly through a fallback) and Degraded (a fallback carries
/// the route, or it defers).
pub fn route_status(
    route: &DomainRoute,
    result: Option<&RouteResult>,
    problems: &[ObjectProblem],
    now: Timestamp,
) -> DomainRouteStatus {
    let generation = route.metadata.generation;
    let mut status = match result {
        Some(result) => status_for(result, route.status.as_ref(), now),
        None => route.status.clone().unwrap_or_default(),
    };
    status.observed_generation = generation;
    set_accepted(&mut status.conditions, problems, generation, now);
    let Some(result) = result else {
        set_condition(
            &mut status.conditions,
            "Ready",
            ConditionStatus::False,
            problems.first().map_or("InvalidSpec", |p| p.reason),
            "the route is not served until its spec is fixed (see the Accepted condition)",
            generation,
            now,
        );
        return status;
    };
    let mode = mode_name(result.mode);
    let (ready, ready_reason, ready_message) = match result.mode {
        RouteMode::Defer => (
            false,
            "Deferred",
            "no IP, fallback pool or relay can carry this route: mail waits in the senders' queues"
                .to_string(),
        ),
        RouteMode::Primary => (
            true,
            "Primary",
            format!(
                "{} IPs of pool {} carry the route",
                result.targets.len(),
                result.pool
            ),
        ),
        RouteMode::FallbackPool => (
            true,
            "FallbackPool",
            format!(
                "fallback pool {} carries the route",
                result.serving_pool.as_deref().unwrap_or("?")
            ),
        ),
        RouteMode::Relay => (
            true,
            "Relay",
            format!(
                "relay {} carries the route",
                result
                    .relay
                    .as_ref()
                    .map(|r| r.address())
                    .unwrap_or_default()
            ),
        ),
    };
    set_condition(
        &mut status.conditions,
        "Ready",
        ready.into(),
        ready_reason,
        ready_message,
        generation,
        now,
    );
    let degraded = result.mode != RouteMode::Primary;
    set_condition(
        &mut status.conditions,
        "Degraded",
        degraded.into(),
        mode,
        if degraded {
            format!(
                "pool {} has no IP that may send to {}: mode {mode}",
                result.pool, result.provider
            )
        } else {
            format!("pool {} carries the route", result.pool)
        },
        generation,
        now,
    );
    status
}

async fn write_status(
    ctx: &Context,
    route: &Arc<DomainRoute>,
    result: Option<&RouteResult>,
    problems: &[ObjectProblem],
    now: Timestamp,
) -> Result<Option<String>> {
    let key = ObjectKey::new(namespace_of(&route.metadata), route.name_any());
    let compute = |current: Arc<DomainRoute>| {
        let before = current.status.clone().unwrap_or_default();
        let status = route_status(&current, result, problems, now);
        let attempt = status_write::encode("DomainRoute", &key, &before).and_then(|old| {
            Ok(Attempt::Write {
                old,
                new: status_write::encode("DomainRoute", &key, &status)?,
                then: (before, status),
            })
        });
        std::future::ready(attempt)
    };
    let written = status_write::write_status(ctx, &key, Some(route.clone()), compute).await?;
    let (before, status) = &written.result;
    let Some(stored) = &written.written else {
        return Ok(None);
    };
    tracing::info!(
        mode = status.mode.map(mode_name),
        targets = status.target_count,
        excluded = status.excluded_count,
        "route status written"
    );
    if accepted_message(before) != accepted_message(status) && !problems.is_empty() {
        let records = problem_events("DomainRoute", &key, problems);
        ctx.publish(&written.object.object_ref(&()), &records).await;
    }
    Ok(stored.resource_version())
}

fn accepted_message(status: &DomainRouteStatus) -> Option<(ConditionStatus, String)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == ACCEPTED)
        .map(|c| (c.status, c.message.clone()))
}
