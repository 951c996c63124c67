//! `cloudproxy params '<string>'`: the typed interpretation of a parameter string.

use std::fmt::Write as _;
use std::io::Read as _;
use std::process::ExitCode;

use cloudproxy_params::{
    DEFAULT_PROXY_DOMAIN, MAX_INPUT_LEN, ParamError, Params, ProxyKind, ProxyServer,
};
use serde::Serialize;

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
    /// Print the result as JSON on standard output (also when the string
    /// does not parse), for scripts.
    #[arg(long)]
    json: bool,
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
    let parsed = cloudproxy_params::parse_bytes(&bytes);
    if args.json {
        let report = match &parsed {
            Ok(params) => JsonReport::of(params),
            Err(e) => JsonReport::failed(e),
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("the report serializes")
        );
    }
    match parsed {
        Ok(params) => {
            if !args.json {
                for warning in params.warnings() {
                    eprintln!("warning: {warning}");
                }
                print!("{}", render(&params));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if !args.json {
                eprintln!("error: {e}");
            }
            ExitCode::from(EXIT_INVALID)
        }
    }
}

/// What `params --json` prints: the interpretation, or the error with its
/// position.
#[derive(Debug, Serialize)]
struct JsonReport {
    ok: bool,
    /// The error's message (with its excerpt), when the string does not parse.
    error: Option<String>,
    /// The error's kind, e.g. `Syntax` or `SourceCodeForm`.
    error_kind: Option<String>,
    /// Where the error is: line, column (1-based) and byte offset.
    error_position: Option<JsonPosition>,
    /// `rtc.enable_proxy`, when set.
    enable_proxy: Option<bool>,
    /// `rtc.proxy_server`, when set.
    proxy_server: Option<JsonServer>,
    /// Every other key with its value.
    other_keys: serde_json::Map<String, serde_json::Value>,
    /// Accepted but probably mistaken, e.g. a misspelled key.
    warnings: Vec<String>,
    /// The parameters as canonical JSON.
    canonical: Option<String>,
}

#[derive(Debug, Serialize)]
struct JsonPosition {
    line: usize,
    column: usize,
    offset: usize,
}

#[derive(Debug, Serialize)]
struct JsonServer {
    /// 1 (domain name) or 2 (IP address list).
    proxy_type: u8,
    hosts: Vec<String>,
    /// As given; 0 means the default ports.
    port: u16,
    /// The ports that are tried.
    ports: Vec<u16>,
}

impl JsonReport {
    fn of(params: &Params<'_>) -> Self {
        let proxy_server = params.proxy_server().map(|server| {
            let (proxy_type, hosts) = match server.kind() {
                ProxyKind::Domain(host) => (1, vec![host.clone()]),
                ProxyKind::IpList(ips) => (2, ips.iter().map(ToString::to_string).collect()),
            };
            JsonServer {
                proxy_type,
                hosts,
                port: server.port(),
                ports: server.ports().to_vec(),
            }
        });
        let other_keys = params
            .others()
            .map(|(key, value)| {
                // A parsed value is JSON; re-reading its canonical form
                // cannot fail.
                let value =
                    serde_json::from_str(&value.to_string()).unwrap_or(serde_json::Value::Null);
                (key.to_owned(), value)
            })
            .collect();
        Self {
            ok: true,
            error: None,
            error_kind: None,
            error_position: None,
            enable_proxy: params.enable_proxy(),
            proxy_server,
            other_keys,
            warnings: params.warnings().iter().map(ToString::to_string).collect(),
            canonical: Some(params.to_json()),
        }
    }

    fn failed(error: &ParamError) -> Self {
        Self {
            ok: false,
            error: Some(error.to_string()),
            error_kind: Some(format!("{:?}", error.kind())),
            error_position: error.location().map(|at| {
                let p = at.position();
                JsonPosition {
                    line: p.line,
                    column: p.column,
                    offset: p.offset,
                }
            }),
            enable_proxy: None,
            proxy_server: None,
            other_keys: serde_json::Map::new(),
            warnings: Vec::new(),
            canonical: None,
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
