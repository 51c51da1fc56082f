//! Puts the pure core together for one set of manifests: which providers exist,
//! how recipients are recognised, how the engine advances and what routes result.
//! Every driver (the offline commands, standalone, the operator) builds on this,
//! so they all judge the same evidence the same way.

use std::collections::BTreeMap;
use std::net::IpAddr;

use jiff::Timestamp;

use crate::api::{DomainRoute, SenderPool, SenderPoolStatus};
use crate::manifests::Manifests;
use crate::reputation::classifier::{Classifier, ClassifierConfig, ClassifierError};
use crate::reputation::engine::{self, EngineError, Signal, Transition};
use crate::reputation::providers::{well_known_domains, ProviderSpec};
use crate::routing::{self, RouteTable};
use crate::vocab::{BUILTIN_PROVIDERS, OTHER_PROVIDER};

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("DomainRoute {route}: spec.match declares provider `{provider}` in a way the classifier refuses: {source}")]
    Provider {
        route: String,
        provider: String,
        source: Box<ClassifierError>,
    },
    #[error(transparent)]
    Classifier(Box<ClassifierError>),
    #[error("SenderPool {pool}: {source}")]
    Engine { pool: String, source: EngineError },
    #[error("{ip} is not in any SenderPool; add it to a pool's spec.ips or pick one of: {known}")]
    UnknownIp { ip: String, known: String },
}

impl FleetError {
    /// A short word for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            FleetError::Provider { .. } | FleetError::Classifier(_) => "config",
            FleetError::Engine { .. } => "engine",
            FleetError::UnknownIp { .. } => "input",
        }
    }
}

/// Pools and routes with the classifier and provider list they imply.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub pools: Vec<SenderPool>,
    pub routes: Vec<DomainRoute>,
    pub classifier: Classifier,
    pub known_providers: Vec<String>,
}

impl Fleet {
    /// `extra` holds the user's own classifier rules and providers, if any.
    pub fn new(manifests: Manifests, extra: Option<ClassifierConfig>) -> Result<Self, FleetError> {
        let Manifests { pools, routes, .. } = manifests;
        let mut config = extra.unwrap_or_default();
        for route in &routes {
            if let Some(spec) = declared_provider(route) {
                // Checked one by one so a refused declaration names its route.
                Classifier::with_config(ClassifierConfig {
                    providers: vec![spec.clone()],
                    ..Default::default()
                })
                .map_err(|source| FleetError::Provider {
                    route: object_name(&route.metadata),
                    provider: route.spec.provider.clone(),
                    source: Box::new(source),
                })?;
                config.providers.push(spec);
            }
        }
        let classifier =
            Classifier::with_config(config).map_err(|e| FleetError::Classifier(Box::new(e)))?;
        Ok(Fleet {
            known_providers: known_providers(&routes),
            pools,
            routes,
            classifier,
        })
    }

    /// Advances every pool's reputation to `now` (timers, warm-up, overrides).
    pub fn advance(&mut self, now: Timestamp) -> Result<Vec<Transition>, FleetError> {
        let mut all = Vec::new();
        for pool in &mut self.pools {
            let status = pool.status.get_or_insert_with(SenderPoolStatus::default);
            let transitions = engine::tick(&pool.spec, status, &self.known_providers, now)
                .map_err(|source| FleetError::Engine {
                    pool: object_name(&pool.metadata),
                    source,
                })?;
            all.extend(transitions);
        }
        Ok(all)
    }

    /// Feeds one signal about `ip` to the pool that owns it.
    pub fn observe(
        &mut self,
        ip: &str,
        signal: Signal,
        now: Timestamp,
    ) -> Result<Vec<Transition>, FleetError> {
        let wanted: Option<IpAddr> = ip.parse().ok();
        let owner = self.pools.iter_mut().find(|p| {
            p.spec
                .ips
                .iter()
                .any(|i| i.address == ip || (wanted.is_some() && i.address.parse().ok() == wanted))
        });
        let Some(pool) = owner else {
            let known: Vec<&str> = self
                .pools
                .iter()
                .flat_map(|p| p.spec.ips.iter().map(|i| i.address.as_str()))
                .collect();
            return Err(FleetError::UnknownIp {
                ip: ip.to_string(),
                known: known.join(", "),
            });
        };
        let address = pool
            .spec
            .ips
            .iter()
            .find(|i| i.address == ip || i.address.parse().ok() == wanted)
            .map(|i| i.address.clone())
            .unwrap_or_else(|| ip.to_string());
        let status = pool.status.get_or_insert_with(SenderPoolStatus::default);
        engine::observe(
            &pool.spec,
            status,
            &address,
            signal,
            &self.known_providers,
            now,
        )
        .map_err(|source| FleetError::Engine {
            pool: object_name(&pool.metadata),
            source,
        })
    }

    /// Remembers, in every route matching `mx_host`, that `domain` is served by it.
    pub fn learn_domain(&mut self, domain: &str, mx_host: &str, now: Timestamp) {
        for route in &mut self.routes {
            let status = route.status.get_or_insert_with(Default::default);
            routing::learned::learn(status, &route.spec, domain, mx_host, now);
        }
    }

    /// The effective route table at `now`.
    pub fn compile(&self, now: Timestamp) -> RouteTable {
        routing::compile(&self.pools, &self.routes, now)
    }

    /// Recipient domains per provider for transport maps: the builtin lists plus
    /// every exact domain a route or declared provider names.
    pub fn known_domains(&self) -> BTreeMap<String, Vec<String>> {
        let mut out = well_known_domains();
        for spec in self.classifier.providers().specs() {
            let exact = spec.domains.iter().filter(|d| !d.contains('*')).cloned();
            out.entry(spec.name.clone()).or_default().extend(exact);
        }
        for domains in out.values_mut() {
            domains.sort();
            domains.dedup();
        }
        out
    }

    /// The newest time recorded anywhere in the pools' status: "as of" a snapshot.
    pub fn snapshot_time(&self) -> Option<Timestamp> {
        let mut newest: Option<Timestamp> = None;
        let mut see = |t: Timestamp| newest = Some(newest.map_or(t, |n| n.max(t)));
        for status in self.pools.iter().filter_map(|p| p.status.as_ref()) {
            for ip in &status.ips {
                for pair in &ip.reputation {
                    see(pair.since.0);
                    pair.window.iter().for_each(|b| see(b.start.0));
                }
                ip.dnsbl.iter().for_each(|d| see(d.checked_at.0));
                ip.feeds.iter().for_each(|f| see(f.checked_at.0));
            }
        }
        newest
    }
}

/// Builtin providers, `other`, and every provider a route names; sorted. The
/// builtin gateways (`proofpoint`, ...) are recognised by the classifier but
/// not listed here: a pool-wide signal (a DNSBL listing) creates pairs only for
/// these, and a gateway gets its pair from its first report.
pub fn known_providers(routes: &[DomainRoute]) -> Vec<String> {
    let mut out: Vec<String> = BUILTIN_PROVIDERS.iter().map(|p| p.to_string()).collect();
    out.push(OTHER_PROVIDER.to_string());
    out.extend(routes.iter().map(|r| r.spec.provider.clone()));
    out.sort();
    out.dedup();
    out
}

/// What a route teaches the classifier about its provider: its exact domains,
/// domain suffixes and MX host suffixes. The default route and routes for
/// `other` teach nothing.
pub fn declared_provider(route: &DomainRoute) -> Option<ProviderSpec> {
    let m = &route.spec.match_;
    if route.spec.provider == OTHER_PROVIDER || m.default == Some(true) {
        return None;
    }
    let mut spec = ProviderSpec::new(&route.spec.provider);
    if let Some(domains) = &m.domains {
        spec = spec.domains(domains.iter().cloned());
    }
    if let Some(suffixes) = &m.domain_suffixes {
        spec = spec.domains(
            suffixes
                .iter()
                .map(|s| format!("*.{}", s.trim_start_matches(['.', '*']))),
        );
    }
    if let Some(suffixes) = &m.mx_host_suffixes {
        spec = spec.mx_host_suffixes(suffixes.iter().cloned());
    }
    Some(spec)
}

fn object_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ReputationState;
    use crate::reputation::tally::Tally;
    use std::path::Path;

    fn example_fleet() -> Fleet {
        let m = crate::manifests::load_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet"),
        )
        .unwrap();
        Fleet::new(m, None).unwrap()
    }

    #[test]
    fn routes_declare_providers_and_teach_the_classifier() {
        let fleet = example_fleet();
        assert!(fleet.known_providers.contains(&"yahoo-japan".to_string()));
        assert!(fleet.known_providers.contains(&"other".to_string()));
        assert_eq!(
            fleet
                .classifier
                .providers()
                .name(fleet.classifier.provider_of(Some("yahoo.co.jp"), None))
                .as_str(),
            "yahoo-japan"
        );
        assert_eq!(
            fleet
                .classifier
                .providers()
                .name(fleet.classifier.provider_of(Some("yahoo.com"), None))
                .as_str(),
            "yahoo"
        );
        let domains = fleet.known_domains();
        assert!(domains["yahoo-japan"].contains(&"ybb.ne.jp".to_string()));
        assert!(domains["microsoft"].contains(&"hotmail.co.jp".to_string()));
    }

    #[test]
    fn a_conclusive_reply_reroutes_microsoft_only() {
        let mut fleet = example_fleet();
        let now: Timestamp = "2026-11-29T08:10:00Z".parse().unwrap();
        fleet.advance(now).unwrap();
        let reply = "550 5.7.606 Access denied, banned sending IP [203.0.113.12]";
        let mut tally = Tally::default();
        tally.add(
            &fleet.classifier.classify_text(
                reply,
                Some("acclaim.jp"),
                Some("acclaim-jp.mail.protection.outlook.com"),
            ),
            reply,
            now,
        );
        for feedback in tally.drain() {
            fleet
                .observe("203.0.113.12", Signal::Feedback(feedback), now)
                .unwrap();
        }
        let table = fleet.compile(now);
        let ms = table
            .routes
            .iter()
            .find(|r| r.provider == "microsoft")
            .unwrap();
        assert!(ms.targets.iter().all(|t| t.ip != "203.0.113.12"));
        assert!(ms
            .excluded
            .iter()
            .any(|e| e.ip == "203.0.113.12" && e.state == ReputationState::Blocked));
        let google = table
            .routes
            .iter()
            .find(|r| r.provider == "google")
            .unwrap();
        assert!(google.targets.iter().any(|t| t.ip == "203.0.113.12"));
        assert!(matches!(
            fleet.observe("192.0.2.1", Signal::Feedback(Default::default()), now),
            Err(FleetError::UnknownIp { .. })
        ));
    }
}
