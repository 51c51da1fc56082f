//! Puts the rendered hand-off configuration ([`crate::routing::haproxy`]) in
//! force: the file is replaced atomically, then HAProxy is reloaded with the
//! command the operator gave (`systemctl reload haproxy` on Debian, whose
//! unit checks the file with `haproxy -c` first). A reload that fails is
//! logged and counted, the last good file is put back, so a restart of
//! HAProxy still finds a configuration it accepts, and the same file is tried
//! again after [`RETRY_AFTER`] or as soon as the routes change.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use prometheus_client::encoding::DescriptorEncoder;

use super::outputs::{write_atomically, WriteError};
use crate::metrics::catalogue::HAPROXY_RELOADS;
use crate::metrics::Families;

/// How long a refused configuration waits before it is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);
/// How long the reload command may run.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of the command's output a failure quotes.
const OUTPUT_QUOTED: usize = 2000;
/// The variable that gives the reload command the file's path.
pub const CONFIG_ENV: &str = "MAILFLEET_HAPROXY_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("cannot run the HAProxy reload command {command:?}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("the HAProxy reload command {command:?} failed ({status}): {output}; the last good {path} is kept")]
    Refused {
        command: String,
        status: String,
        output: String,
        path: PathBuf,
    },
    #[error("the HAProxy reload command {command:?} did not finish within {after:?} and was stopped; the last good {path} is kept")]
    TimedOut {
        command: String,
        after: Duration,
        path: PathBuf,
    },
}

impl ReloadError {
    /// A short label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            ReloadError::Write(_) => "write",
            ReloadError::Spawn { .. } => "spawn",
            ReloadError::Refused { .. } => "refused",
            ReloadError::TimedOut { .. } => "timeout",
        }
    }
}

/// What happened to one configuration.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// HAProxy already runs it, or it was refused a short while ago.
    Unchanged,
    /// Written and reloaded.
    Reloaded,
}

pub struct HaproxyApplier {
    path: PathBuf,
    reload_command: String,
    timeout: Duration,
    /// The configuration HAProxy was last reloaded with.
    in_force: Option<String>,
    /// What to put back when a reload fails: the last reloaded file, or the
    /// one found at start.
    last_good: Option<String>,
    /// The last refused configuration and when it was tried.
    refused: Option<(String, Instant)>,
    reloads: u64,
    failures: BTreeMap<&'static str, u64>,
}

impl HaproxyApplier {
    pub fn new(path: &Path, reload_command: &str) -> Self {
        HaproxyApplier {
            path: path.to_path_buf(),
            reload_command: reload_command.to_string(),
            timeout: RELOAD_TIMEOUT,
            in_force: None,
            last_good: std::fs::read_to_string(path).ok(),
            refused: None,
            reloads: 0,
            failures: Default::default(),
        }
    }

    /// How long the reload command may run (default [`RELOAD_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `config` and reloads HAProxy unless it already runs it.
    pub fn apply(&mut self, config: &str) -> Result<Applied, ReloadError> {
        if self.in_force.as_deref() == Some(config) {
            return Ok(Applied::Unchanged);
        }
        if let Some((refused, at)) = &self.refused {
            if refused == config && at.elapsed() < RETRY_AFTER {
                return Ok(Applied::Unchanged);
            }
        }
        let result = write_atomically(&self.path, config.as_bytes())
            .map_err(ReloadError::from)
            .and_then(|()| self.reload());
        match result {
            Ok(()) => {
                self.reloads += 1;
                self.in_force = Some(config.to_string());
                self.last_good = Some(config.to_string());
                self.refused = None;
                Ok(Applied::Reloaded)
            }
            Err(err) => {
                *self.failures.entry(err.category()).or_default() += 1;
                self.refused = Some((config.to_string(), Instant::now()));
                if let Some(good) = &self.last_good {
                    if let Err(restore) = write_atomically(&self.path, good.as_bytes()) {
                        tracing::error!(
                            "cannot put the last good HAProxy configuration back: {restore}"
                        );
                    }
                }
                Err(err)
            }
        }
    }

    fn reload(&self) -> Result<(), ReloadError> {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(&self.reload_command)
            .env(CONFIG_ENV, &self.path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ReloadError::Spawn {
                command: self.reload_command.clone(),
                source,
            })?;
        // Read on threads: a command that writes much must not block on a full pipe.
        let stdout = child.stdout.take().map(read_bounded);
        let stderr = child.stderr.take().map(read_bounded);
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(ReloadError::TimedOut {
                        command: self.reload_command.clone(),
                        after: self.timeout,
                        path: self.path.clone(),
                    });
                }
                Err(source) => {
                    return Err(ReloadError::Spawn {
                        command: self.reload_command.clone(),
                        source,
                    })
                }
            }
        };
        if status.success() {
            return Ok(());
        }
        let mut output = String::new();
        for reader in [stderr, stdout].into_iter().flatten() {
            output.push_str(reader.join().unwrap_or_default().trim());
            output.push(' ');
        }
        let output: String = output.trim().chars().take(OUTPUT_QUOTED).collect();
        Err(ReloadError::Refused {
            command: self.reload_command.clone(),
            status: status.to_string(),
            output: if output.is_empty() {
                "no output".to_string()
            } else {
                output
            },
            path: self.path.clone(),
        })
    }

    /// What `mailfleet_haproxy_reloads_total` says now.
    pub fn counts(&self) -> HaproxyCounts {
        HaproxyCounts {
            ok: self.reloads,
            failures: self.failures.clone(),
        }
    }
}

/// Reloads that put a configuration in force, and failures by category.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HaproxyCounts {
    pub ok: u64,
    pub failures: BTreeMap<&'static str, u64>,
}

impl Families for HaproxyCounts {
    fn encode(&self, out: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let rows = std::iter::once(("ok", self.ok)).chain(
            FAILURE_CATEGORIES
                .iter()
                .map(|c| (*c, self.failures.get(c).copied().unwrap_or(0))),
        );
        HAPROXY_RELOADS.write(out, rows.map(|(result, n)| ([result], n)))
    }
}

/// Every [`ReloadError::category`], each with a series from the start.
const FAILURE_CATEGORIES: [&str; 4] = ["refused", "timeout", "spawn", "write"];

/// Reads a pipe to its end on a thread, keeping the first [`OUTPUT_QUOTED`] bytes.
fn read_bounded(pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut pipe = pipe;
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let room = OUTPUT_QUOTED.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_puts_the_file_in_force_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.cfg");
        let log = dir.path().join("reloads");
        let command = format!("cat \"${CONFIG_ENV}\" >> {}", log.display());
        let mut applier = HaproxyApplier::new(&path, &command);
        assert_eq!(applier.apply("one\n").unwrap(), Applied::Reloaded);
        assert_eq!(applier.apply("one\n").unwrap(), Applied::Unchanged);
        assert_eq!(applier.apply("two\n").unwrap(), Applied::Reloaded);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "one\ntwo\n");
        assert_eq!(applier.counts().ok, 2);
        assert!(crate::metrics::render(&applier.counts())
            .contains("mailfleet_haproxy_reloads_total{result=\"ok\"} 2\n"));
    }

    #[test]
    fn a_refused_reload_keeps_the_last_good_file_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, "good\n").unwrap();
        // Accepts only files that say good, as `haproxy -c` accepts only valid ones.
        let command =
            format!("grep -q good \"${CONFIG_ENV}\" || {{ echo 'bad config' >&2; exit 3; }}");
        let mut applier = HaproxyApplier::new(&path, &command);
        let err = applier.apply("broken\n").unwrap_err();
        assert_eq!(err.category(), "refused");
        let text = err.to_string();
        assert!(
            text.contains("bad config") && text.contains("exit status: 3"),
            "{text}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "good\n");
        assert_eq!(
            applier.apply("broken\n").unwrap(),
            Applied::Unchanged,
            "not retried at every tick"
        );
        assert_eq!(applier.counts().failures.get("refused"), Some(&1));
        assert_eq!(applier.apply("good again\n").unwrap(), Applied::Reloaded);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "good again\n");
    }

    #[test]
    fn a_reload_that_never_ends_is_stopped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.cfg");
        let mut applier =
            HaproxyApplier::new(&path, "exec sleep 30").with_timeout(Duration::from_millis(200));
        let err = applier.apply("x\n").unwrap_err();
        assert_eq!(err.category(), "timeout", "{err}");
        let text = crate::metrics::render(&applier.counts());
        assert!(
            text.contains("mailfleet_haproxy_reloads_total{result=\"timeout\"} 1\n")
                && text.contains("mailfleet_haproxy_reloads_total{result=\"refused\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn a_reload_command_killed_by_a_signal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.cfg");
        let mut applier = HaproxyApplier::new(&path, "kill -TERM $$");
        let err = applier.apply("x\n").unwrap_err();
        assert_eq!(err.category(), "refused", "{err}");
        assert!(err.to_string().contains("signal"), "{err}");
    }
}
