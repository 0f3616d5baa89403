//! [`LogStore`]: the storage crate's sled Raft log, seen through a window that remembers
//! the commit index (openraft 0.9's metrics do not report it; `skein_raft_commit_index` and
//! the status RPC do).

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageError, Vote};
use skein_storage::RaftLogStore;

use crate::types::{Entry, LogId, NodeId, TypeConfig};

/// The last commit index this node learned, shared with whoever reports it. `u64::MAX`
/// stands for "nothing committed yet" (index 0 is a real entry).
#[derive(Debug)]
pub(crate) struct CommitIndex(AtomicU64);

impl CommitIndex {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(CommitIndex(AtomicU64::new(u64::MAX)))
    }

    pub(crate) fn get(&self) -> Option<u64> {
        match self.0.load(Ordering::Relaxed) {
            u64::MAX => None,
            index => Some(index),
        }
    }

    fn set(&self, committed: Option<&LogId>) {
        self.0
            .store(committed.map_or(u64::MAX, |id| id.index), Ordering::Relaxed);
    }
}

/// The sled log store, passing every call through and noting each commit.
#[derive(Clone, Debug)]
pub(crate) struct LogStore {
    inner: RaftLogStore<TypeConfig>,
    commit: Arc<CommitIndex>,
}

impl LogStore {
    pub(crate) fn new(inner: RaftLogStore<TypeConfig>, commit: Arc<CommitIndex>) -> Self {
        LogStore { inner, commit }
    }
}

type StorageResult<T> = Result<T, StorageError<NodeId>>;

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry>> {
        self.inner.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        self.inner.get_log_state().await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.inner.save_vote(vote).await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.inner.read_vote().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> StorageResult<()> {
        self.inner.save_committed(committed).await?;
        self.commit.set(committed.as_ref());
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId>> {
        let committed = self.inner.read_committed().await?;
        self.commit.set(committed.as_ref());
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.inner.append(entries, callback).await
    }

    async fn truncate(&mut self, log_id: LogId) -> StorageResult<()> {
        self.inner.truncate(log_id).await
    }

    async fn purge(&mut self, log_id: LogId) -> StorageResult<()> {
        self.inner.purge(log_id).await
    }
}
