//! `mailfleet simulate` (being written).

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct SimulateArgs {}

pub fn run(_: SimulateArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    Err("mailfleet simulate is not built yet".into())
}
