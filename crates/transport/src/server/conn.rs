//! Drives a sans-I/O [`Connection`] over a TCP stream: feeds it what the
//! socket reads, writes what it transmits, runs its timers.

use std::io;
use std::time::Instant;

use cloudproxy_proto::server::{Connection, ServerEvent};
use tokio::net::TcpStream;

use crate::net::{sleep_until_opt, try_read_drained, write_all};

/// What ended a wait for the next event.
#[derive(Debug)]
pub(crate) enum Next {
    /// The state machine has something for the I/O layer.
    Event(ServerEvent),
    /// The peer closed its side before the state machine finished.
    PeerClosed,
    /// Reading or writing failed.
    Io(io::Error),
}

/// Writes every queued transmit.
pub(crate) async fn flush(stream: &TcpStream, conn: &mut Connection) -> io::Result<()> {
    while let Some(bytes) = conn.poll_transmit() {
        write_all(stream, &bytes).await?;
    }
    Ok(())
}

/// Runs the connection until it has an event, flushing its output and
/// honouring its timers on the way.
pub(crate) async fn next_event(stream: &TcpStream, conn: &mut Connection) -> Next {
    let mut buf = [0u8; 4096];
    loop {
        if let Err(e) = flush(stream, conn).await {
            return Next::Io(e);
        }
        if let Some(event) = conn.poll_event() {
            return Next::Event(event);
        }
        let deadline = conn.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            readable = stream.readable() => {
                if let Err(e) = readable {
                    return Next::Io(e);
                }
                match try_read_drained(stream, &mut buf) {
                    Ok(0) => return Next::PeerClosed,
                    Ok(n) => conn.handle_input(Instant::now(), &buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Next::Io(e),
                }
            }
            () = sleep_until_opt(deadline) => conn.handle_timeout(Instant::now()),
        }
    }
}
