//! The `meshwarden` binary: control plane (`serve`) and CLI.

use clap::Parser;
use meshwarden_cp::cli::{self, Cli};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match cli::run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        // `meshwarden get | head`: the reader has all it wanted; exit as a shell expects.
        Err(e) if cli::output::is_broken_pipe(&e) => ExitCode::from(cli::output::BROKEN_PIPE_EXIT),
        Err(e) => {
            cli::output::eprintln(&cli::output::terminal_safe(&format!("error: {e:#}")));
            ExitCode::FAILURE
        }
    }
}
