//! takeover: the same client id connects on one node (`--port`), then again on another
//! (`--sub-port`; the same port measures a takeover on one node). Measured per takeover:
//! from the second CONNECT sent to the first connection closed by the broker, and to the
//! second connection's CONNACK. Takeovers run one after another, so each is timed alone.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::AsyncReadExt;

use crate::cli::Settings;
use crate::conn::Conn;
use crate::report::TakeoverReport;
use crate::stats::Latency;

/// How long the first connection may stay open after the second one's CONNECT was sent
/// before the takeover counts as failed.
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

pub async fn run(s: &Settings) -> anyhow::Result<TakeoverReport> {
    let deadline = Instant::now() + s.timeout;
    let nonce = format!(
        "{}-{}",
        std::process::id(),
        crate::stats::now_nanos() % 1_000_000_007
    );
    let mut closed = Latency::new();
    let mut connacked = Latency::new();
    let mut failed = 0u64;
    let mut first_error = None::<String>;
    let mut done = 0u64;
    let mut timed_out = false;
    for i in 0..s.count {
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        let id = format!("sb-{nonce}-t{i}");
        match takeover(s, &id).await {
            Ok((to_close, to_connack)) => {
                closed.record(to_close);
                connacked.record(to_connack);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(format!("{e:#}"));
            }
        }
        done += 1;
    }
    if let Some(e) = first_error {
        eprintln!("warning: {failed} takeover(s) failed, first: {e}");
    }
    Ok(TakeoverReport {
        broker: s.broker.clone(),
        count: s.count,
        done,
        failed,
        close_latency: closed.summary(),
        connack_latency: connacked.summary(),
        timed_out,
    })
}

/// One takeover: (second CONNECT sent → first connection closed, → second CONNACK).
async fn takeover(s: &Settings, id: &str) -> anyhow::Result<(Duration, Duration)> {
    let first = Conn::open(s.addr, id, s.keepalive, true)
        .await
        .context("first connection")?;
    let mut first_stream = first.stream;
    // Watch for the close before the second CONNECT goes out.
    let watcher = tokio::spawn(async move {
        let mut buf = [0u8; 256];
        loop {
            match first_stream.read(&mut buf).await {
                // EOF, a reset, or the MQTT 5 DISCONNECT a v3.1.1 client never gets.
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => continue,
            }
        }
    });
    let sent = Instant::now();
    let second = Conn::open(s.sub_addr, id, s.keepalive, true)
        .await
        .context("second connection")?;
    let connacked = Instant::now();
    let closed = tokio::time::timeout(CLOSE_DEADLINE, watcher)
        .await
        .with_context(|| {
            format!("first connection still open {CLOSE_DEADLINE:?} after the takeover")
        })?
        .context("close watcher")?;
    second.close_without_time_wait().await;
    Ok((closed.saturating_duration_since(sent), connacked - sent))
}
