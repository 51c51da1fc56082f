//! Keeps the feedback port's certificate in a Secret of the operator's own
//! namespace (`--feedback-tls-secret`): makes the CA and the serving
//! certificate when the Secret is missing, renews the serving certificate
//! when [`feedback_cert::decide`] says so, and swaps what the port serves
//! when the Secret changes, with no restart. The decisions are in
//! [`feedback_cert`](super::feedback_cert); this module fetches, creates,
//! replaces and serves.
//!
//! Both replicas run it. Creation is a create that one of them wins (the
//! other reads the winner's on 409 AlreadyExists); a renewal is a replace
//! with the read resourceVersion (the loser of a 409 reads the winner's).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use prometheus_client::encoding::DescriptorEncoder;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::feedback_cert::{
    decide, read_pair, CertPolicy, CorruptSecret, SecretRef, StoredPair, UnixSeconds, Verdict,
    CA_CERT_KEY, CA_KEY_KEY, TLS_CERT_KEY, TLS_KEY_KEY,
};
use crate::metrics::catalogue::FEEDBACK_CERT_EXPIRY;
use crate::metrics::Families;

/// Reads and writes one round may take before giving up: each conflict
/// means another replica wrote, and its write is read next.
const MAX_ROUNDS: usize = 5;

/// The operator-made certificate's settings (`--feedback-tls-secret`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedTls {
    pub secret: SecretRef,
    /// The DNS names the serving certificate carries.
    pub names: Vec<String>,
    pub policy: CertPolicy,
    /// How often every replica reads the Secret again.
    pub recheck: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error(transparent)]
    Corrupt(#[from] CorruptSecret),
    #[error("cannot {action} Secret {secret}: {source} (the operator's Role needs get, create and update on it)")]
    Api {
        action: &'static str,
        secret: SecretRef,
        #[source]
        source: kube::Error,
    },
    #[error("cannot make a certificate for Secret {secret}: {source}")]
    Issue {
        secret: SecretRef,
        #[source]
        source: rcgen::Error,
    },
    #[error("Secret {secret} kept changing under {MAX_ROUNDS} reads in a row; another writer fights over it")]
    Contended { secret: SecretRef },
}

/// A CA that signs serving certificates.
#[derive(Clone, Debug)]
pub struct IssuedCa {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: UnixSeconds,
}

/// A serving certificate and its key.
#[derive(Clone, Debug)]
pub struct IssuedServing {
    pub cert_pem: String,
    pub key_pem: String,
}

fn datetime(at: UnixSeconds) -> Result<time::OffsetDateTime, rcgen::Error> {
    time::OffsetDateTime::from_unix_timestamp(at).map_err(|_| rcgen::Error::Time)
}

/// A random positive 128-bit serial: two renewals never share one.
fn random_serial() -> Result<SerialNumber, rcgen::Error> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| rcgen::Error::RingUnspecified)?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// A new CA valid from `now` for the policy's CA lifetime.
pub fn issue_ca(policy: &CertPolicy, now: UnixSeconds) -> Result<IssuedCa, rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "mailfleet feedback CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial()?);
    let (from, until) = policy.ca_validity(now);
    params.not_before = datetime(from)?;
    params.not_after = datetime(until)?;
    let cert = params.self_signed(&key)?;
    Ok(IssuedCa {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after: until,
    })
}

/// A serving certificate for `names`, signed by `ca`, valid from `now`.
pub fn issue_serving(
    ca: &IssuedCa,
    names: &[String],
    policy: &CertPolicy,
    now: UnixSeconds,
) -> Result<IssuedServing, rcgen::Error> {
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, KeyPair::from_pem(&ca.key_pem)?)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        names.first().map(String::as_str).unwrap_or("mailfleet"),
    );
    params.distinguished_name = name;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    let (from, until) = policy.serving_validity(now, ca.not_after);
    params.not_before = datetime(from)?;
    params.not_after = datetime(until)?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(IssuedServing {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The Secret's data for a CA and a serving certificate.
pub fn secret_data(ca: &IssuedCa, serving: &IssuedServing) -> BTreeMap<String, ByteString> {
    [
        (CA_CERT_KEY, &ca.cert_pem),
        (CA_KEY_KEY, &ca.key_pem),
        (TLS_CERT_KEY, &serving.cert_pem),
        (TLS_KEY_KEY, &serving.key_pem),
    ]
    .into_iter()
    .map(|(key, pem)| (key.to_string(), ByteString(pem.as_bytes().to_vec())))
    .collect()
}

fn unix_now() -> UnixSeconds {
    jiff::Timestamp::now().as_second()
}

fn is_status(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

/// What the port serves: swapped whole when the Secret holds a new pair.
/// A plain `RwLock` (arc-swap is not in the build): a handshake holds the
/// read lock only to clone an `Arc`, and a swap comes once in 60 days.
pub struct ServedCert {
    current: RwLock<Arc<CertifiedKey>>,
    serial: RwLock<String>,
    not_after: AtomicI64,
}

impl fmt::Debug for ServedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServedCert")
            .field(
                "serial",
                &*self.serial.read().unwrap_or_else(|e| e.into_inner()),
            )
            .finish()
    }
}

impl ServedCert {
    fn new(pair: &StoredPair) -> Self {
        ServedCert {
            current: RwLock::new(pair.serving.clone()),
            serial: RwLock::new(pair.serial.clone()),
            not_after: AtomicI64::new(pair.not_after),
        }
    }

    /// Serves `pair` from the next handshake on; whether it was new.
    fn swap(&self, pair: &StoredPair) -> bool {
        let mut serial = self.serial.write().unwrap_or_else(|e| e.into_inner());
        if *serial == pair.serial {
            return false;
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = pair.serving.clone();
        *serial = pair.serial.clone();
        self.not_after.store(pair.not_after, Ordering::Relaxed);
        true
    }
}

impl ResolvesServerCert for ServedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

impl Families for ServedCert {
    fn encode(&self, out: &mut DescriptorEncoder<'_>) -> fmt::Result {
        FEEDBACK_CERT_EXPIRY.write(out, [([], self.not_after.load(Ordering::Relaxed))])
    }
}

/// The port's TLS when the operator keeps the certificate.
pub struct ManagedServing {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The CA the agents are to trust.
    pub ca_pem: String,
    /// What the port serves (and its expiry metric).
    pub served: Arc<ServedCert>,
}

/// Reads (or makes) the Secret, refuses a corrupt one, and starts the task
/// that renews and reloads it for as long as the port serves.
pub async fn start(client: Client, tls: ManagedTls) -> Result<ManagedServing, KeeperError> {
    let api: Api<Secret> = Api::namespaced(client, &tls.secret.namespace);
    let pair = ensure(&api, &tls, unix_now).await?;
    let served = Arc::new(ServedCert::new(&pair));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_cert_resolver(served.clone());
    tracing::info!(secret = %tls.secret, serial = %pair.serial, not_after = pair.not_after,
        "serving the feedback port's certificate from the operator's Secret");
    tokio::spawn(keep(api, tls, pair.ca_pem.clone(), Arc::downgrade(&served)));
    Ok(ManagedServing {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ca_pem: pair.ca_pem,
        served,
    })
}

/// Reads the Secret every `recheck` (sooner when a renewal is due), renews
/// it when due, and serves what it holds; ends when the port is gone.
async fn keep(api: Api<Secret>, tls: ManagedTls, ca_pem: String, served: Weak<ServedCert>) {
    loop {
        tokio::time::sleep(tls.recheck).await;
        let Some(served) = served.upgrade() else {
            return;
        };
        match ensure(&api, &tls, unix_now).await {
            // The agents trust the CA this process started with; a new CA
            // (deleted Secret) reaches them with the next operator start.
            Ok(pair) if pair.ca_pem != ca_pem => tracing::warn!(secret = %tls.secret,
                "the Secret holds a new CA; restart the operator (kubectl rollout restart) to hand it to the sender pods; serving the previous certificate"),
            Ok(pair) => {
                if served.swap(&pair) {
                    tracing::info!(secret = %tls.secret, serial = %pair.serial,
                        not_after = pair.not_after, "the feedback port serves a renewed certificate");
                }
            }
            Err(e) => tracing::error!(error = %e, "keeping the previous feedback certificate"),
        }
    }
}

/// The Secret as it should be: made when missing, renewed when due.
async fn ensure(
    api: &Api<Secret>,
    tls: &ManagedTls,
    clock: fn() -> UnixSeconds,
) -> Result<StoredPair, KeeperError> {
    let secret = &tls.secret;
    let failed = |action: &'static str| {
        move |source| KeeperError::Api {
            action,
            secret: secret.clone(),
            source,
        }
    };
    let issue_failed = |source| KeeperError::Issue {
        secret: secret.clone(),
        source,
    };
    for _ in 0..MAX_ROUNDS {
        let now = clock();
        let Some(stored) = api.get_opt(&secret.name).await.map_err(failed("read"))? else {
            let ca = issue_ca(&tls.policy, now).map_err(issue_failed)?;
            let serving = issue_serving(&ca, &tls.names, &tls.policy, now).map_err(issue_failed)?;
            let object = Secret {
                metadata: ObjectMeta {
                    name: Some(secret.name.clone()),
                    namespace: Some(secret.namespace.clone()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/managed-by".to_string(),
                        "mailfleet-operator".to_string(),
                    )])),
                    ..ObjectMeta::default()
                },
                type_: Some("kubernetes.io/tls".to_string()),
                data: Some(secret_data(&ca, &serving)),
                ..Secret::default()
            };
            match api.create(&PostParams::default(), &object).await {
                Ok(_) => {
                    tracing::info!(secret = %secret, "made the feedback port's CA and certificate")
                }
                // The other replica made it first: its pair is read next.
                Err(e) if is_status(&e, 409) => {}
                Err(e) => return Err(failed("create")(e)),
            }
            continue;
        };
        let data = stored.data.clone().unwrap_or_default();
        let pair = read_pair(secret, &data)?;
        let reason = match decide(secret, &pair, &tls.names, &tls.policy, now)? {
            Verdict::Keep { .. } => return Ok(pair),
            Verdict::Renew(reason) => reason,
        };
        let ca = IssuedCa {
            cert_pem: pair.ca_pem.clone(),
            key_pem: pair.ca_key_pem.clone(),
            not_after: pair.ca_not_after,
        };
        let serving = issue_serving(&ca, &tls.names, &tls.policy, now).map_err(issue_failed)?;
        let mut renewed = stored;
        let mut data = data;
        data.extend(secret_data(&ca, &serving));
        renewed.data = Some(data);
        // resourceVersion stays as read: a replace after another writer's fails with 409.
        match api
            .replace(&secret.name, &PostParams::default(), &renewed)
            .await
        {
            Ok(_) => {
                tracing::info!(secret = %secret, %reason, "renewed the feedback port's certificate")
            }
            Err(e) if is_status(&e, 409) => {}
            Err(e) => return Err(failed("update")(e)),
        }
    }
    Err(KeeperError::Contended {
        secret: secret.clone(),
    })
}

/// The port's TLS acceptor: the operator's own Secret with
/// `--feedback-tls-secret` (its CA then goes to the agents), else
/// `--tls-cert`/`--tls-key`, else none; and what to register for the expiry metric.
pub async fn port_tls(
    client: &Client,
    options: &mut super::run::OperatorOptions,
) -> Result<(Option<tokio_rustls::TlsAcceptor>, Option<Arc<ServedCert>>), super::run::RunError> {
    match options.managed_tls.clone() {
        Some(managed) => {
            let serving = start(client.clone(), managed).await.map_err(Box::new)?;
            options.settings.feedback_ca = Some(serving.ca_pem);
            Ok((Some(serving.acceptor), Some(serving.served)))
        }
        None => Ok((
            options
                .tls
                .as_ref()
                .map(crate::serve::TlsFiles::acceptor)
                .transpose()?,
            None,
        )),
    }
}
