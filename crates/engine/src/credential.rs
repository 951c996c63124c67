//! [`Credential`]: the app secret an engine proves to the proxy.

use std::fmt;
use std::str::FromStr;

/// The app's secret, as the proxy's operator gave it: the hex string that
/// `cloudproxy serve` prints as "app secret" (and that the proxy's
/// configuration lists under `[[apps]] secrets`). The proxy checks the
/// *bytes* the hex digits stand for, so parse the printed string with
/// [`Credential::from_hex`] (or [`str::parse`]); [`Credential::from_bytes`]
/// takes the raw bytes when the app already holds them.
///
/// `Debug` shows only the length, never the secret, and there is no
/// `Display`: a credential does not end up in logs by accident.
///
/// ```
/// use cloudproxy_engine::{Credential, Engine};
///
/// // What `cloudproxy serve` printed as "app secret":
/// let credential = Credential::from_hex("5e3a9c0d41b2f7e6a8c9d0e1f2a3b4c5")?;
/// assert_eq!(credential.len(), 16);
/// assert_eq!(format!("{credential:?}"), "Credential(<redacted, 16 bytes>)");
///
/// // The same, with `parse`:
/// let same: Credential = "5E3A9C0D41B2F7E6A8C9D0E1F2A3B4C5".parse()?;
/// assert_eq!(same.as_bytes(), credential.as_bytes());
///
/// // Raw bytes the app already holds:
/// let raw = Credential::from_bytes(vec![0x5e, 0x3a]);
/// assert_eq!(raw.as_bytes(), [0x5e, 0x3a]);
///
/// let engine = Engine::builder("my-app", credential)
///     .media_network("198.51.100.1:7000".parse()?, "198.51.100.1:7000".parse()?)
///     .build()?;
/// # drop(engine);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default)]
pub struct Credential(Vec<u8>);

impl Credential {
    /// Parses the secret from hex digits (either case; surrounding
    /// whitespace, as left by copy and paste, is ignored): the form
    /// `cloudproxy serve` prints and the proxy's configuration holds.
    ///
    /// # Errors
    /// [`CredentialError`] saying what was found instead: nothing, an odd
    /// number of digits, or a character that is not a hex digit (with its
    /// offset).
    pub fn from_hex(text: &str) -> Result<Self, CredentialError> {
        let digits = text.trim();
        if digits.is_empty() {
            return Err(CredentialError::Empty);
        }
        let leading = text.len() - text.trim_start().len();
        if let Some((offset, found)) = digits.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
            return Err(CredentialError::InvalidDigit {
                found,
                offset: leading + offset,
            });
        }
        if digits.len() % 2 != 0 {
            return Err(CredentialError::OddLength {
                digits: digits.len(),
            });
        }
        let bytes = digits
            .as_bytes()
            .chunks(2)
            .map(|pair| (hex_value(pair[0]) << 4) | hex_value(pair[1]))
            .collect();
        Ok(Self(bytes))
    }

    /// The secret's raw bytes as they are (no decoding).
    pub fn from_bytes(raw: impl Into<Vec<u8>>) -> Self {
        Self(raw.into())
    }

    /// The secret's bytes, as proved to the proxy.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The number of bytes of the secret.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty (an engine refuses to build with one).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the raw bytes are themselves an even number of hex digits:
    /// most likely the printed hex string passed as bytes instead of parsed.
    pub(crate) fn looks_like_hex_text(&self) -> bool {
        !self.0.is_empty() && self.0.len() % 2 == 0 && self.0.iter().all(u8::is_ascii_hexdigit)
    }
}

/// The value of one ASCII hex digit (checked by the caller).
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential(<redacted, {} bytes>)", self.0.len())
    }
}

impl FromStr for Credential {
    type Err = CredentialError;

    /// [`Credential::from_hex`].
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::from_hex(text)
    }
}

/// Raw bytes, as [`Credential::from_bytes`].
impl From<Vec<u8>> for Credential {
    fn from(raw: Vec<u8>) -> Self {
        Self(raw)
    }
}

/// Raw bytes, as [`Credential::from_bytes`].
impl From<&[u8]> for Credential {
    fn from(raw: &[u8]) -> Self {
        Self(raw.to_vec())
    }
}

/// Raw bytes, as [`Credential::from_bytes`].
impl<const N: usize> From<&[u8; N]> for Credential {
    fn from(raw: &[u8; N]) -> Self {
        Self(raw.to_vec())
    }
}

/// A credential string that is not hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// Nothing (or only whitespace) was given.
    #[error(
        "expected the app secret as hex digits (as `cloudproxy serve` prints it), found an empty string"
    )]
    Empty,
    /// An odd number of hex digits: each byte is two digits.
    #[error(
        "expected an even number of hex digits (two per byte of the app secret), found {digits}: a digit is missing or one too many was copied"
    )]
    OddLength {
        /// How many digits were given.
        digits: usize,
    },
    /// A character that is not a hex digit.
    #[error(
        "expected hex digits (0-9, a-f) for the app secret, found {found:?} at offset {offset}"
    )]
    InvalidDigit {
        /// The offending character.
        found: char,
        /// Its byte offset in the string given.
        offset: usize,
    },
}
