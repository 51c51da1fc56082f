//! The agent's feedback token: a projected ServiceAccount token for the
//! audience `mailfleet` only, short-lived and rotated by the kubelet. A token
//! read off the wire (or out of the pod) cannot be used against the API
//! server, which accepts only its own audience.

use k8s_openapi::api::core::v1::{
    EnvVar, PodSpec, ProjectedVolumeSource, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};

/// The audience of the agents' tokens; the feedback receiver's TokenReview
/// asks for exactly this one.
pub const FEEDBACK_AUDIENCE: &str = "mailfleet";
/// The projected volume holding the token.
pub const TOKEN_VOLUME: &str = "mailfleet-token";
/// Where the agent container finds it.
pub const TOKEN_DIR: &str = "/var/run/secrets/mailfleet.io/feedback";
pub const TOKEN_FILE: &str = "token";
/// The kubelet renews the token at 80 % of this; the API server's minimum is 600.
pub const TOKEN_SECONDS: i64 = 3600;

/// The agent's environment variable holding the CA of the operator's
/// feedback certificate (`--ca-env`): public, and a pod cannot mount a
/// Secret of the operator's namespace.
pub const FEEDBACK_CA_ENV: &str = "MAILFLEET_FEEDBACK_CA";

/// The environment variable and the agent's `--ca-env` arguments that make
/// it trust only `ca` (PEM) for an https:// endpoint; nothing without one.
pub fn feedback_ca(ca: Option<&str>) -> Option<(EnvVar, [String; 2])> {
    let ca = ca?;
    Some((
        EnvVar {
            name: FEEDBACK_CA_ENV.to_string(),
            value: Some(ca.to_string()),
            value_from: None,
        },
        ["--ca-env".to_string(), FEEDBACK_CA_ENV.to_string()],
    ))
}

/// Adds the projected token volume to `spec` and returns the agent's mount
/// of it and the `--token-file` arguments.
pub fn add_feedback_token(spec: &mut PodSpec) -> (VolumeMount, [String; 2]) {
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.retain(|v| v.name != TOKEN_VOLUME);
    volumes.push(Volume {
        name: TOKEN_VOLUME.to_string(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(FEEDBACK_AUDIENCE.to_string()),
                    expiration_seconds: Some(TOKEN_SECONDS),
                    path: TOKEN_FILE.to_string(),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mount = VolumeMount {
        name: TOKEN_VOLUME.to_string(),
        mount_path: TOKEN_DIR.to_string(),
        read_only: Some(true),
        ..Default::default()
    };
    (
        mount,
        [
            "--token-file".to_string(),
            format!("{TOKEN_DIR}/{TOKEN_FILE}"),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_for_the_feedback_audience_only_and_short_lived() {
        let mut spec = PodSpec::default();
        let (mount, args) = add_feedback_token(&mut spec);
        add_feedback_token(&mut spec);
        let volumes = spec.volumes.unwrap();
        assert_eq!(volumes.len(), 1, "added once");
        let projection = volumes[0]
            .projected
            .as_ref()
            .unwrap()
            .sources
            .as_ref()
            .unwrap()[0]
            .service_account_token
            .clone()
            .unwrap();
        assert_eq!(projection.audience.as_deref(), Some("mailfleet"));
        assert!(projection.expiration_seconds.unwrap() <= 3600);
        assert_eq!(mount.read_only, Some(true));
        assert_eq!(args[1], format!("{}/{}", mount.mount_path, projection.path));
    }
}
