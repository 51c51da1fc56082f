//! The CRD manifests as `mailfleet crd` prints them and `crds/` stores them.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use super::{DomainRoute, SenderPool};

/// Every CRD of the project, in a fixed order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![SenderPool::crd(), DomainRoute::crd()]
}

/// File name under `crds/` for a CRD.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// One CRD as YAML, exactly as stored in `crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    let body = serde_saphyr::to_string(crd).expect("a CRD always serialises");
    format!("---\n{body}")
}

/// One CRD as the Helm chart's template: installed when `crds.install` is true
/// and kept on `helm uninstall` (deleting a CRD deletes every pool and route).
pub fn to_chart_template(crd: &CustomResourceDefinition) -> String {
    let mut crd = crd.clone();
    crd.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("helm.sh/resource-policy".into(), "keep".into());
    let body = serde_saphyr::to_string(&crd).expect("a CRD always serialises");
    format!(
        "{{{{- if .Values.crds.install }}}}\n---\n{}{{{{- end }}}}\n",
        escape_for_helm(&body)
    )
}

/// Helm reads `{{` and `}}` as template actions; descriptions use them literally
/// (the `{{ip}}` placeholder of IP-binding annotations), so they are emitted as
/// template strings that render back to themselves.
fn escape_for_helm(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push_str("{{ \"{{\" }}");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push_str("{{ \"}}\" }}");
            rest = after;
        } else {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Where the chart keeps its CRD templates, relative to the repository.
pub const CHART_CRD_DIR: &str = "charts/mailfleet/templates/crds";

/// All CRDs as one multi-document YAML stream (the output of `mailfleet crd`),
/// byte-identical to `cat crds/*.yaml`.
pub fn render_all() -> String {
    let mut crds = all();
    crds.sort_by_key(file_name);
    crds.iter().map(to_yaml).collect()
}
