//! `cloudproxy cert`: a self-signed certificate and key for the TLS port of
//! a private deployment, whose clients pin the printed fingerprint
//! (`rtc.proxy_tls_pin`).

use std::path::PathBuf;
use std::process::ExitCode;

use cloudproxy_server::tls::SelfSigned;

/// Exit status when the certificate cannot be made or written.
const EXIT_FAILED: u8 = 2;

/// Arguments of `cloudproxy cert`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// A DNS name or IP address the certificate is valid for; repeat for
    /// several.
    #[arg(long = "name", value_name = "DNS-OR-IP", required = true)]
    names: Vec<String>,
    /// Where to write the certificate (PEM): the TLS port's `tls.cert`.
    #[arg(long, value_name = "PEM")]
    cert_out: PathBuf,
    /// Where to write the private key (PEM, PKCS#8; mode 0600 on Unix):
    /// the TLS port's `tls.key`.
    #[arg(long, value_name = "PEM")]
    key_out: PathBuf,
    /// Replace the files if they exist.
    #[arg(long)]
    force: bool,
}

pub(crate) fn run(args: &Args) -> ExitCode {
    let made = SelfSigned::generate(&args.names).and_then(|made| {
        made.write(&args.cert_out, &args.key_out, args.force)
            .map(|()| made)
    });
    match made {
        Ok(made) => {
            println!(
                "wrote the certificate to {} and its key to {} (valid for {})",
                args.cert_out.display(),
                args.key_out.display(),
                args.names.join(", ")
            );
            println!("sha256 fingerprint: {}", made.fingerprint());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}
