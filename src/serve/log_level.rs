//! Changing the log filter of a running process (`PUT /log-level`), so an
//! operator can turn on debug logs for one module without a restart.

use std::sync::{Arc, Mutex};

use tracing_subscriber::{reload, EnvFilter};

type Apply = dyn Fn(EnvFilter) -> Result<(), LogFilterError> + Send + Sync;

/// Why `PUT /log-level` left the filter as it was.
#[derive(Debug, thiserror::Error)]
pub enum LogFilterError {
    #[error("the filter is empty; send a level such as `info` or directives such as `info,mailfleet=debug`")]
    Empty,
    #[error("`{directives}` is not a log filter: {source}")]
    Syntax {
        directives: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("cannot change the log filter: {0}")]
    Reload(#[from] reload::Error),
}

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
        let apply = move |filter: EnvFilter| handle.reload(filter).map_err(LogFilterError::from);
        LogLevelHandle {
            apply: Arc::new(apply),
            current: Arc::new(Mutex::new(initial.to_string())),
        }
    }

    /// Replaces the filter with `directives` (the `RUST_LOG` syntax, for
    /// example `info,mailfleet::serve=debug`). A filter that does not parse is
    /// refused and the old one stays.
    pub fn set(&self, directives: &str) -> Result<(), LogFilterError> {
        if directives.is_empty() {
            return Err(LogFilterError::Empty);
        }
        let filter = EnvFilter::try_new(directives).map_err(|source| LogFilterError::Syntax {
            directives: directives.to_string(),
            source,
        })?;
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
            let err = level.set("info,[unclosed").unwrap_err().to_string();
            assert!(err.contains("not a log filter"), "{err}");
            assert!(level.set("").is_err());
            assert_eq!(level.current(), "info");
        });
    }
}
