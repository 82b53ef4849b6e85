//! The `switchyard` binary: the broker (`serve`, also what runs with no subcommand) and the
//! command-line client (`request`, `reply`, `listen`, `broadcast`, `peers`, `ping`, `bench`,
//! `completions`). Everything but parsing and dispatch is in `cli/`.

use clap::Parser;
use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    cli::Cli::parse().run().into()
}
