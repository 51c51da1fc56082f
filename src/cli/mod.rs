//! The `mailfleet` command line: one binary, one subcommand per job.

mod classify;
mod common;
mod crd;
mod output;
mod routes;

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
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd(args) => crd::run(args),
        Command::Routes(args) => routes::run(args),
        Command::Classify(args) => classify::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}
