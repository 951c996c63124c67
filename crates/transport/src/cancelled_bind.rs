//! What becomes of a UDP bind its caller gave up on while the `Bind` was in
//! flight: the transport ladder's UDP rung losing to TCP, or one relay of
//! a staggered race losing to another.
//!
//! The node may already have made the binding and sent `BindOk`. Dropped
//! as it was, the binding would hold one of its session's binding slots
//! until the node's idle timeout, and the client, which never learned the
//! binding's token, could not close it. So the dropped attempt keeps its
//! socket for a short while: a `BindOk` that arrives then is answered at
//! once with the binding's `Close`. It sends nothing else, so a `Bind` that
//! never got through is not retransmitted into a binding nobody wants.

use std::time::{Duration, Instant};

use cloudproxy_proto::Machine;
use cloudproxy_proto::client::{BindingEvent, RelayBinding};
use tokio::net::UdpSocket;

use crate::driver::DatagramDriver;

/// How long a given-up bind listens for a late `BindOk`: longer than any
/// round trip on a path where UDP works at all. A `BindOk` later than this
/// leaves its binding to the node's idle timeout, as before.
pub(crate) const LATE_BIND_OK: Duration = Duration::from_secs(3);

/// A UDP bind whose `Bind` went out and whose `BindOk` has not been seen.
/// Dropped in that state, it hands its socket and binding to a task that
/// closes the binding if the node made it (see the module docs).
pub(crate) struct InFlightUdpBind {
    driver: Option<DatagramDriver<RelayBinding>>,
}

impl InFlightUdpBind {
    pub(crate) fn new(driver: DatagramDriver<RelayBinding>) -> Self {
        Self {
            driver: Some(driver),
        }
    }

    /// The bind's driver, while it is in flight.
    pub(crate) fn driver(&mut self) -> &mut DatagramDriver<RelayBinding> {
        self.driver
            .as_mut()
            .expect("the driver is only taken by `finish` and `drop`")
    }

    /// The bind ended (bound or refused): nothing is left to clean up.
    pub(crate) fn finish(mut self) -> DatagramDriver<RelayBinding> {
        self.driver
            .take()
            .expect("the driver is only taken by `finish` and `drop`")
    }
}

impl Drop for InFlightUdpBind {
    fn drop(&mut self) {
        let Some(driver) = self.driver.take() else {
            return;
        };
        // Outside a runtime (or in one shutting down) nothing can listen:
        // the binding is left to the node's idle timeout.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (binding, socket) = driver.into_parts();
            runtime.spawn(close_if_bound(binding, socket, LATE_BIND_OK));
        }
    }
}

/// Listens on `socket` for up to `window`; if `BindOk` arrives, sends the
/// binding's `Close`. Returns whether it closed a binding.
pub(crate) async fn close_if_bound(
    mut binding: RelayBinding,
    socket: UdpSocket,
    window: Duration,
) -> bool {
    // A `BindOk` is small; anything longer is not one and is cut short.
    let mut buf = [0u8; 2048];
    let listen = async {
        loop {
            // Errors on a connected UDP socket are ICMP reports, one per
            // datagram: keep listening, as the bind itself would.
            let Ok(len) = socket.recv(&mut buf).await else {
                continue;
            };
            binding.handle_input(Instant::now(), &buf[..len]);
            // Whatever the binding queued in answer (keepalives) stays unsent.
            while binding.poll_transmit().is_some() {}
            while let Some(event) = binding.poll_event() {
                match event {
                    BindingEvent::Bound { .. } => {
                        binding.close(Instant::now());
                        while let Some(close) = binding.poll_transmit() {
                            // Best effort: a lost `Close` leaves the binding
                            // to the idle timeout, as before.
                            let _ = socket.send(&close).await;
                        }
                        return true;
                    }
                    BindingEvent::Closed(_) => return false,
                    _ => {}
                }
            }
        }
    };
    tokio::time::timeout(window, listen).await.unwrap_or(false)
}
