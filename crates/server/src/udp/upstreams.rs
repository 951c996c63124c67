//! The bindings' upstream sockets as one set that tokio watches: every
//! upstream socket is a plain non-blocking mio socket in the relay socket's
//! own `mio::Poll` (an epoll or kqueue set keyed by binding id), and the
//! `Poll`'s descriptor is the one thing registered with tokio's reactor. An
//! idle binding so holds no task, no buffer and no tokio registration.
//!
//! The platform boundary of the UDP relay is this module: handing a `Poll`
//! to tokio needs `tokio::io::unix::AsyncFd`, which exists on unix only. On
//! other platforms [`upstream_set`] fails with `Unsupported` and the UDP
//! media relay does not start (it logs why); everything else of the node
//! builds and runs. Batched reads and GSO sends are quinn-udp's, portable
//! ([`udp_batch`](crate::udp_batch)); splice is [`pump`](crate::pump)'s.

use std::io;

use mio::{Poll, Registry, Token};

/// Where bindings' upstream sockets are added to and taken from the set.
pub(super) struct Registrar(Registry);

impl Registrar {
    /// Adds `binding_id`'s socket; what already arrived is reported as a
    /// first event.
    pub(super) fn register(
        &self,
        socket: &mut mio::net::UdpSocket,
        binding_id: u32,
    ) -> io::Result<()> {
        self.0
            .register(socket, Token(binding_id as usize), mio::Interest::READABLE)
    }

    /// Takes a socket out of the set (closing it would too).
    pub(super) fn deregister(&self, socket: &mut mio::net::UdpSocket) -> io::Result<()> {
        self.0.deregister(socket)
    }
}

/// A new, empty set: the handle to add sockets to, and the readiness to
/// wait on.
pub(super) fn upstream_set() -> io::Result<(Registrar, Readiness)> {
    let poll = Poll::new()?;
    let registrar = Registrar(poll.registry().try_clone()?);
    Ok((registrar, Readiness::new(poll)?))
}

#[cfg(unix)]
pub(super) use unix::Readiness;

#[cfg(unix)]
mod unix {
    use std::io;
    use std::time::Duration;

    use mio::{Events, Poll, Token};
    use tokio::io::unix::AsyncFd;

    /// Readiness events taken from the set per look; a full batch means
    /// more may wait.
    const EVENTS: usize = 256;

    /// The binding a token stands for.
    fn token_binding(token: Token) -> u32 {
        // Tokens are made from binding ids, so this never truncates.
        token.0 as u32
    }

    /// The set's readiness, as tokio reports it.
    pub(in crate::udp) struct Readiness {
        poll: AsyncFd<Poll>,
        events: Events,
    }

    impl Readiness {
        /// Hands a `Poll`'s descriptor to tokio's reactor.
        ///
        /// `AsyncFd::new` is deprecated because a generic `T` might report
        /// another descriptor later, which would break tokio's bookkeeping;
        /// the safe-Rust replacement, `AsyncFd::register`, is an `unsafe fn`
        /// stating exactly that condition, and the workspace forbids
        /// `unsafe`. A `mio::Poll` owns its descriptor from creation to drop
        /// and `as_raw_fd` always returns it, and this module never replaces
        /// the `Poll` inside the `AsyncFd`, so the condition holds.
        #[allow(deprecated)]
        pub(super) fn new(poll: Poll) -> io::Result<Self> {
            Ok(Self {
                poll: AsyncFd::with_interest(poll, tokio::io::Interest::READABLE)?,
                events: Events::with_capacity(EVENTS),
            })
        }

        /// Waits until some bindings' upstream sockets are readable, and
        /// names them. Cancel-safe: nothing after the wait awaits.
        pub(in crate::udp) async fn ready(&mut self) -> io::Result<impl Iterator<Item = u32> + '_> {
            let mut guard = self.poll.readable_mut().await?;
            let polled = guard
                .get_inner_mut()
                .poll(&mut self.events, Some(Duration::ZERO));
            // A full batch may have left events behind: look again next
            // turn. Otherwise wait for tokio to report the set readable
            // anew (a newer report is never cleared).
            if polled.is_err() || self.events.iter().count() < EVENTS {
                guard.clear_ready();
            }
            polled?;
            Ok(self.events.iter().map(|event| token_binding(event.token())))
        }
    }
}

#[cfg(not(unix))]
pub(super) use other::Readiness;

/// Without `AsyncFd` there is no safe way to wait on a `Poll` inside tokio:
/// the set cannot be made, so no [`Readiness`] ever exists.
#[cfg(not(unix))]
mod other {
    use std::convert::Infallible;
    use std::io;

    use mio::Poll;

    /// Never constructed off unix.
    pub(in crate::udp) struct Readiness(Infallible);

    impl Readiness {
        pub(super) fn new(_poll: Poll) -> io::Result<Self> {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the UDP relay's upstream set needs tokio's unix reactor (AsyncFd)",
            ))
        }

        pub(in crate::udp) async fn ready(&mut self) -> io::Result<impl Iterator<Item = u32> + '_> {
            match self.0 {}
            #[allow(unreachable_code)]
            Ok(std::iter::empty())
        }
    }
}
