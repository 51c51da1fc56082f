//! Changing the log filter of a running process (`PUT /log-level`), so an
//! operator can turn on debug logs for one module without a restart.

use std::sync::{Arc, Mutex};

use tracing_subscriber::{reload, EnvFilter};

type Apply = dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync;

/// A handle on the process' reloadable `EnvFilter` layer.
#[derive(Clone)]
pub struct LogLevelHandle {
    apply: Arc<Apply>,
    current: Arc<Mutex<String>>,
}

impl std::fmt::Debug for LogLevelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogLevelHandle")
            .field("current", &self.current())
            .finish()
    }
}

impl LogLevelHandle {
    /// Wraps the handle of a `reload::Layer<EnvFilter, S>`; `initial` is the
    /// filter the layer was built with, shown until the first change.
    pub fn new<S: 'static>(handle: reload::Handle<EnvFilter, S>, initial: &str) -> Self {
        let apply = move |filter: EnvFilter| {
            handle
                .reload(filter)
                .map_err(|e| format!("cannot change the log filter: {e}"))
        };
        LogLevelHandle {
            apply: Arc::new(apply),
            current: Arc::new(Mutex::new(initial.to_string())),
        }
    }

    /// Replaces the filter with `directives` (the `RUST_LOG` syntax, for
    /// example `info,mailfleet::serve=debug`). A filter that does not parse is
    /// refused and the old one stays.
    pub fn set(&self, directives: &str) -> Result<(), String> {
        if directives.is_empty() {
            return Err("the filter is empty; send a level such as `info` or directives such as `info,mailfleet=debug`".into());
        }
        let filter = EnvFilter::try_new(directives)
            .map_err(|e| format!("`{directives}` is not a log filter: {e}"))?;
        (self.apply)(filter)?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = directives.to_string();
        Ok(())
    }

    /// The filter in force.
    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    #[test]
    fn a_new_filter_takes_effect_and_a_bad_one_is_refused() {
        let (layer, handle) = reload::Layer::new(EnvFilter::new("warn"));
        let subscriber = tracing_subscriber::registry().with(layer);
        let level = LogLevelHandle::new(handle, "warn");
        tracing::subscriber::with_default(subscriber, || {
            assert!(!tracing::enabled!(tracing::Level::INFO));
            level.set("info").unwrap();
            assert!(tracing::enabled!(tracing::Level::INFO));
            assert_eq!(level.current(), "info");
            let err = level.set("info,[unclosed").unwrap_err();
            assert!(err.contains("not a log filter"), "{err}");
            assert!(level.set("").is_err());
            assert_eq!(level.current(), "info");
        });
    }
}
