//! Client ↔ media edge frames: [`Join`], [`Joined`], [`Message`], [`Media`]
//! and the membership announcements ([`Member`]). `Leave` has no body and
//! `Ack` is a bare sequence number (see [`super::control`]).

use bytes::{BufMut, Bytes};

use super::{Body, BodyReader};
use crate::error::CodecError;
use crate::types::{AppId, ChannelName};

/// Earlier membership a `Join` asks to resume after a relay failover.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Resume {
    /// Member id from the earlier `Joined`.
    pub member_id: u32,
    /// Resume token from the earlier `Joined`.
    pub resume_token: u64,
    /// Highest message sequence number the client received in order.
    pub last_received: u64,
}

/// Client → media edge: join a channel.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Join {
    /// The app id.
    pub app_id: AppId,
    /// The channel name.
    pub channel: ChannelName,
    /// The user id chosen by the app.
    pub user_id: u32,
    /// Set when resuming after a failover.
    pub resume: Option<Resume>,
}

/// Media edge → client: the join succeeded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Joined {
    /// Member id within the channel (stable across a resume).
    pub member_id: u32,
    /// Secret to present in a later `Join` to resume this membership.
    pub resume_token: u64,
    /// Token the client puts in every `Media` it sends.
    pub media_token: u64,
    /// Highest message sequence number the edge received in order from this
    /// client (0 for a fresh join); the client resends everything above it.
    pub last_received: u64,
    /// True when an earlier membership was resumed.
    pub resumed: bool,
}

/// A reliable, ordered message (sequence numbers start at 1 per direction).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Message {
    /// Sequence number, per direction, starting at 1, +1 per message.
    pub seq: u64,
    /// Sender's member id (the edge fills it in on delivery).
    pub from: u32,
    /// The application's bytes.
    pub payload: Bytes,
}

/// A media datagram, carried inside a UDP relay payload or a `Datagram` frame.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Media {
    /// Client → edge: the sender's own member id. Edge → client: the sender's.
    pub member_id: u32,
    /// Client → edge: the `media_token` from `Joined`. Edge → client: 0.
    pub token: u64,
    /// The media bytes.
    pub payload: Bytes,
}

/// A channel member, as announced by `MemberJoined` / `MemberLeft`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Member {
    /// Member id within the channel.
    pub member_id: u32,
    /// The member's user id.
    pub user_id: u32,
}

impl Body for Join {
    fn body_len(&self) -> usize {
        self.app_id.wire_len()
            + self.channel.wire_len()
            + 4
            + 1
            + if self.resume.is_some() { 20 } else { 0 }
    }

    fn encode<B: BufMut>(&self, dst: &mut B) {
        self.app_id.write(dst);
        self.channel.write(dst);
        dst.put_u32(self.user_id);
        match self.resume {
            None => dst.put_u8(0),
            Some(r) => {
                dst.put_u8(1);
                dst.put_u32(r.member_id);
                dst.put_u64(r.resume_token);
                dst.put_u64(r.last_received);
            }
        }
    }

    fn parse(r: &mut BodyReader<'_>) -> Result<Self, CodecError> {
        let app_id = AppId::read(r)?;
        let channel = ChannelName::read(r)?;
        let user_id = r.u32("user_id")?;
        let resume = if r.flag("resume")? {
            Some(Resume {
                member_id: r.u32("resume.member_id")?,
                resume_token: r.u64("resume.resume_token")?,
                last_received: r.u64("resume.last_received")?,
            })
        } else {
            None
        };
        r.finish("Join")?;
        Ok(Self {
            app_id,
            channel,
            user_id,
            resume,
        })
    }
}

impl Body for Joined {
    fn body_len(&self) -> usize {
        4 + 8 + 8 + 8 + 1
    }

    fn encode<B: BufMut>(&self, dst: &mut B) {
        dst.put_u32(self.member_id);
        dst.put_u64(self.resume_token);
        dst.put_u64(self.media_token);
        dst.put_u64(self.last_received);
        dst.put_u8(u8::from(self.resumed));
    }

    fn parse(r: &mut BodyReader<'_>) -> Result<Self, CodecError> {
        let j = Self {
            member_id: r.u32("member_id")?,
            resume_token: r.u64("resume_token")?,
            media_token: r.u64("media_token")?,
            last_received: r.u64("last_received")?,
            resumed: r.flag("resumed")?,
        };
        r.finish("Joined")?;
        Ok(j)
    }
}

impl Body for Message {
    fn body_len(&self) -> usize {
        8 + 4 + self.payload.len()
    }

    fn encode<B: BufMut>(&self, dst: &mut B) {
        dst.put_u64(self.seq);
        dst.put_u32(self.from);
        dst.put_slice(&self.payload);
    }

    fn parse(r: &mut BodyReader<'_>) -> Result<Self, CodecError> {
        let seq = r.u64("seq")?;
        let from = r.u32("from")?;
        Ok(Self {
            seq,
            from,
            payload: r.payload(),
        })
    }
}

impl Body for Media {
    fn body_len(&self) -> usize {
        4 + 8 + self.payload.len()
    }

    fn encode<B: BufMut>(&self, dst: &mut B) {
        dst.put_u32(self.member_id);
        dst.put_u64(self.token);
        dst.put_slice(&self.payload);
    }

    fn parse(r: &mut BodyReader<'_>) -> Result<Self, CodecError> {
        let member_id = r.u32("member_id")?;
        let token = r.u64("token")?;
        Ok(Self {
            member_id,
            token,
            payload: r.payload(),
        })
    }
}

impl Body for Member {
    fn body_len(&self) -> usize {
        4 + 4
    }

    fn encode<B: BufMut>(&self, dst: &mut B) {
        dst.put_u32(self.member_id);
        dst.put_u32(self.user_id);
    }

    fn parse(r: &mut BodyReader<'_>) -> Result<Self, CodecError> {
        let m = Self {
            member_id: r.u32("member_id")?,
            user_id: r.u32("user_id")?,
        };
        r.finish("Member")?;
        Ok(m)
    }
}
