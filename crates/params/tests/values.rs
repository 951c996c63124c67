//! Values of other keys: order, escapes, numbers, borrowing, serialization.

use std::borrow::Cow;

use cloudproxy_params::{ErrorKind, Number, Object, Value, parse, to_json};

#[test]
fn other_keys_keep_order_and_values() {
    let input = r#"{"zeta":1,"rtc.enable_proxy":true,"alpha":{"n":[1,2]},"mid":"s","nil":null}"#;
    let p = parse(input).unwrap();
    let keys: Vec<&str> = p.others().map(|(k, _)| k).collect();
    assert_eq!(keys, ["zeta", "alpha", "mid", "nil"]);
    assert_eq!(p.get("zeta").and_then(Value::as_u64), Some(1));
    assert_eq!(
        p.get("alpha")
            .and_then(|v| v.get("n"))
            .and_then(Value::as_array)
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(p.get("mid").and_then(Value::as_str), Some("s"));
    assert!(p.get("nil").is_some_and(Value::is_null));
    // Known keys are readable raw too.
    assert_eq!(p.get("rtc.enable_proxy"), Some(&Value::Bool(true)));
    assert_eq!(p.as_object().len(), 5);
    assert_eq!(p.to_json(), input);
}

#[test]
fn whitespace_wherever_json_allows_it() {
    let input = " \t\r\n{ \"rtc.enable_proxy\" \n:\r true , \"a\" : [ 1 , { } , [ ] ] }\n ";
    let p = parse(input).unwrap();
    assert_eq!(p.enable_proxy(), Some(true));
    assert_eq!(p.to_json(), r#"{"rtc.enable_proxy":true,"a":[1,{},[]]}"#);
}

#[test]
fn every_string_escape() {
    let p = parse(r#"{"s":"q\" b\\ s\/ \b\f\n\r\t \u0041\u00e9\u4e2d \ud83d\ude00 é"}"#).unwrap();
    assert_eq!(
        p.get("s").and_then(Value::as_str),
        Some("q\" b\\ s/ \u{8}\u{c}\n\r\t Aé中 😀 é")
    );
    // Upper-case hex too.
    let p = parse(r#"{"s":"\uD83D\uDE00\u00E9"}"#).unwrap();
    assert_eq!(p.get("s").and_then(Value::as_str), Some("😀é"));
}

#[test]
fn strings_without_escapes_are_borrowed() {
    let p = parse(r#"{"plain":"abc","esc":"a\nb"}"#).unwrap();
    assert!(matches!(
        p.get("plain"),
        Some(Value::String(Cow::Borrowed("abc")))
    ));
    assert!(matches!(p.get("esc"), Some(Value::String(Cow::Owned(s))) if s == "a\nb"));
    let owned = p.clone().into_owned();
    assert_eq!(owned, p);
}

#[test]
fn numbers() {
    let p = parse(
        r#"{"u":18446744073709551615,"big":18446744073709551616,"i":-9223372036854775808,
            "bigneg":-9223372036854775809,"f":-1.5e-3,"z":0,"nz":-0,"e":1E2,"d":0.1}"#,
    )
    .unwrap();
    let n = |k: &str| *p.get(k).and_then(Value::as_number).unwrap();
    assert_eq!(n("u").as_u64(), Some(u64::MAX));
    assert!(n("big").is_f64());
    assert_eq!(n("big").as_f64(), 18_446_744_073_709_551_616.0);
    assert_eq!(n("i").as_i64(), Some(i64::MIN));
    assert!(n("bigneg").is_f64());
    assert_eq!(n("f").as_f64(), -1.5e-3);
    assert_eq!(n("z").as_u64(), Some(0));
    assert!(n("nz").is_f64() && n("nz").as_f64().is_sign_negative());
    assert!(n("e").is_f64());
    assert_eq!(n("e").as_f64(), 100.0);
    assert_eq!(
        p.to_json(),
        r#"{"u":18446744073709551615,"big":1.8446744073709552e19,"i":-9223372036854775808,"bigneg":-9.223372036854776e18,"f":-0.0015,"z":0,"nz":-0.0,"e":1e2,"d":0.1}"#
    );
    assert_eq!(parse(&p.to_json()).unwrap(), p);
}

#[test]
fn serializer_escapes_control_characters() {
    let v = Value::from("\u{0}\u{1f}\u{7f}\"\\/\u{8}\u{c}\n\r\té");
    // DEL (0x7f) and non-ASCII pass through; JSON only requires escaping below 0x20.
    assert_eq!(
        to_json(&v),
        "\"\\u0000\\u001f\u{7f}\\\"\\\\/\\b\\f\\n\\r\\té\""
    );
    assert_eq!(Value::parse(&to_json(&v)).unwrap(), v);
}

#[test]
fn value_parse_accepts_any_json_value() {
    assert_eq!(Value::parse(" null ").unwrap(), Value::Null);
    assert_eq!(Value::parse("[]").unwrap(), Value::Array(vec![]));
    assert_eq!(Value::parse("{}").unwrap(), Value::Object(Object::new()));
    assert_eq!(
        Value::parse("-7").unwrap(),
        Value::Number(Number::from(-7i64))
    );
    assert_eq!(Value::parse("[1] x").unwrap_err().offset(), Some(4));
}

#[test]
fn built_values_serialize() {
    let mut o = Object::new();
    o.insert(
        "b",
        Value::from(vec![Value::from(1u64), Value::from(-2i64)]),
    );
    o.insert(
        String::from("a"),
        Value::from(Number::from_f64(2.5).unwrap()),
    );
    assert_eq!(Value::from(o).to_string(), r#"{"b":[1,-2],"a":2.5}"#);
}

/// Valid JSON is never read through the compatibility extension: here the
/// host element is the one-character string "[", and the array has four
/// elements, which is a shape error for rtc.proxy_server, not a list.
#[test]
fn extension_does_not_change_valid_json() {
    let input = r#"{"rtc.proxy_server":[2, "[", "]", 0]}"#;
    let err = parse(input).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongType);
    assert_eq!(err.offset(), Some(34));
    // And as any other key, the same text is ordinary JSON.
    let p = parse(r#"{"x":[2, "[", "]", 0]}"#).unwrap();
    assert_eq!(p.get("x").unwrap().to_string(), r#"[2,"[","]",0]"#);
}

#[test]
fn unescaped_form_with_whitespace_and_ipv6() {
    let p = parse(r#"{"rtc.proxy_server":[2,"[ "::1" , "10.1.2.3" ]",8000]}"#).unwrap();
    let server = p.proxy_server().unwrap();
    assert_eq!(server.port(), 8000);
    assert_eq!(server.to_string(), "IP list ::1, 10.1.2.3, port 8000");
    // The raw text between the outer quotes is kept as the string value.
    assert_eq!(
        p.get("rtc.proxy_server").unwrap().to_string(),
        r#"[2,"[ \"::1\" , \"10.1.2.3\" ]",8000]"#
    );
}
