//! A minimal HTTP/1.1 GET for the nodes' admin API (`/api/v1/cluster`, `/api/v1/clients`):
//! one request per connection, bounded in time, JSON bodies.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one request may take: a stopped node must not hold the harness.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer read (a registry listing of a few hundred clients is far smaller).
const MAX_RESPONSE: usize = 16 << 20;

/// GET `path` from `addr`; the body parsed as JSON when the status is 200.
pub async fn get_json(addr: SocketAddr, path: &str) -> Result<Value> {
    let raw = tokio::time::timeout(REQUEST_TIMEOUT, get_raw(addr, path))
        .await
        .map_err(|_| anyhow!("GET {path} on {addr}: no answer within {REQUEST_TIMEOUT:?}"))??;
    let (status, body) = parse(&raw).with_context(|| format!("GET {path} on {addr}"))?;
    if status != 200 {
        bail!(
            "GET {path} on {addr}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    serde_json::from_slice(&body).with_context(|| format!("GET {path} on {addr}: not JSON"))
}

async fn get_raw(addr: SocketAddr, path: &str) -> Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    let mut limited = (&mut stream).take(MAX_RESPONSE as u64);
    limited.read_to_end(&mut raw).await?;
    Ok(raw)
}

/// The status and the (de-chunked) body of a whole response.
fn parse(raw: &[u8]) -> Result<(u16, Vec<u8>)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no complete header in {} bytes", raw.len()))?;
    let head = std::str::from_utf8(&raw[..split]).context("header is not UTF-8")?;
    let body = &raw[split + 4..];
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line: {head:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("truncated chunk size"))?;
        let size_text = std::str::from_utf8(&rest[..line_end])?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| anyhow!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_plain_and_chunked_bodies() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse(plain).unwrap(), (200, b"{}".to_vec()));
        let chunked =
            b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse(chunked).unwrap(), (503, b"abcde".to_vec()));
        assert!(parse(b"HTTP/1.1 200").is_err());
    }
}
