//! The pod of a SenderPool whose template has no `spec`: one container of the
//! sender image running `mailfleet sender run` (Postfix, its configuration
//! and the agent in one process tree, so no shared process namespace).
//!
//! Postfix starts as root and drops to its own users, so the container runs
//! as root with only the capabilities that needs (the Pod Security Standard
//! `baseline` allows them; `restricted` does not allow root).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    ObjectFieldSelector, PodSpec, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::deployment::{
    AgentSidecar, AGENT_METRICS_PORT, AGENT_STATE_DIR, AGENT_STATE_VOLUME, SENDER_CONFIG_MOUNT,
};

/// Name of the sender container.
pub const SENDER_CONTAINER: &str = "sender";
/// The pod's own name (downward API), Postfix's `myhostname`: unique per
/// sender even when pods share a node's host name (`hostNetwork`), where two
/// senders with one name would take a hand-off between them for a mail loop
/// and bounce it (5.4.6).
pub const POD_NAME_ENV: &str = "MAILFLEET_POD_NAME";
/// Postfix's queue: an emptyDir, so queued mail survives a container restart.
pub const QUEUE_VOLUME: &str = "mailfleet-queue";
pub const QUEUE_DIR: &str = "/var/spool/postfix";
pub const LOG_VOLUME: &str = "mailfleet-maillog";
pub const LOG_DIR: &str = "/var/log/postfix";
/// The longest a stopping sender spends handing its queue to the pool's
/// other senders (`sender run --drain-timeout`).
pub const DRAIN_TIMEOUT_SECONDS: i64 = 45;
/// Where relay Secrets are mounted, one folder per Secret.
pub const RELAY_SECRETS_DIR: &str = "/etc/mailfleet/relay";
/// Capabilities Postfix needs as root: own its queue, switch to its users,
/// listen on port 25, signal its daemons.
pub const SENDER_CAPABILITIES: [&str; 7] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "SETUID",
    "SETGID",
    "NET_BIND_SERVICE",
    "KILL",
];

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// The pod spec of one IP's sender (the ConfigMap volume and the IP's env
/// are added by the Deployment builder, as for any template).
pub fn sender_pod_spec(
    agent: &AgentSidecar,
    image: &str,
    namespace: &str,
    pool: &str,
    address: &str,
) -> PodSpec {
    let log = format!("{LOG_DIR}/maillog");
    let args: Vec<String> = [
        "sender",
        "run",
        "--source-ip",
        address,
        "--pool",
        &format!("{namespace}/{pool}"),
        "--endpoint",
        &agent.feedback_url,
        "--config-dir",
        SENDER_CONFIG_MOUNT,
        "--log",
        &log,
        "--state-file",
        &format!("{AGENT_STATE_DIR}/state.json"),
        "--relay-secrets-dir",
        RELAY_SECRETS_DIR,
        &format!("--postconf=myhostname=$({POD_NAME_ENV})"),
        "--drain-to",
        &format!(
            "{}.{namespace}.svc:25",
            super::pool_service::pool_service_name(pool)
        ),
        "--drain-timeout",
        &DRAIN_TIMEOUT_SECONDS.to_string(),
    ]
    .map(String::from)
    .to_vec();
    let ca = super::agent_token::feedback_ca(agent.feedback_ca.as_deref());
    let mut args = args;
    let mut env = vec![EnvVar {
        name: POD_NAME_ENV.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".to_string(),
                api_version: None,
            }),
            ..Default::default()
        }),
    }];
    if let Some((ca_env, ca_args)) = ca {
        args.extend(ca_args);
        env.push(ca_env);
    }
    let mut volumes = vec![
        empty_dir(QUEUE_VOLUME),
        empty_dir(LOG_VOLUME),
        empty_dir(AGENT_STATE_VOLUME),
    ];
    let mut mounts = vec![
        mount(QUEUE_VOLUME, QUEUE_DIR, false),
        mount(LOG_VOLUME, LOG_DIR, false),
        mount(AGENT_STATE_VOLUME, AGENT_STATE_DIR, false),
    ];
    let mut secrets = agent.relay_secrets.clone();
    secrets.sort();
    secrets.dedup();
    for (index, secret) in secrets.iter().enumerate() {
        let name = format!("mailfleet-relay-{index}");
        volumes.push(Volume {
            name: name.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                // A missing Secret must not keep the pod from starting: its
                // relay's mail is deferred and the sender says why.
                optional: Some(true),
                default_mode: Some(0o400),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount(&name, &format!("{RELAY_SECRETS_DIR}/{secret}"), true));
    }
    let port = |name: &str, number: i32| ContainerPort {
        name: Some(name.to_string()),
        container_port: number,
        protocol: Some("TCP".to_string()),
        ..Default::default()
    };
    PodSpec {
        containers: vec![Container {
            name: SENDER_CONTAINER.to_string(),
            image: Some(image.to_string()),
            image_pull_policy: agent.image_pull_policy.clone(),
            args: Some(args),
            env: Some(env),
            ports: Some(vec![
                port("smtp", 25),
                port("agent-metrics", AGENT_METRICS_PORT),
            ]),
            volume_mounts: Some(mounts),
            readiness_probe: Some(Probe {
                tcp_socket: Some(TCPSocketAction {
                    port: IntOrString::Int(25),
                    host: None,
                }),
                period_seconds: Some(5),
                ..Default::default()
            }),
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".to_string(), Quantity("100m".to_string())),
                    ("memory".to_string(), Quantity("128Mi".to_string())),
                ])),
                ..Default::default()
            }),
            security_context: Some(SecurityContext {
                run_as_user: Some(0),
                run_as_non_root: Some(false),
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".to_string()]),
                    add: Some(SENDER_CAPABILITIES.map(String::from).to_vec()),
                }),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_string(),
                    localhost_profile: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }],
        volumes: Some(volumes),
        // On SIGTERM the sender hands its queue to the pool's other senders
        // (at most DRAIN_TIMEOUT_SECONDS), stops Postfix (20 s) and sends its
        // last report (10 s).
        termination_grace_period_seconds: Some(DRAIN_TIMEOUT_SECONDS + 20 + 10 + 5),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::build::deployment::{build_deployment, AGENT_CONTAINER};
    use crate::operator::build::fixtures::fleet;
    use crate::operator::build::BuildError;

    #[test]
    fn a_template_without_spec_runs_the_sender_image_with_its_relay_secrets() {
        let mut pool = fleet().0.remove(0);
        pool.spec.template.spec = None;
        let ip = pool.spec.ips[0].clone();
        let agent = AgentSidecar {
            sender_image: Some("registry.example.net/mail/mailfleet-sender:0.1.0".into()),
            relay_secrets: vec!["relay-credentials".into()],
            ..AgentSidecar::new("mailfleet:1", "http://mailfleet.mf.svc:8080/v1/feedback")
        };
        let d = build_deployment(&pool, &ip, 1, Some(&agent)).unwrap();
        let spec = d.spec.unwrap().template.spec.unwrap();
        let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [SENDER_CONTAINER], "no sidecar beside the sender");
        assert!(!names.contains(&AGENT_CONTAINER));
        assert_eq!(spec.share_process_namespace, None);
        let sender = &spec.containers[0];
        let args = sender.args.clone().unwrap().join(" ");
        assert!(args.starts_with("sender run --source-ip 203.0.113.10 --pool mail/bulk --endpoint http://mailfleet.mf.svc:8080/v1/feedback --config-dir /etc/mailfleet/sender"), "{args}");
        // Postfix's own name is the pod's, which the kubelet puts in the
        // argument from the downward API.
        assert!(
            args.contains("--postconf=myhostname=$(MAILFLEET_POD_NAME)"),
            "{args}"
        );
        let env = sender.env.clone().unwrap();
        let pod_name = env.iter().find(|e| e.name == POD_NAME_ENV).unwrap();
        assert_eq!(
            pod_name
                .value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str()),
            Some("metadata.name")
        );
        // A stopping sender hands its queue to the pool's intake Service, inside its grace period.
        assert!(
            args.contains("--drain-to mf-pool-bulk.mail.svc:25 --drain-timeout 45"),
            "{args}"
        );
        assert!(spec.termination_grace_period_seconds.unwrap() > DRAIN_TIMEOUT_SECONDS + 20);
        let mounts: Vec<&str> = sender
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        for path in [
            QUEUE_DIR,
            LOG_DIR,
            AGENT_STATE_DIR,
            SENDER_CONFIG_MOUNT,
            "/etc/mailfleet/relay/relay-credentials",
        ] {
            assert!(mounts.contains(&path), "{path} in {mounts:?}");
        }
        let secret = spec
            .volumes
            .iter()
            .flatten()
            .find_map(|v| v.secret.as_ref())
            .unwrap();
        assert_eq!(secret.optional, Some(true));
        let security = sender.security_context.clone().unwrap();
        assert_eq!(security.run_as_user, Some(0));
        assert_eq!(security.capabilities.unwrap().drop.unwrap(), ["ALL"]);
        // The IP reaches the sender as it reaches any template's containers.
        assert!(
            sender
                .env
                .iter()
                .flatten()
                .any(|e| e.name == "MAILFLEET_SOURCE_IP"
                    && e.value.as_deref() == Some("203.0.113.10"))
        );
        // Without a sender image there is nothing to run.
        let err = build_deployment(&pool, &ip, 1, None).unwrap_err();
        assert!(matches!(err, BuildError::NoContainer { .. }));
        assert!(err.to_string().contains("sender.image"), "{err}");
    }
}
