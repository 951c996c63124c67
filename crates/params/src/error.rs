//! The crate's one error type, [`ParamError`], and the position it points at.

use std::fmt;

/// The longest parameter string accepted, in bytes (64 KiB).
///
/// Longer input is rejected with [`ParamError::InputTooLong`] before any parsing.
pub const MAX_INPUT_LEN: usize = 64 * 1024;

/// The deepest nesting of arrays and objects accepted; the top-level object
/// counts as depth 1.
///
/// Deeper input is rejected with [`ParamError::TooDeep`], so no input can
/// exhaust the stack of the recursive parser.
pub const MAX_DEPTH: usize = 128;

/// The longest excerpt line shown under an error, in characters, before it is
/// shortened around the fault.
const EXCERPT_WIDTH: usize = 72;

/// A place in the input: byte offset, 1-based line and 1-based column.
///
/// Columns count characters (Unicode scalar values), not bytes, so they match
/// what an editor shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// Byte offset from the start of the input.
    pub offset: usize,
    /// Line number, starting at 1.
    pub line: usize,
    /// Column number in characters, starting at 1.
    pub column: usize,
}

impl Position {
    /// Computes line and column of byte `offset` in `input`.
    ///
    /// An offset past the end is clamped to the end; an offset inside a
    /// multi-byte character is moved back to the start of that character.
    #[must_use]
    pub fn of(input: &str, offset: usize) -> Self {
        let offset = floor_char_boundary(input, offset);
        let before = &input[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Self {
            offset,
            line: before.bytes().filter(|&b| b == b'\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {} (byte {})",
            self.line, self.column, self.offset
        )
    }
}

/// Where an error is: its [`Position`] and a one-line excerpt of the input
/// with a caret under the fault.
///
/// `Display` prints the position, then the excerpt and the caret on two
/// indented lines:
///
/// ```text
/// at line 1, column 21 (byte 20)
///     {"rtc.enable_proxy":tru}
///                         ^
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    position: Position,
    excerpt: String,
    caret: usize,
}

impl Location {
    /// The location of byte `offset` in `input`, with its excerpt.
    #[must_use]
    pub fn of(input: &str, offset: usize) -> Self {
        let position = Position::of(input, offset);
        let offset = position.offset;
        let line_start = input[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = input[offset..]
            .find('\n')
            .map_or(input.len(), |i| offset + i);
        let line = input[line_start..line_end]
            .strip_suffix('\r')
            .unwrap_or(&input[line_start..line_end]);
        let chars: Vec<char> = line.chars().collect();
        let caret_index = input[line_start..offset].chars().count();
        let (start, end) = if chars.len() <= EXCERPT_WIDTH {
            (0, chars.len())
        } else {
            let start = caret_index.saturating_sub(EXCERPT_WIDTH / 2);
            let end = (start + EXCERPT_WIDTH).min(chars.len());
            (end.saturating_sub(EXCERPT_WIDTH).min(start), end)
        };
        let mut excerpt = String::new();
        let mut caret = caret_index - start;
        if start > 0 {
            excerpt.push('…');
            caret += 1;
        }
        excerpt.extend(chars[start..end].iter().map(|&c| printable(c)));
        if end < chars.len() {
            excerpt.push('…');
        }
        Self {
            position,
            excerpt,
            caret,
        }
    }

    /// The byte offset, line and column.
    #[must_use]
    pub fn position(&self) -> Position {
        self.position
    }

    /// The input line containing the fault, shortened around it when long,
    /// with control characters replaced so the caret lines up.
    #[must_use]
    pub fn excerpt(&self) -> &str {
        &self.excerpt
    }

    /// The character column (0-based) of the caret within [`excerpt`](Self::excerpt).
    #[must_use]
    pub fn caret(&self) -> usize {
        self.caret
    }
}

fn printable(c: char) -> char {
    if c.is_control() { ' ' } else { c }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at {}\n    {}\n    {:>width$}",
            self.position,
            self.excerpt,
            "^",
            width = self.caret + 1
        )
    }
}

/// Everything that can go wrong turning a parameter string into [`Params`](crate::Params).
///
/// Every variant found in the input carries a [`Location`]: byte offset, line,
/// column and an excerpt with a caret, which `Display` prints on the lines
/// after the message. [`kind`](Self::kind) gives a field-less [`ErrorKind`] for
/// matching.
///
/// ```
/// let err = cloudproxy_params::parse(r#"{"rtc.enable_proxy":tru}"#).unwrap_err();
/// assert_eq!(err.kind(), cloudproxy_params::ErrorKind::Syntax);
/// assert_eq!(err.offset(), Some(20));
/// assert_eq!(
///     err.to_string(),
///     "expected a value (object, array, string, number, true, false or null), \
///      found `tru` at line 1, column 21 (byte 20)\n    \
///      {\"rtc.enable_proxy\":tru}\n                        ^"
/// );
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    /// The input is longer than [`MAX_INPUT_LEN`].
    #[error("parameter string is {len} bytes long; the limit is {max} bytes")]
    InputTooLong {
        /// Length of the input in bytes.
        len: usize,
        /// The limit, [`MAX_INPUT_LEN`].
        max: usize,
    },
    /// The input bytes are not valid UTF-8 (only from [`parse_bytes`](crate::parse_bytes)).
    #[error("invalid UTF-8 {at}")]
    InvalidUtf8 {
        /// Where the first invalid byte is.
        at: Location,
    },
    /// The input is not valid JSON, or not a JSON object of one or more pairs.
    #[error("expected {expected}, found {found} {at}")]
    Syntax {
        /// What the grammar allows at this point.
        expected: String,
        /// What the input has instead.
        found: String,
        /// Where.
        at: Location,
    },
    /// Arrays and objects are nested deeper than [`MAX_DEPTH`].
    #[error("arrays and objects are nested more than {max} deep {at}")]
    TooDeep {
        /// The limit, [`MAX_DEPTH`].
        max: usize,
        /// The bracket that goes one level too deep.
        at: Location,
    },
    /// A number is too large in magnitude for a 64-bit float.
    #[error("number {number} is out of range {at}")]
    NumberOutOfRange {
        /// The number as written.
        number: String,
        /// Where it starts.
        at: Location,
    },
    /// The same key appears twice in one object.
    ///
    /// Duplicates are an error rather than "last one wins": a parameter set
    /// twice in one string is almost always a copy-and-paste mistake, and
    /// silently picking one would hide it.
    #[error("duplicate key \"{key}\" (first at {first}) {at}")]
    DuplicateKey {
        /// The repeated key.
        key: String,
        /// Where the key first appeared.
        first: Position,
        /// Where it appears again.
        at: Location,
    },
    /// A known key (`rtc.enable_proxy`, `rtc.proxy_server`) has a value of the
    /// wrong type or shape.
    #[error("\"{key}\" expects {expected}, found {found} {at}")]
    WrongType {
        /// The key.
        key: String,
        /// The type it expects.
        expected: &'static str,
        /// What the input has.
        found: String,
        /// Where the offending value starts.
        at: Location,
    },
    /// The proxy type in `rtc.proxy_server` is neither 1 (domain) nor 2 (IP list).
    #[error(
        "\"rtc.proxy_server\" proxy type must be 1 (domain name) or 2 (IP address list), found {found} {at}"
    )]
    UnknownProxyType {
        /// The number as written.
        found: String,
        /// Where.
        at: Location,
    },
    /// The host of a type-1 proxy server is not a valid host name.
    #[error("\"rtc.proxy_server\" host {host:?} is not a valid host name: {reason} {at}")]
    InvalidHost {
        /// The host as given.
        host: String,
        /// Which rule it breaks.
        reason: &'static str,
        /// Where the host value starts.
        at: Location,
    },
    /// The IP list of a type-2 proxy server is not a list of strings.
    #[error("\"rtc.proxy_server\" IP list is malformed: {detail} {at}")]
    InvalidIpList {
        /// What is wrong with it.
        detail: String,
        /// Where the list value starts.
        at: Location,
    },
    /// An entry of the IP list is not a valid IPv4 or IPv6 address.
    #[error("\"rtc.proxy_server\" {text:?} is not a valid IPv4 or IPv6 address {at}")]
    InvalidIp {
        /// The entry as given.
        text: String,
        /// Where the list value starts.
        at: Location,
    },
    /// The IP list of a type-2 proxy server is empty.
    #[error("\"rtc.proxy_server\" IP address list is empty {at}")]
    EmptyIpList {
        /// Where the list value starts.
        at: Location,
    },
    /// The port of `rtc.proxy_server` is not in `0..=65535`.
    #[error("\"rtc.proxy_server\" port must be 0 (default ports) to 65535, found {found} {at}")]
    PortOutOfRange {
        /// The number as written.
        found: String,
        /// Where.
        at: Location,
    },
    /// `rtc.proxy_tls_pin` is neither a SHA-256 certificate fingerprint nor
    /// a usable path to a PEM CA file.
    #[error("\"rtc.proxy_tls_pin\" {found:?} is not a valid pin: {reason} {at}")]
    InvalidTlsPin {
        /// The value as given.
        found: String,
        /// What is wrong with it.
        reason: String,
        /// Where the value starts.
        at: Location,
    },
    /// `rtc.http_proxy` is not an `http://[user:password@]host:port` URL.
    #[error(
        "\"rtc.http_proxy\" {found:?} is not an http://[user:password@]host:port URL: {reason} {at}"
    )]
    InvalidHttpProxy {
        /// The value as given (a password in it is shown as `***`).
        found: String,
        /// What is wrong with it.
        reason: String,
        /// Where the value starts.
        at: Location,
    },
    /// `rtc.proxy_tls_port` is not in `1..=65535`.
    #[error("\"rtc.proxy_tls_port\" must be a port from 1 to 65535, found {found} {at}")]
    TlsPortOutOfRange {
        /// The number as written.
        found: String,
        /// Where.
        at: Location,
    },
    /// The input is a parameter string as written in program source — inside
    /// a string literal's outer quotes, or with its quotes escaped as `\"`
    /// — rather than the string itself. The suggestion is the string's
    /// value, which parses.
    #[error(
        "expected the parameter string itself, found it in source-code form ({form}): pass `{suggestion}` instead {at}"
    )]
    SourceCodeForm {
        /// How the input is written: `"outer quotes and \" escapes"` or
        /// `"\" escapes"`.
        form: &'static str,
        /// The string's value (shortened with `…` past 200 characters).
        suggestion: String,
        /// Where the first quote or backslash is.
        at: Location,
    },
    /// Deserializing a [`Value`](crate::Value) into a user type failed.
    #[error("cannot deserialize parameters: {message}")]
    Deserialize {
        /// serde's message.
        message: String,
    },
}

/// The variant of a [`ParamError`], without its data; handy for matching and tables.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// [`ParamError::InputTooLong`].
    InputTooLong,
    /// [`ParamError::InvalidUtf8`].
    InvalidUtf8,
    /// [`ParamError::Syntax`].
    Syntax,
    /// [`ParamError::TooDeep`].
    TooDeep,
    /// [`ParamError::NumberOutOfRange`].
    NumberOutOfRange,
    /// [`ParamError::DuplicateKey`].
    DuplicateKey,
    /// [`ParamError::WrongType`].
    WrongType,
    /// [`ParamError::UnknownProxyType`].
    UnknownProxyType,
    /// [`ParamError::InvalidHost`].
    InvalidHost,
    /// [`ParamError::InvalidIpList`].
    InvalidIpList,
    /// [`ParamError::InvalidIp`].
    InvalidIp,
    /// [`ParamError::EmptyIpList`].
    EmptyIpList,
    /// [`ParamError::PortOutOfRange`].
    PortOutOfRange,
    /// [`ParamError::Deserialize`].
    Deserialize,
    /// [`ParamError::InvalidTlsPin`].
    InvalidTlsPin,
    /// [`ParamError::InvalidHttpProxy`].
    InvalidHttpProxy,
    /// [`ParamError::TlsPortOutOfRange`].
    TlsPortOutOfRange,
    /// [`ParamError::SourceCodeForm`].
    SourceCodeForm,
}

impl ParamError {
    /// The variant, without data.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InputTooLong { .. } => ErrorKind::InputTooLong,
            Self::InvalidUtf8 { .. } => ErrorKind::InvalidUtf8,
            Self::Syntax { .. } => ErrorKind::Syntax,
            Self::TooDeep { .. } => ErrorKind::TooDeep,
            Self::NumberOutOfRange { .. } => ErrorKind::NumberOutOfRange,
            Self::DuplicateKey { .. } => ErrorKind::DuplicateKey,
            Self::WrongType { .. } => ErrorKind::WrongType,
            Self::UnknownProxyType { .. } => ErrorKind::UnknownProxyType,
            Self::InvalidHost { .. } => ErrorKind::InvalidHost,
            Self::InvalidIpList { .. } => ErrorKind::InvalidIpList,
            Self::InvalidIp { .. } => ErrorKind::InvalidIp,
            Self::EmptyIpList { .. } => ErrorKind::EmptyIpList,
            Self::PortOutOfRange { .. } => ErrorKind::PortOutOfRange,
            Self::Deserialize { .. } => ErrorKind::Deserialize,
            Self::SourceCodeForm { .. } => ErrorKind::SourceCodeForm,
            Self::InvalidTlsPin { .. } => ErrorKind::InvalidTlsPin,
            Self::InvalidHttpProxy { .. } => ErrorKind::InvalidHttpProxy,
            Self::TlsPortOutOfRange { .. } => ErrorKind::TlsPortOutOfRange,
        }
    }

    /// Where in the input the error is, if it comes from the input.
    #[must_use]
    pub fn location(&self) -> Option<&Location> {
        match self {
            Self::InputTooLong { .. } | Self::Deserialize { .. } => None,
            Self::InvalidUtf8 { at }
            | Self::Syntax { at, .. }
            | Self::TooDeep { at, .. }
            | Self::NumberOutOfRange { at, .. }
            | Self::DuplicateKey { at, .. }
            | Self::WrongType { at, .. }
            | Self::UnknownProxyType { at, .. }
            | Self::InvalidHost { at, .. }
            | Self::InvalidIpList { at, .. }
            | Self::InvalidIp { at, .. }
            | Self::EmptyIpList { at }
            | Self::PortOutOfRange { at, .. }
            | Self::SourceCodeForm { at, .. }
            | Self::InvalidTlsPin { at, .. }
            | Self::InvalidHttpProxy { at, .. }
            | Self::TlsPortOutOfRange { at, .. } => Some(at),
        }
    }

    /// The [`Position`] of the fault, if the error comes from the input.
    #[must_use]
    pub fn position(&self) -> Option<Position> {
        self.location().map(Location::position)
    }

    /// Byte offset of the fault, if the error comes from the input.
    #[must_use]
    pub fn offset(&self) -> Option<usize> {
        self.position().map(|p| p.offset)
    }

    /// Line of the fault (1-based), if the error comes from the input.
    #[must_use]
    pub fn line(&self) -> Option<usize> {
        self.position().map(|p| p.line)
    }

    /// Column of the fault (1-based, in characters), if the error comes from the input.
    #[must_use]
    pub fn column(&self) -> Option<usize> {
        self.position().map(|p| p.column)
    }
}

impl serde::de::Error for ParamError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::Deserialize {
            message: msg.to_string(),
        }
    }
}

/// The largest char boundary of `s` that is `<= offset`.
pub(crate) fn floor_char_boundary(s: &str, offset: usize) -> usize {
    if offset >= s.len() {
        return s.len();
    }
    (0..=offset)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// Describes what the input has at `rest` for "found …" messages: the token
/// starting there (a word, a `\uXXXX` escape or one character), or "end of input".
pub(crate) fn describe_found(rest: &str) -> String {
    let mut chars = rest.chars();
    let Some(first) = chars.next() else {
        return "end of input".to_owned();
    };
    if rest.starts_with("\\u") {
        let token: String = rest.chars().take(6).collect();
        return format!("`{token}`");
    }
    if first.is_alphanumeric() || first == '-' || first == '+' || first == '.' {
        let token: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || matches!(c, '-' | '+' | '.' | '_'))
            .take(24)
            .collect();
        return format!("`{token}`");
    }
    format!("`{}`", first.escape_debug())
}
