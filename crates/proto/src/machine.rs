//! The one interface every sans-I/O machine of this crate offers, so one
//! driver (`cloudproxy_transport::driver`) runs them all over any byte
//! stream: quinn-proto's `Connection` shape.
//!
//! Time comes in as an argument and outputs are polled; a machine never
//! reads a clock, touches a socket or spawns anything. A driver loops:
//!
//! 1. write every [`poll_transmit`](Machine::poll_transmit);
//! 2. return every [`poll_event`](Machine::poll_event) to its owner;
//! 3. wait for input or [`poll_timeout`](Machine::poll_timeout), whichever
//!    comes first, and feed it back with
//!    [`handle_input`](Machine::handle_input) or
//!    [`handle_timeout`](Machine::handle_timeout) — reading only while the
//!    machine [`wants_input`](Machine::wants_input).

use std::time::Instant;

use bytes::Bytes;

/// A sans-I/O protocol machine over a byte stream or datagrams.
///
/// ```
/// use std::time::Instant;
/// use bytes::Bytes;
/// use cloudproxy_proto::Machine;
///
/// /// Echoes every input back and reports its length.
/// #[derive(Default)]
/// struct Echo { out: Vec<Bytes>, events: Vec<usize> }
///
/// impl Machine for Echo {
///     type Event = usize;
///     fn handle_input(&mut self, _now: Instant, data: &[u8]) {
///         self.out.push(Bytes::copy_from_slice(data));
///         self.events.push(data.len());
///     }
///     fn poll_transmit(&mut self) -> Option<Bytes> { self.out.pop() }
///     fn poll_event(&mut self) -> Option<usize> { self.events.pop() }
///     fn poll_timeout(&self) -> Option<Instant> { None }
///     fn handle_timeout(&mut self, _now: Instant) {}
/// }
///
/// let mut echo = Echo::default();
/// echo.handle_input(Instant::now(), b"ping");
/// assert_eq!(echo.poll_transmit().as_deref(), Some(&b"ping"[..]));
/// assert_eq!(echo.poll_event(), Some(4));
/// ```
pub trait Machine {
    /// What the machine reports to its owner.
    type Event;

    /// Feeds bytes the transport received at `now` (any split of the
    /// stream; one whole datagram on a datagram transport).
    fn handle_input(&mut self, now: Instant, data: &[u8]);

    /// The next bytes to send, in order; `None` when nothing is queued.
    fn poll_transmit(&mut self) -> Option<Bytes>;

    /// The next event for the owner; `None` when there is none.
    fn poll_event(&mut self) -> Option<Self::Event>;

    /// When [`handle_timeout`](Self::handle_timeout) must next be called;
    /// `None` when no timer runs.
    fn poll_timeout(&self) -> Option<Instant>;

    /// Runs the timers due at `now`.
    fn handle_timeout(&mut self, now: Instant);

    /// Whether the machine takes more input now (by default always). A
    /// machine whose own queued output is over its bound says no, so a peer
    /// that does not read what it is sent is not read either, and may keep
    /// input it already has undecoded. A driver then reads nothing more;
    /// once the machine says yes again (its transmits were taken), the
    /// driver calls [`handle_input`](Self::handle_input) — with new bytes,
    /// or with none — so the machine picks up what it held back.
    ///
    /// A machine may say no only while it has transmits for its driver to
    /// take, or a driver would wait for nothing.
    fn wants_input(&self) -> bool {
        true
    }
}
