//! Canonical JSON output: compact, keys in order, minimal string escapes.

use crate::value::{Object, Value};

/// Serializes `value` to canonical compact JSON.
///
/// The output has no whitespace, keeps object keys in order, escapes in
/// strings only `"`, `\` and control characters (`\b \f \n \r \t` by name,
/// the others as `\u00XX`), writes integers in decimal and floats in their
/// shortest round-trip form with a `.` or an exponent. Parsing the output
/// gives back an equal value.
///
/// ```
/// use cloudproxy_params::{to_json, Value};
///
/// let v = Value::parse("{ \"a\" : [1, -2, 0.5, \"tab\\there\", null] }")?;
/// assert_eq!(to_json(&v), r#"{"a":[1,-2,0.5,"tab\there",null]}"#);
/// assert_eq!(Value::parse(&to_json(&v))?, v);
/// # Ok::<(), cloudproxy_params::ParamError>(())
/// ```
#[must_use]
pub fn to_json(value: &Value<'_>) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

pub(crate) fn write_value(out: &mut String, value: &Value<'_>) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => n.write(out),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(object) => write_object(out, object),
    }
}

pub(crate) fn write_object(out: &mut String, object: &Object<'_>) {
    out.push('{');
    for (n, (key, value)) in object.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        write_string(out, key);
        out.push(':');
        write_value(out, value);
    }
    out.push('}');
}

pub(crate) fn write_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut run = 0;
    for (p, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[run..p]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escape);
        }
        run = p + 1;
    }
    out.push_str(&s[run..]);
    out.push('"');
}
