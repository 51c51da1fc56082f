//! Reads SenderPool and DomainRoute manifests (with their status, if any) from a
//! folder of YAML files, the way a GitOps repository keeps them.
//!
//! Every document is checked against the CRD schema and CEL rules before it is
//! used, so a broken manifest is refused with its file, document and field path.
//! Documents of other kinds (Namespaces, Secrets, ...) are skipped: such folders
//! usually hold them too.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResourceExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::validate::{crd_schema, validate, Violation};
use crate::api::{DomainRoute, SenderPool};

const API_VERSION: &str = "mailfleet.io/v1alpha1";

/// The mailfleet objects found in a folder.
#[derive(Debug, Default, Clone)]
pub struct Manifests {
    pub pools: Vec<SenderPool>,
    pub routes: Vec<DomainRoute>,
    /// Documents of other kinds, as `file (document N) Kind`.
    pub skipped: Vec<String>,
}

impl Manifests {
    /// Applies a status-only document (kind, metadata and `status`, no `spec`) to
    /// the object it names: the shape of a status snapshot taken from a cluster.
    fn apply_status(
        &mut self,
        doc: &Value,
        kind: &str,
        source: &Source,
    ) -> Result<(), ManifestError> {
        let mut meta: ObjectMeta =
            serde_json::from_value(doc.get("metadata").cloned().unwrap_or(Value::Null))
                .unwrap_or_default();
        default_namespace(&mut meta);
        let status = doc.get("status").cloned().unwrap_or(Value::Null);
        let invalid = |violations| ManifestError::Invalid {
            source_: Box::new(source.clone()),
            kind: kind.to_string(),
            name: meta.name.clone().unwrap_or_default(),
            violations,
        };
        let missing = || {
            invalid(vec![Violation {
                path: "metadata.name".into(),
                message: format!("a status-only document must name a {kind} defined in an earlier file or source"),
            }])
        };
        let wanted = key(kind, &meta);
        if kind == "SenderPool" {
            let pool = self
                .pools
                .iter_mut()
                .find(|p| key(kind, &p.metadata) == wanted)
                .ok_or_else(missing)?;
            pool.status = Some(status_of(&status, &SenderPool::crd()).map_err(invalid)?);
        } else {
            let route = self
                .routes
                .iter_mut()
                .find(|r| key(kind, &r.metadata) == wanted)
                .ok_or_else(missing)?;
            route.status = Some(status_of(&status, &DomainRoute::crd()).map_err(invalid)?);
        }
        Ok(())
    }
}

fn status_of<T: DeserializeOwned>(
    status: &Value,
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Result<T, Vec<Violation>> {
    let schema = crd_schema(crd);
    let violations: Vec<Violation> = validate(&schema["properties"]["status"], status)
        .into_iter()
        .map(|v| Violation {
            path: format!("status.{}", v.path.trim_start_matches("(object)"))
                .trim_end_matches('.')
                .to_string(),
            ..v
        })
        .collect();
    if !violations.is_empty() {
        return Err(violations);
    }
    serde_path_to_error::deserialize(status).map_err(|e| {
        vec![Violation {
            path: format!("status.{}", e.path()),
            message: e.inner().to_string(),
        }]
    })
}

/// Where a document came from: a file and its 1-based position in that file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub file: PathBuf,
    pub document: usize,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (document {})", self.file.display(), self.document)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} has no .yaml or .yml files; point --manifests at the folder holding your SenderPool and DomainRoute manifests")]
    Empty { path: PathBuf },
    #[error("{source_}: not valid YAML: {message}")]
    Yaml {
        source_: Box<Source>,
        message: String,
    },
    #[error("{source_}: {kind} {name}: {}", format_violations(.violations))]
    Invalid {
        source_: Box<Source>,
        kind: String,
        name: String,
        violations: Vec<Violation>,
    },
    #[error(
        "{source_}: {kind} uses apiVersion {found}; this version of mailfleet reads {API_VERSION}"
    )]
    WrongVersion {
        source_: Box<Source>,
        kind: String,
        found: String,
    },
    #[error("{source_}: {kind} {namespace}/{name} is defined twice (also in {first}); keep one")]
    Duplicate {
        source_: Box<Source>,
        kind: String,
        namespace: String,
        name: String,
        first: String,
    },
}

fn format_violations(v: &[Violation]) -> String {
    v.iter()
        .map(Violation::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ManifestError {
    /// A short word for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            ManifestError::Io { .. } | ManifestError::Empty { .. } => "io",
            ManifestError::Yaml { .. } => "yaml",
            ManifestError::Invalid { .. } | ManifestError::WrongVersion { .. } => "invalid",
            ManifestError::Duplicate { .. } => "duplicate",
        }
    }
}

/// Loads several folders or files in order; an object in a later source replaces
/// the object of the same kind, namespace and name from an earlier one, and a
/// status-only document (kind, metadata and `status`, no `spec`) sets the status
/// of an object loaded before it. This is how a what-if run combines the
/// manifests in Git with status read from a cluster (`kubectl get sp -o yaml`).
pub fn load_overlays(sources: &[PathBuf]) -> Result<Manifests, ManifestError> {
    let mut merged = Manifests::default();
    for source in sources {
        let mut files = Vec::new();
        collect_files(source, &mut files)?;
        if files.is_empty() {
            return Err(ManifestError::Empty {
                path: source.clone(),
            });
        }
        files.sort();
        let mut layer = BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Io {
                path: file.clone(),
                source,
            })?;
            parse_layer(&text, &file, &mut merged, &mut layer)?;
        }
    }
    Ok(merged)
}

/// Loads every `*.yaml` / `*.yml` file under `dir` (recursively, in name order).
pub fn load_dir(dir: &Path) -> Result<Manifests, ManifestError> {
    load_overlays(&[dir.to_path_buf()])
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ManifestError> {
    let io = |source| ManifestError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if dir.is_file() {
        out.push(dir.to_path_buf());
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// Parses one multi-document YAML text into `into`, checking every mailfleet document.
pub fn parse_into(text: &str, file: &Path, into: &mut Manifests) -> Result<(), ManifestError> {
    parse_layer(text, file, into, &mut BTreeSet::new())
}

type Key = (String, String, String);

fn parse_layer(
    text: &str,
    file: &Path,
    into: &mut Manifests,
    layer: &mut BTreeSet<Key>,
) -> Result<(), ManifestError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| ManifestError::Yaml {
        source_: Box::new(Source {
            file: file.to_path_buf(),
            document: 1,
        }),
        message: e.to_string(),
    })?;
    for (index, doc) in docs.into_iter().enumerate() {
        let source = Source {
            file: file.to_path_buf(),
            document: index + 1,
        };
        if doc.is_null() {
            continue;
        }
        let kind = doc
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let api_version = doc
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let ours = matches!(kind.as_str(), "SenderPool" | "DomainRoute")
            && (api_version.starts_with("mailfleet.io/") || api_version.is_empty());
        if !ours {
            into.skipped.push(format!(
                "{source} {}",
                if kind.is_empty() { "(no kind)" } else { &kind }
            ));
            continue;
        }
        if api_version != API_VERSION {
            return Err(ManifestError::WrongVersion {
                source_: Box::new(source),
                kind,
                found: api_version,
            });
        }
        if doc.get("spec").is_none() && doc.get("status").is_some() {
            into.apply_status(&doc, &kind, &source)?;
        } else if kind == "SenderPool" {
            let mut pool: SenderPool = checked(&doc, &SenderPool::crd(), &source, &kind)?;
            default_namespace(&mut pool.metadata);
            let k = remember(layer, &kind, &pool.metadata, &source)?;
            into.pools.retain(|p| key(&kind, &p.metadata) != k);
            into.pools.push(pool);
        } else {
            let mut route: DomainRoute = checked(&doc, &DomainRoute::crd(), &source, &kind)?;
            default_namespace(&mut route.metadata);
            let k = remember(layer, &kind, &route.metadata, &source)?;
            into.routes.retain(|r| key(&kind, &r.metadata) != k);
            into.routes.push(route);
        }
    }
    Ok(())
}

fn key(kind: &str, meta: &ObjectMeta) -> Key {
    (
        kind.to_string(),
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn remember(
    layer: &mut BTreeSet<Key>,
    kind: &str,
    meta: &ObjectMeta,
    source: &Source,
) -> Result<Key, ManifestError> {
    let k = key(kind, meta);
    if !layer.insert(k.clone()) {
        return Err(ManifestError::Duplicate {
            source_: Box::new(source.clone()),
            kind: k.0,
            namespace: k.1,
            name: k.2,
            first: "an earlier document of the same source".into(),
        });
    }
    Ok(k)
}

fn default_namespace(meta: &mut ObjectMeta) {
    if meta.namespace.is_none() {
        meta.namespace = Some("default".to_string());
    }
}

fn checked<T: DeserializeOwned>(
    doc: &Value,
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    source: &Source,
    kind: &str,
) -> Result<T, ManifestError> {
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let invalid = |violations| ManifestError::Invalid {
        source_: Box::new(source.clone()),
        kind: kind.to_string(),
        name: if name.is_empty() {
            "(unnamed)".into()
        } else {
            name.clone()
        },
        violations,
    };
    if name.is_empty() {
        return Err(invalid(vec![Violation {
            path: "metadata.name".into(),
            message: "is required".into(),
        }]));
    }
    let violations = validate(&crd_schema(crd), doc);
    if !violations.is_empty() {
        return Err(invalid(violations));
    }
    serde_path_to_error::deserialize(doc).map_err(|e| {
        invalid(vec![Violation {
            path: e.path().to_string(),
            message: e.inner().to_string(),
        }])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifests, ManifestError> {
        let mut m = Manifests::default();
        parse_into(text, Path::new("test.yaml"), &mut m).map(|_| m)
    }

    const POOL: &str = "apiVersion: mailfleet.io/v1alpha1\nkind: SenderPool\nmetadata: {name: bulk}\nspec:\n  ips: [{address: 203.0.113.10}]\n  template: {spec: {containers: [{name: postfix, image: postfix}]}}\n";

    #[test]
    fn reads_pools_and_skips_other_kinds() {
        let m = parse(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\n---\n{POOL}"
        ))
        .unwrap();
        assert_eq!(m.pools.len(), 1);
        assert_eq!(m.pools[0].metadata.namespace.as_deref(), Some("default"));
        assert_eq!(m.pools[0].spec.replicas_per_ip.max, 1);
        assert_eq!(m.skipped, vec!["test.yaml (document 1) Secret".to_string()]);
    }

    #[test]
    fn a_bad_ip_is_refused_naming_the_field_and_the_fix() {
        let err = parse(&POOL.replace("203.0.113.10", "203.0.113.300"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("spec.ips[0].address"), "{err}");
        assert!(err.contains("IPv4 or IPv6 address"), "{err}");
        assert!(err.contains("test.yaml (document 1)"), "{err}");
    }

    #[test]
    fn duplicate_ips_and_inverted_replicas_are_refused() {
        let dup = POOL.replace(
            "[{address: 203.0.113.10}]",
            "[{address: 2001:db8::1}, {address: 2001:DB8:0::1}]",
        );
        let err = parse(&dup).unwrap_err().to_string();
        assert!(err.contains("same IP address twice"), "{err}");
        let inverted = POOL.replace(
            "  template:",
            "  replicasPerIp: {min: 3, max: 1}\n  template:",
        );
        let err = parse(&inverted).unwrap_err().to_string();
        assert!(
            err.contains("spec.replicasPerIp") && err.contains("min must not be greater"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_wrong_versions_and_duplicates_are_refused() {
        let err = parse(&POOL.replace("  ips:", "  ipz: []\n  ips:"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.ipz") && err.contains("unknown field"),
            "{err}"
        );
        let err = parse(&POOL.replace("v1alpha1", "v1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("apiVersion mailfleet.io/v1"), "{err}");
        let err = parse(&format!("{POOL}---\n{POOL}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("defined twice"), "{err}");
    }

    #[test]
    fn a_later_source_replaces_the_same_object() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
        std::fs::write(&a, POOL).unwrap();
        std::fs::write(&b, POOL.replace("203.0.113.10", "203.0.113.99")).unwrap();
        let m = load_overlays(&[a, b]).unwrap();
        assert_eq!(m.pools.len(), 1);
        assert_eq!(m.pools[0].spec.ips[0].address, "203.0.113.99");
    }

    #[test]
    fn a_status_only_document_sets_the_status_of_an_earlier_object() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
        std::fs::write(&a, POOL).unwrap();
        let status = "apiVersion: mailfleet.io/v1alpha1\nkind: SenderPool\nmetadata: {name: bulk}\nstatus:\n  ipCount: 1\n  ips:\n  - address: 203.0.113.10\n    reputation:\n    - {provider: microsoft, state: Blocked, since: '2021-11-05T08:10:00Z', reason: ConclusiveBlockReply, allowancePercent: 0}\n";
        std::fs::write(&b, status).unwrap();
        let m = load_overlays(&[a.clone(), b.clone()]).unwrap();
        let st = m.pools[0].status.as_ref().unwrap();
        assert_eq!(
            st.ips[0].reputation[0].state,
            crate::api::ReputationState::Blocked
        );
        std::fs::write(&b, status.replace("Blocked", "Blokked")).unwrap();
        let err = load_overlays(&[a.clone(), b.clone()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("status.ips[0].reputation[0].state") && err.contains("Healthy"),
            "{err}"
        );
        std::fs::write(&b, status.replace("name: bulk", "name: nosuch")).unwrap();
        let err = load_overlays(&[a, b]).unwrap_err().to_string();
        assert!(err.contains("status-only document"), "{err}");
    }

    #[test]
    fn broken_yaml_names_the_file() {
        let err = parse("kind: [unclosed").unwrap_err();
        assert_eq!(err.category(), "yaml");
        assert!(err.to_string().starts_with("test.yaml"), "{err}");
    }

    #[test]
    fn route_match_needs_exactly_one_kind() {
        let route = "apiVersion: mailfleet.io/v1alpha1\nkind: DomainRoute\nmetadata: {name: ms}\nspec:\n  provider: microsoft\n  pool: bulk\n  match: {domains: [hotmail.com], default: true}\n";
        let err = parse(route).unwrap_err().to_string();
        assert!(err.contains("exactly one of domains"), "{err}");
        let err = parse(
            &route
                .replace(", default: true", "")
                .replace("microsoft", "Micro Soft"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("spec.provider"), "{err}");
        let both = route.replace(", default: true", "")
            + "  fallback: [{pool: reserve, relay: {host: relay.example.net}}]\n";
        let err = parse(&both).unwrap_err().to_string();
        assert!(err.contains("either a pool or a relay"), "{err}");
    }
}
