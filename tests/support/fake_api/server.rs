//! The HTTP side of the fake API server: hyper 1 on a local port, request
//! routing (discovery, collections, objects, `/status`), and watch streams
//! of JSON lines.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::resources::{ResourceKey, ResourceType};
use super::selector::{FieldSelector, LabelSelector};
use super::store::{ApiError, Change, PatchKind, Store, Target, Write};

pub type Shared = Arc<Mutex<Store>>;
type Body = UnsyncBoxBody<Bytes, Infallible>;

/// How often an idle watch with `allowWatchBookmarks` gets a BOOKMARK.
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);
/// Longest watch when the client names no `timeoutSeconds`.
const DEFAULT_WATCH_SECONDS: u64 = 1800;

pub fn lock(shared: &Shared) -> MutexGuard<'_, Store> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Accepts connections until `shutdown` changes or its sender is dropped.
pub async fn serve(listener: TcpListener, shared: Shared, shutdown: watch::Receiver<()>) {
    let mut stop = shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let shared = shared.clone();
        let mut stop_connection = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(shared.clone(), request));
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = stop_connection.changed() => {}
            }
        });
    }
}

fn percent_decode(text: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                match (
                    bytes.get(i + 1).and_then(|b| hex(*b)),
                    bytes.get(i + 2).and_then(|b| hex(*b)),
                ) {
                    (Some(high), Some(low)) => {
                        out.push((high * 16 + low) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decoded `key=value` pairs of a query string.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(pair), String::new()),
        })
        .collect()
}

struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    fn selectors(&self) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let labels = LabelSelector::parse(self.get("labelSelector").unwrap_or(""))
            .map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(self.get("fieldSelector").unwrap_or(""))
            .map_err(ApiError::bad_request)?;
        Ok((labels, fields))
    }
}

fn full(status: u16, value: &Value) -> Response<Body> {
    raw(status, serde_json::to_vec(value).unwrap_or_default())
}

fn raw(status: u16, json_bytes: Vec<u8>) -> Response<Body> {
    let body = Full::new(Bytes::from(json_bytes)).boxed_unsync();
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(body)
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync()))
}

fn error(err: &ApiError) -> Response<Body> {
    full(err.code, &err.body())
}

fn not_served(path: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("the server could not find the requested resource ({path})"),
    )
}

async fn handle(shared: Shared, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header("content-type");
    let user_agent = header("user-agent");
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let path_and_query = if query.is_empty() {
        path.clone()
    } else {
        format!("{path}?{query}")
    };
    // One lock for the whole request, so a change and its log entry appear
    // together to anyone waiting on either.
    let mut store = lock(&shared);
    let injected = store.take_failure(method.as_str(), &path_and_query);
    let response = match injected {
        Some(code) => error(&ApiError::from_code(
            code,
            format!("injected failure for {method} {path_and_query}"),
        )),
        None => {
            let call = Call {
                method: &method,
                path: &path,
                query: Query(query_pairs(&query)),
                content_type: content_type.as_deref(),
                user_agent: user_agent.as_deref(),
                body: &body,
            };
            route(&shared, &mut store, &call).unwrap_or_else(|e| error(&e))
        }
    };
    store.requests.push(Write {
        method: method.to_string(),
        path,
        query,
        content_type,
        status: response.status().as_u16(),
        at: Instant::now(),
    });
    Ok(response)
}

struct Call<'a> {
    method: &'a Method,
    path: &'a str,
    query: Query,
    content_type: Option<&'a str>,
    user_agent: Option<&'a str>,
    body: &'a Bytes,
}

impl Call<'_> {
    /// The field manager of a non-apply write: `fieldManager`, else the
    /// client's user agent up to its first `/`, as Kubernetes derives it.
    fn manager(&self) -> String {
        self.query
            .get("fieldManager")
            .map(str::to_string)
            .or_else(|| {
                self.user_agent
                    .map(|ua| ua.split('/').next().unwrap_or(ua).to_string())
            })
            .unwrap_or_else(|| "unknown".to_string())
    }

    fn dry_run(&self) -> bool {
        self.query.get("dryRun") == Some("All")
    }

    fn json_body(&self) -> Result<Value, ApiError> {
        if self.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(self.body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))
    }
}

fn version_info() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-mailfleet-fake",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn route(shared: &Shared, store: &mut Store, call: &Call) -> Result<Response<Body>, ApiError> {
    let segments: Vec<&str> = call
        .path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let discovery = |value: Option<Value>| {
        value
            .map(|v| full(200, &v))
            .ok_or_else(|| not_served(call.path))
    };
    if call.method == Method::GET {
        match segments.as_slice() {
            ["version"] => return Ok(full(200, &version_info())),
            ["healthz" | "readyz" | "livez"] => return Ok(full(200, &json!("ok"))),
            ["api"] => return Ok(full(200, &store.resources.core_versions())),
            ["apis"] => return Ok(full(200, &store.resources.group_list())),
            ["apis", group] => return discovery(store.resources.group(group)),
            ["api", "v1"] => return discovery(store.resources.resource_list("", "v1")),
            ["apis", group, version] => {
                return discovery(store.resources.resource_list(group, version))
            }
            _ => {}
        }
    }
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_served(call.path)),
    };
    let resolved = {
        let served = |plural: &str| store.resources.by_path(group, version, plural).cloned();
        match rest {
            ["namespaces", namespace, plural, tail @ ..] if served(plural).is_some() => {
                served(plural).map(|rt| (rt, Some(namespace.to_string()), tail.to_vec()))
            }
            [plural, tail @ ..] => served(plural).map(|rt| (rt, None, tail.to_vec())),
            [] => None,
        }
    };
    let Some((rt, namespace, tail)) = resolved else {
        return Err(not_served(call.path));
    };
    if namespace.is_some() && !rt.namespaced {
        return Err(not_served(call.path));
    }
    match tail.as_slice() {
        [] => collection(shared, store, call, &rt, namespace.as_deref()),
        [name] => object(store, call, &rt, namespace.as_deref(), name, false),
        [name, "status"] if rt.status_subresource => {
            object(store, call, &rt, namespace.as_deref(), name, true)
        }
        _ => Err(not_served(call.path)),
    }
}

fn method_not_allowed(call: &Call) -> ApiError {
    ApiError::new(
        405,
        "MethodNotAllowed",
        format!("{} is not supported on {}", call.method, call.path),
    )
}

fn collection(
    shared: &Shared,
    store: &mut Store,
    call: &Call,
    rt: &ResourceType,
    namespace: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    if rt.kind == "TokenReview" {
        if call.method != Method::POST {
            return Err(method_not_allowed(call));
        }
        let review = call.json_body()?;
        return Ok(full(201, &store.review_token(&review)));
    }
    match *call.method {
        Method::GET if call.query.flag("watch") => start_watch(shared, store, call, rt, namespace),
        Method::GET => list(store, call, rt, namespace),
        Method::POST => {
            let body = call.json_body()?;
            let created = store.create(rt, namespace, body, &call.manager(), call.dry_run())?;
            Ok(full(201, &created))
        }
        Method::DELETE => {
            let (labels, fields) = call.query.selectors()?;
            let deleted = store.delete_collection(rt, namespace, &labels, &fields, call.dry_run());
            let rv = store.current_rv().to_string();
            Ok(full(
                200,
                &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(),
                        "metadata": {"resourceVersion": rv}, "items": deleted}),
            ))
        }
        _ => Err(method_not_allowed(call)),
    }
}

fn list(
    store: &Store,
    call: &Call,
    rt: &ResourceType,
    namespace: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = call.query.selectors()?;
    let limit = call
        .query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let after = call
        .query
        .get("continue")
        .filter(|c| !c.is_empty())
        .map(|token| {
            let mut parts = token.splitn(3, '|');
            let rv = parts.next().unwrap_or("").to_string();
            let ns = parts.next().unwrap_or("").to_string();
            let name = parts.next().unwrap_or("").to_string();
            (rv, ns, name)
        });
    let mut items = store.list(&rt.key(), namespace, &labels, &fields);
    let list_rv = match &after {
        Some((rv, ns, name)) => {
            items.retain(|o| {
                let key = (super::store::namespace_of(o), super::store::name_of(o));
                key > (ns.as_str(), name.as_str())
            });
            rv.clone()
        }
        None => store.current_rv().to_string(),
    };
    let mut metadata = json!({"resourceVersion": list_rv});
    if let Some(limit) = limit {
        if items.len() > limit {
            let remaining = items.len() - limit;
            items.truncate(limit);
            if let Some(last) = items.last() {
                metadata["continue"] = json!(format!(
                    "{list_rv}|{}|{}",
                    super::store::namespace_of(last),
                    super::store::name_of(last)
                ));
                metadata["remainingItemCount"] = json!(remaining);
            }
        }
    }
    let body = ListBody {
        kind: format!("{}List", rt.kind),
        api_version: rt.api_version(),
        metadata,
        items: items.iter().map(|o| o.as_ref()).collect(),
    };
    Ok(raw(200, serde_json::to_vec(&body).unwrap_or_default()))
}

fn patch_kind(call: &Call) -> Result<PatchKind, ApiError> {
    let content_type = call.content_type.unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    match media {
        "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchKind::Apply {
            force: call.query.flag("force"),
        }),
        "application/merge-patch+json" => Ok(PatchKind::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
        "application/json-patch+json" => Ok(PatchKind::Json),
        other => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {other:?})"),
        )),
    }
}

fn object(
    store: &mut Store,
    call: &Call,
    rt: &ResourceType,
    namespace: Option<&str>,
    name: &str,
    status: bool,
) -> Result<Response<Body>, ApiError> {
    if rt.namespaced && namespace.is_none() {
        return Err(not_served(call.path));
    }
    let target = Target {
        rt,
        namespace: namespace.unwrap_or(""),
        name,
        status,
    };
    let answer = match *call.method {
        Method::GET => (*store.get(rt, target.namespace, name)?).clone(),
        Method::PUT => {
            let body = call.json_body()?;
            store.replace(&target, body, &call.manager(), call.dry_run())?
        }
        Method::PATCH => {
            let kind = patch_kind(call)?;
            let manager = match kind {
                PatchKind::Apply { .. } => call.query.get("fieldManager").map(str::to_string),
                _ => Some(call.manager()),
            };
            store.patch(&target, kind, call.body, manager.as_deref(), call.dry_run())?
        }
        Method::DELETE if !status => {
            let options = call.json_body()?;
            store.delete(&target, &options, call.dry_run())?
        }
        _ => return Err(method_not_allowed(call)),
    };
    Ok(full(200, &answer))
}

/// What one watch sends: the resource, namespace and selectors.
struct WatchFilter {
    key: ResourceKey,
    api_version: String,
    kind: String,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl WatchFilter {
    fn matches(&self, object: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| super::store::namespace_of(object) == ns)
            && self.labels.matches(object)
            && self.fields.matches(object)
    }

    /// The event this watch sees for `change`: an object entering the
    /// selection is ADDED, one leaving it DELETED.
    fn event(&self, change: &Change) -> Option<Bytes> {
        if change.key != self.key {
            return None;
        }
        let old = change.old.as_deref().filter(|o| self.matches(o));
        let new = change.new.as_deref().filter(|o| self.matches(o));
        let line = match (old, new) {
            (None, Some(new)) => event_line("ADDED", new),
            (Some(_), Some(new)) => event_line("MODIFIED", new),
            (Some(old), None) => {
                let mut last = old.clone();
                last["metadata"]["resourceVersion"] = json!(change.rv.to_string());
                event_line("DELETED", &last)
            }
            (None, None) => return None,
        };
        Some(line)
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        event_line(
            "BOOKMARK",
            &json!({"apiVersion": self.api_version, "kind": self.kind, "metadata": metadata}),
        )
    }
}

/// One line of a watch stream (borrowed, so no object is copied to send it).
#[derive(serde::Serialize)]
struct WatchLine<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    object: &'a Value,
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&WatchLine { kind, object }).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// A list answer (borrowed items).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ListBody<'a> {
    kind: String,
    api_version: String,
    metadata: Value,
    items: Vec<&'a Value>,
}

struct WatchStream {
    shared: Shared,
    changes: watch::Receiver<u64>,
    filter: WatchFilter,
    cursor: u64,
    pending: VecDeque<Bytes>,
    deadline: tokio::time::Instant,
    bookmarks: bool,
    finished: bool,
}

impl WatchStream {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some(chunk);
            }
            if self.finished {
                return None;
            }
            self.changes.borrow_and_update();
            let mine: Vec<Change> = {
                let store = lock(&self.shared);
                let mine = match store.changes_since(self.cursor) {
                    Ok(changes) => changes
                        .filter(|c| c.key == self.filter.key)
                        .cloned()
                        .collect(),
                    Err(gone) => {
                        self.pending.push_back(event_line("ERROR", &gone.body()));
                        self.finished = true;
                        Vec::new()
                    }
                };
                self.cursor = store.current_rv();
                mine
            };
            self.pending
                .extend(mine.iter().filter_map(|change| self.filter.event(change)));
            if !self.pending.is_empty() || self.finished {
                continue;
            }
            let wake = (tokio::time::Instant::now() + BOOKMARK_EVERY).min(self.deadline);
            tokio::select! {
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        self.finished = true;
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    if self.bookmarks {
                        self.pending.push_back(self.filter.bookmark(self.cursor, false));
                    }
                    if tokio::time::Instant::now() >= self.deadline {
                        self.finished = true;
                    }
                }
            }
        }
    }
}

fn start_watch(
    shared: &Shared,
    store: &Store,
    call: &Call,
    rt: &ResourceType,
    namespace: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = call.query.selectors()?;
    let filter = WatchFilter {
        key: rt.key(),
        api_version: rt.api_version(),
        kind: rt.kind.clone(),
        namespace: namespace.map(str::to_string),
        labels,
        fields,
    };
    let bookmarks = call.query.flag("allowWatchBookmarks");
    let send_initial = call.query.flag("sendInitialEvents");
    let seconds = call
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .unwrap_or(DEFAULT_WATCH_SECONDS);
    let from = call
        .query
        .get("resourceVersion")
        .filter(|rv| !rv.is_empty() && *rv != "0");
    let mut pending = VecDeque::new();
    let mut finished = false;
    let cursor = match from {
        Some(rv) if !send_initial => {
            let cursor = rv.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!(
                    "resourceVersion {rv:?} is not one this server issued"
                ))
            })?;
            if let Err(gone) = store.changes_since(cursor) {
                pending.push_back(event_line("ERROR", &gone.body()));
                finished = true;
            }
            cursor
        }
        _ => {
            for object in store.list(&filter.key, namespace, &filter.labels, &filter.fields) {
                pending.push_back(event_line("ADDED", &object));
            }
            if send_initial && bookmarks {
                pending.push_back(filter.bookmark(store.current_rv(), true));
            }
            store.current_rv()
        }
    };
    let changes = store.subscribe();
    let stream = WatchStream {
        shared: shared.clone(),
        changes,
        filter,
        cursor,
        pending,
        deadline: tokio::time::Instant::now() + Duration::from_secs(seconds),
        bookmarks,
        finished,
    };
    let frames = futures::stream::unfold(stream, |mut stream| async move {
        let chunk = stream.next_chunk().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), stream))
    });
    let body = StreamBody::new(frames).boxed_unsync();
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(body)
        .map_err(|e| ApiError::from_code(500, format!("cannot build the watch response: {e}")))
}
