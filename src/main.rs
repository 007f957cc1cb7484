//! The `hexmirror` binary: parse the command line and run it (logging
//! starts in `cli::run`, once the configuration says which format).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    hexmirror::heap::bound_growth();
    let cli = hexmirror::cli::Cli::parse();
    hexmirror::cli::run(cli)
}
