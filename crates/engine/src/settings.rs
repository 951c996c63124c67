//! What `set_parameters` and `set_cloud_proxy` configure: pure values, no I/O.

use std::collections::BTreeMap;

use cloudproxy_params::{
    ENABLE_PROXY_KEY, HttpProxy, PROXY_SERVER_KEY, Params, ProxyServer, TlsPin,
};

/// How the engine reaches the media network.
///
/// | mode | message channel | media | when the proxy is unreachable |
/// | --- | --- | --- | --- |
/// | [`Off`](Self::Off) | direct TCP | direct UDP | — (the proxy is not used) |
/// | [`Auto`](Self::Auto) | direct first; the proxy if the direct attempt fails or takes longer than [`EngineBuilder::direct_timeout`](crate::EngineBuilder::direct_timeout) (3 s) | as `On` once on the proxy | join fails with both reasons |
/// | [`On`](Self::On) | the transport ladder: TCP relay, or TLS on the last two rungs | UDP relay → UDP-over-TCP ([`Event::MediaFallbackToTcp`](crate::Event::MediaFallbackToTcp)) → TLS 443 → TLS 443 through the HTTP proxy (when one is configured) | join fails |
/// | [`ForceUdp`](Self::ForceUdp) | TCP relay | UDP relay only; join fails with [`EngineError::UdpBlocked`](crate::EngineError::UdpBlocked) if UDP is blocked | join fails |
/// | [`ForceTcp`](Self::ForceTcp) | TCP relay | UDP-over-TCP on the TCP relay | join fails |
/// | [`ForceTls`](Self::ForceTls) | TLS to the proxy's TLS port, directly, then through the HTTP proxy when one is configured | UDP-over-TLS on the same port | join fails |
///
/// **The ladder** (`On`, and `Auto` once on the proxy): each rung is started
/// 250 ms after the one before it, or as soon as it fails; the first rung
/// whose media path is bound wins, and the others are cancelled (their
/// connections closed). The message channel and the join then run once, on
/// the winner's transport. The winner is remembered for the next join on the
/// same network (the same proxy server and HTTP proxy settings, and the same
/// local address toward the proxy) and tried first then.
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
    /// Always through the proxy; everything over TLS to the proxy's TLS
    /// port, directly or through the configured HTTP proxy.
    ForceTls,
}

impl ProxyMode {
    /// Whether this mode never connects directly.
    #[must_use]
    pub fn always_proxy(self) -> bool {
        matches!(
            self,
            Self::On | Self::ForceUdp | Self::ForceTcp | Self::ForceTls
        )
    }
}

/// The engine's configurable state, replaced as a whole by each call so a
/// call applies completely or not at all.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Settings {
    pub(crate) mode: ProxyMode,
    /// `rtc.proxy_server` as last set; `None` means "the default server".
    pub(crate) proxy_server: Option<ProxyServer>,
    /// `rtc.proxy_tls_pin` as last set (it replaces the builder's trust).
    pub(crate) tls_pin: Option<TlsPin>,
    /// `rtc.proxy_tls_port` as last set.
    pub(crate) tls_port: Option<u16>,
    /// `rtc.http_proxy` as last set (it replaces the builder's and the
    /// environment's proxy).
    pub(crate) http_proxy: Option<HttpProxy>,
    /// Every other key, as canonical JSON, last value wins (the transport
    /// keys too, so they read back as set).
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
        if let Some(pin) = params.tls_pin() {
            next.tls_pin = Some(pin.clone());
        }
        if let Some(port) = params.tls_port() {
            next.tls_port = Some(port);
        }
        if let Some(proxy) = params.http_proxy() {
            next.http_proxy = Some(proxy.clone());
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
