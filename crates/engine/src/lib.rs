//! # cloudproxy-engine
//!
//! The client library of the cloud proxy: join a channel of the media
//! network, exchange reliable messages and media datagrams, directly or —
//! behind a firewall that only lets the proxy's addresses through — via the
//! cloud proxy. One dependency is enough: the types an app needs are
//! re-exported here.
//!
//! ```no_run
//! use bytes::Bytes;
//! use cloudproxy_engine::{Credential, Engine};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // The app secret as the operator's `cloudproxy serve` printed it.
//! let credential = Credential::from_hex("5e3a9c0d41b2f7e6a8c9d0e1f2a3b4c5")?;
//! let engine = Engine::builder("my-app", credential)
//!     .media_network("198.51.100.1:7000".parse()?, "198.51.100.1:7000".parse()?)
//!     .build()?;
//! // The guide's strings, verbatim.
//! engine.set_parameters(r#"{"rtc.enable_proxy":true}"#)?;
//! engine.set_parameters(r#"{"rtc.proxy_server":[2, "["192.168.0.112","127.0.0.1"]", 0]}"#)?;
//! engine.join_channel("room", 7).await?;
//! engine.send_message(Bytes::from_static(b"hello"))?;
//! engine.send_media(Bytes::from_static(b"rtp packet"))?;
//! let message = engine.recv_message().await;
//! engine.leave_channel().await?;
//! # Ok(()) }
//! ```
//!
//! `examples/guide.rs` runs the same against a proxy and a media edge it
//! starts on loopback: `cargo run -p cloudproxy-engine --example guide`.
//!
//! # Semantics
//!
//! **Parameters** ([`Engine::set_parameters`]) follow the guide: they must be
//! set before joining or after leaving ([`EngineError::InvalidState`]
//! otherwise), several keys in one call apply together or not at all, and
//! unknown keys are kept and readable ([`Engine::parameter`]) without
//! changing behaviour.
//!
//! **Modes** ([`ProxyMode`], [`Engine::set_cloud_proxy`]): `Off` (direct),
//! `Auto` (direct first, the proxy after [`EngineBuilder::direct_timeout`],
//! 3 s by default, or at once when the direct path is refused), `On` (the
//! guide's `{"rtc.enable_proxy":true}`: always the proxy, media over UDP
//! with automatic fallback to UDP-over-TCP), `ForceUdp`, `ForceTcp`. The last
//! call of either API wins, except that `rtc.enable_proxy: true` keeps a
//! forced mode.
//!
//! **Through the proxy** the engine resolves the server (type 1 by DNS with
//! a 2 s deadline, type 2 as listed; port 0 = 1080, 8000, 25000, 9700),
//! races the addresses happy-eyeballs style (250 ms stagger, 3 s per
//! attempt, 10 s overall: a refusing address costs nothing, a silent one at
//! most one stagger), allocates a session, opens the media path (UDP probed
//! for 2 s, then UDP-over-TCP in `On`/`Auto`, reported by
//! [`Event::MediaFallbackToTcp`]) and the message channel, and joins.
//! On every path a join (and a resume) is reported only once the media
//! network has confirmed the engine's media address over the media path, so
//! media sent right after `join_channel` returns is not lost.
//! [`Event::ProxyConnected`] says which transport media took and how long it
//! took.
//!
//! **Failover**: when the message channel closes or is reset, goes silent
//! mid-call (a message waits for its acknowledgement, or an edge that was
//! talking goes quiet, for 700 ms, and a probe `Ping` gets no answer within
//! 800 ms: [`StateReason::RelaySilent`], see
//! [`EngineBuilder::silence_detection`]), or nothing arrives for the
//! keepalive timeout (45 s; pings every 15 s; an idle call), the engine
//! reports `Reconnecting`, re-establishes the whole path (a new allocation
//! through the first proxy address that answers, so a dead node is skipped)
//! and resumes the membership at the media network. Both sides resend only
//! what the other has not acknowledged and drop duplicates by sequence
//! number, so every reliable message is delivered exactly once and in order.
//! Messages sent while reconnecting are queued. Attempts repeat with backoff
//! (100 ms doubling to 2 s) for [`EngineBuilder::reconnect_timeout`] (30 s,
//! the media edge's linger time), then the state becomes `Failed`.

mod config;
mod credential;
mod engine;
mod error;
mod event;
mod ladder;
mod link;
mod rungs;
mod session;
mod settings;
mod tls_rung;

pub use config::EngineBuilder;
pub use credential::{Credential, CredentialError};
pub use engine::{Engine, MAX_MEDIA_LEN, MAX_MESSAGE_LEN};
pub use error::{DirectFailure, Disconnect, EngineError, MediaClosed, MediaUnconfirmed};
pub use event::{
    ConnectionState, Event, Events, IncomingMedia, IncomingMessage, ProxyType, StateReason,
};
pub use settings::ProxyMode;

pub use bytes::Bytes;
pub use cloudproxy_params::{
    DEFAULT_PORTS, DEFAULT_PROXY_DOMAIN, DEFAULT_TLS_PORT, HttpProxy, ParamError, ParamWarning,
    ProxyCredentials, ProxyKind, ProxyServer, TlsPin,
};
pub use cloudproxy_proto::ErrorCode;
pub use cloudproxy_proto::session::SilenceDetection;
pub use cloudproxy_transport::dial::{DialError, DialPolicy};
pub use cloudproxy_transport::resolve::ResolveError;
pub use cloudproxy_transport::tls::{Fingerprint, TlsTrust, TrustError};
pub use cloudproxy_transport::tunnel::TunnelError;
