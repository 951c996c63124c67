//! The TLS relay rows: one and eight streams into the sink through our
//! node's TLS port (a stream-mode `Bind` on a TLS connection, as the TCP
//! relay row binds on a plain one) and through haproxy terminating TLS with
//! the same certificate. The client is the transport's own (rustls, ring,
//! ALPN `cloudproxy/1`) with the certificate pinned by its fingerprint, for
//! both.

use std::io;
use std::net::SocketAddr;

use cloudproxy_proto::client::{Allocation, BindingEvent, ClientConfig, RelayBinding};
use cloudproxy_proto::frame::BindMode;
use cloudproxy_proto::{Address, Machine, Path};
use cloudproxy_transport::driver::{Driver, Next};
use cloudproxy_transport::tls::{TlsClient, TlsName, TlsTrust};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Where a TLS load client goes.
pub(crate) enum TlsTarget<'a> {
    /// Our node's TLS port, then a stream `Bind` to `to`.
    Cloudproxy {
        at: SocketAddr,
        config: &'a ClientConfig,
        allocation: &'a Allocation,
        to: SocketAddr,
    },
    /// A TLS-terminating proxy that forwards the plaintext to the sink.
    Terminating(SocketAddr),
}

/// The client every TLS row uses: the certificate pinned by `pin`.
pub(crate) fn client(pin: &str) -> Result<TlsClient, String> {
    let trust = TlsTrust::from_pin(pin).map_err(|e| e.to_string())?;
    TlsClient::new(&trust).map_err(|e| e.to_string())
}

/// A TCP connection to `at` and the pinned client's handshake over it.
pub(crate) async fn handshake(
    client: &TlsClient,
    at: SocketAddr,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(at).await?;
    tcp.set_nodelay(true)?;
    client
        .handshake(&TlsName::ip(at.ip()), tcp)
        .await
        .map_err(io::Error::other)
}

impl TlsTarget<'_> {
    /// A TLS connection whose plaintext reaches the sink.
    pub(crate) async fn connect(&self, client: &TlsClient) -> io::Result<TlsStream<TcpStream>> {
        match *self {
            Self::Terminating(at) => handshake(client, at).await,
            Self::Cloudproxy {
                at,
                config,
                allocation,
                to,
            } => {
                let mut stream = handshake(client, at).await?;
                let mut binding = RelayBinding::new(
                    config,
                    allocation,
                    Path::Tcp,
                    BindMode::Stream,
                    Address::Ip(to),
                    std::time::Instant::now(),
                )
                .map_err(io::Error::other)?;
                let mut out = Vec::with_capacity(256);
                while let Some(bytes) = binding.poll_transmit() {
                    out.extend_from_slice(&bytes);
                }
                stream.write_all(&out).await?;
                let mut driver = Driver::new(binding, stream);
                loop {
                    match driver.next_event().await {
                        Next::Event(BindingEvent::Bound { .. }) => {
                            driver.flush().await?;
                            return Ok(driver.into_parts().1);
                        }
                        Next::Event(BindingEvent::Closed(reason)) => {
                            return Err(io::Error::other(reason));
                        }
                        Next::Event(_) => {}
                        Next::PeerClosed => {
                            return Err(io::Error::other("the node closed before BindOk"));
                        }
                        Next::Io(e) => return Err(e),
                    }
                }
            }
        }
    }
}

/// `streams` TLS connections to `target` blast plaintext into the sink for
/// `secs` (the TCP rows' [`crate::tcp::blast_streams`]).
pub(crate) async fn blast(
    target: &TlsTarget<'_>,
    client: &TlsClient,
    streams: usize,
    secs: f64,
) -> Result<crate::tcp::Blasted, String> {
    let mut conns = Vec::with_capacity(streams);
    for _ in 0..streams {
        conns.push(
            target
                .connect(client)
                .await
                .map_err(|e| format!("connect: {e}"))?,
        );
    }
    crate::tcp::blast_streams(conns, secs).await
}
