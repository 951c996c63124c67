//! `cloudproxy`: the cloud proxy's command-line tool.
//!
//! Each subcommand lives in its own module with an `Args` struct (clap derive)
//! and a `run` function returning the process exit code; `main` only
//! dispatches.

mod call;
mod cert_cmd;
mod demo_cmd;
mod edge_cmd;
mod forward_cmd;
mod keygen_cmd;
mod logging;
mod params_cmd;
mod probe_cmd;
mod probe_tls;
mod runtime;
mod serve_cmd;
mod serve_reload;
mod server_arg;

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
    /// invalid or a port cannot be bound. With --check, only validates the
    /// configuration (file and flags) and exits 0 or 2, binding nothing.
    Serve(serve_cmd::Args),
    /// Carry local TCP connections through a proxy to one destination.
    ///
    /// Listens on --listen; every connection accepted there is relayed by
    /// the proxy to --to, so standard tools (nc, socat, curl) can use the
    /// relay unchanged. Runs until SIGINT or SIGTERM.
    Forward(forward_cmd::Args),
    /// Run the reference media edge: channels, reliable messages and media.
    ///
    /// The stand-in for the media network that the demo, the end-to-end tests
    /// and the benchmarks reach through a proxy. Stops on SIGINT or SIGTERM.
    Edge(edge_cmd::Args),
    /// Check which of the proxy's whitelisted ports get through this network
    /// (the guide's "test if the call works").
    ///
    /// Checks the allocation ports over TCP and UDP, the TCP relay and the UDP
    /// relays the proxy names, then prints a table, a verdict and the firewall
    /// rules still missing (--json for machines). Exit status 0 when a call
    /// can work, 1 when it cannot.
    Probe(probe_cmd::Args),
    /// A call through the cloud proxy, measured: the first thing to run.
    ///
    /// With no flags, starts a reference media edge and a proxy node in this
    /// process on loopback; two engines enable the proxy with the guide's
    /// setParameters strings, join one channel and exchange reliable messages
    /// and media, then a summary is printed (connect time, path, round trips,
    /// delivery, media loss). --proxy/--edge/--app-id/--credential use a
    /// running setup instead. Exit status 0 when the call worked.
    Demo(demo_cmd::Args),
    /// Print a fresh app secret or ticket key in the configuration's format.
    ///
    /// `keygen secret` prints a `secrets = ["…"]` line for an `[[apps]]`
    /// entry; `keygen ticket-key [--key-id N]` prints a `[[ticket_keys]]`
    /// block; --raw prints only the hex. Bytes come from the operating
    /// system's random generator.
    Keygen(keygen_cmd::Args),
    /// Write a self-signed certificate and key for the TLS port.
    ///
    /// `cert --name proxy.example.com --name 203.0.113.7 --cert-out
    /// cert.pem --key-out key.pem` writes both files (the key with mode
    /// 0600) and prints `sha256 fingerprint: AB:CD:…`, the value clients
    /// pin with `rtc.proxy_tls_pin`. Refuses to replace existing files
    /// unless --force. Exit status 0, or 2 with the error on stderr.
    Cert(cert_cmd::Args),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Params(args) => params_cmd::run(&args),
        Command::Serve(args) => serve_cmd::run(args),
        Command::Forward(args) => forward_cmd::run(args),
        Command::Edge(args) => edge_cmd::run(args),
        Command::Probe(args) => probe_cmd::run(args),
        Command::Demo(args) => demo_cmd::run_cmd(args),
        Command::Keygen(args) => keygen_cmd::run(&args),
        Command::Cert(args) => cert_cmd::run(&args),
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
