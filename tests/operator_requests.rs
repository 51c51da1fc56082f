//! The exact API calls of one reconcile, pinned with `tower-test`: what a
//! first reconcile writes, and that a reconcile with nothing new writes nothing.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::client::Body;
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::watcher;
use kube::Client;
use mailfleet::api::{DomainRoute, SenderPool};
use mailfleet::operator::context::{ClusterStores, Context, Settings};
use mailfleet::operator::stores::Stores;
use mailfleet::operator::{pool_controller, route_controller};
use serde_json::{json, Value};
use tower_test::mock::{self, Handle};

type MockHandle = Handle<Request<Body>, Response<Body>>;

fn pool() -> SenderPool {
    serde_json::from_value(json!({
        "apiVersion": "mailfleet.io/v1alpha1", "kind": "SenderPool",
        "metadata": { "name": "bulk", "namespace": "mail", "uid": "uid-bulk",
                      "generation": 1, "resourceVersion": "7",
                      "creationTimestamp": "2026-11-29T08:00:00Z" },
        "spec": {
            "ips": [{ "address": "203.0.113.10" }],
            "template": { "spec": { "containers": [{ "name": "postfix", "image": "postfix:3.7" }] } }
        }
    }))
    .unwrap()
}

fn route() -> DomainRoute {
    serde_json::from_value(json!({
        "apiVersion": "mailfleet.io/v1alpha1", "kind": "DomainRoute",
        "metadata": { "name": "microsoft", "namespace": "mail", "uid": "uid-ms",
                      "generation": 1, "resourceVersion": "9" },
        "spec": { "provider": "microsoft", "match": { "mxHostSuffixes": [".mail.protection.outlook.com"] },
                  "pool": "bulk" }
    }))
    .unwrap()
}

fn store_of<K>(objects: Vec<K>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let (reader, mut writer): (Store<K>, Writer<K>) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

struct Cluster {
    pools: Vec<SenderPool>,
    routes: Vec<DomainRoute>,
    deployments: Vec<Deployment>,
    config_maps: Vec<ConfigMap>,
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
}

fn context(client: Client, cluster: Cluster) -> Arc<Context> {
    let stores = ClusterStores {
        pools: Stores::new(vec![store_of(cluster.pools)]),
        routes: Stores::new(vec![store_of(cluster.routes)]),
        pods: Stores::new(vec![store_of::<Pod>(Vec::new())]),
        deployments: Stores::new(vec![store_of(cluster.deployments)]),
        config_maps: Stores::new(vec![store_of(cluster.config_maps)]),
        services: Stores::new(vec![store_of(cluster.services)]),
        slices: Stores::new(vec![store_of(cluster.slices)]),
    };
    let ctx = Context::new(client, stores, Settings::default());
    ctx.set_synced();
    ctx.set_leading(true);
    Arc::new(ctx)
}

/// One request as the test sees it: method, path and query, content type, body.
struct Seen {
    method: String,
    uri: String,
    content_type: String,
    body: Value,
}

/// Answers every request by echoing its body (what an apply or a patch
/// stores, near enough), and records it.
async fn serve(handle: MockHandle, count: usize) -> Vec<Seen> {
    let mut handle = pin!(handle);
    let mut seen = Vec::new();
    for _ in 0..count {
        let (request, send) = handle.next_request().await.expect("a request");
        let method = request.method().to_string();
        let uri = request.uri().to_string();
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = http_body_util::BodyExt::collect(request.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let answer = if uri.contains("/status") {
            // A status patch answers with the whole object.
            let mut object = if uri.contains("senderpools") {
                serde_json::to_value(pool()).unwrap()
            } else {
                serde_json::to_value(route()).unwrap()
            };
            object["status"] = body["status"].clone();
            object
        } else {
            body.clone()
        };
        send.send_response(Response::new(Body::from(
            serde_json::to_vec(&answer).unwrap(),
        )));
        seen.push(Seen {
            method,
            uri,
            content_type,
            body,
        });
    }
    seen
}

const APPLY: &str = "?&force=true&fieldManager=mailfleet-operator";

#[tokio::test]
async fn a_first_route_reconcile_applies_service_and_slice_then_writes_status() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, 3));
    let ctx = context(
        Client::new(service, "default"),
        Cluster {
            pools: vec![pool()],
            routes: vec![route()],
            deployments: vec![],
            config_maps: vec![],
            services: vec![],
            slices: vec![],
        },
    );
    route_controller::reconcile(Arc::new(route()), ctx)
        .await
        .unwrap();
    let seen = server.await.unwrap();
    let calls: Vec<(String, String, String)> = seen
        .iter()
        .map(|s| (s.method.clone(), s.uri.clone(), s.content_type.clone()))
        .collect();
    assert_eq!(
        calls,
        vec![
            (
                "PATCH".into(),
                format!("/api/v1/namespaces/mail/services/mf-route-microsoft{APPLY}"),
                "application/apply-patch+yaml".into()
            ),
            (
                "PATCH".into(),
                format!("/apis/discovery.k8s.io/v1/namespaces/mail/endpointslices/mf-route-microsoft-0{APPLY}"),
                "application/apply-patch+yaml".into()
            ),
            (
                "PATCH".into(),
                "/apis/mailfleet.io/v1alpha1/namespaces/mail/domainroutes/microsoft/status?".into(),
                "application/merge-patch+json".into()
            ),
        ]
    );
    // The status patch is guarded by the resourceVersion it was computed from.
    assert_eq!(seen[2].body["metadata"]["resourceVersion"], "9");
    assert_eq!(seen[2].body["status"]["mode"], "Primary");
    assert_eq!(seen[2].body["status"]["targets"][0]["ip"], "203.0.113.10");
    assert!(
        seen[2].body.get("spec").is_none(),
        "a status patch never carries a spec"
    );
    assert_eq!(
        seen[0].body["metadata"]["ownerReferences"][0]["uid"],
        "uid-ms"
    );
    assert_eq!(
        seen[1].body["metadata"]["labels"]["kubernetes.io/service-name"],
        "mf-route-microsoft"
    );
}

#[tokio::test]
async fn a_first_pool_reconcile_applies_config_then_deployment_then_status() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, 4));
    let ctx = context(
        Client::new(service, "default"),
        Cluster {
            pools: vec![pool()],
            routes: vec![route()],
            deployments: vec![],
            config_maps: vec![],
            services: vec![],
            slices: vec![],
        },
    );
    pool_controller::reconcile(Arc::new(pool()), ctx)
        .await
        .unwrap();
    let seen = server.await.unwrap();
    let calls: Vec<(String, String)> = seen
        .iter()
        .map(|s| (s.method.clone(), s.uri.clone()))
        .collect();
    assert_eq!(
        calls,
        vec![
            (
                "PATCH".into(),
                format!("/api/v1/namespaces/mail/configmaps/mf-bulk-203-0-113-10-config{APPLY}")
            ),
            (
                "PATCH".into(),
                format!("/apis/apps/v1/namespaces/mail/deployments/mf-bulk-203-0-113-10{APPLY}")
            ),
            (
                "PATCH".into(),
                format!("/api/v1/namespaces/mail/services/mf-pool-bulk{APPLY}")
            ),
            (
                "PATCH".into(),
                "/apis/mailfleet.io/v1alpha1/namespaces/mail/senderpools/bulk/status?".into()
            ),
        ]
    );
    assert_eq!(seen[3].body["metadata"]["resourceVersion"], "7");
    assert_eq!(seen[3].body["status"]["ipCount"], 1);
    assert_eq!(seen[3].body["status"]["observedGeneration"], 1);
}

/// Runs one reconcile of each kind against stores that already hold what the
/// reconcile would write, and fails on any request.
#[tokio::test]
async fn a_reconcile_with_nothing_new_sends_no_request() {
    // First pass: learn what the operator writes.
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, 3));
    let ctx = context(
        Client::new(service, "default"),
        Cluster {
            pools: vec![pool()],
            routes: vec![route()],
            deployments: vec![],
            config_maps: vec![],
            services: vec![],
            slices: vec![],
        },
    );
    route_controller::reconcile(Arc::new(route()), ctx.clone())
        .await
        .unwrap();
    let route_writes = server.await.unwrap();
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, 4));
    let ctx2 = context(
        Client::new(service, "default"),
        Cluster {
            pools: vec![pool()],
            routes: vec![route()],
            deployments: vec![],
            config_maps: vec![],
            services: vec![],
            slices: vec![],
        },
    );
    pool_controller::reconcile(Arc::new(pool()), ctx2)
        .await
        .unwrap();
    let pool_writes = server.await.unwrap();

    // The cluster as those writes left it.
    let mut stored_route = route();
    stored_route.status = serde_json::from_value(route_writes[2].body["status"].clone()).unwrap();
    let mut stored_pool = pool();
    stored_pool.status = serde_json::from_value(pool_writes[3].body["status"].clone()).unwrap();
    let cluster = Cluster {
        pools: vec![stored_pool.clone()],
        routes: vec![stored_route.clone()],
        deployments: vec![serde_json::from_value(pool_writes[1].body.clone()).unwrap()],
        config_maps: vec![serde_json::from_value(pool_writes[0].body.clone()).unwrap()],
        services: vec![
            serde_json::from_value(route_writes[0].body.clone()).unwrap(),
            serde_json::from_value(pool_writes[2].body.clone()).unwrap(),
        ],
        slices: vec![serde_json::from_value(route_writes[1].body.clone()).unwrap()],
    };

    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, "default"), cluster);
    let steady = async {
        route_controller::reconcile(Arc::new(stored_route), ctx.clone())
            .await
            .unwrap();
        pool_controller::reconcile(Arc::new(stored_pool), ctx.clone())
            .await
            .unwrap();
    };
    let mut handle = pin!(handle);
    tokio::select! {
        () = steady => {}
        request = handle.next_request() => {
            let (request, _) = request.expect("a request");
            panic!("a reconcile with nothing new sent {} {}", request.method(), request.uri());
        }
        () = tokio::time::sleep(Duration::from_secs(10)) => panic!("the reconciles did not finish"),
    }
    assert_eq!(ctx.metrics.api_writes_total(), 0);
}
