//! Standalone mode behind the HTTP port: the shared-token check, the feedback
//! receiver and what `/metrics`, `/healthz` and `/readyz` say.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::Timestamp;
use tokio::sync::Notify;

use crate::agent::report::{FeedbackReport, FeedbackResponse};
use crate::serve::{FeedbackReceiver, FeedbackRefusal, Observability};

use super::core::Core;

/// The shared secret agents present as `Authorization: Bearer <token>`. The
/// file is read at every request, so replacing it rotates the token; while
/// it cannot be read, the last token read stays in force.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    last_good: Mutex<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read --token-file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--token-file {path} is empty; put the shared token agents send in it")]
    Empty { path: PathBuf },
}

impl TokenFile {
    pub fn open(path: &Path) -> Result<Self, TokenError> {
        let token = read_token(path)?;
        Ok(TokenFile {
            path: path.to_path_buf(),
            last_good: Mutex::new(token),
        })
    }

    fn current(&self) -> Vec<u8> {
        let mut last = self.last_good.lock().unwrap_or_else(|p| p.into_inner());
        match read_token(&self.path) {
            Ok(token) => *last = token,
            Err(err) => tracing::warn!(error = %err, "keeping the token read before"),
        }
        last.clone()
    }

    /// Accepts exactly the token in the file.
    pub fn check(&self, bearer: Option<&str>) -> Result<(), FeedbackRefusal> {
        let Some(bearer) = bearer else {
            return Err(FeedbackRefusal::Unauthorized(
                "no `Authorization: Bearer <token>` header; give the agent the shared token (--token-file)".into(),
            ));
        };
        if constant_time_eq(bearer.as_bytes(), &self.current()) {
            Ok(())
        } else {
            Err(FeedbackRefusal::Unauthorized(
                "the bearer token is not the shared token of this receiver".into(),
            ))
        }
    }
}

fn read_token(path: &Path) -> Result<Vec<u8>, TokenError> {
    let text = std::fs::read(path).map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim_ascii().to_vec();
    if token.is_empty() {
        return Err(TokenError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(token)
}

/// Compares in a time that depends only on the lengths, never on where the
/// first difference is, so the token cannot be guessed byte by byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        difference |= x ^ y;
    }
    std::hint::black_box(difference) == 0
}

/// What the engine loop, the probes and the HTTP port share.
pub struct Shared {
    core: Mutex<Core>,
    /// Wakes the engine loop to write what a report changed.
    pub wake: Notify,
    token: Option<TokenFile>,
    /// Extra metrics text (the probes'), replaced after every round.
    pub probe_metrics: Mutex<String>,
    /// Why the last write of the outputs failed, while it fails.
    pub write_error: Mutex<Option<String>>,
    /// Set once the outputs were written the first time.
    pub ready: AtomicBool,
}

impl Shared {
    pub fn new(core: Core, token: Option<TokenFile>) -> Self {
        Shared {
            core: Mutex::new(core),
            wake: Notify::new(),
            token,
            probe_metrics: Mutex::new(String::new()),
            write_error: Mutex::new(None),
            ready: AtomicBool::new(false),
        }
    }

    pub fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The receiver the HTTP port calls.
pub struct Receiver(pub Arc<Shared>);

impl FeedbackReceiver for Receiver {
    async fn receive(
        &self,
        bearer: Option<String>,
        report: FeedbackReport,
    ) -> Result<FeedbackResponse, FeedbackRefusal> {
        if let Some(token) = &self.0.token {
            token.check(bearer.as_deref())?;
        }
        let answer = self.0.core().receive(&report, Timestamp::now());
        match &answer {
            Ok(response) if !response.duplicate => self.0.wake.notify_one(),
            Ok(_) => {}
            Err(refusal) => tracing::warn!(
                source_ip = %report.source_ip,
                agent = %report.agent.name,
                "feedback refused: {refusal}"
            ),
        }
        answer
    }
}

impl Observability for Receiver {
    fn metrics(&self) -> String {
        let mut out = self.0.core().metrics();
        out.push_str(
            &self
                .0
                .probe_metrics
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        out
    }

    fn health(&self) -> Result<String, String> {
        let mut problems = self.0.core().problems();
        if let Some(err) = &*self.0.write_error.lock().unwrap_or_else(|p| p.into_inner()) {
            problems.push(err.clone());
        }
        if problems.is_empty() {
            Ok("ok".into())
        } else {
            Err(problems.join("\n"))
        }
    }

    fn ready(&self) -> Result<String, String> {
        if self.0.ready.load(Ordering::Acquire) {
            Ok("ready".into())
        } else {
            Err("the outputs have not been written yet".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        for other in [&b"secreT"[..], b"secret2", b"secre", b"", b"Secret"] {
            assert!(!constant_time_eq(b"secret", other), "{other:?}");
        }
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn the_token_file_is_read_at_each_check_and_a_lost_file_keeps_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let token = TokenFile::open(&path).unwrap();
        assert!(token.check(Some("first")).is_ok());
        assert!(matches!(
            token.check(None),
            Err(FeedbackRefusal::Unauthorized(_))
        ));
        assert!(matches!(
            token.check(Some("wrong")),
            Err(FeedbackRefusal::Unauthorized(_))
        ));
        std::fs::write(&path, "second").unwrap();
        assert!(token.check(Some("first")).is_err());
        assert!(token.check(Some("second")).is_ok());
        std::fs::remove_file(&path).unwrap();
        assert!(token.check(Some("second")).is_ok());
        std::fs::write(&path, "  \n").unwrap();
        assert!(
            token.check(Some("second")).is_ok(),
            "an emptied file keeps the last token"
        );
        let err = TokenFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
        let err = TokenFile::open(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read --token-file"), "{err}");
    }
}
