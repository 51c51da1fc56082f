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
    #[error("{path}: {problem}")]
    Refused { path: PathBuf, problem: String },
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
            ManifestError::Io { .. }
            | ManifestError::Empty { .. }
            | ManifestError::Refused { .. } => "io",
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
    let sources: Vec<ManifestSource> = sources.iter().cloned().map(ManifestSource::Path).collect();
    load_sources(&sources)
}

/// Where one overlay comes from.
#[derive(Clone, Debug)]
pub enum ManifestSource {
    /// A folder (searched recursively) or a file.
    Path(PathBuf),
    /// Text already read, such as standard input; `name` is how errors cite it.
    Text { name: PathBuf, text: String },
}

/// [`load_overlays`] over sources some of which were read already.
pub fn load_sources(sources: &[ManifestSource]) -> Result<Manifests, ManifestError> {
    let mut merged = Manifests::default();
    let mut budget = MAX_TOTAL_BYTES;
    for source in sources {
        let source = match source {
            ManifestSource::Path(path) => path,
            ManifestSource::Text { name, text } => {
                if text.len() as u64 > MAX_FILE_BYTES.min(budget) {
                    return Err(ManifestError::Refused {
                        path: name.clone(),
                        problem: format!("is larger than {MAX_FILE_BYTES} bytes; split it"),
                    });
                }
                budget -= text.len() as u64;
                parse_layer(text, name, &mut merged, &mut BTreeSet::new())?;
                continue;
            }
        };
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
            let text = read_bounded(&file, &mut budget)?;
            parse_layer(&text, &file, &mut merged, &mut layer)?;
        }
    }
    Ok(merged)
}

/// Loads every `*.yaml` / `*.yml` file under `dir` (recursively, in name order).
pub fn load_dir(dir: &Path) -> Result<Manifests, ManifestError> {
    load_overlays(&[dir.to_path_buf()])
}

/// Largest manifest file read.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// Largest sum of the manifest files read in one load.
pub const MAX_TOTAL_BYTES: u64 = 64 * 1024 * 1024;
/// Deepest folder nesting searched.
const MAX_DEPTH: usize = 16;
/// Most files read in one load.
const MAX_FILES: usize = 10_000;

/// The files of `source` (a file, or a folder searched recursively):
/// regular files only, hidden names skipped (kubelet's `..data` and
/// `..<timestamp>` of a mounted ConfigMap, so each key is read once through
/// its link), and links to folders never followed, so the walk can neither
/// loop nor leave the folder. A link to a file is read when it is a regular
/// file.
fn collect_files(source: &Path, out: &mut Vec<PathBuf>) -> Result<(), ManifestError> {
    let meta = std::fs::metadata(source).map_err(|e| ManifestError::Io {
        path: source.to_path_buf(),
        source: e,
    })?;
    if meta.is_dir() {
        collect_dir(source, 0, out)
    } else {
        regular(source, &meta)?;
        out.push(source.to_path_buf());
        Ok(())
    }
}

fn collect_dir(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), ManifestError> {
    let refused = |path: &Path, problem: String| ManifestError::Refused {
        path: path.to_path_buf(),
        problem,
    };
    if depth > MAX_DEPTH {
        return Err(refused(
            dir,
            format!("folders nested deeper than {MAX_DEPTH}; keep manifests in a shallow tree"),
        ));
    }
    let io = |source| ManifestError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let own = entry.file_type().map_err(io)?;
        if own.is_dir() {
            collect_dir(&path, depth + 1, out)?;
            continue;
        }
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            continue;
        }
        let target = std::fs::metadata(&path).map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
        if own.is_symlink() && target.is_dir() {
            return Err(refused(
                &path,
                "is a link to a folder; folder links are not followed (they can loop or lead out of the folder): link the files, or give the folder as another --manifests".into(),
            ));
        }
        regular(&path, &target)?;
        if out.len() >= MAX_FILES {
            return Err(refused(
                dir,
                format!("more than {MAX_FILES} manifest files"),
            ));
        }
        out.push(path);
    }
    Ok(())
}

/// Refuses FIFOs, sockets and devices: reading one could block forever or
/// never end.
fn regular(path: &Path, meta: &std::fs::Metadata) -> Result<(), ManifestError> {
    if meta.is_file() {
        Ok(())
    } else {
        Err(ManifestError::Refused {
            path: path.to_path_buf(),
            problem: "is not a regular file (a FIFO, socket or device); manifests are plain files"
                .into(),
        })
    }
}

/// Reads at most [`MAX_FILE_BYTES`] of `path` and takes them from `budget`.
fn read_bounded(path: &Path, budget: &mut u64) -> Result<String, ManifestError> {
    use std::io::Read as _;
    let io = |source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    };
    let limit = MAX_FILE_BYTES.min(*budget);
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        let problem = if limit < MAX_FILE_BYTES {
            format!("the manifests together are larger than {MAX_TOTAL_BYTES} bytes")
        } else {
            format!("is larger than {MAX_FILE_BYTES} bytes; split it")
        };
        return Err(ManifestError::Refused {
            path: path.to_path_buf(),
            problem,
        });
    }
    *budget -= bytes.len() as u64;
    String::from_utf8(bytes).map_err(|e| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text: {e}"),
        ))
    })
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
    let yaml_error = |message: String| ManifestError::Yaml {
        source_: Box::new(Source {
            file: file.to_path_buf(),
            document: 1,
        }),
        message,
    };
    // JSON (standalone mode's state.json) is read without a YAML parser's
    // node budget: a state file of many megabytes is an overlay too.
    let docs: Vec<Value> = if file.extension().and_then(|e| e.to_str()) == Some("json") {
        vec![serde_json::from_str(text).map_err(|e| yaml_error(format!("not valid JSON: {e}")))?]
    } else {
        serde_saphyr::from_multiple(text).map_err(|e| yaml_error(e.to_string()))?
    };
    // A `List` (`kubectl get -o yaml`, state.json) stands for its items.
    let docs = docs.into_iter().flat_map(|doc| {
        match (
            doc.get("kind").and_then(Value::as_str),
            doc.get("items").and_then(Value::as_array),
        ) {
            (Some("List"), Some(items)) => items.clone(),
            _ => vec![doc],
        }
    });
    for (index, doc) in docs.enumerate() {
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
    let mut violations = validate(&crd_schema(crd), doc);
    if kind == "SenderPool" {
        if let Some(template) = doc.pointer("/spec/template") {
            violations.extend(unknown_template_fields(template));
        }
    }
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

/// Fields of a pod template that Kubernetes' `PodTemplateSpec` does not have.
///
/// The CRD keeps the template schemaless (the full pod schema would make it
/// megabytes), so the API server would store `contianers:` and the sender
/// Deployment would quietly lack it; the typed Kubernetes structs name every
/// field they do not read.
fn unknown_template_fields(template: &Value) -> Vec<Violation> {
    let mut unknown = Vec::new();
    let read: Result<k8s_openapi::api::core::v1::PodTemplateSpec, _> =
        serde_ignored::deserialize(template, |path| unknown.push(field_path(&path)));
    let mut violations: Vec<Violation> = unknown
        .into_iter()
        .map(|path| Violation {
            path: format!("spec.template{path}"),
            message: "is not a field of a Kubernetes pod template; check its spelling against `kubectl explain pod.spec`".into(),
        })
        .collect();
    if let Err(e) = read {
        violations.push(Violation {
            path: "spec.template".into(),
            message: format!("is not a Kubernetes pod template: {e}"),
        });
    }
    violations
}

/// `serde_ignored`'s path as a field path: `.spec.containers[0].imagePullPolcy`.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => format!("{}.{key}", field_path(parent)),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_pod_template_field_is_named() {
        let err = parse(&POOL.replace("containers:", "contianers:"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("spec.template.spec.contianers"), "{err}");
        assert!(err.contains("kubectl explain"), "{err}");
        let deep = POOL.replace("image: postfix}", "image: postfix, imagePullPolcy: Always}");
        let err = parse(&deep).unwrap_err().to_string();
        assert!(
            err.contains("spec.template.spec.containers[0].imagePullPolcy"),
            "{err}"
        );
        // Every real field, nested ones too, passes.
        let full = POOL.replace(
            "image: postfix}",
            "image: postfix, imagePullPolicy: Always, resources: {limits: {memory: 256Mi}}, env: [{name: A, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]}], nodeSelector: {pool: mail}, tolerations: [{key: mail, operator: Exists}]",
        ).replace("]}}\n", "}}\n");
        parse(&full).unwrap();
    }

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

    #[test]
    fn folder_links_are_not_followed_so_a_loop_ends_at_once() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pool.yaml"), POOL).unwrap();
        // Two links to the folder itself, and a link out of it: none followed.
        symlink(dir.path(), dir.path().join(".self")).unwrap();
        symlink("..", dir.path().join(".up")).unwrap();
        let m = load_dir(dir.path()).unwrap();
        assert_eq!(m.pools.len(), 1);
        symlink(dir.path(), dir.path().join("loop.yaml")).unwrap();
        let err = load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("link to a folder"), "{err}");
        std::fs::remove_file(dir.path().join("loop.yaml")).unwrap();
        symlink(dir.path(), dir.path().join("again")).unwrap();
        assert_eq!(
            load_dir(dir.path()).unwrap().pools.len(),
            1,
            "a link named like a folder is skipped"
        );
        let fingerprint = crate::standalone::watch::Fingerprint::of(dir.path());
        assert_eq!(
            fingerprint,
            crate::standalone::watch::Fingerprint::of(dir.path())
        );
    }

    #[test]
    fn fifos_and_devices_are_refused_without_being_read() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pool.yaml"), POOL).unwrap();
        symlink("/dev/zero", dir.path().join("zero.yaml")).unwrap();
        let err = load_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert_eq!(err.category(), "io");
        std::fs::remove_file(dir.path().join("zero.yaml")).unwrap();
        let fifo = dir.path().join("fifo.yaml");
        let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a plain C string alive across the call.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        let err = load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("fifo.yaml") && err.contains("not a regular file"),
            "{err}"
        );
    }

    #[test]
    fn a_file_over_the_cap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut big = String::from(POOL);
        big.push_str(&"# padding\n".repeat((MAX_FILE_BYTES as usize) / 10 + 1));
        std::fs::write(dir.path().join("big.yaml"), big).unwrap();
        let err = load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
    }

    /// kubelet mounts a ConfigMap as `..<timestamp>/` holding the files,
    /// `..data` linking to it, and one link per key through `..data`.
    #[test]
    fn a_folder_mounted_from_a_configmap_is_read_once() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let stamp = dir.path().join("..2026_12_07_03_00_00.123456789");
        std::fs::create_dir(&stamp).unwrap();
        std::fs::write(stamp.join("pool.yaml"), POOL).unwrap();
        symlink("..2026_12_07_03_00_00.123456789", dir.path().join("..data")).unwrap();
        symlink("..data/pool.yaml", dir.path().join("pool.yaml")).unwrap();
        let m = load_dir(dir.path()).unwrap();
        assert_eq!(m.pools.len(), 1);
    }

    #[test]
    fn a_json_list_is_an_overlay_of_its_items() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pool.yaml"), POOL).unwrap();
        let state = dir.path().join("state.json");
        std::fs::write(
            &state,
            r#"{"apiVersion":"v1","kind":"List","items":[
{"apiVersion":"mailfleet.io/v1alpha1","kind":"SenderPool","metadata":{"namespace":"default","name":"bulk"},"status":{"ipCount":1}},
{"apiVersion":"standalone.mailfleet.io/v1","kind":"FeedbackLedger","sequences":{}}
]}"#,
        )
        .unwrap();
        let m = load_overlays(&[dir.path().join("pool.yaml"), state]).unwrap();
        assert_eq!(m.pools[0].status.as_ref().unwrap().ip_count, 1);
    }
}
