//! The certificate new handshakes get, swapped whole on a reload: sessions
//! already established keep the keys they negotiated and never notice.

use std::sync::{Arc, PoisonError, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::Identity;

/// The node's current TLS identity, read by every handshake.
#[derive(Debug)]
pub(crate) struct CurrentCert(RwLock<Identity>);

impl CurrentCert {
    pub(crate) fn new(identity: Identity) -> Self {
        Self(RwLock::new(identity))
    }

    /// Serves `identity` from the next handshake on.
    pub(crate) fn replace(&self, identity: Identity) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = identity;
    }

    /// The fingerprint of the certificate new handshakes get.
    pub(crate) fn fingerprint(&self) -> String {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .fingerprint()
            .to_owned()
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self
                .0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .certified,
        ))
    }
}
