//! What a pool's senders read besides their routes, checked by the operator
//! before it reaches them: the classifier rules ConfigMap the pool names
//! (`spec.classifierRules`) and the relay Secrets its namespace's routes name
//! (`credentialsSecret`). Each check is a pool condition, with an Event when
//! it turns False, naming the field and the fix; a bad input never replaces
//! the last good one:
//!
//! - rules that do not parse are not copied into the sender configurations:
//!   the last good rules (remembered here, else read back from a sender
//!   ConfigMap after a restart) stay in them;
//! - a relay Secret that is missing or lacks `username`/`password` leaves the
//!   sender's password map as it was for that relay ([`crate::sender::relay_login`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;

use super::build::validate::ObjectProblem;
use super::context::Context;
use super::error::api_status;
use crate::api::conditions::set_condition;
use crate::api::{ClassifierRulesRef, Condition, ConditionStatus, DomainRoute, SenderPool};
use crate::routing::classifier_files::{check_rules, RULES_KEY};

/// The pool condition of the classifier rules ConfigMap.
pub const CLASSIFIER_RULES_VALID: &str = "ClassifierRulesValid";
/// The pool condition of the relay Secrets.
pub const RELAY_CREDENTIALS_VALID: &str = "RelayCredentialsValid";

/// The outcome of one check: its condition and what is wrong (empty: fine).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub condition: &'static str,
    pub problems: Vec<ObjectProblem>,
    pub ok_reason: &'static str,
    pub ok_message: String,
}

impl Check {
    /// Sets the check's condition.
    pub fn set(&self, conditions: &mut Vec<Condition>, generation: Option<i64>, now: Timestamp) {
        match self.problems.first() {
            None => set_condition(
                conditions,
                self.condition,
                ConditionStatus::True,
                self.ok_reason,
                self.ok_message.clone(),
                generation,
                now,
            ),
            Some(first) => set_condition(
                conditions,
                self.condition,
                ConditionStatus::False,
                first.reason,
                self.problems
                    .iter()
                    .map(|p| format!("{}: {}", p.field, p.message))
                    .collect::<Vec<_>>()
                    .join("; "),
                generation,
                now,
            ),
        }
    }
}

/// The rules text to hand the senders, or the problem with the ConfigMap.
/// `fetched` is the ConfigMap (`None`: it does not exist).
pub fn rules_from(
    reference: &ClassifierRulesRef,
    fetched: Option<&ConfigMap>,
    providers_yaml: &str,
) -> Result<String, ObjectProblem> {
    let keep = "the senders keep the last good rules meanwhile";
    let Some(config_map) = fetched else {
        return Err(ObjectProblem {
            reason: "ClassifierRulesNotFound",
            field: "spec.classifierRules.configMap".into(),
            message: format!(
                "ConfigMap {} does not exist in the pool's namespace; create it with the key `{}` holding rules in the format of `mailfleet --rules` (docs/CLASSIFIER.md), or remove spec.classifierRules; {keep}",
                reference.config_map, reference.key
            ),
        });
    };
    let text = config_map
        .data
        .as_ref()
        .and_then(|d| d.get(&reference.key))
        .cloned()
        .or_else(|| {
            config_map
                .binary_data
                .as_ref()
                .and_then(|d| d.get(&reference.key))
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
        });
    let Some(text) = text else {
        let keys: Vec<&String> = config_map.data.iter().flat_map(|d| d.keys()).collect();
        return Err(ObjectProblem {
            reason: "ClassifierRulesKeyMissing",
            field: "spec.classifierRules.key".into(),
            message: format!(
                "ConfigMap {} has no key `{}` (it has: {keys:?}); set spec.classifierRules.key to the key that holds the rules, or add that key; {keep}",
                reference.config_map, reference.key
            ),
        });
    };
    check_rules(providers_yaml, &text).map_err(|e| ObjectProblem {
        reason: "ClassifierRulesInvalid",
        field: format!(
            "ConfigMap {} key {}",
            reference.config_map, reference.key
        ),
        message: format!(
            "{e}; fix the document (check it with `mailfleet classify --rules FILE`, docs/CLASSIFIER.md gives the format); {keep}"
        ),
    })?;
    Ok(text)
}

/// What is wrong with the relay Secrets the routes name. `secrets` holds
/// each named Secret as read (`None`: it does not exist); a Secret missing
/// from the map could not be read and is not judged.
pub fn relay_secret_problems(
    routes: &[DomainRoute],
    secrets: &BTreeMap<String, Option<Secret>>,
) -> Vec<ObjectProblem> {
    let mut problems = Vec::new();
    for route in routes {
        let route_name = format!(
            "{}/{}",
            route.metadata.namespace.as_deref().unwrap_or_default(),
            route.metadata.name.as_deref().unwrap_or_default()
        );
        for (index, fallback) in route.spec.fallback.iter().enumerate() {
            let Some(name) = fallback
                .relay
                .as_ref()
                .and_then(|r| r.credentials_secret.as_ref())
                .map(|s| s.name.clone())
            else {
                continue;
            };
            let field =
                format!("DomainRoute {route_name} spec.fallback[{index}].relay.credentialsSecret");
            let Some(found) = secrets.get(&name) else {
                continue;
            };
            let Some(secret) = found else {
                problems.push(ObjectProblem {
                    reason: "RelaySecretNotFound",
                    field,
                    message: format!("Secret {name} does not exist; create it in the namespace with the keys username and password (kubectl create secret generic {name} --from-literal=username=... --from-literal=password=...); the senders keep the last good login for this relay, and without one its mail is deferred, never bounced"),
                });
                continue;
            };
            let missing: Vec<&str> = ["username", "password"]
                .into_iter()
                .filter(|key| {
                    secret
                        .data
                        .as_ref()
                        .and_then(|d| d.get(*key))
                        .is_none_or(|v| v.0.is_empty())
                })
                .collect();
            if !missing.is_empty() {
                problems.push(ObjectProblem {
                    reason: "RelaySecretIncomplete",
                    field,
                    message: format!("Secret {name} lacks the key(s) {} (or they are empty); add them (kubectl create secret generic {name} --from-literal=username=... --from-literal=password=... --dry-run=client -o yaml | kubectl apply -f -); the senders keep the last good login for this relay meanwhile", missing.join(" and ")),
                });
            }
        }
    }
    problems
}

/// The pools (`ns/name`) whose `spec.classifierRules` names `config_map`.
pub fn pools_naming(pools: &[std::sync::Arc<SenderPool>], config_map: &ConfigMap) -> Vec<String> {
    let (Some(ns), Some(name)) = (&config_map.metadata.namespace, &config_map.metadata.name) else {
        return Vec::new();
    };
    pools
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|p| {
            p.spec
                .classifier_rules
                .as_ref()
                .is_some_and(|r| &r.config_map == name)
        })
        .filter_map(|p| Some(format!("{ns}/{}", p.metadata.name.as_deref()?)))
        .collect()
}

/// The last good rules text of each pool (`ns/name`).
#[derive(Default)]
pub struct RulesMemory {
    last_good: Mutex<HashMap<String, Option<String>>>,
}

impl RulesMemory {
    /// `Some(rules)` when the pool's rules were resolved since the operator
    /// started (`Some(None)`: it names none).
    pub fn get(&self, pool: &str) -> Option<Option<String>> {
        self.last_good
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(pool)
            .cloned()
    }

    /// Drops a deleted pool's entry.
    pub fn forget(&self, pool: &str) {
        self.last_good
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(pool);
    }

    fn set(&self, pool: &str, rules: Option<String>) {
        self.last_good
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pool.to_string(), rules);
    }
}

/// The rules to hand `pool`'s senders and the check of its rules
/// ConfigMap (`None` when the pool names none).
pub async fn resolve_rules(
    ctx: &Context,
    pool: &SenderPool,
    pool_key: &str,
    ns: &str,
    providers_yaml: &str,
    a_sender_config_map: Option<&str>,
) -> (Option<String>, Option<Check>) {
    let Some(reference) = &pool.spec.classifier_rules else {
        ctx.classifier_rules.set(pool_key, None);
        return (None, None);
    };
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let fetched = match api.get(&reference.config_map).await {
        Ok(cm) => Some(cm),
        Err(e) if api_status(&e) == Some(404) => None,
        Err(e) => {
            tracing::warn!(error = %e, config_map = %reference.config_map, "cannot read the classifier rules ConfigMap now; the senders keep the rules they have");
            return (
                last_good(ctx, pool_key, &api, a_sender_config_map).await,
                None,
            );
        }
    };
    let ok_message = format!(
        "the rules of ConfigMap {} key {} are in every sender's configuration",
        reference.config_map, reference.key
    );
    match rules_from(reference, fetched.as_ref(), providers_yaml) {
        Ok(text) => {
            ctx.classifier_rules.set(pool_key, Some(text.clone()));
            let check = Check {
                condition: CLASSIFIER_RULES_VALID,
                problems: Vec::new(),
                ok_reason: "RulesLoaded",
                ok_message,
            };
            (Some(text), Some(check))
        }
        Err(problem) => {
            let rules = last_good(ctx, pool_key, &api, a_sender_config_map).await;
            let check = Check {
                condition: CLASSIFIER_RULES_VALID,
                problems: vec![problem],
                ok_reason: "RulesLoaded",
                ok_message,
            };
            (rules, Some(check))
        }
    }
}

/// The rules last handed to the senders: remembered, else read back from a
/// sender ConfigMap (after a restart).
async fn last_good(
    ctx: &Context,
    pool_key: &str,
    api: &Api<ConfigMap>,
    a_sender_config_map: Option<&str>,
) -> Option<String> {
    if let Some(rules) = ctx.classifier_rules.get(pool_key) {
        return rules;
    }
    let name = a_sender_config_map?;
    let rules = match api.get(name).await {
        Ok(cm) => cm.data.and_then(|mut d| d.remove(RULES_KEY)),
        Err(_) => return None,
    };
    ctx.classifier_rules.set(pool_key, rules.clone());
    rules
}

/// The check of the relay Secrets `routes` name (`None` when they name none).
pub async fn check_relay_secrets(ctx: &Context, ns: &str, routes: &[DomainRoute]) -> Option<Check> {
    let mut names: Vec<String> = routes
        .iter()
        .flat_map(|r| r.spec.fallback.iter())
        .filter_map(|f| f.relay.as_ref()?.credentials_secret.as_ref())
        .map(|s| s.name.clone())
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return None;
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut secrets = BTreeMap::new();
    for name in &names {
        match api.get(name).await {
            Ok(secret) => {
                secrets.insert(name.clone(), Some(secret));
            }
            Err(e) if api_status(&e) == Some(404) => {
                secrets.insert(name.clone(), None);
            }
            Err(e) => {
                tracing::warn!(error = %e, secret = %name, "cannot read a relay Secret now; its check waits for the next reconcile")
            }
        }
    }
    Some(Check {
        condition: RELAY_CREDENTIALS_VALID,
        problems: relay_secret_problems(routes, &secrets),
        ok_reason: "SecretsComplete",
        ok_message: format!(
            "the relay Secrets {} have username and password",
            names.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn reference() -> ClassifierRulesRef {
        ClassifierRulesRef {
            config_map: "my-rules".into(),
            key: "rules.yaml".into(),
        }
    }

    fn config_map(key: &str, text: &str) -> ConfigMap {
        ConfigMap {
            data: Some(BTreeMap::from([(key.to_string(), text.to_string())])),
            ..Default::default()
        }
    }

    #[test]
    fn a_rules_config_map_is_found_keyed_and_parsed_or_says_which_field_to_fix() {
        let good = "rules:\n  - id: acme\n    code: 5xx\n    text: [acme refused]\n    category: ip_blocklisted\n";
        assert_eq!(
            rules_from(&reference(), Some(&config_map("rules.yaml", good)), "").unwrap(),
            good
        );
        let missing = rules_from(&reference(), None, "").unwrap_err();
        assert_eq!(missing.field, "spec.classifierRules.configMap");
        assert!(missing.message.contains("create it"), "{}", missing.message);
        let no_key =
            rules_from(&reference(), Some(&config_map("other.yaml", good)), "").unwrap_err();
        assert_eq!(no_key.field, "spec.classifierRules.key");
        assert!(no_key.message.contains("other.yaml"), "{}", no_key.message);
        let bad = rules_from(
            &reference(),
            Some(&config_map(
                "rules.yaml",
                "rules:\n  - id: x\n    category: nonsense\n",
            )),
            "",
        )
        .unwrap_err();
        assert_eq!(bad.reason, "ClassifierRulesInvalid");
        assert_eq!(bad.field, "ConfigMap my-rules key rules.yaml");
        assert!(bad.message.contains("last good rules"), "{}", bad.message);
    }

    #[test]
    fn relay_secrets_missing_or_incomplete_name_the_route_field_and_the_fix() {
        let routes: Vec<DomainRoute> = crate::manifests::load_dir(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet"),
        )
        .unwrap()
        .routes;
        let (route, index, secret) = routes
            .iter()
            .find_map(|r| {
                r.spec.fallback.iter().enumerate().find_map(|(i, f)| {
                    let name = f.relay.as_ref()?.credentials_secret.as_ref()?.name.clone();
                    Some((r.clone(), i, name))
                })
            })
            .expect("the example fleet has a relay with credentials");
        let routes = vec![route.clone()];
        let field = format!(
            "DomainRoute {}/{} spec.fallback[{index}].relay.credentialsSecret",
            route.metadata.namespace.clone().unwrap_or_default(),
            route.metadata.name.clone().unwrap_or_default()
        );
        let missing = relay_secret_problems(&routes, &BTreeMap::from([(secret.clone(), None)]));
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].field, field);
        assert_eq!(missing[0].reason, "RelaySecretNotFound");
        let half = Secret {
            data: Some(BTreeMap::from([(
                "username".to_string(),
                ByteString(b"mailer".to_vec()),
            )])),
            ..Default::default()
        };
        let incomplete =
            relay_secret_problems(&routes, &BTreeMap::from([(secret.clone(), Some(half))]));
        assert!(incomplete[0].message.contains("lacks the key(s) password"));
        let full = Secret {
            data: Some(BTreeMap::from([
                ("username".to_string(), ByteString(b"mailer".to_vec())),
                ("password".to_string(), ByteString(b"s3cret".to_vec())),
            ])),
            ..Default::default()
        };
        assert!(
            relay_secret_problems(&routes, &BTreeMap::from([(secret.clone(), Some(full))]))
                .is_empty()
        );
        // A Secret that could not be read is not judged.
        assert!(relay_secret_problems(&routes, &BTreeMap::new()).is_empty());
    }
}
