//! Which resources the fake API server knows: group, version, kind, plural,
//! scope and whether `/status` is a subresource. Kinds inserted by a test that
//! are not in the table are added on the fly with a derived plural, so the
//! server stays generic.

use serde_json::{json, Value};

/// One served resource type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
    /// Writes to the main resource keep the stored `status`; `/status` writes
    /// change nothing but `status`.
    pub status_subresource: bool,
}

impl ResourceType {
    fn new(api_version: &str, kind: &str, plural: &str, namespaced: bool, status: bool) -> Self {
        let (group, version) = split_api_version(api_version);
        ResourceType {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            plural: plural.to_string(),
            namespaced,
            status_subresource: status,
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Storage key: objects of one group and plural share a store whatever
    /// version they are read with (the fake does no conversion).
    pub fn key(&self) -> ResourceKey {
        ResourceKey {
            group: self.group.clone(),
            plural: self.plural.clone(),
        }
    }

    fn singular(&self) -> String {
        self.kind.to_lowercase()
    }
}

/// Identifies a stored collection.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub group: String,
    pub plural: String,
}

/// `"apps/v1"` → `("apps", "v1")`, `"v1"` → `("", "v1")`.
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", api_version),
    }
}

/// The plural Kubernetes would use for a kind without an explicit table entry.
pub fn derive_plural(kind: &str) -> String {
    let lower = kind.to_lowercase();
    if let Some(stem) = lower.strip_suffix('y') {
        if !stem.ends_with(['a', 'e', 'i', 'o', 'u']) {
            return format!("{stem}ies");
        }
    }
    if lower.ends_with('s') || lower.ends_with("ch") || lower.ends_with('x') {
        return format!("{lower}es");
    }
    format!("{lower}s")
}

/// The resource types the server answers for.
#[derive(Clone, Debug)]
pub struct ResourceTable {
    types: Vec<ResourceType>,
}

impl Default for ResourceTable {
    fn default() -> Self {
        let known = [
            ("v1", "ConfigMap", "configmaps", true, false),
            ("v1", "Secret", "secrets", true, false),
            ("v1", "Service", "services", true, true),
            ("v1", "Pod", "pods", true, true),
            ("v1", "Namespace", "namespaces", false, true),
            ("v1", "ServiceAccount", "serviceaccounts", true, false),
            ("v1", "Endpoints", "endpoints", true, false),
            ("v1", "Event", "events", true, false),
            ("apps/v1", "Deployment", "deployments", true, true),
            ("apps/v1", "ReplicaSet", "replicasets", true, true),
            (
                "discovery.k8s.io/v1",
                "EndpointSlice",
                "endpointslices",
                true,
                false,
            ),
            ("events.k8s.io/v1", "Event", "events", true, false),
            ("coordination.k8s.io/v1", "Lease", "leases", true, false),
            (
                "mailfleet.io/v1alpha1",
                "SenderPool",
                "senderpools",
                true,
                true,
            ),
            (
                "mailfleet.io/v1alpha1",
                "DomainRoute",
                "domainroutes",
                true,
                true,
            ),
            (
                "authentication.k8s.io/v1",
                "TokenReview",
                "tokenreviews",
                false,
                false,
            ),
        ];
        ResourceTable {
            types: known
                .iter()
                .map(|(av, kind, plural, ns, status)| {
                    ResourceType::new(av, kind, plural, *ns, *status)
                })
                .collect(),
        }
    }
}

impl ResourceTable {
    pub fn by_path(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        let (group, version) = split_api_version(api_version);
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.kind == kind)
    }

    /// The type of `kind`, registered with a derived plural if unknown.
    pub fn by_kind_or_register(
        &mut self,
        api_version: &str,
        kind: &str,
        namespaced: bool,
    ) -> ResourceType {
        if let Some(found) = self.by_kind(api_version, kind) {
            return found.clone();
        }
        let added = ResourceType::new(api_version, kind, &derive_plural(kind), namespaced, false);
        self.types.push(added.clone());
        added
    }

    /// Adds or replaces a type (for kinds whose plural or scope the default
    /// derivation gets wrong).
    pub fn register(&mut self, resource: ResourceType) {
        self.types.retain(|t| {
            !(t.group == resource.group
                && t.version == resource.version
                && t.plural == resource.plural)
        });
        self.types.push(resource);
    }

    fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for t in self.types.iter().filter(|t| !t.group.is_empty()) {
            match groups.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) if !versions.contains(&t.version) => {
                    versions.push(t.version.clone())
                }
                Some(_) => {}
                None => groups.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        groups
    }

    /// `GET /api`.
    pub fn core_versions(&self) -> Value {
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
        })
    }

    /// `GET /apis`.
    pub fn group_list(&self) -> Value {
        let groups: Vec<Value> = self
            .groups()
            .into_iter()
            .map(|(group, versions)| {
                let versions: Vec<Value> = versions
                    .iter()
                    .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                    .collect();
                json!({"name": group, "versions": versions, "preferredVersion": versions[0].clone()})
            })
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `GET /apis/{group}` (`None` for an unknown group).
    pub fn group(&self, group: &str) -> Option<Value> {
        let (name, versions) = self.groups().into_iter().find(|(g, _)| g == group)?;
        let versions: Vec<Value> = versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
            .collect();
        Some(json!({
            "kind": "APIGroup", "apiVersion": "v1", "name": name,
            "versions": versions, "preferredVersion": versions[0].clone(),
        }))
    }

    /// `GET /api/v1` or `GET /apis/{group}/{version}` (`None` if nothing is served there).
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let mut resources = Vec::new();
        for t in self
            .types
            .iter()
            .filter(|t| t.group == group && t.version == version)
        {
            let verbs: Vec<&str> = if t.kind == "TokenReview" {
                vec!["create"]
            } else {
                vec![
                    "create",
                    "delete",
                    "deletecollection",
                    "get",
                    "list",
                    "patch",
                    "update",
                    "watch",
                ]
            };
            resources.push(json!({
                "name": t.plural, "singularName": t.singular(), "namespaced": t.namespaced,
                "kind": t.kind, "verbs": verbs,
            }));
            if t.status_subresource {
                resources.push(json!({
                    "name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced,
                    "kind": t.kind, "verbs": ["get", "patch", "update"],
                }));
            }
        }
        if resources.is_empty() {
            return None;
        }
        let group_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
        )
    }
}
