//! A proxy node and reference media edge on loopback for the SDK's tests
//! and the `loopback_rig` example (which the C, Python and Kotlin tests of
//! `cargo xtask ci` run against).

#![allow(dead_code, unreachable_pub)]

use cloudproxy_edge::{Edge, EdgeConfig, RunningEdge};
use cloudproxy_server::ProxyNode;
use cloudproxy_server::config::ServerConfig;

/// The app the rig's proxy knows.
pub const APP_ID: &str = "sdk-test-app";
/// Its secret, as `cloudproxy serve` prints it.
pub const CREDENTIAL_HEX: &str = "73646b2d746573742d6170702d736563726574";
const TICKET_KEY_HEX: &str = "73646b2d7469636b65742d6b65792d666f722d74657374732d33322062797465";

/// A running edge and proxy node on 127.0.0.1.
pub struct Rig {
    pub edge: RunningEdge,
    pub node: ProxyNode,
}

impl Rig {
    pub async fn start() -> Self {
        let edge = Edge::bind(EdgeConfig::loopback())
            .await
            .expect("edge binds")
            .spawn();
        let text = format!(
            r#"
[listeners]
bind = "127.0.0.1"
allocation_ports = [0]
tcp_relay_port = 0
udp_relay_ports = "0-1"

[[apps]]
id = "{APP_ID}"
max_sessions = 100
secrets = ["{CREDENTIAL_HEX}"]

[[ticket_keys]]
key_id = 1
secret = "{TICKET_KEY_HEX}"

[allowlist]
allow = ["127.0.0.1"]

[limits]
drain_timeout_ms = 0
"#
        );
        let config = ServerConfig::from_toml_str("sdk-rig.toml", &text).expect("rig config");
        let node = ProxyNode::start(&config).await.expect("proxy node starts");
        Self { edge, node }
    }

    /// The proxy's allocation address, for `rtc.proxy_server`.
    pub fn proxy(&self) -> std::net::SocketAddr {
        self.node.addrs().allocation_tcp[0]
    }

    /// The guide's type-2 string for this rig's proxy.
    pub fn proxy_server_param(&self) -> String {
        let proxy = self.proxy();
        format!(
            r#"{{"rtc.proxy_server":[2, "[\"{}\"]", {}]}}"#,
            proxy.ip(),
            proxy.port()
        )
    }

    pub async fn shutdown(self) {
        self.node.shutdown().await;
        self.edge.shutdown().await;
    }
}
