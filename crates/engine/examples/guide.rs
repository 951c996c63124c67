//! The guide's steps, end to end, with nothing to set up: this example
//! starts a reference media edge and a cloud proxy node on loopback, then two
//! engines enable the proxy with the guide's strings, join one channel,
//! exchange reliable messages and media through the proxy, and leave.
//!
//! ```text
//! cargo run -p cloudproxy-engine --example guide
//! ```

use std::time::Duration;

use cloudproxy_edge::{Edge, EdgeConfig};
use cloudproxy_engine::{Bytes, Credential, Engine, Event};
use cloudproxy_server::ProxyNode;
use cloudproxy_server::config::ServerConfig;

const APP_ID: &str = "guide-app";
/// The app secret as the operator hands it out: the hex string
/// `cloudproxy serve` prints and the proxy's configuration lists.
const CREDENTIAL_HEX: &str = "67756964652d6170702d63726564656e7469616c";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The media network (a reference edge) and a proxy node, on loopback.
    let edge = Edge::bind(EdgeConfig::loopback()).await?.spawn();
    let node = ProxyNode::start(&proxy_config()?).await?;
    let proxy = node.addrs().allocation_tcp[0];
    println!(
        "media edge: TCP {}, UDP {}",
        edge.tcp_addr(),
        edge.udp_addr()
    );
    println!("cloud proxy: allocation service on {proxy}");

    let make = || -> Result<Engine, Box<dyn std::error::Error>> {
        let engine = Engine::builder(APP_ID, Credential::from_hex(CREDENTIAL_HEX)?)
            .media_network(edge.tcp_addr(), edge.udp_addr())
            .build()?;
        // Step 5 of the guide, verbatim.
        engine.set_parameters("{\"rtc.enable_proxy\":true}")?;
        // Step 6: a type-2 server (IP list) — here the loopback node.
        engine.set_parameters(&format!(
            "{{\"rtc.proxy_server\":[2, \"[\\\"{}\\\"]\", {}]}}",
            proxy.ip(),
            proxy.port()
        ))?;
        Ok(engine)
    };
    let (alice, bob) = (make()?, make()?);
    let mut alice_events = alice.events();

    alice.join_channel("guide", 1).await?;
    bob.join_channel("guide", 2).await?;
    // Step 7: test that the call works.
    while let Some(event) = alice_events.recv().await {
        println!("alice: {event:?}");
        if matches!(event, Event::UserJoined { uid: 2, .. }) {
            break;
        }
    }

    for text in [
        "hello bob",
        "through the cloud proxy",
        "in order, exactly once",
    ] {
        alice.send_message(Bytes::from(text))?;
    }
    for _ in 0..3 {
        let message = bob.recv_message().await.ok_or("bob's engine closed")?;
        println!(
            "bob got from user {:?}: {}",
            message.uid,
            String::from_utf8_lossy(&message.payload)
        );
    }

    // Media is unreliable: send a few datagrams until one arrives.
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            bob.send_media(Bytes::from_static(b"an RTP packet"))?;
            tokio::select! {
                media = alice.recv_media() => return Ok::<_, cloudproxy_engine::EngineError>(media),
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    })
    .await??;
    if let Some(media) = got {
        println!(
            "alice got {} bytes of media from user {:?}",
            media.payload.len(),
            media.uid
        );
    }

    bob.leave_channel().await?;
    alice.leave_channel().await?;
    println!("proxy node counters: {:?}", node.stats());
    node.shutdown().await;
    edge.shutdown().await;
    Ok(())
}

/// A loopback proxy node that knows the example app and may relay to
/// loopback (where the edge is).
fn proxy_config() -> Result<ServerConfig, Box<dyn std::error::Error>> {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut ticket_key = [0u8; 32];
    getrandom::fill(&mut ticket_key).map_err(|e| e.to_string())?;
    let text = format!(
        r#"
[listeners]
bind = "127.0.0.1"
allocation_ports = [0]
tcp_relay_port = 0
udp_relay_ports = "0-1"

[[apps]]
id = "{APP_ID}"
secrets = ["{credential}"]

[[ticket_keys]]
key_id = 1
secret = "{key}"

[allowlist]
allow = ["127.0.0.1"]
"#,
        credential = CREDENTIAL_HEX,
        key = hex(&ticket_key),
    );
    Ok(ServerConfig::from_toml_str("guide-example.toml", &text)?)
}
