//! The nom grammar: complete parsers over `&str`, wrapped in `all_consuming`
//! and turned into [`ParamError`] with [`Finish`].
//!
//! Each parser dispatches on the first byte instead of trying alternatives in
//! turn, so no input is scanned twice except in the one documented
//! compatibility case (see [`proxy_host`]). Strings without escapes are
//! borrowed slices of the input.

use std::borrow::Cow;
use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use nom::bytes::complete::tag;
use nom::combinator::all_consuming;
use nom::error::{ErrorKind as NomErrorKind, ParseError};
use nom::{Err, Finish, IResult, Parser};

use crate::error::{Location, MAX_DEPTH, MAX_INPUT_LEN, ParamError, Position, describe_found};
use crate::value::{Number, Object, Value};

/// Result of every parser here.
type Res<'a, T> = IResult<&'a str, T, PErr<'a>>;

/// Keys whose values the parser records positions for, for the typed view.
pub(crate) const ENABLE_PROXY: &str = "rtc.enable_proxy";
/// See [`ENABLE_PROXY`].
pub(crate) const PROXY_SERVER: &str = "rtc.proxy_server";
/// See [`ENABLE_PROXY`].
pub(crate) const PROXY_TLS_PIN: &str = "rtc.proxy_tls_pin";
/// See [`ENABLE_PROXY`].
pub(crate) const PROXY_TLS_PORT: &str = "rtc.proxy_tls_port";
/// See [`ENABLE_PROXY`].
pub(crate) const HTTP_PROXY: &str = "rtc.http_proxy";

/// Objects up to this many keys are checked for duplicates by a linear scan;
/// larger ones also keep a set of key hashes.
const LINEAR_DUPLICATE_SCAN: usize = 16;

const EXPECTED_VALUE: &str = "a value (object, array, string, number, true, false or null)";

/// The parser's internal error: where (the remaining input) and what.
#[derive(Debug)]
pub(crate) struct PErr<'a> {
    rest: &'a str,
    kind: PErrKind<'a>,
}

#[derive(Debug)]
enum PErrKind<'a> {
    Expected(&'static str),
    TooDeep,
    NumberOutOfRange(&'a str),
    DuplicateKey { key: String, first: &'a str },
}

impl<'a> PErr<'a> {
    fn expected(rest: &'a str, what: &'static str) -> Err<Self> {
        Err::Error(Self {
            rest,
            kind: PErrKind::Expected(what),
        })
    }

    /// Of two failed alternatives, the one that got further explains more.
    fn furthest(self, other: Self) -> Self {
        if other.rest.len() < self.rest.len() {
            other
        } else {
            self
        }
    }

    /// Converts to the public error, locating it in `input` (which `rest`
    /// must be a suffix of).
    pub(crate) fn into_param_error(self, input: &str) -> ParamError {
        let offset = input.len() - self.rest.len();
        let at = Location::of(input, offset);
        match self.kind {
            PErrKind::Expected(expected) => ParamError::Syntax {
                expected: expected.to_owned(),
                found: describe_found(self.rest),
                at,
            },
            PErrKind::TooDeep => ParamError::TooDeep { max: MAX_DEPTH, at },
            PErrKind::NumberOutOfRange(number) => ParamError::NumberOutOfRange {
                number: number.to_owned(),
                at,
            },
            PErrKind::DuplicateKey { key, first } => ParamError::DuplicateKey {
                key,
                first: Position::of(input, input.len() - first.len()),
                at,
            },
        }
    }
}

impl<'a> ParseError<&'a str> for PErr<'a> {
    fn from_error_kind(rest: &'a str, kind: NomErrorKind) -> Self {
        let what = match kind {
            NomErrorKind::Eof => "the end of input",
            _ => "valid JSON",
        };
        Self {
            rest,
            kind: PErrKind::Expected(what),
        }
    }

    fn append(_: &'a str, _: NomErrorKind, other: Self) -> Self {
        other
    }

    fn or(self, other: Self) -> Self {
        self.furthest(other)
    }
}

/// A key of the top-level object whose value the typed view interprets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KnownKey {
    EnableProxy,
    ProxyServer,
    TlsPin,
    TlsPort,
    HttpProxy,
}

/// How many element positions of an array value are recorded: the three of
/// `[type, host, port]` and one more to point at an extra element.
pub(crate) const RECORDED_ITEMS: usize = 4;

/// Where a known key's value sits, for error locations in the typed view.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Known<'a> {
    /// Index of the pair in the top-level object.
    pub(crate) index: usize,
    /// The input from the start of the value.
    pub(crate) value_at: &'a str,
    /// For an array value: the input from the start of each of its first
    /// [`RECORDED_ITEMS`] elements (`""` past the end).
    items_at: [&'a str; RECORDED_ITEMS],
}

impl<'a> Known<'a> {
    /// The input from the start of element `n` of the array value, or from
    /// the start of the value when there is no such element.
    pub(crate) fn item_at(&self, n: usize) -> &'a str {
        match self.items_at.get(n) {
            Some(at) if !at.is_empty() => at,
            _ => self.value_at,
        }
    }
}

/// State shared by one parse. Creating it allocates nothing.
#[derive(Default)]
struct Ctx<'a> {
    /// `rtc.enable_proxy` in the top-level object, if present.
    enable_proxy: Option<Known<'a>>,
    /// `rtc.proxy_server` in the top-level object, if present.
    proxy_server: Option<Known<'a>>,
    /// `rtc.proxy_tls_pin`, `rtc.proxy_tls_port`, `rtc.http_proxy`.
    transport: TransportKeys<'a>,
}

/// Where the transport keys (TLS and HTTP proxy) sit, if present.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TransportKeys<'a> {
    pub(crate) tls_pin: Option<Known<'a>>,
    pub(crate) tls_port: Option<Known<'a>>,
    pub(crate) http_proxy: Option<Known<'a>>,
}

/// A parsed parameter document: the top-level object and where its known keys are.
pub(crate) struct Document<'a> {
    pub(crate) object: Object<'a>,
    pub(crate) enable_proxy: Option<Known<'a>>,
    pub(crate) proxy_server: Option<Known<'a>>,
    pub(crate) transport: TransportKeys<'a>,
}

fn check_len(input: &str) -> Result<(), ParamError> {
    if input.len() > MAX_INPUT_LEN {
        return Err(ParamError::InputTooLong {
            len: input.len(),
            max: MAX_INPUT_LEN,
        });
    }
    Ok(())
}

/// Parses a parameter document: a JSON object with at least one pair.
pub(crate) fn parse_document(input: &str) -> Result<Document<'_>, ParamError> {
    check_len(input)?;
    let mut cx = Ctx::default();
    let (_, object) = all_consuming(|i| document(i, &mut cx))
        .parse(input)
        .finish()
        .map_err(|e| e.into_param_error(input))?;
    Ok(Document {
        object,
        enable_proxy: cx.enable_proxy,
        proxy_server: cx.proxy_server,
        transport: cx.transport,
    })
}

/// Parses any JSON value, with the same limits as a document.
pub(crate) fn parse_value(input: &str) -> Result<Value<'_>, ParamError> {
    check_len(input)?;
    let mut cx = Ctx::default();
    let (_, value) = all_consuming(|i| {
        let i = ws(i);
        let (i, v) = value(i, &mut cx, 0)?;
        Ok((ws(i), v))
    })
    .parse(input)
    .finish()
    .map_err(|e| e.into_param_error(input))?;
    Ok(value)
}

/// JSON whitespace: space, tab, line feed, carriage return.
fn ws(i: &str) -> &str {
    let n = i
        .bytes()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .unwrap_or(i.len());
    &i[n..]
}

fn document<'a>(i: &'a str, cx: &mut Ctx<'a>) -> Res<'a, Object<'a>> {
    let i = ws(i);
    if !i.starts_with('{') {
        return Err(PErr::expected(
            i,
            "`{` (a parameter string is a JSON object such as {\"rtc.enable_proxy\":true})",
        ));
    }
    let (i, object) = object(i, cx, 0, true)?;
    Ok((ws(i), object))
}

/// Any value; `depth` is the number of containers around it.
fn value<'a>(i: &'a str, cx: &mut Ctx<'a>, depth: usize) -> Res<'a, Value<'a>> {
    match i.as_bytes().first() {
        Some(b'"') => string(i).map(|(i, s)| (i, Value::String(s))),
        Some(b'{') => object(i, cx, depth, false).map(|(i, o)| (i, Value::Object(o))),
        Some(b'[') => array(i, cx, depth).map(|(i, a)| (i, Value::Array(a))),
        Some(b'-' | b'0'..=b'9') => number(i).map(|(i, n)| (i, Value::Number(n))),
        Some(b't') => literal(i, "true", Value::Bool(true)),
        Some(b'f') => literal(i, "false", Value::Bool(false)),
        Some(b'n') => literal(i, "null", Value::Null),
        _ => Err(PErr::expected(i, EXPECTED_VALUE)),
    }
}

fn literal<'a>(i: &'a str, word: &'static str, v: Value<'a>) -> Res<'a, Value<'a>> {
    match tag::<_, _, PErr<'a>>(word).parse(i) {
        Ok((rest, _)) => Ok((rest, v)),
        Err(_) => Err(PErr::expected(i, EXPECTED_VALUE)),
    }
}

/// Fails with [`PErrKind::TooDeep`] if a container at `i` would be nested
/// deeper than [`MAX_DEPTH`].
fn enter<'a>(i: &'a str, depth: usize) -> Result<usize, Err<PErr<'a>>> {
    let depth = depth + 1;
    if depth > MAX_DEPTH {
        return Err(Err::Error(PErr {
            rest: i,
            kind: PErrKind::TooDeep,
        }));
    }
    Ok(depth)
}

/// `{ "key": value, ... }`. At the top level (`top`), the object must not be
/// empty and the values of known keys are recorded (and `rtc.proxy_server`
/// gets its compatibility grammar).
fn object<'a>(i: &'a str, cx: &mut Ctx<'a>, depth: usize, top: bool) -> Res<'a, Object<'a>> {
    let start = i;
    let depth = enter(i, depth)?;
    let mut i = ws(&i[1..]);
    let mut entries: Vec<(Cow<'a, str>, Value<'a>)> = Vec::new();
    if let Some(rest) = i.strip_prefix('}') {
        if top {
            return Err(PErr::expected(
                i,
                "a \"key\": value pair (a parameter object needs at least one)",
            ));
        }
        return Ok((rest, Object::from_unique(entries)));
    }
    // Not empty: allocate once for a typical small object up front.
    entries.reserve(4);
    let mut hashes = None;
    loop {
        if !i.starts_with('"') {
            let what = if entries.is_empty() {
                "a string key `\"…\"` or `}`"
            } else {
                "a string key `\"…\"` (no comma before `}`)"
            };
            return Err(PErr::expected(i, what));
        }
        let key_at = i;
        let (rest, key) = string(i)?;
        if let Some(first) = find_duplicate(&entries, &mut hashes, &key) {
            return Err(Err::Error(PErr {
                rest: key_at,
                kind: PErrKind::DuplicateKey {
                    key: key.into_owned(),
                    first: key_position(start, depth, top, first).unwrap_or(key_at),
                },
            }));
        }
        let known = if top { known_key(&key) } else { None };
        let rest = ws(rest);
        let Some(rest) = rest.strip_prefix(':') else {
            return Err(PErr::expected(rest, "`:` after the key"));
        };
        let rest = ws(rest);
        let (after, (v, items_at)) = member_value(rest, cx, depth, known)?;
        let record = Known {
            index: entries.len(),
            value_at: rest,
            items_at,
        };
        match known {
            Some(KnownKey::EnableProxy) => cx.enable_proxy = Some(record),
            Some(KnownKey::ProxyServer) => cx.proxy_server = Some(record),
            Some(KnownKey::TlsPin) => cx.transport.tls_pin = Some(record),
            Some(KnownKey::TlsPort) => cx.transport.tls_port = Some(record),
            Some(KnownKey::HttpProxy) => cx.transport.http_proxy = Some(record),
            None => {}
        }
        entries.push((key, v));
        let after = ws(after);
        match after.as_bytes().first() {
            Some(b',') => i = ws(&after[1..]),
            Some(b'}') => return Ok((&after[1..], Object::from_unique(entries))),
            _ => return Err(PErr::expected(after, "`,` or `}`")),
        }
    }
}

fn known_key(key: &str) -> Option<KnownKey> {
    match key {
        ENABLE_PROXY => Some(KnownKey::EnableProxy),
        PROXY_SERVER => Some(KnownKey::ProxyServer),
        PROXY_TLS_PIN => Some(KnownKey::TlsPin),
        PROXY_TLS_PORT => Some(KnownKey::TlsPort),
        HTTP_PROXY => Some(KnownKey::HttpProxy),
        _ => None,
    }
}

/// The value of an object member; `rtc.proxy_server` arrays at the top level
/// go through [`proxy_array`], which records element positions.
fn member_value<'a>(
    rest: &'a str,
    cx: &mut Ctx<'a>,
    depth: usize,
    known: Option<KnownKey>,
) -> Res<'a, (Value<'a>, [&'a str; RECORDED_ITEMS])> {
    match known {
        Some(KnownKey::ProxyServer) if rest.starts_with('[') => proxy_array(rest, cx, depth),
        _ => value(rest, cx, depth).map(|(r, v)| (r, (v, [""; RECORDED_ITEMS]))),
    }
}

/// Where the key of member `index` of the object at `start` begins. Only
/// called to report a duplicate key, so the hot path need not record key
/// positions: the members before the duplicate parsed once already, so
/// parsing them again the same way succeeds.
fn key_position(start: &str, depth: usize, top: bool, index: usize) -> Option<&str> {
    let mut cx = Ctx::default();
    let mut i = ws(start.get(1..)?);
    for _ in 0..index {
        let (rest, key) = string(i).ok()?;
        let known = if top { known_key(&key) } else { None };
        let rest = ws(ws(rest).strip_prefix(':')?);
        let (rest, _) = member_value(rest, &mut cx, depth, known).ok()?;
        i = ws(ws(rest).strip_prefix(',')?);
    }
    Some(i)
}

/// Index of an existing entry with key `key`, if any. Small objects are
/// scanned; from [`LINEAR_DUPLICATE_SCAN`] keys on, a set of key hashes
/// (randomly seeded, so inputs cannot be crafted to collide) avoids
/// quadratic time.
fn find_duplicate(
    entries: &[(Cow<'_, str>, Value<'_>)],
    hashes: &mut Option<KeyHashes>,
    key: &str,
) -> Option<usize> {
    let linear = |entries: &[(Cow<'_, str>, Value<'_>)]| entries.iter().position(|(k, _)| k == key);
    if entries.len() < LINEAR_DUPLICATE_SCAN {
        return linear(entries);
    }
    let hashes = hashes.get_or_insert_with(|| {
        let mut hashes = KeyHashes::new();
        for (k, _) in entries {
            hashes.insert(k);
        }
        hashes
    });
    if hashes.insert(key) {
        None
    } else {
        // Same hash: a duplicate or (rarely) a collision; look properly.
        linear(entries)
    }
}

/// The set of key hashes of a large object. The hash reads keys a word at a
/// time (SipHash was 15 % of parsing a 4 KiB object) and is seeded per object
/// from the standard library's random keys, so inputs cannot be prepared to
/// collide; a collision only costs a linear scan.
struct KeyHashes {
    seed: u64,
    set: HashSet<u64, BuildHasherDefault<PassThrough>>,
}

impl KeyHashes {
    fn new() -> Self {
        Self {
            seed: RandomState::new().hash_one(0u64),
            set: HashSet::default(),
        }
    }

    /// Adds the hash of `key`; `false` if it was already there.
    fn insert(&mut self, key: &str) -> bool {
        let mut h = self.seed ^ key.len() as u64;
        for chunk in key.as_bytes().chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
        // A final mix so the low bits the table uses depend on every word.
        h ^= h >> 29;
        self.set.insert(h)
    }
}

/// A `Hasher` for values that are already hashes.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// `[ value, ... ]`.
fn array<'a>(i: &'a str, cx: &mut Ctx<'a>, depth: usize) -> Res<'a, Vec<Value<'a>>> {
    let depth = enter(i, depth)?;
    let mut i = ws(&i[1..]);
    let mut items = Vec::new();
    if let Some(rest) = i.strip_prefix(']') {
        return Ok((rest, items));
    }
    items.reserve(4);
    loop {
        let (rest, v) = value(i, cx, depth)?;
        items.push(v);
        let rest = ws(rest);
        match rest.as_bytes().first() {
            Some(b',') => i = ws(&rest[1..]),
            Some(b']') => return Ok((&rest[1..], items)),
            _ => return Err(PErr::expected(rest, "`,` or `]`")),
        }
    }
}

/// The array value of top-level `rtc.proxy_server`: like [`array`], but it
/// records where the first elements start, and the second element (the
/// host) is parsed by [`proxy_host`].
fn proxy_array<'a>(
    i: &'a str,
    cx: &mut Ctx<'a>,
    depth: usize,
) -> Res<'a, (Value<'a>, [&'a str; RECORDED_ITEMS])> {
    let depth = enter(i, depth)?;
    let mut i = ws(&i[1..]);
    let mut items = Vec::new();
    let mut items_at = [""; RECORDED_ITEMS];
    if let Some(rest) = i.strip_prefix(']') {
        return Ok((rest, (Value::Array(items), items_at)));
    }
    items.reserve(3);
    loop {
        if let Some(slot) = items_at.get_mut(items.len()) {
            *slot = i;
        }
        let (rest, v) = if items.len() == 1 {
            proxy_host(i, cx, depth)?
        } else {
            value(i, cx, depth)?
        };
        items.push(v);
        let rest = ws(rest);
        match rest.as_bytes().first() {
            Some(b',') => i = ws(&rest[1..]),
            Some(b']') => return Ok((&rest[1..], (Value::Array(items), items_at))),
            _ => return Err(PErr::expected(rest, "`,` or `]`")),
        }
    }
}

/// The host element of `rtc.proxy_server`, with the compatibility extension
/// for the guide's sample whose inner quotes are not escaped:
///
/// ```text
/// host      = json-value                      ; tried first, as standard JSON
///           / %x22 "[" ws [ string *( ws "," ws string ) ] ws "]" %x22
/// ```
///
/// The second form is tried only when the element starts with `"[` and the
/// standard reading fails: either the string does not parse, or it is not
/// followed (after whitespace) by `,` or `]` as an array element must be. So
/// valid JSON is always read as standard JSON. The result is a string holding
/// the text between the outer quotes, e.g. `["192.168.0.112","127.0.0.1"]`,
/// the same value the documented escaped form gives.
fn proxy_host<'a>(i: &'a str, cx: &mut Ctx<'a>, depth: usize) -> Res<'a, Value<'a>> {
    if !i.starts_with("\"[") {
        return value(i, cx, depth);
    }
    let standard = match string(i) {
        Ok((rest, s)) => {
            let after = ws(rest);
            if after.starts_with(',') || after.starts_with(']') {
                return Ok((rest, Value::String(s)));
            }
            PErr {
                rest: after,
                kind: PErrKind::Expected("`,` or `]`"),
            }
        }
        Err(Err::Error(e) | Err::Failure(e)) => e,
        Err(Err::Incomplete(_)) => unreachable_incomplete(i),
    };
    match unescaped_list(i) {
        Ok(ok) => Ok(ok),
        Err(Err::Error(e) | Err::Failure(e)) => Err(Err::Error(standard.furthest(e))),
        Err(Err::Incomplete(_)) => Err(Err::Error(unreachable_incomplete(i))),
    }
}

/// Complete parsers never return `Incomplete`; should one, it is reported as
/// a syntax error rather than a panic.
fn unreachable_incomplete(i: &str) -> PErr<'_> {
    PErr {
        rest: i,
        kind: PErrKind::Expected("valid JSON"),
    }
}

/// `"[ "a", "b" ]"` with unescaped inner quotes: see [`proxy_host`].
fn unescaped_list(i: &str) -> Res<'_, Value<'_>> {
    // Skip `"`; `list` starts at `[`.
    let list = &i[1..];
    let mut rest = ws(&list[1..]);
    if !rest.starts_with(']') {
        let mut what = "a quoted IP address or `]`";
        loop {
            if !rest.starts_with('"') {
                return Err(PErr::expected(rest, what));
            }
            what = "a quoted IP address after `,`";
            let (r, _) = string(rest)?;
            let r = ws(r);
            match r.strip_prefix(',') {
                Some(r) => rest = ws(r),
                None => {
                    rest = r;
                    break;
                }
            }
        }
    }
    let Some(after_bracket) = rest.strip_prefix(']') else {
        return Err(PErr::expected(rest, "`,` or `]`"));
    };
    let Some(after_quote) = after_bracket.strip_prefix('"') else {
        return Err(PErr::expected(after_bracket, "`\"` closing the IP list"));
    };
    let raw = &list[..list.len() - after_bracket.len()];
    Ok((after_quote, Value::String(Cow::Borrowed(raw))))
}

/// A JSON string: borrowed when it has no escapes.
fn string(i: &str) -> Res<'_, Cow<'_, str>> {
    let bytes = i.as_bytes();
    // bytes[0] is the opening quote (callers dispatch on it).
    let mut p = 1 + plain_prefix_len(&bytes[1..]);
    while let Some(&b) = bytes.get(p) {
        match b {
            b'"' => return Ok((&i[p + 1..], Cow::Borrowed(&i[1..p]))),
            b'\\' => return string_escaped(i, p),
            0..=0x1f => return Err(control_in_string(&i[p..])),
            _ => p += 1,
        }
    }
    Err(PErr::expected(&i[p..], "a closing `\"`"))
}

/// How many leading bytes of `bytes` certainly need no attention inside a
/// string (no `"`, `\` or control character), checked eight at a time.
/// A multiple of 8; the byte loop after it finds the exact position.
fn plain_prefix_len(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Non-zero iff some byte of `x` is below `n` (n <= 128), the classic
    // "has less" bit trick.
    let has_less = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    let mut p = 0;
    for chunk in bytes.chunks_exact(8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let special = has_less(w ^ (ONES * u64::from(b'"')), 1)
            | has_less(w ^ (ONES * u64::from(b'\\')), 1)
            | has_less(w, 0x20);
        if special != 0 {
            break;
        }
        p += 8;
    }
    p
}

fn control_in_string(rest: &str) -> Err<PErr<'_>> {
    PErr::expected(
        rest,
        "a closing `\"` (control characters in strings must be escaped, e.g. \\n)",
    )
}

/// The slow path of [`string`]: decodes escapes into an owned string. `p` is
/// the offset of the first backslash.
fn string_escaped(i: &str, mut p: usize) -> Res<'_, Cow<'_, str>> {
    let bytes = i.as_bytes();
    // Room for the rest of a typical string, so short strings with escapes
    // do not reallocate; escapes only shrink the text.
    let mut out = String::with_capacity(i.len().min(p + 64));
    out.push_str(&i[1..p]);
    let mut run = p;
    while let Some(&b) = bytes.get(p) {
        match b {
            b'"' => {
                out.push_str(&i[run..p]);
                return Ok((&i[p + 1..], Cow::Owned(out)));
            }
            b'\\' => {
                out.push_str(&i[run..p]);
                let esc = p + 1;
                let decoded = match bytes.get(esc) {
                    Some(b'"') => '"',
                    Some(b'\\') => '\\',
                    Some(b'/') => '/',
                    Some(b'b') => '\u{8}',
                    Some(b'f') => '\u{c}',
                    Some(b'n') => '\n',
                    Some(b'r') => '\r',
                    Some(b't') => '\t',
                    Some(b'u') => {
                        let (c, next) = unicode_escape(i, p)?;
                        out.push(c);
                        p = next;
                        run = p;
                        continue;
                    }
                    _ => {
                        return Err(PErr::expected(
                            &i[esc..],
                            "an escape character: one of \" \\ / b f n r t u",
                        ));
                    }
                };
                out.push(decoded);
                p = esc + 1;
                run = p;
            }
            0..=0x1f => return Err(control_in_string(&i[p..])),
            _ => p += 1,
        }
    }
    Err(PErr::expected(&i[p..], "a closing `\"`"))
}

/// Decodes `\uXXXX` (and a following low surrogate) at byte `p` of `i`.
/// Returns the character and the offset just past the escape(s).
fn unicode_escape(i: &str, p: usize) -> Result<(char, usize), Err<PErr<'_>>> {
    let first = hex4(i, p + 2)?;
    match first {
        0xD800..=0xDBFF => {
            let next = p + 6;
            let low = if i[next..].starts_with("\\u") {
                Some(hex4(i, next + 2)?)
            } else {
                None
            };
            match low {
                Some(low @ 0xDC00..=0xDFFF) => {
                    let c = 0x10000 + ((first - 0xD800) << 10) + (low - 0xDC00);
                    match char::from_u32(c) {
                        Some(c) => Ok((c, next + 6)),
                        None => Err(PErr::expected(&i[p..], "a valid surrogate pair")),
                    }
                }
                _ => Err(PErr::expected(
                    &i[next..],
                    "a low surrogate escape `\\uDC00`..`\\uDFFF` completing the pair",
                )),
            }
        }
        0xDC00..=0xDFFF => Err(PErr::expected(
            &i[p..],
            "a high surrogate escape `\\uD800`..`\\uDBFF` before a low surrogate",
        )),
        // Not a surrogate, so always a valid scalar value.
        _ => match char::from_u32(first) {
            Some(c) => Ok((c, p + 6)),
            None => Err(PErr::expected(&i[p..], "a valid `\\u` escape")),
        },
    }
}

/// Four hex digits at byte `at` of `i`.
fn hex4(i: &str, at: usize) -> Result<u32, Err<PErr<'_>>> {
    let mut v = 0u32;
    for k in 0..4 {
        let digit = i
            .as_bytes()
            .get(at + k)
            .and_then(|&b| char::from(b).to_digit(16));
        match digit {
            Some(d) => v = (v << 4) | d,
            None => {
                return Err(PErr::expected(&i[at + k..], "four hex digits after `\\u`"));
            }
        }
    }
    Ok(v)
}

/// A JSON number.
fn number(i: &str) -> Res<'_, Number> {
    let bytes = i.as_bytes();
    let digits_from = |mut p: usize| {
        while bytes.get(p).is_some_and(u8::is_ascii_digit) {
            p += 1;
        }
        p
    };
    let negative = bytes.first() == Some(&b'-');
    let mut p = usize::from(negative);
    match bytes.get(p) {
        Some(b'0') => {
            p += 1;
            if bytes.get(p).is_some_and(u8::is_ascii_digit) {
                return Err(PErr::expected(
                    &i[p..],
                    "`.`, `e` or the end of the number (JSON numbers have no leading zeros)",
                ));
            }
        }
        Some(b'1'..=b'9') => p = digits_from(p + 1),
        _ => return Err(PErr::expected(&i[p..], "a digit")),
    }
    let int_end = p;
    if bytes.get(p) == Some(&b'.') {
        p += 1;
        if !bytes.get(p).is_some_and(u8::is_ascii_digit) {
            return Err(PErr::expected(&i[p..], "a digit after the decimal point"));
        }
        p = digits_from(p);
    }
    if matches!(bytes.get(p), Some(b'e' | b'E')) {
        p += 1;
        if matches!(bytes.get(p), Some(b'+' | b'-')) {
            p += 1;
        }
        if !bytes.get(p).is_some_and(u8::is_ascii_digit) {
            return Err(PErr::expected(&i[p..], "a digit in the exponent"));
        }
        p = digits_from(p);
    }
    let text = &i[..p];
    let rest = &i[p..];
    if p == int_end {
        let digits = &bytes[usize::from(negative)..p];
        let magnitude = digits.iter().try_fold(0u64, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        });
        match (negative, magnitude) {
            (false, Some(n)) => return Ok((rest, Number::pos_int(n))),
            // `-0` is a float, as in serde_json, so it round-trips as `-0.0`.
            (true, Some(0)) => return Ok((rest, Number::float(-0.0))),
            (true, Some(n)) => {
                if let Some(neg) = 0i64.checked_sub_unsigned(n) {
                    return Ok((rest, Number::neg_int(neg)));
                }
            }
            // Too large for an integer: a float, like serde_json.
            (_, None) => {}
        }
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok((rest, Number::float(f))),
        _ => Err(Err::Error(PErr {
            rest: i,
            kind: PErrKind::NumberOutOfRange(text),
        })),
    }
}
