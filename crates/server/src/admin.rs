//! The admin listener: a small HTTP/1.1 server, separate from the relay's
//! listeners, for operators and orchestrators.
//!
//! | Request          | Answer                                                       |
//! |------------------|--------------------------------------------------------------|
//! | `GET /metrics`   | the node's metrics: OpenMetrics text when `Accept` asks for it, else the classic Prometheus text format |
//! | `GET /livez`     | 200 while the process runs                                   |
//! | `GET /readyz`    | 200 when a node is attached (every listener bound) and not draining, else 503 |
//! | `POST /drain`    | starts a drain ([`ProxyNode::begin_drain`]); 202             |
//!
//! `HEAD` is answered like `GET` without a body; another method on a known
//! path is 405 with `Allow`, an unknown path 404. The parser is deliberately
//! tiny (docs/decisions.md, "Admin listener"): one request per connection
//! (`Connection: close`), a request head of at most [`MAX_HEAD`] bytes read
//! within [`HEAD_TIMEOUT`], request bodies ignored, at most
//! [`MAX_CONNECTIONS`] connections at once (more are closed unanswered).
//!
//! The listener is started before the node binds, so `/readyz` answers 503
//! until [`AdminServer::attach`] hands it the running node.
//!
//! ```no_run
//! # async fn example(config: cloudproxy_server::config::ServerConfig) -> Result<(), Box<dyn std::error::Error>> {
//! use cloudproxy_server::ProxyNode;
//! use cloudproxy_server::admin::AdminServer;
//!
//! let admin = AdminServer::start("127.0.0.1:9600".parse()?).await?;
//! let node = ProxyNode::start(&config).await?;
//! admin.attach(&node);
//! println!("metrics on http://{}/metrics", admin.local_addr());
//! # Ok(()) }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::node::{ProxyNode, ServeError, begin_drain};
use crate::shared::Shared;

/// The longest request head (request line and headers) accepted; longer is
/// answered 431.
pub const MAX_HEAD: usize = 8 * 1024;

/// How long a client has to send its request head, and then to take the
/// response.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Admin connections served at once.
pub const MAX_CONNECTIONS: usize = 32;

/// The content type of `/metrics` for a scraper whose `Accept` names
/// `application/openmetrics-text` (Prometheus does).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of `/metrics` otherwise: the classic Prometheus text
/// format, which `promtool check metrics` reads.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A running admin listener. It stops when dropped.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

struct Attached {
    shared: Arc<Shared>,
    registry: Registry,
}

struct State {
    node: OnceLock<Attached>,
    /// What `/metrics` serves before a node is attached.
    unattached: Registry,
}

impl Default for State {
    fn default() -> Self {
        Self {
            node: OnceLock::new(),
            unattached: metrics::unattached_registry(),
        }
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("attached", &self.node.get().is_some())
            .finish()
    }
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port) and starts answering; until
    /// [`AdminServer::attach`], `/readyz` is 503 and `/metrics` is 200 with
    /// only what is known without a node: `cloudproxy_build_info`,
    /// `cloudproxy_ready 0` and `cloudproxy_draining 0`.
    pub async fn start(addr: SocketAddr) -> Result<Self, ServeError> {
        let bind_error = |cause| ServeError::Bind {
            protocol: "TCP (admin)",
            addr,
            cause,
        };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        let state = Arc::new(State::default());
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, Arc::clone(&state), stop.clone()));
        tracing::info!(admin = %local, "admin listener started");
        Ok(Self {
            addr: local,
            state,
            stop,
        })
    }

    /// Where it listens (port 0 resolved).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `node`'s metrics, readiness and drain from now on. A second
    /// call is ignored: one admin listener serves one node.
    pub fn attach(&self, node: &ProxyNode) {
        let shared = Arc::clone(node.shared());
        let registry = metrics::registry(&shared);
        let _ = self.state.node.set(Attached { shared, registry });
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                // Over the limit the connection is closed unanswered.
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    continue;
                };
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = serve(stream, &state).await {
                        tracing::debug!(error = %e, "admin connection failed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed; retrying shortly");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A response: status line, content type and body.
struct Response {
    status: &'static str,
    content_type: &'static str,
    allow: Option<&'static str>,
    body: String,
}

impl Response {
    fn text(status: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            allow: None,
            body: body.into(),
        }
    }
}

async fn serve(mut stream: TcpStream, state: &State) -> io::Result<()> {
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await;
    let (response, head_only) = match head {
        Err(_) => (
            Response::text(
                "408 Request Timeout",
                format!(
                    "expected a request head within {} s\n",
                    HEAD_TIMEOUT.as_secs()
                ),
            ),
            false,
        ),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Head::TooLong)) => (
            Response::text(
                "431 Request Header Fields Too Large",
                format!("expected a request head of at most {MAX_HEAD} bytes\n"),
            ),
            false,
        ),
        Ok(Ok(Head::Closed)) => return Ok(()),
        Ok(Ok(Head::Complete(bytes))) => match parse_request_line(&bytes) {
            Ok((method, path)) => (
                route(state, method, path, wants_openmetrics(&bytes)),
                method == "HEAD",
            ),
            Err(problem) => (
                Response::text("400 Bad Request", problem.to_string()),
                false,
            ),
        },
    };
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    if let Some(allow) = response.allow {
        out.push_str("Allow: ");
        out.push_str(allow);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&response.body);
    }
    tokio::time::timeout(HEAD_TIMEOUT, async {
        stream.write_all(out.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not take the response",
        )
    })?
}

enum Head {
    Complete(Vec<u8>),
    TooLong,
    Closed,
}

/// Reads up to the blank line that ends a request head.
async fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end);
            return Ok(Head::Complete(head));
        }
        if head.len() > MAX_HEAD {
            return Ok(Head::TooLong);
        }
    }
}

/// Why a request head has no usable request line; the text is the 400
/// response's body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum BadRequestLine {
    /// The line is not text.
    #[error("expected an ASCII request line, found bytes that are not UTF-8\n")]
    NotUtf8,
    /// The line is not `METHOD /PATH HTTP/1.x`.
    #[error("expected a request line like \"GET /metrics HTTP/1.1\", found {found:?}\n")]
    Malformed {
        /// The line's first 100 characters.
        found: String,
    },
}

/// The method and path (query string removed) of a request line.
fn parse_request_line(head: &[u8]) -> Result<(&str, &str), BadRequestLine> {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..line_end]).map_err(|_| BadRequestLine::NotUtf8)?;
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(target), Some(version), None)
            if !method.is_empty() && target.starts_with('/') && version.starts_with("HTTP/1.") =>
        {
            let path = target.split('?').next().unwrap_or(target);
            Ok((method, path))
        }
        _ => Err(BadRequestLine::Malformed {
            found: line.chars().take(100).collect(),
        }),
    }
}

/// Whether an `Accept` header of the head asks for OpenMetrics.
fn wants_openmetrics(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').any(|line| {
        line.len() > 7
            && line[..7].eq_ignore_ascii_case(b"accept:")
            && line
                .windows(28)
                .any(|w| w.eq_ignore_ascii_case(b"application/openmetrics-text"))
    })
}

fn route(state: &State, method: &str, path: &str, openmetrics: bool) -> Response {
    let read = matches!(method, "GET" | "HEAD");
    let node = state.node.get();
    match path {
        "/metrics" | "/livez" | "/readyz" if !read => Response {
            allow: Some("GET, HEAD"),
            ..Response::text(
                "405 Method Not Allowed",
                format!("{path} answers GET and HEAD, not {method}\n"),
            )
        },
        "/drain" if method != "POST" => Response {
            allow: Some("POST"),
            ..Response::text(
                "405 Method Not Allowed",
                format!("/drain answers POST, not {method}\n"),
            )
        },
        "/livez" => Response::text("200 OK", "alive\n"),
        "/readyz" => match node {
            None => Response::text(
                "503 Service Unavailable",
                "not ready: listeners not bound yet\n",
            ),
            Some(n) if !n.shared.lifecycle.is_accepting() => {
                Response::text("503 Service Unavailable", "not ready: draining\n")
            }
            Some(_) => Response::text("200 OK", "ready\n"),
        },
        "/metrics" => {
            // Before the node is attached: build info, ready 0, draining 0.
            let registry = node.map_or(&state.unattached, |n| &n.registry);
            if openmetrics {
                Response {
                    content_type: OPENMETRICS_CONTENT_TYPE,
                    ..Response::text("200 OK", metrics::render(registry))
                }
            } else {
                Response {
                    content_type: TEXT_CONTENT_TYPE,
                    ..Response::text("200 OK", metrics::render_classic(registry))
                }
            }
        }
        "/drain" => match node {
            Some(n) => {
                begin_drain(&n.shared);
                Response::text(
                    "202 Accepted",
                    "draining: not ready, accepting nothing new; sessions finish or close at the drain deadline\n",
                )
            }
            None => Response::text(
                "503 Service Unavailable",
                "nothing to drain: listeners not bound yet\n",
            ),
        },
        _ => Response::text(
            "404 Not Found",
            format!("no {path} here; expected /metrics, /livez, /readyz or POST /drain\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_parse_and_bad_ones_say_what_was_expected() {
        assert_eq!(
            parse_request_line(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a"),
            Ok(("GET", "/metrics"))
        );
        assert_eq!(
            parse_request_line(b"POST /drain HTTP/1.0"),
            Ok(("POST", "/drain"))
        );
        for bad in [
            &b"GET /metrics"[..],
            b"GET metrics HTTP/1.1",
            b"GET /metrics HTTP/2",
            b"GET  /metrics HTTP/1.1",
            b"\xff /metrics HTTP/1.1",
        ] {
            let error = parse_request_line(bad).unwrap_err().to_string();
            assert!(error.starts_with("expected "), "{error}");
        }
    }

    #[test]
    fn openmetrics_only_when_accept_names_it() {
        assert!(wants_openmetrics(
            b"GET /metrics HTTP/1.1\r\naccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        ));
        assert!(!wants_openmetrics(
            b"GET /metrics HTTP/1.1\r\nAccept: text/plain"
        ));
        assert!(!wants_openmetrics(
            b"GET /metrics HTTP/1.1\r\nX-Note: application/openmetrics-text"
        ));
    }

    #[test]
    fn routes_answer_before_a_node_is_attached() {
        let state = State::default();
        assert!(
            route(&state, "GET", "/livez", false)
                .status
                .starts_with("200")
        );
        assert!(
            route(&state, "GET", "/readyz", false)
                .status
                .starts_with("503")
        );
        assert!(
            route(&state, "POST", "/drain", false)
                .status
                .starts_with("503")
        );
        let wrong = route(&state, "PUT", "/readyz", false);
        assert!(wrong.status.starts_with("405"));
        assert_eq!(wrong.allow, Some("GET, HEAD"));
        assert!(route(&state, "GET", "/x", false).status.starts_with("404"));
    }
}
