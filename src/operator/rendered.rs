//! The sender config a feedback answer names, kept per table version.
//!
//! Every answer carries the version of the reporting IP's sender config (and
//! its files when the agent runs another version). Rendering it walks the
//! whole route table, so rendering it for every report made each report cost
//! as much as the namespace is large. A config depends only on the snapshot
//! it is rendered from and on the pool's classifier rules, so its version is
//! kept per IP until the snapshot moves; at steady state an agent already
//! runs that version and its answer is a lookup. Files are never kept (20,000
//! IPs' transport maps would not fit): an agent that is behind gets them
//! rendered once, after which it reports the new version.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use kube::ResourceExt;

use super::sender_checks::RulesMemory;
use super::snapshot::Snapshot;
use crate::agent::report::ConfigHint;
use crate::routing::classifier_files::{declared_providers_yaml, with_classifier};
use crate::routing::postfix::{self, PostfixOptions};
use crate::routing::sender_config::{sender_config_with, SenderConfig};
use crate::routing::sending::SendingSettings;

/// Sender config versions by namespace, for the snapshot they came from.
#[derive(Default)]
pub struct RenderedConfigs {
    by_namespace: Mutex<HashMap<String, Rendered>>,
    /// Configs rendered in full since the start (what the cache saves shows
    /// against the reports answered).
    renders: AtomicU64,
}

struct Rendered {
    /// Weak: an old snapshot is never kept alive for its versions, and its
    /// allocation cannot be reused by a newer one while this points at it.
    snapshot: Weak<Snapshot>,
    inputs: Arc<Inputs>,
    /// `pool/ip` -> (digest of the pool's rules text, config version).
    versions: HashMap<String, (u64, String)>,
}

/// What every IP's config of one snapshot shares.
struct Inputs {
    known_domains: BTreeMap<String, Vec<String>>,
    providers_yaml: String,
}

impl RenderedConfigs {
    /// The hint for an agent of `pool` sending from `ip` (as the pool's spec
    /// writes it) that runs `agent_version`: the current version, with the
    /// files when the agent's differs. `None` when the config cannot be
    /// rendered yet (the pool's classifier rules were not read since the
    /// operator started) or at all (logged).
    pub fn hint(
        &self,
        snapshot: &Arc<Snapshot>,
        namespace: &str,
        pool: &str,
        ip: &str,
        agent_version: Option<&str>,
        rules: &RulesMemory,
    ) -> Option<ConfigHint> {
        let fleet = &snapshot.fleet;
        let names_rules = fleet
            .pools
            .iter()
            .find(|p| p.name_any() == pool && p.metadata.namespace.as_deref() == Some(namespace))
            .is_some_and(|p| p.spec.classifier_rules.is_some());
        let rules = if names_rules {
            rules.get(&format!("{namespace}/{pool}"))?
        } else {
            None
        };
        let rules_digest = {
            let mut h = DefaultHasher::new();
            rules.hash(&mut h);
            h.finish()
        };
        let key = format!("{pool}/{ip}");
        let (inputs, known) = self.lookup(snapshot, namespace, &key);
        if let Some((digest, version)) = known {
            if digest == rules_digest && agent_version == Some(version.as_str()) {
                return Some(ConfigHint {
                    version,
                    files: None,
                });
            }
        }
        let config = render(snapshot, &inputs, namespace, pool, ip, rules.as_deref())?;
        self.renders.fetch_add(1, Ordering::Relaxed);
        self.remember(snapshot, namespace, key, rules_digest, &config.version);
        let current = agent_version == Some(config.version.as_str());
        Some(ConfigHint {
            version: config.version,
            files: (!current).then_some(config.files),
        })
    }

    /// Configs rendered in full so far.
    pub fn renders(&self) -> u64 {
        self.renders.load(Ordering::Relaxed)
    }

    /// The shared inputs of `snapshot` and the version kept for `key`,
    /// starting over when the namespace's snapshot moved.
    fn lookup(
        &self,
        snapshot: &Arc<Snapshot>,
        namespace: &str,
        key: &str,
    ) -> (Arc<Inputs>, Option<(u64, String)>) {
        if let Some(rendered) = self.lock().get(namespace).filter(|r| is_for(r, snapshot)) {
            return (rendered.inputs.clone(), rendered.versions.get(key).cloned());
        }
        // Built outside the lock: other namespaces' answers do not wait.
        let inputs = Arc::new(Inputs {
            known_domains: snapshot.fleet.known_domains(),
            providers_yaml: declared_providers_yaml(&snapshot.fleet.routes),
        });
        let mut all = self.lock();
        // Namespaces whose snapshot is gone answer no more reports.
        all.retain(|_, r| r.snapshot.strong_count() > 0);
        let rendered = all
            .entry(namespace.to_string())
            .and_modify(|r| {
                if !is_for(r, snapshot) {
                    *r = Rendered::new(snapshot, inputs.clone());
                }
            })
            .or_insert_with(|| Rendered::new(snapshot, inputs.clone()));
        (rendered.inputs.clone(), rendered.versions.get(key).cloned())
    }

    fn remember(
        &self,
        snapshot: &Arc<Snapshot>,
        namespace: &str,
        key: String,
        rules_digest: u64,
        version: &str,
    ) {
        if let Some(rendered) = self
            .lock()
            .get_mut(namespace)
            .filter(|r| is_for(r, snapshot))
        {
            rendered
                .versions
                .insert(key, (rules_digest, version.to_string()));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Rendered>> {
        self.by_namespace.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Rendered {
    fn new(snapshot: &Arc<Snapshot>, inputs: Arc<Inputs>) -> Self {
        Rendered {
            snapshot: Arc::downgrade(snapshot),
            inputs,
            versions: HashMap::new(),
        }
    }
}

fn is_for(rendered: &Rendered, snapshot: &Arc<Snapshot>) -> bool {
    std::ptr::eq(rendered.snapshot.as_ptr(), Arc::as_ptr(snapshot))
}

/// The full sender config of one IP, as its ConfigMap carries it.
fn render(
    snapshot: &Snapshot,
    inputs: &Inputs,
    namespace: &str,
    pool: &str,
    ip: &str,
    rules: Option<&str>,
) -> Option<SenderConfig> {
    let pools = &snapshot.fleet.pools;
    let sender = postfix::sender_in(pools, namespace, pool, ip);
    let config = sender_config_with(
        &snapshot.table,
        &sender,
        &inputs.known_domains,
        &PostfixOptions::default(),
        &SendingSettings::find(pools, &sender),
    )
    .map_err(|e| tracing::warn!(error = %e, "cannot render the sender config for the reply"))
    .ok()?;
    Some(with_classifier(config, &inputs.providers_yaml, rules))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DomainRoute, SenderPool};
    use crate::operator::build::namespace_of;
    use crate::operator::snapshot::build;
    use crate::routing::classifier_files::declared_providers_yaml;
    use crate::routing::example::incident_fleet;

    fn snapshot() -> Arc<Snapshot> {
        let now = "2021-11-05T08:10:00Z".parse().unwrap();
        let (pools, routes) = incident_fleet(now);
        let ns = namespace_of(&routes[0].metadata);
        let pools: Vec<Arc<SenderPool>> = pools.into_iter().map(Arc::new).collect();
        let routes: Vec<Arc<DomainRoute>> = routes.into_iter().map(Arc::new).collect();
        Arc::new(build(&ns, &pools, &routes, now).unwrap())
    }

    /// The config rendered the way every answer rendered it before the cache.
    fn fresh(snapshot: &Snapshot, ns: &str, pool: &str, ip: &str) -> SenderConfig {
        let fleet = &snapshot.fleet;
        let sender = postfix::sender_in(&fleet.pools, ns, pool, ip);
        let config = sender_config_with(
            &snapshot.table,
            &sender,
            &fleet.known_domains(),
            &PostfixOptions::default(),
            &SendingSettings::find(&fleet.pools, &sender),
        )
        .unwrap();
        with_classifier(config, &declared_providers_yaml(&fleet.routes), None)
    }

    fn first_ip(snapshot: &Snapshot) -> (String, String, String) {
        let pool = &snapshot.fleet.pools[0];
        (
            namespace_of(&pool.metadata),
            pool.name_any(),
            pool.spec.ips[0].address.clone(),
        )
    }

    #[test]
    fn an_agent_on_the_current_version_costs_no_render() {
        let snapshot = snapshot();
        let (ns, pool, ip) = first_ip(&snapshot);
        let expected = fresh(&snapshot, &ns, &pool, &ip);
        let configs = RenderedConfigs::default();
        let rules = RulesMemory::default();

        // An agent that runs no config yet gets the files, rendered once.
        let hint = configs
            .hint(&snapshot, &ns, &pool, &ip, None, &rules)
            .unwrap();
        assert_eq!(hint.version, expected.version);
        assert_eq!(hint.files.as_ref(), Some(&expected.files));
        assert_eq!(configs.renders(), 1);

        // Reporting that version again and again renders nothing.
        for _ in 0..3 {
            let hint = configs
                .hint(&snapshot, &ns, &pool, &ip, Some(&expected.version), &rules)
                .unwrap();
            assert_eq!(hint.version, expected.version);
            assert_eq!(hint.files, None);
        }
        assert_eq!(configs.renders(), 1);

        // An agent on an older version gets the files again.
        let hint = configs
            .hint(&snapshot, &ns, &pool, &ip, Some("older"), &rules)
            .unwrap();
        assert_eq!(hint.files.as_ref(), Some(&expected.files));
        assert_eq!(configs.renders(), 2);
    }

    #[test]
    fn a_new_snapshot_renders_again() {
        let first = snapshot();
        let (ns, pool, ip) = first_ip(&first);
        let configs = RenderedConfigs::default();
        let rules = RulesMemory::default();
        let version = configs
            .hint(&first, &ns, &pool, &ip, None, &rules)
            .unwrap()
            .version;
        // Equal content, another table version: the kept version is not
        // trusted across snapshots.
        let second = snapshot();
        let hint = configs
            .hint(&second, &ns, &pool, &ip, Some(&version), &rules)
            .unwrap();
        assert_eq!(hint.version, version);
        assert_eq!(hint.files, None);
        assert_eq!(configs.renders(), 2);
        // The old snapshot's versions are gone with it.
        configs
            .hint(&first, &ns, &pool, &ip, Some(&version), &rules)
            .unwrap();
        assert_eq!(configs.renders(), 3);
    }
}
