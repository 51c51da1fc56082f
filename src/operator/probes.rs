//! The DNSBL rounds and provider feed polls of every watched pool, run by the
//! leader (`probe::runner::SignalProbes`); what they find is counted into the
//! pools' status like agent feedback, and the `DnsblHealthy` verdict becomes
//! a condition of the pool.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, Resource, ResourceExt};

use super::build::events::transition_events;
use super::build::namespace_of;
use super::context::Context;
use super::error::OperatorError;
use super::snapshot;
use super::status_write::{self, Attempt};
use crate::api::SenderPool;
use crate::probe::claim_check::{ClaimCheckLimits, ClaimChecks};
use crate::probe::dnsbl::{DnsblHealth, DNSBL_HEALTHY};
use crate::probe::runner::{ProbeOptions, ProbeRound, SecretError, SecretSource, SignalProbes};
use crate::reputation::engine::{Signal, Transition};
use crate::routing::ObjectKey;

/// The longest sleep between two looks at the schedule (new pools, new zones).
const MAX_IDLE: Duration = Duration::from_secs(30);

/// Secrets read from the API server (`"" secrets: get`).
pub struct KubeSecrets {
    client: Client,
}

impl KubeSecrets {
    pub fn new(client: Client) -> Self {
        KubeSecrets { client }
    }
}

/// The label a Secret must carry for the operator to read it for a feed:
/// a SenderPool alone cannot make the operator read any Secret of its
/// namespace.
pub const FEED_SECRET_LABEL: &str = "mailfleet.io/feed-credentials";

/// Where Microsoft's SNDS answers; a feed key goes nowhere else unless the
/// operator runs with `--allow-custom-feed-urls`.
const SNDS_ORIGIN: &str = "https://sendersupport.olc.protection.outlook.com/";

/// Where Google's Postmaster Tools API and token endpoint answer; the
/// service account's assertion and token go nowhere else unless the operator
/// runs with `--allow-custom-feed-urls`.
const POSTMASTER_API_ORIGIN: &str = "https://gmailpostmastertools.googleapis.com/";
const POSTMASTER_TOKEN_URL: &str = crate::probe::postmaster::GOOGLE_TOKEN_URL;

impl SecretSource for KubeSecrets {
    async fn secret(&self, namespace: &str, name: &str, key: &str) -> Result<Vec<u8>, SecretError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = api.get(name).await.map_err(|source| SecretError::Api {
            namespace: namespace.into(),
            name: name.into(),
            source: Box::new(source),
        })?;
        feed_secret_allowed(&secret, namespace, name)?;
        if let Some(value) = secret.data.as_ref().and_then(|d| d.get(key)) {
            return Ok(value.0.clone());
        }
        if let Some(value) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
            return Ok(value.as_bytes().to_vec());
        }
        Err(SecretError::NoKey {
            namespace: namespace.into(),
            name: name.into(),
            key: key.into(),
        })
    }
}

fn feed_secret_allowed(secret: &Secret, namespace: &str, name: &str) -> Result<(), SecretError> {
    if secret.labels().get(FEED_SECRET_LABEL).map(String::as_str) == Some("true") {
        Ok(())
    } else {
        Err(SecretError::NotLabelled {
            namespace: namespace.into(),
            name: name.into(),
            label: FEED_SECRET_LABEL,
        })
    }
}

/// The pools as the probes may use them: a feed whose URL is not the
/// provider's is dropped (with a problem naming the field) unless custom
/// URLs are allowed, so its key is never read nor sent.
pub fn feeds_to_known_urls(pools: &mut [SenderPool], allow_custom: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if allow_custom {
        return problems;
    }
    for pool in pools.iter_mut() {
        let Some(snds) = &pool.spec.reputation.feeds.snds else {
            continue;
        };
        let foreign = std::iter::once(&snds.url)
            .chain(snds.data_url.as_ref())
            .find(|url| !url.trim().to_ascii_lowercase().starts_with(SNDS_ORIGIN))
            .map(|url| {
                format!(
                    "{}/{}: spec.reputation.feeds.snds `{}` is not Microsoft's SNDS ({SNDS_ORIGIN}); start the operator with --allow-custom-feed-urls to send the key there; SNDS not polled",
                    namespace_of(&pool.metadata),
                    pool.name_any(),
                    url.split('?').next().unwrap_or_default()
                )
            });
        if let Some(problem) = foreign {
            problems.push(problem);
            pool.spec.reputation.feeds.snds = None;
        }
    }
    for pool in pools.iter_mut() {
        let shown = format!("{}/{}", namespace_of(&pool.metadata), pool.name_any());
        let Some(postmaster) = pool.spec.reputation.feeds.postmaster.as_mut() else {
            continue;
        };
        // `origin` ends in `/` or is a whole URL, so `…googleapis.com.example` never matches.
        let at = |url: &str, origin: &str| {
            let url = url.trim().to_ascii_lowercase();
            url == origin.trim_end_matches('/') || url.starts_with(origin)
        };
        let foreign = [
            ("url", postmaster.url.as_deref(), POSTMASTER_API_ORIGIN),
            ("tokenUrl", postmaster.token_url.as_deref(), POSTMASTER_TOKEN_URL),
        ]
        .into_iter()
        .find_map(|(field, url, origin)| url.filter(|u| !at(u, origin)).map(|u| (field, u, origin)))
        .map(|(field, url, origin)| {
            format!(
                "{shown}: spec.reputation.feeds.postmaster.{field} `{}` is not Google's ({origin}); start the operator with --allow-custom-feed-urls to send the service account's assertion or token there; Postmaster not polled",
                url.split('?').next().unwrap_or_default()
            )
        });
        match foreign {
            Some(problem) => {
                problems.push(problem);
                pool.spec.reputation.feeds.postmaster = None;
            }
            // The key file's own `token_uri` is not trusted either: it is
            // Google's token endpoint, always.
            None => postmaster.token_url = Some(POSTMASTER_TOKEN_URL.to_string()),
        }
    }
    problems
}

/// Copies of every watched pool, for a round that edits or keeps them.
fn watched_pools(ctx: &Context) -> Vec<SenderPool> {
    ctx.stores
        .pools
        .all()
        .iter()
        .map(|p| (**p).clone())
        .collect()
}

/// Runs the probes until `stop` completes.
pub async fn run(ctx: Arc<Context>, stop: impl std::future::Future<Output = ()>) {
    let mut stop = std::pin::pin!(stop);
    let mut probes = SignalProbes::new(ProbeOptions::default());
    let secrets = KubeSecrets::new(ctx.client.clone());
    loop {
        let now = Timestamp::now();
        let mut pools = watched_pools(&ctx);
        for problem in feeds_to_known_urls(&mut pools, ctx.settings.allow_custom_feed_urls) {
            tracing::warn!(problem = %problem, "probe");
        }
        let round = probes.run_due(&pools, &secrets, now).await;
        ctx.set_probe_metrics(probes.metrics());
        for problem in &round.problems {
            tracing::warn!(problem = %problem, "probe");
        }
        apply_round(&ctx, round, now).await;
        let wait = probes
            .next_due()
            .map(|at| at.duration_since(Timestamp::now()).unsigned_abs())
            .unwrap_or(MAX_IDLE)
            .clamp(Duration::from_secs(1), MAX_IDLE);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut stop => return,
        }
    }
}

/// How often claims already in status are looked at without a wake.
const CLAIM_RECHECK: Duration = Duration::from_secs(30);
/// The pool store follows a status write a moment later: after a wake, the
/// claims are looked for this many times, this far apart.
const CLAIM_LOOKS: u32 = 10;
const CLAIM_LOOK_GAP: Duration = Duration::from_millis(200);

/// Asks the zones that receivers' replies name (the claims in the pools'
/// status) through each pool's `spec.reputation.dnsbl.resolver`, as soon as
/// the feedback port counts a report with conclusive replies, and every
/// [`CLAIM_RECHECK`] for claims already there. Answers are counted into the
/// pools' status like the probes' (`probe::claim_check` bounds the names
/// and the questions).
pub async fn run_claim_checks(ctx: Arc<Context>, stop: impl std::future::Future<Output = ()>) {
    let mut stop = std::pin::pin!(stop);
    let mut checks = ClaimChecks::new(ProbeOptions::default(), ClaimCheckLimits::default());
    loop {
        for _ in 0..CLAIM_LOOKS {
            let pools = watched_pools(&ctx);
            let (queries, problems) = checks.due(&pools, Timestamp::now());
            for problem in &problems {
                tracing::warn!(problem = %problem, "claim check");
            }
            if !queries.is_empty() {
                let clock = Timestamp::now;
                let signals = tokio::select! {
                    signals = checks.ask(queries, &clock) => signals,
                    () = &mut stop => return,
                };
                let round = ProbeRound {
                    signals,
                    ..ProbeRound::default()
                };
                apply_round(&ctx, round, Timestamp::now()).await;
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(CLAIM_LOOK_GAP) => {}
                () = &mut stop => return,
            }
        }
        ctx.set_claim_metrics(checks.metrics());
        tokio::select! {
            () = ctx.claims.notified() => {}
            () = tokio::time::sleep(CLAIM_RECHECK) => {}
            () = &mut stop => return,
        }
    }
}

/// What one round found about one pool.
#[derive(Default)]
struct PoolFindings {
    signals: Vec<(String, Signal)>,
    health: Option<Option<DnsblHealth>>,
}

async fn apply_round(ctx: &Context, round: ProbeRound, now: Timestamp) {
    let mut by_pool: BTreeMap<ObjectKey, PoolFindings> = BTreeMap::new();
    for (ip, signal) in round.signals {
        match owner_of(ctx, &ip) {
            Some(key) => by_pool.entry(key).or_default().signals.push((ip, signal)),
            None => tracing::debug!(ip = %ip, "a probe result for an IP no pool holds any more"),
        }
    }
    for (pool, health) in round.dnsbl_health {
        let Some((ns, name)) = pool.split_once('/') else {
            continue;
        };
        by_pool.entry(ObjectKey::new(ns, name)).or_default().health = Some(health);
    }
    for (key, findings) in by_pool {
        if let Err(e) = apply_to_pool(ctx, &key, findings, now).await {
            tracing::warn!(pool = %key, error = %e, "cannot record probe results");
        }
    }
}

fn owner_of(ctx: &Context, ip: &str) -> Option<ObjectKey> {
    let wanted: Option<IpAddr> = ip.trim().parse().ok();
    ctx.stores.pools.all().iter().find_map(|p| {
        p.spec
            .ips
            .iter()
            .any(|i| {
                i.address == ip || (wanted.is_some() && i.address.trim().parse().ok() == wanted)
            })
            .then(|| ObjectKey::new(namespace_of(&p.metadata), p.name_any()))
    })
}

async fn apply_to_pool(
    ctx: &Context,
    key: &ObjectKey,
    findings: PoolFindings,
    now: Timestamp,
) -> Result<(), OperatorError> {
    let (ns, name) = (key.namespace.as_str(), key.name.as_str());
    let lock = ctx.status_lock(ns, name);
    let _turn = lock.lock().await;
    let compute =
        |fresh: Arc<SenderPool>| std::future::ready(probe_status(ctx, key, &findings, fresh, now));
    let written = status_write::write_status(ctx, key, None, compute).await?;
    if let (Some(_), Some(transitions)) = (&written.written, &written.result) {
        for t in transitions {
            tracing::info!(pool = %key, ip = %t.ip, provider = %t.provider, from = ?t.from,
                to = %t.to, reason = %t.reason, "reputation moved");
        }
        let records = transition_events(key, transitions);
        ctx.publish(&written.object.object_ref(&()), &records).await;
    }
    Ok(())
}

/// The pool's status with the probes' signals and DNSBL health applied to
/// what is stored, and the reputation moves they made (`None`: the pool is
/// unusable or gone from the fleet, nothing to record).
fn probe_status(
    ctx: &Context,
    key: &ObjectKey,
    findings: &PoolFindings,
    fresh: Arc<SenderPool>,
    now: Timestamp,
) -> Result<Attempt<Option<Vec<Transition>>>, OperatorError> {
    let (ns, name) = (key.namespace.as_str(), key.name.as_str());
    let mut pools: Vec<Arc<SenderPool>> = ctx
        .stores
        .pools
        .all()
        .into_iter()
        .filter(|p| !(p.name_any() == name && p.namespace().as_deref() == Some(ns)))
        .collect();
    pools.push(fresh.clone());
    let routes = ctx.stores.routes.in_namespace(ns);
    let (_, mut fleet) = snapshot::fleet_of(ns, &pools, &routes)?;
    let mut transitions = Vec::new();
    for (ip, signal) in &findings.signals {
        match fleet.observe(ip, signal.clone(), now) {
            Ok(moves) => transitions.extend(moves),
            Err(e) => tracing::warn!(pool = %key, ip = %ip, error = %e, "probe signal refused"),
        }
    }
    let generation = fresh.metadata.generation;
    let Some(pool) = fleet.pools.iter_mut().find(|p| p.name_any() == name) else {
        return Ok(Attempt::Unchanged(None));
    };
    let status = pool.status.get_or_insert_with(Default::default);
    match &findings.health {
        Some(Some(health)) => health.set_on(&mut status.conditions, generation, now),
        Some(None) => status.conditions.retain(|c| c.type_ != DNSBL_HEALTHY),
        None => {}
    }
    Ok(Attempt::Write {
        old: status_write::encode("SenderPool", key, &fresh.status.clone().unwrap_or_default())?,
        new: status_write::encode("SenderPool", key, &*status)?,
        then: Some(transitions),
    })
}

#[cfg(test)]
mod feed_guard_tests {
    use super::*;
    use std::path::Path;

    fn pool_with_feed(url: &str) -> SenderPool {
        let m = crate::manifests::load_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet"),
        )
        .unwrap();
        let mut pool = m.pools[0].clone();
        pool.spec.reputation.feeds.snds = Some(
            serde_json::from_value(serde_json::json!({
                "url": url,
                "keySecretRef": {"name": "snds", "key": "key"}
            }))
            .unwrap(),
        );
        pool
    }

    #[test]
    fn a_feed_key_goes_only_to_the_providers_url_unless_allowed() {
        let mut pools = vec![
            pool_with_feed("https://sendersupport.olc.protection.outlook.com/snds/ipStatus.aspx"),
            pool_with_feed("http://attacker.example/collect"),
        ];
        let problems = feeds_to_known_urls(&mut pools, false);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("--allow-custom-feed-urls"),
            "{}",
            problems[0]
        );
        assert!(pools[0].spec.reputation.feeds.snds.is_some());
        assert!(pools[1].spec.reputation.feeds.snds.is_none());
        let mut allowed = vec![pool_with_feed("http://snds-proxy.mail.svc/ipStatus.aspx")];
        assert!(feeds_to_known_urls(&mut allowed, true).is_empty());
        assert!(allowed[0].spec.reputation.feeds.snds.is_some());
    }

    #[test]
    fn postmaster_credentials_go_only_to_google_unless_allowed() {
        let with = |spec: serde_json::Value| {
            let mut pool = pool_with_feed(SNDS_ORIGIN);
            pool.spec.reputation.feeds.snds = None;
            pool.spec.reputation.feeds.postmaster = Some(serde_json::from_value(spec).unwrap());
            pool
        };
        let base = serde_json::json!({
            "serviceAccountSecretRef": {"name": "pm", "key": "key.json"},
            "domains": ["news.example.com"]
        });
        let mut foreign_token = base.clone();
        foreign_token["tokenUrl"] = "https://collector.example/token".into();
        let mut google_api = base.clone();
        google_api["url"] = "https://gmailpostmastertools.googleapis.com".into();
        let mut lookalike = base.clone();
        lookalike["url"] = "https://gmailpostmastertools.googleapis.com.example".into();
        let mut pools = vec![
            with(base.clone()),
            with(foreign_token),
            with(google_api),
            with(lookalike),
        ];
        let problems = feeds_to_known_urls(&mut pools, false);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("postmaster.tokenUrl"), "{problems:?}");
        assert!(problems[1].contains("postmaster.url"), "{problems:?}");
        assert!(pools[3].spec.reputation.feeds.postmaster.is_none());
        let token_url = |p: &SenderPool| {
            p.spec
                .reputation
                .feeds
                .postmaster
                .as_ref()
                .map(|f| f.token_url.clone())
        };
        // The key file's token_uri is replaced by Google's endpoint.
        assert_eq!(
            token_url(&pools[0]),
            Some(Some(POSTMASTER_TOKEN_URL.to_string()))
        );
        assert_eq!(token_url(&pools[1]), None);
        assert!(pools[2].spec.reputation.feeds.postmaster.is_some());
        let mut allowed = vec![with(base)];
        assert!(feeds_to_known_urls(&mut allowed, true).is_empty());
        assert_eq!(token_url(&allowed[0]), Some(None));
    }

    #[test]
    fn only_a_labelled_secret_is_read_for_a_feed() {
        let mut secret = Secret::default();
        let err = feed_secret_allowed(&secret, "mail", "snds").unwrap_err();
        assert!(err.to_string().contains(FEED_SECRET_LABEL), "{err}");
        secret.metadata.labels = Some([(FEED_SECRET_LABEL.to_string(), "true".to_string())].into());
        assert!(feed_secret_allowed(&secret, "mail", "snds").is_ok());
    }
}
