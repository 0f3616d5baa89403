//! The stream dialect (seed 002, "MQTT adapter"): every connect and disconnect is appended
//! to a persisted log with increasing ids ([`skein_storage::EventLog`]), which consumers
//! read from any id over HTTP (`http/event_stream.rs`): a page, a long poll, or server-sent
//! events.
//! Retention (age and length) is enforced by the sink task.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skein_storage::{Availability, EventLog, StorageHealth, Store};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::raise::now_ns;
use super::sink_task::SinkTask;
use super::{Event, EventBody, EventBus, EventKind, EventSettings, KindSet};

/// The dialect name on the bus and in `skein_events_dropped_total`.
pub const DIALECT: &str = "stream";

/// The kinds the stream (or the Redis sink) is to record: the rendered ones `stream_kinds`
/// asks for.
pub fn recorded(settings: &EventSettings) -> KindSet {
    KindSet(kinds().0 & settings.stream_kinds.0)
}

/// The kinds the stream (and the Redis sink) render.
pub fn kinds() -> KindSet {
    KindSet::of(&[EventKind::ClientConnected, EventKind::ClientDisconnected])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Connect,
    Disconnect,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Connect => "connect",
            EventType::Disconnect => "disconnect",
        }
    }
}

/// One entry, as seed 002's MQTT adapter writes it. The sink serializes entries that
/// borrow from the event (`Entry<&str>`): no copies of the strings per event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry<S = String> {
    pub client_id: S,
    pub event_type: EventType,
    /// The node name.
    pub instance: S,
    /// Nanoseconds since the epoch, when the event was raised.
    pub occurred_at: u64,
}

impl From<Entry<&str>> for Entry {
    fn from(e: Entry<&str>) -> Entry {
        Entry {
            client_id: e.client_id.to_owned(),
            event_type: e.event_type,
            instance: e.instance.to_owned(),
            occurred_at: e.occurred_at,
        }
    }
}

impl Entry<&str> {
    /// Appends the entry's JSON to `out`, byte for byte what `serde_json` writes for it,
    /// without serde's per-byte escaping machinery (it was ~8% of a connect's instructions):
    /// strings that need no escaping, which client ids and node names nearly always are, are
    /// copied as they are, and only the others go through `serde_json`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"client_id\":");
        write_json_str(out, self.client_id);
        out.extend_from_slice(b",\"event_type\":\"");
        out.extend_from_slice(self.event_type.as_str().as_bytes());
        out.extend_from_slice(b"\",\"instance\":");
        write_json_str(out, self.instance);
        out.extend_from_slice(b",\"occurred_at\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.occurred_at).as_bytes());
        out.push(b'}');
    }
}

/// `s` as a JSON string literal.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// The entry for `event`: a `connect` per session that went live, a `disconnect` when it
/// ends. Connections refused before they had a session (which raise `client.disconnected`
/// too) write nothing. Which of the two kinds are recorded (`stream_kinds`) is decided
/// where the sink is registered ([`recorded`]): the bus queues it nothing else.
pub fn entry<'a>(event: &'a Event, instance: &'a str) -> Option<Entry<&'a str>> {
    let event_type = match &event.body {
        EventBody::Connected => EventType::Connect,
        // The event says whether the connection went live: no per-connection map to
        // pair disconnects with connects (it cost every connected client ~50 bytes).
        EventBody::Disconnected { had_session, .. } if *had_session => EventType::Disconnect,
        _ => return None,
    };
    Some(Entry {
        client_id: event.client.client_id.as_str(),
        event_type,
        instance,
        occurred_at: event.timestamp_ns,
    })
}

/// How long and how many entries the log keeps; `None`: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Option<Duration>,
    pub max_entries: Option<u64>,
}

impl Retention {
    pub fn from_settings(settings: &EventSettings) -> Retention {
        Retention {
            max_age: (settings.stream_retention_secs > 0)
                .then(|| Duration::from_secs(settings.stream_retention_secs)),
            max_entries: (settings.stream_max_entries > 0).then_some(settings.stream_max_entries),
        }
    }

    /// How often the limits are enforced: often enough that the log overshoots them by
    /// little, rarely enough to cost nothing.
    fn interval(&self) -> Duration {
        let by_age = self.max_age.map_or(MAX_TRIM_INTERVAL, |age| age / 10);
        by_age.clamp(Duration::from_secs(1), MAX_TRIM_INTERVAL)
    }

    /// Trims the log to the limits at `now_ns`; returns how many entries went.
    pub fn enforce(&self, log: &EventLog, now_ns: u64) -> skein_storage::Result<u64> {
        let mut removed = 0;
        if let Some(age) = self.max_age {
            let age_ns = u64::try_from(age.as_nanos()).unwrap_or(u64::MAX);
            removed += log.trim_older_than(now_ns.saturating_sub(age_ns))?;
        }
        if let Some(max) = self.max_entries {
            removed += log.trim_to_len(max)?;
        }
        Ok(removed)
    }
}

const MAX_TRIM_INTERVAL: Duration = Duration::from_secs(60);

/// What the HTTP API reads: the log, and the last id written (to wake long polls and
/// event streams). Cheap to clone.
#[derive(Clone)]
pub struct StreamApi {
    /// None while the stream is disabled (the API answers 404).
    pub log: Option<EventLog>,
    /// The last id written.
    pub last: watch::Receiver<u64>,
    /// Bounds the reads running on the blocking pool: every long poll and event stream
    /// reads on every append.
    pub reads: Arc<tokio::sync::Semaphore>,
}

/// Log reads on the blocking pool at a time, over all consumers.
const CONCURRENT_READS: usize = 4;

/// The registered stream dialect.
pub struct StreamDialect {
    events: Option<mpsc::Receiver<Arc<Event>>>,
    log: EventLog,
    storage: Arc<StorageHealth>,
    last: watch::Sender<u64>,
    instance: String,
    retention: Retention,
}

/// Registers the stream on `bus` (unless `stream_enabled` is off) over `store`'s log.
/// `settings`: the event settings, e.g. `&Config`.
pub fn register(
    bus: &mut EventBus,
    settings: impl Into<EventSettings>,
    store: &Store,
) -> StreamDialect {
    let settings = settings.into();
    let log = store.event_log().clone();
    let events = settings
        .stream_enabled
        .then(|| bus.add_sink(DIALECT, recorded(&settings), settings.events_queue_capacity));
    let (last, _) = watch::channel(log.last_id());
    StreamDialect {
        events,
        log,
        storage: store.health().clone(),
        last,
        instance: bus.node().node_name.clone(),
        retention: Retention::from_settings(&settings),
    }
}

impl StreamDialect {
    /// The state the HTTP API (`http/event_stream.rs`) serves; it answers 404 when the stream is disabled.
    pub fn api(&self) -> StreamApi {
        StreamApi {
            log: self.events.is_some().then(|| self.log.clone()),
            last: self.last.subscribe(),
            reads: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_READS)),
        }
    }

    /// Starts appending and trimming; `None` when the stream is disabled.
    pub fn start(self) -> Option<SinkTask> {
        let events = self.events?;
        let sink = Sink {
            log: self.log,
            storage: self.storage,
            last: self.last,
            instance: self.instance,
            retention: self.retention,
            scratch: Vec::new(),
        };
        Some(SinkTask::spawn(DIALECT, move |stop| sink.run(events, stop)))
    }
}

struct Sink {
    log: EventLog,
    /// Below the free-space guard the log takes nothing: its room is sled's reserve.
    storage: Arc<StorageHealth>,
    last: watch::Sender<u64>,
    instance: String,
    retention: Retention,
    /// The serialized entries of a batch (reused: no allocation per entry or batch).
    scratch: Vec<u8>,
}

/// A batch buffer larger than this (client ids can be long) is not kept.
const MAX_SCRATCH: usize = 256 * 1024;

/// Most events appended in one write.
const APPEND_BATCH: usize = 256;

/// How long the sink waits for more events after the first of a batch.
const GATHER: Duration = Duration::from_millis(5);

/// How often appended entries are made durable: sled's own default window, which the
/// log had when it lived in sled.
const SYNC_INTERVAL: Duration = Duration::from_millis(500);

impl Sink {
    async fn run(mut self, mut events: mpsc::Receiver<Arc<Event>>, stop: CancellationToken) {
        self.trim().await;
        let mut trim = tokio::time::interval(self.retention.interval());
        trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        trim.reset();
        let mut sync = tokio::time::interval(SYNC_INTERVAL);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(APPEND_BATCH);
        let mut unsynced = false;
        loop {
            tokio::select! {
                received = events.recv_many(&mut batch, APPEND_BATCH) => {
                    if received == 0 {
                        break;
                    }
                    if batch.len() < APPEND_BATCH {
                        // Let a burst (a wave of connects) gather: one write and one
                        // blocking-pool hand-off per few ms instead of per event.
                        tokio::time::sleep(GATHER).await;
                        while batch.len() < APPEND_BATCH {
                            match events.try_recv() {
                                Ok(event) => batch.push(event),
                                Err(_) => break,
                            }
                        }
                    }
                    unsynced |= self.append(&batch).await;
                    batch.clear();
                }
                _ = sync.tick(), if unsynced => {
                    // Retried on the next tick when it fails.
                    unsynced = !self.sync().await;
                }
                _ = trim.tick() => self.trim().await,
                () = stop.cancelled() => {
                    while let Ok(event) = events.try_recv() {
                        batch.push(event);
                        if batch.len() == APPEND_BATCH {
                            self.append(&batch).await;
                            batch.clear();
                        }
                    }
                    self.append(&batch).await;
                    break;
                }
            }
        }
        self.sync().await;
        // Dropping `last` ends the long polls and event streams that wait on it.
    }

    /// Appends the entries of `events` in one write; true if any was appended. The write
    /// runs on the blocking pool: it may rotate a segment or flush an id reservation, both
    /// fsyncs.
    async fn append(&mut self, events: &[Arc<Event>]) -> bool {
        let now = now_ns();
        // Every entry of the batch in one buffer, kept between batches.
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let mut ends = Vec::with_capacity(events.len());
        for event in events {
            let Some(entry) = entry(event, &self.instance) else {
                continue;
            };
            entry.write_json(&mut buf);
            ends.push(buf.len());
        }
        if ends.is_empty() {
            self.keep_scratch(buf);
            return false;
        }
        let count = ends.len();
        if self.storage.availability() == Availability::LowSpace {
            self.keep_scratch(buf);
            dropped(
                count,
                "storage_low_space",
                "free space is below storage_min_free_bytes",
            );
            return false;
        }
        let log = self.log.clone();
        let appended = tokio::task::spawn_blocking(move || {
            let mut start = 0;
            let records: Vec<(u64, &[u8])> = ends
                .iter()
                .map(|&end| (now, &buf[std::mem::replace(&mut start, end)..end]))
                .collect();
            let appended = log.append_batch(&records).map_err(|e| e.to_string());
            drop(records);
            (appended, buf)
        })
        .await;
        let appended = match appended {
            Ok((appended, buf)) => {
                self.keep_scratch(buf);
                appended
            }
            Err(e) => Err(e.to_string()),
        };
        match appended {
            Ok(last) => {
                self.last.send_replace(last);
                true
            }
            Err(error) => {
                dropped(count, "storage_error", &error);
                false
            }
        }
    }

    /// Keeps the batch buffer for the next batch, unless an unusual batch made it large.
    fn keep_scratch(&mut self, buf: Vec<u8>) {
        if buf.capacity() <= MAX_SCRATCH {
            self.scratch = buf;
        }
    }

    async fn sync(&self) -> bool {
        sync_log(self.log.clone()).await
    }

    async fn trim(&self) {
        let (log, retention) = (self.log.clone(), self.retention);
        // Deleting a large backlog is blocking I/O: keep it off the async workers.
        let trimmed = tokio::task::spawn_blocking(move || retention.enforce(&log, now_ns())).await;
        match trimmed {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => tracing::debug!(removed, "event log trimmed"),
            Ok(Err(error)) => tracing::error!(%error, "cannot trim the event log"),
            Err(error) => tracing::error!(%error, "event log trim task failed"),
        }
    }
}

/// Makes what was appended to `log` durable (on the blocking pool: an fsync); false if
/// that failed, which is logged.
pub(crate) async fn sync_log(log: EventLog) -> bool {
    match tokio::task::spawn_blocking(move || log.sync()).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::error!(%error, "cannot sync the event log");
            false
        }
        Err(error) => {
            tracing::error!(%error, "event log sync task failed");
            false
        }
    }
}

/// Counts `n` entries the log could not take, and logs it now and then.
fn dropped(n: usize, reason: &'static str, error: &str) {
    static LOG: crate::log_limit::LogLimit =
        crate::log_limit::LogLimit::new(Duration::from_secs(10));
    metrics::counter!(crate::metrics::EVENTS_DROPPED, "dialect" => DIALECT, "reason" => reason)
        .increment(n as u64);
    if let Some(held_back) = LOG.allow() {
        if reason == "storage_low_space" {
            tracing::warn!(%error, entries = n, held_back, "event log entries dropped");
        } else {
            tracing::error!(%error, entries = n, held_back, "cannot append to the event log");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
