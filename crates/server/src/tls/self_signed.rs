//! Self-signed certificates: development mode's TLS port, and
//! `cloudproxy cert` for private deployments whose clients pin the
//! fingerprint.

use std::path::Path;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::certs::{CertificateError, Identity, fingerprint};

/// The names development mode's certificate is valid for.
pub const DEVELOPMENT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A fresh self-signed certificate (ECDSA P-256) and its key.
///
/// ```
/// use cloudproxy_server::tls::SelfSigned;
///
/// let cert = SelfSigned::generate(&["proxy.example.com".to_owned()])?;
/// assert!(cert.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
/// assert_eq!(cert.identity()?.fingerprint(), cert.fingerprint());
/// # Ok::<(), cloudproxy_server::tls::CertificateError>(())
/// ```
pub struct SelfSigned {
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: String,
    key_der: Vec<u8>,
    fingerprint: String,
}

impl std::fmt::Debug for SelfSigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("SelfSigned")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl SelfSigned {
    /// A certificate for `names`: DNS names, or IP addresses (written as
    /// such, they become IP subject alternative names).
    pub fn generate(names: &[String]) -> Result<Self, CertificateError> {
        let made = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(CertificateError::Generate)?;
        let cert_der = made.cert.der().to_vec();
        Ok(Self {
            cert_pem: made.cert.pem(),
            fingerprint: fingerprint(&cert_der),
            cert_der,
            key_pem: made.signing_key.serialize_pem(),
            key_der: made.signing_key.serialize_der(),
        })
    }

    /// The certificate for development mode: [`DEVELOPMENT_NAMES`].
    pub fn development() -> Result<Self, CertificateError> {
        Self::generate(&DEVELOPMENT_NAMES.map(str::to_owned))
    }

    /// The certificate, PEM.
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The certificate, DER.
    #[must_use]
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The private key, PEM (PKCS#8).
    #[must_use]
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The certificate's SHA-256 fingerprint (`AB:CD:…`).
    #[must_use]
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The certificate and key as the TLS port serves them.
    pub fn identity(&self) -> Result<Identity, CertificateError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let origin = Path::new("(self-signed)");
        Identity::from_der(vec![self.cert_der.clone().into()], key, origin, origin)
    }

    /// Writes the certificate to `cert` and the key to `key` (mode 0600 on
    /// Unix), refusing to replace either file unless `force`.
    pub fn write(&self, cert: &Path, key: &Path, force: bool) -> Result<(), CertificateError> {
        write_file(cert, self.cert_pem.as_bytes(), "certificate", false, force)?;
        write_file(key, self.key_pem.as_bytes(), "private key", true, force)
    }
}

fn write_file(
    path: &Path,
    contents: &[u8],
    what: &'static str,
    secret: bool,
    force: bool,
) -> Result<(), CertificateError> {
    use std::io::Write as _;
    let error = |cause| CertificateError::Write {
        path: path.to_owned(),
        what,
        cause,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        // Atomic: never replaces a file that appeared meanwhile.
        options.create_new(true);
    }
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(|cause| {
        if cause.kind() == std::io::ErrorKind::AlreadyExists {
            CertificateError::Exists {
                path: path.to_owned(),
                what,
            }
        } else {
            error(cause)
        }
    })?;
    #[cfg(unix)]
    if secret {
        // A replaced file keeps its old mode: narrow it too.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(error)?;
    }
    file.write_all(contents).map_err(error)?;
    file.sync_all().map_err(error)
}
