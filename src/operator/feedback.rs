//! The operator's side of `POST /v1/feedback`: who may report (TokenReview of
//! the pod's ServiceAccount token, then the pod's own labels), and counting an
//! accepted report into the pool's status so the state survives a restart.
//!
//! Only the leader counts reports: the other replica answers 503 and the agent
//! retries, and since the Service spreads connections over both replicas the
//! retry soon reaches the leader.
//!
//! A token must be for the audience `mailfleet` (the agents' projected token,
//! useless against the API server). An accepted review is remembered until
//! the token expires (`token_cache`), and the pod comes from the Pods store,
//! so a steady report costs no API request before its status write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::oneshot;
use tokio::sync::Notify;

use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};

use super::build::agent_token::FEEDBACK_AUDIENCE;
use super::build::events::{
    drain_event, ip_bound_event, transition_events, EventRecord, EventType,
};
use super::build::{IP_LABEL, POOL_LABEL};
use super::context::Context;
use super::error::api_status;
use super::rendered::RenderedConfigs;
use super::snapshot::{routing_reputation_digest, Snapshot};
use super::status_write::{self, Patched};
use super::token_cache::{trust_for, TokenIdentity};
use crate::agent::report::{FeedbackReport, FeedbackResponse, QueueReport, FEEDBACK_API_VERSION};
use crate::api::{DomainRoute, SenderPool};
use crate::fleet::Fleet;
use crate::routing::postfix::ip_slug;
use crate::routing::queues::{aging_note, record_report, route_queue};
use crate::routing::ObjectKey;
use crate::serve::ledger::{FeedbackLedger, LedgerError};
use crate::serve::{FeedbackReceiver, FeedbackRefusal, RequestHead};
use crate::vocab::Category;

/// The TokenReview `extra` key that names the pod a bound token belongs to.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// The TokenReview `extra` key with that pod's uid.
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";
/// How often a status write that conflicts (409) is tried again.
const STATUS_ATTEMPTS: u32 = 5;

/// Receives agent reports for the operator.
pub struct OperatorFeedback {
    ctx: Arc<Context>,
    batches: Batches,
    configs: Arc<RenderedConfigs>,
}

impl OperatorFeedback {
    pub fn new(ctx: Arc<Context>) -> Self {
        OperatorFeedback {
            ctx,
            batches: Batches::default(),
            configs: Arc::default(),
        }
    }

    /// The pod a token belongs to: from the cache, else a TokenReview for
    /// the feedback audience.
    async fn authenticate(&self, token: &str) -> Result<TokenIdentity, FeedbackRefusal> {
        let now = std::time::Instant::now();
        if let Some(identity) = self.ctx.tokens.get(token, now) {
            return Ok(identity);
        }
        let identity = self.review(token).await?;
        let ttl = trust_for(token, Timestamp::now().as_second());
        self.ctx.tokens.insert(token, identity.clone(), ttl, now);
        Ok(identity)
    }

    async fn review(&self, token: &str) -> Result<TokenIdentity, FeedbackRefusal> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![FEEDBACK_AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.ctx.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "TokenReview failed");
                FeedbackRefusal::Unavailable(format!("cannot review the token now: {e}"))
            })?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status.error.unwrap_or_else(|| "token not accepted".into());
            return Err(FeedbackRefusal::Unauthorized(format!(
                "the bearer token is not valid for audience {FEEDBACK_AUDIENCE}: {why}; agents send the projected token of their pod (volume mailfleet-token)"
            )));
        }
        if let Some(audiences) = status.audiences.as_ref().filter(|a| !a.is_empty()) {
            if !audiences.iter().any(|a| a == FEEDBACK_AUDIENCE) {
                return Err(FeedbackRefusal::Unauthorized(format!(
                    "the bearer token is for {audiences:?}, not for {FEEDBACK_AUDIENCE}"
                )));
            }
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let namespace = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split(':').next())
            .map(str::to_string)
            .ok_or_else(|| {
                FeedbackRefusal::Forbidden(format!(
                    "{username} is not a ServiceAccount; agents report with their pod's ServiceAccount token"
                ))
            })?;
        let extra = |key: &str| {
            user.extra
                .as_ref()
                .and_then(|extra| extra.get(key))
                .and_then(|values| values.first())
                .cloned()
        };
        let pod_uid = extra(POD_UID_EXTRA);
        let pod = extra(POD_NAME_EXTRA)
            .ok_or_else(|| {
                FeedbackRefusal::Forbidden(format!(
                    "the token of {username} is not bound to a pod; mount the projected ServiceAccount token of the sender pod"
                ))
            })?;
        Ok(TokenIdentity {
            namespace,
            pod,
            pod_uid,
        })
    }

    /// Checks that the pod speaks for the report's pool and IP.
    fn authorize(
        &self,
        identity: &TokenIdentity,
        report: &FeedbackReport,
    ) -> Result<(), FeedbackRefusal> {
        let namespace = identity.namespace.as_str();
        let pod_name = identity.pod.as_str();
        if namespace != report.pool.namespace {
            return Err(FeedbackRefusal::Forbidden(format!(
                "pod {namespace}/{pod_name} may not report for namespace {}",
                report.pool.namespace
            )));
        }
        // The Pods store holds every pod labelled with a pool and an IP.
        let Some(pod) = self.ctx.stores.pods.get(namespace, pod_name) else {
            return Err(FeedbackRefusal::Forbidden(format!(
                "pod {namespace}/{pod_name} of the token is not a sender pod (it has no {POOL_LABEL} and {IP_LABEL} labels, or no longer exists)"
            )));
        };
        if let (Some(want), Some(have)) = (&identity.pod_uid, &pod.metadata.uid) {
            if want != have {
                return Err(FeedbackRefusal::Forbidden(format!(
                    "the token belongs to an earlier pod named {namespace}/{pod_name}"
                )));
            }
        }
        let labels = pod.labels();
        let want_ip = ip_slug(report.source_ip);
        let pool_ok = labels.get(POOL_LABEL) == Some(&report.pool.name);
        let ip_ok = labels.get(IP_LABEL) == Some(&want_ip);
        if !(pool_ok && ip_ok) {
            return Err(FeedbackRefusal::Forbidden(format!(
                "pod {namespace}/{pod_name} is labelled {POOL_LABEL}={} {IP_LABEL}={} and may not report for pool {} IP {}",
                labels.get(POOL_LABEL).map(String::as_str).unwrap_or("<none>"),
                labels.get(IP_LABEL).map(String::as_str).unwrap_or("<none>"),
                report.pool.name,
                report.source_ip
            )));
        }
        Ok(())
    }

    /// Counts the report into the pool's status with the other reports of
    /// its pool that arrive within [`BATCH_DELAY`] (at once when it may move
    /// a pair), in one guarded status write, and answers after that write.
    /// A report that carries no counts (a heartbeat) is answered without a
    /// write: counting it again would change nothing.
    async fn count(
        &self,
        report: FeedbackReport,
        pod: String,
    ) -> Result<FeedbackResponse, FeedbackRefusal> {
        if carries_nothing(&report) && !self.binding_news(&report) {
            return self.answer_without_write(&report).await;
        }
        let key = format!("{}/{}", report.pool.namespace, report.pool.name);
        let urgent = may_move_a_pair(&report);
        let (answer, answered) = oneshot::channel();
        let (batch, start_flusher) = {
            let mut batches = lock(&self.batches);
            let batch = batches.entry(key.clone()).or_default().clone();
            let mut queue = lock(&batch.queue);
            let waiting = Pending {
                report,
                pod,
                answer,
            };
            if queue.wait(waiting).is_err() {
                return Err(FeedbackRefusal::Unavailable(format!(
                    "SenderPool {key} has {MAX_WAITING_PER_POOL} reports waiting for its status write; this one was not stored, send it again"
                )));
            }
            let start = !queue.flushing;
            queue.flushing = true;
            drop(queue);
            (batch, start)
        };
        if urgent {
            batch.wake.notify_one();
        }
        if start_flusher {
            tokio::spawn(flush(
                self.ctx.clone(),
                self.batches.clone(),
                self.configs.clone(),
                key,
                batch,
            ));
        }
        answered.await.unwrap_or_else(|_| {
            Err(FeedbackRefusal::Unavailable(
                "the operator is stopping; retry".into(),
            ))
        })
    }

    /// Whether the report's bind check would change the IP's `IpBound`
    /// condition as stored: a heartbeat that would is written like a count.
    fn binding_news(&self, report: &FeedbackReport) -> bool {
        let Some(check) = &report.ip_binding else {
            return false;
        };
        let Some(pool) = self
            .ctx
            .stores
            .pools
            .get(&report.pool.namespace, &report.pool.name)
        else {
            return false;
        };
        crate::routing::ip_bound::would_change(
            &pool,
            &report.source_ip.to_string(),
            &report.agent.name,
            check,
        )
    }

    /// The cached fleet of namespace `ns` over the stores as they are; not
    /// built yet (or unbuildable): not now, retry.
    async fn snapshot_of(
        &self,
        ns: &str,
        now: Timestamp,
    ) -> Result<Arc<super::snapshot::Snapshot>, FeedbackRefusal> {
        let pools = self.ctx.stores.pools.all();
        let routes = self.ctx.stores.routes.in_namespace(ns);
        self.ctx
            .snapshots
            .get(ns, &pools, &routes, now)
            .await
            .map_err(|e| FeedbackRefusal::Unavailable(e.to_string()))
    }

    /// A heartbeat: checked against the pool's stored ledger, answered with
    /// the sender config, nothing written.
    async fn answer_without_write(
        &self,
        report: &FeedbackReport,
    ) -> Result<FeedbackResponse, FeedbackRefusal> {
        let ns = report.pool.namespace.as_str();
        let snapshot = self.snapshot_of(ns, Timestamp::now()).await?;
        let fleet = &snapshot.fleet;
        let stored = self
            .ctx
            .stores
            .pools
            .get(ns, &report.pool.name)
            .and_then(|p| p.status.clone())
            .and_then(|s| s.feedback_ledger)
            .unwrap_or_default();
        let ledger = FeedbackLedger::from_sequences(stored);
        let check = ledger.check(fleet, report).map_err(|e| e.refusal())?;
        let ip = spec_ip(fleet, report).unwrap_or_else(|| report.source_ip.to_string());
        Ok(respond(
            report,
            &snapshot,
            &ip,
            check == crate::serve::ledger::Check::Duplicate,
            &self.configs,
            &self.ctx.classifier_rules,
        ))
    }
}

/// The answer to one report: its sequence, whether it was a duplicate, and
/// the reporting IP's sender config when the agent's is not current.
fn respond(
    report: &FeedbackReport,
    snapshot: &Arc<Snapshot>,
    ip: &str,
    duplicate: bool,
    configs: &RenderedConfigs,
    rules: &super::sender_checks::RulesMemory,
) -> FeedbackResponse {
    let config = configs.hint(
        snapshot,
        &report.pool.namespace,
        &report.pool.name,
        ip,
        report.config_version.as_deref(),
        rules,
    );
    FeedbackResponse {
        api_version: FEEDBACK_API_VERSION.to_string(),
        sequence: report.sequence,
        duplicate,
        config,
    }
}

/// The report's IP as the pool's spec writes it.
fn spec_ip(fleet: &crate::fleet::Fleet, report: &FeedbackReport) -> Option<String> {
    fleet
        .pools
        .iter()
        .filter(|p| {
            p.name_any() == report.pool.name
                && p.metadata.namespace.as_deref() == Some(report.pool.namespace.as_str())
        })
        .flat_map(|p| p.spec.ips.iter())
        .find(|ip| ip.address.trim().parse().ok() == Some(report.source_ip))
        .map(|ip| ip.address.clone())
}

/// Whether a report counts nothing (an agent's heartbeat).
fn carries_nothing(report: &FeedbackReport) -> bool {
    report.conclusive.is_empty()
        && report.complaints.is_empty()
        && report.totals.iter().all(|t| t.count == 0)
        && report.queue.is_none()
        && report.drain.is_none()
}

/// Whether a report may move a pair (a block or rate-limit signal): its
/// batch is written at once, so a block reaches the routes without waiting.
fn may_move_a_pair(report: &FeedbackReport) -> bool {
    !report.conclusive.is_empty()
        || report.totals.iter().any(|t| {
            t.count > 0
                && matches!(
                    t.category,
                    Category::IpBlocklisted | Category::IpRateLimited
                )
        })
}

/// How long the first report of a batch waits for others of its pool.
pub const BATCH_DELAY: Duration = Duration::from_secs(2);

/// How many reports of one pool may wait for its next status write: twice
/// the CRD's largest pool (256 IPs), every agent with one report waiting and
/// one sent again. Past it a report is refused with 503 and `Retry-After`,
/// storing nothing (the agent keeps it): when writes fall behind, waiting
/// reports would otherwise pile up without end.
pub const MAX_WAITING_PER_POOL: usize = 512;

/// Reports waiting for their pool's next status write, per pool.
pub type Batches = Arc<Mutex<HashMap<String, Arc<PoolBatch>>>>;

#[derive(Default)]
pub struct PoolBatch {
    queue: Mutex<Queue>,
    /// Woken by a report that may move a pair.
    wake: Notify,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    /// A flusher task runs for this pool.
    flushing: bool,
}

impl Queue {
    /// Adds `report` to the next write, or gives it back when
    /// [`MAX_WAITING_PER_POOL`] reports wait already.
    fn wait(&mut self, report: Pending) -> Result<(), Box<Pending>> {
        if self.pending.len() >= MAX_WAITING_PER_POOL {
            return Err(Box::new(report));
        }
        self.pending.push(report);
        Ok(())
    }
}

struct Pending {
    report: FeedbackReport,
    /// The reporting pod, whose queue figures the report carries.
    pod: String,
    answer: oneshot::Sender<Result<FeedbackResponse, FeedbackRefusal>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes a pool's waiting reports, batch after batch, until none is left.
async fn flush(
    ctx: Arc<Context>,
    batches: Batches,
    configs: Arc<RenderedConfigs>,
    key: String,
    batch: Arc<PoolBatch>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(BATCH_DELAY) => {}
            () = batch.wake.notified() => {}
        }
        let pending = std::mem::take(&mut lock(&batch.queue).pending);
        if !pending.is_empty() {
            write_batch(&ctx, &configs, pending).await;
        }
        let mut batches_guard = lock(&batches);
        let mut queue = lock(&batch.queue);
        if queue.pending.is_empty() {
            queue.flushing = false;
            drop(queue);
            if batches_guard
                .get(&key)
                .is_some_and(|b| Arc::ptr_eq(b, &batch))
            {
                batches_guard.remove(&key);
            }
            return;
        }
    }
}

/// Counts `pending` (reports of one pool) into a fresh copy of the pool and
/// writes the status once, guarded by its resourceVersion; then answers
/// each report. Nothing is acknowledged that the write did not store.
async fn write_batch(ctx: &Context, configs: &RenderedConfigs, pending: Vec<Pending>) {
    let Some(first) = pending.first() else { return };
    let ns = first.report.pool.namespace.clone();
    let name = first.report.pool.name.clone();
    let answers = count_batch(ctx, configs, &ns, &name, &pending).await;
    for (p, answer) in pending.into_iter().zip(answers) {
        let _ = p.answer.send(answer);
    }
}

/// Whether counting moved what the routes read of the pool (a pair's state,
/// an IP found unbound; [`routing_reputation_digest`]): only then is the
/// namespace's table compiled again. Most reports only fill a window.
fn moves_routes(before: u64, after: &SenderPool) -> bool {
    routing_reputation_digest(after) != before
}

/// The namespace's fleet with only the reporting pool in it, to count into:
/// copying the whole namespace for every batch made a batch cost as much as
/// the namespace is large. `fresh` gives the metadata and status; the spec is
/// the usable one of the snapshot (no pool when the pool is not usable).
fn reporting_pool_only(snapshot: &Snapshot, fresh: &SenderPool) -> Fleet {
    let pool = snapshot
        .fleet
        .pools
        .iter()
        .find(|p| p.name_any() == fresh.name_any() && p.namespace() == fresh.namespace())
        .map(|usable| SenderPool {
            metadata: fresh.metadata.clone(),
            spec: usable.spec.clone(),
            status: fresh.status.clone(),
        });
    Fleet {
        pools: pool.into_iter().collect(),
        routes: Vec::new(),
        classifier: snapshot.fleet.classifier.clone(),
        known_providers: snapshot.fleet.known_providers.clone(),
    }
}

/// Every pool with `pool` in place of its stored copy.
fn with_pool(pools: Vec<Arc<SenderPool>>, pool: &Arc<SenderPool>) -> Vec<Arc<SenderPool>> {
    let mut pools: Vec<Arc<SenderPool>> = pools
        .into_iter()
        .filter(|p| !(p.name_any() == pool.name_any() && p.namespace() == pool.namespace()))
        .collect();
    pools.push(pool.clone());
    pools
}

async fn count_batch(
    ctx: &Context,
    configs: &RenderedConfigs,
    ns: &str,
    name: &str,
    pending: &[Pending],
) -> Vec<Result<FeedbackResponse, FeedbackRefusal>> {
    let all = |refusal: FeedbackRefusal| -> Vec<Result<FeedbackResponse, FeedbackRefusal>> {
        pending.iter().map(|_| Err(refusal.clone())).collect()
    };
    let status_lock = ctx.status_lock(ns, name);
    let _turn = status_lock.lock().await;
    let api: Api<SenderPool> = Api::namespaced(ctx.client.clone(), ns);
    for attempt in 1..=STATUS_ATTEMPTS {
        // The watched copy first: the write is guarded by its
        // resourceVersion, so a copy the watch has not brought up to date
        // yet only costs a 409, and then the pool is read from the server.
        // A steady batch costs one request, its write.
        let watched = (attempt == 1)
            .then(|| ctx.stores.pools.get(ns, name))
            .flatten();
        let read = match watched {
            Some(pool) => Ok(pool),
            None => api.get(name).await.map(Arc::new),
        };
        let fresh = match read {
            Ok(pool) => pool,
            Err(e) if api_status(&e) == Some(404) => {
                return all(FeedbackRefusal::Invalid(format!(
                    "SenderPool {ns}/{name} does not exist; fix the agent's --pool"
                )))
            }
            Err(e) => {
                return all(FeedbackRefusal::Unavailable(format!(
                    "cannot read SenderPool {ns}/{name}: {e}"
                )))
            }
        };
        let pools = with_pool(ctx.stores.pools.all(), &fresh);
        let routes = ctx.stores.routes.in_namespace(ns);
        let now = Timestamp::now();
        // The cached snapshot of these very inputs (the route controller
        // has usually compiled it already); a window filled by this batch
        // does not move it.
        let snapshot = match ctx.snapshots.get(ns, &pools, &routes, now).await {
            Ok(snapshot) => snapshot,
            Err(e) => return all(FeedbackRefusal::Unavailable(e.to_string())),
        };
        let mut fleet = reporting_pool_only(&snapshot, &fresh);
        let before = fleet.pools.first().map(routing_reputation_digest);
        // The ledger is part of the status it counted into: read and
        // written with it, so it survives a restart or a leader change.
        let mut ledger = FeedbackLedger::from_sequences(
            fresh
                .status
                .as_ref()
                .and_then(|s| s.feedback_ledger.clone())
                .unwrap_or_default(),
        );
        ledger.expire(now);
        let mut outcomes = Vec::with_capacity(pending.len());
        for p in pending {
            let outcome = ledger
                .apply(&mut fleet, &p.report, now)
                .map_err(|e| match e {
                    // Not in this pool: the namespace says whether it is another's.
                    LedgerError::UnknownIp { .. } => {
                        ledger.check(&snapshot.fleet, &p.report).err().unwrap_or(e)
                    }
                    e => e,
                });
            outcomes.push(outcome);
        }
        let counted = outcomes
            .iter()
            .filter(|o| o.as_ref().is_ok_and(|a| !a.duplicate))
            .count();
        let answers = |snapshot: &Arc<Snapshot>| {
            pending
                .iter()
                .zip(&outcomes)
                .map(|(p, outcome)| match outcome {
                    Ok(applied) => Ok(respond(
                        &p.report,
                        snapshot,
                        &applied.ip,
                        applied.duplicate,
                        configs,
                        &ctx.classifier_rules,
                    )),
                    Err(e) => Err(e.refusal()),
                })
                .collect()
        };
        if counted == 0 {
            return answers(&snapshot);
        }
        let Some(counted_into) = fleet.pools.pop() else {
            return answers(&snapshot);
        };
        let moved = before.is_none_or(|before| moves_routes(before, &counted_into));
        let mut new_status = counted_into.status.clone().unwrap_or_default();
        new_status.feedback_ledger = Some(ledger.sequences().clone());
        // Each pod's queue figures; a drained pod's queue went with it (to its
        // siblings, or lost as the drain says), so its figures leave.
        let mut queue_routes = std::collections::BTreeSet::new();
        for (p, outcome) in pending.iter().zip(&outcomes) {
            let Ok(applied) = outcome else { continue };
            if applied.duplicate {
                continue;
            }
            let gone = p.report.drain.as_ref().map(|_| QueueReport::empty(now));
            if let Some(queue) = gone.as_ref().or(p.report.queue.as_ref()) {
                queue_routes.extend(record_report(
                    &mut new_status.queues,
                    &p.pod,
                    &p.report.source_ip.to_string(),
                    queue,
                    now,
                ));
            }
        }
        let old =
            serde_json::to_value(fresh.status.clone().unwrap_or_default()).unwrap_or_default();
        let new = serde_json::to_value(&new_status).unwrap_or_default();
        match status_write::patch(ctx, &ObjectKey::new(ns, name), fresh.as_ref(), &old, &new).await
        {
            Ok(Patched::Written(written)) => {
                let mut transitions = Vec::new();
                for applied in outcomes.iter().flatten().filter(|a| !a.duplicate) {
                    ctx.metrics.feedback_report(&format!("{ns}/{name}"));
                    for t in &applied.transitions {
                        tracing::info!(pool = %applied.pool, ip = %t.ip, provider = %t.provider,
                            from = ?t.from, to = %t.to, reason = %t.reason, "reputation moved");
                    }
                    transitions.extend(applied.transitions.iter().cloned());
                }
                ctx.metrics.feedback_batch(counted);
                for (p, outcome) in pending.iter().zip(&outcomes) {
                    let (Ok(applied), Some(drain)) = (outcome, &p.report.drain) else {
                        continue;
                    };
                    if applied.duplicate {
                        continue;
                    }
                    let record = drain_event(
                        &ObjectKey::new(ns, name),
                        &p.pod,
                        &p.report.source_ip.to_string(),
                        drain,
                    );
                    if drain.left > 0 {
                        tracing::warn!(pool = %applied.pool, pod = %p.pod, "{}", record.note);
                    }
                    ctx.metrics.drain(&format!("{ns}/{name}"), drain.left);
                    ctx.publish(&fresh.object_ref(&()), &[record]).await;
                }
                if !queue_routes.is_empty() {
                    let mut written = (*fresh).clone();
                    written.status = Some(new_status.clone());
                    let routes: Vec<String> = queue_routes.into_iter().collect();
                    write_route_queues(ctx, ns, &written, &routes, now).await;
                }
                // Replies quoting a block list are checked with that zone at once.
                if pending.iter().any(|p| !p.report.conclusive.is_empty()) {
                    ctx.claims.notify_one();
                }
                let mut records = transition_events(&ObjectKey::new(ns, name), &transitions);
                for applied in outcomes.iter().flatten().filter(|a| !a.duplicate) {
                    let Some(change) = &applied.ip_bound else {
                        continue;
                    };
                    if change.bound == Some(false) {
                        tracing::warn!(pool = %applied.pool, ip = %change.ip, "{}", change.message);
                    }
                    records.extend(ip_bound_event(&ObjectKey::new(ns, name), change));
                }
                ctx.publish(&fresh.object_ref(&()), &records).await;
                if !moved {
                    return answers(&snapshot);
                }
                // A moved pair changes the table: the answers name the
                // configs of the table this write gives, compiled once here
                // (the route controller then finds it compiled).
                let written = written.map(Arc::new).unwrap_or_else(|| {
                    let mut written = (*fresh).clone();
                    written.metadata.resource_version = None;
                    written.status = Some(new_status);
                    Arc::new(written)
                });
                let pools = with_pool(pools, &written);
                let moved_to = match ctx.snapshots.get(ns, &pools, &routes, now).await {
                    Ok(moved_to) => moved_to,
                    Err(e) => {
                        tracing::warn!(error = %e, namespace = ns, "cannot compile the moved table for the answers");
                        snapshot
                    }
                };
                return answers(&moved_to);
            }
            Ok(Patched::Conflict) => {
                tracing::debug!(attempt, pool = %format!("{ns}/{name}"), "status conflict; reading the pool again");
                continue;
            }
            Err(e) => {
                return all(FeedbackRefusal::Unavailable(format!(
                    "cannot write SenderPool {ns}/{name} status: {e}"
                )))
            }
        }
    }
    all(FeedbackRefusal::Unavailable(format!(
        "SenderPool {ns}/{name} status kept changing; retry"
    )))
}

impl FeedbackReceiver for OperatorFeedback {
    /// Who the reviewed token belongs to (its pod).
    type Caller = TokenIdentity;

    async fn authenticate(&self, head: &RequestHead) -> Result<TokenIdentity, FeedbackRefusal> {
        if !self.ctx.is_leading() {
            return Err(FeedbackRefusal::Unavailable(
                "this replica is not the leader; retry (the Service reaches the leader soon)"
                    .into(),
            ));
        }
        if !self.ctx.is_synced() {
            return Err(FeedbackRefusal::Unavailable(
                "the operator is starting; retry".into(),
            ));
        }
        let token = head
            .bearer
            .as_deref()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                FeedbackRefusal::Unauthorized(
                    "no bearer token; agents send their pod's projected `mailfleet` token".into(),
                )
            })?;
        // The inherent TokenReview (cached), not this trait method.
        OperatorFeedback::authenticate(self, token).await
    }

    async fn receive(
        &self,
        identity: TokenIdentity,
        report: FeedbackReport,
    ) -> Result<FeedbackResponse, FeedbackRefusal> {
        self.authorize(&identity, &report)?;
        self.count(report, identity.pod).await
    }

    /// A posted abuse report: counted against the pool IP it names among the
    /// pools of the token's namespace (any pod of that namespace with the
    /// `mailfleet` token may post them), in the same batched status write as
    /// an agent's complaints, answered after that write.
    async fn receive_abuse_report(
        &self,
        identity: TokenIdentity,
        posted: crate::serve::abuse::PostedAbuseReport,
    ) -> Result<crate::serve::abuse::AbuseReportAnswer, FeedbackRefusal> {
        let ns = identity.namespace.as_str();
        let now = Timestamp::now();
        let snapshot = self.snapshot_of(ns, now).await?;
        let report = crate::serve::abuse::feedback_report(&posted, &snapshot.fleet, Some(ns), now)
            .map_err(|e| e.refusal())?;
        let answer = self.count(report.clone(), identity.pod).await?;
        Ok(crate::serve::abuse::AbuseReportAnswer::new(
            &report,
            answer.duplicate,
        ))
    }
}

/// Writes `status.queue` of the routes whose waiting mail a report changed,
/// summed over the namespace's pools (`pool` as just written), with a Warning
/// when the oldest message has used half its lifetime. A conflict is left to
/// the next report: the figures are re-sent each time.
async fn write_route_queues(
    ctx: &Context,
    ns: &str,
    pool: &SenderPool,
    routes: &[String],
    now: Timestamp,
) {
    let others = ctx.stores.pools.all();
    let pools: Vec<&SenderPool> = others
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| !(p.name_any() == pool.name_any() && p.namespace() == pool.namespace()))
        .chain(std::iter::once(pool))
        .collect();
    for name in routes {
        let Some(route) = ctx.stores.routes.get(ns, name) else {
            continue;
        };
        let key = format!("{ns}/{name}");
        let queue = route_queue(pools.iter().copied(), ns, name, now);
        ctx.metrics.set_route_queue(
            &key,
            queue.as_ref().map(|q| {
                let lifetime = q
                    .expires_time
                    .as_ref()
                    .map(|e| e.0.as_second() - q.oldest_arrival_time.0.as_second());
                (q.messages, q.oldest_arrival_time.0.as_second(), lifetime)
            }),
        );
        let before = route.status.clone().unwrap_or_default();
        if before.queue == queue {
            continue;
        }
        let was_aging = before.queue.as_ref().is_some_and(|q| q.aging);
        let mut after = before.clone();
        after.queue = queue.clone();
        let (Ok(old), Ok(new)) = (serde_json::to_value(&before), serde_json::to_value(&after))
        else {
            continue;
        };
        match ctx
            .writer
            .patch_status::<DomainRoute>(ns, name, route.resource_version(), &old, &new)
            .await
        {
            Ok(_) => {
                if let Some(q) = queue.as_ref().filter(|q| q.aging && !was_aging) {
                    let record = EventRecord {
                        kind: "DomainRoute",
                        regarding: ObjectKey::new(ns, name.as_str()),
                        type_: EventType::Warning,
                        reason: "QueueAging".into(),
                        action: "Queue",
                        note: aging_note(&key, q, now),
                    };
                    tracing::warn!(route = %key, "{}", record.note);
                    ctx.publish(&route.object_ref(&()), &[record]).await;
                }
            }
            Err(e) => {
                tracing::debug!(route = %key, error = %e, "route queue figures not written; the next report retries")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::report::{ConclusiveEvidence, TotalCount};
    use crate::api::ReputationState;
    use crate::operator::snapshot::build;
    use crate::routing::example::incident_fleet;
    use crate::vocab::Outcome;

    fn now() -> Timestamp {
        "2021-11-05T08:10:00Z".parse().unwrap()
    }

    fn snapshot() -> Snapshot {
        let (pools, routes) = incident_fleet(now());
        let pools: Vec<Arc<SenderPool>> = pools.into_iter().map(Arc::new).collect();
        let routes: Vec<Arc<DomainRoute>> = routes.into_iter().map(Arc::new).collect();
        build("mail", &pools, &routes, now()).unwrap()
    }

    fn report(ip: &str, sequence: u64, provider: &str, category: Category) -> FeedbackReport {
        let outcome = if category == Category::None {
            Outcome::Delivered
        } else {
            Outcome::Deferred
        };
        FeedbackReport {
            totals: vec![TotalCount {
                provider: provider.into(),
                outcome,
                category,
                count: 40,
            }],
            ..FeedbackReport::counting_nothing(ip, sequence, now())
        }
    }

    fn ban(ip: &str, sequence: u64) -> FeedbackReport {
        FeedbackReport {
            conclusive: vec![ConclusiveEvidence {
                provider: "microsoft".into(),
                reply: format!("550 5.7.606 Access denied, banned sending IP [{ip}]"),
                at: now(),
                named_ip: ip.parse().ok(),
                pause_seconds: None,
            }],
            ..report(ip, sequence, "microsoft", Category::IpBlocklisted)
        }
    }

    /// Counts `report` the way a batch does: into the reporting pool alone.
    fn count_alone(snapshot: &Snapshot, report: &FeedbackReport) -> (bool, SenderPool) {
        let stored = snapshot
            .fleet
            .pools
            .iter()
            .find(|p| p.name_any() == "bulk")
            .unwrap();
        let mut fleet = reporting_pool_only(snapshot, stored);
        assert_eq!(fleet.pools.len(), 1, "only the reporting pool is copied");
        let before = routing_reputation_digest(&fleet.pools[0]);
        FeedbackLedger::new()
            .apply(&mut fleet, report, now())
            .unwrap();
        let after = fleet.pools.pop().unwrap();
        (moves_routes(before, &after), after)
    }

    #[test]
    fn deliveries_fill_a_window_and_compile_nothing() {
        let snapshot = snapshot();
        // 203.0.113.13 has a Healthy google pair: deliveries only count.
        let (moved, pool) = count_alone(
            &snapshot,
            &report("203.0.113.13", 1, "google", Category::None),
        );
        assert!(!moved);
        let before = snapshot.fleet.pools.iter().find(|p| p.name_any() == "bulk");
        assert_ne!(
            serde_json::to_value(&pool.status).unwrap(),
            serde_json::to_value(&before.unwrap().status).unwrap(),
            "the window holds the counts"
        );
    }

    #[test]
    fn a_block_compiles_the_table() {
        let snapshot = snapshot();
        let (moved, pool) = count_alone(&snapshot, &ban("203.0.113.12", 1));
        assert!(moved);
        let state = pool
            .status
            .iter()
            .flat_map(|s| s.ips.iter())
            .find(|ip| ip.address == "203.0.113.12")
            .and_then(|ip| ip.reputation.iter().find(|r| r.provider == "microsoft"))
            .map(|r| r.state);
        assert_eq!(state, Some(ReputationState::Blocked));
    }

    #[test]
    fn a_report_for_an_unusable_pool_counts_nowhere() {
        let snapshot = snapshot();
        let mut stranger = snapshot.fleet.pools[0].clone();
        stranger.metadata.name = Some("not-in-the-fleet".into());
        let fleet = reporting_pool_only(&snapshot, &stranger);
        assert!(fleet.pools.is_empty());
    }

    #[test]
    fn reports_past_the_bound_are_given_back_unstored() {
        let mut queue = Queue::default();
        let pending = |sequence| {
            let (answer, _) = oneshot::channel();
            Pending {
                report: report("203.0.113.13", sequence, "google", Category::None),
                pod: "bulk-0".into(),
                answer,
            }
        };
        for sequence in 1..=MAX_WAITING_PER_POOL as u64 {
            assert!(queue.wait(pending(sequence)).is_ok());
        }
        let refused = queue
            .wait(pending(MAX_WAITING_PER_POOL as u64 + 1))
            .expect_err("one past the bound is refused");
        assert_eq!(refused.report.sequence, MAX_WAITING_PER_POOL as u64 + 1);
        assert_eq!(queue.pending.len(), MAX_WAITING_PER_POOL);
        // The next write takes them all, and there is room again.
        std::mem::take(&mut queue.pending);
        assert!(queue.wait(pending(1)).is_ok());
    }
}
