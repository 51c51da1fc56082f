//! The ConfigMap of one IP: its sender configuration
//! ([`crate::routing::sender_config`]), owned by the pool.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::{PoolIp, SenderPool};
use crate::routing::postfix::{PostfixOptions, Sender};
use crate::routing::sender_config::{sender_config_with, SenderConfig};
use crate::routing::sending::SendingSettings;
use crate::routing::RouteTable;

use super::{
    config_map_name, ip_labels, ip_slug_of, namespace_of, pool_name, pool_owner, BuildError,
    CONFIG_VERSION_ANNOTATION, SOURCE_IP_ANNOTATION,
};

/// The sender of `ip` in `pool`, as the renderers name it.
pub fn sender_of(pool: &SenderPool, ip: &PoolIp) -> Result<Sender, BuildError> {
    Ok(Sender {
        namespace: namespace_of(&pool.metadata),
        pool: pool_name(pool)?.to_string(),
        ip: ip.address.trim().to_string(),
        settings: crate::routing::sender_settings::SenderSettings::of(pool, &ip.address),
    })
}

/// The ConfigMap holding `config` for `ip` of `pool`.
pub fn build_config_map(
    pool: &SenderPool,
    ip: &PoolIp,
    config: &SenderConfig,
) -> Result<ConfigMap, BuildError> {
    let name = pool_name(pool)?;
    let address = ip.address.trim();
    let slug = ip_slug_of(name, address)?;
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(config_map_name(name, address)?),
            namespace: Some(namespace_of(&pool.metadata)),
            labels: Some(ip_labels(name, &slug)),
            annotations: Some(BTreeMap::from([
                (SOURCE_IP_ANNOTATION.to_string(), address.to_string()),
                (
                    CONFIG_VERSION_ANNOTATION.to_string(),
                    config.version.clone(),
                ),
            ])),
            owner_references: Some(vec![pool_owner(pool)?]),
            ..Default::default()
        },
        data: Some(config.files.clone()),
        binary_data: None,
        immutable: None,
    })
}

/// Renders the configuration of `ip` from the route table and builds its
/// ConfigMap; also returns the configuration (for feedback responses).
pub fn render_config_map(
    pool: &SenderPool,
    ip: &PoolIp,
    table: &RouteTable,
    known_domains: &BTreeMap<String, Vec<String>>,
    options: &PostfixOptions,
) -> Result<(ConfigMap, SenderConfig), BuildError> {
    let sender = sender_of(pool, ip)?;
    let settings = SendingSettings::of_pool(pool, &ip.address);
    let config = sender_config_with(table, &sender, known_domains, options, &settings)?;
    Ok((build_config_map(pool, ip, &config)?, config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ReputationState;
    use crate::operator::build::fixtures::{fleet, now};
    use crate::routing::compile;
    use crate::routing::example::{known_domains, pair, set_pair};
    use crate::routing::sender_config::{CONFIG_VERSION_KEY, SENDER_JSON_KEY};

    #[test]
    fn the_config_map_holds_every_file_and_names_its_version() {
        let (pools, routes) = fleet();
        let table = compile(&pools, &routes, now());
        let ip = pools[0].spec.ips[3].clone();
        let (cm, config) = render_config_map(
            &pools[0],
            &ip,
            &table,
            &known_domains(),
            &PostfixOptions::default(),
        )
        .unwrap();
        assert_eq!(
            cm.metadata.name.as_deref(),
            Some("mf-bulk-203-0-113-13-config")
        );
        let data = cm.data.as_ref().unwrap();
        assert_eq!(data[CONFIG_VERSION_KEY], config.version);
        assert!(data[SENDER_JSON_KEY].contains("\"route_service\""));
        assert!(
            data["mailfleet_transport"].contains("hotmail.com\tsmtp:[mf-route-microsoft.mail.svc]")
        );
        assert_eq!(
            cm.metadata.annotations.as_ref().unwrap()[CONFIG_VERSION_ANNOTATION],
            config.version
        );
        assert_eq!(
            cm.metadata.labels.as_ref().unwrap()["mailfleet.io/ip"],
            "mf-203-0-113-13"
        );
        assert_eq!(
            cm.metadata.owner_references.as_ref().unwrap()[0].name,
            "bulk"
        );
    }

    #[test]
    fn a_block_changes_the_config_map_of_that_ip() {
        let (mut pools, routes) = fleet();
        let ip = pools[0].spec.ips[0].clone();
        let render = |pools: &[SenderPool]| {
            let table = compile(pools, &routes, now());
            render_config_map(
                &pools[0],
                &ip,
                &table,
                &known_domains(),
                &PostfixOptions::default(),
            )
            .unwrap()
            .0
        };
        let before = render(&pools);
        assert_eq!(before, render(&pools));
        set_pair(
            &mut pools[0],
            "203.0.113.10",
            pair("microsoft", ReputationState::Blocked, 0, now()),
        );
        let after = render(&pools);
        assert_ne!(before.data, after.data);
        assert_ne!(before.metadata.annotations, after.metadata.annotations);
    }
}
