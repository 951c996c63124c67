//! `cloudproxy`: the cloud proxy's command-line tool.
//!
//! Each subcommand lives in its own module with an `Args` struct (clap derive)
//! and a `run` function returning the process exit code; `main` only
//! dispatches. Later subcommands (`serve`, `edge`, `demo`, `probe`) slot in
//! the same way.

mod params_cmd;
mod runtime;
mod serve_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The cloud proxy's command-line tool.
#[derive(Debug, Parser)]
#[command(name = "cloudproxy", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Parse a setParameters string and print its typed interpretation.
    ///
    /// Exit status: 0 when it parses, 2 when it does not (the error, with
    /// an excerpt and a caret under the fault, goes to stderr), 1 when
    /// standard input cannot be read.
    Params(params_cmd::Args),
    /// Run the proxy service: allocation service, TCP relay and UDP relay.
    ///
    /// With no --config, starts a loopback development node and prints its
    /// addresses and a fresh app secret. Stops on SIGINT or SIGTERM after
    /// letting sessions drain. Exit status 2 when the configuration is
    /// invalid or a port cannot be bound.
    Serve(serve_cmd::Args),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Params(args) => params_cmd::run(&args),
        Command::Serve(args) => serve_cmd::run(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
