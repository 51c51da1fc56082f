//! The service account that reads Postmaster Tools: its JSON key file, and the
//! signed assertion (a JWT, RS256) that the token endpoint exchanges for an
//! access token (OAuth 2.0 JWT bearer grant, RFC 7523). The claims are built
//! from a given time; only the RSA signature touches the system (ring's
//! random source, which PKCS#1 v1.5 signing does not use for its output).

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jiff::Timestamp;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivatePkcs8KeyDer;
use serde::Deserialize;

/// The read-only scope of the Postmaster Tools API.
pub const POSTMASTER_SCOPE: &str = "https://www.googleapis.com/auth/postmaster.readonly";

/// How long an assertion is valid (Google accepts at most one hour).
const ASSERTION_LIFETIME_SECONDS: i64 = 3600;

/// Largest key file read (a Google key file is about 2.4 KB).
const MAX_KEY_FILE_BYTES: usize = 64 * 1024;

/// Why the key file cannot be used. Never quotes the private key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("service account key file: {problem}")]
pub struct AccountKeyError {
    pub problem: String,
}

fn problem(text: impl Into<String>) -> AccountKeyError {
    AccountKeyError {
        problem: text.into(),
    }
}

#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    token_uri: Option<String>,
}

/// A service account able to sign assertions. `Debug` never shows the key.
#[derive(Clone)]
pub struct ServiceAccount {
    client_email: String,
    token_uri: String,
    key: Arc<RsaKeyPair>,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ServiceAccount {
    /// Reads the JSON key file Google Cloud gives for a service account
    /// (IAM → Service accounts → Keys → Add key → JSON).
    pub fn from_key_file(bytes: &[u8]) -> Result<Self, AccountKeyError> {
        if bytes.len() > MAX_KEY_FILE_BYTES {
            return Err(problem(format!(
                "{} bytes is too large for a key file (at most {MAX_KEY_FILE_BYTES}); put the JSON key file itself in the Secret",
                bytes.len()
            )));
        }
        let file: KeyFile = serde_json::from_slice(bytes).map_err(|e| {
            problem(format!(
                "not JSON ({}, line {} column {}); put the JSON key file of the service account in the Secret",
                super::stats::json_problem(&e),
                e.line(),
                e.column()
            ))
        })?;
        if let Some(kind) = file.kind.as_deref().filter(|k| *k != "service_account") {
            return Err(problem(format!(
                "`type` is `{kind}`, not `service_account`; create a key for a service account, not a user or an OAuth client"
            )));
        }
        let field = |value: Option<String>, name: &str| {
            value
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    problem(format!(
                        "`{name}` is missing or empty; download the whole JSON key file again"
                    ))
                })
        };
        let client_email = field(file.client_email, "client_email")?;
        let token_uri = field(file.token_uri, "token_uri")?;
        let pem = field(file.private_key, "private_key")?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| {
            problem("`private_key` holds no PKCS#8 PEM block (`-----BEGIN PRIVATE KEY-----`); download the JSON key file again")
        })?;
        let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).map_err(|e| {
            problem(format!(
                "`private_key` is not a usable RSA key ({e}); Google's keys are RSA 2048: download the JSON key file again"
            ))
        })?;
        Ok(ServiceAccount {
            client_email,
            token_uri,
            key: Arc::new(key),
        })
    }

    pub fn client_email(&self) -> &str {
        &self.client_email
    }

    /// The key file's `token_uri`.
    pub fn token_uri(&self) -> &str {
        &self.token_uri
    }

    /// The signed assertion for `audience` (the token endpoint), issued at `now`.
    pub fn assertion(&self, audience: &str, now: Timestamp) -> Result<String, AccountKeyError> {
        let input = signing_input(&self.client_email, audience, now);
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| problem("signing the assertion with `private_key` failed"))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    /// The public key (DER RSAPublicKey), to check an assertion's signature.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key.public().as_ref().to_vec()
    }
}

/// `base64url(header).base64url(claims)`: what the signature covers.
pub fn signing_input(issuer: &str, audience: &str, now: Timestamp) -> String {
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    let issued = now.as_second();
    let claims = serde_json::json!({
        "iss": issuer,
        "scope": POSTMASTER_SCOPE,
        "aud": audience,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME_SECONDS,
    });
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_KEY: &str = include_str!("../../../tests/fixtures/postmaster/test-rsa-key.pem");

    fn key_file(email: &str, pem: &str) -> Vec<u8> {
        serde_json::json!({
            "type": "service_account",
            "client_email": email,
            "private_key": pem,
            "token_uri": "https://oauth2.googleapis.com/token",
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn the_assertion_is_a_signed_jwt_with_the_postmaster_scope() {
        let account =
            ServiceAccount::from_key_file(&key_file("pm@p.iam.gserviceaccount.com", TEST_KEY))
                .unwrap();
        assert!(!format!("{account:?}").contains("PRIVATE"));
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let jwt = account.assertion("https://t/token", now).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "pm@p.iam.gserviceaccount.com");
        assert_eq!(claims["aud"], "https://t/token");
        assert_eq!(claims["scope"], POSTMASTER_SCOPE);
        assert_eq!(claims["exp"], 1_800_003_600);
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            account.public_key_der(),
        );
        let signed = format!("{}.{}", parts[0], parts[1]);
        public.verify(signed.as_bytes(), &signature).unwrap();
        assert!(public.verify(b"other", &signature).is_err());
    }

    #[test]
    fn bad_key_files_name_the_field_and_never_the_key() {
        let err = ServiceAccount::from_key_file(b"<html>").unwrap_err();
        assert!(err.problem.contains("not JSON"), "{err}");
        let err = ServiceAccount::from_key_file(&key_file("", TEST_KEY)).unwrap_err();
        assert!(err.problem.contains("`client_email`"), "{err}");
        let broken = TEST_KEY.replace("MII", "XXX");
        let err = ServiceAccount::from_key_file(&key_file("a@b", &broken)).unwrap_err();
        assert!(err.problem.contains("`private_key`"), "{err}");
        assert!(!err.to_string().contains("XXX"), "{err}");
        let user =
            br#"{"type":"authorized_user","client_email":"a","private_key":"b","token_uri":"c"}"#;
        let err = ServiceAccount::from_key_file(user).unwrap_err();
        assert!(err.problem.contains("authorized_user"), "{err}");
    }
}
