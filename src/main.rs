use std::process::ExitCode;

use clap::Parser;

use hostchan::cli::Cli;

fn main() -> ExitCode {
    match Cli::try_parse() {
        Ok(cli) => hostchan::commands::main(cli),
        Err(err) => hostchan::commands::usage_error(err),
    }
}
