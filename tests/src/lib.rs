//! Integration test support for Skein.
//!
//! * [`Node`] spawns a real `skein` process (ephemeral ports, own temp data
//!   dir), waits for its `mqtt listening on` / `http listening on` lines and
//!   can `kill9()`, `terminate()` (SIGTERM) and `restart()` it.
//! * [`raw::RawClient`] speaks MQTT byte by byte (for illegal packets and exact
//!   wire assertions) using the small codec in [`codec`].
//! * [`clients::v3::Client`] / [`clients::v5::Client`] wrap rumqttc clients.
//! * [`cli`] runs `mosquitto_pub` / `mosquitto_sub` for interop tests.
//! * [`wait_until`] polls a condition with a deadline.
//! * [`http_get`] / [`http_request`] / [`http_request_within`] / [`metric_sum`] talk to
//!   the HTTP listener.
//! * [`layering`] checks that no crate's top-level modules import each other in a cycle.
//!
//! The crate's modules in layer order. Direction: each module imports only modules listed
//! below it.
//!
//! - `cluster`: several real `skein` processes as one cluster ([`cluster::TestCluster`]).
//! - `node`: spawning and controlling real `skein` processes.
//! - `clients`: rumqttc clients whose events tests wait for with deadlines.
//! - `raw`: the raw-socket MQTT client.
//! - `cli`: the `mosquitto_pub` / `mosquitto_sub` helpers.
//! - `layering`: the layering check of `tests/layering.rs`.
//! - `codec`: the permissive MQTT codec of the raw client.
//! - `wait`: the default timeouts and waiting on a condition with a deadline.

pub mod cli;
pub mod clients;
pub mod cluster;
pub mod codec;
pub mod layering;
pub mod node;
pub mod raw;
pub mod wait;

use std::net::SocketAddr;

pub use cluster::TestCluster;
pub use codec::{prop, Connect, Packet, PropValue, Props, Proto, Publish, SubFilter, Will};
pub use node::{Node, NodeBuilder};
pub use raw::{RawClient, RecvError};
pub use wait::{wait_until, wait_until_blocking, QUIET, RECV_TIMEOUT};

/// Minimal HTTP/1.1 GET; returns (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http_exchange(addr, &req, RECV_TIMEOUT).await
}

/// Minimal HTTP/1.1 request with extra header lines (`"Authorization: Bearer x"`) and a
/// body (sent with its Content-Length); returns (status code, body).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> std::io::Result<(u16, String)> {
    http_request_within(RECV_TIMEOUT, addr, method, path, headers, body).await
}

/// [`http_request`] for a request the server may take up to `deadline` to answer.
pub async fn http_request_within(
    deadline: std::time::Duration,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    http_exchange(addr, &req, deadline).await
}

/// Sends `req` as is and reads the response to the end (the request says
/// `Connection: close`); returns (status code, body).
async fn http_exchange(
    addr: SocketAddr,
    req: &str,
    deadline: std::time::Duration,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(RECV_TIMEOUT, tokio::net::TcpStream::connect(addr)).await??;
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(deadline, s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad HTTP response: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Sum of the samples in `GET /metrics` of the series named `name` whose line contains
/// every one of `labels` (e.g. `reason="queue_full"`); with no labels, of all its series.
pub async fn metric_sum(addr: SocketAddr, name: &str, labels: &[&str]) -> f64 {
    let (status, body) = http_get(addr, "/metrics").await.expect("GET /metrics");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A client id unique within the test process (prefix + counter).
pub fn unique_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}
