//! Authenticating to an HTTP proxy: the `Proxy-Authenticate` challenges of a
//! `407`, the choice among them (Negotiate > NTLM > Basic), and each scheme's
//! handshake, one token per leg.
//!
//! NTLM and Negotiate are connection-bound: every leg must go over the same
//! kept-alive connection, which [`crate::http_proxy::connect_with`] ensures.
//! NTLM is NTLMv2 only (`sspi` implements no other). Negotiate is SPNEGO:
//! Kerberos when a KDC for the user's realm is known (`KRB5_CONFIG`'s
//! `[realms]`, `SSPI_KDC_URL`, else DNS), NTLM inside SPNEGO otherwise. The
//! Kerberos client takes the password and asks the KDC itself: it does not
//! read a `kinit` ticket cache, so single sign-on without a password (the
//! logged-on Windows user via SSPI, GSSAPI on Unix) is not done here.

mod base64;
mod basic;
mod challenge;
mod sspi_context;

pub use challenge::{AuthScheme, Challenge, parse_challenges};

pub(crate) use base64::{decode as base64_decode, encode as base64_encode};

use crate::http_proxy::BasicAuth;

/// One scheme's handshake in progress.
pub(crate) enum Handshake {
    /// Basic: one leg, the credentials themselves.
    Basic,
    /// NTLM or Negotiate, run by `sspi`.
    Sspi(sspi_context::SspiClient),
}

impl Handshake {
    /// Starts `scheme` with `credentials` towards the proxy `proxy_host`.
    pub(crate) fn start(
        scheme: AuthScheme,
        credentials: &BasicAuth,
        proxy_host: &str,
    ) -> Result<Self, String> {
        Ok(match scheme {
            AuthScheme::Basic => Self::Basic,
            AuthScheme::Ntlm | AuthScheme::Negotiate => Self::Sspi(sspi_context::SspiClient::new(
                scheme,
                credentials,
                proxy_host,
            )?),
        })
    }

    /// The next `Proxy-Authorization` value: the first one when `input` is
    /// `None`, else the answer to the proxy's token. `Err` says why the
    /// handshake cannot go on (never with the credentials in it).
    pub(crate) async fn step(
        &mut self,
        credentials: &BasicAuth,
        input: Option<Vec<u8>>,
    ) -> Result<String, String> {
        match self {
            Self::Basic => match input {
                None => Ok(basic::authorization(credentials)),
                Some(_) => Err("Basic has a single leg; the proxy sent a token".to_owned()),
            },
            Self::Sspi(client) => client.step(input).await,
        }
    }
}
