//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager): two
//! replicas run, one leads. Controllers and the feedback counter run only on
//! the leader; a replica that loses the lease stops (the process exits
//! non-zero and Kubernetes restarts it as a follower), so two replicas never
//! write at once.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::apply::FIELD_MANAGER;

/// Seconds a lease is held without renewal before another replica may take it.
pub const LEASE_SECONDS: u64 = 15;
/// Seconds before expiry at which the holder renews.
pub const GRACE_SECONDS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("cannot set up the lease {namespace}/{name}: {source}")]
    Setup {
        namespace: String,
        name: String,
        #[source]
        source: LeaseManagerError,
    },
    #[error("the lease task ended: {0}")]
    TaskEnded(String),
    #[error("leadership of lease {0} was lost")]
    Lost(String),
}

pub struct Leadership {
    name: String,
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

impl Leadership {
    /// Starts competing for `namespace/name` as `identity`. Each replica uses
    /// its own field manager (`mailfleet-operator-<identity>`) on the Lease:
    /// server-side apply conflicts between them are what keeps the lock exclusive.
    /// `timing` is (lease seconds, grace seconds), grace below the lease.
    pub async fn start(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: (u64, u64),
    ) -> Result<Self, LeaderError> {
        let (lease, grace) = timing;
        let grace = grace.clamp(1, 3600);
        let lease = lease.max(grace + 1);
        // Grace first: the builder refuses a grace at or above the duration in force.
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_grace(grace)
            .with_duration(lease)
            .with_field_manager(format!("{FIELD_MANAGER}-{identity}"))
            .build()
            .await
            .map_err(|source| LeaderError::Setup {
                namespace: namespace.to_string(),
                name: name.to_string(),
                source,
            })?;
        let (state, task) = manager.watch().await;
        Ok(Leadership {
            name: format!("{namespace}/{name}"),
            state,
            task,
        })
    }

    /// Resolves once this replica leads.
    pub async fn acquired(&mut self) -> Result<(), LeaderError> {
        loop {
            if *self.state.borrow_and_update() {
                return Ok(());
            }
            tokio::select! {
                changed = self.state.changed() => {
                    if changed.is_err() {
                        return Err(LeaderError::TaskEnded("the lease channel closed".into()));
                    }
                }
                ended = &mut self.task => return Err(task_ended(ended)),
            }
        }
    }

    /// Resolves when leadership is lost or the lease task ends: always an error.
    pub async fn lost(&mut self) -> LeaderError {
        loop {
            if !*self.state.borrow_and_update() {
                return LeaderError::Lost(self.name.clone());
            }
            tokio::select! {
                changed = self.state.changed() => {
                    if changed.is_err() {
                        return LeaderError::TaskEnded("the lease channel closed".into());
                    }
                }
                ended = &mut self.task => return task_ended(ended),
            }
        }
    }
}

impl Leadership {
    /// Gives the lease up (on a graceful shutdown), so the other replica
    /// takes over at once instead of waiting for the lease to expire.
    pub async fn release(self) {
        let Leadership { state, task, .. } = self;
        // Closing the channel makes the lease task release the lock and end.
        drop(state);
        match tokio::time::timeout(std::time::Duration::from_secs(5), task).await {
            Ok(Ok(Ok(_))) => tracing::info!("lease released"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "cannot release the lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the lease task failed"),
            Err(_) => tracing::warn!("releasing the lease timed out"),
        }
    }
}

fn task_ended(
    ended: Result<
        Result<kube_lease_manager::LeaseManager, LeaseManagerError>,
        tokio::task::JoinError,
    >,
) -> LeaderError {
    match ended {
        Ok(Ok(_)) => LeaderError::TaskEnded("it stopped".into()),
        Ok(Err(e)) => LeaderError::TaskEnded(e.to_string()),
        Err(e) => LeaderError::TaskEnded(e.to_string()),
    }
}
