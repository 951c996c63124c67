//! The client ↔ media edge message channel as sans-I/O machines
//! (`docs/protocol.md` §9): [`client`] is the member's side (join, resume,
//! reliable messages, acks, keepalive), [`edge`] the edge's side of one
//! connection. Both implement [`Machine`](crate::Machine) over the channel's
//! byte stream, so one driver runs them.

pub mod client;
pub mod edge;
mod reader;

pub use client::{ClientEvent, ClientSession, ClientSessionConfig, SilenceDetection};
pub use edge::{EdgeEvent, EdgeSession, EdgeSessionConfig, HandshakeFailure};
