//! The classifier a sender needs, carried in its configuration: the
//! providers the namespace's DomainRoutes declare (`yahoo-japan` for
//! `yahoo.co.jp`, ...) and the user's own rules (the ConfigMap a SenderPool
//! names in `spec.classifierRules`, in the format of `--rules`,
//! docs/CLASSIFIER.md).
//!
//! Both are keys of the sender configuration, so they reach a running sender
//! the way its routes do (the mounted ConfigMap, or a feedback response) and
//! are part of its `config-version`: a changed rule is a new version, which
//! the agent applies by rebuilding its classifier, without a restart.

use std::collections::BTreeMap;

use crate::api::DomainRoute;
use crate::fleet::declared_provider;
use crate::reputation::classifier::{ClassifierConfig, ClassifierError};
use crate::reputation::providers::ProviderSpec;

use super::sender_config::{content_digest, SenderConfig, CONFIG_VERSION_KEY};

/// The providers the routes declare, as a `providers:` document.
pub const PROVIDERS_KEY: &str = "classifier-providers.yaml";
/// The user's rules, as the SenderPool's rules ConfigMap holds them.
pub const RULES_KEY: &str = "classifier-rules.yaml";
/// The key a rules ConfigMap holds its rules under when the pool names none.
pub const DEFAULT_RULES_CONFIG_MAP_KEY: &str = "rules.yaml";

/// Whether a configuration key is the classifier's (not a Postfix file).
pub fn is_classifier_key(key: &str) -> bool {
    key == PROVIDERS_KEY || key == RULES_KEY
}

/// The `providers:` document of what `routes` declare, sorted by route
/// namespace and name so the text (and the config version) is stable.
pub fn declared_providers_yaml(routes: &[DomainRoute]) -> String {
    let mut sorted: Vec<&DomainRoute> = routes.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    let providers: Vec<ProviderSpec> = sorted.into_iter().filter_map(declared_provider).collect();
    if providers.is_empty() {
        return String::new();
    }
    let document = BTreeMap::from([("providers", providers)]);
    serde_saphyr::to_string(&document).unwrap_or_default()
}

/// `config` with the classifier keys added and its version computed again.
/// `rules` is the user's rules text (already checked with [`check_rules`]).
pub fn with_classifier(
    mut config: SenderConfig,
    providers_yaml: &str,
    rules: Option<&str>,
) -> SenderConfig {
    config.files.remove(CONFIG_VERSION_KEY);
    config.files.remove(PROVIDERS_KEY);
    config.files.remove(RULES_KEY);
    if !providers_yaml.is_empty() {
        config
            .files
            .insert(PROVIDERS_KEY.to_string(), providers_yaml.to_string());
    }
    if let Some(rules) = rules.filter(|r| !r.trim().is_empty()) {
        config
            .files
            .insert(RULES_KEY.to_string(), rules.to_string());
    }
    config.version = content_digest(&config.files);
    config
        .files
        .insert(CONFIG_VERSION_KEY.to_string(), config.version.clone());
    config
}

/// Whether a rules text builds a classifier together with the declared
/// providers, exactly as a sender will build it.
pub fn check_rules(providers_yaml: &str, rules: &str) -> Result<(), ClassifierError> {
    combine(Some(providers_yaml), Some(rules))
        .map(|config| crate::reputation::classifier::Classifier::with_config(config).map(|_| ()))?
}

/// The classifier configuration a sender configuration carries: `None` when
/// it has neither key (the agent keeps what its flags gave it).
pub fn classifier_config_of(
    files: &BTreeMap<String, Vec<u8>>,
) -> Option<Result<ClassifierConfig, ClassifierError>> {
    let text = |key: &str| {
        files
            .get(key)
            .map(|raw| String::from_utf8_lossy(raw).into_owned())
    };
    let providers = text(PROVIDERS_KEY);
    let rules = text(RULES_KEY);
    if providers.is_none() && rules.is_none() {
        return None;
    }
    Some(combine(providers.as_deref(), rules.as_deref()))
}

/// The user's providers and rules, then the declared providers (as
/// [`crate::fleet::Fleet::new`] combines `--rules` and the manifests).
fn combine(
    providers_yaml: Option<&str>,
    rules: Option<&str>,
) -> Result<ClassifierConfig, ClassifierError> {
    let mut config = ClassifierConfig::from_yaml(rules.unwrap_or_default())?;
    let declared = ClassifierConfig::from_yaml(providers_yaml.unwrap_or_default())?;
    config.providers.extend(declared.providers);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reputation::classifier::Classifier;
    use std::path::Path;

    fn example_routes() -> Vec<DomainRoute> {
        crate::manifests::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet"))
            .unwrap()
            .routes
    }

    fn files(config: &SenderConfig) -> BTreeMap<String, Vec<u8>> {
        config
            .files
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect()
    }

    #[test]
    fn declared_providers_and_rules_reach_the_classifier_of_a_sender() {
        let providers = declared_providers_yaml(&example_routes());
        assert!(providers.contains("yahoo-japan"), "{providers}");
        let rules = "rules:\n  - id: acme-block\n    provider: yahoo-japan\n    code: 5xx\n    text: [\"acme refused\"]\n    category: ip_blocklisted\n    conclusive: true\n";
        check_rules(&providers, rules).unwrap();
        let base = SenderConfig {
            version: "v0".into(),
            files: BTreeMap::from([("main.cf".to_string(), "x = 1\n".to_string())]),
        };
        let config = with_classifier(base.clone(), &providers, Some(rules));
        assert_ne!(config.version, base.version);
        assert_eq!(config.files[CONFIG_VERSION_KEY], config.version);
        let classifier =
            Classifier::with_config(classifier_config_of(&files(&config)).unwrap().unwrap())
                .unwrap();
        let provider = classifier.provider_of(Some("yahoo.co.jp"), None);
        assert_eq!(
            classifier.providers().name(provider).as_str(),
            "yahoo-japan"
        );
        assert!(classifier
            .rules()
            .iter()
            .any(|r| r.id.as_str() == "acme-block"));
        // The same inputs give the same version; another rule another one.
        assert_eq!(
            with_classifier(base.clone(), &providers, Some(rules)).version,
            config.version
        );
        assert_ne!(
            with_classifier(base.clone(), &providers, None).version,
            config.version
        );
        assert!(classifier_config_of(&files(&base)).is_none());
    }

    #[test]
    fn rules_that_do_not_parse_name_what_is_wrong() {
        let providers = declared_providers_yaml(&example_routes());
        let err = check_rules(
            &providers,
            "rules:\n  - id: x\n    provider: yahoo-japan\n    category: no_such_category\n",
        )
        .unwrap_err();
        assert!(!err.to_string().is_empty());
        let err = check_rules(&providers, "rulez: []\n").unwrap_err();
        assert!(err.to_string().contains("rulez"), "{err}");
    }
}
