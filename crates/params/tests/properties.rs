//! Property tests: serialize → parse round trips, and no input panics.

use std::net::IpAddr;

use cloudproxy_params::{
    ENABLE_PROXY_KEY, Number, Object, PROXY_SERVER_KEY, ProxyServer, Value, fuzzing, parse,
    parse_bytes, to_json,
};
use proptest::collection::vec;
use proptest::prelude::*;

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        // Any Unicode, control characters included.
        vec(any::<char>(), 0..40).prop_map(String::from_iter),
        // Mostly the characters that need escaping.
        "[a\"\\\\/\u{0}-\u{1f}\u{7f}é😀 ]{0,40}",
    ]
}

fn arb_number() -> impl Strategy<Value = Number> {
    prop_oneof![
        any::<u64>().prop_map(Number::from),
        any::<i64>().prop_map(Number::from),
        any::<f64>().prop_filter_map("finite", Number::from_f64),
        (-1000i64..1000, -30i32..30).prop_filter_map("finite", |(m, e)| Number::from_f64(
            m as f64 * 10f64.powi(e)
        )),
    ]
}

fn arb_value() -> impl Strategy<Value = Value<'static>> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        arb_number().prop_map(Value::Number),
        arb_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((arb_string(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// A top-level parameter object: at least one pair, no known keys (those
/// must have valid typed values, covered separately).
fn arb_params_object() -> impl Strategy<Value = Object<'static>> {
    vec(
        (
            arb_string().prop_filter("not a known key", |k| {
                k != ENABLE_PROXY_KEY && k != PROXY_SERVER_KEY
            }),
            arb_value(),
        ),
        1..6,
    )
    .prop_map(|pairs| pairs.into_iter().collect())
}

fn arb_host() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-zA-Z0-9]{1,8}){0,3}"
}

fn arb_proxy_server() -> impl Strategy<Value = ProxyServer> {
    prop_oneof![
        (arb_host(), any::<u16>()).prop_map(|(h, p)| ProxyServer::domain(h, p).unwrap()),
        (vec(any::<IpAddr>(), 1..5), any::<u16>())
            .prop_map(|(ips, p)| ProxyServer::ip_list(ips, p).unwrap()),
    ]
}

/// Inserts optional JSON whitespace between the tokens of canonical output
/// (outside strings), to check it does not change the value.
fn sprinkle_whitespace(json: &str, ws: &[u8]) -> String {
    let mut out = String::new();
    let mut in_string = false;
    let mut escaped = false;
    let mut k = 0;
    for c in json.chars() {
        out.push(c);
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if c == '"' {
            in_string = true;
        } else if matches!(c, '{' | '}' | '[' | ']' | ',' | ':') {
            let pick = ws.get(k).copied().unwrap_or(0);
            k += 1;
            out.push_str(["", " ", "\n", "\t", "\r\n "][usize::from(pick % 5)]);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn value_round_trip(v in arb_value()) {
        let json = to_json(&v);
        let back = Value::parse(&json).unwrap();
        prop_assert_eq!(&back, &v);
        // Canonical: serializing again gives the same text.
        prop_assert_eq!(to_json(&back), json);
    }

    #[test]
    fn params_round_trip(object in arb_params_object(), ws in vec(any::<u8>(), 0..64)) {
        let json = to_json(&Value::Object(object.clone()));
        let p = parse(&json).unwrap();
        prop_assert_eq!(p.as_object(), &object);
        prop_assert_eq!(p.enable_proxy(), None);
        prop_assert_eq!(p.others().count(), object.len());
        prop_assert_eq!(p.to_json(), json.clone());
        let spaced = sprinkle_whitespace(&json, &ws);
        let p2 = parse(&spaced).unwrap();
        prop_assert_eq!(p2, p);
    }

    #[test]
    fn proxy_server_round_trip(server in arb_proxy_server(), enable in any::<Option<bool>>()) {
        let mut object = Object::new();
        if let Some(enable) = enable {
            object.insert(ENABLE_PROXY_KEY, Value::Bool(enable));
        }
        object.insert(PROXY_SERVER_KEY, server.to_value());
        let json = to_json(&Value::Object(object));
        let p = parse(&json).unwrap();
        prop_assert_eq!(p.proxy_server(), Some(&server));
        prop_assert_eq!(p.enable_proxy(), enable);
        let again = p.to_json();
        prop_assert_eq!(parse(&again).unwrap(), p);
    }

    #[test]
    fn unescaped_ip_list_form(ips in vec(any::<IpAddr>(), 1..5), port in any::<u16>()) {
        let list: Vec<String> = ips.iter().map(|ip| format!("\"{ip}\"")).collect();
        let input = format!("{{\"rtc.proxy_server\":[2, \"[{}]\", {port}]}}", list.join(","));
        let p = parse(&input).unwrap();
        prop_assert_eq!(p.proxy_server(), Some(&ProxyServer::ip_list(ips, port).unwrap()));
    }

    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>()) {
        let _ = parse(&s).map_err(|e| e.to_string());
        let _ = Value::parse(&s);
        fuzzing::params(s.as_bytes());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        let _ = parse_bytes(&bytes).map_err(|e| e.to_string());
        fuzzing::params(&bytes);
    }

    /// Strings over JSON's own alphabet reach much deeper into the grammar
    /// than arbitrary text does.
    #[test]
    fn json_alphabet_never_panics(s in "[{}\\[\\]\",:0-9a-z\\\\. eE+\\-]{0,64}") {
        let wrapped = format!("{{\"rtc.proxy_server\":[2, \"[{s}]\", 0],\"k\":{s}}}");
        for input in [s.as_str(), wrapped.as_str()] {
            let _ = parse(input).map_err(|e| e.to_string());
            fuzzing::params(input.as_bytes());
        }
    }

    /// Every truncation or one-byte change of a valid string either parses or
    /// fails with a located error inside the input.
    #[test]
    fn mutations_of_valid_input(
        object in arb_params_object(),
        cut in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let json = to_json(&Value::Object(object));
        let at = cut.index(json.len() + 1);
        let truncated = &json.as_bytes()[..at];
        let mut changed = json.clone().into_bytes();
        if at < changed.len() {
            changed[at] = byte;
        }
        for input in [truncated, &changed[..]] {
            match parse_bytes(input) {
                Ok(_) => {}
                Err(e) => prop_assert!(e.offset().is_some_and(|o| o <= input.len()), "{}", e),
            }
            fuzzing::params(input);
        }
    }
}
