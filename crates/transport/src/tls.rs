//! The client side of TLS to a proxy's TLS port: which certificates are
//! trusted, and a handshake whose failures say why.
//!
//! rustls with the ring provider, ALPN [`ALPN`], SNI the proxy's host name
//! (none when it is reached by IP address). Three trust settings
//! ([`TlsTrust`]): the system's roots (the default), a pinned private CA, or
//! a pinned certificate fingerprint for a self-signed node.
//!
//! A certificate that does not verify fails with
//! [`TlsError::Untrusted`], whose message says so and names the likely cause
//! (a TLS-intercepting proxy), never with a hang: callers bound the
//! handshake with the dial's attempt timeout.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;

/// The ALPN protocol id of the cloudproxy protocol over TLS.
pub const ALPN: &[u8] = b"cloudproxy/1";

/// The default TLS port of a proxy server.
pub const DEFAULT_TLS_PORT: u16 = 443;

/// The SHA-256 digest of a certificate's DER encoding: how a self-signed
/// node's certificate is pinned.
///
/// Its text form is uppercase hex pairs joined by `:`
/// (`AB:CD:…`, what `cloudproxy cert` prints); parsing accepts either case,
/// with or without the colons.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of the DER-encoded certificate `der`.
    #[must_use]
    pub fn of(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Self(bytes)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A fingerprint's text was not 32 bytes of hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FingerprintParseError {
    /// A character that is neither a hex digit nor `:`.
    #[error(
        "a SHA-256 fingerprint is 64 hex digits, optionally in pairs joined by ':'; found {found:?} at character {position}"
    )]
    NotHex {
        /// The character found.
        found: char,
        /// Its index (in characters) in the text.
        position: usize,
    },
    /// Not 64 hex digits.
    #[error(
        "a SHA-256 fingerprint is 64 hex digits (32 bytes, e.g. AB:CD:…), found {digits} hex digit(s)"
    )]
    WrongLength {
        /// How many hex digits the text had.
        digits: usize,
    },
}

impl FromStr for Fingerprint {
    type Err = FingerprintParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let mut nibbles = Vec::with_capacity(64);
        for (position, c) in text.chars().enumerate() {
            if c == ':' {
                continue;
            }
            let Some(value) = c.to_digit(16) else {
                return Err(FingerprintParseError::NotHex { found: c, position });
            };
            nibbles.push(u8::try_from(value).unwrap_or(0));
        }
        if nibbles.len() != 64 {
            return Err(FingerprintParseError::WrongLength {
                digits: nibbles.len(),
            });
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(nibbles.chunks_exact(2)) {
            *byte = pair[0] << 4 | pair[1];
        }
        Ok(Self(bytes))
    }
}

/// Which server certificates the client accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsTrust {
    /// The platform's trusted roots where it has any readable ones
    /// (`rustls-native-certs`), else the bundled Mozilla roots
    /// (`webpki-roots`; iOS and Android, where the platform store is not
    /// readable as files). The host name is checked.
    #[default]
    SystemRoots,
    /// Only certificates issued by these CA certificates (a private
    /// deployment's CA). The name is checked when the proxy is reached by
    /// host name; when it is reached by IP address, any certificate of the
    /// pinned CA is accepted (a private CA's certificates rarely list IPs).
    PinnedCa(Vec<CertificateDer<'static>>),
    /// Only the certificate with this SHA-256 fingerprint (a self-signed
    /// node). The host name is not checked; the handshake's signatures are.
    PinnedFingerprint(Fingerprint),
}

impl TlsTrust {
    /// Pins the CA certificates in `pem` (one or more `CERTIFICATE` blocks).
    pub fn pinned_ca_pem(pem: &[u8]) -> Result<Self, TrustError> {
        let mut certs = Vec::new();
        for cert in CertificateDer::pem_slice_iter(pem) {
            certs.push(cert.map_err(|e| TrustError::Pem {
                cause: e.to_string(),
            })?);
        }
        if certs.is_empty() {
            return Err(TrustError::NoCertificate);
        }
        Ok(Self::PinnedCa(certs))
    }

    /// The trust a pin text gives (the `rtc.proxy_tls_pin` parameter): a
    /// SHA-256 fingerprint (`AB:CD:…`), else the path of a PEM file with the
    /// CA certificate(s).
    pub fn from_pin(pin: &str) -> Result<Self, TrustError> {
        if let Ok(fingerprint) = pin.parse::<Fingerprint>() {
            return Ok(Self::PinnedFingerprint(fingerprint));
        }
        let path = Path::new(pin.trim());
        let pem = std::fs::read(path).map_err(|cause| TrustError::ReadPem {
            path: path.to_owned(),
            cause,
        })?;
        Self::pinned_ca_pem(&pem).map_err(|e| match e {
            TrustError::NoCertificate => TrustError::NotAPin {
                pin: pin.to_owned(),
            },
            other => other,
        })
    }
}

/// A [`TlsTrust`] could not be turned into a TLS client setup.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The PEM text is malformed.
    #[error("the pinned CA's PEM is malformed: {cause}")]
    Pem {
        /// The PEM parser's explanation.
        cause: String,
    },
    /// The PEM text holds no `CERTIFICATE` block.
    #[error("the pinned CA's PEM holds no CERTIFICATE block")]
    NoCertificate,
    /// The pin is neither a fingerprint nor a PEM file with a certificate.
    #[error(
        "the TLS pin {pin:?} is neither a SHA-256 fingerprint (AB:CD:…, 64 hex digits) nor a PEM file with a CERTIFICATE block"
    )]
    NotAPin {
        /// The pin given.
        pin: String,
    },
    /// The pin's PEM file could not be read.
    #[error(
        "the TLS pin is not a SHA-256 fingerprint (AB:CD:…), and reading it as a PEM CA file {path:?} failed: {cause}"
    )]
    ReadPem {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        cause: io::Error,
    },
    /// A pinned CA certificate is not usable as a trust anchor.
    #[error("the pinned CA certificate is not usable as a trust anchor: {0}")]
    BadCa(rustls::Error),
    /// rustls refused the setup (a bug or an unsupported provider).
    #[error("setting up TLS: {0}")]
    Setup(rustls::Error),
}

/// A client TLS setup: the trust, the ring provider, ALPN `cloudproxy/1`.
/// Cheap to clone (one shared configuration).
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    trust: TrustKind,
}

/// Which kind of trust a [`TlsClient`] has (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrustKind {
    SystemRoots,
    PinnedCa,
    PinnedFingerprint,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's roots, else the bundled ones; read once per process (the
/// platform store is a few hundred files).
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                tracing::debug!(
                    errors = native.errors.len(),
                    "no platform root certificates found; using the bundled Mozilla roots"
                );
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            Arc::new(roots)
        })
        .clone()
}

impl TlsClient {
    /// The setup for `trust`.
    pub fn new(trust: &TlsTrust) -> Result<Self, TrustError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TrustError::Setup)?;
        let (mut config, kind) = match trust {
            TlsTrust::SystemRoots => (
                builder
                    .with_root_certificates(system_roots())
                    .with_no_client_auth(),
                TrustKind::SystemRoots,
            ),
            TlsTrust::PinnedCa(certs) => {
                let mut roots = RootCertStore::empty();
                for cert in certs {
                    roots.add(cert.clone()).map_err(TrustError::BadCa)?;
                }
                let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| TrustError::Setup(rustls::Error::General(e.to_string())))?;
                (
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier { inner }))
                        .with_no_client_auth(),
                    TrustKind::PinnedCa,
                )
            }
            TlsTrust::PinnedFingerprint(fingerprint) => (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(FingerprintVerifier {
                        expected: *fingerprint,
                        algorithms: provider.signature_verification_algorithms,
                    }))
                    .with_no_client_auth(),
                TrustKind::PinnedFingerprint,
            ),
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Self {
            config: Arc::new(config),
            trust: kind,
        })
    }

    /// Runs the client handshake over `stream` to the server called `name`
    /// (SNI and the checked name; see [`TlsName`]). Not bounded in time:
    /// the caller's attempt timeout bounds it.
    pub async fn handshake<S>(&self, name: &TlsName, stream: S) -> Result<TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        connector
            .connect(name.0.clone(), stream)
            .await
            .map_err(|e| TlsError::from_io(e, name))
    }
}

/// The name a TLS server is checked against: a DNS name (also sent as SNI)
/// or an IP address (no SNI).
#[derive(Clone, PartialEq, Eq)]
pub struct TlsName(ServerName<'static>);

impl TlsName {
    /// `host` as a TLS name: an IP address literal (brackets allowed) or a
    /// DNS name.
    pub fn new(host: &str) -> Result<Self, InvalidTlsName> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Self::ip(ip));
        }
        ServerName::try_from(host.to_owned())
            .map(Self)
            .map_err(|_| InvalidTlsName {
                host: host.to_owned(),
            })
    }

    /// An IP address (no SNI; the certificate must list the address unless
    /// the trust is pinned).
    #[must_use]
    pub fn ip(ip: IpAddr) -> Self {
        Self(ServerName::IpAddress(ip.into()))
    }

    /// Whether it is a DNS name (sent as SNI).
    #[must_use]
    pub fn is_dns(&self) -> bool {
        matches!(self.0, ServerName::DnsName(_))
    }
}

impl fmt::Display for TlsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            ServerName::DnsName(name) => f.write_str(name.as_ref()),
            ServerName::IpAddress(ip) => write!(f, "{}", IpAddr::from(*ip)),
            other => write!(f, "{other:?}"),
        }
    }
}

impl fmt::Debug for TlsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TlsName({self})")
    }
}

/// A host that is neither an IP address nor a valid DNS name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{host:?} is neither an IP address nor a valid DNS name for TLS")]
pub struct InvalidTlsName {
    /// The host given.
    pub host: String,
}

/// Why a server certificate was not trusted.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum UntrustedReason {
    /// Not issued by a trusted CA (the pinned CA, or a system root).
    UnknownIssuer,
    /// Not the pinned certificate.
    FingerprintMismatch {
        /// The pinned fingerprint.
        expected: Fingerprint,
        /// The fingerprint of the certificate presented.
        found: Fingerprint,
    },
    /// Issued by a trusted CA, but not for this name.
    NameMismatch {
        /// The names the certificate lists (when rustls says).
        presented: Vec<String>,
    },
    /// Expired or not yet valid (also: a wrong clock here).
    Expired,
    /// Any other certificate problem rustls reports.
    Other(CertificateError),
}

impl fmt::Display for UntrustedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownIssuer => {
                f.write_str("it is not issued by a trusted certificate authority")
            }
            Self::FingerprintMismatch { expected, found } => write!(
                f,
                "its SHA-256 fingerprint is {found}, not the pinned {expected}"
            ),
            Self::NameMismatch { presented } if presented.is_empty() => {
                f.write_str("it is not valid for this name")
            }
            Self::NameMismatch { presented } => {
                write!(f, "it is valid only for {}", presented.join(", "))
            }
            Self::Expired => {
                f.write_str("it has expired or is not yet valid (or this clock is wrong)")
            }
            Self::Other(e) => write!(f, "{e}"),
        }
    }
}

/// A TLS handshake failed. Each message is complete: no variant returns
/// its cause again as [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The server's certificate was not trusted.
    #[error(
        "the TLS certificate of {server} was not trusted: {reason}; a TLS-intercepting proxy or firewall on this network is a likely cause"
    )]
    Untrusted {
        /// The name it was checked against.
        server: String,
        /// Why.
        reason: UntrustedReason,
    },
    /// The handshake failed for another TLS reason (an alert, a peer that
    /// does not speak TLS).
    #[error("the TLS handshake with {server} failed: {cause}")]
    Handshake {
        /// The server name.
        server: String,
        /// rustls's error.
        cause: rustls::Error,
    },
    /// Reading or writing failed during the handshake (including the peer
    /// closing it).
    #[error("the TLS handshake with {server} failed: {cause}")]
    Io {
        /// The server name.
        server: String,
        /// The operating system's error.
        cause: io::Error,
    },
}

impl TlsError {
    /// Whether the server's certificate was not trusted.
    #[must_use]
    pub fn is_untrusted(&self) -> bool {
        matches!(self, Self::Untrusted { .. })
    }

    fn from_io(e: io::Error, name: &TlsName) -> Self {
        let server = name.to_string();
        let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return Self::Io { server, cause: e };
        };
        match tls {
            rustls::Error::InvalidCertificate(cert) => Self::Untrusted {
                server,
                reason: classify(cert),
            },
            other => Self::Handshake {
                server,
                cause: other.clone(),
            },
        }
    }
}

fn classify(error: &CertificateError) -> UntrustedReason {
    match error {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            UntrustedReason::UnknownIssuer
        }
        CertificateError::NotValidForName => UntrustedReason::NameMismatch {
            presented: Vec::new(),
        },
        CertificateError::NotValidForNameContext { presented, .. } => {
            UntrustedReason::NameMismatch {
                presented: presented.clone(),
            }
        }
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. } => UntrustedReason::Expired,
        CertificateError::Other(other) => match other.0.downcast_ref::<FingerprintMismatch>() {
            Some(m) => UntrustedReason::FingerprintMismatch {
                expected: m.expected,
                found: m.found,
            },
            None => UntrustedReason::Other(error.clone()),
        },
        other => UntrustedReason::Other(other.clone()),
    }
}

/// Carried through rustls's error so the handshake's caller can report
/// both fingerprints.
#[derive(Debug, thiserror::Error)]
#[error("certificate fingerprint {found} is not the pinned {expected}")]
struct FingerprintMismatch {
    expected: Fingerprint,
    found: Fingerprint,
}

/// Accepts exactly the certificate with the pinned fingerprint; checks the
/// handshake's signatures with the provider's algorithms (so the server
/// proves it holds that certificate's key).
#[derive(Debug)]
struct FingerprintVerifier {
    expected: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let found = Fingerprint::of(end_entity);
        if found == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(FingerprintMismatch {
                    expected: self.expected,
                    found,
                })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The pinned CA's verifier, except that a server reached by IP address
/// need not list that address: the chain to the pinned CA is checked
/// first, so only the name check is waived.
#[derive(Debug)]
struct PinnedCaVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if matches!(server_name, ServerName::IpAddress(_)) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
