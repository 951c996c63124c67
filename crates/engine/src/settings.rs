//! What `set_parameters` and `set_cloud_proxy` configure: pure values, no I/O.

use std::collections::BTreeMap;

use cloudproxy_params::{ENABLE_PROXY_KEY, PROXY_SERVER_KEY, Params, ProxyServer};

/// How the engine reaches the media network.
///
/// | mode | message channel | media | when the proxy is unreachable |
/// | --- | --- | --- | --- |
/// | [`Off`](Self::Off) | direct TCP | direct UDP | — (the proxy is not used) |
/// | [`Auto`](Self::Auto) | direct first; the proxy if the direct attempt fails or takes longer than [`EngineBuilder::direct_timeout`](crate::EngineBuilder::direct_timeout) (3 s) | as `On` once on the proxy | join fails with both reasons |
/// | [`On`](Self::On) | TCP relay | UDP relay, UDP-over-TCP if UDP is blocked ([`Event::MediaFallbackToTcp`](crate::Event::MediaFallbackToTcp)) | join fails |
/// | [`ForceUdp`](Self::ForceUdp) | TCP relay | UDP relay only; join fails with [`EngineError::UdpBlocked`](crate::EngineError::UdpBlocked) if UDP is blocked | join fails |
/// | [`ForceTcp`](Self::ForceTcp) | TCP relay | UDP-over-TCP on the TCP relay | join fails |
///
/// `{"rtc.enable_proxy":true}` selects [`On`](Self::On) (the guide's
/// behaviour) unless a forced mode is already set, which it keeps;
/// `{"rtc.enable_proxy":false}` selects [`Off`](Self::Off). The last call
/// wins: [`Engine::set_cloud_proxy`](crate::Engine::set_cloud_proxy) after
/// `set_parameters` replaces the mode, and the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ProxyMode {
    /// No proxy: straight to the media network (the default).
    #[default]
    Off,
    /// Direct first, the proxy when the direct path fails within the bound.
    Auto,
    /// Always through the proxy; media over UDP, falling back to TCP.
    On,
    /// Always through the proxy; media over UDP only.
    ForceUdp,
    /// Always through the proxy; everything over TCP.
    ForceTcp,
}

impl ProxyMode {
    /// Whether this mode never connects directly.
    #[must_use]
    pub fn always_proxy(self) -> bool {
        matches!(self, Self::On | Self::ForceUdp | Self::ForceTcp)
    }
}

/// The engine's configurable state, replaced as a whole by each call so a
/// call applies completely or not at all.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Settings {
    pub(crate) mode: ProxyMode,
    /// `rtc.proxy_server` as last set; `None` means "the default server".
    pub(crate) proxy_server: Option<ProxyServer>,
    /// Every other key, as canonical JSON, last value wins.
    pub(crate) others: BTreeMap<String, String>,
}

impl Settings {
    /// The settings after applying `params` (which parsed and validated as a
    /// whole, so nothing here can fail half-way).
    pub(crate) fn with_parameters(&self, params: &Params<'_>) -> Self {
        let mut next = self.clone();
        if let Some(server) = params.proxy_server() {
            next.proxy_server = Some(server.clone());
        }
        match params.enable_proxy() {
            Some(true) if !next.mode.always_proxy() => next.mode = ProxyMode::On,
            Some(false) => next.mode = ProxyMode::Off,
            _ => {}
        }
        for (key, value) in params.others() {
            next.others.insert(key.to_owned(), value.to_string());
        }
        next
    }

    /// A parameter's value as canonical JSON.
    pub(crate) fn parameter(&self, key: &str) -> Option<String> {
        match key {
            ENABLE_PROXY_KEY => Some(self.mode.always_proxy().to_string()),
            PROXY_SERVER_KEY => self.proxy_server.as_ref().map(|s| s.to_value().to_string()),
            _ => self.others.get(key).cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(settings: &Settings, text: &str) -> Settings {
        settings.with_parameters(&cloudproxy_params::parse(text).unwrap())
    }

    #[test]
    fn enable_keeps_a_forced_mode_and_disable_turns_everything_off() {
        let forced = Settings {
            mode: ProxyMode::ForceTcp,
            ..Settings::default()
        };
        assert_eq!(
            apply(&forced, r#"{"rtc.enable_proxy":true}"#).mode,
            ProxyMode::ForceTcp
        );
        assert_eq!(
            apply(&forced, r#"{"rtc.enable_proxy":false}"#).mode,
            ProxyMode::Off
        );
        let auto = Settings {
            mode: ProxyMode::Auto,
            ..Settings::default()
        };
        assert_eq!(
            apply(&auto, r#"{"rtc.enable_proxy":true}"#).mode,
            ProxyMode::On
        );
    }

    #[test]
    fn unknown_keys_are_kept_as_json_and_replaced() {
        let s = apply(&Settings::default(), r#"{"che.audio":{"a":[1,"x"]}}"#);
        assert_eq!(
            s.parameter("che.audio").as_deref(),
            Some(r#"{"a":[1,"x"]}"#)
        );
        let s = apply(&s, r#"{"che.audio":2}"#);
        assert_eq!(s.parameter("che.audio").as_deref(), Some("2"));
        assert_eq!(s.mode, ProxyMode::Off);
        assert_eq!(s.parameter("rtc.enable_proxy").as_deref(), Some("false"));
        assert_eq!(s.parameter("rtc.proxy_server"), None);
    }
}
