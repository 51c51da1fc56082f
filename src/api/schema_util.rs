//! Schema helpers shared by the CRD types.

/// An object whose fields the API server keeps without validating them. Used for
/// the embedded pod template: its full schema would make the CRD too large for
/// client-side `kubectl apply` (the 256 KiB annotation limit), and the kubelet
/// validates the pod anyway when the Deployment is created.
pub(crate) fn preserve_unknown_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
