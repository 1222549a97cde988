//! The `envol` command. Parsing and printing live in `cli/`; everything else
//! is in the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let (cli, matches) = envol::cli::parse();
    envol::cli::init_logging();
    match envol::cli::run(cli, Some(&matches)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("envol: {e}");
            ExitCode::FAILURE
        }
    }
}
