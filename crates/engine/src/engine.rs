//! [`Engine`]: the application's handle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use cloudproxy_params::ProxyServer;
use cloudproxy_proto::ChannelName;
use cloudproxy_proto::frame::{Join, MAX_DATAGRAM_PAYLOAD, MAX_PAYLOAD};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, EngineBuilder};
use crate::credential::Credential;
use crate::error::{Disconnect, EngineError};
use crate::event::{ConnectionState, Event, Events, IncomingMedia, IncomingMessage, StateReason};
use crate::link::connect;
use crate::session::{Command, Outputs, Session, SessionBase, new_machine};
use crate::settings::{ProxyMode, Settings};

/// The largest reliable message payload: a `Message` frame body holds a
/// 12-byte header and the payload.
pub const MAX_MESSAGE_LEN: usize = MAX_PAYLOAD - 12;
/// The largest media payload: a `Media` frame (8-byte frame header, 12-byte
/// body header) must fit one relay datagram.
pub const MAX_MEDIA_LEN: usize = MAX_DATAGRAM_PAYLOAD - 20;

/// Where the engine is between `join_channel` and `leave_channel`.
#[derive(Debug, Default)]
pub(crate) enum Phase {
    #[default]
    Idle,
    Joining {
        channel: String,
    },
    InChannel {
        channel: String,
        generation: u64,
        commands: mpsc::UnboundedSender<Command>,
        media: mpsc::Sender<Bytes>,
    },
}

impl Phase {
    pub(crate) fn generation(&self) -> Option<u64> {
        match self {
            Self::InChannel { generation, .. } => Some(*generation),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Idle => "not in a channel".into(),
            Self::Joining { channel } => format!("joining channel {channel:?}"),
            Self::InChannel { channel, .. } => format!("in channel {channel:?}"),
        }
    }
}

#[derive(Debug)]
struct Inner {
    config: Arc<Config>,
    settings: Mutex<Settings>,
    phase: Arc<Mutex<Phase>>,
    generation: AtomicU64,
    out: Outputs,
    messages: tokio::sync::Mutex<mpsc::UnboundedReceiver<IncomingMessage>>,
    media: tokio::sync::Mutex<mpsc::Receiver<IncomingMedia>>,
    shutdown: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Ends the session task, if any (it sends `Leave`).
        self.shutdown.cancel();
    }
}

/// A client of the media network, directly or through the cloud proxy.
///
/// Cheap to clone: clones share one engine (one channel at a time). Dropping
/// the last clone leaves the channel.
///
/// ```no_run
/// use bytes::Bytes;
/// use cloudproxy_engine::{Engine, Event};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let engine = Engine::builder("my-app", b"my-app-secret".to_vec())
///     .media_network("198.51.100.1:7000".parse()?, "198.51.100.1:7000".parse()?)
///     .build()?;
/// let mut events = engine.events();
/// // The guide's string, verbatim: through the default proxy server.
/// engine.set_parameters(r#"{"rtc.enable_proxy":true}"#)?;
/// engine.join_channel("room", 42).await?;
/// engine.send_message(Bytes::from_static(b"hello"))?;
/// while let Some(event) = events.recv().await {
///     println!("{event:?}");
///     if let Event::ProxyConnected { proxy_type, elapsed } = event {
///         println!("connected through the proxy over {proxy_type} in {elapsed:?}");
///         break;
///     }
/// }
/// if let Some(message) = engine.recv_message().await {
///     println!("user {:?} says {:?}", message.uid, message.payload);
/// }
/// engine.leave_channel().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Starts building an engine for `app_id`, proving `credential` (the app
    /// secret) to the proxy. See [`EngineBuilder`].
    ///
    /// The credential is a [`Credential`]: parse the hex string the
    /// operator's `cloudproxy serve` prints with [`Credential::from_hex`];
    /// raw bytes (`Vec<u8>`, `&[u8]`, `b"..."`) convert as they are.
    pub fn builder(app_id: impl Into<String>, credential: impl Into<Credential>) -> EngineBuilder {
        EngineBuilder::new(app_id.into(), credential.into())
    }

    pub(crate) fn from_config(config: Config) -> Self {
        let (events, _) = broadcast::channel(1024);
        let (messages_tx, messages_rx) = mpsc::unbounded_channel();
        let (media_tx, media_rx) = mpsc::channel(config.media_queue.max(1024));
        Self {
            inner: Arc::new(Inner {
                config: Arc::new(config),
                settings: Mutex::new(Settings::default()),
                phase: Arc::new(Mutex::new(Phase::Idle)),
                generation: AtomicU64::new(0),
                out: Outputs {
                    events,
                    messages: messages_tx,
                    media: media_tx,
                },
                messages: tokio::sync::Mutex::new(messages_rx),
                media: tokio::sync::Mutex::new(media_rx),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        // A panic while holding the lock cannot leave a Phase half-written.
        self.inner
            .phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn settings(&self) -> MutexGuard<'_, Settings> {
        self.inner
            .settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies a parameter string from the guide, verbatim, for example
    /// `{"rtc.enable_proxy":true}` or
    /// `{"rtc.proxy_server":[2, "[\"192.168.0.112\",\"127.0.0.1\"]", 0]}`
    /// (the guide's sample with unescaped inner quotes is accepted too).
    ///
    /// * `rtc.enable_proxy: true` turns the proxy on ([`ProxyMode::On`], or
    ///   keeps `ForceUdp` / `ForceTcp` if set); with no `rtc.proxy_server`
    ///   the default server `[1, <default domain>, 0]` is used
    ///   ([`EngineBuilder::default_proxy_domain`]).
    /// * `rtc.proxy_server: [type, host(s), port]` sets the server (type 1
    ///   domain, type 2 IP list; port 0 = the default port list). It does
    ///   not by itself turn the proxy on.
    /// * `rtc.enable_proxy: false` turns the proxy off ([`ProxyMode::Off`]).
    /// * Any other key is stored (read it back with [`Engine::parameter`])
    ///   and changes nothing.
    ///
    /// All keys of one call are applied together or not at all.
    ///
    /// An unknown key that looks like a misspelled known one
    /// (`rtc.enableproxy`, `Rtc.Enable_Proxy`, `"rtc.enable_proxy "`) is still
    /// kept, as the guide requires, but reported as an
    /// [`Event::ParameterWarning`] ("did you mean `rtc.enable_proxy`?") and
    /// logged with `tracing::warn!`.
    ///
    /// # Errors
    /// * [`EngineError::InvalidState`] between `join_channel` and
    ///   `leave_channel` (the guide: call it before joining or after
    ///   leaving); nothing changes.
    /// * [`EngineError::InvalidParameters`] with the parser's located error;
    ///   nothing changes.
    ///
    /// ```
    /// # let engine = cloudproxy_engine::Engine::builder("app", b"secret".to_vec())
    /// #     .media_network("127.0.0.1:7000".parse()?, "127.0.0.1:7000".parse()?).build()?;
    /// engine.set_parameters(r#"{"rtc.enable_proxy":true}"#)?;
    /// assert_eq!(engine.proxy_mode(), cloudproxy_engine::ProxyMode::On);
    /// engine.set_parameters(r#"{"rtc.proxy_server":[2, "["192.168.0.112","127.0.0.1"]", 0]}"#)?;
    /// assert_eq!(
    ///     engine.parameter("rtc.proxy_server").as_deref(),
    ///     Some(r#"[2,"[\"192.168.0.112\",\"127.0.0.1\"]",0]"#)
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_parameters(&self, parameters: &str) -> Result<(), EngineError> {
        let phase = self.phase();
        Self::check_idle(&phase, "set_parameters")?;
        let params = cloudproxy_params::parse(parameters)?;
        let mut settings = self.settings();
        let next = settings.with_parameters(&params);
        *settings = next;
        for warning in params.warnings() {
            tracing::warn!(%warning, "set_parameters");
            let _ = self
                .inner
                .out
                .events
                .send(Event::ParameterWarning { warning });
        }
        Ok(())
    }

    /// Selects how the media network is reached (see [`ProxyMode`]). The last
    /// call of this or [`Engine::set_parameters`] wins.
    ///
    /// # Errors
    /// [`EngineError::InvalidState`] between `join_channel` and
    /// `leave_channel`; nothing changes.
    pub fn set_cloud_proxy(&self, mode: ProxyMode) -> Result<(), EngineError> {
        let phase = self.phase();
        Self::check_idle(&phase, "set_cloud_proxy")?;
        self.settings().mode = mode;
        Ok(())
    }

    fn check_idle(phase: &Phase, operation: &'static str) -> Result<(), EngineError> {
        match phase {
            Phase::Idle => Ok(()),
            other => Err(EngineError::InvalidState {
                operation,
                state: other.describe(),
                hint: "must be called before joining a channel or after leaving it",
            }),
        }
    }

    /// The proxy mode in effect.
    #[must_use]
    pub fn proxy_mode(&self) -> ProxyMode {
        self.settings().mode
    }

    /// The proxy server the engine uses when it uses the proxy: the last
    /// `rtc.proxy_server`, else `[1, <default domain>, 0]`.
    #[must_use]
    pub fn proxy_server(&self) -> ProxyServer {
        self.settings()
            .proxy_server
            .clone()
            .unwrap_or_else(|| self.inner.config.default_server.clone())
    }

    /// A parameter's current value as canonical JSON: `rtc.enable_proxy`
    /// (`true` when the mode always uses the proxy), `rtc.proxy_server` (as
    /// last set; `None` when never set), or any other key as last set.
    #[must_use]
    pub fn parameter(&self, key: &str) -> Option<String> {
        self.settings().parameter(key)
    }

    /// A new subscription to the engine's events. Subscribe before
    /// `join_channel` to see every event of the join.
    #[must_use]
    pub fn events(&self) -> Events {
        Events {
            rx: self.inner.out.events.subscribe(),
        }
    }

    /// Joins `channel` as user `uid` and returns once joined; messages and
    /// media then flow until [`Engine::leave_channel`]. "Joined" includes
    /// the media path: the media network has confirmed this engine's media
    /// address over the path media takes, so media another member sends
    /// right after this returns is delivered. A lost connection is
    /// re-established automatically (state `Reconnecting`, then `Connected`
    /// with reason `Resumed`).
    ///
    /// Bounded: `Off` fails after the direct timeout (3 s, joining and
    /// confirming the media path); `Auto` falls back to the proxy after it;
    /// the proxy steps are bounded by the dial policy (10 s per step), the
    /// UDP probe (2 s) and the handshake timeout (10 s, joining and
    /// confirming the media path).
    ///
    /// # Errors
    /// [`EngineError::InvalidState`] if already joining or in a channel;
    /// [`EngineError::InvalidArgument`] for a channel name the protocol
    /// cannot carry (1–64 bytes of UTF-8, no control characters); otherwise
    /// why the media network could not be joined, by each path tried.
    pub async fn join_channel(&self, channel: &str, uid: u32) -> Result<(), EngineError> {
        let channel_name = ChannelName::new(channel).map_err(|_| EngineError::InvalidArgument {
            what: "channel name",
            reason: channel_problem(channel),
        })?;
        let settings = {
            let mut phase = self.phase();
            match &*phase {
                Phase::Idle => {}
                other => {
                    return Err(EngineError::InvalidState {
                        operation: "join_channel",
                        state: other.describe(),
                        hint: "cannot join a second channel; leave the current one first",
                    });
                }
            }
            *phase = Phase::Joining {
                channel: channel.to_owned(),
            };
            self.settings().clone()
        };
        // If this future is dropped mid-join, the engine goes back to idle.
        let mut guard = JoiningGuard {
            phase: &self.inner.phase,
            armed: true,
        };
        let out = self.inner.out.clone();
        out.state(ConnectionState::Connecting, StateReason::Joining);
        let join = Join {
            app_id: self.inner.config.app_id.clone(),
            channel: channel_name,
            user_id: uid,
            resume: None,
        };
        let machine = new_machine(&self.inner.config, join);
        let join = crate::link::Join {
            session: &machine,
            resume: false,
        };
        let link = match connect(&self.inner.config, &settings, join, &out.events).await {
            Ok(link) => link,
            Err(e) => {
                drop(guard);
                out.state(ConnectionState::Failed, StateReason::JoinFailed);
                return Err(e);
            }
        };
        tracing::info!(channel, uid, member_id = link.joined.member_id, route = ?link.route, "joined");
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (media_tx, media_rx) = mpsc::channel(self.inner.config.media_queue);
        let base = SessionBase {
            config: self.inner.config.clone(),
            settings,
            out: out.clone(),
            phase: self.inner.phase.clone(),
            generation,
            shutdown: self.inner.shutdown.clone(),
        };
        let session = Session::new(base, &link);
        {
            let mut phase = self.phase();
            *phase = Phase::InChannel {
                channel: channel.to_owned(),
                generation,
                commands: commands_tx,
                media: media_tx,
            };
            guard.armed = false;
        }
        out.state(ConnectionState::Connected, StateReason::Joined);
        tokio::spawn(session.run(link, commands_rx, media_rx));
        Ok(())
    }

    /// Leaves the channel (a `Leave` goes to the media network) and waits,
    /// at most 3 s, for the connection to close. Leaving when not in a
    /// channel does nothing.
    ///
    /// # Errors
    /// [`EngineError::InvalidState`] while `join_channel` is still running.
    pub async fn leave_channel(&self) -> Result<(), EngineError> {
        let commands = {
            let phase = self.phase();
            match &*phase {
                Phase::Idle => return Ok(()),
                Phase::Joining { .. } => {
                    return Err(EngineError::InvalidState {
                        operation: "leave_channel",
                        state: phase.describe(),
                        hint: "must wait for the join to finish",
                    });
                }
                Phase::InChannel { commands, .. } => commands.clone(),
            }
        };
        let (ack_tx, ack_rx) = oneshot::channel();
        if commands.send(Command::Leave(ack_tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(3), ack_rx).await;
        }
        let mut phase = self.phase();
        if matches!(&*phase, Phase::InChannel { commands: c, .. } if c.same_channel(&commands)) {
            *phase = Phase::Idle;
        }
        Ok(())
    }

    /// The running session's queues, if in a channel.
    fn session(
        &self,
        operation: &'static str,
    ) -> Result<(mpsc::UnboundedSender<Command>, mpsc::Sender<Bytes>), EngineError> {
        let phase = self.phase();
        match &*phase {
            Phase::InChannel {
                commands, media, ..
            } => Ok((commands.clone(), media.clone())),
            other => Err(EngineError::InvalidState {
                operation,
                state: other.describe(),
                hint: "needs a joined channel; join one first",
            }),
        }
    }

    /// Sends a reliable, ordered message to every other member of the
    /// channel. While the engine is reconnecting the message is queued and
    /// sent after the connection resumes; across a failover every message
    /// arrives exactly once, in order.
    ///
    /// # Errors
    /// [`EngineError::InvalidState`] when not in a channel;
    /// [`EngineError::PayloadTooLarge`] above [`MAX_MESSAGE_LEN`] bytes.
    pub fn send_message(&self, payload: Bytes) -> Result<(), EngineError> {
        if payload.len() > MAX_MESSAGE_LEN {
            return Err(EngineError::PayloadTooLarge {
                what: "message",
                len: payload.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        let (commands, _) = self.session("send_message")?;
        commands
            .send(Command::Message(payload))
            .map_err(|_| EngineError::Disconnected(Disconnect::SessionEnded))
    }

    /// Sends a media datagram (unreliable: it may be lost, and is dropped
    /// when the send queue is full or while reconnecting).
    ///
    /// # Errors
    /// [`EngineError::InvalidState`] when not in a channel;
    /// [`EngineError::PayloadTooLarge`] above [`MAX_MEDIA_LEN`] bytes;
    /// [`EngineError::InvalidArgument`] for an empty payload (empty media
    /// datagrams are reserved: they register the engine's address).
    pub fn send_media(&self, payload: Bytes) -> Result<(), EngineError> {
        if payload.is_empty() {
            return Err(EngineError::InvalidArgument {
                what: "media payload",
                reason: "expected at least 1 byte, found 0".into(),
            });
        }
        if payload.len() > MAX_MEDIA_LEN {
            return Err(EngineError::PayloadTooLarge {
                what: "media",
                len: payload.len(),
                max: MAX_MEDIA_LEN,
            });
        }
        let (_, media) = self.session("send_media")?;
        match media.try_send(payload) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(EngineError::Disconnected(Disconnect::SessionEnded))
            }
        }
    }

    /// The next reliable message from another member, in order; waits for
    /// one. `None` only once the engine is gone. Messages are kept (without
    /// bound) until read.
    pub async fn recv_message(&self) -> Option<IncomingMessage> {
        self.inner.messages.lock().await.recv().await
    }

    /// The next media datagram from another member; waits for one. Up to
    /// 1 024 datagrams are buffered; newer ones are dropped while the buffer
    /// is full.
    pub async fn recv_media(&self) -> Option<IncomingMedia> {
        self.inner.media.lock().await.recv().await
    }
}

/// Resets a `Joining` phase to `Idle` unless disarmed.
struct JoiningGuard<'a> {
    phase: &'a Mutex<Phase>,
    armed: bool,
}

impl Drop for JoiningGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut phase = self
                .phase
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if matches!(*phase, Phase::Joining { .. }) {
                *phase = Phase::Idle;
            }
        }
    }
}

/// Why `channel` is not a channel name the protocol carries, naming what
/// was expected, what was found and where (the byte offset of a control
/// character), echoing at most the first [`ECHO_LEN`] bytes of the name.
fn channel_problem(channel: &str) -> String {
    use cloudproxy_proto::MAX_CHANNEL_LEN;
    if channel.is_empty() || channel.len() > MAX_CHANNEL_LEN {
        return format!(
            "expected 1 to {MAX_CHANNEL_LEN} bytes of UTF-8, found {} bytes ({})",
            channel.len(),
            echo(channel)
        );
    }
    match channel.char_indices().find(|(_, c)| c.is_control()) {
        Some((at, c)) => format!(
            "expected no control characters, found {c:?} at byte {at} of {}",
            echo(channel)
        ),
        None => format!("expected a channel name, found {}", echo(channel)),
    }
}

/// How many bytes of a bad argument an error message repeats.
const ECHO_LEN: usize = 64;

/// `text` quoted, cut to [`ECHO_LEN`] bytes (on a character boundary).
fn echo(text: &str) -> String {
    if text.len() <= ECHO_LEN {
        return format!("{text:?}");
    }
    let end = (0..=ECHO_LEN)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    format!("{:?}… (the first {end} bytes)", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_channel_name_is_located_and_not_echoed_in_full() {
        let nul = channel_problem("ab\0cd");
        assert!(nul.contains("at byte 2"), "{nul}");
        let long = "x".repeat(4999);
        let too_long = channel_problem(&long);
        assert!(too_long.contains("found 4999 bytes"), "{too_long}");
        assert!(too_long.len() < 200, "{too_long}");
        assert!(channel_problem("").contains("found 0 bytes"));
    }
}
