//! [`StateMachine`]: openraft's state machine over the [`Registry`], with snapshots kept in
//! the node's [`RaftSnapshotSlot`] and applied changes published on a bounded broadcast
//! channel.
//!
//! The registry sits behind a lock shared with [`RegistryView`], so the broker reads it
//! (who owns a client id, its subscriptions, the interest index) without going through Raft.
//! Applying holds the write lock for one batch of entries: no I/O, no clock, no await inside.

// openraft's storage error is large (about 220 bytes); it is what the traits return, so the
// helpers here build it as is. A storage error stops Raft: never a hot path.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use skein_proto::v1 as pb;
use skein_storage::RaftSnapshotSlot;
use tokio::sync::broadcast;

use crate::metrics;
use crate::registry::{AppliedChanges, ChangeEvent, ClientIds, Registry};
use crate::types::{Entry, LogId, Node, NodeId, Proto, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// What the state machine holds: the registry and where in the log it stands.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub(crate) registry: Registry,
    pub(crate) last_applied: Option<LogId>,
    pub(crate) membership: StoredMembership<NodeId, Node>,
}

/// Read access to the applied registry, shared with the state machine.
#[derive(Debug, Clone)]
pub struct RegistryView {
    applied: Arc<RwLock<Applied>>,
}

impl RegistryView {
    /// Reads the registry under its lock. Keep `f` short: applying waits for it.
    pub fn read<T>(&self, f: impl FnOnce(&Registry) -> T) -> T {
        f(&self.lock().registry)
    }

    /// Reads the registry together with the index of the last entry applied to it (see
    /// [`crate::ChangeStream`] for starting to fold changes after such a read).
    pub fn read_applied<T>(&self, f: impl FnOnce(&Registry, Option<u64>) -> T) -> T {
        let applied = self.lock();
        f(&applied.registry, applied.last_applied.map(|id| id.index))
    }

    /// The index of the last entry applied here.
    pub fn last_applied(&self) -> Option<u64> {
        self.lock().last_applied.map(|id| id.index)
    }

    fn lock(&self) -> RwLockReadGuard<'_, Applied> {
        // A panic while applying would have stopped Raft; reading what is there is safe.
        self.applied.read().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) struct StateMachine {
    applied: Arc<RwLock<Applied>>,
    slot: RaftSnapshotSlot<TypeConfig>,
    changes: broadcast::Sender<ChangeEvent>,
    /// The local broker's strings for client ids being registered here.
    client_ids: Arc<ClientIds>,
    /// Makes snapshot ids unique among snapshots of the same log position.
    snapshots_built: u64,
}

impl StateMachine {
    /// The state machine as the slot's snapshot left it (empty on a new node). Entries after
    /// the snapshot are applied again by openraft from the log.
    pub(crate) fn open(
        slot: RaftSnapshotSlot<TypeConfig>,
        changes: broadcast::Sender<ChangeEvent>,
        client_ids: Arc<ClientIds>,
    ) -> StorageResult<Self> {
        let applied = match slot.load()? {
            Some(stored) => restore(&stored.meta, &stored.data)?,
            None => Applied::default(),
        };
        Ok(StateMachine {
            applied: Arc::new(RwLock::new(applied)),
            slot,
            changes,
            client_ids,
            snapshots_built: 0,
        })
    }

    pub(crate) fn view(&self) -> RegistryView {
        RegistryView {
            applied: self.applied.clone(),
        }
    }

    fn write(&self) -> RwLockWriteGuard<'_, Applied> {
        self.applied.write().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, event: ChangeEvent) {
        // No receiver is fine: nobody folds changes yet (or the broker is shutting down).
        let _ = self.changes.send(event);
    }
}

fn restore(meta: &SnapshotMeta<NodeId, Node>, data: &[u8]) -> StorageResult<Applied> {
    let registry = Registry::from_snapshot(data)
        .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
    Ok(Applied {
        registry,
        last_applied: meta.last_log_id,
        membership: meta.last_membership.clone(),
    })
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId>, StoredMembership<NodeId, Node>)> {
        let applied = self.write();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Proto<pb::CommandResults>>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        let mut events = Vec::new();
        {
            let mut applied = self.write();
            for entry in entries {
                applied.last_applied = Some(entry.log_id);
                let mut results = Vec::new();
                match entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(Proto(batch)) => {
                        let mut changes = Vec::new();
                        applied
                            .registry
                            .observe_leader_stamp(batch.leader_stamped_ms);
                        results.reserve(batch.commands.len());
                        for command in &batch.commands {
                            results.push(applied.registry.apply_sharing(
                                command,
                                &self.client_ids,
                                &mut changes,
                            ));
                        }
                        if !changes.is_empty() {
                            events.push(AppliedChanges {
                                log_index: entry.log_id.index,
                                changes,
                            });
                        }
                    }
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    }
                }
                replies.push(Proto(pb::CommandResults { results }));
            }
            metrics::registry_size(applied.registry.client_count());
        }
        for event in events {
            self.publish(ChangeEvent::Applied(Arc::new(event)));
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        self.snapshots_built += 1;
        // Encoding under the read lock is the copy the builder needs anyway (bytes, not a
        // clone of the maps); applying waits for it, once per snapshot.
        let applied = self.applied.read().unwrap_or_else(|e| e.into_inner());
        SnapshotBuilder {
            data: applied.registry.to_snapshot(),
            last_applied: applied.last_applied,
            membership: applied.membership.clone(),
            slot: self.slot.clone(),
            sequence: self.snapshots_built,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    #[tracing::instrument(level = "info", skip_all, fields(snapshot = %meta.snapshot_id))]
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let restored = restore(meta, &data)?;
        self.slot.save(meta, &data).await?;
        let last_applied = restored.last_applied.map(|id| id.index);
        *self.write() = restored;
        tracing::info!(
            bytes = data.len(),
            ?last_applied,
            "installed a snapshot from the leader"
        );
        self.publish(ChangeEvent::Reset { last_applied });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.slot.load()?.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

/// The registry's bytes at the time the builder was taken.
pub(crate) struct SnapshotBuilder {
    data: Vec<u8>,
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, Node>,
    slot: RaftSnapshotSlot<TypeConfig>,
    sequence: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    #[tracing::instrument(level = "debug", skip_all, fields(bytes = self.data.len()))]
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let snapshot_id = match self.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, self.sequence),
            None => format!("none-{}", self.sequence),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        self.slot.save(&meta, &self.data).await?;
        metrics::snapshot_built(self.data.len());
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(std::mem::take(&mut self.data))),
        })
    }
}
