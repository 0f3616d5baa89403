//! Minimal HTTP/1.1 requests to a node's HTTP listener (probes, metrics, admin API), and
//! summing a metric's samples.

use std::net::SocketAddr;
use std::time::Duration;

use crate::wait::RECV_TIMEOUT;

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
    deadline: Duration,
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
    deadline: Duration,
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
