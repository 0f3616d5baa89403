use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeBounds;
use std::path::Path;
use std::time::{Duration, Instant};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, Vote,
};

use super::openraft_suite::{TestCommand, TestConfig, TestNode, TestStateMachine};
use super::*;

type Log = RaftLogStore<TestConfig>;

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn blank(term: u64, index: u64) -> Entry<TestConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Blank,
    }
}

fn set(term: u64, index: u64, key: &str, value: &str) -> Entry<TestConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(TestCommand::Set {
            key: key.into(),
            value: value.into(),
        }),
    }
}

fn membership(term: u64, index: u64) -> Entry<TestConfig> {
    let nodes: BTreeMap<u64, TestNode> = (1..=3)
        .map(|id| {
            let node = TestNode {
                grpc: format!("node-{id}.skein:7070"),
                mqtt: format!("node-{id}.skein:1883"),
            };
            (id, node)
        })
        .collect();
    let voters = BTreeSet::from([1, 2, 3]);
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

async fn indexes(log: &mut Log) -> Vec<u64> {
    read(log, ..).await
}

/// The indexes of the entries a read of `range` returns.
async fn read<RB>(log: &mut Log, range: RB) -> Vec<u64>
where
    RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send,
{
    log.try_get_log_entries(range)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect()
}

/// Opens a store that was just dropped. sled releases its file lock from a background
/// thread shortly after the last handle goes, so an immediate reopen can briefly fail.
fn reopen(path: &Path) -> Store {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(path) {
            Ok(store) => return store,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("reopen {}: {e}", path.display()),
        }
    }
}

#[test]
fn every_payload_kind_round_trips_through_the_log() {
    rt().block_on(async {
        let store = Store::open_temporary().unwrap();
        let mut log: Log = store.raft_log().unwrap();
        let entries = vec![
            blank(1, 1),
            membership(1, 2),
            set(2, 3, "client/ü", "node 2 \u{0} epoch 7"),
            Entry {
                log_id: log_id(2, 4),
                payload: EntryPayload::Normal(TestCommand::Delete { key: "k".into() }),
            },
        ];
        log.blocking_append(entries.clone()).await.unwrap();
        assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries);
        // The raw value: the format byte, then the entry.
        let raw = log.log.get(codec::index_key(3)).unwrap().unwrap();
        assert_eq!(raw[0], codec::FORMAT_VERSION);
    });
}

#[test]
fn a_format_byte_this_build_does_not_know_is_an_error_not_a_panic() {
    rt().block_on(async {
        let store = Store::open_temporary().unwrap();
        let mut log: Log = store.raft_log().unwrap();
        log.blocking_append([blank(1, 1), blank(1, 2)])
            .await
            .unwrap();
        let mut newer = log.log.get(codec::index_key(2)).unwrap().unwrap().to_vec();
        newer[0] = codec::FORMAT_VERSION + 1;
        log.log.insert(codec::index_key(2), newer).unwrap();

        let e = log.try_get_log_entries(1..3).await.unwrap_err();
        let text = e.to_string();
        assert!(text.contains("unsupported format version 2"), "{text}");
        // openraft's error names the verb and the subject: reading entry 2.
        assert!(text.starts_with("when Read LogIndex(2): "), "{text}");
        assert!(e.into_io().is_some(), "an I/O error, not a defensive one");
        // The entry before it still reads; the log state needs the last entry, so fails.
        assert_eq!(log.try_get_log_entries(1..2).await.unwrap().len(), 1);
        assert!(log.get_log_state().await.is_err());

        // Same for the vote and the snapshot.
        log.state.insert(KEY_VOTE, vec![9, b'{', b'}']).unwrap();
        let e = log.read_vote().await.unwrap_err().to_string();
        assert!(e.starts_with("when Read Vote: "), "{e}");
        let slot: RaftSnapshotSlot<TestConfig> = store.raft_snapshot_slot().unwrap();
        store
            .open_tree(TREE_SNAPSHOT)
            .unwrap()
            .insert(b"current", vec![3, 0, 0, 0, 0])
            .unwrap();
        let e = slot.load().unwrap_err().to_string();
        assert!(e.contains("unsupported format version 3"), "{e}");
    });
}

#[test]
fn an_entry_under_another_entrys_key_is_corrupt() {
    rt().block_on(async {
        let store = Store::open_temporary().unwrap();
        let mut log: Log = store.raft_log().unwrap();
        let value = codec::encode(&blank(1, 5)).unwrap();
        log.log.insert(codec::index_key(4), value).unwrap();
        let e = log.try_get_log_entries(..).await.unwrap_err().to_string();
        assert!(e.contains("entry 5 stored under the key of entry 4"), "{e}");
    });
}

#[test]
fn reads_return_exactly_the_requested_range() {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    rt().block_on(async {
        let store = Store::open_temporary().unwrap();
        let mut log: Log = store.raft_log().unwrap();
        log.blocking_append((0..=300).map(|i| blank(1, i)))
            .await
            .unwrap();
        assert_eq!(
            read(&mut log, (Included(5), Excluded(8))).await,
            vec![5, 6, 7]
        );
        assert_eq!(
            read(&mut log, (Excluded(5), Included(8))).await,
            vec![6, 7, 8]
        );
        assert_eq!(
            read(&mut log, (Included(3), Excluded(3))).await,
            Vec::<u64>::new()
        );
        assert_eq!(
            read(&mut log, (Included(9), Included(4))).await,
            Vec::<u64>::new()
        );
        assert_eq!(
            read(&mut log, (Unbounded, Excluded(0))).await,
            Vec::<u64>::new()
        );
        assert_eq!(read(&mut log, (Unbounded, Included(0))).await, vec![0]);
        assert_eq!(
            read(&mut log, (Excluded(u64::MAX), Unbounded)).await,
            Vec::<u64>::new()
        );
        assert_eq!(
            read(&mut log, (Included(299), Unbounded)).await,
            vec![299, 300]
        );
        // Index 256 is where a byte-order mistake in the keys would show.
        assert_eq!(
            read(&mut log, (Included(255), Included(257))).await,
            vec![255, 256, 257]
        );
        assert_eq!(
            read(&mut log, (Unbounded::<u64>, Unbounded)).await.len(),
            301
        );
    });
}

#[test]
fn purge_and_truncate_remove_exactly_their_ranges() {
    rt().block_on(async {
        let store = Store::open_temporary().unwrap();
        let mut log: Log = store.raft_log().unwrap();
        log.blocking_append((1..=20).map(|i| blank(1, i)))
            .await
            .unwrap();

        log.purge(log_id(1, 5)).await.unwrap();
        assert_eq!(indexes(&mut log).await, (6..=20).collect::<Vec<_>>());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 5)));
        assert_eq!(state.last_log_id, Some(log_id(1, 20)));

        log.truncate(log_id(1, 15)).await.unwrap();
        assert_eq!(indexes(&mut log).await, (6..=14).collect::<Vec<_>>());
        assert_eq!(
            log.get_log_state().await.unwrap().last_log_id,
            Some(log_id(1, 14))
        );

        // A purge never moves the pointer back.
        log.purge(log_id(1, 3)).await.unwrap();
        assert_eq!(
            log.get_log_state().await.unwrap().last_purged_log_id,
            Some(log_id(1, 5))
        );

        // Past the last entry, as after installing a snapshot: the log is empty and its
        // last id is the purged one, so the next append continues from there.
        log.purge(log_id(2, 30)).await.unwrap();
        assert!(indexes(&mut log).await.is_empty());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 30)));
        assert_eq!(state.last_log_id, Some(log_id(2, 30)));
        log.blocking_append([blank(2, 31)]).await.unwrap();
        assert_eq!(indexes(&mut log).await, vec![31]);

        // Truncating everything leaves no entries and the purge pointer alone.
        log.truncate(log_id(2, 31)).await.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(2, 30)));
    });
}

#[test]
fn one_append_call_is_one_flush_however_many_entries() {
    rt().block_on(async {
        let store = Store::open_temporary().unwrap();
        let mut log: Log = store.raft_log().unwrap();
        let before = store.flushes_performed();
        log.blocking_append((1..=1000).map(|i| set(1, i, &format!("client-{i}"), "node-1")))
            .await
            .unwrap();
        assert_eq!(store.flushes_performed() - before, 1);
        assert_eq!(indexes(&mut log).await.len(), 1000);

        // save_vote flushes; save_committed does not (see the module docs).
        log.save_vote(&Vote::new(2, 1)).await.unwrap();
        assert_eq!(store.flushes_performed() - before, 2);
        log.save_committed(Some(log_id(1, 1000))).await.unwrap();
        assert_eq!(store.flushes_performed() - before, 2);
    });
}

#[test]
fn state_survives_reopen_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<_> = (1..=10)
        .map(|i| match i {
            1 => membership(1, 1),
            i => set(1 + i / 5, i, &format!("k{i}"), "v"),
        })
        .collect();
    let snapshot_meta = rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        let mut log: Log = store.raft_log().unwrap();
        log.blocking_append(entries.clone()).await.unwrap();
        log.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
        log.save_committed(Some(log_id(2, 8))).await.unwrap();
        log.purge(log_id(1, 3)).await.unwrap();

        let mut sm = TestStateMachine::open(store.raft_snapshot_slot().unwrap()).unwrap();
        sm.apply(entries[..6].to_vec()).await.unwrap();
        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        // The commit pointer is flushed with the next flush, as in a running node.
        store.flush().await.unwrap();
        snapshot.meta
    });

    let store = reopen(dir.path());
    rt().block_on(async {
        let mut log: Log = store.raft_log().unwrap();
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(Vote::new_committed(3, 2))
        );
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 8)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
        assert_eq!(state.last_log_id, Some(log_id(3, 10)));
        assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries[3..]);

        // The state machine restores itself from the snapshot slot.
        let mut sm = TestStateMachine::open(store.raft_snapshot_slot().unwrap()).unwrap();
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, snapshot_meta);
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(2, 6)));
        assert_eq!(membership.log_id(), &Some(log_id(1, 1)));
        assert_eq!(sm.get("k6"), Some("v"));
        assert_eq!(sm.get("k7"), None);
    });
}

#[test]
fn a_purge_interrupted_after_its_pointer_is_finished_on_open() {
    rt().block_on(async {
        let store = Store::open_temporary().unwrap();
        let mut log: Log = store.raft_log().unwrap();
        log.blocking_append((1..=8).map(|i| blank(1, i)))
            .await
            .unwrap();
        // What a crash between purge's flush and its removal leaves behind.
        log.write_state(KEY_LAST_PURGED, &log_id(1, 4), "test", || {
            ErrorSubject::Logs
        })
        .unwrap();
        // Until then the state is still consistent: the purged id bounds the log.
        log.purge(log_id(1, 2)).await.unwrap();
        assert_eq!(
            log.get_log_state().await.unwrap().last_purged_log_id,
            Some(log_id(1, 4))
        );

        let mut reopened: Log = store.raft_log().unwrap();
        assert_eq!(indexes(&mut reopened).await, vec![5, 6, 7, 8]);
    });
}

#[test]
fn snapshot_slot_replaces_and_keeps_only_the_current_snapshot() {
    rt().block_on(async {
        let store = Store::open_temporary().unwrap();
        let slot: RaftSnapshotSlot<TestConfig> = store.raft_snapshot_slot().unwrap();
        assert_eq!(slot.load().unwrap(), None);
        let meta = |index, id: &str| SnapshotMeta {
            last_log_id: Some(log_id(1, index)),
            last_membership: Default::default(),
            snapshot_id: id.into(),
        };
        let before = store.flushes_performed();
        slot.save(&meta(5, "a"), b"first").await.unwrap();
        assert_eq!(store.flushes_performed() - before, 1, "durable on return");
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        slot.save(&meta(9, "b"), &big).await.unwrap();
        let current = slot.clone().load().unwrap().unwrap();
        assert_eq!(current.meta, meta(9, "b"));
        assert_eq!(current.data, big);
    });
}

#[cfg(unix)]
#[test]
fn appended_entries_and_vote_survive_kill_9() {
    // The child appends, saves a vote, and is killed once both returned.
    let dir = crate::kill_9::write_then_kill_9(
        "raft_log::tests::appended_entries_and_vote_survive_kill_9",
        |dir| {
            let store = Store::open(dir).unwrap();
            rt().block_on(async {
                let mut log: Log = store.raft_log().unwrap();
                log.blocking_append((1..=50).map(|i| set(4, i, "k", &i.to_string())))
                    .await
                    .unwrap();
                log.save_vote(&Vote::new_committed(4, 1)).await.unwrap();
            });
            std::mem::forget(store);
        },
    );
    let store = reopen(dir.path());
    rt().block_on(async {
        let mut log: Log = store.raft_log().unwrap();
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(Vote::new_committed(4, 1))
        );
        let entries = log.try_get_log_entries(..).await.unwrap();
        assert_eq!(entries.len(), 50);
        assert_eq!(entries[49], set(4, 50, "k", "50"));
    });
}
