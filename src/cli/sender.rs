//! `mailfleet sender run`: the entrypoint of the sender image (docs/OPERATING.md,
//! The sender image). It takes every option of `agent run` (the same loop
//! follows, reports and applies) and owns the Postfix it applies to.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::agent::{agent_options, watch_signals, ApplyTo, RunArgs};
use super::logs::{LogArgs, LogFormat};
use crate::agent::apply::PostfixTarget;
use crate::sender::base::{main_cf_settings, parse_setting};
use crate::sender::drain::DrainOptions;
use crate::sender::run::{default_relay_secrets_dir, run as run_sender, Ended, SenderOptions};

#[derive(Debug, Args)]
pub struct SenderArgs {
    #[command(subcommand)]
    pub command: SenderCommand,
}

#[derive(Debug, Subcommand)]
pub enum SenderCommand {
    /// Write Postfix's configuration from the mounted sender ConfigMap, run
    /// `postfix start-fg`, follow its log, report, apply new configurations,
    /// stop cleanly on SIGTERM and exit when Postfix dies.
    Run(Box<SenderRunArgs>),
    /// Hand a running Postfix's queue to another sender (what `sender run
    /// --drain-to` does on SIGTERM): stop intake, route everything to
    /// HOST:PORT, flush until the queue is empty or the timeout passes.
    /// Exits 1 when mail is left.
    Drain(DrainArgs),
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// Where the queue goes (`host:port`).
    #[arg(long, value_name = "HOST:PORT")]
    pub to: String,

    #[arg(long, value_name = "SECONDS", default_value_t = 45)]
    pub timeout: u64,

    #[arg(long, value_name = "DIR", default_value = "/etc/postfix")]
    pub postfix_config_dir: PathBuf,

    #[arg(long, value_name = "DIR", default_value = "/usr/sbin")]
    pub postfix_bin_dir: PathBuf,

    #[command(flatten)]
    pub logs: LogArgs,
}

#[derive(Debug, Args)]
pub struct SenderRunArgs {
    #[command(flatten)]
    pub agent: RunArgs,

    /// Where the relay Secrets are mounted, one folder per Secret holding
    /// `username` and `password`.
    #[arg(long, value_name = "DIR", default_value_os_t = default_relay_secrets_dir())]
    pub relay_secrets_dir: PathBuf,

    /// An extra main.cf setting written before Postfix starts (repeatable),
    /// e.g. `--postconf queue_directory=/var/spool/postfix`.
    #[arg(long = "postconf", value_name = "KEY=VALUE", value_parser = parse_setting)]
    pub postconf: Vec<(String, String)>,

    /// Seconds Postfix may take to stop on SIGTERM before it is killed.
    #[arg(long, value_name = "SECONDS", default_value_t = 20)]
    pub postfix_stop_timeout: u64,

    /// On SIGTERM, hand every queued message to this `host:port` (the pool's
    /// intake Service, e.g. mf-pool-bulk.mail.svc:25) before Postfix stops:
    /// the queue is on an emptyDir and leaves with the pod.
    #[arg(long, value_name = "HOST:PORT")]
    pub drain_to: Option<String>,

    /// Seconds the drain may take; what is still queued then is said in the
    /// log and the termination message. Keep it inside the pod's
    /// terminationGracePeriodSeconds with room for the Postfix stop.
    #[arg(long, value_name = "SECONDS", default_value_t = 45)]
    pub drain_timeout: u64,

    /// Where the drain's outcome is written for `kubectl describe pod`.
    #[arg(long, value_name = "FILE", default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,
}

pub fn run(args: SenderArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match args.command {
        SenderCommand::Run(args) => run_pod(*args),
        SenderCommand::Drain(args) => drain(args),
    }
}

fn drain(args: DrainArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    args.logs.init(LogFormat::Text)?;
    let target = PostfixTarget {
        config_dir: args.postfix_config_dir,
        bin_dir: args.postfix_bin_dir,
        relay_secrets_dir: None,
    };
    let drained = crate::sender::drain::drain(
        &target,
        &DrainOptions {
            to: args.to,
            timeout: Duration::from_secs(args.timeout),
            flush_every: Duration::from_secs(5),
            termination_log: None,
        },
    )?;
    println!(
        "{} queued at the start, {} left after {:.1}s",
        drained.queued_at_start,
        drained.left,
        drained.took.as_secs_f64()
    );
    Ok(if drained.left == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn run_pod(args: SenderRunArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    args.agent.logs.init(LogFormat::Text)?;
    if args.agent.apply != ApplyTo::Postfix {
        return Err(
            "sender run owns Postfix: --apply none is for `agent run` beside another MTA".into(),
        );
    }
    let postfix = PostfixTarget {
        config_dir: args.agent.postfix_config_dir.clone(),
        bin_dir: args.agent.postfix_bin_dir.clone(),
        relay_secrets_dir: Some(args.relay_secrets_dir.clone()),
    };
    let base_settings = main_cf_settings(&args.agent.log, &args.postconf);
    if let Some(to) = &args.drain_to {
        crate::sender::drain::drain_settings(to)?;
    }
    let (drain_to, drain_timeout, termination_log) = (
        args.drain_to.clone(),
        args.drain_timeout,
        args.termination_log.clone(),
    );
    let (mut agent, classifier) = agent_options(args.agent)?;
    agent.postfix = Some(postfix.clone());
    agent.bind_check = Some(crate::sender::bind::CHECK_EVERY);
    let options = SenderOptions {
        agent,
        postfix,
        base_settings,
        stop_timeout: Duration::from_secs(args.postfix_stop_timeout),
        drain: drain_to.map(|to| DrainOptions {
            to,
            timeout: Duration::from_secs(drain_timeout),
            flush_every: Duration::from_secs(5),
            termination_log: Some(termination_log),
        }),
    };
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(Arc::clone(&stop))?;
    match run_sender(options, classifier, stop) {
        Ok(Ended::Stopped) => Ok(ExitCode::SUCCESS),
        Ok(Ended::PostfixExited(status)) => {
            eprintln!(
                "error: Postfix exited ({status}); the sender stops so the container is restarted"
            );
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            tracing::error!(category = e.category(), "{e}");
            Err(e.into())
        }
    }
}
