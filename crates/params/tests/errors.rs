//! Malformed input: the exact error kind and position for each, and the
//! excerpt with its caret.

use cloudproxy_params::{ErrorKind, MAX_DEPTH, MAX_INPUT_LEN, ParamError, parse, parse_bytes};

/// (input, expected kind, expected byte offset of the fault)
const TABLE: &[(&str, ErrorKind, usize)] = &[
    // Not an object / empty.
    ("", ErrorKind::Syntax, 0),
    ("   ", ErrorKind::Syntax, 3),
    ("[]", ErrorKind::Syntax, 0),
    (r#""rtc.enable_proxy""#, ErrorKind::Syntax, 0),
    ("true", ErrorKind::Syntax, 0),
    ("{}", ErrorKind::Syntax, 1),
    ("{ }", ErrorKind::Syntax, 2),
    ("\u{feff}{\"a\":1}", ErrorKind::Syntax, 0),
    // Object structure.
    (r#"{"a":1,}"#, ErrorKind::Syntax, 7),
    (r#"{"a":1 "b":2}"#, ErrorKind::Syntax, 7),
    (r#"{"a" 1}"#, ErrorKind::Syntax, 5),
    (r#"{a:1}"#, ErrorKind::Syntax, 1),
    (r#"{'a':1}"#, ErrorKind::Syntax, 1),
    (r#"{"a":}"#, ErrorKind::Syntax, 5),
    (r#"{"a":1"#, ErrorKind::Syntax, 6),
    (r#"{"a":1}x"#, ErrorKind::Syntax, 7),
    (r#"{"a":1} {"b":2}"#, ErrorKind::Syntax, 8),
    (
        r#"{"a":1 // comment
}"#,
        ErrorKind::Syntax,
        7,
    ),
    // Arrays.
    (r#"{"a":[1,]}"#, ErrorKind::Syntax, 8),
    (r#"{"a":[1 2]}"#, ErrorKind::Syntax, 8),
    (r#"{"a":[1,2,],"b":1}"#, ErrorKind::Syntax, 10),
    (r#"{"a":[}"#, ErrorKind::Syntax, 6),
    // Literals.
    (r#"{"a":tru}"#, ErrorKind::Syntax, 5),
    (r#"{"a":True}"#, ErrorKind::Syntax, 5),
    (r#"{"a":nul}"#, ErrorKind::Syntax, 5),
    (r#"{"a":NaN}"#, ErrorKind::Syntax, 5),
    (r#"{"a":Infinity}"#, ErrorKind::Syntax, 5),
    // Numbers.
    (r#"{"a":01}"#, ErrorKind::Syntax, 6),
    (r#"{"a":-01}"#, ErrorKind::Syntax, 7),
    (r#"{"a":-}"#, ErrorKind::Syntax, 6),
    (r#"{"a":+1}"#, ErrorKind::Syntax, 5),
    (r#"{"a":.5}"#, ErrorKind::Syntax, 5),
    (r#"{"a":1.}"#, ErrorKind::Syntax, 7),
    (r#"{"a":1e}"#, ErrorKind::Syntax, 7),
    (r#"{"a":1e+}"#, ErrorKind::Syntax, 8),
    (r#"{"a":0x10}"#, ErrorKind::Syntax, 6),
    (r#"{"a":1e400}"#, ErrorKind::NumberOutOfRange, 5),
    (r#"{"a":-1e400}"#, ErrorKind::NumberOutOfRange, 5),
    // Strings.
    (r#"{"a":"x"#, ErrorKind::Syntax, 7),
    ("{\"a\":\"x\ny\"}", ErrorKind::Syntax, 7),
    ("{\"a\":\"x\ty\"}", ErrorKind::Syntax, 7),
    (r#"{"a":"\x"}"#, ErrorKind::Syntax, 7),
    (r#"{"a":"ok\"#, ErrorKind::Syntax, 9),
    (r#"{"a":"\u12G4"}"#, ErrorKind::Syntax, 10),
    (r#"{"a":"\u12"}"#, ErrorKind::Syntax, 10),
    (r#"{"a":"\uD800"}"#, ErrorKind::Syntax, 12),
    (r#"{"a":"\uD800\u0041"}"#, ErrorKind::Syntax, 12),
    (r#"{"a":"\uDC00"}"#, ErrorKind::Syntax, 6),
    (r#"{"a\q":1}"#, ErrorKind::Syntax, 4),
    // Duplicate keys, at the second occurrence.
    (r#"{"a":1,"a":2}"#, ErrorKind::DuplicateKey, 7),
    (r#"{"o":{"k":1,"k":2}}"#, ErrorKind::DuplicateKey, 12),
    (r#"{"a":1,"\u0061":2}"#, ErrorKind::DuplicateKey, 7),
    (
        r#"{"rtc.enable_proxy":true,"rtc.enable_proxy":false}"#,
        ErrorKind::DuplicateKey,
        25,
    ),
    // rtc.enable_proxy: a boolean.
    (r#"{"rtc.enable_proxy":"yes"}"#, ErrorKind::WrongType, 20),
    (r#"{"rtc.enable_proxy":1}"#, ErrorKind::WrongType, 20),
    (r#"{"rtc.enable_proxy":null}"#, ErrorKind::WrongType, 20),
    // rtc.proxy_server: shape and element types.
    (r#"{"rtc.proxy_server":"x"}"#, ErrorKind::WrongType, 20),
    (
        r#"{"rtc.proxy_server":{"type":1}}"#,
        ErrorKind::WrongType,
        20,
    ),
    (r#"{"rtc.proxy_server":[]}"#, ErrorKind::WrongType, 20),
    (
        r#"{"rtc.proxy_server":[1,"a.b"]}"#,
        ErrorKind::WrongType,
        20,
    ),
    (
        r#"{"rtc.proxy_server":[1,"a.b",0,4]}"#,
        ErrorKind::WrongType,
        31,
    ),
    (
        r#"{"rtc.proxy_server":[1.5,"a.b",0]}"#,
        ErrorKind::WrongType,
        21,
    ),
    (
        r#"{"rtc.proxy_server":["1","a.b",0]}"#,
        ErrorKind::WrongType,
        21,
    ),
    (
        r#"{"rtc.proxy_server":[1,"a.b","0"]}"#,
        ErrorKind::WrongType,
        29,
    ),
    (
        r#"{"rtc.proxy_server":[1,"a.b",0.0]}"#,
        ErrorKind::WrongType,
        29,
    ),
    (
        r#"{"rtc.proxy_server":[1,["a.b"],0]}"#,
        ErrorKind::WrongType,
        23,
    ),
    // Proxy type.
    (
        r#"{"rtc.proxy_server":[3,"a.b",0]}"#,
        ErrorKind::UnknownProxyType,
        21,
    ),
    (
        r#"{"rtc.proxy_server":[0,"a.b",0]}"#,
        ErrorKind::UnknownProxyType,
        21,
    ),
    (
        r#"{"rtc.proxy_server":[-1,"a.b",0]}"#,
        ErrorKind::UnknownProxyType,
        21,
    ),
    // Host names.
    (
        r#"{"rtc.proxy_server":[1,"",0]}"#,
        ErrorKind::InvalidHost,
        23,
    ),
    (
        r#"{"rtc.proxy_server":[1,"-bad.example",0]}"#,
        ErrorKind::InvalidHost,
        23,
    ),
    (
        r#"{"rtc.proxy_server":[1,"bad-.example",0]}"#,
        ErrorKind::InvalidHost,
        23,
    ),
    (
        r#"{"rtc.proxy_server":[1,"a..b",0]}"#,
        ErrorKind::InvalidHost,
        23,
    ),
    (
        r#"{"rtc.proxy_server":[1,"example.com.",0]}"#,
        ErrorKind::InvalidHost,
        23,
    ),
    (
        r#"{"rtc.proxy_server":[1,"under_score.com",0]}"#,
        ErrorKind::InvalidHost,
        23,
    ),
    (
        r#"{"rtc.proxy_server":[1,"a b",0]}"#,
        ErrorKind::InvalidHost,
        23,
    ),
    (
        r#"{"rtc.proxy_server":[1,"::1",0]}"#,
        ErrorKind::InvalidHost,
        23,
    ),
    // Ports.
    (
        r#"{"rtc.proxy_server":[1,"a.b",65536]}"#,
        ErrorKind::PortOutOfRange,
        29,
    ),
    (
        r#"{"rtc.proxy_server":[1,"a.b",-1]}"#,
        ErrorKind::PortOutOfRange,
        29,
    ),
    (
        r#"{"rtc.proxy_server":[1,"a.b",99999999999999999999]}"#,
        ErrorKind::WrongType,
        29,
    ),
    // IP lists.
    (
        r#"{"rtc.proxy_server":[2,"[]",0]}"#,
        ErrorKind::EmptyIpList,
        23,
    ),
    (
        r#"{"rtc.proxy_server":[2,[],0]}"#,
        ErrorKind::EmptyIpList,
        23,
    ),
    (r#"{"rtc.proxy_server":[2,"[]"x,0]}"#, ErrorKind::Syntax, 27),
    (
        r#"{"rtc.proxy_server":[2,"[\"1.2.3.999\"]",0]}"#,
        ErrorKind::InvalidIp,
        23,
    ),
    (
        r#"{"rtc.proxy_server":[2,["1.2.3.4","fe80::1%eth0"],0]}"#,
        ErrorKind::InvalidIp,
        23,
    ),
    (
        r#"{"rtc.proxy_server":[2,[" 1.2.3.4"],0]}"#,
        ErrorKind::InvalidIp,
        23,
    ),
    (
        r#"{"rtc.proxy_server":[2,["1.2.3.4",5],0]}"#,
        ErrorKind::InvalidIpList,
        23,
    ),
    (
        r#"{"rtc.proxy_server":[2,"1.2.3.4",0]}"#,
        ErrorKind::InvalidIpList,
        23,
    ),
    (
        r#"{"rtc.proxy_server":[2,"[\"1.2.3.4\"",0]}"#,
        ErrorKind::InvalidIpList,
        23,
    ),
    (
        r#"{"rtc.proxy_server":[2,"{}",0]}"#,
        ErrorKind::InvalidIpList,
        23,
    ),
    (
        r#"{"rtc.proxy_server":[2,true,0]}"#,
        ErrorKind::InvalidIpList,
        23,
    ),
    // The unescaped (guide sample) form, broken: the furthest failure wins.
    (
        r#"{"rtc.proxy_server":[2, "["1.2.3.4" "5.6.7.8"]", 0]}"#,
        ErrorKind::Syntax,
        36,
    ),
    (
        r#"{"rtc.proxy_server":[2, "["1.2.3.4"], 0]}"#,
        ErrorKind::Syntax,
        36,
    ),
    (
        r#"{"rtc.proxy_server":[2, "["1.2.3.4"]"#,
        ErrorKind::Syntax,
        36,
    ),
    (
        r#"{"rtc.proxy_server":[2, "["1.2.3.4",]", 0]}"#,
        ErrorKind::Syntax,
        36,
    ),
    (
        r#"{"rtc.proxy_server":[2, "["1.2.3.999"]", 0]}"#,
        ErrorKind::InvalidIp,
        24,
    ),
    // The extension applies only to the host element of top-level rtc.proxy_server.
    (r#"{"x":[2, "["1.2.3.4"]", 0]}"#, ErrorKind::Syntax, 12),
    (
        r#"{"rtc.proxy_server":["["1.2.3.4"]", 2, 0]}"#,
        ErrorKind::Syntax,
        24,
    ),
    (
        r#"{"o":{"rtc.proxy_server":[2, "["1.2.3.4"]", 0]}}"#,
        ErrorKind::Syntax,
        32,
    ),
];

fn check(input: &str, kind: ErrorKind, offset: usize) -> ParamError {
    let err = match parse(input) {
        Ok(p) => panic!("{input:?} parsed as {p:?}"),
        Err(e) => e,
    };
    assert_eq!(
        (err.kind(), err.offset()),
        (kind, Some(offset)),
        "input {input:?}\n{err}"
    );
    err
}

#[test]
fn malformed_table() {
    for &(input, kind, offset) in TABLE {
        let err = check(input, kind, offset);
        // Every located error prints its excerpt with a caret.
        let text = err.to_string();
        assert!(
            text.lines().last().is_some_and(|l| l.trim() == "^"),
            "{text}"
        );
    }
}

#[test]
fn same_faults_through_parse_bytes() {
    for &(input, kind, offset) in TABLE {
        let err = parse_bytes(input.as_bytes()).unwrap_err();
        assert_eq!(
            (err.kind(), err.offset()),
            (kind, Some(offset)),
            "{input:?}"
        );
    }
}

#[test]
fn multi_line_input_reports_line_and_column() {
    let input = "{\n  \"a\": 1,\n  \"b\": tru\n}";
    let err = check(input, ErrorKind::Syntax, 19);
    assert_eq!((err.line(), err.column()), (Some(3), Some(8)));
    assert_eq!(
        err.to_string(),
        "expected a value (object, array, string, number, true, false or null), found `tru` \
         at line 3, column 8 (byte 19)\n      \"b\": tru\n           ^"
    );
}

#[test]
fn crlf_lines_and_multibyte_columns() {
    // Columns count characters: "é" is two bytes, one column.
    let input = "{\r\n\"é\": 1,\r\n\"b\": [1 2]}";
    let err = check(input, ErrorKind::Syntax, 21);
    assert_eq!((err.line(), err.column()), (Some(3), Some(9)));
    let excerpt = err.location().unwrap().excerpt();
    assert_eq!(excerpt, "\"b\": [1 2]}");
}

#[test]
fn duplicate_key_names_the_key_and_both_places() {
    let input = "{\"rtc.enable_proxy\":true,\n\"rtc.enable_proxy\":false}";
    let err = check(input, ErrorKind::DuplicateKey, 26);
    match &err {
        ParamError::DuplicateKey { key, first, at } => {
            assert_eq!(key, "rtc.enable_proxy");
            assert_eq!((first.offset, first.line, first.column), (1, 1, 2));
            assert_eq!((at.position().line, at.position().column), (2, 1));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().starts_with(
        "duplicate key \"rtc.enable_proxy\" (first at line 1, column 2 (byte 1)) at line 2, column 1"
    ));
}

#[test]
fn duplicate_first_position_is_found_past_nested_and_unescaped_values() {
    // The first occurrence is located by parsing the members before the
    // duplicate again, including the compatibility form.
    let input = r#"{"rtc.proxy_server":[2, "["1.2.3.4"]", 0],"o":{"k":[1,{"k":2}],"k":3}}"#;
    let err = check(input, ErrorKind::DuplicateKey, 63);
    match err {
        ParamError::DuplicateKey { key, first, .. } => {
            assert_eq!(key, "k");
            assert_eq!(first.offset, 47);
        }
        other => panic!("{other:?}"),
    }
    let input = r#"{"rtc.proxy_server":[2, "["1.2.3.4"]", 0],"rtc.proxy_server":1}"#;
    match check(input, ErrorKind::DuplicateKey, 42) {
        ParamError::DuplicateKey { first, .. } => assert_eq!(first.offset, 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn duplicates_are_found_in_large_objects() {
    // Past the linear-scan threshold, the hash-set path is used.
    let mut input = String::from("{");
    for n in 0..100 {
        input.push_str(&format!("\"k{n}\":{n},"));
    }
    let offset = input.len();
    input.push_str("\"k42\":0}");
    let err = check(&input, ErrorKind::DuplicateKey, offset);
    match err {
        ParamError::DuplicateKey { key, first, .. } => {
            assert_eq!(key, "k42");
            assert_eq!(
                first.offset,
                "{".len()
                    + (0..42)
                        .map(|n| format!("\"k{n}\":{n},").len())
                        .sum::<usize>()
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_type_names_key_and_expected_type() {
    let err = check(r#"{"rtc.enable_proxy":"yes"}"#, ErrorKind::WrongType, 20);
    match &err {
        ParamError::WrongType {
            key,
            expected,
            found,
            ..
        } => {
            assert_eq!(key, "rtc.enable_proxy");
            assert_eq!(*expected, "a boolean (true or false)");
            assert_eq!(found, "the string \"yes\"");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().starts_with(
        "\"rtc.enable_proxy\" expects a boolean (true or false), found the string \"yes\""
    ));
}

#[test]
fn nesting_limit() {
    // The top-level object is depth 1, so MAX_DEPTH - 1 arrays fit inside it.
    let ok = format!(
        "{{\"a\":{}{}}}",
        "[".repeat(MAX_DEPTH - 1),
        "]".repeat(MAX_DEPTH - 1)
    );
    assert!(parse(&ok).is_ok());
    let deep = format!("{{\"a\":{}", "[".repeat(MAX_DEPTH));
    let offset = "{\"a\":".len() + MAX_DEPTH - 1;
    check(&deep, ErrorKind::TooDeep, offset);
    // Far deeper input fails the same way, without exhausting the stack.
    let very_deep = format!("{{\"a\":{}", "[{\"b\":".repeat(10_000));
    let err = parse(&very_deep).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooDeep);
}

#[test]
fn input_length_limit() {
    let fill = |len: usize| {
        let mut s = String::from("{\"a\":\"");
        s.push_str(&"x".repeat(len - s.len() - 2));
        s.push_str("\"}");
        s
    };
    let max = fill(MAX_INPUT_LEN);
    assert_eq!(max.len(), MAX_INPUT_LEN);
    assert!(parse(&max).is_ok());
    let over = fill(MAX_INPUT_LEN + 1);
    let err = parse(&over).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InputTooLong);
    assert_eq!(err.offset(), None);
    assert_eq!(
        err.to_string(),
        format!(
            "parameter string is {} bytes long; the limit is 65536 bytes",
            MAX_INPUT_LEN + 1
        )
    );
    assert_eq!(
        parse_bytes(over.as_bytes()).unwrap_err().kind(),
        ErrorKind::InputTooLong
    );
}

#[test]
fn invalid_utf8_is_located() {
    let err = parse_bytes(b"{\"a\":\n\"b\xc3\x28\"}").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidUtf8);
    assert_eq!(
        (err.offset(), err.line(), err.column()),
        (Some(8), Some(2), Some(3))
    );
}

#[test]
fn long_lines_are_shortened_around_the_fault() {
    let input = format!(
        "{{\"a\":\"{}\",\"b\":x,\"c\":\"{}\"}}",
        "p".repeat(200),
        "q".repeat(200)
    );
    let err = parse(&input).unwrap_err();
    let at = err.location().unwrap();
    assert_eq!(at.position().offset, 212);
    let excerpt: Vec<char> = at.excerpt().chars().collect();
    assert!(excerpt.len() <= 74, "{}", at.excerpt());
    assert_eq!(excerpt.first(), Some(&'…'));
    assert_eq!(excerpt.last(), Some(&'…'));
    assert_eq!(excerpt[at.caret()], 'x');
}
