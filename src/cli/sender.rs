//! `mailfleet sender run`: the entrypoint of the sender image (docs/OPERATING.md,
//! The sender image). It takes every option of `agent run` (the same loop
//! follows, reports and applies) and owns the Postfix it applies to.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::agent::{agent_options, init_logs, watch_signals, ApplyTo, RunArgs};
use crate::agent::apply::PostfixTarget;
use crate::sender::base::{main_cf_settings, parse_setting};
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
}

pub fn run(args: SenderArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match args.command {
        SenderCommand::Run(args) => run_pod(*args),
    }
}

fn run_pod(args: SenderRunArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    init_logs();
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
    let (mut agent, classifier) = agent_options(args.agent)?;
    agent.postfix = Some(postfix.clone());
    let options = SenderOptions {
        agent,
        postfix,
        base_settings,
        stop_timeout: Duration::from_secs(args.postfix_stop_timeout),
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
