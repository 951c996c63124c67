//! Parse throughput: cloudproxy-params against `serde_json::Value`, on the
//! guide's strings and on a ~4 KiB mixed parameter object, in the same run.
//!
//! `cargo bench -p cloudproxy-params --bench parse`

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// The guide's strings (JSON ones; the unescaped sample is not JSON, so
/// serde_json cannot be compared on it and it is measured alone).
const GUIDE: &[(&str, &str)] = &[
    ("enable_true", r#"{"rtc.enable_proxy":true}"#),
    (
        "domain_server",
        r#"{"rtc.proxy_server":[1, "ap-proxy.agora.io", 0]}"#,
    ),
    (
        "ip_list_escaped",
        r#"{"rtc.proxy_server":[2, "[\"192.168.0.112\",\"127.0.0.1\"]", 0]}"#,
    ),
    ("enable_false", r#"{"rtc.enable_proxy":false}"#),
];

const GUIDE_UNESCAPED: &str = r#"{"rtc.proxy_server":[2, "["192.168.0.112","127.0.0.1"]", 0]}"#;

/// A parameter object of about 4 KiB: the proxy keys, then many settings
/// with nested objects and arrays, strings (some with escapes), integers,
/// floats, booleans and nulls.
fn mixed_object() -> String {
    let mut s = String::from(
        r#"{"rtc.enable_proxy":true,"rtc.proxy_server":[2,"[\"10.0.0.1\",\"10.0.0.2\",\"2001:db8::1\"]",0]"#,
    );
    let mut n = 0;
    while s.len() < 4000 {
        let _ = match n % 6 {
            0 => write!(
                s,
                r#","che.video.profile_{n}":{{"width":1280,"height":720,"fps":30,"bitrate":1130.5,"mirror":false}}"#
            ),
            1 => write!(
                s,
                r#","che.audio.label_{n}":"Conference room \"B\"\n2nd floor \u00e9\t{n}""#
            ),
            2 => write!(s, r#","rtc.list_{n}":[1,-2,3.25e-3,true,null,"x","y\\z"]"#),
            3 => write!(
                s,
                r#","che.nested_{n}":{{"a":{{"b":[{{"c":"deep"}},[1,2,[3]]]}},"d":-0.5}}"#
            ),
            4 => write!(
                s,
                r#","rtc.flag_{n}":true,"rtc.count_{n}":{}"#,
                1_000_000 + n
            ),
            _ => write!(
                s,
                r#","che.description_{n}":"plain text without any escapes at all, just a longish value""#
            ),
        };
        n += 1;
    }
    s.push('}');
    s
}

fn bench_one(c: &mut Criterion, name: &str, input: &str, with_serde_json: bool) {
    // Both parsers must accept the input, or the comparison means nothing.
    let ours = cloudproxy_params::parse(input).expect("cloudproxy-params parses the bench input");
    assert!(!ours.as_object().is_empty());
    if with_serde_json {
        let theirs: serde_json::Value =
            serde_json::from_str(input).expect("serde_json parses the bench input");
        assert_eq!(
            theirs.as_object().map(serde_json::Map::len),
            Some(ours.as_object().len())
        );
    }
    let mut group = c.benchmark_group(format!("parse/{name}"));
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("cloudproxy_params", |b| {
        b.iter(|| cloudproxy_params::parse(black_box(input)).map(|p| p.as_object().len()))
    });
    // The grammar alone, without the typed view of the proxy keys (which
    // serde_json does not do): isolates the parser itself.
    group.bench_function("cloudproxy_params_value_only", |b| {
        b.iter(|| cloudproxy_params::Value::parse(black_box(input)).map(|v| v.is_null()))
    });
    if with_serde_json {
        group.bench_function("serde_json_value", |b| {
            b.iter(|| {
                serde_json::from_str::<serde_json::Value>(black_box(input)).map(|v| v.is_object())
            })
        });
    }
    group.finish();
}

fn parse_benches(c: &mut Criterion) {
    for (name, input) in GUIDE {
        bench_one(c, name, input, true);
    }
    bench_one(c, "ip_list_unescaped", GUIDE_UNESCAPED, false);
    let mixed = mixed_object();
    println!("mixed object: {} bytes", mixed.len());
    bench_one(c, "mixed_4k", &mixed, true);
}

criterion_group!(benches, parse_benches);
criterion_main!(benches);
