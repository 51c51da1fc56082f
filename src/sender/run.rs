//! The sender's process: base config, first apply, `postfix start-fg` as a
//! child, the agent loop beside it, and a clean stop.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agent::apply::{ApplyError, PostfixTarget};
use crate::agent::config::read_config_dir;
use crate::agent::run::{run as run_agent, AgentError, AgentOptions};
use crate::reputation::classifier::Classifier;

use super::base;

/// Everything `sender run` is told: the agent's options (their `postfix`
/// target is the Postfix this process owns) and the base main.cf settings.
#[derive(Clone, Debug)]
pub struct SenderOptions {
    pub agent: AgentOptions,
    pub postfix: PostfixTarget,
    pub base_settings: Vec<(String, String)>,
    /// How long Postfix may take to stop after SIGTERM before it is killed.
    pub stop_timeout: Duration,
    /// Hand the queue to the pool's other senders before stopping
    /// ([`super::drain`]); `None`: the queue stays on disk.
    pub drain: Option<super::drain::DrainOptions>,
}

#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error("cannot write Postfix's base settings: {0}")]
    Base(ApplyError),
    #[error("cannot start `{command}`: {source}")]
    Start {
        command: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

impl SenderError {
    /// The error's category for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            SenderError::Base(_) => "config",
            SenderError::Start { .. } | SenderError::Thread(_) => "process",
            SenderError::Agent(_) => "agent",
        }
    }
}

/// How the sender ended.
#[derive(Debug)]
pub enum Ended {
    /// Asked to stop (SIGTERM); Postfix stopped with it.
    Stopped,
    /// Postfix exited on its own: the container must restart.
    PostfixExited(ExitStatus),
}

fn postfix_command(target: &PostfixTarget, verb: &str) -> Command {
    let mut command = Command::new(target.bin_dir.join("postfix"));
    command.args(["-c", &target.config_dir.display().to_string(), verb]);
    command
}

/// Applies what the config folder holds before Postfix starts, so it starts
/// with its routes. Failures are logged: the agent loop tries again (and
/// checks a `Bind` address, [`super::bind::BindWatch`]).
fn prepare(options: &SenderOptions) {
    let Some(dir) = &options.agent.config_dir else {
        return;
    };
    let snapshot = match read_config_dir(dir) {
        Ok(snapshot) => snapshot,
        Err(e) => {
            tracing::warn!("{e}; Postfix starts without routes until it can be read");
            return;
        }
    };
    match options.postfix.apply(&snapshot) {
        Ok(applied) => tracing::info!(
            version = snapshot.version.as_str(),
            "wrote the sender configuration {:?} before starting Postfix",
            applied.written
        ),
        Err(e) => tracing::error!("cannot apply the sender configuration before start: {e}"),
    }
}

/// Runs until `stop` is set or Postfix exits.
pub fn run(
    options: SenderOptions,
    classifier: Classifier,
    stop: Arc<AtomicBool>,
) -> Result<Ended, SenderError> {
    let target = &options.postfix;
    base::write_base(&target.bin_dir, &target.config_dir, &options.base_settings)
        .map_err(SenderError::Base)?;
    prepare(&options);

    let start = postfix_command(target, "start-fg");
    let mut postfix = spawn(start)?;
    tracing::info!(
        pid = postfix.id(),
        "Postfix runs in the foreground ({}); following {}",
        target.config_dir.display(),
        options.agent.log.display()
    );

    let agent_stop = Arc::new(AtomicBool::new(false));
    let agent = {
        let agent_options = options.agent.clone();
        let agent_stop = Arc::clone(&agent_stop);
        std::thread::Builder::new()
            .name("sender-agent".into())
            .spawn(move || run_agent(agent_options, classifier, agent_stop))
            .map_err(SenderError::Thread)?
    };

    let ended = loop {
        if let Ok(Some(status)) = postfix.try_wait() {
            // A SIGTERM to the whole process group reaches Postfix too: an
            // exit that comes with a stop request is the stop.
            std::thread::sleep(Duration::from_millis(300));
            if stop.load(Ordering::SeqCst) {
                tracing::info!("Postfix stopped ({status})");
                break Ended::Stopped;
            }
            tracing::error!("Postfix exited ({status}); stopping");
            break Ended::PostfixExited(status);
        }
        if agent.is_finished() {
            tracing::error!("the agent loop ended; stopping Postfix");
            stop_postfix(target, &mut postfix, options.stop_timeout);
            break Ended::Stopped;
        }
        if stop.load(Ordering::SeqCst) {
            if let Some(drain) = &options.drain {
                // No configuration or pacing hold may undo the hand-off.
                options.agent.hold_config.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(500));
                match super::drain::drain(target, drain) {
                    Ok(drained) => {
                        *options
                            .agent
                            .drained
                            .lock()
                            .unwrap_or_else(|p| p.into_inner()) = Some(drained.report(&drain.to));
                        // The agent's loop picks it up before its last report.
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    Err(e) => {
                        tracing::error!("cannot drain the queue: {e}; queued mail stays in it")
                    }
                }
            }
            tracing::info!("stopping Postfix; queued mail stays in its queue");
            let status = stop_postfix(target, &mut postfix, options.stop_timeout);
            tracing::info!("Postfix stopped ({status:?})");
            break Ended::Stopped;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // `postfix start-fg` may end while its master still runs (a signal to the
    // script alone): make sure nothing of Postfix outlives the sender.
    if postfix_command(target, "status")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success())
    {
        let _ = postfix_command(target, "stop")
            .stdin(Stdio::null())
            .output();
    }
    // The agent reads the lines Postfix wrote last and sends the last report.
    agent_stop.store(true, Ordering::SeqCst);
    match agent.join() {
        Ok(result) => result?,
        Err(_) => tracing::error!("the agent loop stopped with a panic"),
    }
    Ok(ended)
}

fn spawn(mut command: Command) -> Result<Child, SenderError> {
    let text = format!("{command:?}");
    command
        .stdin(Stdio::null())
        .spawn()
        .map_err(|source| SenderError::Start {
            command: text,
            source,
        })
}

/// `postfix stop` (SIGTERM to the master, which ends its daemons); killed
/// when it has not exited within `timeout`.
fn stop_postfix(
    target: &PostfixTarget,
    child: &mut Child,
    timeout: Duration,
) -> Option<ExitStatus> {
    match postfix_command(target, "stop")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => tracing::warn!(
            "postfix stop: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => tracing::warn!("cannot run postfix stop: {e}"),
    }
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            tracing::warn!("Postfix did not stop within {timeout:?}; killing it");
            let _ = child.kill();
            return child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The default folder of the mounted relay Secrets.
pub fn default_relay_secrets_dir() -> PathBuf {
    PathBuf::from("/etc/mailfleet/relay")
}
