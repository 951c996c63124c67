//! What the app hears: the handler it registers, and the enums events carry.
//!
//! The enums are fieldless with fixed numbers (`repr(u32)`), so the C ABI
//! passes the same values the bindings see.

use cloudproxy_engine as engine;

/// The callbacks an app registers when it creates an engine (the guide's
/// `IRtcEngineEventHandler`). Implemented in Kotlin, Swift or Python; from C,
/// a struct of function pointers (`CpEventHandler`).
///
/// All callbacks come from the engine's one event thread (see the crate's
/// "Threads" section), one at a time.
#[uniffi::export(callback_interface)]
pub trait EngineEventHandler: Send + Sync {
    /// The connection state changed (`onConnectionStateChanged`).
    fn on_connection_state_changed(
        &self,
        state: ConnectionState,
        reason: StateReason,
    ) -> Result<(), CallbackError>;
    /// The engine is connected through the proxy (`onProxyConnected`):
    /// media travels over `proxy_type`, `elapsed_ms` after the join started.
    fn on_proxy_connected(
        &self,
        proxy_type: ProxyType,
        elapsed_ms: u64,
    ) -> Result<(), CallbackError>;
    /// Another user is in the channel (`onUserJoined`; also for everyone
    /// already there when joining).
    fn on_user_joined(&self, uid: u32) -> Result<(), CallbackError>;
    /// A user left the channel or timed out (`onUserOffline`).
    fn on_user_left(&self, uid: u32) -> Result<(), CallbackError>;
    /// A reliable message from another member, in order, exactly once
    /// (`uid` is `None` when the media network did not say who sent it).
    fn on_message(&self, uid: Option<u32>, payload: Vec<u8>) -> Result<(), CallbackError>;
    /// A media datagram from another member.
    fn on_media(&self, uid: Option<u32>, payload: Vec<u8>) -> Result<(), CallbackError>;
    /// Something that works but is probably not what the app wanted.
    fn on_warning(&self, kind: WarningKind, message: String) -> Result<(), CallbackError>;
}

/// A callback's failure: what a Kotlin, Swift or Python exception thrown
/// in a callback becomes (any exception, not only this type), or what a
/// Rust handler returns. The engine reports it and keeps delivering.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum CallbackError {
    /// The callback failed.
    #[error("{reason}")]
    Failed {
        /// Why: the exception's text.
        reason: String,
    },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for CallbackError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        Self::Failed { reason: e.reason }
    }
}

/// How the engine reaches the media network (`setCloudProxy`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum ProxyMode {
    /// No proxy: straight to the media network (the default).
    Off = 0,
    /// Direct first, the proxy when the direct path fails within 3 s.
    Auto = 1,
    /// Always through the proxy; media over UDP, falling back to TCP (the
    /// guide's `{"rtc.enable_proxy":true}`).
    On = 2,
    /// Always through the proxy; media over UDP only.
    ForceUdp = 3,
    /// Always through the proxy; everything over TCP.
    ForceTcp = 4,
    /// Always through the proxy; everything over TLS to the proxy's TLS
    /// port (443), directly or through the configured HTTP proxy.
    ForceTls = 5,
}

impl ProxyMode {
    /// The mode numbered `value`, as C passes it.
    pub(crate) fn from_u32(value: u32) -> Option<Self> {
        [
            Self::Off,
            Self::Auto,
            Self::On,
            Self::ForceUdp,
            Self::ForceTcp,
            Self::ForceTls,
        ]
        .into_iter()
        .find(|mode| *mode as u32 == value)
    }
}

impl From<ProxyMode> for engine::ProxyMode {
    fn from(mode: ProxyMode) -> Self {
        match mode {
            ProxyMode::Off => Self::Off,
            ProxyMode::Auto => Self::Auto,
            ProxyMode::On => Self::On,
            ProxyMode::ForceUdp => Self::ForceUdp,
            ProxyMode::ForceTcp => Self::ForceTcp,
            ProxyMode::ForceTls => Self::ForceTls,
        }
    }
}

/// Which rung of the transport ladder carries the call through the proxy.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum ProxyType {
    /// Media over the UDP relay.
    Udp = 1,
    /// Media over the TCP relay (UDP-over-TCP).
    Tcp = 2,
    /// Everything over TLS to the proxy's TLS port (443 by default).
    Tls = 3,
    /// Everything over TLS through an HTTP proxy (`CONNECT`).
    HttpProxy = 4,
}

impl From<engine::ProxyType> for ProxyType {
    fn from(t: engine::ProxyType) -> Self {
        match t {
            engine::ProxyType::Udp => Self::Udp,
            engine::ProxyType::Tcp => Self::Tcp,
            engine::ProxyType::Tls => Self::Tls,
            engine::ProxyType::HttpProxy => Self::HttpProxy,
        }
    }
}

/// The state of the engine's connection to a channel.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum ConnectionState {
    /// Not in a channel.
    Disconnected = 1,
    /// `joinChannel` is connecting.
    Connecting = 2,
    /// In the channel: messages and media flow.
    Connected = 3,
    /// The connection was lost; the engine re-establishes it by itself.
    Reconnecting = 4,
    /// Joining failed, or the connection could not be re-established.
    Failed = 5,
    /// A state this SDK version does not know yet.
    Unknown = 99,
}

impl From<engine::ConnectionState> for ConnectionState {
    fn from(state: engine::ConnectionState) -> Self {
        match state {
            engine::ConnectionState::Disconnected => Self::Disconnected,
            engine::ConnectionState::Connecting => Self::Connecting,
            engine::ConnectionState::Connected => Self::Connected,
            engine::ConnectionState::Reconnecting => Self::Reconnecting,
            engine::ConnectionState::Failed => Self::Failed,
            _ => Self::Unknown,
        }
    }
}

/// Why the connection state changed.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum StateReason {
    /// `joinChannel` was called.
    Joining = 1,
    /// Setting up the path through the proxy server.
    SettingProxyServer = 2,
    /// The channel was joined.
    Joined = 3,
    /// The message channel closed or was reset.
    Interrupted = 4,
    /// Nothing arrived for the keepalive timeout.
    KeepaliveTimeout = 5,
    /// Re-established; the membership resumed with no message lost.
    Resumed = 6,
    /// Re-established, but the channel was joined afresh.
    Rejoined = 7,
    /// Joining failed (see the error `joinChannel` returned).
    JoinFailed = 8,
    /// The connection could not be re-established in time.
    ReconnectFailed = 9,
    /// `leaveChannel` was called.
    Left = 10,
    /// The relay went silent mid-call without closing (no answer to a
    /// probe); the engine is failing over.
    RelaySilent = 11,
    /// A reason this SDK version does not know yet.
    Unknown = 99,
}

impl From<engine::StateReason> for StateReason {
    fn from(reason: engine::StateReason) -> Self {
        match reason {
            engine::StateReason::Joining => Self::Joining,
            engine::StateReason::SettingProxyServer => Self::SettingProxyServer,
            engine::StateReason::Joined => Self::Joined,
            engine::StateReason::Interrupted => Self::Interrupted,
            engine::StateReason::KeepaliveTimeout => Self::KeepaliveTimeout,
            engine::StateReason::Resumed => Self::Resumed,
            engine::StateReason::Rejoined => Self::Rejoined,
            engine::StateReason::JoinFailed => Self::JoinFailed,
            engine::StateReason::ReconnectFailed => Self::ReconnectFailed,
            engine::StateReason::Left => Self::Left,
            engine::StateReason::RelaySilent => Self::RelaySilent,
            _ => Self::Unknown,
        }
    }
}

/// What an [`EngineEventHandler::on_warning`] is about.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum WarningKind {
    /// `setParameters` kept something that is most likely a mistake (a
    /// misspelled key); the message suggests the fix.
    ParameterWarning = 1,
    /// Media could not use UDP and goes over the TCP relay instead.
    MediaFallbackToTcp = 2,
    /// `Auto`: the direct path failed; the proxy is tried next.
    DirectPathFailed = 3,
    /// One of the app's callbacks threw (Kotlin, Python, Swift) or
    /// panicked (Rust); events are still delivered. Reported once per
    /// callback; the message names it and says why.
    CallbackFailed = 4,
}

/// One thing for the event thread to hand to the handler.
#[derive(Debug)]
pub(crate) enum Delivery {
    Event(engine::Event),
    Message(engine::IncomingMessage),
    Media(engine::IncomingMedia),
}

impl Delivery {
    /// [`Self::callback`] for the warning callback.
    pub(crate) const WARNING_CALLBACK: &'static str = "onWarning (on_warning)";

    /// The callback this delivery goes to, by its Kotlin/Swift and its
    /// Python/C/Rust name.
    pub(crate) fn callback(&self) -> &'static str {
        use engine::Event;
        match self {
            Self::Message(_) => "onMessage (on_message)",
            Self::Media(_) => "onMedia (on_media)",
            Self::Event(Event::ConnectionStateChanged { .. }) => {
                "onConnectionStateChanged (on_connection_state_changed)"
            }
            Self::Event(Event::ProxyConnected { .. }) => "onProxyConnected (on_proxy_connected)",
            Self::Event(Event::UserJoined { .. }) => "onUserJoined (on_user_joined)",
            Self::Event(Event::UserLeft { .. }) => "onUserLeft (on_user_left)",
            Self::Event(_) => Self::WARNING_CALLBACK,
        }
    }

    /// Calls the handler's callback for this delivery.
    pub(crate) fn deliver(self, handler: &dyn EngineEventHandler) -> Result<(), CallbackError> {
        match self {
            Self::Message(m) => handler.on_message(m.uid, m.payload.to_vec()),
            Self::Media(m) => handler.on_media(m.uid, m.payload.to_vec()),
            Self::Event(event) => deliver_event(event, handler),
        }
    }
}

fn deliver_event(
    event: engine::Event,
    handler: &dyn EngineEventHandler,
) -> Result<(), CallbackError> {
    use engine::Event;
    match event {
        Event::ConnectionStateChanged { state, reason } => {
            handler.on_connection_state_changed(state.into(), reason.into())
        }
        Event::ProxyConnected {
            proxy_type,
            elapsed,
        } => handler.on_proxy_connected(
            proxy_type.into(),
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        ),
        Event::UserJoined { uid, .. } => handler.on_user_joined(uid),
        Event::UserLeft { uid, .. } => handler.on_user_left(uid),
        Event::MediaFallbackToTcp { why } => {
            handler.on_warning(WarningKind::MediaFallbackToTcp, why.to_string())
        }
        Event::DirectPathFailed { why } => {
            handler.on_warning(WarningKind::DirectPathFailed, why.to_string())
        }
        Event::ParameterWarning { warning } => {
            handler.on_warning(WarningKind::ParameterWarning, warning.to_string())
        }
        other => {
            tracing::debug!(event = ?other, "an event this SDK version does not forward");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_modes_round_trip_by_number_and_keep_their_numbers() {
        let modes = [
            (0, engine::ProxyMode::Off),
            (1, engine::ProxyMode::Auto),
            (2, engine::ProxyMode::On),
            (3, engine::ProxyMode::ForceUdp),
            (4, engine::ProxyMode::ForceTcp),
            (5, engine::ProxyMode::ForceTls),
        ];
        for (number, engine_mode) in modes {
            let mode = ProxyMode::from_u32(number).expect("a known number");
            assert_eq!(mode as u32, number);
            assert_eq!(engine::ProxyMode::from(mode), engine_mode);
        }
        assert_eq!(ProxyMode::from_u32(6), None);
    }

    #[test]
    fn proxy_types_keep_their_numbers_and_new_ones_are_appended() {
        let types = [
            (engine::ProxyType::Udp, 1),
            (engine::ProxyType::Tcp, 2),
            (engine::ProxyType::Tls, 3),
            (engine::ProxyType::HttpProxy, 4),
        ];
        for (engine_type, number) in types {
            assert_eq!(ProxyType::from(engine_type) as u32, number);
        }
    }
}
