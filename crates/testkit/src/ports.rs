//! Loopback ports: finding a free one, waiting until something listens on one.

use std::net::TcpListener;
use std::time::Duration;

/// A free loopback port (bound, read, released: good enough on a machine we own).
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits (at most `within`) until something accepts connections on `port`.
///
/// # Errors
/// When nothing does in time.
pub async fn wait_for_port(what: &str, port: u16, within: Duration) -> anyhow::Result<()> {
    crate::poll(
        &format!("{what} to listen on 127.0.0.1:{port}"),
        within,
        Duration::from_millis(50),
        || tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .map(drop)
}
