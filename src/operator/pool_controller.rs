//! The SenderPool controller: observe (the pool, its Deployments and
//! ConfigMaps, its pods, the namespace's routes) → plan (the pure builders) →
//! server-side apply → prune what is no longer wanted → status → events.
//!
//! The reputation in the pool's status is the engine's persisted state: the
//! reconcile advances its timers (`engine::tick`) and writes it back, and asks
//! to run again when the next timer is due (`engine::next_wakeup`). It never
//! writes the spec.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;

use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::build::configmap::build_config_map;
use super::build::deployment::AgentSidecar;
use super::build::events::{
    problem_events, transition_events, unreadable_status_event, EventRecord, EventType,
};
use super::build::plan::{plan_pool, OwnedKind, OwnedObject, PoolPlanInput};
use super::build::pool_status::{pool_status, IpWorkload};
use super::build::reputation_memory::{
    memory_config_map, memory_name, read_memory, remembered, restore,
};
use super::build::route_service::SenderPod;
use super::build::validate::{set_accepted, ObjectProblem, ACCEPTED};
use super::build::{namespace_of, IP_LABEL, POOL_LABEL};
use super::context::Context;
use super::error::{OperatorError, Result};
use super::route_controller::{prune, retry_after};
use super::sender_checks;
use super::snapshot::Snapshot;
use super::status_write::{self, Attempt};
use crate::api::unreadable::UnreadableStatus;
use crate::api::{ConditionStatus, SenderPool, SenderPoolStatus};
use crate::reputation::engine::{self, Transition};
use crate::routing::classifier_files::{declared_providers_yaml, with_classifier};
use crate::routing::postfix::{ip_slug, PostfixOptions};
use crate::routing::ObjectKey;

pub const CONTROLLER: &str = "senderpool";
/// Without a timer due, a pool is looked at again this often.
const RESYNC: Duration = Duration::from_secs(600);
/// A pool that cannot work is looked at again this often (no crash loop).
const INVALID_RETRY: Duration = Duration::from_secs(300);
/// The soonest a timer-driven reconcile runs again.
const MIN_WAKEUP: Duration = Duration::from_secs(1);

pub async fn reconcile(pool: Arc<SenderPool>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let span = tracing::info_span!("reconcile", controller = CONTROLLER, pool = %key(&pool));
    let result = tracing::Instrument::instrument(reconcile_pool(&pool, &ctx), span).await;
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    // Deleted while this pass ran: the delete event came before the pass
    // wrote its memo and metrics, so forget them here.
    let pool_key = key(&pool);
    if ctx
        .stores
        .pools
        .get(&pool_key.namespace, &pool_key.name)
        .is_none()
    {
        ctx.forget_pool(&pool_key.to_string());
    }
    result
}

pub fn error_policy(pool: Arc<SenderPool>, error: &OperatorError, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(CONTROLLER, error.category());
    tracing::warn!(pool = %key(&pool), category = error.category(), error = %error, "reconcile failed");
    Action::requeue(retry_after(error))
}

fn key(pool: &SenderPool) -> ObjectKey {
    ObjectKey::new(namespace_of(&pool.metadata), pool.name_any())
}

async fn reconcile_pool(pool: &Arc<SenderPool>, ctx: &Arc<Context>) -> Result<Action> {
    let pool_key = key(pool);
    if pool.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the workloads.
        ctx.forget_pool(&pool_key.to_string());
        return Ok(Action::await_change());
    }
    let ns = pool_key.namespace.clone();
    let name = pool_key.name.clone();
    let now = Timestamp::now();
    let mut pools: Vec<Arc<SenderPool>> = ctx
        .stores
        .pools
        .all()
        .into_iter()
        .filter(|p| key(p) != pool_key)
        .collect();
    pools.push(pool.clone());
    let routes = ctx.stores.routes.in_namespace(&ns);
    let snapshot = ctx.snapshots.get(&ns, &pools, &routes, now).await?;
    let problems = snapshot.validation.problems_of_pool(&pool_key).to_vec();
    let usable = snapshot.validation.pool_usable(&pool_key);

    // What this reconcile depends on besides its own object: when nothing
    // moved since the last complete pass and no timer is due, there is
    // nothing to do (after a block, 199 of 200 pools plan nothing new).
    let view = pool_view(&snapshot, &pool_key);
    let epoch = ctx.epochs.pool(&pool_key.to_string());
    let seen = |own: u64| {
        let mut h = DefaultHasher::new();
        (view, epoch, usable, own).hash(&mut h);
        h.finish()
    };
    let memo_key = format!("SenderPool/{pool_key}");
    let status = pool.status.clone().unwrap_or_default();
    let wakeup = engine::next_wakeup(&pool.spec, &status, now);
    if wakeup.is_none_or(|at| at > now)
        && status.unreadable.is_none()
        && ctx.unchanged(&memo_key, seen(planning_key(pool)))
    {
        return Ok(requeue_at(wakeup, usable, &status, now));
    }

    let lock = ctx.status_lock(&ns, &name);
    let _turn = lock.lock().await;
    let compute = |current: Arc<SenderPool>| {
        let (snapshot, problems, pool_key) = (&snapshot, &problems, &pool_key);
        async move {
            let outcome = if usable {
                manage(ctx, &current, snapshot, problems, now).await?
            } else {
                Outcome::unusable(&current, problems, now)
            };
            // A status read only in part is compared with what is stored, so
            // the write replaces exactly the parts that could not be read.
            let unreadable = current
                .status
                .as_ref()
                .and_then(|s| s.unreadable.as_deref())
                .cloned();
            let old = match &unreadable {
                Some(unreadable) => unreadable.raw.clone(),
                None => encode(pool_key, current.status.clone().unwrap_or_default())?,
            };
            let new = encode(pool_key, outcome.status.clone())?;
            record_states(ctx, pool_key, &outcome.status);
            Ok::<_, OperatorError>(Attempt::Write {
                old: old.clone(),
                new: new.clone(),
                then: (outcome, unreadable, old, new),
            })
        }
    };
    // A conflict means the feedback receiver (or a person) wrote first: the
    // pass starts again from what is stored, so no reputation change is lost.
    let written = status_write::write_status(ctx, &pool_key, Some(pool.clone()), compute).await?;
    let (outcome, unreadable, old, new) = written.result;
    let current = written.object;
    if written.written.is_some() {
        tracing::info!(
            blocked_pairs = outcome.status.blocked_pairs,
            ready_ips = outcome.status.ready_ips,
            "pool status written"
        );
        announce(ctx, &current, &problems, &outcome, &old, &new).await;
    }
    if let Some(unreadable) = &unreadable {
        report_repair(ctx, &current, unreadable).await;
    }
    let after = written.written.as_ref().unwrap_or(current.as_ref());
    ctx.remember(&memo_key, seen(planning_key(after)));
    Ok(next_action(&outcome, usable, now))
}

/// What one pass decided: the status to write and the transitions behind it.
struct Outcome {
    status: SenderPoolStatus,
    transitions: Vec<Transition>,
    /// The spec the engine followed (the pool without the IPs it lost).
    spec_pool: SenderPool,
    /// What the operator checked of the senders' other inputs.
    checks: Vec<sender_checks::Check>,
}

impl Outcome {
    /// An unusable pool keeps its reputation and workloads as they are; only
    /// its conditions say what is wrong.
    fn unusable(pool: &SenderPool, problems: &[ObjectProblem], now: Timestamp) -> Outcome {
        let mut status = pool_status(pool, &[], problems, true, now);
        set_accepted(
            &mut status.conditions,
            problems,
            pool.metadata.generation,
            now,
        );
        Outcome {
            status,
            transitions: Vec::new(),
            spec_pool: pool.clone(),
            checks: Vec::new(),
        }
    }
}

/// Advances the engine, applies the planned Deployments and ConfigMaps,
/// prunes the rest, and returns the status to write.
async fn manage(
    ctx: &Context,
    pool: &SenderPool,
    snapshot: &Snapshot,
    problems: &[ObjectProblem],
    now: Timestamp,
) -> Result<Outcome> {
    let pool_key = key(pool);
    let ns = pool_key.namespace.as_str();
    let mut spec_pool = pool.clone();
    if let Some(lost) = snapshot.validation.lost_ips.get(&pool_key) {
        spec_pool.spec.ips.retain(|ip| !lost.contains(&ip.address));
    }
    let known_providers = &snapshot.fleet.known_providers;
    let mut status = spec_pool.status.clone().unwrap_or_default();
    let memory_name = memory_name(&pool_key.name);
    let memory = ctx.stores.config_maps.get(ns, &memory_name);
    recall(
        ctx,
        &spec_pool,
        memory.as_deref(),
        &mut status,
        known_providers,
    )
    .await;
    let transitions =
        engine::tick(&spec_pool.spec, &mut status, known_providers, now).map_err(|source| {
            crate::fleet::FleetError::Engine {
                pool: pool_key.to_string(),
                source,
            }
        })?;
    spec_pool.status = Some(status);

    let agent = ctx.settings.agent_image.as_ref().map(|image| AgentSidecar {
        sender_image: ctx.settings.sender_image.clone(),
        relay_secrets: relay_secrets(&snapshot.fleet.routes, ns),
        feedback_ca: ctx.settings.feedback_ca.clone(),
        ..AgentSidecar::new(image.clone(), ctx.settings.feedback_url.clone())
    });
    let known_domains = snapshot.fleet.known_domains();
    let postfix = PostfixOptions::default();
    let input = PoolPlanInput {
        table: &snapshot.table,
        known_domains: &known_domains,
        known_providers,
        postfix: &postfix,
        agent: agent.as_ref(),
    };
    let owned = owned_pool_objects(ctx, ns);
    let mut plan = plan_pool(&spec_pool, &input, &owned).map_err(|e| OperatorError::Build {
        what: format!("the workloads of SenderPool {pool_key}"),
        message: e.to_string(),
    })?;
    let mut checks: Vec<sender_checks::Check> =
        classifier_into_plan(ctx, &spec_pool, &snapshot.fleet.routes, &mut plan)
            .await
            .map_err(|e| OperatorError::Build {
                what: format!("the sender configurations of SenderPool {pool_key}"),
                message: e.to_string(),
            })?
            .into_iter()
            .collect();
    checks.extend(sender_checks::check_relay_secrets(ctx, ns, &snapshot.fleet.routes).await);
    for config_map in &plan.config_maps {
        let existing = ctx.stores.config_maps.get(ns, &config_map.name_any());
        // The store keeps no data: the config-version annotation (a digest
        // of the data) stands for it.
        ctx.writer
            .apply_unless(config_map, existing.as_deref(), |v| {
                if let Some(o) = v.as_object_mut() {
                    o.remove("data");
                    o.remove("binaryData");
                }
            })
            .await?;
    }
    for deployment in &plan.deployments {
        let existing = ctx.stores.deployments.get(ns, &deployment.name_any());
        ctx.writer.apply(deployment, existing.as_deref()).await?;
    }
    if let Some(service) = &plan.service {
        let existing = ctx.stores.services.get(ns, &service.name_any());
        ctx.writer.apply(service, existing.as_deref()).await?;
    }
    prune(ctx, ns, &plan.prune).await?;

    let ready = ready_pods(ctx, ns, &pool_key.name);
    let workloads: Vec<IpWorkload> = plan
        .ips
        .iter()
        .map(|ip| {
            let deployment = ctx.stores.deployments.get(ns, &ip.deployment);
            let slug = ip.address.trim().parse().map(ip_slug).unwrap_or_default();
            IpWorkload {
                address: ip.address.clone(),
                desired_replicas: ip.desired_replicas,
                ready_replicas: ready.get(&slug).copied().unwrap_or(0),
                rolled_out: rolled_out(deployment.as_deref(), ip.desired_replicas),
            }
        })
        .collect();
    let mut status = pool_status(&spec_pool, &workloads, problems, false, now);
    set_accepted(
        &mut status.conditions,
        problems,
        spec_pool.metadata.generation,
        now,
    );
    for check in &checks {
        check.set(&mut status.conditions, spec_pool.metadata.generation, now);
    }
    // The IPs' reputation outside the pool, for a pool deleted and created
    // again or restored without its status. A failed write is reported and
    // tried again next time: it must not keep the status from being written.
    let memory_now = remembered(&status);
    if memory_now.left_out > 0 {
        tracing::warn!(pool = %pool_key, left_out = memory_now.left_out,
            "the reputation memory is full: the least severe pairs are not kept outside the pool");
    }
    if let Some(config_map) = memory_config_map(&spec_pool, &memory_now.ips, memory.is_some()) {
        if let Err(e) = ctx.writer.apply(&config_map, memory.as_deref()).await {
            tracing::warn!(pool = %pool_key, error = %e,
                "cannot write the reputation memory {memory_name}; the status is written all the same");
        }
    }
    Ok(Outcome {
        status,
        transitions,
        spec_pool,
        checks,
    })
}

/// Adds the classifier files (the namespace's declared providers and the
/// pool's rules) to every sender configuration of `plan`; returns the check
/// of the rules ConfigMap, if the pool names one.
async fn classifier_into_plan(
    ctx: &Context,
    pool: &SenderPool,
    routes: &[crate::api::DomainRoute],
    plan: &mut super::build::plan::PoolPlan,
) -> std::result::Result<Option<sender_checks::Check>, super::build::BuildError> {
    let pool_key = key(pool);
    let providers = declared_providers_yaml(routes);
    let (rules, check) = sender_checks::resolve_rules(
        ctx,
        pool,
        &pool_key.to_string(),
        &pool_key.namespace,
        &providers,
        plan.ips.first().map(|ip| ip.config_map.as_str()),
    )
    .await;
    for (ip_plan, config_map) in plan.ips.iter_mut().zip(plan.config_maps.iter_mut()) {
        ip_plan.config = with_classifier(ip_plan.config.clone(), &providers, rules.as_deref());
        if let Some(ip) = pool.spec.ips.iter().find(|i| i.address == ip_plan.address) {
            *config_map = build_config_map(pool, ip, &ip_plan.config)?;
        }
    }
    Ok(check)
}

/// Puts back the remembered pairs the status lacks (see
/// `build::reputation_memory`), and says so on the pool.
async fn recall(
    ctx: &Context,
    pool: &SenderPool,
    memory: Option<&ConfigMap>,
    status: &mut SenderPoolStatus,
    known_providers: &[String],
) {
    let Some(memory) = memory else { return };
    let pool_key = key(pool);
    let remembered = match read_memory(memory) {
        Ok(remembered) => remembered,
        Err(why) => {
            tracing::warn!(pool = %pool_key, error = %why, "the reputation memory cannot be read; it is rewritten from the status");
            return;
        }
    };
    let restored = restore(status, pool, &remembered, known_providers);
    if restored == 0 {
        return;
    }
    tracing::info!(pool = %pool_key, pairs = restored, "reputation restored from the IPs' memory");
    let record = EventRecord {
        kind: "SenderPool",
        regarding: pool_key.clone(),
        type_: EventType::Normal,
        reason: "ReputationRestored".into(),
        action: "Reputation",
        note: format!(
            "{restored} (IP, provider) pair(s) were restored with their state, timers and block counts from ConfigMap {} (the status had lost them: the pool was re-created or restored without its status)",
            memory_name(&pool_key.name)
        ),
    };
    ctx.publish(&pool.object_ref(&()), &[record]).await;
}

/// A digest of what the pool's sender configs and status read from the
/// namespace's compiled routes: every route's matcher, mode and fallbacks,
/// and the entries of this pool's own IPs (not the other pools' targets).
/// The pool as a pass reads it, without what every feedback batch writes:
/// the windows of counts (buckets age out, but that never moves a pair on a
/// tick, `engine::next_wakeup`) and the ledger of counted sequences. Keyed
/// on the resourceVersion instead, every batch of reports planned the pool
/// again, rendering each IP's sender config from the whole route table.
fn planning_key(pool: &SenderPool) -> u64 {
    let mut own = pool.clone();
    own.metadata.resource_version = None;
    own.metadata.managed_fields = None;
    if let Some(status) = own.status.as_mut() {
        status.feedback_ledger = None;
        for pair in status
            .ips
            .iter_mut()
            .flat_map(|ip| ip.reputation.iter_mut())
        {
            pair.window.clear();
        }
    }
    let mut h = DefaultHasher::new();
    serde_json::to_string(&own).unwrap_or_default().hash(&mut h);
    h.finish()
}

fn pool_view(snapshot: &Snapshot, pool: &ObjectKey) -> u64 {
    let mut h = DefaultHasher::new();
    for r in &snapshot.table.routes {
        (
            &r.key,
            &r.provider,
            &r.matcher,
            &r.learned_domains,
            &r.pool,
            r.when_no_healthy_ip,
            r.mode,
            r.fallback_index,
            &r.serving_pool,
            r.throttle_per_hour,
            &r.relay,
        )
            .hash(&mut h);
        for t in r.targets.iter().filter(|t| t.pool == pool.name) {
            t.hash(&mut h);
        }
        for e in r.excluded.iter().filter(|e| e.pool == pool.name) {
            e.hash(&mut h);
        }
    }
    snapshot.validation.problems_of_pool(pool).hash(&mut h);
    snapshot.validation.lost_ips.get(pool).hash(&mut h);
    snapshot.fleet.known_providers.hash(&mut h);
    h.finish()
}

/// The relay Secrets the namespace's routes name, for the sender containers.
fn relay_secrets(routes: &[crate::api::DomainRoute], ns: &str) -> Vec<String> {
    let mut names: Vec<String> = routes
        .iter()
        .filter(|r| r.metadata.namespace.as_deref() == Some(ns))
        .flat_map(|r| r.spec.fallback.iter())
        .filter_map(|f| f.relay.as_ref())
        .filter_map(|relay| relay.credentials_secret.as_ref().map(|s| s.name.clone()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The Deployments and ConfigMaps of a namespace the operator manages.
fn owned_pool_objects(ctx: &Context, ns: &str) -> Vec<OwnedObject> {
    let deployments = ctx
        .stores
        .deployments
        .in_namespace(ns)
        .into_iter()
        .map(|d| OwnedObject {
            kind: OwnedKind::Deployment,
            name: d.name_any(),
            labels: d.labels().clone(),
        });
    let config_maps = ctx
        .stores
        .config_maps
        .in_namespace(ns)
        .into_iter()
        .map(|c| OwnedObject {
            kind: OwnedKind::ConfigMap,
            name: c.name_any(),
            labels: c.labels().clone(),
        });
    deployments.chain(config_maps).collect()
}

/// Ready sender pods of a pool, per IP slug.
fn ready_pods(ctx: &Context, ns: &str, pool: &str) -> BTreeMap<String, i32> {
    let mut out = BTreeMap::new();
    for pod in ctx.stores.pods.in_namespace(ns) {
        let sender = SenderPod::from_pod(&pod);
        if !sender.ready || sender.labels.get(POOL_LABEL).map(String::as_str) != Some(pool) {
            continue;
        }
        if let Some(slug) = sender.labels.get(IP_LABEL) {
            *out.entry(slug.clone()).or_insert(0) += 1;
        }
    }
    out
}

/// Whether a Deployment runs its current template with the desired replicas.
fn rolled_out(deployment: Option<&Deployment>, desired: i32) -> bool {
    let Some(d) = deployment else { return false };
    let Some(status) = d.status.as_ref() else {
        return false;
    };
    status.observed_generation >= d.metadata.generation
        && status.updated_replicas.unwrap_or(0) >= desired
        && status.replicas.unwrap_or(0) == desired
}

fn encode(pool: &ObjectKey, status: SenderPoolStatus) -> Result<serde_json::Value> {
    serde_json::to_value(status).map_err(|source| OperatorError::Encode {
        what: format!("SenderPool {pool} status"),
        source,
    })
}

/// Events for the transitions the tick made, and for validation problems
/// when the Accepted condition changed.
async fn announce(
    ctx: &Context,
    pool: &SenderPool,
    problems: &[ObjectProblem],
    outcome: &Outcome,
    old: &serde_json::Value,
    new: &serde_json::Value,
) {
    let pool_key = key(pool);
    let mut records = transition_events(&pool_key, &outcome.transitions);
    let accepted = |v: &serde_json::Value| {
        v["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == ACCEPTED).cloned())
            .map(|c| (c["status"].clone(), c["message"].clone()))
    };
    if !problems.is_empty() && accepted(old) != accepted(new) {
        records.extend(problem_events("SenderPool", &pool_key, problems));
    }
    let condition = |v: &serde_json::Value, type_: &str| {
        v["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == type_).cloned())
            .map(|c| (c["status"].clone(), c["message"].clone()))
    };
    for check in outcome.checks.iter().filter(|c| !c.problems.is_empty()) {
        if condition(old, check.condition) != condition(new, check.condition) {
            records.extend(problem_events("SenderPool", &pool_key, &check.problems));
        }
    }
    for t in &outcome.transitions {
        tracing::info!(ip = %t.ip, provider = %t.provider, from = ?t.from, to = %t.to,
            reason = %t.reason, "reputation moved");
    }
    ctx.publish(&pool.object_ref(&()), &records).await;
}

/// Says on the pool that its stored status could not be read in full and
/// was rewritten: a warning event naming each field, a log line, a metric.
async fn report_repair(ctx: &Context, pool: &SenderPool, unreadable: &UnreadableStatus) {
    let pool_key = key(pool);
    tracing::warn!(pool = %pool_key, problems = ?unreadable.problems, "unreadable status repaired");
    ctx.metrics.unreadable_status("SenderPool");
    let record = unreadable_status_event("SenderPool", &pool_key, unreadable);
    ctx.publish(&pool.object_ref(&()), &[record]).await;
}

fn record_states(ctx: &Context, pool: &ObjectKey, status: &SenderPoolStatus) {
    let states = status
        .ips
        .iter()
        .flat_map(|ip| {
            ip.reputation.iter().map(move |pair| {
                (
                    (ip.address.clone(), pair.provider.clone()),
                    pair.state.to_string(),
                )
            })
        })
        .collect();
    ctx.metrics.set_pool_states(&pool.to_string(), states);
    let complaints = status
        .ips
        .iter()
        .flat_map(|ip| {
            ip.reputation.iter().filter_map(move |pair| {
                let rate = pair.complaint_rate.as_ref()?;
                Some((
                    (ip.address.clone(), pair.provider.clone()),
                    (rate.complaints, rate.delivered),
                ))
            })
        })
        .collect();
    ctx.metrics
        .set_pool_complaints(&pool.to_string(), complaints);
}

/// When to look at the pool again: when its next timer is due, slowly when
/// it cannot work, else at the resync interval.
fn next_action(outcome: &Outcome, usable: bool, now: Timestamp) -> Action {
    let wakeup = engine::next_wakeup(&outcome.spec_pool.spec, &outcome.status, now);
    requeue_at(wakeup, usable, &outcome.status, now)
}

fn requeue_at(
    wakeup: Option<Timestamp>,
    usable: bool,
    status: &SenderPoolStatus,
    now: Timestamp,
) -> Action {
    if !usable
        || status
            .conditions
            .iter()
            .any(|c| c.type_ == ACCEPTED && c.status == ConditionStatus::False)
    {
        return Action::requeue(INVALID_RETRY);
    }
    match wakeup {
        Some(at) => {
            let wait = at.duration_since(now).unsigned_abs();
            Action::requeue(wait.clamp(MIN_WAKEUP, RESYNC))
        }
        None => Action::requeue(RESYNC),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::report::SequenceLedger;
    use crate::api::{ReputationState, WindowBucket};
    use crate::routing::example::incident_fleet;

    fn bulk() -> SenderPool {
        let now = "2021-11-05T08:10:00Z".parse().unwrap();
        let (pools, _) = incident_fleet(now);
        let mut pool = pools.into_iter().find(|p| p.name_any() == "bulk").unwrap();
        pool.metadata.resource_version = Some("1".into());
        pool
    }

    fn first_pair(pool: &mut SenderPool) -> &mut crate::api::ProviderReputation {
        pool.status
            .as_mut()
            .unwrap()
            .ips
            .iter_mut()
            .flat_map(|ip| ip.reputation.iter_mut())
            .next()
            .unwrap()
    }

    #[test]
    fn a_feedback_batch_that_only_counts_plans_nothing_again() {
        let before = bulk();
        let mut counted = before.clone();
        counted.metadata.resource_version = Some("2".into());
        first_pair(&mut counted).window.push(WindowBucket {
            start: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2021-11-05T08:10:00Z".parse().unwrap(),
            ),
            attempts: 40,
            delivered: 40,
            ip_blocklisted: 0,
            ip_rate_limited: 0,
            complaints: 0,
        });
        let mut ledger = SequenceLedger::default();
        ledger.admit(
            "203.0.113.12 abc",
            7,
            "2021-11-05T08:10:00Z".parse().unwrap(),
        );
        counted.status.as_mut().unwrap().feedback_ledger = Some(ledger);
        assert_eq!(planning_key(&before), planning_key(&counted));

        // A pair that moves, a spec or a replica count that changes: planned.
        let mut moved = counted.clone();
        first_pair(&mut moved).state = ReputationState::Probing;
        assert_ne!(planning_key(&counted), planning_key(&moved));
        let mut respecified = counted.clone();
        respecified.spec.ips.pop();
        assert_ne!(planning_key(&counted), planning_key(&respecified));
        let mut scaled = counted.clone();
        scaled.status.as_mut().unwrap().ips[0].ready_replicas += 1;
        assert_ne!(planning_key(&counted), planning_key(&scaled));
    }
}
