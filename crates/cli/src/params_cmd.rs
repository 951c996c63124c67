//! `cloudproxy params '<string>'`: the typed interpretation of a parameter string.

use std::fmt::Write as _;
use std::io::Read as _;
use std::process::ExitCode;

use cloudproxy_params::{DEFAULT_PROXY_DOMAIN, MAX_INPUT_LEN, Params, ProxyKind, ProxyServer};

/// Exit status when the parameter string does not parse.
const EXIT_INVALID: u8 = 2;
/// Exit status when standard input cannot be read.
const EXIT_IO: u8 = 1;

/// Arguments of `cloudproxy params`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The parameter string, e.g. '{"rtc.enable_proxy":true}', or `-` to read
    /// it from standard input.
    #[arg(value_name = "STRING")]
    input: String,
}

pub(crate) fn run(args: &Args) -> ExitCode {
    let bytes = if args.input == "-" {
        // One byte more than the limit is enough to report "too long".
        let mut buf = Vec::new();
        let limit = u64::try_from(MAX_INPUT_LEN + 1).unwrap_or(u64::MAX);
        if let Err(e) = std::io::stdin().take(limit).read_to_end(&mut buf) {
            eprintln!("error: cannot read the parameter string from standard input: {e}");
            return ExitCode::from(EXIT_IO);
        }
        buf
    } else {
        args.input.clone().into_bytes()
    };
    match cloudproxy_params::parse_bytes(&bytes) {
        Ok(params) => {
            print!("{}", render(&params));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}

/// The report printed for parsed parameters.
pub(crate) fn render(params: &Params<'_>) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_report(&mut out, params);
    out
}

fn write_report(out: &mut String, params: &Params<'_>) -> std::fmt::Result {
    match params.enable_proxy() {
        Some(true) => writeln!(out, "proxy enabled: yes (rtc.enable_proxy = true)")?,
        Some(false) => writeln!(out, "proxy enabled: no (rtc.enable_proxy = false)")?,
        None => writeln!(out, "proxy enabled: not set")?,
    }
    match params.proxy_server() {
        Some(server) => write_server(out, server)?,
        None => writeln!(
            out,
            "proxy server:  not set (an enabled proxy uses domain {DEFAULT_PROXY_DOMAIN}, default ports)"
        )?,
    }
    let others: Vec<_> = params.others().collect();
    if others.is_empty() {
        writeln!(out, "other keys:    none")?;
    } else {
        writeln!(out, "other keys ({}):", others.len())?;
        for (key, value) in others {
            writeln!(out, "  {key} = {value}")?;
        }
    }
    Ok(())
}

fn write_server(out: &mut String, server: &ProxyServer) -> std::fmt::Result {
    let hosts = match server.kind() {
        ProxyKind::Domain(host) => {
            writeln!(out, "proxy server:  domain name (type 1)")?;
            host.clone()
        }
        ProxyKind::IpList(ips) => {
            writeln!(out, "proxy server:  IP address list (type 2)")?;
            ips.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    writeln!(out, "  hosts:       {hosts}")?;
    if server.uses_default_ports() {
        let ports: Vec<String> = server.ports().iter().map(ToString::to_string).collect();
        writeln!(out, "  port:        default ports ({})", ports.join(", "))
    } else {
        writeln!(out, "  port:        {}", server.port())
    }
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn report_for_the_guide_default() {
        let p = cloudproxy_params::parse(r#"{"rtc.proxy_server":[1, "ap-proxy.agora.io", 0]}"#)
            .unwrap();
        assert_eq!(
            render(&p),
            "proxy enabled: not set\n\
             proxy server:  domain name (type 1)\n  \
             hosts:       ap-proxy.agora.io\n  \
             port:        default ports (1080, 8000, 25000, 9700)\n\
             other keys:    none\n"
        );
    }

    #[test]
    fn report_with_other_keys_and_explicit_port() {
        let p = cloudproxy_params::parse(
            r#"{"a":[1,"x"],"rtc.enable_proxy":false,"rtc.proxy_server":[2,["::1"],443],"b":null}"#,
        )
        .unwrap();
        assert_eq!(
            render(&p),
            "proxy enabled: no (rtc.enable_proxy = false)\n\
             proxy server:  IP address list (type 2)\n  \
             hosts:       ::1\n  \
             port:        443\n\
             other keys (2):\n  \
             a = [1,\"x\"]\n  \
             b = null\n"
        );
    }
}
