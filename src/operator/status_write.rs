//! The one way the operator writes a status: observe the object, compute the
//! status from what is stored, merge-patch it with the object's
//! resourceVersion as a precondition, and on a conflict (409: someone wrote
//! first) observe again and compute again, so no concurrent change is lost.
//! The pool and route controllers, the probes and the reverse DNS checks all
//! write through [`write_status`]; the feedback receiver, which counts a
//! batch in its own loop, classifies its patch with [`patch`].
//!
//! Errors say which step failed ([`Step`]) and carry the category the
//! reconcile failure metric is labelled with.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use kube::api::Api;
use kube::core::NamespaceResourceScope;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::context::Context;
use super::error::{api_status, OperatorError};
use crate::routing::model::ObjectKey;

/// How often a status write that conflicts (409) is computed and tried again.
pub const STATUS_ATTEMPTS: u32 = 5;

/// The steps of a reconcile, for errors and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Reading what is stored.
    Observe,
    /// Checking the input.
    Validate,
    /// Computing what is wanted.
    Build,
    /// Writing it.
    Apply,
    /// Writing the status.
    Status,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Observe => "observe",
            Step::Validate => "validate",
            Step::Build => "build",
            Step::Apply => "apply",
            Step::Status => "status",
        }
    }
}

/// What one attempt decided.
pub enum Attempt<T> {
    /// Nothing to write; `T` is the result.
    Unchanged(T),
    /// Patch the status from `old` (what is stored) to `new`; once written,
    /// `then` is the result.
    Write { old: Value, new: Value, then: T },
}

/// A status as JSON, for the merge patch.
pub fn encode<S: Serialize>(
    kind: &str,
    key: &ObjectKey,
    status: &S,
) -> Result<Value, OperatorError> {
    serde_json::to_value(status).map_err(|source| OperatorError::Encode {
        what: format!("{kind} {key} status"),
        source,
    })
}

/// Why a status could not be written.
#[derive(Debug, thiserror::Error)]
pub enum StatusError<E> {
    #[error("cannot read {kind} {key}: {source}")]
    Observe {
        kind: String,
        key: ObjectKey,
        #[source]
        source: Box<kube::Error>,
    },
    /// The writer's own computation failed (validate or build).
    #[error(transparent)]
    Compute(E),
    #[error("cannot write {kind} {key} status: {source}")]
    Apply {
        kind: String,
        key: ObjectKey,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("{kind} {key} status kept conflicting after {attempts} attempts; retrying later")]
    Conflict {
        kind: String,
        key: ObjectKey,
        attempts: u32,
    },
}

impl StatusError<OperatorError> {
    /// The step that failed.
    pub fn step(&self) -> Step {
        match self {
            StatusError::Observe { .. } => Step::Observe,
            StatusError::Compute(e) => e.step(),
            StatusError::Apply { .. } | StatusError::Conflict { .. } => Step::Status,
        }
    }

    /// The word the reconcile failure metric is labelled with.
    pub fn category(&self) -> &'static str {
        match self {
            StatusError::Observe { .. } | StatusError::Apply { .. } => "kube",
            StatusError::Compute(e) => e.category(),
            StatusError::Conflict { .. } => "conflict",
        }
    }
}

impl From<StatusError<OperatorError>> for OperatorError {
    fn from(err: StatusError<OperatorError>) -> Self {
        match err {
            StatusError::Observe { kind, key, source } => OperatorError::Kube {
                action: format!("get {kind} {key}"),
                source,
            },
            StatusError::Compute(e) => e,
            StatusError::Apply { kind, key, source } => OperatorError::Kube {
                action: format!("patch {kind} {key} status"),
                source,
            },
            StatusError::Conflict {
                kind,
                key,
                attempts,
            } => OperatorError::Conflict {
                what: format!("{kind} {key} status"),
                attempts,
            },
        }
    }
}

/// The result of a status write.
pub struct Written<K, T> {
    /// The object the status was computed from (after the last re-read).
    pub object: Arc<K>,
    /// The object as the server returned it, `None` when nothing differed
    /// and no request was sent.
    pub written: Option<K>,
    pub result: T,
}

/// Observes the object named `key` (or starts from `first`, a copy the
/// watch holds), computes its status and writes it, computing again from the
/// stored object after each conflict, [`STATUS_ATTEMPTS`] times at most.
pub async fn write_status<K, T, E, F, Fut>(
    ctx: &Context,
    key: &ObjectKey,
    first: Option<Arc<K>>,
    mut compute: F,
) -> Result<Written<K, T>, StatusError<E>>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
    F: FnMut(Arc<K>) -> Fut,
    Fut: Future<Output = Result<Attempt<T>, E>>,
{
    let kind = K::kind(&()).to_string();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let mut current = match first {
        Some(object) => object,
        None => observe(&api, &kind, key).await?,
    };
    for attempt in 1..=STATUS_ATTEMPTS {
        let (old, new, then) = match compute(Arc::clone(&current))
            .await
            .map_err(StatusError::Compute)?
        {
            Attempt::Unchanged(result) => {
                return Ok(Written {
                    object: current,
                    written: None,
                    result,
                })
            }
            Attempt::Write { old, new, then } => (old, new, then),
        };
        match patch(ctx, key, current.as_ref(), &old, &new).await {
            Ok(Patched::Written(written)) => {
                return Ok(Written {
                    object: current,
                    written,
                    result: then,
                })
            }
            Ok(Patched::Conflict) => {
                tracing::debug!(attempt, object = %key, kind, "status conflict; reading the object again");
                current = observe(&api, &kind, key).await?;
            }
            Err(source) => {
                return Err(StatusError::Apply {
                    kind,
                    key: key.clone(),
                    source: Box::new(source),
                })
            }
        }
    }
    Err(StatusError::Conflict {
        kind,
        key: key.clone(),
        attempts: STATUS_ATTEMPTS,
    })
}

async fn observe<K, E>(api: &Api<K>, kind: &str, key: &ObjectKey) -> Result<Arc<K>, StatusError<E>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    api.get(&key.name)
        .await
        .map(Arc::new)
        .map_err(|source| StatusError::Observe {
            kind: kind.to_string(),
            key: key.clone(),
            source: Box::new(source),
        })
}

/// One status patch, guarded by `current`'s resourceVersion.
pub enum Patched<K> {
    /// Written (`None`: nothing differed, no request sent).
    Written(Option<K>),
    /// Someone wrote first: observe again and recompute.
    Conflict,
}

/// Patches `key`'s status from `old` to `new` as [`write_status`] does, once.
pub async fn patch<K>(
    ctx: &Context,
    key: &ObjectKey,
    current: &K,
    old: &Value,
    new: &Value,
) -> Result<Patched<K>, kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    match ctx
        .writer
        .patch_status::<K>(
            &key.namespace,
            &key.name,
            current.resource_version(),
            old,
            new,
        )
        .await
    {
        Ok(written) => Ok(Patched::Written(written)),
        Err(e) if api_status(&e) == Some(409) => Ok(Patched::Conflict),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("conflict", "Conflict")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn each_failure_names_its_step_and_keeps_the_metric_category() {
        let key = ObjectKey::new("mail", "bulk");
        let observe: StatusError<OperatorError> = StatusError::Observe {
            kind: "SenderPool".into(),
            key: key.clone(),
            source: Box::new(api_error(500)),
        };
        assert_eq!(
            (observe.step(), observe.category()),
            (Step::Observe, "kube")
        );
        let as_operator = OperatorError::from(observe);
        assert_eq!(as_operator.step(), Step::Observe);
        assert!(as_operator.to_string().contains("get SenderPool mail/bulk"));

        let apply: StatusError<OperatorError> = StatusError::Apply {
            kind: "SenderPool".into(),
            key: key.clone(),
            source: Box::new(api_error(422)),
        };
        assert_eq!((apply.step(), apply.category()), (Step::Status, "kube"));
        assert_eq!(OperatorError::from(apply).step(), Step::Apply);

        let conflict: StatusError<OperatorError> = StatusError::Conflict {
            kind: "DomainRoute".into(),
            key: key.clone(),
            attempts: STATUS_ATTEMPTS,
        };
        assert_eq!(
            (conflict.step(), conflict.category()),
            (Step::Status, "conflict")
        );
        assert_eq!(OperatorError::from(conflict).category(), "conflict");

        // A map with a non-string key cannot be a JSON object.
        let mut bad = std::collections::BTreeMap::new();
        bad.insert((1, 2), 3);
        let err = super::encode("SenderPool", &key, &bad).unwrap_err();
        let compute: StatusError<OperatorError> = StatusError::Compute(err);
        assert_eq!(
            (compute.step(), compute.category()),
            (Step::Build, "encode")
        );
        let invalid: StatusError<OperatorError> =
            StatusError::Compute(OperatorError::InvalidSpec {
                object: "SenderPool mail/bulk".into(),
                message: "spec.ips[0]".into(),
            });
        assert_eq!(
            (invalid.step(), invalid.category()),
            (Step::Validate, "config")
        );
    }
}
