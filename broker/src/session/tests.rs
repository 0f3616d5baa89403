use super::*;
use bytes::Bytes;

#[test]
fn an_offline_session_is_described_by_its_last_connection() {
    let session = Session::new(ClientId::new("c"));
    let last = Arc::new(ClientInfo {
        username: Some("u".into()),
        ..ClientInfo::unknown(ClientId::new("c"), ProtocolVersion::V5)
    });
    session.state().last_info = Some(last.clone());
    let (info, online) = session.event_client();
    assert!(!online);
    assert!(Arc::ptr_eq(&info, &last));
}

/// A session taken over from node 3, whose hand-over named node 1 as an earlier
/// holder: a publish redirected at node 1's mark is this session's while it may have
/// been routed before the moves applied, as a possible redelivery (the client may
/// have had it directly); not long after, and never from a node never named.
#[test]
fn a_session_comes_from_the_earlier_holder_its_hand_over_named() {
    let (earlier, holder, other) = (
        skein_seam::NodeId(1),
        skein_seam::NodeId(3),
        skein_seam::NodeId(4),
    );
    let mut st = SessionState::new();
    st.note_arrival_from(holder, 50_000);
    assert!(!st.came_from(earlier, 49_000));
    st.note_earlier_from(earlier, 52_000);
    st.note_earlier_from(earlier, 53_000);
    assert_eq!(
        st.earlier_from,
        Some((earlier, 52_000)),
        "the first note is kept"
    );
    assert!(st.came_from(earlier, 49_000));
    assert!(st.came_from_by_takeover_only(earlier, 49_000));
    assert!(st.came_from(holder, 49_000), "the holder's note stays");
    assert!(!st.came_from(earlier, 52_000 + STALE_ROUTE_MS));
    assert!(!st.came_from(other, 49_000));
}

fn delivery(qos: QoS) -> Delivery {
    Delivery {
        message: Arc::new(Message {
            topic: Arc::from("t"),
            payload: Bytes::from_static(b"p"),
            qos,
            retain: false,
            properties: Default::default(),
            received_at_ms: 0,
            publisher: None,
            publisher_username: None,
            publish_id: None,
        }),
        qos,
        retain: false,
        subscription_ids: vec![],
    }
}

/// A forward queued for a session another node took over (for it to fetch) may reach
/// the client there first: a possible redelivery. One queued for a session prepared
/// here for a takeover is not.
#[test]
fn forwards_queued_for_a_session_given_away_are_possible_redeliveries() {
    let store = Store::open_temporary().unwrap();
    let given = Session::new(ClientId::new("given"));
    given.set_moving(true);
    let coming = Session::new(ClientId::new("coming"));
    coming.set_moving(true);
    coming.state().reserved_seqs = Some(1 << 32);
    for s in [&given, &coming] {
        s.state().expiry_interval = 60;
        let outcome = s.enqueue_with(
            delivery(QoS::AtLeastOnce),
            10,
            &store,
            0,
            None,
            MayHave::default(),
        );
        assert_eq!(outcome, EnqueueOutcome::Stored { online: false });
    }
    let marked = |s: &Session| s.state().redeliver.as_ref().is_some_and(|r| !r.is_empty());
    assert!(marked(&given));
    assert!(!marked(&coming));
}

/// Forwards queued while a session is prepared for a CONNECT from another node carry
/// their routed index; once the registration's index is known, those routed below it
/// (routed while the other node held the session) go out with DUP, the others as new.
#[test]
fn forwards_queued_while_prepared_routed_before_the_registration_go_out_as_possible_redeliveries() {
    let store = Store::open_temporary().unwrap();
    let s = Session::new(ClientId::new("prepared"));
    s.set_moving(true);
    s.state().expiry_interval = 60;
    s.state().reserved_seqs = Some(1);
    let mut seqs = Vec::new();
    for routed in [40, 49, 50, 0] {
        let may_have = MayHave {
            routed_index: routed,
            ..MayHave::default()
        };
        let outcome = s.enqueue_with(delivery(QoS::AtLeastOnce), 10, &store, 0, None, may_have);
        assert_eq!(outcome, EnqueueOutcome::Stored { online: false });
        seqs.push(s.state().queue.back().unwrap().seq);
    }
    // Not yet: the registration's index is unknown while the CONNECT waits.
    assert!(s.state().redeliver.is_none());
    let mut st = s.state();
    st.reserved_seqs = None;
    st.came_at(50);
    let marked: Vec<u64> = st.redeliver.as_ref().unwrap().iter().copied().collect();
    assert_eq!(marked, vec![seqs[0], seqs[1]]);
    assert!(st.routed_while_prepared.is_none());
    assert_eq!(st.came_at_index, Some(50));
}

#[test]
fn offline_queue_is_bounded_and_persisted() {
    let store = Store::open_temporary().unwrap();
    let s = Session::new(ClientId::new("c"));
    s.state().expiry_interval = 60;
    assert_eq!(
        s.enqueue(delivery(QoS::AtMostOnce), 2, &store, 0),
        EnqueueOutcome::Dropped(DropReason::Qos0Offline)
    );
    assert_eq!(
        s.enqueue(delivery(QoS::AtLeastOnce), 2, &store, 0),
        EnqueueOutcome::Stored { online: false }
    );
    assert_eq!(
        s.enqueue(delivery(QoS::ExactlyOnce), 2, &store, 0),
        EnqueueOutcome::Stored { online: false }
    );
    assert_eq!(
        s.enqueue(delivery(QoS::AtLeastOnce), 2, &store, 0),
        EnqueueOutcome::Dropped(DropReason::QueueFull)
    );
    assert_eq!(store.queue_load("c").unwrap().len(), 2);
}

#[test]
fn held_wake_ups_wake_each_connection_once_when_released() {
    let store = Store::open_temporary().unwrap();
    let (a, b) = (
        Session::new(ClientId::new("a")),
        Session::new(ClientId::new("b")),
    );
    let kicks = [KickSignal::new(), KickSignal::new()];
    for (s, kick) in [&a, &b].into_iter().zip(&kicks) {
        s.state().attachment = Some(Attachment {
            connection_id: 1,
            epoch: 0,
            kick: kick.clone(),
        });
    }
    let mut held = HeldWakes::default();
    for _ in 0..3 {
        for s in [&a, &b] {
            let outcome =
                s.enqueue_holding_wake(delivery(QoS::AtMostOnce), 10, &store, 0, Some(&mut held));
            assert_eq!(outcome, EnqueueOutcome::Queued);
        }
    }
    assert_eq!(
        held.sessions.len(),
        2,
        "one entry per session, not per message"
    );
    assert!(
        kicks.iter().all(|k| !k.needs_attention()),
        "nobody woken yet"
    );
    held.release();
    assert!(kicks.iter().all(|k| k.take_pending()));
    // Released: the next message wakes again, and dropping the holder releases too.
    {
        let mut held = HeldWakes::default();
        a.enqueue_holding_wake(delivery(QoS::AtMostOnce), 10, &store, 0, Some(&mut held));
        assert!(!kicks[0].needs_attention());
    }
    assert!(kicks[0].take_pending());
    // Without a holder (the plain `enqueue`) the wake-up is immediate, also while
    // another batch holds the session's.
    b.enqueue(delivery(QoS::AtMostOnce), 10, &store, 0);
    assert!(kicks[1].take_pending());
    let mut other = HeldWakes::default();
    a.enqueue_holding_wake(delivery(QoS::AtMostOnce), 10, &store, 0, Some(&mut other));
    a.enqueue(delivery(QoS::AtMostOnce), 10, &store, 0);
    assert!(kicks[0].take_pending());
    // A second holder does not list a session the first one holds; the first's
    // release wakes it, and a clean start in between keeps the session listed once.
    let mut second = HeldWakes::default();
    a.enqueue_holding_wake(delivery(QoS::AtMostOnce), 10, &store, 0, Some(&mut second));
    assert!(second.sessions.is_empty());
    a.state().clear();
    a.enqueue_holding_wake(delivery(QoS::AtMostOnce), 10, &store, 0, Some(&mut second));
    assert!(second.sessions.is_empty());
    drop(other);
    assert!(kicks[0].take_pending());
}

#[tokio::test]
async fn a_kick_keeps_its_first_reason_and_fails_once_the_connection_is_gone() {
    let signal = KickSignal::new();
    let held = signal.clone();
    assert_eq!(held.try_recv(), None);
    assert!(signal.send(Kick::Administrative));
    assert!(signal.send(Kick::TakenOver));
    assert_eq!(held.recv().await, Kick::Administrative);
    drop(held);
    assert!(!signal.send(Kick::TakenOver));
}

#[tokio::test]
async fn a_wake_up_is_kept_until_taken_and_wakes_a_waiter() {
    let signal = KickSignal::new();
    assert!(!signal.needs_attention());
    // Sent while nobody waits: kept, both as the flag a parking connection checks and
    // as the permit its idle wait consumes.
    signal.wake();
    signal.wake();
    assert!(signal.needs_attention());
    tokio::time::timeout(std::time::Duration::from_secs(5), signal.notified())
        .await
        .expect("the stored wake-up completes the wait");
    assert_eq!(signal.try_recv(), None, "a wake-up is not a kick");
    assert!(signal.take_pending());
    assert!(!signal.take_pending(), "taken once");
    assert!(!signal.needs_attention());
    // A kick needs attention even after its wake-up was spent.
    let held = signal.clone();
    assert!(signal.send(Kick::ShuttingDown));
    assert!(held.needs_attention());
    assert_eq!(held.try_recv(), Some(Kick::ShuttingDown));
    // Without a parker nothing can resume it, so it must not park.
    assert!(!held.can_park());
}

#[test]
fn a_large_window_tracks_ids_in_a_bitmap_consistently() {
    let mut st = SessionState::new();
    for _ in 0..100 {
        let id = st.allocate_packet_id().unwrap();
        st.push_inflight(Inflight {
            seq: id as u64,
            packet_id: id,
            delivery: delivery(QoS::AtLeastOnce),
            state: InflightState::Sent,
        });
    }
    assert!(st.ids_in_use.is_some());
    // Free id 50, then wrap around: the only free id below 101 is 50.
    let pos = st.inflight.iter().position(|f| f.packet_id == 50).unwrap();
    st.remove_inflight(pos);
    st.next_packet_id = 1;
    assert_eq!(st.allocate_packet_id(), Some(50));
    assert_eq!(st.allocate_packet_id(), Some(51 + 50));
    while !st.inflight.is_empty() {
        st.remove_inflight(0);
    }
    assert!(st.ids_in_use.is_none());
}

#[test]
fn packet_ids_skip_those_in_flight_and_wrap() {
    let mut st = SessionState::new();
    st.next_packet_id = u16::MAX;
    st.push_inflight(Inflight {
        seq: 1,
        packet_id: 1,
        delivery: delivery(QoS::AtLeastOnce),
        state: InflightState::Sent,
    });
    assert_eq!(st.allocate_packet_id(), Some(u16::MAX));
    assert_eq!(st.allocate_packet_id(), Some(2));
}
