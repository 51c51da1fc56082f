//! The feedback port's certificate when the operator makes it itself
//! (`--feedback-tls-secret`): what a stored Secret holds, whether it is
//! usable, whether its serving certificate is due for renewal, and which
//! names it must carry. Pure: the time comes in as an argument; making keys
//! and talking to the API server is [`feedback_cert_keeper`](super::feedback_cert_keeper).
//!
//! The Secret holds a long-lived CA (`ca.crt`, `ca.key`) and a short-lived
//! serving certificate signed by it (`tls.crt`, `tls.key`). The agents trust
//! the CA, so a renewed serving certificate changes no pod template.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::ByteString;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Seconds since the Unix epoch.
pub type UnixSeconds = i64;

pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";

/// A serving certificate starts this long before it is made, so a replica
/// whose clock runs a little behind still accepts it.
const BACKDATE: UnixSeconds = 5 * 60;

const DAY: UnixSeconds = 24 * 60 * 60;

/// How long what the operator makes lives, and when it is renewed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPolicy {
    pub ca_lifetime: UnixSeconds,
    pub serving_lifetime: UnixSeconds,
    /// The serving certificate is renewed once this many thousandths of its
    /// lifetime have passed.
    pub renew_after_permille: i64,
}

impl Default for CertPolicy {
    /// A ten-year CA; a 90-day serving certificate renewed at 2/3 (day 60),
    /// which leaves a month to notice a renewal that keeps failing.
    fn default() -> Self {
        CertPolicy {
            ca_lifetime: 3650 * DAY,
            serving_lifetime: 90 * DAY,
            renew_after_permille: 667,
        }
    }
}

impl CertPolicy {
    /// The CA's validity when made at `now`.
    pub fn ca_validity(&self, now: UnixSeconds) -> (UnixSeconds, UnixSeconds) {
        (now - BACKDATE, now + self.ca_lifetime)
    }

    /// A serving certificate's validity when made at `now`: never past its CA's.
    pub fn serving_validity(
        &self,
        now: UnixSeconds,
        ca_not_after: UnixSeconds,
    ) -> (UnixSeconds, UnixSeconds) {
        (
            now - BACKDATE,
            (now + self.serving_lifetime).min(ca_not_after),
        )
    }

    /// When a certificate valid from `not_before` to `not_after` is renewed.
    pub fn renew_at(&self, not_before: UnixSeconds, not_after: UnixSeconds) -> UnixSeconds {
        let lifetime = (not_after - not_before).max(0);
        not_before + lifetime * self.renew_after_permille / 1000
    }
}

/// The DNS names the serving certificate carries for the Service `service`
/// in `namespace`: every way a pod of the cluster may spell it.
pub fn serving_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

/// The names for the feedback URL's host: the Service's names when the host
/// is one of them (its first label is the Service), and the host itself.
pub fn names_for_host(host: &str, namespace: &str) -> Vec<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let service = host.split('.').next().unwrap_or_default();
    let mut names = serving_names(service, namespace);
    if !names.contains(&host) && host.parse::<std::net::IpAddr>().is_err() {
        names.push(host);
    }
    names
}

/// Where the certificate lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A stored Secret that cannot be served: the key, what is wrong, and the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "Secret {secret} key {key}: {problem}; to start over delete the Secret \
     (kubectl -n {ns} delete secret {name}) and the operator makes a new CA and \
     certificate (sender pods then roll once to trust the new CA)",
    ns = secret.namespace,
    name = secret.name
)]
pub struct CorruptSecret {
    pub secret: SecretRef,
    pub key: &'static str,
    pub problem: String,
}

/// A usable stored Secret.
#[derive(Clone, Debug)]
pub struct StoredPair {
    /// The CA the agents trust, as stored.
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub ca_not_after: UnixSeconds,
    /// The serving certificate and key, ready for rustls.
    pub serving: Arc<CertifiedKey>,
    pub not_before: UnixSeconds,
    pub not_after: UnixSeconds,
    /// The serving certificate's serial number, hex.
    pub serial: String,
    pub names: Vec<String>,
}

/// What to do with a usable stored Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it; look again by `renew_at` at the latest.
    Keep {
        renew_at: UnixSeconds,
    },
    Renew(RenewReason),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RenewReason {
    /// Past the renewal point of its lifetime (or expired).
    Due { renew_at: UnixSeconds },
    /// The certificate lacks names the agents use (the Service was renamed).
    NamesMissing(Vec<String>),
}

impl fmt::Display for RenewReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenewReason::Due { renew_at } => write!(f, "due for renewal since {renew_at} (Unix)"),
            RenewReason::NamesMissing(names) => {
                write!(f, "lacks the names {}", names.join(", "))
            }
        }
    }
}

/// Whether `pair` can go on being served at `now` for `wanted` names.
/// A CA that expired cannot sign a renewal: that is for a person to fix.
pub fn decide(
    secret: &SecretRef,
    pair: &StoredPair,
    wanted: &[String],
    policy: &CertPolicy,
    now: UnixSeconds,
) -> Result<Verdict, CorruptSecret> {
    if pair.ca_not_after <= now {
        return Err(CorruptSecret {
            secret: secret.clone(),
            key: CA_CERT_KEY,
            problem: format!("the CA expired at {} (Unix)", pair.ca_not_after),
        });
    }
    let missing: Vec<String> = wanted
        .iter()
        .filter(|name| !pair.names.contains(name))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Ok(Verdict::Renew(RenewReason::NamesMissing(missing)));
    }
    let renew_at = policy.renew_at(pair.not_before, pair.not_after);
    // A certificate cut short by its CA's end is not renewed in a loop:
    // a renewal would end at the same moment.
    if now >= renew_at && !(pair.not_after >= pair.ca_not_after && now < pair.not_after) {
        return Ok(Verdict::Renew(RenewReason::Due { renew_at }));
    }
    Ok(Verdict::Keep { renew_at })
}

/// Reads the four keys of a stored Secret and checks they fit together:
/// a CA certificate and its key, a serving certificate signed by that CA
/// and its key.
pub fn read_pair(
    secret: &SecretRef,
    data: &BTreeMap<String, ByteString>,
) -> Result<StoredPair, CorruptSecret> {
    let corrupt = |key: &'static str, problem: String| CorruptSecret {
        secret: secret.clone(),
        key,
        problem,
    };
    let text = |key: &'static str| -> Result<&str, CorruptSecret> {
        let bytes = data
            .get(key)
            .map(|b| b.0.as_slice())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| corrupt(key, "is missing or empty".into()))?;
        std::str::from_utf8(bytes).map_err(|_| corrupt(key, "is not PEM text".into()))
    };
    let ca_pem = text(CA_CERT_KEY)?;
    let ca_key_pem = text(CA_KEY_KEY)?;
    let tls_pem = text(TLS_CERT_KEY)?;
    let tls_key_pem = text(TLS_KEY_KEY)?;
    let provider = rustls::crypto::ring::default_provider();

    let ca_der = first_cert(ca_pem).map_err(|p| corrupt(CA_CERT_KEY, p))?;
    let (_, ca) = X509Certificate::from_der(ca_der.as_ref())
        .map_err(|e| corrupt(CA_CERT_KEY, format!("is not an X.509 certificate: {e}")))?;
    if !ca.is_ca() {
        return Err(corrupt(
            CA_CERT_KEY,
            "is not a CA certificate (basicConstraints CA:TRUE)".into(),
        ));
    }
    let ca_key = private_key(ca_key_pem).map_err(|p| corrupt(CA_KEY_KEY, p))?;
    CertifiedKey::from_der(vec![ca_der.clone()], ca_key, &provider)
        .map_err(|e| corrupt(CA_KEY_KEY, format!("does not go with ca.crt: {e}")))?;

    let leaf_der = first_cert(tls_pem).map_err(|p| corrupt(TLS_CERT_KEY, p))?;
    let (_, leaf) = X509Certificate::from_der(leaf_der.as_ref())
        .map_err(|e| corrupt(TLS_CERT_KEY, format!("is not an X.509 certificate: {e}")))?;
    leaf.verify_signature(Some(ca.public_key()))
        .map_err(|e| corrupt(TLS_CERT_KEY, format!("is not signed by ca.crt: {e}")))?;
    let tls_key = private_key(tls_key_pem).map_err(|p| corrupt(TLS_KEY_KEY, p))?;
    let serving = CertifiedKey::from_der(vec![leaf_der.clone()], tls_key, &provider)
        .map_err(|e| corrupt(TLS_KEY_KEY, format!("does not go with tls.crt: {e}")))?;
    let names = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(StoredPair {
        ca_pem: ca_pem.to_string(),
        ca_key_pem: ca_key_pem.to_string(),
        ca_not_after: ca.validity().not_after.timestamp(),
        serving: Arc::new(serving),
        not_before: leaf.validity().not_before.timestamp(),
        not_after: leaf.validity().not_after.timestamp(),
        serial: leaf.raw_serial_as_string(),
        names,
    })
}

fn first_cert(pem: &str) -> Result<CertificateDer<'static>, String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| "holds no certificate (-----BEGIN CERTIFICATE-----)".to_string())?
        .map_err(|e| format!("is not a PEM certificate: {e}"))
}

fn private_key(pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("is not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::feedback_cert_keeper::{issue_ca, issue_serving, secret_data};

    const NOW: UnixSeconds = 1_800_000_000;

    fn secret() -> SecretRef {
        SecretRef {
            namespace: "mailfleet".into(),
            name: "mailfleet-feedback-tls".into(),
        }
    }

    fn names() -> Vec<String> {
        serving_names("mailfleet", "mailfleet")
    }

    fn stored(policy: &CertPolicy, now: UnixSeconds) -> BTreeMap<String, ByteString> {
        let ca = issue_ca(policy, now).unwrap();
        let serving = issue_serving(&ca, &names(), policy, now).unwrap();
        secret_data(&ca, &serving)
    }

    #[test]
    fn the_service_names_cover_every_spelling_and_a_custom_host() {
        assert_eq!(
            names(),
            [
                "mailfleet.mailfleet.svc",
                "mailfleet.mailfleet.svc.cluster.local",
                "mailfleet.mailfleet",
                "mailfleet"
            ]
        );
        assert_eq!(
            names_for_host("mailfleet.mailfleet.svc", "mailfleet"),
            names()
        );
        let custom = names_for_host("Feedback.Example.COM.", "mailfleet");
        assert_eq!(custom.last().unwrap(), "feedback.example.com");
        assert_eq!(custom[0], "feedback.mailfleet.svc");
        assert_eq!(names_for_host("10.0.0.1", "ns").len(), 4);
    }

    #[test]
    fn renewal_comes_at_two_thirds_of_the_lifetime_and_never_past_the_ca() {
        let policy = CertPolicy::default();
        let (from, until) = policy.serving_validity(NOW, NOW + 3650 * DAY);
        assert_eq!(until - NOW, 90 * DAY);
        let renew_at = policy.renew_at(from, until);
        assert!(renew_at - NOW > 59 * DAY && renew_at - NOW < 61 * DAY);
        let (_, capped) = policy.serving_validity(NOW, NOW + 10 * DAY);
        assert_eq!(capped, NOW + 10 * DAY);
        let (ca_from, ca_until) = policy.ca_validity(NOW);
        assert!(ca_from < NOW && ca_until - NOW == 3650 * DAY);
    }

    #[test]
    fn a_fresh_pair_is_kept_until_its_renewal_point_then_renewed() {
        let policy = CertPolicy::default();
        let data = stored(&policy, NOW);
        let pair = read_pair(&secret(), &data).unwrap();
        assert_eq!(pair.names, names());
        let Verdict::Keep { renew_at } = decide(&secret(), &pair, &names(), &policy, NOW).unwrap()
        else {
            panic!("a fresh pair is kept");
        };
        assert_eq!(
            decide(&secret(), &pair, &names(), &policy, renew_at - 1).unwrap(),
            Verdict::Keep { renew_at }
        );
        assert_eq!(
            decide(&secret(), &pair, &names(), &policy, renew_at).unwrap(),
            Verdict::Renew(RenewReason::Due { renew_at })
        );
        // Expired is past due too.
        assert!(matches!(
            decide(&secret(), &pair, &names(), &policy, pair.not_after + DAY).unwrap(),
            Verdict::Renew(RenewReason::Due { .. })
        ));
    }

    #[test]
    fn a_pair_without_a_wanted_name_is_renewed_at_once() {
        let policy = CertPolicy::default();
        let pair = read_pair(&secret(), &stored(&policy, NOW)).unwrap();
        let mut wanted = names();
        wanted.push("feedback.example.com".into());
        assert_eq!(
            decide(&secret(), &pair, &wanted, &policy, NOW).unwrap(),
            Verdict::Renew(RenewReason::NamesMissing(vec![
                "feedback.example.com".into()
            ]))
        );
    }

    #[test]
    fn an_expired_ca_is_an_error_naming_the_key_and_the_fix() {
        let policy = CertPolicy::default();
        let pair = read_pair(&secret(), &stored(&policy, NOW)).unwrap();
        let err = decide(&secret(), &pair, &names(), &policy, pair.ca_not_after).unwrap_err();
        assert_eq!(err.key, CA_CERT_KEY);
        let text = err.to_string();
        assert!(text.contains("mailfleet/mailfleet-feedback-tls"), "{text}");
        assert!(
            text.contains("kubectl -n mailfleet delete secret mailfleet-feedback-tls"),
            "{text}"
        );
    }

    #[test]
    fn a_serving_certificate_cut_short_by_its_ca_is_not_renewed_in_a_loop() {
        let policy = CertPolicy::default();
        let ca = issue_ca(
            &CertPolicy {
                ca_lifetime: 10 * DAY,
                ..policy.clone()
            },
            NOW,
        )
        .unwrap();
        let serving = issue_serving(&ca, &names(), &policy, NOW).unwrap();
        let pair = read_pair(&secret(), &secret_data(&ca, &serving)).unwrap();
        assert_eq!(pair.not_after, pair.ca_not_after);
        assert!(matches!(
            decide(&secret(), &pair, &names(), &policy, NOW + 9 * DAY).unwrap(),
            Verdict::Keep { .. }
        ));
    }

    #[test]
    fn every_broken_key_is_named() {
        let policy = CertPolicy::default();
        let good = stored(&policy, NOW);
        let other = stored(&policy, NOW);
        let with = |key: &str, value: &[u8]| {
            let mut data = good.clone();
            data.insert(key.to_string(), ByteString(value.to_vec()));
            read_pair(&secret(), &data).unwrap_err()
        };
        let err = with(TLS_CERT_KEY, b"");
        assert_eq!(
            (err.key, err.problem.as_str()),
            (TLS_CERT_KEY, "is missing or empty")
        );
        let err = with(CA_CERT_KEY, b"garbage");
        assert_eq!(err.key, CA_CERT_KEY);
        assert!(err.problem.contains("holds no certificate"), "{err}");
        // The serving certificate as the CA: not a CA.
        let err = with(CA_CERT_KEY, &good[TLS_CERT_KEY].0);
        assert!(err.problem.contains("not a CA"), "{err}");
        let err = with(CA_KEY_KEY, &other[CA_KEY_KEY].0);
        assert_eq!(err.key, CA_KEY_KEY);
        assert!(err.problem.contains("does not go with ca.crt"), "{err}");
        // A serving certificate of another CA.
        let err = with(TLS_CERT_KEY, &other[TLS_CERT_KEY].0);
        assert_eq!(err.key, TLS_CERT_KEY);
        assert!(err.problem.contains("not signed by ca.crt"), "{err}");
        let err = with(TLS_KEY_KEY, &other[TLS_KEY_KEY].0);
        assert_eq!(err.key, TLS_KEY_KEY);
        assert!(err.problem.contains("does not go with tls.crt"), "{err}");
        let err = with(TLS_KEY_KEY, b"-----BEGIN NOTHING-----\n");
        assert!(err.problem.contains("not a PEM private key"), "{err}");
    }
}
