//! The JSON value tree: [`Value`], [`Number`] and the insertion-ordered [`Object`].

use std::borrow::Cow;
use std::fmt;

/// A JSON value, borrowing its strings from the input where it can.
///
/// Strings without escapes are `Cow::Borrowed` slices of the parsed input;
/// only strings with escapes own their decoded text. [`Value::into_owned`]
/// detaches a value from the input.
///
/// `Display` writes canonical compact JSON (see [`crate::to_json`]).
///
/// ```
/// use cloudproxy_params::Value;
///
/// let v = Value::parse(r#"[1, "two", {"three": 3.0}]"#)?;
/// assert_eq!(v.as_array().map(Vec::len), Some(3));
/// assert_eq!(v.to_string(), r#"[1,"two",{"three":3.0}]"#);
/// # Ok::<(), cloudproxy_params::ParamError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value<'a> {
    /// `null`.
    #[default]
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number.
    Number(Number),
    /// A string, decoded.
    String(Cow<'a, str>),
    /// An array.
    Array(Vec<Self>),
    /// An object, in insertion order.
    Object(Object<'a>),
}

impl<'a> Value<'a> {
    /// Parses any single JSON value (with surrounding whitespace), with the
    /// same limits as [`crate::parse`]: [`MAX_INPUT_LEN`](crate::MAX_INPUT_LEN)
    /// and [`MAX_DEPTH`](crate::MAX_DEPTH).
    ///
    /// # Errors
    /// A [`ParamError`](crate::ParamError) locating the first fault.
    pub fn parse(input: &'a str) -> Result<Self, crate::ParamError> {
        crate::parser::parse_value(input)
    }

    /// Copies every borrowed string so the value no longer borrows the input.
    #[must_use]
    pub fn into_owned(self) -> Value<'static> {
        match self {
            Self::Null => Value::Null,
            Self::Bool(b) => Value::Bool(b),
            Self::Number(n) => Value::Number(n),
            Self::String(s) => Value::String(Cow::Owned(s.into_owned())),
            Self::Array(items) => Value::Array(items.into_iter().map(Value::into_owned).collect()),
            Self::Object(object) => Value::Object(object.into_owned()),
        }
    }

    /// The JSON type name: `"null"`, `"boolean"`, `"number"`, `"string"`,
    /// `"array"` or `"object"`.
    #[must_use]
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "boolean",
            Self::Number(_) => "number",
            Self::String(_) => "string",
            Self::Array(_) => "array",
            Self::Object(_) => "object",
        }
    }

    /// `true` for `null`.
    #[must_use]
    pub fn is_null(&self) -> bool {
        matches!(self, Self::Null)
    }

    /// The boolean, if this is one.
    #[must_use]
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The number, if this is one.
    #[must_use]
    pub fn as_number(&self) -> Option<&Number> {
        match self {
            Self::Number(n) => Some(n),
            _ => None,
        }
    }

    /// The number as `u64`, if this is a non-negative integer that fits.
    #[must_use]
    pub fn as_u64(&self) -> Option<u64> {
        self.as_number().and_then(Number::as_u64)
    }

    /// The number as `i64`, if this is an integer that fits.
    #[must_use]
    pub fn as_i64(&self) -> Option<i64> {
        self.as_number().and_then(Number::as_i64)
    }

    /// The number as `f64` (integers are converted, possibly losing precision).
    #[must_use]
    pub fn as_f64(&self) -> Option<f64> {
        self.as_number().map(Number::as_f64)
    }

    /// The string, if this is one.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    #[must_use]
    pub fn as_array(&self) -> Option<&Vec<Self>> {
        match self {
            Self::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The object, if this is one.
    #[must_use]
    pub fn as_object(&self) -> Option<&Object<'a>> {
        match self {
            Self::Object(object) => Some(object),
            _ => None,
        }
    }

    /// The value under `key`, if this is an object that has it.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Self> {
        self.as_object().and_then(|o| o.get(key))
    }
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        crate::serialize::write_value(&mut out, self);
        f.write_str(&out)
    }
}

impl From<bool> for Value<'_> {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}

impl From<Number> for Value<'_> {
    fn from(n: Number) -> Self {
        Self::Number(n)
    }
}

impl From<u64> for Value<'_> {
    fn from(n: u64) -> Self {
        Self::Number(n.into())
    }
}

impl From<i64> for Value<'_> {
    fn from(n: i64) -> Self {
        Self::Number(n.into())
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(s: &'a str) -> Self {
        Self::String(Cow::Borrowed(s))
    }
}

impl From<String> for Value<'_> {
    fn from(s: String) -> Self {
        Self::String(Cow::Owned(s))
    }
}

impl<'a> From<Vec<Self>> for Value<'a> {
    fn from(items: Vec<Self>) -> Self {
        Self::Array(items)
    }
}

impl<'a> From<Object<'a>> for Value<'a> {
    fn from(object: Object<'a>) -> Self {
        Self::Object(object)
    }
}

/// A JSON number: a non-negative integer, a negative integer or a finite float.
///
/// Integers that fit in `u64` (non-negative) or `i64` (negative) stay exact;
/// anything with a fraction or exponent, larger integers and `-0` are `f64`.
/// Non-finite floats cannot be represented (JSON has no NaN or infinity).
///
/// ```
/// use cloudproxy_params::Number;
///
/// assert_eq!(Number::from(443u64).as_u64(), Some(443));
/// assert!(Number::from_f64(f64::NAN).is_none());
/// assert_eq!(Number::from_f64(0.5).map(|n| n.to_string()), Some("0.5".to_owned()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Number(N);

#[derive(Debug, Clone, Copy, PartialEq)]
enum N {
    /// Always a non-negative integer.
    PosInt(u64),
    /// Always a negative integer.
    NegInt(i64),
    /// Always finite.
    Float(f64),
}

impl Number {
    /// A float number, or `None` if `f` is NaN or infinite.
    #[must_use]
    pub fn from_f64(f: f64) -> Option<Self> {
        f.is_finite().then_some(Self(N::Float(f)))
    }

    /// `true` if the number is an integer stored exactly (`u64` or `i64`).
    #[must_use]
    pub fn is_integer(&self) -> bool {
        !matches!(self.0, N::Float(_))
    }

    /// `true` if the number is stored as a float.
    #[must_use]
    pub fn is_f64(&self) -> bool {
        matches!(self.0, N::Float(_))
    }

    /// The number as `u64`, if it is a non-negative integer.
    #[must_use]
    pub fn as_u64(&self) -> Option<u64> {
        match self.0 {
            N::PosInt(n) => Some(n),
            _ => None,
        }
    }

    /// The number as `i64`, if it is an integer that fits.
    #[must_use]
    pub fn as_i64(&self) -> Option<i64> {
        match self.0 {
            N::PosInt(n) => i64::try_from(n).ok(),
            N::NegInt(n) => Some(n),
            N::Float(_) => None,
        }
    }

    /// The number as `f64`; integers beyond 2^53 lose precision.
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn as_f64(&self) -> f64 {
        match self.0 {
            N::PosInt(n) => n as f64,
            N::NegInt(n) => n as f64,
            N::Float(f) => f,
        }
    }

    /// Dispatches to `u64`, `i64` or `f64` for serde.
    pub(crate) fn visit<'de, V: serde::de::Visitor<'de>, E: serde::de::Error>(
        self,
        visitor: V,
    ) -> Result<V::Value, E> {
        match self.0 {
            N::PosInt(n) => visitor.visit_u64(n),
            N::NegInt(n) => visitor.visit_i64(n),
            N::Float(f) => visitor.visit_f64(f),
        }
    }

    /// Writes the canonical JSON form: integers in decimal; floats in the
    /// shorter of Rust's shortest round-trip forms `{:?}` (`0.5`, `2.0`) and
    /// `{:e}` (`1e15`), preferring `{:?}` on a tie. Both always have a `.` or
    /// an exponent, so the value reparses as a float, and both are valid JSON
    /// for every finite `f64`.
    pub(crate) fn write(&self, out: &mut String) {
        use fmt::Write as _;
        // Writing to a String cannot fail.
        let _ = match self.0 {
            N::PosInt(n) => write!(out, "{n}"),
            N::NegInt(n) => write!(out, "{n}"),
            N::Float(f) => {
                let plain = format!("{f:?}");
                let exp = format!("{f:e}");
                out.push_str(if exp.len() < plain.len() {
                    &exp
                } else {
                    &plain
                });
                Ok(())
            }
        };
    }
}

impl From<u64> for Number {
    fn from(n: u64) -> Self {
        Self(N::PosInt(n))
    }
}

impl From<u32> for Number {
    fn from(n: u32) -> Self {
        Self(N::PosInt(n.into()))
    }
}

impl From<u16> for Number {
    fn from(n: u16) -> Self {
        Self(N::PosInt(n.into()))
    }
}

impl From<i64> for Number {
    fn from(n: i64) -> Self {
        match u64::try_from(n) {
            Ok(n) => Self(N::PosInt(n)),
            Err(_) => Self(N::NegInt(n)),
        }
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        self.write(&mut out);
        f.write_str(&out)
    }
}

/// A JSON object: key/value pairs in insertion order, keys unique.
///
/// Lookups are linear, which beats hashing for the handful of keys a parameter
/// string holds. Equality is order-sensitive, matching the fact that parsing
/// and serializing preserve order.
///
/// ```
/// use cloudproxy_params::{Object, Value};
///
/// let mut o = Object::new();
/// o.insert("b", Value::from(1u64));
/// o.insert("a", Value::from(true));
/// assert_eq!(o.insert("b", Value::from(2u64)), Some(Value::from(1u64)));
/// assert_eq!(o.keys().collect::<Vec<_>>(), ["b", "a"]);
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Object<'a> {
    entries: Vec<(Cow<'a, str>, Value<'a>)>,
}

impl<'a> Object<'a> {
    /// An empty object.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds an object from pairs already known to have unique keys.
    pub(crate) fn from_unique(entries: Vec<(Cow<'a, str>, Value<'a>)>) -> Self {
        Self { entries }
    }

    /// Number of pairs.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// `true` if there are no pairs.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value under `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value)
    }

    /// `true` if `key` is present.
    #[must_use]
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`. An existing key keeps its position and its old
    /// value is returned; a new key goes at the end.
    pub fn insert(&mut self, key: impl Into<Cow<'a, str>>, value: Value<'a>) -> Option<Value<'a>> {
        let key = key.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some((_, slot)) => Some(std::mem::replace(slot, value)),
            None => {
                self.entries.push((key, value));
                None
            }
        }
    }

    /// Removes `key`, keeping the order of the others.
    pub fn remove(&mut self, key: &str) -> Option<Value<'a>> {
        let index = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(index).1)
    }

    /// The pairs in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value<'a>)> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v))
    }

    /// The keys in order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_ref())
    }

    /// The raw pairs, for the serde adapter.
    pub(crate) fn entries(&self) -> &[(Cow<'a, str>, Value<'a>)] {
        &self.entries
    }

    /// Copies every borrowed string so the object no longer borrows the input.
    #[must_use]
    pub fn into_owned(self) -> Object<'static> {
        Object {
            entries: self
                .entries
                .into_iter()
                .map(|(k, v)| (Cow::Owned(k.into_owned()), v.into_owned()))
                .collect(),
        }
    }
}

impl<'a, K: Into<Cow<'a, str>>> FromIterator<(K, Value<'a>)> for Object<'a> {
    /// Collects pairs; a repeated key keeps its first position and its last value.
    fn from_iter<I: IntoIterator<Item = (K, Value<'a>)>>(iter: I) -> Self {
        let mut object = Self::new();
        for (k, v) in iter {
            object.insert(k, v);
        }
        object
    }
}

impl<'a> IntoIterator for Object<'a> {
    type Item = (Cow<'a, str>, Value<'a>);
    type IntoIter = std::vec::IntoIter<(Cow<'a, str>, Value<'a>)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl fmt::Display for Object<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        crate::serialize::write_object(&mut out, self);
        f.write_str(&out)
    }
}

// Constructors the parser uses; kept here so `N` stays private to this module.
impl Number {
    pub(crate) fn pos_int(n: u64) -> Self {
        Self(N::PosInt(n))
    }

    /// `n` must be negative.
    pub(crate) fn neg_int(n: i64) -> Self {
        debug_assert!(n < 0);
        Self(N::NegInt(n))
    }

    /// `f` must be finite.
    pub(crate) fn float(f: f64) -> Self {
        debug_assert!(f.is_finite());
        Self(N::Float(f))
    }
}
