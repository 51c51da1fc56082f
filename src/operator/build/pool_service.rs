//! The pool's intake Service `mf-pool-<pool>` (SMTP, port 25): applications
//! and existing relays submit there (`relayhost = [mf-pool-bulk.mail.svc]:25`),
//! and it reaches every ready sender pod of the pool. Relaying is allowed
//! only to clients in `spec.intake.allowedCidrs` (the senders' `mynetworks`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::SenderPool;

use super::route_service::{SMTP_PORT, SMTP_PORT_NAME};
use super::{
    is_dns_label, namespace_of, pool_name, pool_owner, BuildError, MANAGED_BY_LABEL,
    MANAGED_BY_VALUE, POOL_LABEL,
};

/// `mf-pool-<pool>`.
pub fn pool_service_name(pool: &str) -> String {
    format!("mf-pool-{pool}")
}

/// The intake Service of `pool`.
pub fn build_pool_service(pool: &SenderPool) -> Result<Service, BuildError> {
    let name = pool_name(pool)?;
    let service_name = pool_service_name(name);
    if !is_dns_label(&service_name) {
        return Err(BuildError::InvalidName {
            kind: "SenderPool",
            name: name.to_string(),
            what: "its intake Service name",
            value: service_name,
            fix: "name the pool with at most 55 lowercase letters, digits and '-'",
        });
    }
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
        (POOL_LABEL.to_string(), name.to_string()),
    ]);
    Ok(Service {
        metadata: ObjectMeta {
            name: Some(service_name),
            namespace: Some(namespace_of(&pool.metadata)),
            labels: Some(labels),
            owner_references: Some(vec![pool_owner(pool)?]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(BTreeMap::from([(POOL_LABEL.to_string(), name.to_string())])),
            ports: Some(vec![ServicePort {
                name: Some(SMTP_PORT_NAME.to_string()),
                port: SMTP_PORT,
                target_port: Some(IntOrString::Int(SMTP_PORT)),
                protocol: Some("TCP".to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::build::fixtures::fleet;

    #[test]
    fn the_intake_service_selects_the_pools_pods_on_port_25() {
        let pool = fleet().0.remove(0);
        let service = build_pool_service(&pool).unwrap();
        assert_eq!(service.metadata.name.as_deref(), Some("mf-pool-bulk"));
        let spec = service.spec.unwrap();
        assert_eq!(
            spec.selector.unwrap(),
            BTreeMap::from([(POOL_LABEL.to_string(), "bulk".to_string())])
        );
        assert_eq!(spec.ports.unwrap()[0].port, 25);
        assert_eq!(
            service.metadata.owner_references.unwrap()[0].kind,
            "SenderPool"
        );
    }
}
