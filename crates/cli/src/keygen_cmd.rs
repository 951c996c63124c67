//! `cloudproxy keygen`: fresh key material in the configuration's format.
//!
//! The output is a TOML snippet ready to paste into `proxy.toml` (or, with
//! `--raw`, the bare hex for scripts and secret stores). Bytes come from the
//! operating system's generator (`getrandom`).

use std::process::ExitCode;

use cloudproxy_server::config::Secret;

use crate::serve_cmd::random_hex;

/// Bytes of a fresh app secret: the configuration's minimum
/// (`Secret::MIN_LEN`), as the development node uses.
pub(crate) const APP_SECRET_BYTES: usize = 16;
/// Bytes of a fresh ticket key: a full HMAC-SHA-256 block of key.
pub(crate) const TICKET_KEY_BYTES: usize = 32;

// The loader refuses shorter keys; keep the generator above its minimum.
const _: () = assert!(APP_SECRET_BYTES >= Secret::MIN_LEN && TICKET_KEY_BYTES >= Secret::MIN_LEN);

/// Arguments of `cloudproxy keygen`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    what: What,
}

/// What to generate.
#[derive(Debug, clap::Subcommand)]
enum What {
    /// A fresh app secret (16 random bytes), printed as the `secrets` line
    /// of an `[[apps]]` entry.
    ///
    /// To rotate, add it beside the old secret, move clients over, then
    /// remove the old one.
    Secret {
        /// Print only the hex digits.
        #[arg(long)]
        raw: bool,
    },
    /// A fresh ticket key (32 random bytes), printed as a `[[ticket_keys]]`
    /// block.
    ///
    /// Every node of a fleet must hold the same keys. To rotate, add the new
    /// key after the old one on every node, then move it first (the first
    /// key signs, all verify), then remove the old one.
    TicketKey {
        /// The key id that names this key in tickets; must differ from the
        /// ids of the keys already configured.
        #[arg(long, value_name = "N", default_value_t = 1)]
        key_id: u32,
        /// Print only the hex digits.
        #[arg(long)]
        raw: bool,
    },
}

pub(crate) fn run(args: &Args) -> ExitCode {
    print!("{}", render(&args.what, random_hex));
    ExitCode::SUCCESS
}

/// The text to print, with `random_hex(n)` giving `n` fresh bytes in hex.
fn render(what: &What, random_hex: impl FnOnce(usize) -> String) -> String {
    match *what {
        What::Secret { raw: true } => format!("{}\n", random_hex(APP_SECRET_BYTES)),
        What::Secret { raw: false } => {
            format!("secrets = [\"{}\"]\n", random_hex(APP_SECRET_BYTES))
        }
        What::TicketKey { raw: true, .. } => format!("{}\n", random_hex(TICKET_KEY_BYTES)),
        What::TicketKey { raw: false, key_id } => format!(
            "[[ticket_keys]]\nkey_id = {key_id}\nsecret = \"{}\"\n",
            random_hex(TICKET_KEY_BYTES)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::{What, render};

    #[test]
    fn snippets_have_the_configurations_shape() {
        let fixed = |n: usize| "ab".repeat(n);
        assert_eq!(
            render(&What::Secret { raw: false }, fixed),
            format!("secrets = [\"{}\"]\n", "ab".repeat(16))
        );
        assert_eq!(
            render(
                &What::TicketKey {
                    key_id: 7,
                    raw: false
                },
                fixed
            ),
            format!(
                "[[ticket_keys]]\nkey_id = 7\nsecret = \"{}\"\n",
                "ab".repeat(32)
            )
        );
        assert_eq!(
            render(
                &What::TicketKey {
                    key_id: 7,
                    raw: true
                },
                fixed
            ),
            format!("{}\n", "ab".repeat(32))
        );
    }
}
