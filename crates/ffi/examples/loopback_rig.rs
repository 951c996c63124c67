//! A proxy node and a reference media edge on 127.0.0.1 for the SDK's
//! foreign-language tests: prints what an engine needs, one `KEY=value` per
//! line, then `READY`, and runs until its standard input closes (or it is
//! killed).
//!
//! ```text
//! cargo run -p cloudproxy-ffi --example loopback_rig
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;

use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let rig = support::Rig::start().await;
    let mut out = std::io::stdout().lock();
    writeln!(out, "CLOUDPROXY_APP_ID={}", support::APP_ID)?;
    writeln!(out, "CLOUDPROXY_CREDENTIAL={}", support::CREDENTIAL_HEX)?;
    writeln!(out, "CLOUDPROXY_MEDIA_TCP={}", rig.edge.tcp_addr())?;
    writeln!(out, "CLOUDPROXY_MEDIA_UDP={}", rig.edge.udp_addr())?;
    writeln!(out, "CLOUDPROXY_PROXY_IP={}", rig.proxy().ip())?;
    writeln!(out, "CLOUDPROXY_PROXY_PORT={}", rig.proxy().port())?;
    writeln!(out, "READY")?;
    out.flush()?;
    drop(out);
    // Until whoever started the rig closes our stdin (or exits).
    let mut sink = Vec::new();
    tokio::io::stdin().read_to_end(&mut sink).await?;
    rig.shutdown().await;
    Ok(())
}
