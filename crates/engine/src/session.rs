//! The task that runs a joined channel: drives the member's session machine
//! (`cloudproxy_proto::session::ClientSession`: messages, acks, keepalive)
//! over the message channel against the app's commands, moves media, and
//! re-establishes the connection (resuming the membership) when it is lost.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cloudproxy_proto::SessionError;
use cloudproxy_proto::frame::{Frame, Joined, Media};
use cloudproxy_proto::session::{ClientEvent, ClientSession};
use cloudproxy_transport::driver::Next;
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::Phase;
use crate::error::MediaClosed;
use crate::event::{ConnectionState, Event, IncomingMedia, IncomingMessage, StateReason};
use crate::link::{Join, Link, attempt_bound, connect, is_resume_refused};
use crate::settings::Settings;

/// What the application asks of a running session.
#[derive(Debug)]
pub(crate) enum Command {
    Message(Bytes),
    Leave(oneshot::Sender<()>),
}

/// Where a session delivers what it receives.
#[derive(Debug, Clone)]
pub(crate) struct Outputs {
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) messages: mpsc::UnboundedSender<IncomingMessage>,
    pub(crate) media: mpsc::Sender<IncomingMedia>,
}

impl Outputs {
    pub(crate) fn state(&self, state: ConnectionState, reason: StateReason) {
        tracing::info!(?state, ?reason, "connection state changed");
        let _ = self
            .events
            .send(Event::ConnectionStateChanged { state, reason });
    }
}

/// Why a channel connection was lost.
#[derive(Debug, thiserror::Error)]
enum Lost {
    /// The edge closed the message channel.
    #[error("the message channel closed")]
    Closed,
    /// Reading or writing the message channel failed.
    #[error("the message channel failed: {0}")]
    Io(std::io::Error),
    /// The session machine gave up on the connection (keepalive deadline,
    /// the edge gone silent, an `Error` from the edge, a protocol
    /// violation).
    #[error("{0}")]
    Session(SessionError),
    /// The media path through the proxy closed.
    #[error(transparent)]
    Media(MediaClosed),
}

impl Lost {
    fn reason(&self) -> StateReason {
        match self {
            Self::Session(SessionError::Timeout { .. }) => StateReason::KeepaliveTimeout,
            Self::Session(SessionError::Silent { .. }) => StateReason::RelaySilent,
            _ => StateReason::Interrupted,
        }
    }
}

/// Why [`Session::drive`] or [`Session::reconnect`] stopped.
enum End {
    Leave(Option<oneshot::Sender<()>>),
    Lost(Lost),
    /// The reconnect window closed.
    GaveUp,
}

/// What a session shares with its engine.
pub(crate) struct SessionBase {
    pub(crate) config: Arc<Config>,
    pub(crate) settings: Settings,
    pub(crate) out: Outputs,
    pub(crate) phase: Arc<Mutex<Phase>>,
    pub(crate) generation: u64,
    pub(crate) shutdown: CancellationToken,
}

pub(crate) struct Session {
    config: Arc<Config>,
    settings: Settings,
    out: Outputs,
    phase: Arc<Mutex<Phase>>,
    generation: u64,
    shutdown: CancellationToken,
    /// The membership's media address and token.
    joined: Joined,
}

impl Session {
    /// A session for the membership `link` joined.
    pub(crate) fn new(base: SessionBase, link: &Link) -> Self {
        let SessionBase {
            config,
            settings,
            out,
            phase,
            generation,
            shutdown,
        } = base;
        Self {
            config,
            settings,
            out,
            phase,
            generation,
            shutdown,
            joined: link.joined,
        }
    }

    /// Runs until the app leaves, drops the engine, or the connection cannot
    /// be re-established.
    pub(crate) async fn run(
        mut self,
        mut link: Link,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut media: mpsc::Receiver<Bytes>,
    ) {
        // `connect` registered the media address and saw it confirmed.
        loop {
            match self.drive(&mut link, &mut commands, &mut media).await {
                End::Leave(ack) => {
                    link.channel.machine_mut().leave();
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        let _ = link.channel.flush().await;
                        let (_, mut stream) = link.channel.into_parts();
                        let _ = stream.shutdown().await;
                    })
                    .await;
                    self.finish(ConnectionState::Disconnected, StateReason::Left, ack);
                    return;
                }
                End::Lost(lost) => {
                    let reason = lost.reason();
                    tracing::warn!(detail = %lost, ?reason, "channel connection lost; re-establishing");
                    let (machine, _) = link.channel.into_parts();
                    self.out.state(ConnectionState::Reconnecting, reason);
                    match self.reconnect(machine, &mut commands).await {
                        Ok(new_link) => link = new_link,
                        Err(End::Leave(ack)) => {
                            self.finish(ConnectionState::Disconnected, StateReason::Left, ack);
                            return;
                        }
                        Err(End::Lost(_) | End::GaveUp) => {
                            self.finish(
                                ConnectionState::Failed,
                                StateReason::ReconnectFailed,
                                None,
                            );
                            return;
                        }
                    }
                }
                End::GaveUp => {
                    self.finish(ConnectionState::Failed, StateReason::ReconnectFailed, None);
                    return;
                }
            }
        }
    }

    /// Marks the engine idle (if this session is still its session) and
    /// reports the final state.
    fn finish(
        &self,
        state: ConnectionState,
        reason: StateReason,
        ack: Option<oneshot::Sender<()>>,
    ) {
        if let Ok(mut phase) = self.phase.lock() {
            if phase.generation() == Some(self.generation) {
                *phase = Phase::Idle;
            }
        }
        self.out.state(state, reason);
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
    }

    /// An empty `Media` tells the edge where to send this member's media
    /// (repeated with every ping, so a relay's new address is learnt).
    async fn register_media(&self, link: &mut Link) {
        link.media.send(self.media_frame(Bytes::new())).await;
    }

    fn media_frame(&self, payload: Bytes) -> Bytes {
        Frame::Media(Media {
            member_id: self.joined.member_id,
            token: self.joined.media_token,
            payload,
        })
        .to_bytes()
    }

    async fn drive(
        &mut self,
        link: &mut Link,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        media: &mut mpsc::Receiver<Bytes>,
    ) -> End {
        let mut buf = vec![0u8; 2048];
        for datagram in std::mem::take(&mut link.early_media) {
            self.on_media(link, &datagram);
        }
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return End::Leave(None),
                next = link.channel.next_event() => match next {
                    Next::Event(event) => {
                        if let Some(end) = self.on_event(link, event).await {
                            return end;
                        }
                    }
                    Next::PeerClosed => return End::Lost(Lost::Closed),
                    Next::Io(e) => return End::Lost(Lost::Io(e)),
                },
                command = commands.recv() => match command {
                    Some(Command::Message(payload)) => {
                        link.channel.machine_mut().send(std::time::Instant::now(), payload);
                    }
                    Some(Command::Leave(ack)) => return End::Leave(Some(ack)),
                    None => return End::Leave(None),
                },
                Some(payload) = media.recv() => link.media.send(self.media_frame(payload)).await,
                datagram = link.media.recv(&mut buf) => match datagram {
                    Ok(datagram) => self.on_media(link, &datagram),
                    Err(e) => return End::Lost(Lost::Media(e)),
                },
            }
        }
    }

    async fn on_event(&mut self, link: &mut Link, event: ClientEvent) -> Option<End> {
        match event {
            ClientEvent::Message(message) => {
                let _ = self.out.messages.send(IncomingMessage {
                    uid: link.channel.machine().user_id(message.from),
                    member_id: message.from,
                    payload: message.payload,
                });
            }
            ClientEvent::MemberJoined(m) => {
                let _ = self.out.events.send(Event::UserJoined {
                    uid: m.user_id,
                    member_id: m.member_id,
                });
            }
            ClientEvent::MemberLeft(m) => {
                let _ = self.out.events.send(Event::UserLeft {
                    uid: m.user_id,
                    member_id: m.member_id,
                });
            }
            ClientEvent::KeepaliveSent => self.register_media(link).await,
            ClientEvent::Lost(e) => return Some(End::Lost(Lost::Session(e))),
            // Answers to a `Join`: `connect` consumed them.
            ClientEvent::Joined { .. } | ClientEvent::Refused { .. } => {}
        }
        None
    }

    fn on_media(&self, link: &Link, datagram: &Bytes) {
        match Frame::decode(datagram.clone()) {
            // Empty payloads are address registrations, not media.
            Ok(Frame::Media(media)) if !media.payload.is_empty() => {
                let _ = self.out.media.try_send(IncomingMedia {
                    uid: link.channel.machine().user_id(media.member_id),
                    member_id: media.member_id,
                    payload: media.payload,
                });
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "malformed media datagram dropped"),
        }
    }

    /// Re-establishes the connection, resuming the membership of `machine`,
    /// until the reconnect window closes. Messages sent meanwhile are queued.
    /// `Err`: the app left (or dropped the engine) meanwhile, or the window
    /// closed.
    async fn reconnect(
        &mut self,
        machine: ClientSession,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Result<Link, End> {
        let give_up = Instant::now() + self.config.reconnect_timeout;
        let mut backoff = Duration::from_millis(100);
        let mut resume = true;
        // Sent after the resume, numbered after what the edge still lacks.
        let mut queued = Vec::new();
        loop {
            let (config, settings, events) = (
                self.config.clone(),
                self.settings.clone(),
                self.out.events.clone(),
            );
            let bound = attempt_bound(&config);
            let join = Join {
                session: &machine,
                resume,
            };
            let attempt = async move {
                tokio::time::timeout(bound, connect(&config, &settings, join, &events)).await
            };
            tokio::pin!(attempt);
            let result = loop {
                tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => return Err(End::Leave(None)),
                    command = commands.recv() => match command {
                        Some(Command::Message(payload)) => queued.push(payload),
                        Some(Command::Leave(ack)) => return Err(End::Leave(Some(ack))),
                        None => return Err(End::Leave(None)),
                    },
                    result = &mut attempt => break result,
                }
            };
            match result {
                Ok(Ok(mut link)) => {
                    for payload in queued {
                        link.channel
                            .machine_mut()
                            .send(std::time::Instant::now(), payload);
                    }
                    self.resumed(&mut link);
                    return Ok(link);
                }
                Ok(Err(e)) if resume && is_resume_refused(&e) => {
                    tracing::warn!(error = %e, "membership could not be resumed; joining afresh");
                    resume = false;
                    continue;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "re-establishing the connection failed"),
                Err(_) => {
                    tracing::warn!(after = ?bound, "re-establishing the connection timed out")
                }
            }
            if Instant::now() + backoff >= give_up {
                return Err(End::GaveUp);
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return Err(End::Leave(None)),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// After a successful (re)join: report the state. The session machine
    /// already queued what the edge is missing.
    fn resumed(&mut self, link: &mut Link) {
        let reason = if link.resumed {
            StateReason::Resumed
        } else {
            // A new membership: the members of the old one are gone.
            for m in std::mem::take(&mut link.forgotten) {
                let _ = self.out.events.send(Event::UserLeft {
                    uid: m.user_id,
                    member_id: m.member_id,
                });
            }
            StateReason::Rejoined
        };
        self.joined = link.joined;
        // The media path was confirmed by `connect`.
        self.out.state(ConnectionState::Connected, reason);
    }
}

/// A session for the first membership: its machine, ready to connect.
pub(crate) fn new_machine(config: &Config, join: cloudproxy_proto::frame::Join) -> ClientSession {
    ClientSession::new(
        crate::link::session_config(config),
        join,
        std::time::Instant::now(),
    )
}
