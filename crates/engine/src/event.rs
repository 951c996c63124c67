//! What the engine tells the application: events, incoming messages and media.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast;

/// The state of the engine's connection to a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Not in a channel.
    Disconnected,
    /// `join_channel` is connecting.
    Connecting,
    /// In the channel: messages and media flow.
    Connected,
    /// The connection was lost; the engine is re-establishing it by itself.
    /// Messages sent meanwhile are queued.
    Reconnecting,
    /// Joining failed, or the connection could not be re-established.
    Failed,
}

/// Why the connection state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StateReason {
    /// `join_channel` was called.
    Joining,
    /// The engine is setting up the path through the proxy server
    /// (allocation, relay binding).
    SettingProxyServer,
    /// The channel was joined.
    Joined,
    /// The message channel closed or was reset (relay or network lost).
    Interrupted,
    /// Nothing arrived on the message channel for the keepalive timeout.
    KeepaliveTimeout,
    /// The relay (or the edge) went silent mid-call without closing: the
    /// edge should have answered (a message waited for its acknowledgement,
    /// or it had been talking often), and a probe got no answer either
    /// ([`EngineBuilder::silence_detection`](crate::EngineBuilder::silence_detection)).
    RelaySilent,
    /// The connection was re-established and the membership resumed: no
    /// message was lost or duplicated.
    Resumed,
    /// The connection was re-established but the old membership had expired:
    /// the channel was joined afresh (messages in flight may be lost).
    Rejoined,
    /// Joining failed (see the error `join_channel` returned).
    JoinFailed,
    /// The connection could not be re-established within the reconnect
    /// window.
    ReconnectFailed,
    /// `leave_channel` was called.
    Left,
}

/// Which rung of the transport ladder carries the call through the proxy
/// (see [`ProxyMode`](crate::ProxyMode)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyType {
    /// Media over the UDP relay; messages over the TCP relay.
    Udp,
    /// Media over the TCP relay (UDP-over-TCP); messages over the TCP relay.
    Tcp,
    /// Everything over TLS to the proxy's TLS port (443 by default).
    Tls,
    /// Everything over TLS to the proxy's TLS port, through an HTTP proxy
    /// (`CONNECT`).
    HttpProxy,
}

impl fmt::Display for ProxyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
            Self::HttpProxy => "TLS through an HTTP proxy",
        })
    }
}

/// Something the application may want to know about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The connection state changed.
    ConnectionStateChanged {
        /// The new state.
        state: ConnectionState,
        /// Why.
        reason: StateReason,
    },
    /// The engine is connected through the proxy.
    ProxyConnected {
        /// How media travels.
        proxy_type: ProxyType,
        /// From the start of the (re)connection to the channel being joined.
        elapsed: Duration,
    },
    /// Media could not use UDP and goes over the TCP relay instead.
    MediaFallbackToTcp {
        /// Why UDP was not used.
        why: String,
    },
    /// `ProxyMode::Auto`: the direct path failed; the proxy is tried next.
    DirectPathFailed {
        /// Why the direct path failed.
        why: String,
    },
    /// Another user is in the channel (also sent for everyone already there
    /// when joining).
    UserJoined {
        /// The user's id.
        uid: u32,
        /// The user's member id in this channel.
        member_id: u32,
    },
    /// A user left the channel (or its connection timed out).
    UserLeft {
        /// The user's id.
        uid: u32,
        /// The user's member id in this channel.
        member_id: u32,
    },
    /// [`Engine::set_parameters`](crate::Engine::set_parameters) accepted
    /// something that is most likely a mistake, such as a misspelled
    /// `rtc.enable_proxy` (kept as an unknown key, with no effect). Also
    /// logged with `tracing::warn!`.
    ParameterWarning {
        /// What, with a suggestion; its `Display` is one line.
        warning: cloudproxy_params::ParamWarning,
    },
}

/// A reliable message from another member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingMessage {
    /// The sender's user id, when the engine has been told it (always, with
    /// the reference media edge).
    pub uid: Option<u32>,
    /// The sender's member id.
    pub member_id: u32,
    /// The message.
    pub payload: Bytes,
}

/// A media datagram from another member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingMedia {
    /// The sender's user id, when known.
    pub uid: Option<u32>,
    /// The sender's member id.
    pub member_id: u32,
    /// The datagram.
    pub payload: Bytes,
}

/// A subscription to the engine's events, from
/// [`Engine::events`](crate::Engine::events).
///
/// Events are buffered (1 024 per subscriber); a subscriber that falls
/// further behind skips the oldest ones.
#[derive(Debug)]
pub struct Events {
    pub(crate) rx: broadcast::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the engine is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            match self.rx.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::warn!(skipped, "event subscriber fell behind; events skipped");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        loop {
            match self.rx.try_recv() {
                Ok(event) => return Some(event),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => return None,
            }
        }
    }
}
