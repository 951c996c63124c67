//! Hooks for the fuzz targets in `fuzz/` and the corpus replay test. Not a
//! stable API.

use crate::{ErrorKind, MAX_INPUT_LEN, ParamError, Params, Value};

/// The `params` fuzz target: parses arbitrary bytes; when they parse,
/// serializing and reparsing must give an equal value, and the error and
/// output paths must not panic either.
///
/// # Panics
/// Only when an invariant is broken (that is what the fuzzer looks for).
pub fn params(data: &[u8]) {
    match crate::parse_bytes(data) {
        Ok(params) => check_round_trip(&params),
        Err(e) => {
            // Display (excerpt and caret) must not panic on any input.
            let _ = e.to_string();
            assert!(
                e.offset().is_none_or(|o| o <= data.len()),
                "error offset {:?} past the end of {} bytes",
                e.offset(),
                data.len()
            );
        }
    }
    // Any JSON value, through the general entry point.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(value) = Value::parse(text) {
            let json = value.to_string();
            match Value::parse(&json) {
                Ok(again) => assert_eq!(again, value, "value round trip via {json}"),
                Err(e) if too_long_to_reparse(&json, &e) => {}
                Err(e) => panic!("serialized value does not reparse: {json}\n{e}"),
            }
        }
    }
}

/// Reparsing may only fail because canonical output can be longer than the
/// input (unescaped IP lists gain backslashes, `1e15` may grow a little) and
/// so exceed [`MAX_INPUT_LEN`].
fn too_long_to_reparse(json: &str, e: &ParamError) -> bool {
    json.len() > MAX_INPUT_LEN && e.kind() == ErrorKind::InputTooLong
}

fn check_round_trip(params: &Params<'_>) {
    let json = params.to_json();
    match crate::parse(&json) {
        Ok(again) => {
            assert_eq!(&again, params, "round trip via {json}");
            assert_eq!(again.to_json(), json, "serialization is not canonical");
        }
        Err(e) if too_long_to_reparse(&json, &e) => {}
        Err(e) => panic!("serialized parameters do not reparse: {json}\n{e}"),
    }
    // The typed view serializes in the documented form, which must reparse to
    // the same typed value.
    if let Some(server) = params.proxy_server() {
        let json = format!("{{\"rtc.proxy_server\":{}}}", server.to_value());
        match crate::parse(&json) {
            Ok(again) => assert_eq!(again.proxy_server(), Some(server), "via {json}"),
            Err(e) if too_long_to_reparse(&json, &e) => {}
            Err(e) => panic!("ProxyServer::to_value does not reparse: {json}\n{e}"),
        }
    }
}
