//! [`Store`]: the broker's handle on the sled database.

use std::convert::Infallible;
use std::path::Path;
use std::time::Instant;

use sled::transaction::{ConflictableTransactionResult, TransactionError, Transactional};
use sled::{Batch, Db, Tree};

use crate::codec;
use crate::error::{corrupt, Result, StorageError};
use crate::events::EventLog;
use crate::health::StorageHealth;
use crate::keys;
use crate::types::{StoredInflight, StoredMessage, StoredSession};

const TREE_META: &str = "meta";
const TREE_SESSIONS: &str = "sessions";
const TREE_QUEUE: &str = "queue";
const TREE_INFLIGHT: &str = "inflight";
const TREE_INCOMING: &str = "incoming";
const TREE_RETAINED: &str = "retained";
const TREE_HANDOVER: &str = "handover";
const TREE_MOVED_AWAY: &str = "moved_away";

/// Version of the whole store layout (trees, keys and value formats).
/// Bumped when an older build could misread what a newer one writes.
pub(crate) const SCHEMA_VERSION: u32 = 1;
const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";

/// Durable state of one broker node. Cloning is cheap and clones share the
/// same database.
#[derive(Clone)]
pub struct Store {
    db: Db,
    sessions: Tree,
    queue: Tree,
    inflight: Tree,
    incoming: Tree,
    retained: Tree,
    /// Session hand-overs between nodes: how far this node wrote what another node holds
    /// (see `store/handover.rs`).
    handover: Tree,
    /// Sessions sealed here because they moved to another node (see
    /// `store/moved_away.rs`).
    moved_away: Tree,
    events: EventLog,
    /// How the previous user of this store stopped (see `store/last_stop.rs`).
    last_stop: LastStop,
    flushes: std::sync::Arc<FlushGate>,
    health: std::sync::Arc<StorageHealth>,
}

/// Group commit: concurrent `flush` calls share one sled flush instead of queueing one
/// fsync each. A caller takes a ticket; a flush that *starts* after the ticket was taken
/// covers every write made before it.
#[derive(Debug, Default)]
struct FlushGate {
    /// One flush at a time (the others wait here and usually find their ticket covered).
    running: tokio::sync::Mutex<()>,
    requested: std::sync::atomic::AtomicU64,
    /// The highest ticket a completed flush covers.
    completed: std::sync::atomic::AtomicU64,
    /// sled flushes actually run (for tests and diagnostics).
    performed: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tree::len scans the whole tree, so show nothing that needs I/O.
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// The event log's segment files, inside the store's directory (beside sled's files).
const EVENT_LOG_DIR: &str = "event_log";

impl Store {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|source| StorageError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        // sled's default page cache is 1 GiB; a broker node shares its memory with
        // connections, and the hot data (sessions, retained) is also held by the broker.
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .open()?;
        let store = Store::from_db(db, Some(dir), |db| {
            EventLog::open(db, &dir.join(EVENT_LOG_DIR))
        })?;
        tracing::debug!(dir = %dir.display(), "opened store");
        Ok(store)
    }

    /// A store that lives in temporary directories and is deleted when the last clone
    /// (of the store or its event log) is dropped.
    pub fn open_temporary() -> Result<Store> {
        Store::from_db(
            sled::Config::new().temporary(true).open()?,
            None,
            EventLog::open_temporary,
        )
    }

    fn from_db(
        db: Db,
        dir: Option<&Path>,
        open_events: impl FnOnce(&Db) -> Result<EventLog>,
    ) -> Result<Store> {
        let meta = db.open_tree(TREE_META)?;
        let created = check_schema(&meta)?;
        let last_stop = last_stop::begin_run(&db, &meta, created)?;
        Ok(Store {
            sessions: db.open_tree(TREE_SESSIONS)?,
            queue: db.open_tree(TREE_QUEUE)?,
            inflight: db.open_tree(TREE_INFLIGHT)?,
            incoming: db.open_tree(TREE_INCOMING)?,
            retained: db.open_tree(TREE_RETAINED)?,
            handover: db.open_tree(TREE_HANDOVER)?,
            moved_away: db.open_tree(TREE_MOVED_AWAY)?,
            events: open_events(&db)?,
            last_stop,
            flushes: Default::default(),
            health: std::sync::Arc::new(StorageHealth::new(dir.map(Path::to_owned))),
            db,
        })
    }

    /// Makes every write so far durable, except the event log's (see
    /// [`EventLog::sync`]). sled otherwise syncs only every 500 ms, so the broker
    /// awaits this before acknowledging a message it has queued for an offline session.
    ///
    /// The future is boxed: callers await it inside long-lived connection tasks, and an
    /// inline sled flush future would enlarge every idle connection's task.
    pub fn flush(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + '_>> {
        use std::sync::atomic::Ordering;
        Box::pin(async move {
            let gate = &self.flushes;
            let ticket = gate.requested.fetch_add(1, Ordering::AcqRel) + 1;
            let _running = gate.running.lock().await;
            if gate.completed.load(Ordering::Acquire) >= ticket {
                return Ok(());
            }
            // Every ticket taken so far was taken after its writes, so this flush covers it.
            let covers = gate.requested.load(Ordering::Acquire);
            let start = Instant::now();
            let bytes = self.written(self.db.flush_async().await)?;
            self.note_written(bytes);
            gate.performed.fetch_add(1, Ordering::Relaxed);
            gate.completed.fetch_max(covers, Ordering::AcqRel);
            tracing::debug!(
                bytes,
                elapsed_us = elapsed_us(start),
                covers,
                "flushed store"
            );
            Ok(())
        })
    }

    /// How many sled flushes `flush` has run (fewer than calls when they overlap).
    pub fn flushes_performed(&self) -> u64 {
        self.flushes
            .performed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// [`Store::flush`] for shutdown paths without an async runtime; it also syncs the
    /// event log.
    pub fn flush_blocking(&self) -> Result<()> {
        let start = Instant::now();
        // Both run whatever the other did: a failed event log sync must not also leave
        // the sessions and queues unflushed. The first error is reported.
        let synced = self.events.sync();
        let flushed = self.written(self.db.flush());
        synced?;
        let bytes = flushed?;
        tracing::debug!(
            bytes,
            elapsed_us = elapsed_us(start),
            "flushed store (blocking)"
        );
        Ok(())
    }

    /// Whether the store takes new data (free-space guard, engine failure).
    pub fn health(&self) -> &std::sync::Arc<StorageHealth> {
        &self.health
    }

    /// Counts bytes written for the free-space guard, and measures free space at once
    /// when they may have taken the store near it (see [`StorageHealth`]): a statvfs, far
    /// cheaper than the flush that comes with every stored message.
    fn note_written(&self, bytes: usize) {
        if self.health.wrote(bytes) {
            if let Err(error) = self.health.check() {
                tracing::debug!(%error, "cannot measure free space");
            }
        }
    }

    /// A write's result, with an engine error noted in [`Store::health`] (sled fails
    /// every write after its first I/O error, so one is enough to know).
    fn written<T>(&self, result: sled::Result<T>) -> Result<T> {
        result.map_err(|e| {
            self.health.record(&e);
            e.into()
        })
    }

    /// Opens (creating if needed) a further tree in this database, for records kept beside
    /// the broker's (the Raft log store's, see `raft_log.rs`).
    pub(crate) fn open_tree(&self, name: &str) -> Result<Tree> {
        Ok(self.db.open_tree(name)?)
    }

    /// The append-only system event log (the broker's stream dialect).
    pub fn event_log(&self) -> &EventLog {
        &self.events
    }

    // ------------------------------------------------------------ sessions

    pub fn put_session(&self, s: &StoredSession) -> Result<()> {
        keys::check_client_id(&s.client_id)?;
        let value = codec::encode_session(s);
        self.note_written(s.client_id.len() + value.len());
        self.written(self.sessions.insert(s.client_id.as_bytes(), value))?;
        Ok(())
    }

    pub fn get_session(&self, client_id: &str) -> Result<Option<StoredSession>> {
        keys::check_client_id(client_id)?;
        self.sessions
            .get(client_id.as_bytes())?
            .map(|v| decode_session(client_id.as_bytes(), &v))
            .transpose()
    }

    /// All persistent sessions, in client id byte order. A single corrupt
    /// record fails the whole call rather than silently losing a session.
    pub fn sessions(&self) -> Result<Vec<StoredSession>> {
        self.sessions
            .iter()
            .map(|entry| {
                let (k, v) = entry?;
                decode_session(&k, &v)
            })
            .collect()
    }

    /// Removes the session and its queue, inflight and incoming-QoS 2
    /// entries in one transaction, so a crash never leaves a half-deleted
    /// session behind. Entries written for this client while the call runs
    /// may survive it (transactions cannot scan, so the keys are collected
    /// first): callers must not write to a client they are deleting.
    pub fn delete_session(&self, client_id: &str) -> Result<()> {
        let prefix = keys::client_prefix(client_id)?;
        // Transactions cannot scan, so collect the keys first.
        let queue = removal_batch(&self.queue, &prefix)?;
        let inflight = removal_batch(&self.inflight, &prefix)?;
        let incoming = removal_batch(&self.incoming, &prefix)?;
        let result = (&self.sessions, &self.queue, &self.inflight, &self.incoming).transaction(
            |(sessions, q, f, i)| -> ConflictableTransactionResult<(), Infallible> {
                sessions.remove(client_id.as_bytes())?;
                q.apply_batch(&queue)?;
                f.apply_batch(&inflight)?;
                i.apply_batch(&incoming)?;
                Ok(())
            },
        );
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Storage(e)) => self.written(Err(e)),
            Err(TransactionError::Abort(never)) => match never {},
        }
    }

    // ------------------------------------------------------- offline queue

    pub fn queue_push(&self, client_id: &str, seq: u64, msg: &StoredMessage) -> Result<()> {
        let key = keys::seq_key(client_id, seq)?;
        let value = codec::encode_message(msg);
        self.note_written(key.len() + value.len());
        self.written(self.queue.insert(key, value))?;
        Ok(())
    }

    pub fn queue_remove(&self, client_id: &str, seq: u64) -> Result<()> {
        let key = keys::seq_key(client_id, seq)?;
        self.written(self.queue.remove(key))?;
        Ok(())
    }

    /// The client's queued messages in sequence order.
    pub fn queue_load(&self, client_id: &str) -> Result<Vec<(u64, StoredMessage)>> {
        let prefix = keys::client_prefix(client_id)?;
        self.queue
            .scan_prefix(&prefix)
            .map(|entry| {
                let (k, v) = entry?;
                let seq = keys::parse_seq(&prefix, &k).map_err(|e| e.in_tree(TREE_QUEUE))?;
                let msg = codec::decode_message(&v).map_err(|e| e.in_tree(TREE_QUEUE))?;
                Ok((seq, msg))
            })
            .collect()
    }

    pub fn queue_clear(&self, client_id: &str) -> Result<()> {
        let prefix = keys::client_prefix(client_id)?;
        let batch = removal_batch(&self.queue, &prefix)?;
        self.written(self.queue.apply_batch(batch))?;
        Ok(())
    }

    // ---------------------------------------------------- outgoing inflight

    pub fn inflight_put(&self, client_id: &str, f: &StoredInflight) -> Result<()> {
        let key = keys::packet_key(client_id, f.packet_id)?;
        let value = codec::encode_inflight(f);
        self.note_written(key.len() + value.len());
        self.written(self.inflight.insert(key, value))?;
        Ok(())
    }

    pub fn inflight_remove(&self, client_id: &str, packet_id: u16) -> Result<()> {
        let key = keys::packet_key(client_id, packet_id)?;
        self.written(self.inflight.remove(key))?;
        Ok(())
    }

    /// The client's inflight messages in original send order (`seq`), ties
    /// broken by packet id.
    pub fn inflight_load(&self, client_id: &str) -> Result<Vec<StoredInflight>> {
        let prefix = keys::client_prefix(client_id)?;
        let mut out = self
            .inflight
            .scan_prefix(&prefix)
            .map(|entry| {
                let (k, v) = entry?;
                let packet_id =
                    keys::parse_packet_id(&prefix, &k).map_err(|e| e.in_tree(TREE_INFLIGHT))?;
                codec::decode_inflight(packet_id, &v).map_err(|e| e.in_tree(TREE_INFLIGHT))
            })
            .collect::<Result<Vec<_>>>()?;
        // Stable sort: the scan already yields packet-id order for equal seqs.
        out.sort_by_key(|f| f.seq);
        Ok(out)
    }

    // ------------------------------------------------------ incoming QoS 2

    pub fn incoming_put(&self, client_id: &str, packet_id: u16) -> Result<()> {
        let key = keys::packet_key(client_id, packet_id)?;
        let value = codec::encode_marker();
        self.note_written(key.len() + value.len());
        self.written(self.incoming.insert(key, value))?;
        Ok(())
    }

    pub fn incoming_remove(&self, client_id: &str, packet_id: u16) -> Result<()> {
        let key = keys::packet_key(client_id, packet_id)?;
        self.written(self.incoming.remove(key))?;
        Ok(())
    }

    /// The client's packet ids awaiting PUBREL, ascending.
    pub fn incoming_load(&self, client_id: &str) -> Result<Vec<u16>> {
        let prefix = keys::client_prefix(client_id)?;
        self.incoming
            .scan_prefix(&prefix)
            .map(|entry| {
                let (k, v) = entry?;
                codec::decode_marker(&v).map_err(|e| e.in_tree(TREE_INCOMING))?;
                keys::parse_packet_id(&prefix, &k).map_err(|e| e.in_tree(TREE_INCOMING))
            })
            .collect()
    }

    // ------------------------------------------------------------ retained

    /// Stores `msg` as the retained message of its topic, replacing any other.
    pub fn retained_put(&self, msg: &StoredMessage) -> Result<()> {
        let value = codec::encode_message(msg);
        self.note_written(msg.topic.len() + value.len());
        self.written(self.retained.insert(msg.topic.as_bytes(), value))?;
        Ok(())
    }

    pub fn retained_delete(&self, topic: &str) -> Result<()> {
        self.written(self.retained.remove(topic.as_bytes()))?;
        Ok(())
    }

    /// All retained messages, in topic byte order.
    pub fn retained_load(&self) -> Result<Vec<StoredMessage>> {
        self.retained
            .iter()
            .map(|entry| {
                let (k, v) = entry?;
                let msg = codec::decode_message(&v).map_err(|e| e.in_tree(TREE_RETAINED))?;
                // The key is what retained_delete matches on, so a mismatch
                // would make the message impossible to clear.
                if k.as_ref() != msg.topic.as_bytes() {
                    return Err(corrupt(
                        TREE_RETAINED,
                        "key does not match the message topic",
                    ));
                }
                Ok(msg)
            })
            .collect()
    }
}

/// Writes the schema version into a new store (true: it was new), or checks an existing
/// one.
fn check_schema(meta: &Tree) -> Result<bool> {
    match meta.get(SCHEMA_VERSION_KEY)? {
        None => {
            meta.insert(SCHEMA_VERSION_KEY, &SCHEMA_VERSION.to_be_bytes())?;
            Ok(true)
        }
        Some(v) => {
            let found = <[u8; 4]>::try_from(v.as_ref())
                .map(u32::from_be_bytes)
                .map_err(|_| {
                    corrupt(
                        TREE_META,
                        format!("schema version is {} bytes, expected 4", v.len()),
                    )
                })?;
            match found {
                SCHEMA_VERSION => Ok(false),
                0 => Err(corrupt(TREE_META, "schema version 0")),
                // Older layouts would be migrated here once there are any.
                found => Err(StorageError::SchemaTooNew {
                    found,
                    supported: SCHEMA_VERSION,
                }),
            }
        }
    }
}

fn decode_session(key: &[u8], value: &[u8]) -> Result<StoredSession> {
    let s = codec::decode_session(value).map_err(|e| e.in_tree(TREE_SESSIONS))?;
    // A mismatch would mean put/delete by the stored id miss this record.
    if key != s.client_id.as_bytes() {
        return Err(corrupt(
            TREE_SESSIONS,
            "key does not match the session's client id",
        ));
    }
    Ok(s)
}

/// A batch removing every key under `prefix`.
fn removal_batch(tree: &Tree, prefix: &[u8]) -> Result<Batch> {
    let mut batch = Batch::default();
    for key in tree.scan_prefix(prefix).keys() {
        batch.remove(key?);
    }
    Ok(batch)
}

fn elapsed_us(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

mod handover;
mod last_stop;
mod moved_away;
pub use handover::PageWrite;
pub use last_stop::LastStop;
pub use moved_away::MovedAwayRecord;
#[cfg(test)]
mod tests;
