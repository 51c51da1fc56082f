//! Feedback goes to the leader only: the replica that leads labels its own
//! pod `mailfleet.io/operator-role=leader` and the chart's Service selects
//! that label, so an agent's post never lands on the standby. The label is
//! taken off when this replica stops leading and at start (a container
//! restarted in the pod of a former leader). A label left behind by a replica
//! that could not reach the API server only sends some posts to a standby,
//! which answers 503 with `Retry-After`, and the agent keeps the report.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;

use super::apply::FIELD_MANAGER;

/// The label of the leading replica's pod, and its value.
pub const ROLE_LABEL: &str = "mailfleet.io/operator-role";
pub const LEADER: &str = "leader";
/// Between two tries to label the pod while leading.
const RETRY: Duration = Duration::from_secs(1);
/// How long stepping down waits to take the label off.
const UNLABEL_TIMEOUT: Duration = Duration::from_secs(5);

/// This replica's pod (`POD_NAMESPACE`/`POD_NAME`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnPod {
    pub namespace: String,
    pub name: String,
}

/// Sets (`leading`) or removes the leader label on `pod`.
pub async fn mark(client: &Client, pod: &OwnPod, leading: bool) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    let value = leading.then_some(LEADER);
    let patch = serde_json::json!({ "metadata": { "labels": { ROLE_LABEL: value } } });
    api.patch(
        &pod.name,
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        },
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
}

/// Labels `pod` as the leader, trying again until it works (the Service has
/// no endpoint until then: agents keep their reports and retry).
pub async fn mark_leading(client: Client, pod: OwnPod) {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match mark(&client, &pod, true).await {
            Ok(()) => {
                tracing::info!(pod = %pod.name, "pod labelled {ROLE_LABEL}={LEADER}: feedback comes here");
                return;
            }
            Err(e) => tracing::warn!(pod = %pod.name, attempt, error = %e,
                "cannot label this pod as the leader; the Service sends it no feedback until it can"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Takes the leader label off `pod`, giving up after a few seconds (the
/// standby answers 503 to what still reaches it).
pub async fn unmark(client: &Client, pod: &OwnPod) {
    match tokio::time::timeout(UNLABEL_TIMEOUT, mark(client, pod, false)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(pod = %pod.name, error = %e, "cannot take the leader label off this pod")
        }
        Err(_) => tracing::warn!(pod = %pod.name, "taking the leader label off this pod timed out"),
    }
}
