//! The fake API server (tests/support/fake_api.rs) against the real kube
//! client and runtime: typed calls, server-side apply, watches, a
//! `Controller`, injected failures, TokenReviews, selectors, garbage
//! collection, the status subresource.

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as RecordedEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::runtime::Controller;
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};

use support::fake_api::{FakeApi, TokenUser, POD_NAME_EXTRA, POD_UID_EXTRA};

const WAIT: Duration = Duration::from_secs(5);
const MANAGER: &str = "mailfleet-operator";

fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    let data: BTreeMap<String, String> = data
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "mail"},
        "data": data,
    }))
    .expect("a valid ConfigMap")
}

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn typed_config_map_create_get_list_apply_delete() {
    let fake = FakeApi::start().await;
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "mail");

    let created = api
        .create(&PostParams::default(), &config_map("a", &[("k", "1")]))
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.creation_timestamp.is_some());
    let again = api
        .create(&PostParams::default(), &config_map("a", &[]))
        .await;
    assert_eq!(api_error(again), (409, "AlreadyExists".to_string()));

    let fetched = api.get("a").await.expect("get");
    assert_eq!(fetched.data.unwrap()["k"], "1");
    assert_eq!(
        api_error(api.get("missing").await),
        (404, "NotFound".to_string())
    );

    let applied = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "b", "labels": {"mailfleet.io/pool": "p"}},
        "data": {"x": "1", "y": "2"},
    });
    let params = PatchParams::apply(MANAGER).force();
    let b = api
        .patch("b", &params, &Patch::Apply(&applied))
        .await
        .expect("apply creates");
    assert_eq!(b.labels()["mailfleet.io/pool"], "p");
    let rv_before = b.resource_version().unwrap();

    let same = api
        .patch("b", &params, &Patch::Apply(&applied))
        .await
        .expect("apply again");
    assert_eq!(
        same.resource_version().unwrap(),
        rv_before,
        "a no-op apply stores nothing"
    );

    let smaller = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "b"},
        "data": {"x": "9"},
    });
    let b = api
        .patch("b", &params, &Patch::Apply(&smaller))
        .await
        .expect("apply smaller");
    assert_eq!(
        b.data.clone().unwrap(),
        BTreeMap::from([("x".to_string(), "9".to_string())])
    );
    assert!(
        b.labels().is_empty(),
        "fields the manager stopped applying are removed"
    );

    let names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .iter()
        .map(|cm| cm.name_any())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let everywhere: Api<ConfigMap> = Api::all(fake.client());
    assert_eq!(
        everywhere
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );

    api.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    assert_eq!(api_error(api.get("a").await), (404, "NotFound".to_string()));
    assert!(fake.get("v1", "ConfigMap", "mail", "a").is_none());
    assert!(fake.get("v1", "ConfigMap", "mail", "b").is_some());
}

#[tokio::test]
async fn replace_and_patch_check_the_resource_version() {
    let fake = FakeApi::start().await;
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "mail");
    let first = api
        .create(&PostParams::default(), &config_map("a", &[("k", "1")]))
        .await
        .unwrap();
    let mut newer = first.clone();
    newer.data = Some(BTreeMap::from([("k".to_string(), "2".to_string())]));
    api.replace("a", &PostParams::default(), &newer)
        .await
        .expect("replace with the current version");

    let mut stale = first.clone();
    stale.data = Some(BTreeMap::from([("k".to_string(), "3".to_string())]));
    let conflict = api.replace("a", &PostParams::default(), &stale).await;
    assert_eq!(api_error(conflict), (409, "Conflict".to_string()));

    let stale_merge =
        json!({"metadata": {"resourceVersion": first.resource_version()}, "data": {"k": "4"}});
    let conflict = api
        .patch("a", &PatchParams::default(), &Patch::Merge(&stale_merge))
        .await;
    assert_eq!(api_error(conflict), (409, "Conflict".to_string()));
    assert_eq!(api.get("a").await.unwrap().data.unwrap()["k"], "2");

    let merge = json!({"data": {"k": null, "other": "x"}});
    let merged = api
        .patch("a", &PatchParams::default(), &Patch::Merge(&merge))
        .await
        .unwrap();
    assert_eq!(
        merged.data.unwrap(),
        BTreeMap::from([("other".to_string(), "x".to_string())])
    );

    let json_patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/data/other", "value": "x"},
        {"op": "add", "path": "/metadata/finalizers", "value": ["mailfleet.io/cleanup"]},
    ]))
    .unwrap();
    let patched = api
        .patch("a", &PatchParams::default(), &Patch::<()>::Json(json_patch))
        .await
        .unwrap();
    assert_eq!(patched.finalizers(), ["mailfleet.io/cleanup"]);
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/data/other", "value": "nope"}]))
            .unwrap();
    let refused = api
        .patch("a", &PatchParams::default(), &Patch::<()>::Json(failing))
        .await;
    assert_eq!(api_error(refused), (422, "Invalid".to_string()));
}

#[tokio::test]
async fn server_side_apply_conflicts_between_managers_unless_forced() {
    let fake = FakeApi::start().await;
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "mail");
    let mine = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "1"}});
    api.patch("c", &PatchParams::apply("first"), &Patch::Apply(&mine))
        .await
        .unwrap();
    let theirs = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "2"}});
    let refused = api
        .patch("c", &PatchParams::apply("second"), &Patch::Apply(&theirs))
        .await;
    assert_eq!(api_error(refused), (409, "Conflict".to_string()));
    let same_value = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "1"}});
    api.patch(
        "c",
        &PatchParams::apply("second"),
        &Patch::Apply(&same_value),
    )
    .await
    .expect("applying an equal value shares ownership");
    let forced = api
        .patch(
            "c",
            &PatchParams::apply("second").force(),
            &Patch::Apply(&theirs),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["k"], "2");
    let missing_manager = api
        .patch("c", &PatchParams::default(), &Patch::Apply(&theirs))
        .await;
    assert_eq!(api_error(missing_manager).0, 422);
}

async fn next_event(
    stream: &mut (impl futures::Stream<Item = Result<Event<ConfigMap>, watcher::Error>> + Unpin),
) -> Event<ConfigMap> {
    tokio::time::timeout(WAIT, stream.try_next())
        .await
        .expect("a watch event in time")
        .expect("no watch error")
        .expect("the watch stream goes on")
}

#[tokio::test]
async fn watcher_sees_added_modified_and_deleted() {
    let fake = FakeApi::start().await;
    fake.insert(serde_json::to_value(config_map("before", &[])).unwrap());
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "mail");
    let mut events = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
    assert!(matches!(next_event(&mut events).await, Event::Init));
    match next_event(&mut events).await {
        Event::InitApply(cm) => assert_eq!(cm.name_any(), "before"),
        other => panic!("expected the existing object, got {other:?}"),
    }
    assert!(matches!(next_event(&mut events).await, Event::InitDone));

    api.create(&PostParams::default(), &config_map("w", &[("k", "1")]))
        .await
        .unwrap();
    match next_event(&mut events).await {
        Event::Apply(cm) => assert_eq!(cm.name_any(), "w"),
        other => panic!("expected ADDED, got {other:?}"),
    }
    let merge = json!({"data": {"k": "2"}});
    api.patch("w", &PatchParams::default(), &Patch::Merge(&merge))
        .await
        .unwrap();
    match next_event(&mut events).await {
        Event::Apply(cm) => assert_eq!(cm.data.unwrap()["k"], "2"),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    api.delete("w", &DeleteParams::default()).await.unwrap();
    match next_event(&mut events).await {
        Event::Delete(cm) => assert_eq!(cm.name_any(), "w"),
        other => panic!("expected DELETED, got {other:?}"),
    }
}

#[tokio::test]
async fn raw_watch_replays_from_a_resource_version_and_reports_gone_after_compaction() {
    let fake = FakeApi::start().await;
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "mail");
    let a = api
        .create(&PostParams::default(), &config_map("a", &[]))
        .await
        .unwrap();
    api.create(&PostParams::default(), &config_map("b", &[]))
        .await
        .unwrap();
    let params = WatchParams::default().timeout(2);
    let mut stream = api
        .watch(&params, &a.resource_version().unwrap())
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(WAIT, stream.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Added(cm)) => assert_eq!(cm.name_any(), "b"),
        other => panic!("expected b ADDED after a's version, got {other:?}"),
    }
    fake.compact_history();
    let mut stream = api
        .watch(&params, &a.resource_version().unwrap())
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(WAIT, stream.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Error(status)) => assert_eq!(status.code, 410),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
}

#[derive(Default)]
struct Seen(Mutex<Vec<(String, String)>>);

async fn remember(cm: Arc<ConfigMap>, seen: Arc<Seen>) -> Result<Action, Infallible> {
    let value = cm
        .data
        .as_ref()
        .and_then(|d| d.get("k"))
        .cloned()
        .unwrap_or_default();
    seen.0.lock().unwrap().push((cm.name_any(), value));
    Ok(Action::await_change())
}

fn never(_: Arc<ConfigMap>, _: &Infallible, _: Arc<Seen>) -> Action {
    Action::await_change()
}

#[tokio::test]
async fn a_real_controller_reconciles_inserted_and_changed_objects() {
    let fake = FakeApi::start().await;
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "mail");
    let seen = Arc::new(Seen::default());
    let controller = Controller::new(api, watcher::Config::default())
        .run(remember, never, seen.clone())
        .for_each(|_| async {});
    let running = tokio::spawn(controller);

    fake.insert(serde_json::to_value(config_map("one", &[("k", "1")])).unwrap());
    let has = |name: &str, value: &str| {
        let seen = seen.clone();
        let wanted = (name.to_string(), value.to_string());
        move |_: &FakeApi| seen.0.lock().unwrap().contains(&wanted)
    };
    assert!(
        fake.wait_for(has("one", "1"), WAIT).await,
        "the inserted object is reconciled"
    );
    fake.modify("v1", "ConfigMap", "mail", "one", |cm| {
        cm["data"]["k"] = json!("2")
    });
    assert!(
        fake.wait_for(has("one", "2"), WAIT).await,
        "the changed object is reconciled"
    );
    running.abort();
}

#[tokio::test]
async fn injected_conflict_reaches_the_client_once() {
    let fake = FakeApi::start().await;
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "mail");
    api.create(&PostParams::default(), &config_map("a", &[]))
        .await
        .unwrap();
    fake.fail_next("PATCH", "/configmaps/a", 409, 1);
    let merge = json!({"data": {"k": "1"}});
    let refused = api
        .patch("a", &PatchParams::default(), &Patch::Merge(&merge))
        .await;
    assert_eq!(api_error(refused), (409, "Conflict".to_string()));
    api.patch("a", &PatchParams::default(), &Patch::Merge(&merge))
        .await
        .expect("the retry goes through");
    let statuses: Vec<(String, u16)> = fake
        .writes()
        .iter()
        .map(|w| (w.method.clone(), w.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("POST".to_string(), 201),
            ("PATCH".to_string(), 409),
            ("PATCH".to_string(), 200)
        ]
    );
    assert_eq!(fake.write_count(), 3);
}

#[tokio::test]
async fn token_reviews_answer_from_allowed_tokens() {
    let fake = FakeApi::start().await;
    fake.insert(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "sender-0", "namespace": "mail"},
        "spec": {"serviceAccountName": "sender", "containers": [{"name": "postfix", "image": "postfix"}]},
    }));
    let user = fake.allow_pod_token("good-token", "mail", "sender-0");
    let pod_uid = fake.get("v1", "Pod", "mail", "sender-0").unwrap()["metadata"]["uid"].clone();
    let reviews: Api<TokenReview> = Api::all(fake.client());
    let review = |token: &str| -> TokenReview {
        serde_json::from_value(
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                      "metadata": {}, "spec": {"token": token}}),
        )
        .unwrap()
    };
    let answer = reviews
        .create(&PostParams::default(), &review("good-token"))
        .await
        .unwrap();
    let status = answer.status.unwrap();
    assert_eq!(status.authenticated, Some(true));
    let who = status.user.unwrap();
    assert_eq!(
        who.username.as_deref(),
        Some("system:serviceaccount:mail:sender")
    );
    assert_eq!(who.username, Some(user.username));
    let extra = who.extra.unwrap();
    assert_eq!(extra[POD_NAME_EXTRA], ["sender-0"]);
    assert_eq!(json!(extra[POD_UID_EXTRA]), json!([pod_uid]));

    let answer = reviews
        .create(&PostParams::default(), &review("forged"))
        .await
        .unwrap();
    assert_eq!(answer.status.unwrap().authenticated, Some(false));
    fake.allow_token("other", TokenUser::pod("mail", "default", "x", "uid-x"));
    let answer = reviews
        .create(&PostParams::default(), &review("other"))
        .await
        .unwrap();
    assert_eq!(
        answer.status.unwrap().user.unwrap().extra.unwrap()[POD_NAME_EXTRA],
        ["x"]
    );
    assert_eq!(fake.write_count(), 0, "a TokenReview is not a write");
}

#[tokio::test]
async fn label_and_field_selectors_filter_lists() {
    let fake = FakeApi::start().await;
    for (name, labels) in [
        ("a", json!({"pool": "p1", "tier": "1"})),
        ("b", json!({"pool": "p2", "tier": "2"})),
        ("c", json!({"pool": "p3"})),
        ("d", json!({})),
    ] {
        fake.insert(json!({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": name, "namespace": "mail", "labels": labels}}));
    }
    fake.insert(json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "a", "namespace": "other", "labels": {"pool": "p1"}}}));
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "mail");
    let names = |lp: ListParams| {
        let api = api.clone();
        async move {
            api.list(&lp)
                .await
                .unwrap()
                .items
                .iter()
                .map(|c| c.name_any())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(names(ListParams::default().labels("pool=p1")).await, ["a"]);
    assert_eq!(names(ListParams::default().labels("pool==p2")).await, ["b"]);
    assert_eq!(
        names(ListParams::default().labels("pool!=p1")).await,
        ["b", "c", "d"]
    );
    assert_eq!(
        names(ListParams::default().labels("pool in (p1, p3)")).await,
        ["a", "c"]
    );
    assert_eq!(
        names(ListParams::default().labels("pool notin (p1,p3)")).await,
        ["b", "d"]
    );
    assert_eq!(
        names(ListParams::default().labels("tier")).await,
        ["a", "b"]
    );
    assert_eq!(
        names(ListParams::default().labels("!tier")).await,
        ["c", "d"]
    );
    assert_eq!(
        names(ListParams::default().labels("pool,tier=2")).await,
        ["b"]
    );
    assert_eq!(
        names(ListParams::default().fields("metadata.name=c")).await,
        ["c"]
    );
    assert_eq!(
        names(ListParams::default().fields("metadata.name!=c")).await,
        ["a", "b", "d"]
    );
    let all: Api<ConfigMap> = Api::all(fake.client());
    let in_other = all
        .list(&ListParams::default().fields("metadata.namespace=other"))
        .await
        .unwrap();
    assert_eq!(in_other.items.len(), 1);
    assert_eq!(
        fake.list_matching("v1", "ConfigMap", None, "pool=p1").len(),
        2
    );
    let paged = api.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(paged.items.len(), 3);
    let token = paged.metadata.continue_.expect("a continue token");
    let rest = api
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(
        rest.items.iter().map(|c| c.name_any()).collect::<Vec<_>>(),
        ["d"]
    );
    let bad = api.list(&ListParams::default().labels("pool in p1")).await;
    assert_eq!(api_error(bad).0, 400);
}

#[tokio::test]
async fn deleting_an_owner_collects_its_dependents_and_finalizers_hold_deletion() {
    let fake = FakeApi::start().await;
    let pool = fake.insert(
        json!({"apiVersion": "mailfleet.io/v1alpha1", "kind": "SenderPool",
                                  "metadata": {"name": "p", "namespace": "mail"}, "spec": {}}),
    );
    let owner = json!([{"apiVersion": "mailfleet.io/v1alpha1", "kind": "SenderPool", "name": "p",
                        "uid": pool["metadata"]["uid"], "controller": true}]);
    let cm = fake.insert(json!({"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": "owned", "namespace": "mail", "ownerReferences": owner}}));
    let grandchild_owner = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owned", "uid": cm["metadata"]["uid"]}]);
    fake.insert(json!({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": "grandchild", "namespace": "mail", "ownerReferences": grandchild_owner}}));
    fake.insert(json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "held", "namespace": "mail", "ownerReferences": owner,
                                    "finalizers": ["mailfleet.io/cleanup"]}}));
    fake.insert(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "free", "namespace": "mail"}}));

    let pools: Api<kube::api::DynamicObject> = Api::namespaced_with(
        fake.client(),
        "mail",
        &kube::api::ApiResource {
            group: "mailfleet.io".into(),
            version: "v1alpha1".into(),
            api_version: "mailfleet.io/v1alpha1".into(),
            kind: "SenderPool".into(),
            plural: "senderpools".into(),
        },
    );
    pools.delete("p", &DeleteParams::default()).await.unwrap();
    assert!(fake.get("v1", "ConfigMap", "mail", "owned").is_none());
    assert!(
        fake.get("v1", "Secret", "mail", "grandchild").is_none(),
        "collection cascades"
    );
    assert!(fake.get("v1", "ConfigMap", "mail", "free").is_some());
    let held = fake
        .get("v1", "ConfigMap", "mail", "held")
        .expect("a finalizer holds the object");
    assert!(held["metadata"]["deletionTimestamp"].is_string());

    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "mail");
    let clear = json!({"metadata": {"finalizers": null}});
    api.patch("held", &PatchParams::default(), &Patch::Merge(&clear))
        .await
        .unwrap();
    assert!(
        fake.get("v1", "ConfigMap", "mail", "held").is_none(),
        "the last finalizer gone, it is deleted"
    );
}

fn deployment(name: &str, image: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "mail"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "postfix", "image": image}]}},
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn status_subresource_writes_only_status_and_keeps_generation() {
    let fake = FakeApi::start().await;
    let api: Api<Deployment> = Api::namespaced(fake.client(), "mail");
    let params = PatchParams::apply(MANAGER).force();
    let created = api
        .patch("d", &params, &Patch::Apply(deployment("d", "postfix:1")))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));

    let status = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                        "status": {"replicas": 1, "observedGeneration": 1}, "spec": {"replicas": 7}});
    let after = api
        .patch_status("d", &params, &Patch::Apply(&status))
        .await
        .unwrap();
    assert_eq!(after.status.unwrap().observed_generation, Some(1));
    assert_eq!(
        after.spec.unwrap().replicas,
        Some(1),
        "a status write leaves spec alone"
    );
    assert_eq!(after.metadata.generation, Some(1));

    let with_status = json!({"status": {"replicas": 5}, "metadata": {"labels": {"x": "y"}}});
    let after = api
        .patch("d", &PatchParams::default(), &Patch::Merge(&with_status))
        .await
        .unwrap();
    assert_eq!(
        after.status.unwrap().replicas,
        Some(1),
        "the main resource keeps the stored status"
    );
    assert_eq!(
        after.metadata.generation,
        Some(1),
        "metadata changes keep the generation"
    );

    let changed = api
        .patch("d", &params, &Patch::Apply(deployment("d", "postfix:2")))
        .await
        .unwrap();
    assert_eq!(
        changed.metadata.generation,
        Some(2),
        "a spec change bumps the generation"
    );
    assert_eq!(changed.labels()["x"], "y", "fields of other managers stay");
    let missing = api
        .patch_status("nope", &params, &Patch::Apply(&status))
        .await;
    assert_eq!(api_error(missing).0, 404);
}

#[tokio::test]
async fn the_event_recorder_publishes_events() {
    let fake = FakeApi::start().await;
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "mail");
    let cm = api
        .create(&PostParams::default(), &config_map("a", &[]))
        .await
        .unwrap();
    let recorder = Recorder::new(fake.client(), Reporter::from("mailfleet-operator"));
    let event = RecordedEvent {
        type_: EventType::Warning,
        reason: "IpBlocked".into(),
        note: Some("blocked".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    recorder
        .publish(&event, &cm.object_ref(&()))
        .await
        .expect("first publish creates");
    recorder
        .publish(&event, &cm.object_ref(&()))
        .await
        .expect("second publish patches the series");
    let events = fake.list("events.k8s.io/v1", "Event");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["reason"], "IpBlocked");
    assert_eq!(events[0]["series"]["count"], 2);
}

#[tokio::test]
async fn discovery_finds_the_served_resources() {
    let fake = FakeApi::start().await;
    let discovery = kube::discovery::Discovery::new(fake.client())
        .run()
        .await
        .expect("discovery");
    let (pools, caps) = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(r, _)| r.kind == "SenderPool")
        .expect("SenderPool is discovered");
    assert_eq!(pools.plural, "senderpools");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(caps.subresources.iter().any(|(s, _)| s.plural == "status"));
    assert!(caps.supports_operation("watch"));
    let version = fake.client().apiserver_version().await.expect("version");
    assert_eq!(version.major, "1");
}

#[tokio::test]
async fn wait_for_sees_changes_and_times_out() {
    let fake = FakeApi::start().await;
    let value: Value = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late", "namespace": "mail"}});
    let writer = {
        let client = fake.client();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let api: Api<ConfigMap> = Api::namespaced(client, "mail");
            api.create(
                &PostParams::default(),
                &serde_json::from_value(value).unwrap(),
            )
            .await
            .unwrap();
        })
    };
    assert!(
        fake.wait_for(
            |api| api.get("v1", "ConfigMap", "mail", "late").is_some(),
            WAIT
        )
        .await
    );
    writer.await.unwrap();
    assert!(
        !fake
            .wait_for(
                |api| api.get("v1", "ConfigMap", "mail", "never").is_some(),
                Duration::from_millis(60)
            )
            .await
    );
}

#[tokio::test]
async fn a_watch_with_a_label_selector_sees_objects_enter_and_leave_it() {
    let fake = FakeApi::start().await;
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "mail");
    api.create(&PostParams::default(), &config_map("x", &[]))
        .await
        .unwrap();
    let params = WatchParams::default()
        .labels("mailfleet.io/pool=p")
        .timeout(5);
    let mut stream = api.watch(&params, "0").await.unwrap().boxed();
    async fn next(
        stream: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Unpin),
    ) -> WatchEvent<ConfigMap> {
        tokio::time::timeout(WAIT, stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    }
    let label = |value: Value| json!({"metadata": {"labels": {"mailfleet.io/pool": value}}});
    api.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(&label(json!("p"))),
    )
    .await
    .unwrap();
    assert!(matches!(next(&mut stream).await, WatchEvent::Added(cm) if cm.name_any() == "x"));
    let data = json!({"data": {"k": "1"}});
    api.patch("x", &PatchParams::default(), &Patch::Merge(&data))
        .await
        .unwrap();
    assert!(matches!(next(&mut stream).await, WatchEvent::Modified(cm) if cm.data.is_some()));
    api.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(&label(json!("q"))),
    )
    .await
    .unwrap();
    assert!(matches!(next(&mut stream).await, WatchEvent::Deleted(cm) if cm.name_any() == "x"));
}

#[tokio::test]
async fn an_idle_watch_gets_a_bookmark_and_ends_at_its_timeout() {
    let fake = FakeApi::start().await;
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "mail");
    let created = api
        .create(&PostParams::default(), &config_map("a", &[]))
        .await
        .unwrap();
    let params = WatchParams::default().timeout(1);
    let started = std::time::Instant::now();
    let events: Vec<WatchEvent<ConfigMap>> = tokio::time::timeout(
        WAIT,
        api.watch(&params, &created.resource_version().unwrap())
            .await
            .unwrap()
            .try_collect(),
    )
    .await
    .expect("the watch ends by itself")
    .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
    match events.as_slice() {
        [WatchEvent::Bookmark(mark)] => {
            assert_eq!(
                mark.metadata.resource_version,
                created.resource_version().unwrap()
            )
        }
        other => panic!("expected one BOOKMARK, got {other:?}"),
    }
}

#[tokio::test]
async fn a_streaming_list_watcher_and_a_reflector_see_the_objects() {
    let fake = FakeApi::start().await;
    fake.insert(serde_json::to_value(config_map("a", &[])).unwrap());
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "mail");
    let (reader, writer) = kube::runtime::reflector::store::<ConfigMap>();
    let config = watcher::Config::default().streaming_lists();
    let stream = kube::runtime::reflector(writer, watcher::watcher(api.clone(), config));
    let running = tokio::spawn(stream.for_each(|_| async {}));
    reader
        .wait_until_ready()
        .await
        .expect("the reflector initialises");
    assert_eq!(reader.state().len(), 1);
    api.create(&PostParams::default(), &config_map("b", &[]))
        .await
        .unwrap();
    let filled = fake.wait_for(|_| reader.state().len() == 2, WAIT).await;
    assert!(filled, "the reflector store follows the watch");
    running.abort();
}

#[tokio::test]
async fn an_inserted_unknown_kind_is_served_under_its_derived_plural() {
    let fake = FakeApi::start().await;
    fake.insert(json!({"apiVersion": "example.com/v1", "kind": "Policy",
                       "metadata": {"name": "p", "namespace": "mail"}, "spec": {"x": 1}}));
    let resource = kube::api::ApiResource {
        group: "example.com".into(),
        version: "v1".into(),
        api_version: "example.com/v1".into(),
        kind: "Policy".into(),
        plural: "policies".into(),
    };
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(fake.client(), "mail", &resource);
    let policy = api.get("p").await.expect("served as policies");
    assert_eq!(policy.data["spec"]["x"], 1);
    assert_eq!(fake.list("example.com/v1", "Policy").len(), 1);
}

#[tokio::test]
async fn set_pod_ready_marks_the_pod_ready_with_an_ip() {
    let fake = FakeApi::start().await;
    fake.insert(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "s", "namespace": "mail"},
                       "spec": {"containers": [{"name": "postfix", "image": "postfix"}]}}),
    );
    fake.set_pod_ready("mail", "s", true);
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(fake.client(), "mail");
    let status = pods.get("s").await.unwrap().status.unwrap();
    let ready = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True");
    assert!(status.pod_ip.is_some());
    fake.set_pod_ready("mail", "s", false);
    let pod = fake.get("v1", "Pod", "mail", "s").unwrap();
    let ready = pod["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned();
    assert_eq!(ready.unwrap()["status"], "False");
    assert_eq!(pod["status"]["podIP"], json!(status.pod_ip), "the IP stays");
}

#[tokio::test]
async fn lease_managers_elect_one_leader_and_hand_over_on_release() {
    use kube_lease_manager::LeaseManagerBuilder;
    let fake = FakeApi::start().await;
    let manager = |identity: &'static str| {
        LeaseManagerBuilder::new(fake.client(), "mailfleet-operator")
            .with_namespace("mail")
            .with_identity(identity)
            .with_duration(2)
            .with_grace(1)
            .build()
    };
    let (first, first_task) = manager("a").await.unwrap().watch().await;
    let (second, second_task) = manager("b").await.unwrap().watch().await;
    let holder = |api: &FakeApi| -> Option<String> {
        let lease = api.get(
            "coordination.k8s.io/v1",
            "Lease",
            "mail",
            "mailfleet-operator",
        )?;
        lease["spec"]["holderIdentity"].as_str().map(str::to_string)
    };
    let elected = fake
        .wait_for(
            |api| holder(api).is_some() && (*first.borrow() || *second.borrow()),
            WAIT,
        )
        .await;
    assert!(elected, "one manager takes the lease");
    assert!(!(*first.borrow() && *second.borrow()), "never two leaders");
    let (leader, leader_task, follower, follower_name) = if *first.borrow() {
        (first, first_task, second, "b")
    } else {
        (second, second_task, first, "a")
    };
    drop(leader);
    leader_task
        .await
        .unwrap()
        .expect("the leader releases the lease");
    let handed_over = fake
        .wait_for(
            |api| holder(api).as_deref() == Some(follower_name) && *follower.borrow(),
            WAIT,
        )
        .await;
    assert!(handed_over, "the follower takes over");
}

#[tokio::test]
async fn run_deployment_makes_ready_pods_from_the_template() {
    let fake = FakeApi::start().await;
    let api: Api<Deployment> = Api::namespaced(fake.client(), "mail");
    let params = PatchParams::apply(MANAGER).force();
    let mut two = deployment("d", "postfix:1");
    two.spec.as_mut().unwrap().replicas = Some(2);
    api.patch("d", &params, &Patch::Apply(&two)).await.unwrap();
    let pods = fake.run_deployment("mail", "d", true);
    assert_eq!(pods.len(), 2);
    let listed = fake.list_matching("v1", "Pod", Some("mail"), "app=d");
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|p| p["status"]["podIP"].is_string()));
    let status = api.get("d").await.unwrap().status.unwrap();
    assert_eq!((status.replicas, status.ready_replicas), (Some(2), Some(2)));

    let newer = deployment("d", "postfix:2");
    api.patch("d", &params, &Patch::Apply(&newer))
        .await
        .unwrap();
    let replaced = fake.run_deployment("mail", "d", false);
    assert_eq!(replaced.len(), 1);
    assert!(
        !pods.contains(&replaced[0]),
        "a new template makes new pods"
    );
    let listed = fake.list_matching("v1", "Pod", Some("mail"), "app=d");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["spec"]["containers"][0]["image"], "postfix:2");
    assert_eq!(
        api.get("d").await.unwrap().status.unwrap().ready_replicas,
        Some(0)
    );

    api.delete("d", &DeleteParams::default()).await.unwrap();
    assert!(
        fake.list("v1", "Pod").is_empty(),
        "the pods go with their deployment"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_finalizer_helper_adds_and_removes_its_finalizer_with_json_patches() {
    use kube::runtime::finalizer::{finalizer, Event as Finalizer};
    let fake = FakeApi::start().await;
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "mail");
    api.create(&PostParams::default(), &config_map("f", &[]))
        .await
        .unwrap();
    let cleaned = Arc::new(Mutex::new(Vec::new()));
    let step = |api: Api<ConfigMap>, cleaned: Arc<Mutex<Vec<String>>>| async move {
        let current = Arc::new(api.get("f").await.unwrap());
        finalizer(&api, "mailfleet.io/cleanup", current, |event| async move {
            if let Finalizer::Cleanup(cm) = event {
                cleaned.lock().unwrap().push(cm.name_any());
            }
            Ok::<_, Infallible>(Action::await_change())
        })
        .await
        .expect("the finalizer helper succeeds")
    };
    step(api.clone(), cleaned.clone()).await;
    assert_eq!(
        api.get("f").await.unwrap().finalizers(),
        ["mailfleet.io/cleanup"]
    );
    step(api.clone(), cleaned.clone()).await;
    api.delete("f", &DeleteParams::default()).await.unwrap();
    assert!(
        fake.get("v1", "ConfigMap", "mail", "f").is_some(),
        "held by the finalizer"
    );
    step(api.clone(), cleaned.clone()).await;
    assert_eq!(*cleaned.lock().unwrap(), ["f"]);
    assert!(
        fake.get("v1", "ConfigMap", "mail", "f").is_none(),
        "gone once cleaned up"
    );
    let patches = fake.writes().iter().filter(|w| w.method == "PATCH").count();
    assert_eq!(patches, 2, "one JSON patch adds, one removes");
}

#[tokio::test]
async fn dry_runs_store_nothing_and_collections_can_be_deleted_by_selector() {
    let fake = FakeApi::start().await;
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "mail");
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let answered = api.create(&dry, &config_map("dry", &[])).await.unwrap();
    assert_eq!(answered.name_any(), "dry");
    assert!(fake.get("v1", "ConfigMap", "mail", "dry").is_none());

    for (name, pool) in [("a", "p"), ("b", "p"), ("c", "q")] {
        fake.insert(json!({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": name, "namespace": "mail", "labels": {"pool": pool}}}));
    }
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("pool=p"),
    )
    .await
    .unwrap();
    let left: Vec<String> = fake
        .list("v1", "ConfigMap")
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, ["c"]);
}

#[tokio::test]
async fn an_operator_apply_takes_over_a_seeded_object_without_conflict() {
    let fake = FakeApi::start().await;
    fake.insert(json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "seeded", "namespace": "mail"}, "data": {"k": "seed"}}));
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "mail");
    let applied = json!({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "seeded"}, "data": {"k": "operator"}});
    let result = api
        .patch(
            "seeded",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(&applied),
        )
        .await
        .expect("seeded fields have no manager to conflict with");
    assert_eq!(result.data.unwrap()["k"], "operator");
}
