//! openraft's own storage test suite over the sled log store and snapshot slot.
//!
//! The suite tests a log store and a state machine together, so this module has a small,
//! real, deterministic key-value state machine. It exists only to drive the suite (and the
//! unit tests beside it); the product's state machine, the client registry, comes with the
//! cluster crate. Its snapshots go through [`RaftSnapshotSlot`], the same slot the cluster
//! will use.

use std::collections::BTreeMap;
use std::io::Cursor;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder, SnapshotMeta,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::{RaftLogStore, RaftSnapshotSlot};
use crate::Store;

/// A node record shaped like the cluster's (its addresses), so membership entries carry
/// real node data through the codec.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(super) struct TestNode {
    pub(super) grpc: String,
    pub(super) mqtt: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum TestCommand {
    Set { key: String, value: String },
    Delete { key: String },
}

openraft::declare_raft_types!(
    /// The type config of the tests: u64 node ids, [`TestNode`] records, [`TestCommand`]s
    /// answered with the key's previous value.
    pub(super) TestConfig:
        D = TestCommand,
        R = Option<String>,
        Node = TestNode,
);

type StorageError = openraft::StorageError<u64>;

/// The deterministic state machine: applying the same entries gives the same state.
pub(super) struct TestStateMachine {
    state: TestState,
    slot: RaftSnapshotSlot<TestConfig>,
    /// Makes snapshot ids unique among snapshots of the same log id.
    snapshots_built: u64,
}

#[derive(Debug, Clone, Default)]
struct TestState {
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, TestNode>,
    data: BTreeMap<String, String>,
}

impl TestStateMachine {
    /// A state machine restored from the slot's snapshot, as after a restart.
    pub(super) fn open(slot: RaftSnapshotSlot<TestConfig>) -> Result<Self, StorageError> {
        let mut state = TestState::default();
        if let Some(snapshot) = slot.load()? {
            state = restore(&snapshot.meta, &snapshot.data)?;
        }
        Ok(TestStateMachine {
            state,
            slot,
            snapshots_built: 0,
        })
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.state.data.get(key).map(String::as_str)
    }
}

fn restore(meta: &SnapshotMeta<u64, TestNode>, data: &[u8]) -> Result<TestState, StorageError> {
    let data = serde_json::from_slice(data)
        .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
    Ok(TestState {
        last_applied: meta.last_log_id,
        last_membership: meta.last_membership.clone(),
        data,
    })
}

impl RaftStateMachine<TestConfig> for TestStateMachine {
    type SnapshotBuilder = TestSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, TestNode>), StorageError> {
        Ok((self.state.last_applied, self.state.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Option<String>>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TestConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        for entry in entries {
            self.state.last_applied = Some(entry.log_id);
            replies.push(match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(TestCommand::Set { key, value }) => {
                    self.state.data.insert(key, value)
                }
                EntryPayload::Normal(TestCommand::Delete { key }) => self.state.data.remove(&key),
                EntryPayload::Membership(membership) => {
                    self.state.last_membership =
                        StoredMembership::new(Some(entry.log_id), membership);
                    None
                }
            });
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> TestSnapshotBuilder {
        self.snapshots_built += 1;
        TestSnapshotBuilder {
            state: self.state.clone(),
            slot: self.slot.clone(),
            sequence: self.snapshots_built,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, TestNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state = restore(meta, &data)?;
        self.slot.save(meta, &data).await?;
        self.state = state;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TestConfig>>, StorageError> {
        Ok(self.slot.load()?.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

/// A copy of the state at the time the builder was taken.
pub(super) struct TestSnapshotBuilder {
    state: TestState,
    slot: RaftSnapshotSlot<TestConfig>,
    sequence: u64,
}

impl RaftSnapshotBuilder<TestConfig> for TestSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TestConfig>, StorageError> {
        let data = serde_json::to_vec(&self.state.data)
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        let snapshot_id = match self.state.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, self.sequence),
            None => format!("none-{}", self.sequence),
        };
        let meta = SnapshotMeta {
            last_log_id: self.state.last_applied,
            last_membership: self.state.last_membership.clone(),
            snapshot_id,
        };
        self.slot.save(&meta, &data).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Each build is a fresh node: a new temporary directory with a real [`Store`] in it.
struct SledStoreBuilder;

impl StoreBuilder<TestConfig, RaftLogStore<TestConfig>, TestStateMachine, tempfile::TempDir>
    for SledStoreBuilder
{
    async fn build(
        &self,
    ) -> Result<
        (
            tempfile::TempDir,
            RaftLogStore<TestConfig>,
            TestStateMachine,
        ),
        StorageError,
    > {
        let failed = |e: &dyn std::fmt::Display| {
            StorageIOError::new(ErrorSubject::Store, ErrorVerb::Write, AnyError::error(e))
        };
        let dir = tempfile::tempdir().map_err(|e| failed(&e))?;
        let store = Store::open(dir.path()).map_err(|e| failed(&e))?;
        let log = store.raft_log().map_err(|e| failed(&e))?;
        let sm = TestStateMachine::open(store.raft_snapshot_slot().map_err(|e| failed(&e))?)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn sled_log_store_passes_the_openraft_storage_suite() {
    // Runs each of the suite's cases on a fresh node, each in its own runtime.
    Suite::test_all(SledStoreBuilder).unwrap();
}
