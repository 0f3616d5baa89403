//! The Redis Streams sink of the stream dialect (seed 002): when `redis_url` is set, each
//! stream entry is `XADD`ed to `<redis_stream_prefix>.mqtt` with the entry's fields as the
//! stream fields (`client_id`, `event_type`, `instance`, `occurred_at`).
//!
//! Its queue is its bus queue (bounded, overflow counted in `skein_events_dropped_total`).
//! While Redis is unreachable the sink retries the entries in hand with backoff and the
//! queue absorbs, then drops, what comes meanwhile. Delivery is at least once: a batch
//! whose connection broke mid-way is sent again whole. Every XADD is counted in
//! `skein_redis_xadd_total{outcome="success"|"error"|"connect_error"|"dropped"}`.

pub mod resp;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::sink_task::SinkTask;
use super::stream::{self, Entry};
use super::{Event, EventBus, EventSettings};
use crate::metrics::REDIS_XADD as XADD_TOTAL;
use resp::{Connection, Reply, RespError, Target};

/// The dialect name on the bus and in `skein_events_dropped_total`.
pub const DIALECT: &str = "redis";

/// Entries sent in one pipelined write.
const BATCH: usize = 256;
/// Bound on one command round trip and on connecting.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub use resp::parse_url;

/// A registered, not yet started Redis sink.
pub struct RedisDialect {
    events: mpsc::Receiver<Arc<Event>>,
    target: Target,
    key: String,
    /// `MAXLEN ~ <n>` on every XADD; None: the stream is not trimmed.
    maxlen: Option<String>,
    instance: String,
}

/// Registers the sink when `redis_url` is set (checked when the config was loaded; a URL
/// that still doesn't parse leaves the sink off, logged).
/// `settings`: the event settings, e.g. `&Config`.
pub fn register(bus: &mut EventBus, settings: impl Into<EventSettings>) -> Option<RedisDialect> {
    let settings = settings.into();
    if settings.redis_url.trim().is_empty() {
        return None;
    }
    let target = match parse_url(settings.redis_url.trim()) {
        Ok(target) => target,
        Err(e) => {
            tracing::error!(error = %e, "redis_url: Redis sink disabled");
            return None;
        }
    };
    let events = bus.add_sink(
        DIALECT,
        stream::recorded(&settings),
        settings.events_queue_capacity,
    );
    let key = stream_key(&settings.redis_stream_prefix);
    let maxlen =
        (settings.redis_stream_maxlen > 0).then(|| settings.redis_stream_maxlen.to_string());
    tracing::info!(addr = %target.addr, %key, maxlen = settings.redis_stream_maxlen, "Redis stream sink enabled");
    Some(RedisDialect {
        events,
        target,
        key,
        maxlen,
        instance: bus.node().node_name.clone(),
    })
}

/// `<prefix>.mqtt`, the stream seed 002's MQTT adapter writes.
pub fn stream_key(prefix: &str) -> String {
    format!("{prefix}.mqtt")
}

impl RedisDialect {
    /// Starts the sink; [`SinkTask::finish`] sends what was raised until then, within its
    /// grace period.
    pub fn start(self) -> SinkTask {
        SinkTask::spawn(DIALECT, move |stop| self.run(stop))
    }

    async fn run(mut self, stop: CancellationToken) {
        let mut pending: VecDeque<Entry> = VecDeque::new();
        let mut conn: Option<Connection> = None;
        let mut failures = 0u32;
        let mut stopping = false;
        loop {
            if pending.is_empty() && !stopping {
                tokio::select! {
                    event = self.events.recv() => match event {
                        Some(event) => pending.extend(stream::entry(&event, &self.instance).map(Entry::from)),
                        None => stopping = true,
                    },
                    () = stop.cancelled() => stopping = true,
                }
            }
            // Take what else is queued, so a burst goes out in few round trips.
            while pending.len() < BATCH {
                match self.events.try_recv() {
                    Ok(event) => {
                        pending.extend(stream::entry(&event, &self.instance).map(Entry::from))
                    }
                    Err(_) => break,
                }
            }
            if pending.is_empty() {
                if stopping {
                    break;
                }
                continue;
            }
            let batch = pending.len().min(BATCH);
            match self.send(&mut conn, pending.range(..batch)).await {
                Ok(()) => {
                    pending.drain(..batch);
                    failures = 0;
                }
                Err(error) => {
                    conn = None;
                    failures += 1;
                    metrics::counter!(XADD_TOTAL, "outcome" => "connect_error")
                        .increment(batch as u64);
                    if failures == 1 {
                        tracing::warn!(%error, addr = %self.target.addr, "Redis unreachable; retrying with backoff");
                    }
                    if stopping {
                        // No waiting for Redis at shutdown: what's left is lost, counted.
                        metrics::counter!(XADD_TOTAL, "outcome" => "dropped")
                            .increment(pending.len() as u64);
                        break;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff(failures)) => {}
                        () = stop.cancelled() => stopping = true,
                    }
                }
            }
        }
    }

    /// XADDs `batch` in one pipelined write. Err: the connection failed (the whole batch
    /// is to be retried); a command Redis refused is counted and not retried.
    async fn send<'a>(
        &self,
        conn: &mut Option<Connection>,
        batch: impl Iterator<Item = &'a Entry>,
    ) -> Result<(), RespError> {
        if conn.is_none() {
            *conn = Some(Connection::connect(&self.target, IO_TIMEOUT).await?);
        }
        let Some(c) = conn.as_mut() else {
            return Err(RespError::Closed);
        };
        let batch: Vec<(&Entry, String)> = batch.map(|e| (e, e.occurred_at.to_string())).collect();
        let commands: Vec<Vec<&[u8]>> = batch
            .iter()
            .map(|(e, occurred_at)| xadd(&self.key, self.maxlen.as_deref(), e, occurred_at))
            .collect();
        for reply in c.pipeline(&commands).await? {
            match reply {
                Reply::Error(error) => {
                    metrics::counter!(XADD_TOTAL, "outcome" => "error").increment(1);
                    tracing::warn!(%error, key = %self.key, "Redis refused XADD");
                }
                _ => metrics::counter!(XADD_TOTAL, "outcome" => "success").increment(1),
            }
        }
        Ok(())
    }
}

/// `XADD <key> [MAXLEN ~ <n>] * client_id .. event_type .. instance .. occurred_at ..`
/// (seed 002's order). `~` lets Redis trim whole internal nodes only, the cheap way.
fn xadd<'a>(
    key: &'a str,
    maxlen: Option<&'a str>,
    e: &'a Entry,
    occurred_at: &'a str,
) -> Vec<&'a [u8]> {
    let mut command: Vec<&[u8]> = Vec::with_capacity(14);
    command.extend([b"XADD" as &[u8], key.as_bytes()]);
    if let Some(n) = maxlen {
        command.extend([b"MAXLEN" as &[u8], b"~", n.as_bytes()]);
    }
    command.extend([
        b"*" as &[u8],
        b"client_id",
        e.client_id.as_bytes(),
        b"event_type",
        e.event_type.as_str().as_bytes(),
        b"instance",
        e.instance.as_bytes(),
        b"occurred_at",
        occurred_at.as_bytes(),
    ]);
    command
}

fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests;
