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

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};

use super::build::agent_token::FEEDBACK_AUDIENCE;
use super::build::events::{drain_event, transition_events, EventRecord, EventType};
use super::build::{IP_LABEL, POOL_LABEL};
use super::context::Context;
use super::error::api_status;
use super::token_cache::{trust_for, TokenIdentity};
use crate::agent::report::{
    ConfigHint, FeedbackReport, FeedbackResponse, QueueReport, FEEDBACK_API_VERSION,
};
use crate::api::{DomainRoute, SenderPool};
use crate::routing::postfix::{self, ip_slug, PostfixOptions};
use crate::routing::queues::{aging_note, record_report, route_queue};
use crate::routing::sender_config::sender_config_with;
use crate::routing::sending::SendingSettings;
use crate::routing::ObjectKey;
use crate::serve::ledger::FeedbackLedger;
use crate::serve::{FeedbackReceiver, FeedbackRefusal, RequestHead};

/// The TokenReview `extra` key that names the pod a bound token belongs to.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// The TokenReview `extra` key with that pod's uid.
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";
/// How often a status write that conflicts (409) is tried again.
const STATUS_ATTEMPTS: u32 = 5;

/// Receives agent reports for the operator.
pub struct OperatorFeedback {
    ctx: Arc<Context>,
}

impl OperatorFeedback {
    pub fn new(ctx: Arc<Context>) -> Self {
        OperatorFeedback { ctx }
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

    /// Counts the report into the pool's status; retries when another writer
    /// changed the pool in between.
    async fn count(
        &self,
        report: &FeedbackReport,
        pod: &str,
    ) -> Result<FeedbackResponse, FeedbackRefusal> {
        let ns = report.pool.namespace.as_str();
        let name = report.pool.name.as_str();
        let status_lock = self.ctx.status_lock(ns, name);
        let _turn = status_lock.lock().await;
        let api: Api<SenderPool> = Api::namespaced(self.ctx.client.clone(), ns);
        for attempt in 1..=STATUS_ATTEMPTS {
            let fresh = match api.get(name).await {
                Ok(pool) => Arc::new(pool),
                Err(e) if api_status(&e) == Some(404) => {
                    return Err(FeedbackRefusal::Invalid(format!(
                        "SenderPool {ns}/{name} does not exist; fix the agent's --pool"
                    )))
                }
                Err(e) => {
                    return Err(FeedbackRefusal::Unavailable(format!(
                        "cannot read SenderPool {ns}/{name}: {e}"
                    )))
                }
            };
            let mut pools: Vec<Arc<SenderPool>> = self
                .ctx
                .stores
                .pools
                .all()
                .into_iter()
                .filter(|p| !(p.name_any() == name && p.namespace().as_deref() == Some(ns)))
                .collect();
            pools.push(fresh.clone());
            let routes = self.ctx.stores.routes.in_namespace(ns);
            let now = Timestamp::now();
            // The cached snapshot of these very inputs (the route controller
            // has usually compiled it already): rebuilding the fleet, above
            // all its classifier, is most of what a report costs.
            let snapshot = self
                .ctx
                .snapshots
                .get(ns, &pools, &routes, now)
                .await
                .map_err(|e| FeedbackRefusal::Unavailable(e.to_string()))?;
            let mut fleet = snapshot.fleet.clone();
            drop(snapshot);
            // The cache matches on spec and reputation only: count into the
            // fresh status so the write does not carry stale replica counts.
            if let Some(pool) = fleet.pools.iter_mut().find(|p| p.name_any() == name) {
                pool.metadata = fresh.metadata.clone();
                pool.status = fresh.status.clone();
            }
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
            let applied = ledger
                .apply(&mut fleet, report, now)
                .map_err(|e| e.refusal())?;
            if applied.duplicate {
                return Ok(self.response(report, &fleet, &applied.ip, true, now));
            }
            let mut new_status = fleet
                .pools
                .iter()
                .find(|p| p.name_any() == name)
                .and_then(|p| p.status.clone())
                .unwrap_or_default();
            new_status.feedback_ledger = Some(ledger.sequences().clone());
            // A drained pod's queue went with it (to its siblings, or lost
            // as the drain says): its figures leave the pool's status.
            let gone = report.drain.as_ref().map(|_| QueueReport::empty(now));
            let queue_routes = match gone.as_ref().or(report.queue.as_ref()) {
                Some(queue) => record_report(
                    &mut new_status.queues,
                    pod,
                    &report.source_ip.to_string(),
                    queue,
                    now,
                ),
                None => Vec::new(),
            };
            let old =
                serde_json::to_value(fresh.status.clone().unwrap_or_default()).unwrap_or_default();
            let new = serde_json::to_value(&new_status).unwrap_or_default();
            match self
                .ctx
                .writer
                .patch_status::<SenderPool>(ns, name, fresh.resource_version(), &old, &new)
                .await
            {
                Ok(_) => {
                    self.ctx.metrics.feedback_report(&format!("{ns}/{name}"));
                    for t in &applied.transitions {
                        tracing::info!(pool = %applied.pool, ip = %t.ip, provider = %t.provider,
                            from = ?t.from, to = %t.to, reason = %t.reason, "reputation moved");
                    }
                    let records =
                        transition_events(&ObjectKey::new(ns, name), &applied.transitions);
                    self.ctx.publish(&fresh.object_ref(&()), &records).await;
                    if let Some(drain) = &report.drain {
                        let record = drain_event(
                            &ObjectKey::new(ns, name),
                            pod,
                            &report.source_ip.to_string(),
                            drain,
                        );
                        if drain.left > 0 {
                            tracing::warn!(pool = %applied.pool, pod, "{}", record.note);
                        }
                        self.ctx.metrics.drain(&format!("{ns}/{name}"), drain.left);
                        self.ctx.publish(&fresh.object_ref(&()), &[record]).await;
                    }
                    if !queue_routes.is_empty() {
                        let mut written = (*fresh).clone();
                        written.status = Some(new_status.clone());
                        self.write_route_queues(ns, &written, &queue_routes, now)
                            .await;
                    }
                    return Ok(self.response(report, &fleet, &applied.ip, false, now));
                }
                Err(e) if api_status(&e) == Some(409) => {
                    tracing::debug!(attempt, pool = %applied.pool, "status conflict; reading the pool again");
                    continue;
                }
                Err(e) => {
                    return Err(FeedbackRefusal::Unavailable(format!(
                        "cannot write SenderPool {ns}/{name} status: {e}"
                    )))
                }
            }
        }
        Err(FeedbackRefusal::Unavailable(format!(
            "SenderPool {ns}/{name} status kept changing; retry"
        )))
    }

    /// Writes `status.queue` of the routes whose waiting mail a report
    /// changed, summed over the namespace's pools (`pool` as just written),
    /// with a Warning when the oldest message has used half its lifetime. A
    /// conflict is left to the next report: the figures are re-sent each time.
    async fn write_route_queues(
        &self,
        ns: &str,
        pool: &SenderPool,
        routes: &[String],
        now: Timestamp,
    ) {
        let others = self.ctx.stores.pools.all();
        let pools: Vec<&SenderPool> = others
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| !(p.name_any() == pool.name_any() && p.namespace() == pool.namespace()))
            .chain(std::iter::once(pool))
            .collect();
        for name in routes {
            let Some(route) = self.ctx.stores.routes.get(ns, name) else {
                continue;
            };
            let key = format!("{ns}/{name}");
            let queue = route_queue(pools.iter().copied(), ns, name, now);
            self.ctx.metrics.set_route_queue(
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
            match self
                .ctx
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
                        self.ctx.publish(&route.object_ref(&()), &[record]).await;
                    }
                }
                Err(e) => {
                    tracing::debug!(route = %key, error = %e, "route queue figures not written; the next report retries")
                }
            }
        }
    }

    fn response(
        &self,
        report: &FeedbackReport,
        fleet: &crate::fleet::Fleet,
        ip: &str,
        duplicate: bool,
        now: Timestamp,
    ) -> FeedbackResponse {
        let table = fleet.compile(now);
        let sender =
            postfix::sender_in(&fleet.pools, &report.pool.namespace, &report.pool.name, ip);
        let config = sender_config_with(
            &table,
            &sender,
            &fleet.known_domains(),
            &PostfixOptions::default(),
            &SendingSettings::find(&fleet.pools, &sender),
        )
        .map_err(|e| tracing::warn!(error = %e, "cannot render the sender config for the reply"))
        .ok()
        .map(|c| {
            let current = report.config_version.as_deref() == Some(c.version.as_str());
            ConfigHint {
                version: c.version,
                files: (!current).then_some(c.files),
            }
        });
        FeedbackResponse {
            api_version: FEEDBACK_API_VERSION.to_string(),
            sequence: report.sequence,
            duplicate,
            config,
        }
    }
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
        self.count(&report, &identity.pod).await
    }
}
