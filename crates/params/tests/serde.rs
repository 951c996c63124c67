//! Other keys deserialize into a user's own serde types.

use std::collections::BTreeMap;

use cloudproxy_params::{ErrorKind, Value, parse};
use serde::Deserialize;

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct AppParams<'a> {
    #[serde(rename = "rtc.enable_proxy")]
    enable_proxy: Option<bool>,
    #[serde(rename = "che.video.resolution")]
    resolution: Resolution,
    #[serde(rename = "che.audio.codec", borrow)]
    codec: &'a str,
    #[serde(rename = "che.audio.gain")]
    gain: f32,
    #[serde(rename = "che.tags", default)]
    tags: Vec<String>,
    #[serde(rename = "che.mode")]
    mode: Mode,
    #[serde(rename = "che.layout")]
    layout: Layout,
    #[serde(rename = "che.extra")]
    extra: BTreeMap<String, i64>,
    #[serde(rename = "che.note")]
    note: Option<String>,
}

#[derive(Debug, Deserialize, PartialEq)]
struct Resolution {
    width: u32,
    height: u32,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Live,
    Communication,
}

#[derive(Debug, Deserialize, PartialEq)]
enum Layout {
    Grid { columns: u8 },
    Speaker(String),
}

const INPUT: &str = r#"{
    "rtc.enable_proxy": true,
    "che.video.resolution": {"width": 1280, "height": 720},
    "che.audio.codec": "opus",
    "che.audio.gain": 0.5,
    "che.tags": ["a", "b\n"],
    "che.mode": "live",
    "che.layout": {"Grid": {"columns": 3}},
    "che.extra": {"x": -1, "y": 2},
    "che.note": null
}"#;

#[test]
fn deserialize_into_user_struct() {
    let p = parse(INPUT).unwrap();
    let app: AppParams<'_> = p.deserialize().unwrap();
    assert_eq!(
        app,
        AppParams {
            enable_proxy: Some(true),
            resolution: Resolution {
                width: 1280,
                height: 720
            },
            codec: "opus",
            gain: 0.5,
            tags: vec!["a".into(), "b\n".into()],
            mode: Mode::Live,
            layout: Layout::Grid { columns: 3 },
            extra: BTreeMap::from([("x".into(), -1), ("y".into(), 2)]),
            note: None,
        }
    );
}

#[test]
fn deserialize_single_values() {
    let p = parse(r#"{"layout":{"Speaker":"alice"},"mode":"communication","n":7}"#).unwrap();
    assert_eq!(
        Layout::deserialize(p.get("layout").unwrap()).unwrap(),
        Layout::Speaker("alice".into())
    );
    assert_eq!(
        Mode::deserialize(p.get("mode").unwrap()).unwrap(),
        Mode::Communication
    );
    assert_eq!(u8::deserialize(p.get("n").unwrap()).unwrap(), 7);
    let all: BTreeMap<String, serde_json_like::Any> = p.deserialize().unwrap();
    assert_eq!(all.len(), 3);
}

#[test]
fn deserialize_errors_are_param_errors() {
    let p = parse(r#"{"che.video.resolution":{"width":-1,"height":720}}"#).unwrap();
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Only {
        #[serde(rename = "che.video.resolution")]
        resolution: Resolution,
    }
    let err = p.deserialize::<Only>().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Deserialize);
    assert!(err.to_string().contains("-1"), "{err}");

    let v = Value::parse(r#"{"width":1}"#).unwrap();
    let err = Resolution::deserialize(&v).unwrap_err();
    assert!(err.to_string().contains("missing field `height`"), "{err}");
}

/// A stand-in for "any value", to show maps of heterogeneous values work.
mod serde_json_like {
    use serde::Deserialize;
    use serde::de::IgnoredAny;

    #[derive(Debug)]
    pub(crate) struct Any;

    impl<'de> Deserialize<'de> for Any {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            IgnoredAny::deserialize(d).map(|_| Self)
        }
    }
}
