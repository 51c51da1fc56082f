//! The port's TLS certificate: a PEM chain and key (`--tls-cert`/`--tls-key`,
//! the same flags in the operator and standalone mode). Files that do not load
//! at start stop the start, naming the file: a typo in a key path must never
//! become a plain-HTTP port. Afterwards the files are looked at again every few
//! seconds and a renewed pair (cert-manager rewriting its Secret, the kubelet
//! swapping the mounted files) is served from the next handshake on; a pair
//! that does not load then is logged and the previous one kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often a handshake may look at the files' modification times.
const RECHECK: Duration = Duration::from_secs(10);

/// The PEM files of the port's TLS certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate, then any intermediates.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why the certificate cannot be served; names the file and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("--tls-cert/--tls-key {path}: {problem}")]
pub struct TlsError {
    pub path: PathBuf,
    pub problem: String,
}

/// The files' modification times: a change means a renewed pair.
type Stamp = (Option<SystemTime>, Option<SystemTime>);

impl TlsFiles {
    /// The acceptor the port serves with.
    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        let resolver = Arc::new(ReloadingCert::load(self.clone(), RECHECK)?);
        let provider = resolver.provider.clone();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError {
                path: self.cert.clone(),
                problem: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    fn stamp(&self) -> Stamp {
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (modified(&self.cert), modified(&self.key))
    }

    fn read(&self, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let refused = |path: &Path, problem: String| TlsError {
            path: path.to_path_buf(),
            problem,
        };
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| refused(&self.cert, format!("not a PEM certificate file: {e}")))?;
        if chain.is_empty() {
            return Err(refused(
                &self.cert,
                "holds no certificate (-----BEGIN CERTIFICATE-----)".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| {
            refused(
                &self.key,
                format!("not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
            )
        })?;
        CertifiedKey::from_der(chain, key, provider).map_err(|e| {
            refused(
                &self.key,
                format!(
                    "does not go with the certificate {}: {e}",
                    self.cert.display()
                ),
            )
        })
    }
}

/// Serves the last pair that loaded, and loads a changed pair.
#[derive(Debug)]
struct ReloadingCert {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    recheck: Duration,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamp: Stamp,
    checked: Instant,
}

impl ReloadingCert {
    fn load(files: TlsFiles, recheck: Duration) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let stamp = files.stamp();
        let key = Arc::new(files.read(&provider)?);
        Ok(ReloadingCert {
            files,
            provider,
            recheck,
            state: Mutex::new(Loaded {
                key,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The pair to serve now, reloaded first when the files changed.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= self.recheck {
            state.checked = Instant::now();
            let stamp = self.files.stamp();
            if stamp != state.stamp {
                match self.files.read(&self.provider) {
                    Ok(key) => {
                        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                        state.key = Arc::new(key);
                        state.stamp = stamp;
                    }
                    // Tried again at the next check: a renewal may be
                    // half-written; the previous pair still serves.
                    Err(e) => {
                        tracing::warn!(error = %e, "the changed TLS certificate does not load; serving the previous one")
                    }
                }
            }
        }
        state.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(files: &TlsFiles, name: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    #[test]
    fn a_renewed_pair_is_served_and_a_broken_one_keeps_the_previous() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        };
        let first = write_pair(&files, "first.example");
        let resolver = ReloadingCert::load(files.clone(), Duration::ZERO).unwrap();
        assert_eq!(resolver.current().cert[0].as_ref(), first.as_slice());

        // Modification times of a rewrite may equal the first on a coarse
        // clock: wait until they differ.
        let before = files.stamp();
        let mut second = write_pair(&files, "second.example");
        while files.stamp() == before {
            std::thread::sleep(Duration::from_millis(20));
            second = write_pair(&files, "second.example");
        }
        assert_eq!(resolver.current().cert[0].as_ref(), second.as_slice());

        // A key that does not go with the certificate: the last good pair stays.
        let stale = files.stamp();
        let other = rcgen::KeyPair::generate().unwrap();
        while files.stamp() == stale {
            std::thread::sleep(Duration::from_millis(20));
            std::fs::write(&files.key, other.serialize_pem()).unwrap();
        }
        assert_eq!(resolver.current().cert[0].as_ref(), second.as_slice());
        let err = files.read(&resolver.provider).unwrap_err();
        assert!(err.problem.contains("does not go with"), "{err}");
        assert_eq!(err.path, files.key);
    }

    #[test]
    fn files_that_do_not_load_refuse_the_start_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        };
        std::fs::write(&files.cert, "not pem").unwrap();
        std::fs::write(&files.key, "not pem").unwrap();
        let err = files.acceptor().err().unwrap();
        assert_eq!(err.path, files.cert);
        assert!(err.to_string().contains("holds no certificate"), "{err}");
    }
}
