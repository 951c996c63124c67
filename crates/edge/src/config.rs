//! The edge's configuration ([`EdgeConfig`]): where it listens and its limits.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use cloudproxy_proto::AppId;
use cloudproxy_proto::frame::MAX_PAYLOAD;
use serde::Deserialize;

use super::EdgeError;

/// Configuration of a reference media edge.
///
/// Every key is optional (`#[serde(default)]`) and unknown keys are refused.
/// In TOML, as the `[edge]` table of a file or a file of its own:
///
/// ```
/// use cloudproxy_edge::EdgeConfig;
///
/// let config = EdgeConfig::from_toml_str(
///     r#"
///     bind = "0.0.0.0"
///     tcp_port = 7000
///     udp_port = 7000
///     app_ids = ["demo-app"]
///     max_members_per_channel = 8
///     member_linger_ms = 30000
///     "#,
/// )?;
/// assert_eq!(config.max_members_per_channel, 8);
/// assert_eq!(config.max_channels, 1024); // default
/// # Ok::<(), cloudproxy_edge::EdgeError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// Address both listeners bind. Default `127.0.0.1`.
    pub bind: IpAddr,
    /// TCP port of the message channel (0: any free port). Default 7000.
    pub tcp_port: u16,
    /// UDP port for media (0: any free port). Default 7000.
    pub udp_port: u16,
    /// App ids this edge serves; `None` (the default) serves any app id.
    /// A `Join` for another app is refused with 400.
    pub app_ids: Option<Vec<String>>,
    /// Most channels at once; a `Join` that would open one more is refused
    /// with 400. Default 1024.
    pub max_channels: usize,
    /// Most members in one channel (including lingering ones); a `Join`
    /// beyond it is refused with 400. Default 32.
    pub max_members_per_channel: usize,
    /// Largest frame body accepted on the message channel after `Join`
    /// (before it: 2 048 bytes, `docs/protocol.md` §3.1). Capped at 65 536.
    /// Default 65 536.
    pub max_frame_len: usize,
    /// Most messages delivered to one member and not yet acknowledged by it.
    /// A member that goes beyond (it stopped acknowledging) is removed, so a
    /// stuck recipient costs bounded memory. Default 1 024.
    pub max_unacked_messages: usize,
    /// Most payload bytes delivered to one member and not yet acknowledged.
    /// Same consequence as `max_unacked_messages`. Default 4 MiB.
    pub max_unacked_bytes: usize,
    /// Most frames waiting to be written to one member's connection (messages,
    /// notices, acks, pongs). A member whose connection does not drain is
    /// removed. Default 4 096.
    pub max_queued_frames: usize,
    /// A new TCP connection must send a complete `Join` within this time, or it
    /// gets `Error` 103 and is closed. Default 10 000 ms.
    pub handshake_timeout_ms: u64,
    /// A joined connection that sends no frame for this long is considered
    /// lost (the member then lingers). Clients ping every 15 s. Default 45 000 ms.
    pub idle_timeout_ms: u64,
    /// How long a member whose connection was lost without `Leave` stays in
    /// its channel, resumable, before it is removed. Default 30 000 ms.
    pub member_linger_ms: u64,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            tcp_port: 7000,
            udp_port: 7000,
            app_ids: None,
            max_channels: 1024,
            max_members_per_channel: 32,
            max_frame_len: MAX_PAYLOAD,
            max_unacked_messages: 1024,
            max_unacked_bytes: 4 * 1024 * 1024,
            max_queued_frames: 4096,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 45_000,
            member_linger_ms: 30_000,
        }
    }
}

impl EdgeConfig {
    /// A configuration for tests and in-process demos: loopback, ports 0
    /// (any free port), every other value at its default.
    #[must_use]
    pub fn loopback() -> Self {
        Self {
            tcp_port: 0,
            udp_port: 0,
            ..Self::default()
        }
    }

    /// Parses a TOML document holding the keys of [`EdgeConfig`] and checks it.
    pub fn from_toml_str(text: &str) -> Result<Self, EdgeError> {
        Self::parse(text, "edge configuration")
    }

    /// Reads and parses a TOML file holding the keys of [`EdgeConfig`], and
    /// checks it. Errors name the file (and, for TOML errors, line and key).
    pub fn from_file(path: &Path) -> Result<Self, EdgeError> {
        let text = std::fs::read_to_string(path).map_err(|cause| EdgeError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, origin: &str) -> Result<Self, EdgeError> {
        let config: Self = toml::from_str(text).map_err(|cause| EdgeError::Parse {
            origin: origin.to_owned(),
            cause,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values: limits must be at least 1, `max_frame_len` at most
    /// 65 536 and every app id valid.
    pub fn validate(&self) -> Result<(), EdgeError> {
        let positive = [
            ("max_channels", self.max_channels as u64),
            (
                "max_members_per_channel",
                self.max_members_per_channel as u64,
            ),
            ("max_frame_len", self.max_frame_len as u64),
            ("max_unacked_messages", self.max_unacked_messages as u64),
            ("max_unacked_bytes", self.max_unacked_bytes as u64),
            ("max_queued_frames", self.max_queued_frames as u64),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(EdgeError::Config {
                    key,
                    reason: "must be at least 1".into(),
                });
            }
        }
        if self.max_frame_len > MAX_PAYLOAD {
            return Err(EdgeError::Config {
                key: "max_frame_len",
                reason: format!(
                    "{} is above the protocol maximum of {MAX_PAYLOAD}",
                    self.max_frame_len
                ),
            });
        }
        self.app_id_list()?;
        Ok(())
    }

    /// The TCP listening address.
    #[must_use]
    pub fn tcp_bind_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.tcp_port)
    }

    /// The UDP listening address.
    #[must_use]
    pub fn udp_bind_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.udp_port)
    }

    /// `handshake_timeout_ms` as a duration.
    #[must_use]
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// `idle_timeout_ms` as a duration.
    #[must_use]
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// `member_linger_ms` as a duration.
    #[must_use]
    pub fn member_linger(&self) -> Duration {
        Duration::from_millis(self.member_linger_ms)
    }

    /// The app ids, validated; `None` when any app is served.
    pub(crate) fn app_id_list(&self) -> Result<Option<Vec<AppId>>, EdgeError> {
        let Some(ids) = &self.app_ids else {
            return Ok(None);
        };
        ids.iter()
            .map(|id| {
                AppId::new(id.clone()).map_err(|e| EdgeError::Config {
                    key: "app_ids",
                    reason: format!("{id:?}: {e}"),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}
