use std::process::ExitCode;

fn main() -> ExitCode {
    mailfleet::cli::main()
}
