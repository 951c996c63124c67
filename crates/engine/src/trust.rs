//! [`TlsTrust`]: what the proxy's TLS certificate is checked against.

use cloudproxy_params::TlsPin;

/// What the proxy's certificate on the TLS rungs must chain to or match.
///
/// ```
/// use cloudproxy_engine::TlsTrust;
///
/// // As `cloudproxy cert` printed it (case-insensitive, colons optional):
/// let pinned = TlsTrust::fingerprint("ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89")?;
/// assert!(matches!(pinned, TlsTrust::Fingerprint(_)));
/// # Ok::<(), cloudproxy_engine::ParamError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TlsTrust {
    /// The operating system's (webpki's) roots: a proxy with a public
    /// certificate. The default.
    #[default]
    SystemRoots,
    /// Exactly this certificate: the SHA-256 of its DER encoding.
    Fingerprint([u8; 32]),
    /// Certificates chaining to these CA certificates (PEM text).
    CaPem(Vec<u8>),
    /// Certificates chaining to the CA certificates in this PEM file, read
    /// when joining.
    CaFile(std::path::PathBuf),
}

impl TlsTrust {
    /// A fingerprint pin from its text form (`AB:CD:…`, 64 hex digits).
    ///
    /// # Errors
    /// [`ParamError::InvalidTlsPin`](crate::ParamError::InvalidTlsPin) when
    /// the text is not 64 hex digits, or is a file path instead.
    pub fn fingerprint(text: &str) -> Result<Self, cloudproxy_params::ParamError> {
        match TlsPin::parse(text)? {
            TlsPin::Fingerprint(bytes) => Ok(Self::Fingerprint(bytes)),
            TlsPin::CaFile(_) => Err(cloudproxy_params::ParamError::InvalidTlsPin {
                found: text.to_owned(),
                reason: "expected 64 hex digits (a SHA-256 fingerprint)".into(),
                at: cloudproxy_params::Location::of(text, 0),
            }),
        }
    }
}

impl From<TlsPin> for TlsTrust {
    fn from(pin: TlsPin) -> Self {
        match pin {
            TlsPin::Fingerprint(bytes) => Self::Fingerprint(bytes),
            TlsPin::CaFile(path) => Self::CaFile(path),
        }
    }
}
