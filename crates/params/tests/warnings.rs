//! Accepted but probably not meant: misspelled known keys warn with a
//! suggestion; a string pasted in its source-code form gets a hint.

use cloudproxy_params::{ErrorKind, ParamWarning, parse, suggest_key};

#[test]
fn misspelled_key_warns_with_suggestion() {
    for key in [
        "rtc.enableproxy",
        "Rtc.Enable_Proxy",
        "rtc.enable_proxy ",
        "RTC.ENABLE-PROXY",
        "rtc.enable_prxy",
        "rtc.enabel_proxy",
    ] {
        let input = format!(r#"{{"{key}":true}}"#);
        let p = parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
        // Still accepted as an unknown key, as the guide requires.
        assert_eq!(p.enable_proxy(), None, "{input}");
        assert!(p.get(key).is_some(), "{input}");
        let warnings = p.warnings();
        assert_eq!(
            warnings,
            [ParamWarning::MisspelledKey {
                key: key.to_owned(),
                suggestion: "rtc.enable_proxy"
            }],
            "{input}"
        );
        let shown = warnings[0].to_string();
        assert!(
            shown.contains("did you mean `rtc.enable_proxy`?"),
            "{shown}"
        );
        assert!(shown.contains(&format!("{key:?}")), "{shown}");
    }
    assert_eq!(suggest_key("rtc.proxyserver"), Some("rtc.proxy_server"));
    assert_eq!(suggest_key("rtc.Proxy_Sever"), Some("rtc.proxy_server"));
}

#[test]
fn right_and_unrelated_keys_do_not_warn() {
    let p = parse(
        r#"{"rtc.enable_proxy":true,"rtc.proxy_server":[1,"a.example",0],"che.audio.level":3,"rtc.log_filter":1}"#,
    )
    .unwrap();
    assert!(p.warnings().is_empty(), "{:?}", p.warnings());
    assert_eq!(suggest_key(&"x".repeat(10_000)), None);
    assert_eq!(suggest_key(""), None);
}

#[test]
fn source_code_form_gets_a_hint() {
    // As written in the guide's Java: outer quotes, escaped inner quotes.
    let pasted = r#""{\"rtc.enable_proxy\":true}""#;
    let err = parse(pasted).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SourceCodeForm);
    let shown = err.to_string();
    assert!(
        shown.starts_with(
            r#"expected the parameter string itself, found it in source-code form (outer quotes and \" escapes of a string literal): pass `{"rtc.enable_proxy":true}` instead at line 1, column 1 (byte 0)"#
        ),
        "{shown}"
    );
    // Escaped quotes without the outer ones.
    let err = parse(r#"{\"rtc.proxy_server\":[1, \"ap-proxy.agora.io\", 0]}"#).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SourceCodeForm);
    assert!(
        err.to_string().contains(
            r#"(\" escapes of a string literal): pass `{"rtc.proxy_server":[1, "ap-proxy.agora.io", 0]}` instead"#
        ),
        "{err}"
    );
    assert_eq!(err.offset(), Some(1));
    // Quoted but not a parameter string inside: the plain syntax error.
    assert_eq!(parse(r#""hello""#).unwrap_err().kind(), ErrorKind::Syntax);
    assert_eq!(parse(r#""""#).unwrap_err().kind(), ErrorKind::Syntax);
}
