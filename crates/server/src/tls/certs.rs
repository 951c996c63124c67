//! The TLS port's certificate chain and private key: read from PEM files
//! (at start and on every reload), checked against each other, and named
//! by their SHA-256 fingerprint.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// A certificate chain and its key, ready for handshakes.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The chain (leaf first) and the signing key.
    pub(crate) certified: Arc<CertifiedKey>,
    /// The leaf's fingerprint, [`fingerprint`]'s form.
    fingerprint: String,
}

impl Identity {
    /// Reads the chain from `cert` and the key from `key` (both PEM) and
    /// checks that the key belongs to the chain's first certificate.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, CertificateError> {
        let chain = read_chain(cert)?;
        let private = read_key(key)?;
        Self::from_der(chain, private, cert, key)
    }

    /// An identity from DER parts; `cert_path` and `key_path` name them in
    /// errors.
    pub(crate) fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, CertificateError> {
        let fingerprint = fingerprint(&chain[0]);
        let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|cause| {
            CertificateError::Unusable {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
                cause,
            }
        })?;
        Ok(Self {
            certified: Arc::new(certified),
            fingerprint,
        })
    }

    /// The leaf certificate's SHA-256 fingerprint (`AB:CD:…`).
    #[must_use]
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// The crypto provider of every TLS handshake of the node: ring
/// (`docs/decisions.md`, "The TLS port").
pub(crate) fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The SHA-256 fingerprint of a DER certificate, written as clients pin it:
/// uppercase hex pairs joined by `:`.
///
/// ```
/// let fp = cloudproxy_server::tls::fingerprint(b"not really a certificate");
/// assert_eq!(fp.len(), 32 * 3 - 1);
/// assert!(fp.chars().all(|c| c == ':' || c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
/// ```
#[must_use]
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut out = String::with_capacity(digest.len() * 3);
    for (i, byte) in digest.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = write!(out, "{byte:02X}");
    }
    out
}

/// Why a certificate or key file cannot be used. Every variant names the
/// file, what was expected and what was found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// The file could not be read.
    #[error("{path}: cannot read the TLS {what} file: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
        /// Why; printed in the message, so not also `source()`.
        cause: std::io::Error,
    },
    /// The file is not well-formed PEM.
    #[error("{path}: expected a PEM {what} file, found malformed PEM: {cause}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
        /// The PEM parser's report; printed in the message.
        cause: rustls::pki_types::pem::Error,
    },
    /// The file holds no block of the expected kind.
    #[error("{path}: expected {expected}, found {found}")]
    Missing {
        /// The file.
        path: PathBuf,
        /// What the file should hold, e.g. `a PEM "CERTIFICATE" block`.
        expected: &'static str,
        /// The PEM blocks it holds instead, e.g. `only "PRIVATE KEY"`.
        found: String,
    },
    /// The key does not parse as a key ring can sign with, or does not
    /// belong to the certificate.
    #[error("{key} with {cert}: expected the private key of the first certificate, found: {cause}")]
    Unusable {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' report; printed in the message.
        cause: rustls::Error,
    },
    /// A self-signed certificate could not be made.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(rcgen::Error),
    /// A file to write exists and replacing it was not asked for.
    #[error(
        "{path}: expected no file where the {what} goes, found one; pass --force to replace it"
    )]
    Exists {
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
    },
    /// A certificate or key file could not be written.
    #[error("{path}: cannot write the {what}: {cause}")]
    Write {
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
        /// Why; printed in the message.
        cause: std::io::Error,
    },
}

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, CertificateError> {
    std::fs::read(path).map_err(|cause| CertificateError::Read {
        path: path.to_owned(),
        what,
        cause,
    })
}

/// The certificates of a PEM file, in file order (leaf first).
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    const WHAT: &str = "certificate";
    let pem = read_file(path, WHAT)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|cause| CertificateError::Malformed {
            path: path.to_owned(),
            what: WHAT,
            cause,
        })?;
    if chain.is_empty() {
        return Err(CertificateError::Missing {
            path: path.to_owned(),
            expected: "a PEM \"CERTIFICATE\" block",
            found: found_blocks(&pem),
        });
    }
    Ok(chain)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertificateError> {
    const WHAT: &str = "private key";
    let pem = read_file(path, WHAT)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|cause| match cause {
        rustls::pki_types::pem::Error::NoItemsFound => CertificateError::Missing {
            path: path.to_owned(),
            expected: "a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block",
            found: found_blocks(&pem),
        },
        cause => CertificateError::Malformed {
            path: path.to_owned(),
            what: WHAT,
            cause,
        },
    })
}

/// The labels of the PEM blocks in `pem`, for an error: `only "X", "Y"`,
/// or `no PEM block` when there is none.
fn found_blocks(pem: &[u8]) -> String {
    let text = String::from_utf8_lossy(pem);
    let labels: Vec<String> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("-----BEGIN "))
        .filter_map(|rest| rest.strip_suffix("-----"))
        .map(|label| format!("{label:?}"))
        .collect();
    if labels.is_empty() {
        "no PEM block".to_owned()
    } else {
        format!("only {}", labels.join(", "))
    }
}
