//! `mailfleet probe` (being written).

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct ProbeArgs {}

pub fn run(_: ProbeArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    Err("mailfleet probe is not built yet".into())
}
