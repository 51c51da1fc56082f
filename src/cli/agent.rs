//! `mailfleet agent` (being written).

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct AgentArgs {}

pub fn run(_: AgentArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    Err("mailfleet agent is not built yet".into())
}
