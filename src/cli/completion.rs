//! `mailfleet completion SHELL`: the shell completion script, from the same
//! clap definition the parser uses (so it never lags a new flag).

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::Cli;

#[derive(Debug, Args)]
#[command(after_help = "Install, for example:\n  \
    mailfleet completion bash > /etc/bash_completion.d/mailfleet\n  \
    mailfleet completion zsh > \"${fpath[1]}/_mailfleet\"\n  \
    mailfleet completion fish > ~/.config/fish/completions/mailfleet.fish")]
pub struct CompletionArgs {
    /// The shell to write the completion script for.
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn run(args: CompletionArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "mailfleet", &mut script);
    std::io::stdout().lock().write_all(&script)?;
    Ok(ExitCode::SUCCESS)
}
