//! [`RaftSnapshotSlot`]: the durable home of the current Raft snapshot.

use std::marker::PhantomData;

use openraft::{ErrorSubject, ErrorVerb, RaftTypeConfig, SnapshotMeta};
use sled::Tree;

use super::{codec, encode_error, raft_error, RaftResult, TREE_SNAPSHOT};
use crate::Store;

/// The one key of the snapshot tree: there is only ever a current snapshot.
const CURRENT: &[u8] = b"current";

/// A snapshot as stored: openraft's metadata and the state machine's serialized bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSnapshot<C: RaftTypeConfig> {
    pub meta: SnapshotMeta<C::NodeId, C::Node>,
    pub data: Vec<u8>,
}

/// The current Raft snapshot of this node, kept in sled.
///
/// The state machine serializes itself; this slot only keeps its bytes beside the metadata,
/// so a restarted node can rebuild its state and serve the snapshot to a lagging follower.
/// Cloning is cheap and clones share the slot.
pub struct RaftSnapshotSlot<C: RaftTypeConfig> {
    store: Store,
    tree: Tree,
    _config: PhantomData<C>,
}

impl<C: RaftTypeConfig> Clone for RaftSnapshotSlot<C> {
    fn clone(&self) -> Self {
        RaftSnapshotSlot {
            store: self.store.clone(),
            tree: self.tree.clone(),
            _config: PhantomData,
        }
    }
}

impl<C: RaftTypeConfig> std::fmt::Debug for RaftSnapshotSlot<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftSnapshotSlot").finish_non_exhaustive()
    }
}

impl<C: RaftTypeConfig> RaftSnapshotSlot<C> {
    pub(super) fn open(store: &Store) -> crate::Result<Self> {
        Ok(RaftSnapshotSlot {
            tree: store.open_tree(TREE_SNAPSHOT)?,
            store: store.clone(),
            _config: PhantomData,
        })
    }

    /// Replaces the current snapshot with `meta` and `data`; returns once both are on disk.
    #[tracing::instrument(level = "debug", skip_all, fields(id = %meta.snapshot_id, bytes = data.len()))]
    pub async fn save(
        &self,
        meta: &SnapshotMeta<C::NodeId, C::Node>,
        data: &[u8],
    ) -> RaftResult<C, ()> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let value = codec::encode_snapshot(meta, data).map_err(|e| {
            raft_error(
                subject(),
                ErrorVerb::Write,
                encode_error("snapshot metadata", e),
            )
        })?;
        self.tree
            .insert(CURRENT, value)
            .map_err(|e| raft_error(subject(), ErrorVerb::Write, e))?;
        self.store
            .flush()
            .await
            .map_err(|e| raft_error(subject(), ErrorVerb::Write, e))
    }

    /// The current snapshot, if one was ever saved.
    pub fn load(&self) -> RaftResult<C, Option<StoredSnapshot<C>>> {
        let read_err =
            |e: crate::StorageError| raft_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e);
        let Some(value) = self.tree.get(CURRENT).map_err(|e| read_err(e.into()))? else {
            return Ok(None);
        };
        let (meta, data) =
            codec::decode_snapshot(&value).map_err(|e| read_err(e.in_tree(TREE_SNAPSHOT)))?;
        Ok(Some(StoredSnapshot { meta, data }))
    }
}
