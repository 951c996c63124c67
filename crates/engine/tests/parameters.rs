//! Every `set_parameters` rule of the guide, and how it combines with
//! `set_cloud_proxy`.

mod support;

use std::net::IpAddr;

use cloudproxy_engine::{
    ConnectionState, EngineError, Event, ProxyKind, ProxyMode, ProxyServer, StateReason,
};
use support::*;

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn offline_engine() -> cloudproxy_engine::Engine {
    builder(
        "127.0.0.1:9".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
    )
    .build()
    .unwrap()
}

#[test]
fn enable_proxy_true_uses_the_default_server_from_the_builder() {
    let engine = offline_engine();
    assert_eq!(engine.proxy_mode(), ProxyMode::Off);
    assert_eq!(
        engine.parameter("rtc.enable_proxy").as_deref(),
        Some("false")
    );
    engine
        .set_parameters(r#"{"rtc.enable_proxy":true}"#)
        .unwrap();
    assert_eq!(engine.proxy_mode(), ProxyMode::On);
    assert_eq!(
        engine.parameter("rtc.enable_proxy").as_deref(),
        Some("true")
    );
    // No server set: [1, <default domain>, 0], the domain from the builder.
    assert_eq!(
        engine.proxy_server(),
        ProxyServer::domain("localhost", 0).unwrap()
    );
    assert_eq!(engine.parameter("rtc.proxy_server"), None);
}

#[test]
fn the_default_domain_is_the_guides_unless_configured() {
    let engine = cloudproxy_engine::Engine::builder(APP, SECRET.to_vec())
        .media_network(
            "127.0.0.1:9".parse().unwrap(),
            "127.0.0.1:9".parse().unwrap(),
        )
        .build()
        .unwrap();
    engine
        .set_parameters(r#"{"rtc.enable_proxy":true}"#)
        .unwrap();
    assert_eq!(engine.proxy_server(), ProxyServer::default_server());
    assert_eq!(
        engine.proxy_server().kind(),
        &ProxyKind::Domain(cloudproxy_engine::DEFAULT_PROXY_DOMAIN.into())
    );
}

#[test]
fn proxy_server_accepts_all_three_forms_of_the_ip_list() {
    let want = ProxyServer::ip_list(ips(&["192.168.0.112", "127.0.0.1"]), 0).unwrap();
    for text in [
        // As documented: a JSON array inside a string.
        r#"{"rtc.proxy_server":[2, "[\"192.168.0.112\",\"127.0.0.1\"]", 0]}"#,
        // A plain JSON array.
        r#"{"rtc.proxy_server":[2, ["192.168.0.112","127.0.0.1"], 0]}"#,
        // The guide's own sample, inner quotes unescaped.
        r#"{"rtc.proxy_server":[2, "["192.168.0.112","127.0.0.1"]", 0]}"#,
    ] {
        let engine = offline_engine();
        engine
            .set_parameters(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(engine.proxy_server(), want, "{text}");
        assert_eq!(
            engine.parameter("rtc.proxy_server").as_deref(),
            Some(r#"[2,"[\"192.168.0.112\",\"127.0.0.1\"]",0]"#)
        );
        // Setting the server does not by itself turn the proxy on.
        assert_eq!(engine.proxy_mode(), ProxyMode::Off);
    }
    let engine = offline_engine();
    engine
        .set_parameters(r#"{"rtc.proxy_server":[1, "proxy.example.com", 4000]}"#)
        .unwrap();
    assert_eq!(
        engine.proxy_server(),
        ProxyServer::domain("proxy.example.com", 4000).unwrap()
    );
}

#[test]
fn enable_proxy_false_turns_every_mode_off() {
    let engine = offline_engine();
    for mode in [
        ProxyMode::Auto,
        ProxyMode::On,
        ProxyMode::ForceUdp,
        ProxyMode::ForceTcp,
    ] {
        engine.set_cloud_proxy(mode).unwrap();
        engine
            .set_parameters(r#"{"rtc.enable_proxy":false}"#)
            .unwrap();
        assert_eq!(engine.proxy_mode(), ProxyMode::Off, "from {mode:?}");
        assert_eq!(
            engine.parameter("rtc.enable_proxy").as_deref(),
            Some("false")
        );
    }
}

#[test]
fn enable_proxy_true_keeps_a_forced_mode_and_replaces_auto() {
    let engine = offline_engine();
    for (before, after) in [
        (ProxyMode::Off, ProxyMode::On),
        (ProxyMode::Auto, ProxyMode::On),
        (ProxyMode::ForceUdp, ProxyMode::ForceUdp),
        (ProxyMode::ForceTcp, ProxyMode::ForceTcp),
    ] {
        engine.set_cloud_proxy(before).unwrap();
        engine
            .set_parameters(r#"{"rtc.enable_proxy":true}"#)
            .unwrap();
        assert_eq!(engine.proxy_mode(), after, "from {before:?}");
    }
    // And the typed call after it wins.
    engine.set_cloud_proxy(ProxyMode::Auto).unwrap();
    assert_eq!(engine.proxy_mode(), ProxyMode::Auto);
}

#[test]
fn several_keys_apply_together() {
    let engine = offline_engine();
    engine
        .set_parameters(
            r#"{"rtc.enable_proxy":true, "rtc.proxy_server":[2, "[\"127.0.0.1\"]", 9700], "che.audio.level":3}"#,
        )
        .unwrap();
    assert_eq!(engine.proxy_mode(), ProxyMode::On);
    assert_eq!(
        engine.proxy_server(),
        ProxyServer::ip_list(ips(&["127.0.0.1"]), 9700).unwrap()
    );
    assert_eq!(engine.parameter("che.audio.level").as_deref(), Some("3"));
}

#[test]
fn a_call_with_one_bad_key_applies_nothing() {
    let engine = offline_engine();
    engine.set_parameters(r#"{"x.kept":1}"#).unwrap();
    for bad in [
        // Valid enable, invalid server type.
        r#"{"rtc.enable_proxy":true, "x.kept":2, "rtc.proxy_server":[3, "a.example", 0]}"#,
        // Valid server, enable of the wrong type.
        r#"{"rtc.proxy_server":[2, "[\"10.0.0.1\"]", 0], "x.kept":2, "rtc.enable_proxy":"yes"}"#,
        // Valid keys, then a syntax error.
        r#"{"rtc.enable_proxy":true, "x.kept":2, "rtc.proxy_server":[2, "[\"10.0.0.1\"]", 0],}"#,
        // An empty IP list.
        r#"{"rtc.enable_proxy":true, "rtc.proxy_server":[2, "[]", 0]}"#,
    ] {
        let err = engine.set_parameters(bad).unwrap_err();
        assert!(
            matches!(err, EngineError::InvalidParameters(_)),
            "{bad}: {err:?}"
        );
        assert!(
            err.to_string().contains("no parameter was applied"),
            "{err}"
        );
        assert_eq!(engine.proxy_mode(), ProxyMode::Off, "{bad}");
        assert_eq!(engine.parameter("rtc.proxy_server"), None, "{bad}");
        assert_eq!(engine.parameter("x.kept").as_deref(), Some("1"), "{bad}");
    }
}

#[test]
fn unknown_keys_are_readable_and_change_nothing() {
    let engine = offline_engine();
    engine
        .set_parameters(r#"{"che.video.profile":{"w":640,"h":[480,"p"]},"rtc.log":"debug"}"#)
        .unwrap();
    assert_eq!(
        engine.parameter("che.video.profile").as_deref(),
        Some(r#"{"w":640,"h":[480,"p"]}"#)
    );
    assert_eq!(engine.parameter("rtc.log").as_deref(), Some(r#""debug""#));
    assert_eq!(engine.parameter("never.set"), None);
    assert_eq!(engine.proxy_mode(), ProxyMode::Off);
    assert_eq!(engine.parameter("rtc.proxy_server"), None);
}

#[tokio::test]
async fn unknown_keys_do_not_change_how_a_join_goes() {
    let edge = edge().await;
    let engine = engine(&edge);
    engine
        .set_parameters(r#"{"rtc.something_else":true}"#)
        .unwrap();
    let mut events = engine.events();
    engine.join_channel("unknown-keys", 1).await.unwrap();
    let (_, before) = wait_for(&mut events, "Connected", |e| {
        is_state(e, ConnectionState::Connected, StateReason::Joined)
    })
    .await;
    // Direct, as with no parameter at all: no proxy step.
    assert!(
        !before
            .iter()
            .any(|e| matches!(e, Event::ProxyConnected { .. })
                || is_state(
                    e,
                    ConnectionState::Connecting,
                    StateReason::SettingProxyServer
                )),
        "{before:?}"
    );
    engine.leave_channel().await.unwrap();
    edge.shutdown().await;
}

#[tokio::test]
async fn set_parameters_while_joined_is_refused_and_changes_nothing() {
    let edge = edge().await;
    let engine = engine(&edge);
    engine.set_parameters(r#"{"x.kept":1}"#).unwrap();
    engine.join_channel("joined", 1).await.unwrap();

    let err = engine
        .set_parameters(r#"{"rtc.enable_proxy":true, "x.kept":2}"#)
        .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::InvalidState {
                operation: "set_parameters",
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("before joining a channel or after leaving it"),
        "{text}"
    );
    assert!(text.contains("\"joined\""), "names the channel: {text}");
    let err = engine.set_cloud_proxy(ProxyMode::ForceTcp).unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::InvalidState {
                operation: "set_cloud_proxy",
                ..
            }
        ),
        "{err:?}"
    );
    // A malformed string while joined is still refused for the state.
    assert!(matches!(
        engine.set_parameters("{").unwrap_err(),
        EngineError::InvalidState { .. }
    ));
    assert_eq!(engine.proxy_mode(), ProxyMode::Off);
    assert_eq!(engine.parameter("x.kept").as_deref(), Some("1"));

    // After leaving, the same call works.
    engine.leave_channel().await.unwrap();
    engine
        .set_parameters(r#"{"rtc.enable_proxy":true, "x.kept":2}"#)
        .unwrap();
    assert_eq!(engine.proxy_mode(), ProxyMode::On);
    assert_eq!(engine.parameter("x.kept").as_deref(), Some("2"));
    edge.shutdown().await;
}

#[tokio::test]
async fn the_default_server_is_what_a_join_uses() {
    // Default domain "localhost" (in /etc/hosts), default ports: the join
    // goes to localhost's allocation ports and says so when it fails.
    let edge = edge().await;
    let engine = builder(edge.tcp_addr(), edge.udp_addr())
        .dial_policy(cloudproxy_engine::DialPolicy {
            stagger: std::time::Duration::from_millis(50),
            attempt_timeout: std::time::Duration::from_millis(500),
            overall_timeout: std::time::Duration::from_secs(3),
        })
        .build()
        .unwrap();
    engine
        .set_parameters(r#"{"rtc.enable_proxy":true}"#)
        .unwrap();
    let mut events = engine.events();
    match engine.join_channel("default-server", 1).await {
        Err(err @ EngineError::Tunnel(_)) => {
            let text = err.to_string();
            assert!(text.contains(":1080"), "tries the default ports: {text}");
            assert!(text.contains(":9700"), "tries the default ports: {text}");
        }
        // Something on this machine answers on a default port for another
        // app: refused, which still shows the default server was used.
        Err(other) => assert!(other.to_string().contains("proxy"), "{other}"),
        Ok(()) => panic!("joined through a proxy that does not know the test app"),
    }
    wait_for(&mut events, "Failed", |e| {
        is_state(e, ConnectionState::Failed, StateReason::JoinFailed)
    })
    .await;
    // The engine is usable again.
    engine
        .set_parameters(r#"{"rtc.enable_proxy":false}"#)
        .unwrap();
    engine.join_channel("default-server", 1).await.unwrap();
    engine.leave_channel().await.unwrap();
    edge.shutdown().await;
}

#[test]
fn misspelled_key_warns_through_events() {
    let edge_addr = "127.0.0.1:9".parse().unwrap();
    let engine = builder(edge_addr, edge_addr).build().unwrap();
    let mut events = engine.events();
    engine
        .set_parameters(r#"{"Rtc.Enable_Proxy":true}"#)
        .expect("unknown keys are accepted, as the guide requires");
    assert_eq!(engine.proxy_mode(), cloudproxy_engine::ProxyMode::Off);
    assert_eq!(
        engine.parameter("Rtc.Enable_Proxy").as_deref(),
        Some("true")
    );
    match events.try_recv() {
        Some(cloudproxy_engine::Event::ParameterWarning { warning }) => {
            assert_eq!(
                warning,
                cloudproxy_engine::ParamWarning::MisspelledKey {
                    key: "Rtc.Enable_Proxy".into(),
                    suggestion: "rtc.enable_proxy"
                }
            );
            assert!(
                warning
                    .to_string()
                    .ends_with("did you mean `rtc.enable_proxy`?"),
                "{warning}"
            );
        }
        other => panic!("expected a ParameterWarning, got {other:?}"),
    }
    // A right key warns about nothing.
    engine
        .set_parameters(r#"{"rtc.enable_proxy":true}"#)
        .unwrap();
    assert_eq!(events.try_recv(), None);
}

#[test]
fn source_code_form_is_refused_with_a_hint() {
    let edge_addr = "127.0.0.1:9".parse().unwrap();
    let engine = builder(edge_addr, edge_addr).build().unwrap();
    let err = engine
        .set_parameters(r#""{\"rtc.enable_proxy\":true}""#)
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(r#"source-code form"#)
            && text.contains(r#"pass `{"rtc.enable_proxy":true}` instead"#),
        "{text}"
    );
    assert_eq!(engine.proxy_mode(), cloudproxy_engine::ProxyMode::Off);
}
