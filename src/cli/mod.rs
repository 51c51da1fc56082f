//! The `mailfleet` command line: one binary, one subcommand per job.

mod agent;
mod classify;
mod common;
mod complaints;
mod completion;
mod crd;
mod logs;
mod operator;
mod output;
mod probe;
mod routes;
mod sender;
mod simulate;
mod standalone;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use output::Format;

/// Keeps outbound mail flowing when a mailbox provider blocks one of your source IPs.
#[derive(Debug, Parser)]
#[command(name = "mailfleet", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print every CRD as YAML (byte-identical to the files in crds/).
    Crd(crd::CrdArgs),
    /// Compile the effective routes from manifests (status included), offline.
    Routes(routes::RoutesArgs),
    /// Classify SMTP replies or Postfix log lines, one verdict per line.
    Classify(classify::ClassifyArgs),
    /// Count abuse feedback reports (ARF) per sending IP and provider.
    Complaints(complaints::ComplaintsArgs),
    /// Run a deterministic fleet simulation (seed-2021-11 replays the incident).
    Simulate(simulate::SimulateArgs),
    /// One round of reputation probes (DNS block lists).
    Probe(probe::ProbeArgs),
    /// The sidecar in each sender pod, and offline replay of delivery logs.
    Agent(agent::AgentArgs),
    /// The sender image's process: Postfix, its configuration, and the agent, in one container.
    Sender(sender::SenderArgs),
    /// The in-cluster controller: SenderPool and DomainRoute controllers, the feedback endpoint.
    Operator(operator::OperatorArgs),
    /// The engine without Kubernetes: manifests from a folder, outputs to files, feedback over HTTP.
    Standalone(standalone::StandaloneArgs),
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(completion::CompletionArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.prints_and_exits() {
        quiet_on_closed_pipe();
    }
    let result = match cli.command {
        Command::Crd(args) => crd::run(args),
        Command::Routes(args) => routes::run(args),
        Command::Classify(args) => classify::run(args),
        Command::Complaints(args) => complaints::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Agent(args) => agent::run(args),
        Command::Sender(args) => sender::run(args),
        Command::Operator(args) => operator::run(args),
        Command::Standalone(args) => standalone::run(args),
        Command::Completion(args) => completion::run(args),
    };
    match result {
        Ok(code) => code,
        // A reader that stops early (`| head`) is not an error.
        Err(err)
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}

impl Command {
    /// Commands that print a result and end, read through pipes (`| head`);
    /// the long-running ones keep SIGPIPE ignored, so a closed socket is an
    /// error they handle, never their death.
    fn prints_and_exits(&self) -> bool {
        match self {
            Command::Agent(args) => matches!(args.command, agent::AgentCommand::Replay(_)),
            Command::Sender(_) | Command::Operator(_) | Command::Standalone(_) => false,
            Command::Crd(_)
            | Command::Routes(_)
            | Command::Classify(_)
            | Command::Complaints(_)
            | Command::Simulate(_)
            | Command::Probe(_)
            | Command::Completion(_) => true,
        }
    }
}

/// Ends the process quietly when the reader of its output goes away, as `cat`
/// and `grep` do. Rust ignores SIGPIPE, which turns every later print into a
/// "Broken pipe" error or a panic deep inside a formatter.
fn quiet_on_closed_pipe() {
    // SAFETY: setting a signal's disposition to the default is async-signal-safe
    // and happens before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
