//! One watch per kind: the reflector that fills a store also hands each
//! change to the controllers, instead of every controller opening its own
//! watch of the same objects (which doubled the watch traffic and the
//! memory of every object).
//!
//! A change is handed over only while a controller listens (on the leader);
//! a follower's reflectors send nowhere and never wait. A controller that
//! falls behind by more than the buffer loses the oldest changes and is told
//! so: its [`Trigger`] wakes every object of it instead, so nothing is missed.

use futures::Stream;
use kube::runtime::watcher;
use tokio::sync::broadcast;

use super::triggers::Trigger;

/// Changes a slow controller may fall behind by before it re-reads everything.
const BUFFER: usize = 1024;

/// The changes of one kind in one watched scope.
pub struct Fanout<K> {
    tx: broadcast::Sender<K>,
}

impl<K> Clone for Fanout<K> {
    fn clone(&self) -> Self {
        Fanout {
            tx: self.tx.clone(),
        }
    }
}

impl<K: Clone + Send + 'static> Default for Fanout<K> {
    fn default() -> Self {
        Fanout {
            tx: broadcast::channel(BUFFER).0,
        }
    }
}

impl<K: Clone + Send + 'static> Fanout<K> {
    /// Hands a watch event's object to the listening controllers, if any.
    pub fn send(&self, event: &watcher::Event<K>) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        match event {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) | watcher::Event::Delete(o) => {
                let _ = self.tx.send(o.clone());
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }

    /// The changes from now on, as a controller's trigger stream; falling
    /// behind fires `on_lag` (a wake-up of every object).
    pub fn subscribe(
        &self,
        on_lag: Trigger,
    ) -> impl Stream<Item = Result<K, watcher::Error>> + Send {
        futures::stream::unfold(
            (self.tx.subscribe(), on_lag),
            |(mut rx, on_lag)| async move {
                loop {
                    match rx.recv().await {
                        Ok(object) => return Some((Ok(object), (rx, on_lag))),
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::warn!(
                                missed,
                                "a controller fell behind its watch; waking every object"
                            );
                            on_lag.fire();
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn named(name: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cm
    }

    #[tokio::test]
    async fn without_a_listener_nothing_is_kept_and_a_lagging_one_is_woken() {
        let fanout: Fanout<ConfigMap> = Fanout::default();
        fanout.send(&watcher::Event::Apply(named("before")));
        let lag = Trigger::new();
        let mut lag_signals = lag.stream();
        let changes = fanout.subscribe(lag.clone());
        let mut changes = std::pin::pin!(changes);
        fanout.send(&watcher::Event::Apply(named("a")));
        fanout.send(&watcher::Event::InitDone);
        let first = changes.next().await.unwrap().unwrap();
        assert_eq!(first.metadata.name.as_deref(), Some("a"));
        for i in 0..BUFFER + 5 {
            fanout.send(&watcher::Event::Apply(named(&format!("n{i}"))));
        }
        // The oldest changes are gone; the lag fired the wake-up trigger.
        let next = changes.next().await.unwrap().unwrap();
        assert_ne!(next.metadata.name.as_deref(), Some("n0"));
        assert!(lag_signals.next().await.is_some());
    }
}
