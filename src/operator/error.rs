//! Why a reconcile or a feedback post failed, with one short category word per
//! kind for the `mailfleet_reconcile_failures_total{category}` metric.

use super::status_write::Step;
use crate::fleet::FleetError;

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("Kubernetes API call {action} failed: {source}")]
    Kube {
        action: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("{object}: {message}")]
    InvalidSpec { object: String, message: String },
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error("cannot build {what}: {message}")]
    Build { what: String, message: String },
    #[error("cannot encode {what} as JSON: {source}")]
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} kept conflicting after {attempts} attempts; retrying later")]
    Conflict { what: String, attempts: u32 },
    #[error("the reflectors have not synced yet")]
    NotReady,
}

impl OperatorError {
    /// A short word for metrics and logs: `kube`, `config`, `engine`, `input`,
    /// `build`, `encode`, `conflict` or `not_ready`.
    pub fn category(&self) -> &'static str {
        match self {
            OperatorError::Kube { .. } => "kube",
            OperatorError::InvalidSpec { .. } => "config",
            OperatorError::Fleet(e) => e.category(),
            OperatorError::Build { .. } => "build",
            OperatorError::Encode { .. } => "encode",
            OperatorError::Conflict { .. } => "conflict",
            OperatorError::NotReady => "not_ready",
        }
    }

    /// The reconcile step that failed: reading (a `get`, `list` or `watch`
    /// call, or stores not synced), checking the input, computing what is
    /// wanted, or writing it (every other API call; a status conflict).
    pub fn step(&self) -> Step {
        match self {
            OperatorError::Kube { action, .. } => {
                match action.split_whitespace().next().unwrap_or("") {
                    "get" | "list" | "watch" => Step::Observe,
                    _ => Step::Apply,
                }
            }
            OperatorError::NotReady => Step::Observe,
            OperatorError::InvalidSpec { .. } | OperatorError::Fleet(_) => Step::Validate,
            OperatorError::Build { .. } | OperatorError::Encode { .. } => Step::Build,
            OperatorError::Conflict { .. } => Step::Status,
        }
    }

    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        OperatorError::Kube {
            action: action.into(),
            source: Box::new(source),
        }
    }

    /// The HTTP status of a failed API call, if the server answered.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            OperatorError::Kube { source, .. } => api_status(source),
            _ => None,
        }
    }
}

/// The HTTP status code the API server answered with, if it did.
pub fn api_status(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

pub type Result<T, E = OperatorError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_are_short_metric_words() {
        let invalid = OperatorError::InvalidSpec {
            object: "mail/bulk".into(),
            message: "spec.template has no container".into(),
        };
        assert_eq!(invalid.category(), "config");
        assert_eq!(OperatorError::NotReady.category(), "not_ready");
        let conflict = OperatorError::Conflict {
            what: "SenderPool mail/bulk status".into(),
            attempts: 5,
        };
        assert_eq!(conflict.category(), "conflict");
        assert!(conflict.to_string().contains("5 attempts"));
    }
}
