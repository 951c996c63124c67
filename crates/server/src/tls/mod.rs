//! The TLS port (issue 16; `docs/protocol.md` §7.4): one TLS listener, 443
//! by default, that carries everything a client needs when only TLS gets
//! out of its network.
//!
//! Each TLS connection carries exactly what one plain TCP connection to the
//! allocation port or to the relay port carries, byte for byte; the type of
//! its first frame says which (`AllocateRequest`/`Refresh`: the allocation
//! service; `Bind`: the relay, stream or datagram mode). The ALPN protocol
//! is [`ALPN`]; a client that offers none or another is refused.
//!
//! The certificate and key come from PEM files ([`Identity`]) and are
//! swapped on a reload for new handshakes only; development mode uses a
//! fresh [`SelfSigned`] certificate.

mod certs;
mod listener;
mod prefixed;
mod resolver;
mod self_signed;

use std::sync::Arc;

pub use certs::{CertificateError, Identity, fingerprint};
pub(crate) use listener::connection;
pub use self_signed::{DEVELOPMENT_NAMES, SelfSigned};

use resolver::CurrentCert;

/// The ALPN protocol id of the TLS port.
pub const ALPN: &[u8] = b"cloudproxy/1";

/// The TLS side of a node: the rustls configuration every handshake uses,
/// and the certificate it serves, replaceable while the node runs.
#[derive(Debug, Clone)]
pub(crate) struct TlsPort {
    config: Arc<rustls::ServerConfig>,
    cert: Arc<CurrentCert>,
}

impl TlsPort {
    /// A port serving `identity`: TLS 1.3 and 1.2 (ring's safe defaults),
    /// ALPN [`ALPN`] only, no client certificates.
    pub(crate) fn new(identity: Identity) -> Self {
        let cert = Arc::new(CurrentCert::new(identity));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(certs::provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&cert) as Arc<dyn rustls::server::ResolvesServerCert>);
        config.alpn_protocols = vec![ALPN.to_vec()];
        Self {
            config: Arc::new(config),
            cert,
        }
    }

    /// Serves `identity` from the next handshake on; sessions already up
    /// keep theirs.
    pub(crate) fn replace(&self, identity: Identity) {
        self.cert.replace(identity);
    }

    /// The fingerprint of the certificate new handshakes get.
    pub(crate) fn fingerprint(&self) -> String {
        self.cert.fingerprint()
    }

    pub(crate) fn config(&self) -> &Arc<rustls::ServerConfig> {
        &self.config
    }
}
