//! Small socket helpers shared by the relays, the client side and the
//! `cloudproxy` binary.

use std::io::{self, Read};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::Interest;
use tokio::net::{TcpStream, UdpSocket};

/// Writes `data` in full through a shared reference, so a reader can use the
/// same stream at the same time.
pub async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `try_read` that also tells tokio the socket is drained when a read comes
/// back shorter than `buf`: the kernel had no more bytes queued, so the next
/// `readable().await` waits for new data instead of returning at once for a
/// read that would only say `WouldBlock` (one system call saved per burst;
/// tokio's own `AsyncRead` does the same). Safe with edge-triggered epoll:
/// bytes that arrive after the read raise a new readiness event, and tokio
/// only clears readiness if no event came in since the read started.
pub fn try_read_drained(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut short = None;
    let result = stream.try_io(Interest::READABLE, || {
        let n = (&*socket2::SockRef::from(stream)).read(buf)?;
        if n > 0 && n < buf.len() {
            short = Some(n);
            // `WouldBlock` is how `try_io` is told to clear readiness.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match short {
        Some(n) => Ok(n),
        None => result,
    }
}

/// Sleeps until `deadline`, or forever when there is none (for a state
/// machine's `poll_timeout`).
pub async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The unspecified address of `peer`'s family, port 0: where to bind a
/// socket that talks to `peer`.
#[must_use]
pub fn any_local_for(peer: SocketAddr) -> SocketAddr {
    if peer.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    }
}

/// A UDP socket on an ephemeral port, connected to `peer` so that only its
/// datagrams are received.
pub async fn connected_udp(peer: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(any_local_for(peer)).await?;
    socket.connect(peer).await?;
    Ok(socket)
}
