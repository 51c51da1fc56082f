//! The fake API server's state: objects by resource, the global
//! resourceVersion counter, the change history watches replay from, field
//! ownership for server-side apply, and the request log. All Kubernetes write
//! semantics live here; the HTTP layer only parses and encodes.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Map, Value};
use tokio::sync::watch;

use super::fields::{Ownership, Scope};
use super::resources::{ResourceKey, ResourceTable, ResourceType};
use super::selector::{FieldSelector, LabelSelector};

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Write {
    pub method: String,
    pub path: String,
    /// Raw query string ("" if none), e.g. `fieldManager=mailfleet-operator&force=true`.
    pub query: String,
    pub content_type: Option<String>,
    /// The status code answered (injected failures included).
    pub status: u16,
    pub at: Instant,
}

impl Write {
    /// POST, PUT, PATCH or DELETE.
    pub fn is_mutating(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }

    /// A TokenReview asks a question and stores nothing.
    pub fn is_token_review(&self) -> bool {
        self.path.ends_with("/tokenreviews")
    }

    /// The `fieldManager` query parameter, if any.
    pub fn field_manager(&self) -> Option<String> {
        super::server::query_pairs(&self.query)
            .into_iter()
            .find(|(k, _)| k == "fieldManager")
            .map(|(_, v)| v)
    }
}

/// Who a bearer token belongs to, as a TokenReview reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenUser {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    /// `status.user.extra` (for a bound pod token: the pod's name and uid).
    pub extra: BTreeMap<String, Vec<String>>,
    /// Audiences the token is valid for; empty = any requested audience.
    pub audiences: Vec<String>,
}

use super::{POD_NAME_EXTRA, POD_UID_EXTRA};

impl TokenUser {
    /// A pod's bound ServiceAccount token, as the API server describes it.
    pub fn pod(namespace: &str, service_account: &str, pod_name: &str, pod_uid: &str) -> TokenUser {
        TokenUser {
            username: format!("system:serviceaccount:{namespace}:{service_account}"),
            uid: format!("sa-uid-{namespace}-{service_account}"),
            groups: vec![
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_string(),
            ],
            extra: BTreeMap::from([
                (POD_NAME_EXTRA.to_string(), vec![pod_name.to_string()]),
                (POD_UID_EXTRA.to_string(), vec![pod_uid.to_string()]),
            ]),
            audiences: Vec::new(),
        }
    }
}

/// An injected failure: the next `remaining` matching requests get `status`.
#[derive(Clone, Debug)]
pub struct Failure {
    pub method: String,
    pub path_contains: String,
    pub status: u16,
    pub remaining: usize,
}

/// An API error, answered as a `Status` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// (name, group, plural) for `details`.
    pub details: Option<Box<(String, String, String)>>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// The reason Kubernetes gives for a bare status code (injected failures).
    pub fn from_code(code: u16, message: impl Into<String>) -> ApiError {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            405 => "MethodNotAllowed",
            409 => "Conflict",
            410 => "Expired",
            415 => "UnsupportedMediaType",
            422 => "Invalid",
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "Unknown",
        };
        ApiError::new(code, reason, message)
    }

    fn about(mut self, rt: &ResourceType, name: &str) -> ApiError {
        self.details = Some(Box::new((
            name.to_string(),
            rt.group.clone(),
            rt.plural.clone(),
        )));
        self
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(rt)),
        )
        .about(rt, name)
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(rt)),
        )
        .about(rt, name)
    }

    pub fn conflict(rt: &ResourceType, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(rt)
            ),
        )
        .about(rt, name)
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn invalid(rt: &ResourceType, name: &str, why: &str) -> ApiError {
        ApiError::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {why}", rt.kind),
        )
        .about(rt, name)
    }

    /// The `Status` body.
    pub fn body(&self) -> Value {
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(details) = &self.details {
            let (name, group, plural) = details.as_ref();
            status["details"] = json!({"name": name, "group": group, "kind": plural});
        }
        status
    }
}

/// `configmaps` or `deployments.apps`, as error messages name a resource.
fn qualified(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        rt.plural.clone()
    } else {
        format!("{}.{}", rt.plural, rt.group)
    }
}

/// One committed change, kept for watches.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub key: ResourceKey,
    /// None: created.
    pub old: Option<Arc<Value>>,
    /// None: deleted.
    pub new: Option<Arc<Value>>,
}

/// How a PATCH body is to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Apply {
        force: bool,
    },
    Merge,
    /// Read as a JSON merge patch: lists are replaced, not merged by key.
    Strategic,
    Json,
}

/// Where a write lands.
pub struct Target<'a> {
    pub rt: &'a ResourceType,
    pub namespace: &'a str,
    pub name: &'a str,
    /// The `/status` subresource.
    pub status: bool,
}

impl Target<'_> {
    fn scope(&self) -> Scope {
        if self.status {
            Scope::StatusOnly
        } else if self.rt.status_subresource {
            Scope::AllButStatus
        } else {
            Scope::Whole
        }
    }
}

pub const DEFAULT_HISTORY_LIMIT: usize = 20_000;

pub struct Store {
    pub resources: ResourceTable,
    rv: u64,
    objects: HashMap<ResourceKey, BTreeMap<(String, String), Arc<Value>>>,
    ownership: HashMap<String, Ownership>,
    history: VecDeque<Change>,
    pub history_limit: usize,
    /// Watches from a resourceVersion below this are answered 410 Gone.
    compacted_rv: u64,
    uid_counter: u64,
    name_counter: u64,
    changed: watch::Sender<u64>,
    pub requests: Vec<Write>,
    pub failures: Vec<Failure>,
    pub tokens: HashMap<String, TokenUser>,
}

pub fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or("")
}

pub fn namespace_of(object: &Value) -> &str {
    object["metadata"]["namespace"].as_str().unwrap_or("")
}

pub fn uid_of(object: &Value) -> &str {
    object["metadata"]["uid"].as_str().unwrap_or("")
}

fn rv_of(object: &Value) -> &str {
    object["metadata"]["resourceVersion"].as_str().unwrap_or("")
}

fn now_text() -> String {
    let now = jiff::Timestamp::now();
    now.round(jiff::Unit::Second).unwrap_or(now).to_string()
}

fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    object["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

/// Whether two objects differ in anything but metadata and status (what
/// bumps `metadata.generation`).
fn same_spec(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    let ignored = |k: &String| matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind");
    let keys: std::collections::BTreeSet<&String> =
        a.keys().chain(b.keys()).filter(|k| !ignored(k)).collect();
    keys.into_iter().all(|k| a.get(k) == b.get(k))
}

fn owner_uids(object: &Value) -> Vec<String> {
    object["metadata"]["ownerReferences"]
        .as_array()
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r["uid"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn has_finalizers(object: &Value) -> bool {
    object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

fn is_terminating(object: &Value) -> bool {
    object["metadata"]["deletionTimestamp"].is_string()
}

impl Default for Store {
    fn default() -> Self {
        Store {
            resources: ResourceTable::default(),
            rv: 0,
            objects: HashMap::new(),
            ownership: HashMap::new(),
            history: VecDeque::new(),
            history_limit: DEFAULT_HISTORY_LIMIT,
            compacted_rv: 0,
            uid_counter: 0,
            name_counter: 0,
            changed: watch::Sender::new(0),
            requests: Vec::new(),
            failures: Vec::new(),
            tokens: HashMap::new(),
        }
    }
}

impl Store {
    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    /// Fires on every committed change (the value is the new resourceVersion).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Forgets the change history: watches from an older resourceVersion get
    /// 410 Gone and must list again.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted_rv = self.rv;
    }

    /// Changes after `cursor` (oldest first), or 410 Gone if they are no longer kept.
    pub fn changes_since(&self, cursor: u64) -> Result<impl Iterator<Item = &Change>, ApiError> {
        if cursor < self.compacted_rv {
            return Err(ApiError::new(
                410,
                "Expired",
                format!("too old resource version: {cursor} ({})", self.compacted_rv),
            ));
        }
        let start = self.history.partition_point(|c| c.rv <= cursor);
        Ok(self.history.range(start..))
    }

    fn next_uid(&mut self) -> String {
        self.uid_counter += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.uid_counter)
    }

    fn generated_name(&mut self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        self.name_counter += 1;
        let mut n = self.name_counter;
        let mut suffix = String::new();
        for _ in 0..5 {
            suffix.push(ALPHABET[(n % ALPHABET.len() as u64) as usize] as char);
            n /= ALPHABET.len() as u64;
        }
        format!("{prefix}{suffix}")
    }

    pub fn find(&self, key: &ResourceKey, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(key)?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    pub fn get(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<Value>, ApiError> {
        self.find(&rt.key(), namespace, name)
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// Objects of one resource, ordered by namespace then name.
    pub fn list(
        &self,
        key: &ResourceKey,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Vec<Arc<Value>> {
        let Some(objects) = self.objects.get(key) else {
            return Vec::new();
        };
        objects
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
            .filter(|(_, o)| labels.matches(o) && fields.matches(o))
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Stores `new` (or deletes when `None`) under a fresh resourceVersion,
    /// records the change and wakes the watches.
    fn commit(
        &mut self,
        key: &ResourceKey,
        namespace: &str,
        name: &str,
        new: Option<Value>,
    ) -> Option<Arc<Value>> {
        self.rv += 1;
        let rv = self.rv;
        let slot = (namespace.to_string(), name.to_string());
        let collection = self.objects.entry(key.clone()).or_default();
        let (old, new) = match new {
            Some(mut object) => {
                metadata_mut(&mut object).insert("resourceVersion".into(), json!(rv.to_string()));
                let object = Arc::new(object);
                (collection.insert(slot, object.clone()), Some(object))
            }
            None => (collection.remove(&slot), None),
        };
        self.history.push_back(Change {
            rv,
            key: key.clone(),
            old,
            new: new.clone(),
        });
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted_rv = dropped.rv;
            }
        }
        self.changed.send_replace(rv);
        new
    }

    /// Fills in what the server sets on a new object.
    fn stamp_new(&mut self, object: &mut Value, rt: &ResourceType, namespace: &str, name: &str) {
        object["apiVersion"] = json!(rt.api_version());
        object["kind"] = json!(rt.kind);
        let uid = self.next_uid();
        let meta = metadata_mut(object);
        meta.insert("name".into(), json!(name));
        if rt.namespaced {
            meta.insert("namespace".into(), json!(namespace));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now_text()));
        meta.insert("generation".into(), json!(1));
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }

    /// The namespace a write lands in (path first, then the body), checked
    /// against the body's.
    fn resolve_namespace(
        rt: &ResourceType,
        path_namespace: Option<&str>,
        body: &Value,
    ) -> Result<String, ApiError> {
        if !rt.namespaced {
            return Ok(String::new());
        }
        let in_body = body["metadata"]["namespace"]
            .as_str()
            .filter(|n| !n.is_empty());
        match (path_namespace, in_body) {
            (Some(path), Some(body)) if path != body => Err(ApiError::bad_request(format!(
                "the namespace of the provided object ({body}) does not match the namespace sent on the request ({path})"
            ))),
            (Some(path), _) => Ok(path.to_string()),
            (None, Some(body)) => Ok(body.to_string()),
            (None, None) => Err(ApiError::bad_request(format!(
                "{} is namespaced: create it under /namespaces/{{namespace}}/{}",
                rt.kind, rt.plural
            ))),
        }
    }

    fn check_kind(rt: &ResourceType, body: &Value) -> Result<(), ApiError> {
        match body["kind"].as_str() {
            Some(kind) if kind != rt.kind => Err(ApiError::bad_request(format!(
                "the body is a {kind}, but the request is for {} ({})",
                rt.kind, rt.plural
            ))),
            _ => Ok(()),
        }
    }

    /// POST.
    pub fn create(
        &mut self,
        rt: &ResourceType,
        path_namespace: Option<&str>,
        mut body: Value,
        manager: &str,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        Self::check_kind(rt, &body)?;
        let namespace = Self::resolve_namespace(rt, path_namespace, &body)?;
        let name = match (
            body["metadata"]["name"].as_str().filter(|n| !n.is_empty()),
            body["metadata"]["generateName"]
                .as_str()
                .filter(|n| !n.is_empty()),
        ) {
            (Some(name), _) => name.to_string(),
            (None, Some(prefix)) => {
                let prefix = prefix.to_string();
                self.generated_name(&prefix)
            }
            (None, None) => {
                return Err(ApiError::invalid(
                    rt,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ))
            }
        };
        if self.find(&rt.key(), &namespace, &name).is_some() {
            return Err(ApiError::already_exists(rt, &name));
        }
        if rt.status_subresource {
            if let Some(map) = body.as_object_mut() {
                map.remove("status");
            }
        }
        self.stamp_new(&mut body, rt, &namespace, &name);
        if dry_run {
            return Ok(body);
        }
        let mut ownership = Ownership::default();
        ownership.update(&json!({}), &body, manager);
        self.ownership.insert(uid_of(&body).to_string(), ownership);
        let stored = self.commit(&rt.key(), &namespace, &name, Some(body));
        Ok(stored.map(|o| (*o).clone()).unwrap_or_default())
    }

    /// PUT (main resource or `/status`).
    pub fn replace(
        &mut self,
        target: &Target,
        body: Value,
        manager: &str,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        Self::check_kind(target.rt, &body)?;
        if let Some(name) = body["metadata"]["name"].as_str() {
            if name != target.name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({name}) does not match the name on the URL ({})",
                    target.name
                )));
            }
        }
        let existing = self.get(target.rt, target.namespace, target.name)?;
        self.update_object(target, existing, body, None, manager, dry_run)
    }

    /// PATCH (main resource or `/status`).
    pub fn patch(
        &mut self,
        target: &Target,
        kind: PatchKind,
        body: &[u8],
        manager: Option<&str>,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let rt = target.rt;
        let existing = self.find(&rt.key(), target.namespace, target.name);
        match kind {
            PatchKind::Apply { force } => {
                let manager = manager.filter(|m| !m.is_empty()).ok_or_else(|| {
                    ApiError::invalid(
                        rt,
                        target.name,
                        "fieldManager: Required value: is required for apply patch",
                    )
                })?;
                let applied = parse_apply_body(body)?;
                self.apply(target, existing, applied, manager, force, dry_run)
            }
            PatchKind::Merge | PatchKind::Strategic => {
                let patch: Value = serde_json::from_slice(body).map_err(|e| {
                    ApiError::bad_request(format!("the merge patch is not JSON: {e}"))
                })?;
                if !patch.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                let existing = existing.ok_or_else(|| ApiError::not_found(rt, target.name))?;
                let mut candidate = (*existing).clone();
                json_patch::merge(&mut candidate, &patch);
                self.update_object(
                    target,
                    existing,
                    candidate,
                    None,
                    manager.unwrap_or("unknown"),
                    dry_run,
                )
            }
            PatchKind::Json => {
                let patch: json_patch::Patch = serde_json::from_slice(body).map_err(|e| {
                    ApiError::bad_request(format!(
                        "the JSON patch is not a list of operations: {e}"
                    ))
                })?;
                let existing = existing.ok_or_else(|| ApiError::not_found(rt, target.name))?;
                let mut candidate = (*existing).clone();
                apply_json_patch(&mut candidate, &patch).map_err(|e| {
                    ApiError::invalid(rt, target.name, &format!("the JSON patch failed: {e}"))
                })?;
                self.update_object(
                    target,
                    existing,
                    candidate,
                    None,
                    manager.unwrap_or("unknown"),
                    dry_run,
                )
            }
        }
    }

    fn apply(
        &mut self,
        target: &Target,
        existing: Option<Arc<Value>>,
        applied: Value,
        manager: &str,
        force: bool,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let rt = target.rt;
        match (applied["apiVersion"].as_str(), applied["kind"].as_str()) {
            (Some(_), Some(_)) => Self::check_kind(rt, &applied)?,
            _ => {
                return Err(ApiError::bad_request(
                    "an applied configuration must set apiVersion and kind",
                ))
            }
        }
        if let Some(name) = applied["metadata"]["name"].as_str() {
            if name != target.name {
                return Err(ApiError::bad_request(format!(
                    "the name of the applied object ({name}) does not match the name on the URL ({})",
                    target.name
                )));
            }
        }
        let Some(existing) = existing else {
            if target.status {
                return Err(ApiError::not_found(rt, target.name));
            }
            let namespace = Self::resolve_namespace(
                rt,
                Some(target.namespace).filter(|n| !n.is_empty()),
                &applied,
            )?;
            let mut object = json!({});
            let mut ownership = Ownership::default();
            ownership
                .apply(&mut object, &applied, manager, target.scope(), true)
                .map_err(|c| ApiError::conflict(rt, target.name, &c.message()))?;
            if rt.status_subresource {
                if let Some(map) = object.as_object_mut() {
                    map.remove("status");
                }
            }
            self.stamp_new(&mut object, rt, &namespace, target.name);
            if dry_run {
                return Ok(object);
            }
            self.ownership
                .insert(uid_of(&object).to_string(), ownership);
            let stored = self.commit(&rt.key(), &namespace, target.name, Some(object));
            return Ok(stored.map(|o| (*o).clone()).unwrap_or_default());
        };
        let wanted_rv = rv_of(&applied);
        if !wanted_rv.is_empty() && wanted_rv != rv_of(&existing) {
            return Err(ApiError::conflict(
                rt,
                target.name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let mut ownership = self
            .ownership
            .get(uid_of(&existing))
            .cloned()
            .unwrap_or_default();
        let mut candidate = (*existing).clone();
        ownership
            .apply(&mut candidate, &applied, manager, target.scope(), force)
            .map_err(|c| ApiError::conflict(rt, target.name, &c.message()))?;
        self.update_object(
            target,
            existing,
            candidate,
            Some(ownership),
            manager,
            dry_run,
        )
    }

    /// The common end of every update: keeps what the write may not change,
    /// checks the resourceVersion precondition, bumps generation, tracks
    /// ownership, and finishes a deletion whose last finalizer went away.
    fn update_object(
        &mut self,
        target: &Target,
        existing: Arc<Value>,
        candidate: Value,
        ownership: Option<Ownership>,
        manager: &str,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let rt = target.rt;
        let wanted_rv = rv_of(&candidate);
        if !wanted_rv.is_empty() && wanted_rv != rv_of(&existing) {
            return Err(ApiError::conflict(
                rt,
                target.name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let wanted_uid = uid_of(&candidate);
        if !wanted_uid.is_empty() && wanted_uid != uid_of(&existing) {
            return Err(ApiError::conflict(
                rt,
                target.name,
                &format!(
                    "Precondition failed: UID in precondition: {wanted_uid}, UID in object meta: {}",
                    uid_of(&existing)
                ),
            ));
        }
        let mut result = match target.scope() {
            Scope::StatusOnly => {
                let mut kept = (*existing).clone();
                set_or_remove(&mut kept, "status", candidate.get("status").cloned());
                kept
            }
            Scope::AllButStatus => {
                let mut kept = candidate;
                set_or_remove(&mut kept, "status", existing.get("status").cloned());
                kept
            }
            Scope::Whole => candidate,
        };
        result["apiVersion"] = existing["apiVersion"].clone();
        result["kind"] = existing["kind"].clone();
        {
            let meta = metadata_mut(&mut result);
            for field in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "generation",
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                match existing["metadata"].get(field) {
                    Some(value) => meta.insert(field.into(), value.clone()),
                    None => meta.remove(field),
                };
            }
        }
        let uid = uid_of(&existing).to_string();
        let ownership = ownership.unwrap_or_else(|| {
            let mut tracked = self.ownership.get(&uid).cloned().unwrap_or_default();
            tracked.update(&existing, &result, manager);
            tracked
        });
        if result == *existing {
            if !dry_run {
                self.ownership.insert(uid, ownership);
            }
            return Ok(result);
        }
        if !same_spec(&existing, &result) {
            let generation = existing["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            metadata_mut(&mut result).insert("generation".into(), json!(generation));
        }
        if dry_run {
            return Ok(result);
        }
        self.ownership.insert(uid, ownership);
        if is_terminating(&result) && !has_finalizers(&result) {
            self.remove_now(&rt.key(), target.namespace, target.name, false);
            return Ok(result);
        }
        let stored = self.commit(&rt.key(), target.namespace, target.name, Some(result));
        Ok(stored.map(|o| (*o).clone()).unwrap_or_default())
    }

    /// DELETE of one object. `options` is the DeleteOptions body (may be null).
    pub fn delete(
        &mut self,
        target: &Target,
        options: &Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let rt = target.rt;
        let existing = self.get(rt, target.namespace, target.name)?;
        let preconditions = &options["preconditions"];
        if let Some(rv) = preconditions["resourceVersion"].as_str() {
            if rv != rv_of(&existing) {
                return Err(ApiError::conflict(
                    rt,
                    target.name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        rv_of(&existing)
                    ),
                ));
            }
        }
        if let Some(uid) = preconditions["uid"].as_str() {
            if uid != uid_of(&existing) {
                return Err(ApiError::conflict(
                    rt,
                    target.name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        uid_of(&existing)
                    ),
                ));
            }
        }
        if dry_run {
            return Ok((*existing).clone());
        }
        let orphan = options["propagationPolicy"].as_str() == Some("Orphan")
            || options["orphanDependents"] == json!(true);
        Ok(self.delete_or_mark(&rt.key(), target.namespace, target.name, orphan))
    }

    /// Deletes now, or marks for deletion while finalizers remain. Returns
    /// the object's last state.
    fn delete_or_mark(
        &mut self,
        key: &ResourceKey,
        namespace: &str,
        name: &str,
        orphan: bool,
    ) -> Value {
        let Some(existing) = self.find(key, namespace, name) else {
            return Value::Null;
        };
        if has_finalizers(&existing) {
            if is_terminating(&existing) {
                return (*existing).clone();
            }
            let mut marked = (*existing).clone();
            let generation = existing["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            let meta = metadata_mut(&mut marked);
            meta.insert("deletionTimestamp".into(), json!(now_text()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            meta.insert("generation".into(), json!(generation));
            let stored = self.commit(key, namespace, name, Some(marked));
            return stored.map(|o| (*o).clone()).unwrap_or_default();
        }
        self.remove_now(key, namespace, name, orphan)
    }

    /// Removes an object and, unless `orphan`, collects the objects it owned
    /// once none of their owners exist any more.
    fn remove_now(
        &mut self,
        key: &ResourceKey,
        namespace: &str,
        name: &str,
        orphan: bool,
    ) -> Value {
        let Some(existing) = self.find(key, namespace, name) else {
            return Value::Null;
        };
        self.commit(key, namespace, name, None);
        let uid = uid_of(&existing).to_string();
        self.ownership.remove(&uid);
        if !orphan {
            self.collect_garbage(uid);
        }
        let mut last = (*existing).clone();
        metadata_mut(&mut last).insert("resourceVersion".into(), json!(self.rv.to_string()));
        last
    }

    fn collect_garbage(&mut self, deleted_uid: String) {
        let mut gone = vec![deleted_uid];
        while let Some(uid) = gone.pop() {
            let live: HashSet<String> = self
                .objects
                .values()
                .flat_map(|c| c.values())
                .map(|o| uid_of(o).to_string())
                .collect();
            let dependents: Vec<(ResourceKey, String, String)> = self
                .objects
                .iter()
                .flat_map(|(key, c)| c.values().map(move |o| (key, o)))
                .filter(|(_, o)| {
                    let owners = owner_uids(o);
                    owners.contains(&uid) && owners.iter().all(|owner| !live.contains(owner))
                })
                .map(|(key, o)| {
                    (
                        key.clone(),
                        namespace_of(o).to_string(),
                        name_of(o).to_string(),
                    )
                })
                .collect();
            for (key, namespace, name) in dependents {
                let Some(object) = self.find(&key, &namespace, &name) else {
                    continue;
                };
                if has_finalizers(&object) {
                    self.delete_or_mark(&key, &namespace, &name, false);
                } else {
                    self.commit(&key, &namespace, &name, None);
                    let dependent_uid = uid_of(&object).to_string();
                    self.ownership.remove(&dependent_uid);
                    gone.push(dependent_uid);
                }
            }
        }
    }

    /// DELETE on a collection: every matching object.
    pub fn delete_collection(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        dry_run: bool,
    ) -> Vec<Value> {
        let victims = self.list(&rt.key(), namespace, labels, fields);
        if dry_run {
            return victims.iter().map(|o| (**o).clone()).collect();
        }
        victims
            .iter()
            .map(|o| self.delete_or_mark(&rt.key(), namespace_of(o), name_of(o), false))
            .collect()
    }

    /// Seeds or replaces an object as a test wants it (status included),
    /// keeping uid and creationTimestamp of an existing one. Explicit
    /// `uid`, `creationTimestamp` and `generation` in `object` win.
    pub fn insert(&mut self, mut object: Value) -> Result<Value, String> {
        let api_version = object["apiVersion"]
            .as_str()
            .ok_or("insert: the object has no apiVersion")?
            .to_string();
        let kind = object["kind"]
            .as_str()
            .ok_or("insert: the object has no kind")?
            .to_string();
        let name = name_of(&object).to_string();
        if name.is_empty() {
            return Err(format!("insert: the {kind} has no metadata.name"));
        }
        let has_namespace = !namespace_of(&object).is_empty();
        let rt = self
            .resources
            .by_kind_or_register(&api_version, &kind, has_namespace);
        let namespace = if rt.namespaced {
            Some(namespace_of(&object).to_string())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".to_string())
        } else {
            String::new()
        };
        let existing = self.find(&rt.key(), &namespace, &name);
        let explicit = |field: &str| object["metadata"].get(field).cloned();
        let (uid, created, generation) = (
            explicit("uid"),
            explicit("creationTimestamp"),
            explicit("generation"),
        );
        let mut stamped = object.clone();
        self.stamp_new(&mut stamped, &rt, &namespace, &name);
        if let Some(existing) = &existing {
            let meta = metadata_mut(&mut stamped);
            meta.insert("uid".into(), existing["metadata"]["uid"].clone());
            meta.insert(
                "creationTimestamp".into(),
                existing["metadata"]["creationTimestamp"].clone(),
            );
            let old_generation = existing["metadata"]["generation"].as_i64().unwrap_or(1);
            let bump = i64::from(!same_spec(existing, &object));
            meta.insert("generation".into(), json!(old_generation + bump));
        }
        let meta = metadata_mut(&mut stamped);
        for (field, value) in [
            ("uid", uid),
            ("creationTimestamp", created),
            ("generation", generation),
        ] {
            if let Some(value) = value {
                meta.insert(field.into(), value);
            }
        }
        for field in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
            if let Some(value) = object["metadata"].get(field) {
                meta.insert(field.into(), value.clone());
            }
        }
        object = stamped;
        let stored = self.commit(&rt.key(), &namespace, &name, Some(object));
        Ok(stored.map(|o| (*o).clone()).unwrap_or_default())
    }

    /// Deletes as the API would (finalizers and garbage collection included).
    pub fn remove(&mut self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let Some(rt) = self.resources.by_kind(api_version, kind).cloned() else {
            return false;
        };
        let namespace = if rt.namespaced { namespace } else { "" };
        if self.find(&rt.key(), namespace, name).is_none() {
            return false;
        }
        self.delete_or_mark(&rt.key(), namespace, name, false);
        true
    }

    /// Changes an object in place (no ownership tracking), as a controller
    /// outside the operator would; a no-op change stores nothing.
    pub fn modify(
        &mut self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> Result<Value, String> {
        let rt = self
            .resources
            .by_kind(api_version, kind)
            .cloned()
            .ok_or_else(|| format!("no resource {kind} in {api_version} is served"))?;
        let namespace = if rt.namespaced { namespace } else { "" };
        let existing = self
            .find(&rt.key(), namespace, name)
            .ok_or_else(|| format!("{kind} {namespace}/{name} does not exist"))?;
        let mut changed = (*existing).clone();
        change(&mut changed);
        if changed == *existing {
            return Ok(changed);
        }
        if !same_spec(&existing, &changed) {
            let generation = existing["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            metadata_mut(&mut changed).insert("generation".into(), json!(generation));
        }
        let stored = self.commit(&rt.key(), namespace, name, Some(changed));
        Ok(stored.map(|o| (*o).clone()).unwrap_or_default())
    }

    /// Answers a TokenReview from the tokens the test allowed.
    pub fn review_token(&self, review: &Value) -> Value {
        let token = review["spec"]["token"].as_str().unwrap_or("");
        let requested: Vec<String> = review["spec"]["audiences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let status = match self.tokens.get(token) {
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
            Some(user) => {
                let audiences: Vec<String> = if user.audiences.is_empty() {
                    requested.clone()
                } else if requested.is_empty() {
                    user.audiences.clone()
                } else {
                    requested
                        .iter()
                        .filter(|a| user.audiences.contains(a))
                        .cloned()
                        .collect()
                };
                if !requested.is_empty() && audiences.is_empty() {
                    json!({"authenticated": false, "error": "token audiences are invalid for this server"})
                } else {
                    json!({
                        "authenticated": true,
                        "user": {
                            "username": user.username, "uid": user.uid,
                            "groups": user.groups, "extra": user.extra,
                        },
                        "audiences": audiences,
                    })
                }
            }
        };
        json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {"creationTimestamp": null},
            "spec": review["spec"].clone(),
            "status": status,
        })
    }

    /// Takes one matching injected failure, if any.
    pub fn take_failure(&mut self, method: &str, path_and_query: &str) -> Option<u16> {
        let failure = self.failures.iter_mut().find(|f| {
            f.remaining > 0
                && (f.method == "*" || f.method.eq_ignore_ascii_case(method))
                && path_and_query.contains(&f.path_contains)
        })?;
        failure.remaining -= 1;
        let status = failure.status;
        self.failures.retain(|f| f.remaining > 0);
        Some(status)
    }
}

/// Applies a JSON patch the way the API server's library does: a `test`
/// for `null` passes on a missing path (kube-runtime's finalizer helper
/// relies on it).
fn apply_json_patch(
    document: &mut Value,
    patch: &json_patch::Patch,
) -> Result<(), json_patch::PatchError> {
    for operation in &patch.0 {
        if let json_patch::PatchOperation::Test(test) = operation {
            let absent = document
                .pointer(test.path.as_str())
                .is_none_or(Value::is_null);
            if test.value.is_null() && absent {
                continue;
            }
        }
        json_patch::patch(document, std::slice::from_ref(operation))?;
    }
    Ok(())
}

fn set_or_remove(object: &mut Value, key: &str, value: Option<Value>) {
    if let Some(map) = object.as_object_mut() {
        match value {
            Some(v) => map.insert(key.to_string(), v),
            None => map.remove(key),
        };
    }
}

fn parse_apply_body(body: &[u8]) -> Result<Value, ApiError> {
    let applied: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(_) => {
            let text = std::str::from_utf8(body).map_err(|_| {
                ApiError::bad_request("the apply patch is neither JSON nor UTF-8 YAML")
            })?;
            serde_saphyr::from_str(text).map_err(|e| {
                ApiError::bad_request(format!("the apply patch is neither JSON nor YAML: {e}"))
            })?
        }
    };
    if applied.is_object() {
        Ok(applied)
    } else {
        Err(ApiError::bad_request("an apply patch must be an object"))
    }
}
