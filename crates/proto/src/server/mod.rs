//! Sans-I/O server side: the allocation service and the relays' handshakes.
//!
//! * [`Server`] holds the configuration, the [`TicketKeyRing`](crate::ticket::TicketKeyRing), a
//!   [`CredentialStore`] (app id → secrets) and an [`Entropy`] source. It is
//!   shared (`Arc`) by every connection and is itself stateless per request:
//!   it checks credential proofs and tickets and issues tickets.
//! * [`Connection`] is one accepted TCP connection on an allocation port
//!   ([`Role::Allocation`]) or the relay port ([`Role::Relay`]).
//! * [`Server::handle_allocation_datagram`] answers allocation requests on the
//!   allocation UDP ports, never with more bytes than the request had.
//! * [`UdpRelay`] is the binding table of the media relay's UDP sockets.
//!
//! Decisions that need state this crate does not have — the per-app quota, the
//! destination allowlist, whether a TCP connect to the destination worked —
//! are the I/O layer's: the state machines stop at
//! [`ServerEvent::AllocationRequested`] / [`ServerEvent::BindRequested`] (or
//! [`UdpRelayEvent::BindRequested`]) until it calls `accept_*` or `reject`.
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::Arc;
//! use std::time::Instant;
//! use cloudproxy_proto::server::{AppCredentials, Connection, Role, Server, ServerConfig, ServerEvent};
//! use cloudproxy_proto::ticket::TicketKeyRing;
//! use cloudproxy_proto::{AppId, Machine, Timebase, Transports};
//!
//! # struct Rng(std::sync::atomic::AtomicU64);
//! # impl cloudproxy_proto::server::Entropy for Rng {
//! #     fn fill(&self, buf: &mut [u8]) {
//! #         for b in buf { *b = self.0.fetch_add(7, std::sync::atomic::Ordering::Relaxed) as u8; }
//! #     }
//! # }
//! let now = Instant::now();
//! let mut apps = HashMap::new();
//! apps.insert(
//!     AppId::new("demo-app").unwrap(),
//!     Arc::new(AppCredentials { secrets: vec![b"demo-secret".to_vec()], transports: Transports::ALL }),
//! );
//! let mut config = ServerConfig::new(Timebase::new(now, 1_700_000_000));
//! config.tcp_relays = vec!["192.0.2.1:4000".parse().unwrap()];
//! config.udp_relays = vec!["192.0.2.1:4500".parse().unwrap()];
//! let server = Arc::new(Server::new(
//!     config,
//!     TicketKeyRing::new(1, vec![0x5a; 32]),
//!     Arc::new(apps),
//!     Arc::new(Rng(0.into())),
//! ));
//! let mut conn = Connection::new(server, Role::Allocation, now);
//! // Garbage is refused with an Error frame and the connection closes.
//! conn.handle_input(now, b"GET / HTTP/1.1\r\n");
//! assert!(conn.poll_transmit().is_some());
//! assert!(matches!(conn.poll_event(), Some(ServerEvent::Closed(_))));
//! ```

mod admission;
mod allocation;
mod config;
mod connection;
mod udp_relay;

pub use admission::{AllocationRequest, BindRequest, Grant, Server};
pub use allocation::{PendingAllocation, UdpAllocation};
pub use config::{
    AppCredentials, CredentialStore, DEFAULT_MAX_QUEUED_BYTES, Entropy, ServerConfig,
};
pub use connection::{Connection, HANDSHAKE_MAX_PAYLOAD, Role, ServerEvent};
pub use udp_relay::{
    BindRequestId, DropReason, RelayInput, SliceInput, Transmit, UdpBinding, UdpRelay,
    UdpRelayEvent,
};
