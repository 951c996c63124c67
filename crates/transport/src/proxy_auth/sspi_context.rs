//! NTLM and Negotiate through `sspi` (pure Rust): one security context per
//! handshake, stepped once per leg.
//!
//! Each step runs on tokio's blocking pool: Kerberos talks to the KDC
//! from inside the step (blocking sockets, each bounded by
//! [`KDC_TIMEOUT`]), and a step must not stall the runtime. `sspi` has been
//! seen to panic on malformed challenges (squid's `ntlm_fake_auth` sends one
//! with a garbage target-name offset and no target info): every step runs
//! under `catch_unwind`, and a panic ends the handshake with an error.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use sspi::network_client::NetworkClient;
use sspi::ntlm::NtlmConfig;
use sspi::{
    AuthIdentity, BufferType, ClientRequestFlags, CredentialUse, Credentials, DataRepresentation,
    Negotiate, NegotiateConfig, NetworkProtocol, NetworkRequest, Ntlm, SecurityBuffer, Sspi,
    SspiImpl, Username,
};

use super::AuthScheme;
use crate::http_proxy::BasicAuth;

/// How long one KDC exchange (connect, send, answer) may take.
pub(crate) const KDC_TIMEOUT: Duration = Duration::from_secs(2);

/// An NTLM or Negotiate client context.
pub(crate) struct SspiClient {
    scheme: AuthScheme,
    /// `HTTP/<proxy host>`: the Kerberos service principal.
    target: String,
    /// `None` while a step runs on the blocking pool, or after a panic.
    context: Option<Box<Context>>,
}

// Always held in a `Box` (see `SspiClient::context`).
#[expect(clippy::large_enum_variant, reason = "the context is boxed as a whole")]
enum Context {
    Ntlm {
        ntlm: Ntlm,
        handle: <Ntlm as SspiImpl>::CredentialsHandle,
    },
    Negotiate {
        negotiate: Negotiate,
        handle: <Negotiate as SspiImpl>::CredentialsHandle,
    },
}

/// The workstation name NTLM sends (informational only).
fn workstation() -> String {
    std::env::var("COMPUTERNAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "cloudproxy".to_owned())
}

impl SspiClient {
    /// A context for `scheme` (NTLM or Negotiate) with `credentials`
    /// (`DOMAIN\user`, `user@domain` or `user`).
    pub(crate) fn new(
        scheme: AuthScheme,
        credentials: &BasicAuth,
        proxy_host: &str,
    ) -> Result<Self, String> {
        let username = Username::parse(&credentials.user)
            .map_err(|e| format!("the user name is not DOMAIN\\user, user@domain or user: {e}"))?;
        let identity = AuthIdentity {
            username,
            password: credentials.password.clone().into(),
        };
        let failed = |e: sspi::Error| format!("{scheme} could not start: {e}");
        let context = match scheme {
            AuthScheme::Ntlm => {
                let mut ntlm = Ntlm::with_config(NtlmConfig::new(workstation()));
                let handle = ntlm
                    .acquire_credentials_handle()
                    .with_credential_use(CredentialUse::Outbound)
                    .with_auth_data(&identity)
                    .execute(&mut ntlm)
                    .map_err(failed)?
                    .credentials_handle;
                Context::Ntlm { ntlm, handle }
            }
            AuthScheme::Negotiate => {
                // Starts as NTLM; sspi switches to Kerberos when it finds a
                // KDC for the user's realm.
                let config = NegotiateConfig::new(
                    Box::new(NtlmConfig::new(workstation())),
                    Some("kerberos,ntlm".to_owned()),
                    workstation(),
                );
                let mut negotiate = Negotiate::new_client(config).map_err(failed)?;
                let handle = negotiate
                    .acquire_credentials_handle()
                    .with_credential_use(CredentialUse::Outbound)
                    .with_auth_data(&Credentials::from(identity))
                    .execute(&mut negotiate)
                    .map_err(failed)?
                    .credentials_handle;
                Context::Negotiate { negotiate, handle }
            }
            AuthScheme::Basic => return Err("Basic is not run by sspi".to_owned()),
        };
        Ok(Self {
            scheme,
            target: format!("HTTP/{}", proxy_host.trim_matches(['[', ']'])),
            context: Some(Box::new(context)),
        })
    }

    /// The next `Proxy-Authorization` value (`<scheme> <base64 token>`).
    pub(crate) async fn step(&mut self, input: Option<Vec<u8>>) -> Result<String, String> {
        let scheme = self.scheme;
        let Some(mut context) = self.context.take() else {
            return Err(format!("the {scheme} handshake already failed"));
        };
        let target = self.target.clone();
        let (context, outcome) = tokio::task::spawn_blocking(move || {
            let outcome = catch_unwind(AssertUnwindSafe(|| context.step(&target, input)));
            (context, outcome)
        })
        .await
        .map_err(|e| format!("the {scheme} step did not finish: {e}"))?;
        match outcome {
            Ok(Ok(token)) => {
                self.context = Some(context);
                Ok(format!("{scheme} {}", super::base64_encode(&token)))
            }
            Ok(Err(e)) => Err(format!("{scheme}: {e}")),
            // The context may be half-updated: it is dropped, not reused.
            Err(_) => Err(format!(
                "{scheme}: the proxy's challenge could not be processed (the authentication library gave up on it)"
            )),
        }
    }
}

impl Context {
    fn step(&mut self, target: &str, input: Option<Vec<u8>>) -> sspi::Result<Vec<u8>> {
        match self {
            Self::Ntlm { ntlm, handle } => init(ntlm, handle, target, input),
            Self::Negotiate { negotiate, handle } => init(negotiate, handle, target, input),
        }
    }
}

/// One `InitializeSecurityContext` call: `input` is the proxy's token, the
/// result the token to send.
fn init<P: Sspi + SspiImpl>(
    context: &mut P,
    handle: &mut P::CredentialsHandle,
    target: &str,
    input: Option<Vec<u8>>,
) -> sspi::Result<Vec<u8>> {
    let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
    let mut input = input.map(|token| vec![SecurityBuffer::new(token, BufferType::Token)]);
    let mut builder = context
        .initialize_security_context()
        .with_credentials_handle(handle)
        .with_context_requirements(ClientRequestFlags::empty())
        .with_target_data_representation(DataRepresentation::Native)
        .with_target_name(target)
        .with_output(&mut output);
    if let Some(input) = input.as_mut() {
        builder = builder.with_input(input);
    }
    context
        .initialize_security_context_impl(&mut builder)?
        .resolve_with_client(&KdcClient)?;
    Ok(std::mem::take(&mut output[0].buffer))
}

/// The KDC exchange Kerberos asks for: TCP (4-byte length prefix, both
/// ways) or UDP, blocking, each bounded by [`KDC_TIMEOUT`]. HTTP(S) KDC
/// proxies (KKDCP) are not supported.
struct KdcClient;

impl NetworkClient for KdcClient {
    fn send(&self, request: &NetworkRequest) -> sspi::Result<Vec<u8>> {
        let unreachable =
            |what: String| sspi::Error::new(sspi::ErrorKind::NoAuthenticatingAuthority, what);
        let host = request.url.host_str().unwrap_or_default().to_owned();
        let port = request.url.port().unwrap_or(88);
        let addr = (host.trim_matches(['[', ']']), port)
            .to_socket_addrs()
            .map_err(|e| unreachable(format!("the KDC {host}:{port} does not resolve: {e}")))?
            .next()
            .ok_or_else(|| unreachable(format!("the KDC {host}:{port} has no address")))?;
        let io = |e: std::io::Error| unreachable(format!("talking to the KDC at {addr}: {e}"));
        match request.protocol {
            NetworkProtocol::Tcp => {
                let mut tcp = TcpStream::connect_timeout(&addr, KDC_TIMEOUT).map_err(io)?;
                tcp.set_read_timeout(Some(KDC_TIMEOUT)).map_err(io)?;
                tcp.set_write_timeout(Some(KDC_TIMEOUT)).map_err(io)?;
                // `data` already carries its length prefix.
                tcp.write_all(&request.data).map_err(io)?;
                let mut len = [0u8; 4];
                tcp.read_exact(&mut len).map_err(io)?;
                let n = u32::from_be_bytes(len) as usize;
                if n > 1 << 20 {
                    return Err(unreachable(format!(
                        "the KDC at {addr} announced a {n}-byte answer (at most 1 MiB expected)"
                    )));
                }
                let mut out = vec![0u8; 4 + n];
                out[..4].copy_from_slice(&len);
                tcp.read_exact(&mut out[4..]).map_err(io)?;
                Ok(out)
            }
            NetworkProtocol::Udp => {
                let any = if addr.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                let udp = UdpSocket::bind(any).map_err(io)?;
                udp.set_read_timeout(Some(KDC_TIMEOUT)).map_err(io)?;
                udp.send_to(&request.data, addr).map_err(io)?;
                let mut buf = vec![0u8; 65_536];
                let n = udp.recv(&mut buf).map_err(io)?;
                let mut out = Vec::with_capacity(4 + n);
                out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
                out.extend_from_slice(&buf[..n]);
                Ok(out)
            }
            other => Err(unreachable(format!(
                "the KDC {host}:{port} is reached by {other:?}; only tcp:// and udp:// KDCs are supported"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> BasicAuth {
        BasicAuth {
            user: "CORP\\alice".into(),
            password: "Zq9-secret".into(),
        }
    }

    /// A CHALLENGE_MESSAGE header with `name` (len, offset) and `info`
    /// (len, offset) fields and `flags`, padded to `total` bytes.
    fn challenge(name: (u16, u32), info: (u16, u32), flags: u32, total: usize) -> Vec<u8> {
        let mut m = b"NTLMSSP\0".to_vec();
        m.extend_from_slice(&2u32.to_le_bytes());
        m.extend_from_slice(&name.0.to_le_bytes());
        m.extend_from_slice(&name.0.to_le_bytes());
        m.extend_from_slice(&name.1.to_le_bytes());
        m.extend_from_slice(&flags.to_le_bytes());
        m.extend_from_slice(&[7; 8]);
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&info.0.to_le_bytes());
        m.extend_from_slice(&info.0.to_le_bytes());
        m.extend_from_slice(&info.1.to_le_bytes());
        m.resize(total, 0);
        m
    }

    #[tokio::test]
    async fn malformed_ntlm_challenges_end_the_handshake_with_an_error() {
        const UNICODE_NTLM_DOMAIN: u32 = 0x0001_0201;
        const WITH_TARGET_INFO: u32 = UNICODE_NTLM_DOMAIN | 0x0080_0000;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            // squid's ntlm_fake_auth: a garbage name offset, no target info.
            (
                "fake_auth",
                challenge((12, 0x7fff_0000), (0, 0), UNICODE_NTLM_DOMAIN, 48),
            ),
            (
                "fake_auth_with_the_flag",
                challenge((12, 0xffff_fff0), (0, 0), WITH_TARGET_INFO, 48),
            ),
            (
                "info_past_the_end",
                challenge((0, 48), (64, 0xffff_ff00), WITH_TARGET_INFO, 56),
            ),
            ("truncated", challenge((0, 0), (0, 0), WITH_TARGET_INFO, 20)),
            ("wrong_type", {
                let mut m = challenge((0, 48), (0, 48), WITH_TARGET_INFO, 48);
                m[8] = 9;
                m
            }),
            ("empty", Vec::new()),
        ];
        for (what, message) in cases {
            let mut client =
                SspiClient::new(AuthScheme::Ntlm, &credentials(), "proxy.corp").unwrap();
            let first = client.step(None).await.unwrap();
            assert!(first.starts_with("NTLM "), "{what}: {first}");
            let err = client.step(Some(message)).await.unwrap_err();
            assert!(err.starts_with("NTLM"), "{what}: {err}");
            assert!(
                !err.contains("Zq9-secret"),
                "{what}: the password leaked: {err}"
            );
        }
    }
}
