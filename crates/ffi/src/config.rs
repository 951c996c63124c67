//! [`EngineConfig`]: what an engine is created with, in plain strings so
//! every language can fill it in.

use std::net::SocketAddr;

use cloudproxy_engine::{Credential, Engine, EngineBuilder};

use crate::error::CloudProxyError;

/// The shortest app secret a proxy accepts (the server's configuration
/// refuses shorter ones).
const MIN_SECRET_LEN: usize = 16;

/// What an engine is created with: the app id and credential the proxy
/// knows the app by, and the media network's addresses.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct EngineConfig {
    /// The app id the proxy's operator configured.
    pub app_id: String,
    /// The app secret as `cloudproxy serve` prints it: hex digits.
    pub credential_hex: String,
    /// The media network's message (TCP) address, `ip:port`.
    pub media_tcp: String,
    /// The media network's media (UDP) address, `ip:port`.
    pub media_udp: String,
    /// The domain of the default proxy server `[1, <domain>, 0]`, used when
    /// the proxy is enabled without `rtc.proxy_server`; `None` for the
    /// guide's `ap-proxy.agora.io`.
    #[uniffi(default = None)]
    pub default_proxy_domain: Option<String>,
}

impl EngineConfig {
    /// The engine builder these settings describe.
    pub(crate) fn builder(&self) -> Result<EngineBuilder, CloudProxyError> {
        let credential = Credential::from_hex(&self.credential_hex)
            .map_err(CloudProxyError::InvalidCredential)?;
        // Refused here rather than by the proxy at join time.
        if credential.len() < MIN_SECRET_LEN {
            return Err(CloudProxyError::CredentialTooShort {
                min: MIN_SECRET_LEN,
                found: credential.len(),
            });
        }
        let tcp = parse_addr("media_tcp", &self.media_tcp)?;
        let udp = parse_addr("media_udp", &self.media_udp)?;
        let mut builder = Engine::builder(self.app_id.clone(), credential).media_network(tcp, udp);
        if let Some(domain) = &self.default_proxy_domain {
            builder = builder.default_proxy_domain(domain.clone());
        }
        Ok(builder)
    }
}

fn parse_addr(what: &'static str, text: &str) -> Result<SocketAddr, CloudProxyError> {
    text.trim()
        .parse()
        .map_err(|cause| CloudProxyError::InvalidAddress {
            what,
            found: text.to_owned(),
            cause,
        })
}
