use super::*;
use crate::types::StoredSubscription;
use bytes::Bytes;

fn msg(topic: &str, payload: &'static [u8]) -> StoredMessage {
    StoredMessage {
        topic: topic.into(),
        payload: Bytes::from_static(payload),
        qos: 1,
        received_at_ms: 1_700_000_000_000,
        publisher: "publisher".into(),
        ..StoredMessage::default()
    }
}

fn session(client_id: &str) -> StoredSession {
    StoredSession {
        client_id: client_id.into(),
        protocol_level: 5,
        session_expiry_interval: 3600,
        disconnected_at_ms: Some(12),
        subscriptions: vec![StoredSubscription {
            filter: format!("{client_id}/#"),
            qos: 1,
            subscription_identifier: Some(9),
            ..StoredSubscription::default()
        }],
        pending_will: Some((msg("will", b"bye"), 99)),
    }
}

fn inflight(packet_id: u16, seq: u64) -> StoredInflight {
    StoredInflight {
        packet_id,
        seq,
        message: msg("t", b"x"),
        released: packet_id > 0x100,
    }
}

/// Fills every per-client tree for `client_id`, distinguishable by payload.
fn populate(store: &Store, client_id: &str) {
    store.put_session(&session(client_id)).unwrap();
    for seq in [1, 2, 300] {
        store
            .queue_push(client_id, seq, &msg(client_id, b"q"))
            .unwrap();
    }
    for (pid, seq) in [(1, 1), (0x6200, 2)] {
        store.inflight_put(client_id, &inflight(pid, seq)).unwrap();
    }
    store.incoming_put(client_id, 7).unwrap();
    store.incoming_put(client_id, 0x6200).unwrap();
}

fn assert_populated(store: &Store, client_id: &str) {
    assert_eq!(
        store.get_session(client_id).unwrap(),
        Some(session(client_id))
    );
    let queue = store.queue_load(client_id).unwrap();
    assert_eq!(
        queue.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [1, 2, 300]
    );
    assert!(queue.iter().all(|(_, m)| m.topic == client_id));
    let ids: Vec<_> = store
        .inflight_load(client_id)
        .unwrap()
        .iter()
        .map(|f| f.packet_id)
        .collect();
    assert_eq!(ids, [1, 0x6200]);
    assert_eq!(store.incoming_load(client_id).unwrap(), [7, 0x6200]);
}

fn assert_empty(store: &Store, client_id: &str) {
    assert_eq!(store.get_session(client_id).unwrap(), None);
    assert!(store.queue_load(client_id).unwrap().is_empty());
    assert!(store.inflight_load(client_id).unwrap().is_empty());
    assert!(store.incoming_load(client_id).unwrap().is_empty());
}

#[test]
fn session_round_trip_and_overwrite() {
    let store = Store::open_temporary().unwrap();
    assert_eq!(store.get_session("c").unwrap(), None);
    let mut s = session("c");
    store.put_session(&s).unwrap();
    assert_eq!(store.get_session("c").unwrap(), Some(s.clone()));

    s.disconnected_at_ms = None;
    s.subscriptions.clear();
    s.pending_will = None;
    store.put_session(&s).unwrap();
    assert_eq!(store.get_session("c").unwrap(), Some(s.clone()));

    // The empty client id is a valid key too.
    store.put_session(&session("")).unwrap();
    assert_eq!(store.sessions().unwrap(), vec![session(""), s]);
}

#[test]
fn queue_is_in_sequence_order() {
    let store = Store::open_temporary().unwrap();
    // Little-endian or string keys would misorder these.
    let seqs = [256u64, 1, u64::MAX, 0, 255, 65_536, 2];
    for seq in seqs {
        let mut m = msg("t", b"p");
        m.received_at_ms = seq;
        store.queue_push("c", seq, &m).unwrap();
    }
    let loaded = store.queue_load("c").unwrap();
    let mut expected = seqs.to_vec();
    expected.sort();
    assert_eq!(loaded.iter().map(|(s, _)| *s).collect::<Vec<_>>(), expected);
    assert!(loaded.iter().all(|(s, m)| m.received_at_ms == *s));

    store.queue_remove("c", 255).unwrap();
    store.queue_remove("c", 12345).unwrap(); // absent: not an error
    assert_eq!(store.queue_load("c").unwrap().len(), seqs.len() - 1);

    store.queue_clear("c").unwrap();
    assert!(store.queue_load("c").unwrap().is_empty());
}

#[test]
fn inflight_is_in_send_order_not_packet_id_order() {
    let store = Store::open_temporary().unwrap();
    // Packet ids wrap around, so send order differs from id order.
    let sent = [(65_534u16, 10u64), (65_535, 11), (1, 12), (2, 300)];
    for (pid, seq) in sent.iter().rev() {
        store.inflight_put("c", &inflight(*pid, *seq)).unwrap();
    }
    let loaded = store.inflight_load("c").unwrap();
    assert_eq!(
        loaded
            .iter()
            .map(|f| (f.packet_id, f.seq))
            .collect::<Vec<_>>(),
        sent
    );
    assert_eq!(loaded[0], inflight(65_534, 10));

    // Replacing an entry (PUBREC received) keeps one record per packet id.
    let mut released = inflight(1, 12);
    released.released = true;
    released.message = StoredMessage::default();
    store.inflight_put("c", &released).unwrap();
    let loaded = store.inflight_load("c").unwrap();
    assert_eq!(loaded.len(), 4);
    assert_eq!(loaded[2], released);

    store.inflight_remove("c", 65_535).unwrap();
    let ids: Vec<_> = store
        .inflight_load("c")
        .unwrap()
        .iter()
        .map(|f| f.packet_id)
        .collect();
    assert_eq!(ids, [65_534, 1, 2]);
}

#[test]
fn incoming_round_trip() {
    let store = Store::open_temporary().unwrap();
    for pid in [300u16, 1, u16::MAX, 0] {
        store.incoming_put("c", pid).unwrap();
    }
    store.incoming_put("c", 1).unwrap(); // idempotent
    assert_eq!(store.incoming_load("c").unwrap(), [0, 1, 300, u16::MAX]);
    store.incoming_remove("c", 300).unwrap();
    assert_eq!(store.incoming_load("c").unwrap(), [0, 1, u16::MAX]);
}

#[test]
fn retained_round_trip() {
    let store = Store::open_temporary().unwrap();
    assert!(store.retained_load().unwrap().is_empty());
    store.retained_put(&msg("b/c", b"1")).unwrap();
    store.retained_put(&msg("a", b"")).unwrap();
    store.retained_put(&msg("b/c", b"2")).unwrap(); // replaces
    assert_eq!(
        store.retained_load().unwrap(),
        vec![msg("a", b""), msg("b/c", b"2")]
    );
    store.retained_delete("b/c").unwrap();
    store.retained_delete("never/set").unwrap();
    assert_eq!(store.retained_load().unwrap(), vec![msg("a", b"")]);
}

#[test]
fn neighbouring_client_ids_are_isolated() {
    let store = Store::open_temporary().unwrap();
    let ids = ["a", "ab", "a/b", "a b", "", "b"];
    for id in ids {
        populate(&store, id);
    }
    for id in ids {
        assert_populated(&store, id);
    }
    store.queue_clear("a").unwrap();
    assert!(store.queue_load("a").unwrap().is_empty());
    assert_eq!(store.queue_load("ab").unwrap().len(), 3);
    assert_eq!(store.queue_load("").unwrap().len(), 3);
}

#[test]
fn delete_session_removes_everything_of_that_client_only() {
    let store = Store::open_temporary().unwrap();
    let others = ["ab", "a/b", "", "b"];
    populate(&store, "a");
    for id in others {
        populate(&store, id);
    }
    store.retained_put(&msg("a", b"r")).unwrap();

    store.delete_session("a").unwrap();
    assert_empty(&store, "a");
    for id in others {
        assert_populated(&store, id);
    }
    assert_eq!(store.retained_load().unwrap().len(), 1);

    // Deleting what is not there is fine, and so is a client with only a queue.
    store.delete_session("a").unwrap();
    store.queue_push("q-only", 1, &msg("t", b"")).unwrap();
    store.delete_session("q-only").unwrap();
    assert_empty(&store, "q-only");
    assert_eq!(store.sessions().unwrap().len(), others.len());
}

#[test]
fn nul_client_ids_are_rejected() {
    let store = Store::open_temporary().unwrap();
    populate(&store, "a");
    let bad = "a\0b";
    let is_invalid = |r: Result<()>| matches!(r, Err(StorageError::InvalidClientId { .. }));
    assert!(is_invalid(store.put_session(&session(bad))));
    assert!(is_invalid(store.queue_push(bad, 1, &msg("t", b""))));
    assert!(is_invalid(store.inflight_put(bad, &inflight(1, 1))));
    assert!(is_invalid(store.incoming_put(bad, 1)));
    assert!(is_invalid(store.delete_session(bad)));
    assert!(is_invalid(store.queue_clear(bad)));
    assert!(store.get_session(bad).is_err());
    assert!(store.queue_load(bad).is_err());
    assert_populated(&store, "a");
}

#[test]
fn corrupt_values_are_reported_not_panicked_on() {
    let store = Store::open_temporary().unwrap();
    populate(&store, "a");
    store.retained_put(&msg("r", b"")).unwrap();

    let garbage: &[u8] = &[codec::FORMAT_VERSION, 0xff];
    let key = keys::seq_key("a", 2).unwrap();
    store.queue.insert(key, garbage).unwrap();
    assert!(matches!(
        store.queue_load("a"),
        Err(StorageError::Corrupt { tree: "queue", .. })
    ));

    store
        .inflight
        .insert(keys::packet_key("a", 1).unwrap(), garbage)
        .unwrap();
    assert!(matches!(
        store.inflight_load("a"),
        Err(StorageError::Corrupt {
            tree: "inflight",
            ..
        })
    ));

    store
        .incoming
        .insert(keys::packet_key("a", 7).unwrap(), garbage)
        .unwrap();
    assert!(matches!(
        store.incoming_load("a"),
        Err(StorageError::Corrupt {
            tree: "incoming",
            ..
        })
    ));

    store.sessions.insert("a", garbage).unwrap();
    assert!(matches!(
        store.get_session("a"),
        Err(StorageError::Corrupt {
            tree: "sessions",
            ..
        })
    ));
    assert!(store.sessions().is_err());

    // A well-formed value under the wrong key is corrupt as well.
    store
        .sessions
        .insert("a", codec::encode_session(&session("z")))
        .unwrap();
    assert!(store.get_session("a").is_err());
    store
        .retained
        .insert("other", codec::encode_message(&msg("r", b"")))
        .unwrap();
    assert!(matches!(
        store.retained_load(),
        Err(StorageError::Corrupt {
            tree: "retained",
            ..
        })
    ));

    // A key of the wrong length under a client's prefix.
    store
        .incoming
        .remove(keys::packet_key("a", 7).unwrap())
        .unwrap();
    store
        .incoming
        .insert(b"a\0xyz", codec::encode_marker())
        .unwrap();
    assert!(store.incoming_load("a").is_err());

    // Corrupt records can still be deleted.
    store.delete_session("a").unwrap();
    assert_empty(&store, "a");
}

#[test]
fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/data");
    {
        let store = Store::open(&path).unwrap();
        populate(&store, "a");
        populate(&store, "gone");
        store.delete_session("gone").unwrap();
        store.retained_put(&msg("r/1", b"kept")).unwrap();
        store.flush_blocking().unwrap();
    }
    let store = reopen(&path);
    assert_populated(&store, "a");
    assert_empty(&store, "gone");
    assert_eq!(store.sessions().unwrap(), vec![session("a")]);
    assert_eq!(store.retained_load().unwrap(), vec![msg("r/1", b"kept")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_flush_persists_and_is_send() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.queue_push("c", 1, &msg("t", b"durable")).unwrap();
        // The broker awaits flush inside spawned tasks, so the future must be Send.
        let clone = store.clone();
        tokio::spawn(async move { clone.flush().await })
            .await
            .unwrap()
            .unwrap();
    }
    let store = reopen(dir.path());
    assert_eq!(
        store.queue_load("c").unwrap(),
        vec![(1, msg("t", b"durable"))]
    );
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let meta = store.db.open_tree(TREE_META).unwrap();
        let stored = meta.get(SCHEMA_VERSION_KEY).unwrap().unwrap();
        assert_eq!(stored.as_ref(), SCHEMA_VERSION.to_be_bytes());
        meta.insert(SCHEMA_VERSION_KEY, &(SCHEMA_VERSION + 1).to_be_bytes())
            .unwrap();
        store.flush_blocking().unwrap();
    }
    // Retry past sled's lock release (see `reopen`), until the schema check answers.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let err = loop {
        match Store::open(dir.path()) {
            Err(StorageError::Sled(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => break e,
            Ok(_) => panic!("a newer schema was accepted"),
        }
    };
    assert!(
        matches!(err, StorageError::SchemaTooNew { found, supported } if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "{err:?}"
    );
    assert!(err.to_string().contains("newer"), "{err}");
}

#[test]
fn malformed_schema_version_is_corrupt() {
    let store = Store::open_temporary().unwrap();
    let meta = store.db.open_tree(TREE_META).unwrap();
    meta.insert(SCHEMA_VERSION_KEY, &[1u8][..]).unwrap();
    assert!(matches!(
        check_schema(&meta),
        Err(StorageError::Corrupt { tree: "meta", .. })
    ));
    meta.insert(SCHEMA_VERSION_KEY, &0u32.to_be_bytes())
        .unwrap();
    assert!(check_schema(&meta).is_err());
}

#[test]
fn open_reports_an_uncreatable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let err = Store::open(&file.join("sub")).unwrap_err();
    assert!(matches!(err, StorageError::CreateDir { .. }), "{err:?}");
}

#[test]
fn clones_share_the_database() {
    fn assert_send_sync<T: Send + Sync + Clone + std::fmt::Debug>() {}
    assert_send_sync::<Store>();
    let store = Store::open_temporary().unwrap();
    let clone = store.clone();
    clone.retained_put(&msg("x", b"")).unwrap();
    assert_eq!(store.retained_load().unwrap().len(), 1);
    assert_eq!(format!("{store:?}"), "Store { .. }");
}

#[cfg(unix)]
#[test]
fn survives_kill_9_after_flush() {
    // The child writes, flushes, and is killed once the flush returned.
    let dir =
        crate::kill_9::write_then_kill_9("store::tests::survives_kill_9_after_flush", |dir| {
            let store = Store::open(dir).unwrap();
            populate(&store, "a");
            store.retained_put(&msg("r", b"kept")).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(store.flush()).unwrap();
            std::mem::forget(store);
        });
    let store = reopen(dir.path());
    assert_populated(&store, "a");
    assert_eq!(store.retained_load().unwrap(), vec![msg("r", b"kept")]);
}

/// Opens a store that was just dropped. sled releases its file lock from a background
/// thread shortly after the last handle goes, so an immediate reopen can briefly fail.
fn reopen(path: &std::path::Path) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(path) {
            Ok(store) => return store,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("reopen {}: {e}", path.display()),
        }
    }
}

#[test]
fn concurrent_flushes_share_one_sled_flush_and_each_covers_its_writes() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        // Hold the gate so that every call has written and taken its ticket before any
        // flush starts; how many flushes run otherwise depends on thread timing.
        let held = store.flushes.running.lock().await;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..100u64 {
            let store = store.clone();
            tasks.spawn(async move {
                store.queue_push("c", i, &msg("t", b"x")).unwrap();
                store.flush().await.unwrap();
            });
        }
        while store.flushes.requested.load(Ordering::Acquire) < 100 {
            tokio::task::yield_now().await;
        }
        drop(held);
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    });
    assert_eq!(
        store.flushes_performed(),
        1,
        "one sled flush covers 100 overlapping calls"
    );
    drop(store);
    let store = reopen(dir.path());
    assert_eq!(store.queue_load("c").unwrap().len(), 100);
}

#[test]
fn flush_blocking_flushes_sled_even_when_the_event_log_cannot_sync() {
    let dir = tempfile::tempdir().unwrap();
    // No background flusher: what sled has flushed, `flush_blocking` flushed.
    let db = sled::Config::new()
        .path(dir.path().join("db"))
        .flush_every_ms(None)
        .open()
        .unwrap();
    let store = Store::from_db(db, Some(dir.path()), |db| {
        EventLog::open(db, &dir.path().join("event_log"))
    })
    .unwrap();
    store.event_log().append(b"x").unwrap();
    store.event_log().fail_syncs();
    store.put_session(&session("a")).unwrap();
    let flushed = store.flush_blocking();
    assert!(
        matches!(flushed, Err(StorageError::Io { .. })),
        "{flushed:?}"
    );
    assert_eq!(store.db.flush().unwrap(), 0, "sled was left unflushed");
}

#[test]
fn a_new_store_is_clean_and_a_reopened_one_unclean_unless_marked() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.last_stop(), LastStop::Clean, "a new store");
        assert_eq!(
            Store::open_temporary().unwrap().last_stop(),
            LastStop::Clean
        );
        store.flush_blocking().unwrap();
    }
    {
        let store = reopen(dir.path());
        assert_eq!(
            store.last_stop(),
            LastStop::Unclean,
            "dropped without the mark"
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(store.mark_clean_stop()).unwrap();
    }
    assert_eq!(reopen(dir.path()).last_stop(), LastStop::Clean);
    // The opening took the mark: the run after it did not stop in order.
    assert_eq!(reopen(dir.path()).last_stop(), LastStop::Unclean);
}

#[cfg(unix)]
#[test]
fn a_run_killed_after_a_clean_stop_is_unclean() {
    // The child stops one run in order, opens the store again (taking the mark) and is
    // killed: the mark must not come back with sled's recovery.
    let dir = crate::kill_9::write_then_kill_9(
        "store::tests::a_run_killed_after_a_clean_stop_is_unclean",
        |dir| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            {
                let store = Store::open(dir).unwrap();
                populate(&store, "a");
                rt.block_on(store.flush()).unwrap();
                rt.block_on(store.mark_clean_stop()).unwrap();
            }
            let store = reopen(dir);
            assert_eq!(store.last_stop(), LastStop::Clean);
            std::mem::forget(store);
        },
    );
    let store = reopen(dir.path());
    assert_eq!(store.last_stop(), LastStop::Unclean);
    assert_populated(&store, "a");
}
