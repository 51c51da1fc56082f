//! The Deployment of one IP: the pool's pod template, bound to the IP, with the
//! sender ConfigMap mounted and, when the operator has an agent image, the
//! agent sidecar.
//!
//! What is added to the user's template:
//! - labels `mailfleet.io/pool`, `mailfleet.io/ip` and managed-by on the pods
//!   (the selector uses the first two, which never change for an IP);
//! - annotations `mailfleet.io/source-ip`, `mailfleet.io/sender-config` (the
//!   ConfigMap's name: a new configuration changes the ConfigMap, never the pod
//!   template, so it restarts no pod) and `spec.ipBinding.annotations` with
//!   `{{ip}}` replaced by the IP;
//! - env `spec.ipBinding.envVar` = the IP in every container and init container;
//! - the IP's `nodeSelector`, merged over the template's;
//! - volume `mailfleet-sender-config` (the ConfigMap), mounted read-only at
//!   `/etc/mailfleet/sender` in every container, so an MTA can also read it
//!   directly;
//! - the agent (see [`AgentSidecar`]).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, PodSpec,
    PodTemplateSpec, ResourceRequirements, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::api::{PoolIp, SenderPool};

use super::{
    config_map_name, deployment_name, ip_labels, ip_slug_of, namespace_of, pool_name, pool_owner,
    BuildError, IP_LABEL, POOL_LABEL, SENDER_CONFIG_ANNOTATION, SOURCE_IP_ANNOTATION,
};

/// Name of the agent container.
pub const AGENT_CONTAINER: &str = "mailfleet-agent";
/// Where the sender ConfigMap is mounted.
pub const SENDER_CONFIG_MOUNT: &str = "/etc/mailfleet/sender";
/// The ConfigMap volume.
pub const SENDER_CONFIG_VOLUME: &str = "mailfleet-sender-config";
/// The agent's state volume (an emptyDir that outlives container restarts).
pub const AGENT_STATE_VOLUME: &str = "mailfleet-agent-state";
pub const AGENT_STATE_DIR: &str = "/var/lib/mailfleet-agent";
/// The delivery log volume added when no container mounts the log's folder.
pub const MAILLOG_VOLUME: &str = "mailfleet-maillog";
/// The agent's /metrics port.
pub const AGENT_METRICS_PORT: i32 = 9465;
/// `{{ip}}` in `spec.ipBinding.annotations` values.
pub const IP_PLACEHOLDER: &str = "{{ip}}";

/// The agent sidecar (enabled by the operator's `--agent-image`).
///
/// It reads the MTA's delivery log at `log_path`: a volume of the template
/// mounted on a folder holding that path is mounted at the same place in the
/// agent; otherwise an emptyDir `mailfleet-maillog` is mounted on the log's
/// folder in every container. When a template volume is mounted at
/// `postfix_config_dir`, the agent mounts it too, applies new configurations
/// to Postfix (`--apply postfix`) and the pod shares its process namespace
/// (so `postfix reload` reaches the master); otherwise it runs `--apply none`
/// and only reports the version (the MTA reads `/etc/mailfleet/sender`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentSidecar {
    pub image: String,
    /// What the agent posts to (`--feedback-url`).
    pub feedback_url: String,
    /// The PEM CA an https:// `feedback_url` must chain to (`--feedback-ca-file`).
    pub feedback_ca: Option<String>,
    /// The MTA's delivery log (Postfix `maillog_file`).
    pub log_path: String,
    /// Postfix's configuration folder in the MTA container.
    pub postfix_config_dir: String,
    pub image_pull_policy: Option<String>,
    /// The sender image (`--sender-image`): a pool whose template has no
    /// `spec` runs it (`mailfleet sender run`: Postfix and the agent in one
    /// container, see [`super::sender_container`]).
    pub sender_image: Option<String>,
    /// Relay Secrets the namespace's routes name (`credentialsSecret`),
    /// mounted into the sender container for its relay logins.
    pub relay_secrets: Vec<String>,
}

impl AgentSidecar {
    /// The sidecar with the default log and Postfix paths.
    pub fn new(image: impl Into<String>, feedback_url: impl Into<String>) -> Self {
        AgentSidecar {
            image: image.into(),
            feedback_url: feedback_url.into(),
            feedback_ca: None,
            log_path: "/var/log/postfix/maillog".to_string(),
            postfix_config_dir: "/etc/postfix".to_string(),
            image_pull_policy: None,
            sender_image: None,
            relay_secrets: Vec::new(),
        }
    }
}

/// The Deployment of `ip` (one of `pool.spec.ips`) with `replicas` pods.
pub fn build_deployment(
    pool: &SenderPool,
    ip: &PoolIp,
    replicas: i32,
    agent: Option<&AgentSidecar>,
) -> Result<Deployment, BuildError> {
    let name = pool_name(pool)?;
    let namespace = namespace_of(&pool.metadata);
    let slug = ip_slug_of(name, &ip.address)?;
    let address = ip.address.trim().to_string();
    let config_map = config_map_name(name, &address)?;
    let labels = ip_labels(name, &slug);
    let selector = BTreeMap::from([
        (POOL_LABEL.to_string(), name.to_string()),
        (IP_LABEL.to_string(), slug.clone()),
    ]);

    let mut template: PodTemplateSpec = pool.spec.template.clone();
    let mut pod_meta = template.metadata.take().unwrap_or_default();
    let pod_labels = pod_meta.labels.get_or_insert_with(BTreeMap::new);
    pod_labels.extend(labels.clone());
    let annotations = pod_meta.annotations.get_or_insert_with(BTreeMap::new);
    for (key, value) in &pool.spec.ip_binding.annotations {
        annotations.insert(key.clone(), value.replace(IP_PLACEHOLDER, &address));
    }
    annotations.insert(SOURCE_IP_ANNOTATION.to_string(), address.clone());
    annotations.insert(SENDER_CONFIG_ANNOTATION.to_string(), config_map.clone());
    // The pod template's own name and namespace are ignored by Kubernetes.
    pod_meta.name = None;
    pod_meta.namespace = None;
    template.metadata = Some(pod_meta);

    let sender_image = agent.and_then(|a| a.sender_image.as_deref());
    let (mut spec, own_sender) = match (template.spec.take(), agent, sender_image) {
        (Some(spec), _, _) => (spec, false),
        (None, Some(agent), Some(image)) => (
            super::sender_container::sender_pod_spec(agent, image, &namespace, name, &address),
            true,
        ),
        (None, _, _) => {
            return Err(BuildError::NoContainer {
                pool: format!("{namespace}/{name}"),
            })
        }
    };
    if spec.containers.is_empty() {
        return Err(BuildError::NoContainer {
            pool: format!("{namespace}/{name}"),
        });
    }
    if let Some(node_selector) = &ip.node_selector {
        spec.node_selector
            .get_or_insert_with(BTreeMap::new)
            .extend(node_selector.clone());
    }
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.retain(|v| v.name != SENDER_CONFIG_VOLUME);
    volumes.push(Volume {
        name: SENDER_CONFIG_VOLUME.to_string(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.clone(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let config_mount = VolumeMount {
        name: SENDER_CONFIG_VOLUME.to_string(),
        mount_path: SENDER_CONFIG_MOUNT.to_string(),
        read_only: Some(true),
        ..Default::default()
    };
    for container in &mut spec.containers {
        mount(container, config_mount.clone());
    }
    match agent {
        Some(agent) if !own_sender => {
            add_agent(&mut spec, agent, &namespace, name, &address, config_mount)?
        }
        _ => {}
    }
    let env_var = pool.spec.ip_binding.env_var.clone();
    for container in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        let env = container.env.get_or_insert_with(Vec::new);
        env.retain(|e| e.name != env_var);
        env.push(EnvVar {
            name: env_var.clone(),
            value: Some(address.clone()),
            value_from: None,
        });
    }
    template.spec = Some(spec);

    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(deployment_name(name, &address)?),
            namespace: Some(namespace),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                SOURCE_IP_ANNOTATION.to_string(),
                address.clone(),
            )])),
            owner_references: Some(vec![pool_owner(pool)?]),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas.max(0)),
            selector: LabelSelector {
                match_labels: Some(selector),
                match_expressions: None,
            },
            template,
            ..Default::default()
        }),
        status: None,
    })
}

fn mount(container: &mut Container, volume_mount: VolumeMount) {
    let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
    mounts.retain(|m| m.mount_path != volume_mount.mount_path && m.name != volume_mount.name);
    mounts.push(volume_mount);
}

/// The template's mount whose folder holds `path` (the deepest one).
fn mount_holding(spec: &PodSpec, path: &str) -> Option<VolumeMount> {
    spec.containers
        .iter()
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .filter(|m| {
            let base = m.mount_path.trim_end_matches('/');
            path == base || path.starts_with(&format!("{base}/"))
        })
        .max_by_key(|m| m.mount_path.len())
        .cloned()
}

fn parent_dir(path: &str) -> String {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) | None => "/".to_string(),
        Some((dir, _)) => dir.to_string(),
    }
}

fn add_agent(
    spec: &mut PodSpec,
    agent: &AgentSidecar,
    namespace: &str,
    pool: &str,
    address: &str,
    config_mount: VolumeMount,
) -> Result<(), BuildError> {
    let mut mounts = vec![config_mount];
    match mount_holding(spec, &agent.log_path) {
        Some(shared) => mounts.push(VolumeMount {
            read_only: Some(true),
            sub_path: None,
            ..shared
        }),
        None => {
            let log_mount = VolumeMount {
                name: MAILLOG_VOLUME.to_string(),
                mount_path: parent_dir(&agent.log_path),
                ..Default::default()
            };
            spec.volumes.get_or_insert_with(Vec::new).push(Volume {
                name: MAILLOG_VOLUME.to_string(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            });
            for container in &mut spec.containers {
                mount(container, log_mount.clone());
            }
            mounts.push(VolumeMount {
                read_only: Some(true),
                ..log_mount
            });
        }
    }
    let postfix_mount = mount_holding(spec, &agent.postfix_config_dir);
    let apply = if let Some(shared) = postfix_mount {
        mounts.push(VolumeMount {
            sub_path: None,
            read_only: None,
            ..shared
        });
        spec.share_process_namespace = Some(true);
        "postfix"
    } else {
        "none"
    };
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: AGENT_STATE_VOLUME.to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    });
    mounts.push(VolumeMount {
        name: AGENT_STATE_VOLUME.to_string(),
        mount_path: AGENT_STATE_DIR.to_string(),
        ..Default::default()
    });
    let mut args: Vec<String> = [
        "agent",
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
        &agent.log_path,
        "--state-file",
        &format!("{AGENT_STATE_DIR}/state.json"),
        // The sidecar shares the pod's network: its answer is the MTA's.
        "--check-bind",
        "--apply",
        apply,
    ]
    .map(String::from)
    .to_vec();
    let (token_mount, token_args) = super::agent_token::add_feedback_token(spec);
    mounts.push(token_mount);
    let at = args
        .iter()
        .position(|a| a == "--apply")
        .unwrap_or(args.len());
    args.splice(at..at, token_args);
    let ca = super::agent_token::feedback_ca(agent.feedback_ca.as_deref());
    if let Some((_, ca_args)) = &ca {
        args.extend(ca_args.iter().cloned());
    }
    if apply == "postfix" {
        args.push("--postfix-config-dir".to_string());
        args.push(agent.postfix_config_dir.clone());
    }
    spec.containers.retain(|c| c.name != AGENT_CONTAINER);
    spec.containers.push(Container {
        name: AGENT_CONTAINER.to_string(),
        image: Some(agent.image.clone()),
        image_pull_policy: agent.image_pull_policy.clone(),
        args: Some(args),
        env: ca.map(|(env, _)| vec![env]),
        ports: Some(vec![ContainerPort {
            name: Some("agent-metrics".to_string()),
            container_port: AGENT_METRICS_PORT,
            protocol: Some("TCP".to_string()),
            ..Default::default()
        }]),
        volume_mounts: Some(mounts),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("10m".to_string())),
                ("memory".to_string(), Quantity("32Mi".to_string())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("128Mi".to_string()),
            )])),
            ..Default::default()
        }),
        security_context: Some(agent_security_context(apply == "postfix")),
        ..Default::default()
    });
    Ok(())
}

/// The agent's securityContext: non-root with every capability dropped, the
/// restricted Pod Security Standard, unless it applies configurations to the
/// Postfix of its pod. `postfix reload` and `postqueue -f` must run as root
/// (uid 0): they read Postfix's root-owned configuration, write to the
/// queue's sockets (owned by the postfix user and the postdrop group) and
/// signal the master process; for that it keeps only DAC_OVERRIDE and KILL
/// (docs/OPERATING.md, Sender pods).
fn agent_security_context(applies_to_postfix: bool) -> SecurityContext {
    use k8s_openapi::api::core::v1::{Capabilities, SeccompProfile};
    let add = applies_to_postfix.then(|| vec!["DAC_OVERRIDE".to_string(), "KILL".to_string()]);
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(!applies_to_postfix),
        run_as_user: Some(if applies_to_postfix { 0 } else { 65532 }),
        run_as_group: Some(if applies_to_postfix { 0 } else { 65532 }),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            add,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::build::fixtures::fleet;

    fn bulk() -> SenderPool {
        let mut pool = fleet().0.remove(0);
        pool.spec
            .ip_binding
            .annotations
            .insert("egress.example.net/source-ip".into(), "ip={{ip}}".into());
        pool.spec.ips[1].node_selector = Some(BTreeMap::from([(
            "mail/egress".to_string(),
            "b".to_string(),
        )]));
        pool
    }

    fn agent() -> AgentSidecar {
        AgentSidecar::new(
            "ghcr.io/mailfleet/mailfleet:1",
            "http://mailfleet.mailfleet-system.svc:8080/v1/feedback",
        )
    }

    fn env_of<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
        container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref())
    }

    #[test]
    fn the_template_is_bound_to_the_ip() {
        let pool = bulk();
        let ip = pool.spec.ips[1].clone();
        let d = build_deployment(&pool, &ip, 3, None).unwrap();
        assert_eq!(d.metadata.name.as_deref(), Some("mf-bulk-203-0-113-11"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("mail"));
        let labels = d.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["mailfleet.io/pool"], "bulk");
        assert_eq!(labels["mailfleet.io/ip"], "mf-203-0-113-11");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "mailfleet-operator");
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("SenderPool", "bulk")
        );
        assert_eq!(owner.uid, "uid-pool-bulk");
        assert_eq!(owner.controller, Some(true));

        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(
            spec.selector.match_labels.unwrap(),
            BTreeMap::from([
                ("mailfleet.io/ip".to_string(), "mf-203-0-113-11".to_string()),
                ("mailfleet.io/pool".to_string(), "bulk".to_string()),
            ])
        );
        let meta = spec.template.metadata.unwrap();
        let pod_labels = meta.labels.unwrap();
        assert_eq!(pod_labels["app.kubernetes.io/name"], "postfix-sender");
        assert_eq!(pod_labels["mailfleet.io/ip"], "mf-203-0-113-11");
        let annotations = meta.annotations.unwrap();
        assert_eq!(
            annotations["egress.example.net/source-ip"],
            "ip=203.0.113.11"
        );
        assert_eq!(annotations["mailfleet.io/source-ip"], "203.0.113.11");
        assert_eq!(
            annotations["mailfleet.io/sender-config"],
            "mf-bulk-203-0-113-11-config"
        );
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.node_selector.unwrap()["mail/egress"], "b");
        assert_eq!(pod.containers.len(), 1, "no agent without an image");
        let postfix = &pod.containers[0];
        assert_eq!(env_of(postfix, "MAILFLEET_SOURCE_IP"), Some("203.0.113.11"));
        let mount = postfix
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == SENDER_CONFIG_MOUNT)
            .unwrap();
        assert_eq!(mount.read_only, Some(true));
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == mount.name)
            .unwrap();
        assert_eq!(
            volume.config_map.unwrap().name,
            "mf-bulk-203-0-113-11-config"
        );
    }

    #[test]
    fn the_agent_sidecar_gets_the_ip_pool_endpoint_and_config() {
        let pool = bulk();
        let ip = pool.spec.ips[0].clone();
        let d = build_deployment(&pool, &ip, 1, Some(&agent())).unwrap();
        let pod = d.spec.unwrap().template.spec.unwrap();
        let agent_container = pod
            .containers
            .iter()
            .find(|c| c.name == AGENT_CONTAINER)
            .unwrap();
        let args = agent_container.args.clone().unwrap().join(" ");
        assert!(args.starts_with("agent run --source-ip 203.0.113.10 --pool mail/bulk --endpoint http://mailfleet.mailfleet-system.svc:8080/v1/feedback --config-dir /etc/mailfleet/sender --log /var/log/postfix/maillog"), "{args}");
        // No Postfix config volume in the template: the agent only reports.
        assert!(args.ends_with("--apply none"), "{args}");
        assert!(args.contains(" --check-bind "), "{args}");
        assert_eq!(
            env_of(agent_container, "MAILFLEET_SOURCE_IP"),
            Some("203.0.113.10")
        );
        // The log folder is shared through an emptyDir mounted in both containers.
        for container in &pod.containers {
            assert!(container
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == MAILLOG_VOLUME && m.mount_path == "/var/log/postfix"));
        }
        assert_eq!(pod.share_process_namespace, None);
    }

    #[test]
    fn template_volumes_for_the_log_and_postfix_are_shared_with_the_agent() {
        let mut pool = bulk();
        let spec = pool.spec.template.spec.as_mut().unwrap();
        spec.containers[0].volume_mounts = Some(vec![
            VolumeMount {
                name: "logs".into(),
                mount_path: "/var/log".into(),
                ..Default::default()
            },
            VolumeMount {
                name: "etc".into(),
                mount_path: "/etc/postfix".into(),
                ..Default::default()
            },
        ]);
        let ip = pool.spec.ips[0].clone();
        let d = build_deployment(&pool, &ip, 1, Some(&agent())).unwrap();
        let pod = d.spec.unwrap().template.spec.unwrap();
        let agent_container = pod.containers.last().unwrap();
        let mounts = agent_container.volume_mounts.clone().unwrap();
        assert!(mounts
            .iter()
            .any(|m| m.name == "logs" && m.mount_path == "/var/log"));
        assert!(mounts
            .iter()
            .any(|m| m.name == "etc" && m.mount_path == "/etc/postfix"));
        assert!(!pod
            .volumes
            .unwrap()
            .iter()
            .any(|v| v.name == MAILLOG_VOLUME));
        let args = agent_container.args.clone().unwrap().join(" ");
        assert!(
            args.ends_with("--apply postfix --postfix-config-dir /etc/postfix"),
            "{args}"
        );
        assert_eq!(pod.share_process_namespace, Some(true));
    }

    #[test]
    fn a_config_change_does_not_touch_the_deployment() {
        // The builder takes no configuration at all: the pod template names the
        // ConfigMap, never its version.
        let pool = bulk();
        let ip = pool.spec.ips[0].clone();
        let a = build_deployment(&pool, &ip, 2, Some(&agent())).unwrap();
        let text = serde_json::to_string(&a).unwrap();
        assert!(!text.contains("fnv1a64"));
        assert!(!text.contains("config-version"));
        assert_eq!(a, build_deployment(&pool, &ip, 2, Some(&agent())).unwrap());
    }

    #[test]
    fn a_template_without_a_container_is_an_error_naming_the_field() {
        let mut pool = bulk();
        pool.spec.template.spec.as_mut().unwrap().containers.clear();
        let ip = pool.spec.ips[0].clone();
        let err = build_deployment(&pool, &ip, 1, None).unwrap_err();
        assert!(
            err.to_string().contains("spec.template.spec.containers"),
            "{err}"
        );
        pool.spec.template.spec = None;
        assert!(matches!(
            build_deployment(&pool, &ip, 1, None),
            Err(BuildError::NoContainer { .. })
        ));
    }

    #[test]
    fn the_binding_env_var_replaces_one_the_template_set() {
        let mut pool = bulk();
        pool.spec.template.spec.as_mut().unwrap().containers[0].env = Some(vec![EnvVar {
            name: "MAILFLEET_SOURCE_IP".into(),
            value: Some("0.0.0.0".into()),
            value_from: None,
        }]);
        let ip = pool.spec.ips[0].clone();
        let d = build_deployment(&pool, &ip, 1, None).unwrap();
        let pod = d.spec.unwrap().template.spec.unwrap();
        let env = pod.containers[0].env.clone().unwrap();
        assert_eq!(env.len(), 1);
        assert_eq!(env[0].value.as_deref(), Some("203.0.113.10"));
    }

    #[test]
    fn the_agent_runs_non_root_without_capabilities_unless_it_reloads_postfix() {
        let alone = agent_security_context(false);
        assert_eq!(alone.run_as_non_root, Some(true));
        assert_eq!(alone.run_as_user, Some(65532));
        let caps = alone.capabilities.unwrap();
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
        assert_eq!(caps.add, None);
        let with_postfix = agent_security_context(true);
        assert_eq!(with_postfix.run_as_user, Some(0));
        assert_eq!(
            with_postfix.capabilities.unwrap().add,
            Some(vec!["DAC_OVERRIDE".to_string(), "KILL".to_string()])
        );
        assert_eq!(with_postfix.allow_privilege_escalation, Some(false));
    }
}
