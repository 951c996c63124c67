//! The task that runs a joined channel: reads and writes the message
//! channel, moves media, keeps the connection alive, and re-establishes it
//! (resuming the membership) when it is lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cloudproxy_proto::frame::{Frame, Join, Joined, Media, Resume};
use cloudproxy_proto::reliable::{Inbox, Outbox, Received};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::Phase;
use crate::event::{ConnectionState, Event, IncomingMedia, IncomingMessage, StateReason};
use crate::link::{Link, attempt_bound, connect, is_resume_refused};
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

/// Why [`Session::drive`] stopped.
enum End {
    Leave(Option<oneshot::Sender<()>>),
    Lost(StateReason, String),
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
    pub(crate) config: Arc<Config>,
    pub(crate) settings: Settings,
    pub(crate) out: Outputs,
    pub(crate) phase: Arc<Mutex<Phase>>,
    pub(crate) generation: u64,
    pub(crate) shutdown: CancellationToken,
    pub(crate) join: Join,
    pub(crate) joined: Joined,
    pub(crate) outbox: Outbox,
    pub(crate) inbox: Inbox,
    pub(crate) members: HashMap<u32, u32>,
    pub(crate) ping_value: u64,
}

impl Session {
    /// A session for a fresh membership.
    pub(crate) fn new(base: SessionBase, join: Join, joined: Joined) -> Self {
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
            join,
            outbox: Outbox::new(joined.member_id),
            joined,
            inbox: Inbox::new(),
            members: HashMap::new(),
            ping_value: 0,
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
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        let _ = link.conn.write_frame(&Frame::Leave).await;
                        link.conn.shutdown().await;
                    })
                    .await;
                    drop(link);
                    self.finish(ConnectionState::Disconnected, StateReason::Left, ack);
                    return;
                }
                End::Lost(reason, detail) => {
                    tracing::warn!(%detail, ?reason, "channel connection lost; re-establishing");
                    drop(link);
                    self.out.state(ConnectionState::Reconnecting, reason);
                    match self.reconnect(&mut commands).await {
                        Ok(new_link) => link = new_link,
                        Err(End::Leave(ack)) => {
                            self.finish(ConnectionState::Disconnected, StateReason::Left, ack);
                            return;
                        }
                        Err(End::Lost(..)) => {
                            self.finish(
                                ConnectionState::Failed,
                                StateReason::ReconnectFailed,
                                None,
                            );
                            return;
                        }
                    }
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
    async fn register_media(&self, link: &Link) {
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
        let mut last_tx = Instant::now();
        let mut last_rx = Instant::now();
        let mut buf = vec![0u8; 2048];
        for datagram in std::mem::take(&mut link.early_media) {
            self.on_media(&datagram);
        }
        loop {
            let ping_at = last_tx + self.config.keepalive_interval;
            let dead_at = last_rx + self.config.keepalive_timeout;
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return End::Leave(None),
                frame = link.conn.read_frame() => {
                    let frame = match frame {
                        Ok(Some(frame)) => frame,
                        Ok(None) => return End::Lost(StateReason::Interrupted, "the message channel closed".into()),
                        Err(e) => return End::Lost(StateReason::Interrupted, e),
                    };
                    last_rx = Instant::now();
                    if let Err(e) = self.on_frame(link, frame).await {
                        return End::Lost(StateReason::Interrupted, e);
                    }
                    if self.inbox.has_unacked() && (self.inbox.ack_due() || !link.conn.has_buffered()) {
                        let ack = Frame::Ack(self.inbox.ack());
                        if let Err(e) = link.conn.write_frame(&ack).await {
                            return End::Lost(StateReason::Interrupted, format!("writing an ack: {e}"));
                        }
                        last_tx = Instant::now();
                    }
                }
                command = commands.recv() => match command {
                    Some(Command::Message(payload)) => {
                        let message = self.outbox.push(payload);
                        if let Err(e) = link.conn.write_frame(&Frame::Message(message)).await {
                            return End::Lost(StateReason::Interrupted, format!("writing a message: {e}"));
                        }
                        last_tx = Instant::now();
                    }
                    Some(Command::Leave(ack)) => return End::Leave(Some(ack)),
                    None => return End::Leave(None),
                },
                Some(payload) = media.recv() => link.media.send(self.media_frame(payload)).await,
                datagram = link.media.recv(&mut buf) => match datagram {
                    Ok(datagram) => self.on_media(&datagram),
                    Err(e) => return End::Lost(StateReason::Interrupted, e),
                },
                () = tokio::time::sleep_until(ping_at.min(dead_at)) => {
                    let now = Instant::now();
                    if now >= dead_at {
                        return End::Lost(
                            StateReason::KeepaliveTimeout,
                            format!("nothing received for {:?}", self.config.keepalive_timeout),
                        );
                    }
                    self.ping_value += 1;
                    if let Err(e) = link.conn.write_frame(&Frame::Ping(self.ping_value)).await {
                        return End::Lost(StateReason::Interrupted, format!("writing a ping: {e}"));
                    }
                    self.register_media(link).await;
                    last_tx = now;
                }
            }
        }
    }

    async fn on_frame(&mut self, link: &mut Link, frame: Frame) -> Result<(), String> {
        match frame {
            Frame::Message(message) => match self.inbox.receive(&message) {
                Received::Deliver => {
                    let _ = self.out.messages.send(IncomingMessage {
                        uid: self.members.get(&message.from).copied(),
                        member_id: message.from,
                        payload: message.payload,
                    });
                }
                Received::Duplicate => {}
                Received::Gap => {
                    tracing::debug!(seq = message.seq, "message beyond a gap dropped");
                }
            },
            Frame::Ack(seq) => self.outbox.acknowledge(seq),
            Frame::Ping(v) => link
                .conn
                .write_frame(&Frame::Pong(v))
                .await
                .map_err(|e| format!("writing a pong: {e}"))?,
            Frame::Pong(_) => {}
            Frame::MemberJoined(m) => {
                if self.members.insert(m.member_id, m.user_id).is_none() {
                    let _ = self.out.events.send(Event::UserJoined {
                        uid: m.user_id,
                        member_id: m.member_id,
                    });
                }
            }
            Frame::MemberLeft(m) => {
                if self.members.remove(&m.member_id).is_some() {
                    let _ = self.out.events.send(Event::UserLeft {
                        uid: m.user_id,
                        member_id: m.member_id,
                    });
                }
            }
            Frame::Error(e) => {
                return Err(format!("the media network closed the channel: {}", e.code));
            }
            other => {
                return Err(format!(
                    "unexpected {other:?} from the media network while in the channel"
                ));
            }
        }
        Ok(())
    }

    fn on_media(&self, datagram: &Bytes) {
        match Frame::decode(datagram.clone()) {
            // Empty payloads are address registrations, not media.
            Ok(Frame::Media(media)) if !media.payload.is_empty() => {
                let _ = self.out.media.try_send(IncomingMedia {
                    uid: self.members.get(&media.member_id).copied(),
                    member_id: media.member_id,
                    payload: media.payload,
                });
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "malformed media datagram dropped"),
        }
    }

    /// Re-establishes the connection, resuming the membership, until the
    /// reconnect window closes. Messages sent meanwhile are queued. `Err`:
    /// the app left (or dropped the engine) meanwhile, or the window closed.
    async fn reconnect(
        &mut self,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Result<Link, End> {
        let give_up = Instant::now() + self.config.reconnect_timeout;
        let mut backoff = Duration::from_millis(100);
        let mut resume = true;
        loop {
            let mut join = self.join.clone();
            if resume {
                join.resume = Some(Resume {
                    member_id: self.joined.member_id,
                    resume_token: self.joined.resume_token,
                    last_received: self.inbox.last_received(),
                });
            }
            let (config, settings, events) = (
                self.config.clone(),
                self.settings.clone(),
                self.out.events.clone(),
            );
            let bound = attempt_bound(&config);
            let attempt = async move {
                tokio::time::timeout(bound, connect(&config, &settings, join, &events)).await
            };
            tokio::pin!(attempt);
            let result = loop {
                tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => return Err(End::Leave(None)),
                    command = commands.recv() => match command {
                        // Queued: numbered now, sent after the resume.
                        Some(Command::Message(payload)) => { self.outbox.push(payload); }
                        Some(Command::Leave(ack)) => return Err(End::Leave(Some(ack))),
                        None => return Err(End::Leave(None)),
                    },
                    result = &mut attempt => break result,
                }
            };
            match result {
                Ok(Ok(mut link)) => match self.resumed(&mut link, resume).await {
                    Ok(()) => return Ok(link),
                    Err(e) => {
                        tracing::warn!(error = %e, "connection lost right after re-establishing it")
                    }
                },
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
                return Err(End::Lost(StateReason::ReconnectFailed, "gave up".into()));
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return Err(End::Leave(None)),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// After a successful (re)join: resend what the edge is missing.
    async fn resumed(&mut self, link: &mut Link, resume: bool) -> Result<(), String> {
        let joined = link.joined;
        let reason = if resume && joined.resumed {
            StateReason::Resumed
        } else {
            // A fresh membership: new numbering on both sides.
            let pending: Vec<Bytes> = self.outbox.resend_after(0).map(|m| m.payload).collect();
            self.outbox = Outbox::new(joined.member_id);
            for payload in pending {
                self.outbox.push(payload);
            }
            self.inbox = Inbox::new();
            for (member_id, uid) in self.members.drain() {
                let _ = self.out.events.send(Event::UserLeft { uid, member_id });
            }
            StateReason::Rejoined
        };
        self.joined = joined;
        let resend: Vec<_> = self
            .outbox
            .resend_after(self.joined.last_received)
            .collect();
        for message in resend {
            link.conn
                .write_frame(&Frame::Message(message))
                .await
                .map_err(|e| format!("resending a message: {e}"))?;
        }
        // The media path was confirmed by `connect`.
        self.out.state(ConnectionState::Connected, reason);
        Ok(())
    }
}
