//! The `envol` command. Parsing and printing live in `cli/`; everything else
//! is in the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = envol::cli::Cli::parse();
    envol::cli::init_logging();
    match envol::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("envol: {e}");
            ExitCode::FAILURE
        }
    }
}
