//! [`RaftLogStore`]: the durable Raft log, vote and commit pointer of a cluster node, and
//! [`RaftSnapshotSlot`]: its current snapshot; both in the node's sled database.
//!
//! Generic over openraft's type config, so this crate knows nothing of the cluster's
//! commands or node records: it stores whatever entries the config declares, as the
//! versioned records described in `raft_log/codec.rs`.
//!
//! # Durability
//!
//! openraft's rules, and how they are kept:
//! - `append` writes the whole call's entries in one sled batch, then runs one flush (the
//!   store's group commit, shared with the broker's own flushes) and only then fires the
//!   `LogFlushed` callback: one fsync per call, however many entries. A follower gets a
//!   whole AppendEntries RPC per call; but openraft 0.9.25's leader appends each
//!   `client_write` as its own one-entry call and waits for its callback before the next,
//!   so batching CONNECTs into few fsyncs is the proposer's job (many commands per entry).
//! - `save_vote` and the snapshot slot's `save` return after a flush.
//! - `purge` makes the new last-purged id durable before it deletes entries, so a crash
//!   between the two can leave purged entries behind (removed on the next open) but never a
//!   hole between the last purged id and the first entry. Truncation is one atomic batch.
//! - `save_committed` is not flushed: a lost update only means openraft re-applies less at
//!   start and re-learns the commit index from the leader. The pointer is always written
//!   after the entries it covers, and a sled flush (ours or its background one) makes every
//!   earlier write durable, so a recovered pointer never points past the recovered entries.
//! - The snapshot is held in memory whole while it is saved or loaded; the control-plane
//!   state it serializes is small next to a node's memory.

// openraft's traits return its `StorageError` (about 200 bytes: subject, verb, source and
// backtrace); the helpers here build and pass on that same type rather than box it only to
// unbox it at the trait boundary. A storage error stops the Raft node, so it is never hot.
#![allow(clippy::result_large_err)]

mod codec;
mod garbage;
mod snapshot;

#[cfg(test)]
mod openraft_suite;
#[cfg(test)]
mod tests;

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::time::Instant;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogId, NodeId, OptionalSend, RaftLogId, RaftLogReader,
    RaftTypeConfig, StorageIOError, Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::{Batch, Tree};

use crate::error::corrupt;
use crate::error::StorageError;
use crate::Store;

pub use snapshot::{RaftSnapshotSlot, StoredSnapshot};

/// Log entries, keyed by big-endian index.
const TREE_LOG: &str = "raft_log";
/// The vote, the committed log id and the last purged log id.
const TREE_STATE: &str = "raft_state";
/// The current snapshot.
const TREE_SNAPSHOT: &str = "raft_snapshot";

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// What the openraft storage traits return.
pub(crate) type RaftResult<C, T> =
    std::result::Result<T, openraft::StorageError<<C as RaftTypeConfig>::NodeId>>;

impl Store {
    /// The Raft log store in this node's database (created empty on first use).
    ///
    /// Finishes a purge that a crash interrupted (see the module docs), so it can fail on
    /// a damaged store.
    pub fn raft_log<C>(&self) -> crate::Result<RaftLogStore<C>>
    where
        C: RaftTypeConfig,
        C::Entry: Serialize + DeserializeOwned,
    {
        RaftLogStore::open(self)
    }

    /// The slot holding this node's current Raft snapshot.
    pub fn raft_snapshot_slot<C>(&self) -> crate::Result<RaftSnapshotSlot<C>>
    where
        C: RaftTypeConfig,
    {
        RaftSnapshotSlot::open(self)
    }
}

/// The Raft log, vote and committed log id of one node, in sled (see the module docs for
/// the durability rules). It is its own log reader: clones share the trees.
pub struct RaftLogStore<C: RaftTypeConfig> {
    store: Store,
    log: Tree,
    state: Tree,
    _config: PhantomData<C>,
}

impl<C: RaftTypeConfig> Clone for RaftLogStore<C> {
    fn clone(&self) -> Self {
        RaftLogStore {
            store: self.store.clone(),
            log: self.log.clone(),
            state: self.state.clone(),
            _config: PhantomData,
        }
    }
}

impl<C: RaftTypeConfig> Debug for RaftLogStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tree::len scans the whole tree, so show nothing that needs I/O.
        f.debug_struct("RaftLogStore").finish_non_exhaustive()
    }
}

impl<C> RaftLogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    fn open(store: &Store) -> crate::Result<Self> {
        let this = RaftLogStore {
            log: store.open_tree(TREE_LOG)?,
            state: store.open_tree(TREE_STATE)?,
            store: store.clone(),
            _config: PhantomData,
        };
        let last_purged = this
            .state
            .get(KEY_LAST_PURGED)?
            .map(|v| codec::decode::<LogId<C::NodeId>>(&v).map_err(|e| e.in_tree(TREE_STATE)))
            .transpose()?;
        if let Some(purged) = last_purged {
            let leftover = removal_batch(this.log.range(..=codec::index_key(purged.index)))?;
            if leftover.1 > 0 {
                this.log.apply_batch(leftover.0)?;
                tracing::info!(
                    removed = leftover.1,
                    upto = purged.index,
                    "finished a Raft log purge interrupted by a restart"
                );
            }
        }
        Ok(this)
    }

    fn decode_entry(&self, key: &[u8], value: &[u8]) -> RaftResult<C, C::Entry> {
        let index = codec::parse_index_key(key)
            .map_err(|e| raft_error(ErrorSubject::Logs, ErrorVerb::Read, e.in_tree(TREE_LOG)))?;
        let subject = || ErrorSubject::LogIndex(index);
        let entry: C::Entry = codec::decode(value)
            .map_err(|e| raft_error(subject(), ErrorVerb::Read, e.in_tree(TREE_LOG)))?;
        let stored = entry.get_log_id().index;
        if stored != index {
            let reason = format!("entry {stored} stored under the key of entry {index}");
            return Err(raft_error(
                subject(),
                ErrorVerb::Read,
                corrupt(TREE_LOG, reason),
            ));
        }
        Ok(entry)
    }

    fn read_state<T: DeserializeOwned>(
        &self,
        key: &[u8],
        subject: ErrorSubject<C::NodeId>,
    ) -> RaftResult<C, Option<T>> {
        let value = match self.state.get(key) {
            Ok(v) => v,
            Err(e) => return Err(raft_error(subject, ErrorVerb::Read, e)),
        };
        value
            .map(|v| codec::decode(&v))
            .transpose()
            .map_err(|e| raft_error(subject, ErrorVerb::Read, e.in_tree(TREE_STATE)))
    }

    /// Writes a state record without flushing it.
    fn write_state<T: Serialize>(
        &self,
        key: &[u8],
        record: &T,
        what: &'static str,
        subject: impl Fn() -> ErrorSubject<C::NodeId>,
    ) -> RaftResult<C, ()> {
        let value = codec::encode(record)
            .map_err(|e| raft_error(subject(), ErrorVerb::Write, encode_error(what, e)))?;
        self.state
            .insert(key, value)
            .map_err(|e| raft_error(subject(), ErrorVerb::Write, e))?;
        Ok(())
    }

    async fn flush(&self, subject: ErrorSubject<C::NodeId>) -> RaftResult<C, ()> {
        self.store
            .flush()
            .await
            .map_err(|e| raft_error(subject, ErrorVerb::Write, e))
    }
}

impl<C> RaftLogReader<C> for RaftLogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> RaftResult<C, Vec<C::Entry>> {
        let Some((first, last)) = inclusive_bounds(&range) else {
            return Ok(Vec::new());
        };
        let first = codec::index_key(first);
        let entries = match last {
            Some(last) => self.log.range(first..=codec::index_key(last)),
            None => self.log.range(first..),
        };
        entries
            .map(|kv| {
                let (k, v) = kv.map_err(|e| raft_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                self.decode_entry(&k, &v)
            })
            .collect()
    }
}

impl<C> RaftLogStorage<C> for RaftLogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> RaftResult<C, LogState<C>> {
        let last_entry = self
            .log
            .last()
            .map_err(|e| raft_error(ErrorSubject::Logs, ErrorVerb::Read, e))?
            .map(|(k, v)| self.decode_entry(&k, &v))
            .transpose()?
            .map(|entry| entry.get_log_id().clone());
        let last_purged_log_id: Option<LogId<C::NodeId>> =
            self.read_state(KEY_LAST_PURGED, ErrorSubject::Logs)?;
        // With every entry purged (or a purge past the last entry, as after installing a
        // snapshot) the last log id is the last purged one.
        let last_log_id = [last_entry, last_purged_log_id.clone()]
            .into_iter()
            .flatten()
            .max_by_key(|id| id.index);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(vote = %vote))]
    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> RaftResult<C, ()> {
        self.write_state(KEY_VOTE, vote, "vote", || ErrorSubject::Vote)?;
        self.flush(ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> RaftResult<C, Option<Vote<C::NodeId>>> {
        self.read_state(KEY_VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<C::NodeId>>) -> RaftResult<C, ()> {
        // Not flushed: see the module docs.
        match committed {
            Some(id) => self.write_state(KEY_COMMITTED, &id, "committed log id", || {
                ErrorSubject::Store
            }),
            None => self
                .state
                .remove(KEY_COMMITTED)
                .map(drop)
                .map_err(|e| raft_error(ErrorSubject::Store, ErrorVerb::Delete, e)),
        }
    }

    async fn read_committed(&mut self) -> RaftResult<C, Option<LogId<C::NodeId>>> {
        self.read_state(KEY_COMMITTED, ErrorSubject::Store)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(first, last, count))]
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> RaftResult<C, ()>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let start = Instant::now();
        let mut batch = Batch::default();
        let mut indexes: Option<(u64, u64)> = None;
        let mut count = 0u64;
        for entry in entries {
            let id = entry.get_log_id();
            let value = codec::encode(&entry).map_err(|e| {
                raft_error(
                    ErrorSubject::Log(id.clone()),
                    ErrorVerb::Write,
                    encode_error("log entry", e),
                )
            })?;
            batch.insert(&codec::index_key(id.index)[..], value);
            indexes = Some((indexes.map_or(id.index, |(first, _)| first), id.index));
            count += 1;
        }
        let current = tracing::Span::current();
        if let Some((first, last)) = indexes {
            current.record("first", first);
            current.record("last", last);
        }
        current.record("count", count);

        // Readable from here on (openraft's rule for when `append` returns)...
        self.log
            .apply_batch(batch)
            .map_err(|e| raft_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        // What the batch replaced (tree nodes, a sealed log buffer) waits in the bag of the
        // thread that wrote: handed to the collector here, before the await below may move
        // this task to another worker thread...
        garbage::release_deferred();
        // ...readable from here on; durable only after this flush, which is what the
        // callback reports.
        let flushed = self.store.flush().await;
        // ...and again on the thread that resumed (the flush's own frees, and what expired
        // meanwhile: other threads' bags handed over earlier, sled's own).
        garbage::release_deferred();
        match flushed {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                tracing::trace!(elapsed_us = elapsed_us(start), "appended");
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(raft_error(ErrorSubject::Logs, ErrorVerb::Write, e))
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(since = %log_id))]
    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> RaftResult<C, ()> {
        let (batch, removed) = removal_batch(self.log.range(codec::index_key(log_id.index)..))
            .map_err(|e| raft_error(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        // One batch: a crash keeps all of these entries or none, never a hole.
        self.log
            .apply_batch(batch)
            .map_err(|e| raft_error(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        tracing::debug!(removed, "truncated the Raft log");
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(upto = %log_id))]
    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> RaftResult<C, ()> {
        let previous: Option<LogId<C::NodeId>> =
            self.read_state(KEY_LAST_PURGED, ErrorSubject::Logs)?;
        // openraft only purges forwards; never let the pointer move back regardless.
        if previous.as_ref().is_none_or(|p| p.index < log_id.index) {
            self.write_state(KEY_LAST_PURGED, &log_id, "last purged log id", || {
                ErrorSubject::Logs
            })?;
            self.flush(ErrorSubject::Logs).await?;
        }
        let (batch, removed) = removal_batch(self.log.range(..=codec::index_key(log_id.index)))
            .map_err(|e| raft_error(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.log
            .apply_batch(batch)
            .map_err(|e| raft_error(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        tracing::debug!(removed, "purged the Raft log");
        Ok(())
    }
}

/// The first and last index (inclusive; no last = unbounded) of a non-empty range.
fn inclusive_bounds(range: &impl RangeBounds<u64>) -> Option<(u64, Option<u64>)> {
    let first = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let last = match range.end_bound() {
        Bound::Included(&i) => Some(i),
        Bound::Excluded(&i) => Some(i.checked_sub(1)?),
        Bound::Unbounded => None,
    };
    match last {
        Some(last) if last < first => None,
        _ => Some((first, last)),
    }
}

/// A batch removing every key `keys` yields, and how many that is.
fn removal_batch(keys: sled::Iter) -> crate::Result<(Batch, u64)> {
    let mut batch = Batch::default();
    let mut count = 0;
    for key in keys.keys() {
        batch.remove(key?);
        count += 1;
    }
    Ok((batch, count))
}

/// An openraft storage error naming what was being done to what, caused by ours.
fn raft_error<NID: NodeId>(
    subject: ErrorSubject<NID>,
    verb: ErrorVerb,
    source: impl Into<StorageError>,
) -> openraft::StorageError<NID> {
    StorageIOError::new(subject, verb, AnyError::new(&source.into())).into()
}

fn encode_error(what: &'static str, e: serde_json::Error) -> StorageError {
    StorageError::Encode {
        what,
        reason: e.to_string(),
    }
}

fn elapsed_us(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}
