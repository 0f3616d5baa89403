//! The registry's rules, and that applying is deterministic and snapshots round-trip.

use proptest::prelude::*;
use skein_proto::v1 as pb;
use skein_proto::v1::command::Command as C;

use super::*;

pub(super) fn register(
    client: &str,
    node: u64,
    epoch: u64,
    clean_start: bool,
    expiry: u32,
) -> pb::Command {
    pb::Command {
        command: Some(C::Register(pb::RegisterClient {
            client_id: client.into(),
            node_id: node,
            epoch,
            clean_start,
            session_expiry_secs: expiry,
            stamped_at_ms: 1_000 + epoch,
            commit_by_ms: 0,
            will: None,
            connection: None,
        })),
    }
}

/// A registration stamped at `at_ms` that its node waits for until `commit_by_ms`.
pub(super) fn register_due(
    client: &str,
    node: u64,
    epoch: u64,
    at_ms: u64,
    commit_by_ms: u64,
) -> pb::Command {
    pb::Command {
        command: Some(C::Register(pb::RegisterClient {
            client_id: client.into(),
            node_id: node,
            epoch,
            clean_start: false,
            session_expiry_secs: 3600,
            stamped_at_ms: at_ms,
            commit_by_ms,
            will: None,
            connection: None,
        })),
    }
}

pub(super) fn unregister(client: &str, node: u64, epoch: u64, session_ended: bool) -> pb::Command {
    pb::Command {
        command: Some(C::Unregister(pb::UnregisterClient {
            client_id: client.into(),
            node_id: node,
            epoch,
            session_ended,
            stamped_at_ms: 2_000 + epoch,
        })),
    }
}

pub(super) fn subscribe(
    client: &str,
    node: u64,
    epoch: u64,
    filter: &str,
    qos: u32,
) -> pb::Command {
    pb::Command {
        command: Some(C::Subscribe(pb::Subscribe {
            client_id: client.into(),
            node_id: node,
            epoch,
            filter: filter.into(),
            options: Some(pb::SubscriptionOptions {
                qos,
                ..Default::default()
            }),
            subscription_id: Some(7),
        })),
    }
}

fn unsubscribe(client: &str, node: u64, epoch: u64, filter: &str) -> pb::Command {
    pb::Command {
        command: Some(C::Unsubscribe(pb::Unsubscribe {
            client_id: client.into(),
            node_id: node,
            epoch,
            filter: filter.into(),
        })),
    }
}

pub(super) fn node_down(node: u64, at_ms: u64, adopters: Vec<u64>) -> pb::Command {
    node_down_heard(node, at_ms, adopters, 0)
}

/// A mark whose proposer leaves the node the clients it registered after
/// `registered_after_ms`.
pub(super) fn node_down_heard(
    node: u64,
    at_ms: u64,
    adopters: Vec<u64>,
    registered_after_ms: u64,
) -> pb::Command {
    pb::Command {
        command: Some(C::NodeDown(pb::NodeDown {
            node_id: node,
            stamped_at_ms: at_ms,
            adopters,
            registered_after_ms,
        })),
    }
}

pub(super) fn node_up(node: u64) -> pb::Command {
    pb::Command {
        command: Some(C::NodeUp(pb::NodeUp { node_id: node })),
    }
}

pub(super) fn apply(r: &mut Registry, c: pb::Command) -> (pb::command_result::Result, Vec<Change>) {
    let mut changes = Vec::new();
    let result = r.apply(&c, &mut changes).result.unwrap();
    (result, changes)
}

fn rejected(result: &pb::command_result::Result) -> Option<pb::RejectReason> {
    match result {
        pb::command_result::Result::Rejected(r) => Some(r.reason()),
        _ => None,
    }
}

pub(super) fn interest_of(r: &Registry, filter: &str) -> Vec<(u64, u32)> {
    r.interest()
        .get(filter)
        .map(|nodes| nodes.iter().map(|(n, c)| (*n, *c)).collect())
        .unwrap_or_default()
}

#[test]
fn a_registration_committed_past_its_deadline_leaves_a_newer_connection_alone() {
    let mut r = Registry::default();
    // Node 2 proposed at 1 000 ms and refused its CONNECT at 6 000 ms; the client then
    // connected on node 1 at 7 000 ms, which committed first.
    apply(&mut r, register_due("c", 1, 10, 7_000, 12_000));
    let (result, changes) = apply(&mut r, register_due("c", 2, 20, 1_000, 6_000));
    assert_eq!(rejected(&result), Some(pb::RejectReason::TooLate));
    assert!(changes.is_empty());
    assert_eq!(r.client("c").unwrap().owner, Owner { node: 1, epoch: 10 });
    assert!(r.client("c").unwrap().is_online());

    // Still within its deadline when the other connection registered: the Raft order
    // decides, the later entry takes the client over.
    let (result, _) = apply(&mut r, register_due("c", 3, 30, 6_500, 11_500));
    assert!(
        matches!(result, pb::command_result::Result::Registered(_)),
        "{result:?}"
    );
    assert_eq!(r.client("c").unwrap().owner, Owner { node: 3, epoch: 30 });
    // No deadline (0): always in time.
    let (result, _) = apply(&mut r, register_due("c", 2, 21, 1_000, 0));
    assert!(
        matches!(result, pb::command_result::Result::Registered(_)),
        "{result:?}"
    );
}

#[test]
fn a_registration_committed_after_the_log_passed_its_deadline_is_rejected() {
    let mut r = Registry::default();
    // The client's session is offline on node 1 (its connection stamped at 500 ms).
    apply(&mut r, register_due("c", 1, 10, 500, 5_500));
    apply(&mut r, unregister("c", 1, 10, false));
    assert_eq!(r.clock_ms(), 2_010);
    // Node 2 proposed at 1 000 ms and gave up at 6 000 ms; meanwhile the log applied a
    // command stamped at 6 500 ms (another client's registration, on node 3).
    apply(&mut r, register_due("other", 3, 30, 6_500, 11_500));
    assert_eq!(r.clock_ms(), 6_500);
    let (result, changes) = apply(&mut r, register_due("c", 2, 20, 1_000, 6_000));
    assert_eq!(rejected(&result), Some(pb::RejectReason::TooLate));
    assert!(changes.is_empty(), "{changes:?}");
    let entry = r.client("c").unwrap();
    assert_eq!(entry.owner, Owner { node: 1, epoch: 10 });
    assert!(!entry.is_online());
    // A new client id is refused alike: nobody waits for that connection.
    let (result, changes) = apply(&mut r, register_due("new", 2, 21, 1_000, 6_000));
    assert_eq!(rejected(&result), Some(pb::RejectReason::TooLate));
    assert!(changes.is_empty(), "{changes:?}");
    assert!(r.client("new").is_none());
    // A node-down mark's stamp moves the clock too.
    apply(&mut r, node_down(3, 9_000, vec![1, 2]));
    assert_eq!(r.clock_ms(), 9_000);
    let (result, _) = apply(&mut r, register_due("c", 2, 22, 3_500, 8_500));
    assert_eq!(rejected(&result), Some(pb::RejectReason::TooLate));
    // Due exactly now, or later: in time. A retried proposal of the owner is answered as
    // before, whatever the clock says.
    let (result, _) = apply(&mut r, register_due("c", 2, 23, 4_000, 9_000));
    assert!(
        matches!(result, pb::command_result::Result::Registered(_)),
        "{result:?}"
    );
    apply(&mut r, node_down(4, 20_000, vec![1, 2]));
    let (result, _) = apply(&mut r, register_due("c", 2, 23, 4_000, 9_000));
    assert!(
        matches!(result, pb::command_result::Result::Registered(_)),
        "{result:?}"
    );
    // The clock survives a snapshot: a member restored from it judges alike.
    let back = Registry::from_snapshot(&r.to_snapshot()).unwrap();
    assert_eq!(back.clock_ms(), 20_000);
    assert_eq!(back, r);
}

/// A proposal that reached the leader only after its deadline (held in a stalled
/// connection, or by a paused leader) is rejected by the leader's stamp on its entry, with
/// no later command applied before it: the live connection it would take over stays.
#[test]
fn a_registration_the_leader_received_after_its_deadline_is_rejected() {
    let mut r = Registry::default();
    apply(&mut r, register_due("c", 1, 10, 500, 5_500));
    // Node 2 proposed at 1 000 ms (due by 6 000 ms); the leader wrote it at 6 200 ms.
    r.observe_leader_stamp(6_200);
    let (result, changes) = apply(&mut r, register_due("c", 2, 20, 1_000, 6_000));
    assert_eq!(rejected(&result), Some(pb::RejectReason::TooLate));
    assert!(changes.is_empty(), "{changes:?}");
    let entry = r.client("c").unwrap();
    assert_eq!(entry.owner, Owner { node: 1, epoch: 10 });
    assert!(entry.is_online());
    // Written by the leader in time: taken. An unstamped entry (an older leader's) leaves
    // the clock alone.
    r.observe_leader_stamp(0);
    assert_eq!(r.clock_ms(), 6_200);
    let (result, _) = apply(&mut r, register_due("c", 2, 21, 2_000, 7_000));
    assert!(
        matches!(result, pb::command_result::Result::Registered(_)),
        "{result:?}"
    );
}

#[test]
fn a_takeover_moves_the_session_and_its_interest_to_the_new_node() {
    let mut r = Registry::default();
    apply(&mut r, register("c", 1, 10, false, 3600));
    apply(&mut r, subscribe("c", 1, 10, "a/+", 1));
    assert_eq!(interest_of(&r, "a/+"), [(1, 1)]);

    let (result, changes) = apply(&mut r, register("c", 2, 20, false, 3600));
    let pb::command_result::Result::Registered(reg) = result else {
        panic!("{result:?}")
    };
    assert!(reg.session_present);
    assert_eq!(
        reg.previous,
        Some(pb::ClientOwner {
            node_id: 1,
            epoch: 10,
            online: true
        })
    );
    assert!(
        matches!(&changes[0], Change::Registered { previous: Some(p), .. } if p.owner.node == 1)
    );
    assert_eq!(interest_of(&r, "a/+"), [(2, 1)]);
    assert_eq!(r.client("c").unwrap().subscriptions.len(), 1);

    // The old connection's late commands do not touch the new owner's state.
    for late in [
        unregister("c", 1, 10, true),
        subscribe("c", 1, 10, "b", 0),
        unsubscribe("c", 1, 10, "a/+"),
    ] {
        let (result, changes) = apply(&mut r, late);
        assert_eq!(rejected(&result), Some(pb::RejectReason::NotOwner));
        assert!(changes.is_empty());
    }
    assert_eq!(r.client("c").unwrap().owner, Owner { node: 2, epoch: 20 });
}

#[test]
fn clean_start_drops_the_old_subscriptions_and_reports_no_session() {
    let mut r = Registry::default();
    apply(&mut r, register("c", 1, 1, false, 60));
    apply(&mut r, subscribe("c", 1, 1, "x", 0));
    let (result, _) = apply(&mut r, register("c", 1, 2, true, 60));
    let pb::command_result::Result::Registered(reg) = result else {
        panic!()
    };
    assert!(!reg.session_present);
    assert!(r.client("c").unwrap().subscriptions.is_empty());
    assert!(r.interest().is_empty());
}

#[test]
fn unregister_keeps_a_persistent_session_offline_and_ends_the_others() {
    let mut r = Registry::default();
    apply(&mut r, register("keep", 1, 1, false, 60));
    apply(&mut r, subscribe("keep", 1, 1, "k", 1));
    apply(&mut r, register("gone", 1, 2, false, 0));
    apply(&mut r, subscribe("gone", 1, 2, "g", 1));

    apply(&mut r, unregister("keep", 1, 1, false));
    let kept = r.client("keep").unwrap();
    assert_eq!(kept.offline_since_ms(), Some(2_001));
    assert_eq!(
        interest_of(&r, "k"),
        [(1, 1)],
        "offline sessions still receive"
    );

    // Expiry 0 ends the session even when the proposer did not say so.
    let (result, _) = apply(&mut r, unregister("gone", 1, 2, false));
    assert!(matches!(
        result,
        pb::command_result::Result::Unregistered(pb::Unregistered {
            session_kept: false
        })
    ));
    assert!(r.client("gone").is_none());
    assert!(interest_of(&r, "g").is_empty());

    // Reconnecting finds the offline session.
    let (result, _) = apply(&mut r, register("keep", 3, 5, false, 60));
    let pb::command_result::Result::Registered(reg) = result else {
        panic!()
    };
    assert!(reg.session_present);
    assert!(!reg.previous.unwrap().online);
    assert_eq!(interest_of(&r, "k"), [(3, 1)]);
}

#[test]
fn a_retried_registration_changes_nothing() {
    let mut r = Registry::default();
    apply(&mut r, register("c", 1, 1, false, 60));
    apply(&mut r, subscribe("c", 1, 1, "x", 0));
    let before = r.clone();
    let (result, changes) = apply(&mut r, register("c", 1, 1, false, 60));
    assert!(matches!(
        result,
        pb::command_result::Result::Registered(pb::Registered { previous: None, .. })
    ));
    assert!(changes.is_empty());
    assert_eq!(r, before);
}

#[test]
fn malformed_commands_are_rejected_not_applied() {
    let mut r = Registry::default();
    apply(&mut r, register("c", 1, 1, false, 60));
    let before = r.clone();
    for bad in [
        pb::Command { command: None },
        register("", 1, 2, false, 0),
        subscribe("c", 1, 1, "", 0),
        subscribe("c", 1, 1, "x", 3),
        unsubscribe("c", 1, 1, ""),
        pb::Command {
            command: Some(C::Subscribe(pb::Subscribe {
                client_id: "c".into(),
                node_id: 1,
                epoch: 1,
                filter: "x".into(),
                options: None,
                subscription_id: None,
            })),
        },
        pb::Command {
            command: Some(C::Subscribe(pb::Subscribe {
                client_id: "c".into(),
                node_id: 1,
                epoch: 1,
                filter: "x".into(),
                options: Some(pb::SubscriptionOptions::default()),
                subscription_id: Some(0),
            })),
        },
    ] {
        let (result, changes) = apply(&mut r, bad.clone());
        assert_eq!(
            rejected(&result),
            Some(pb::RejectReason::Invalid),
            "{bad:?}"
        );
        assert!(changes.is_empty());
    }
    assert_eq!(r, before);
}

#[test]
fn snapshots_round_trip_and_refuse_unknown_formats() {
    let mut r = Registry::default();
    apply(&mut r, register("a", 1, 1, false, 60));
    apply(&mut r, subscribe("a", 1, 1, "t/#", 2));
    apply(&mut r, register("b", 2, 1, true, 0));
    apply(&mut r, subscribe("b", 2, 1, "t/#", 0));
    apply(&mut r, unregister("a", 1, 1, false));
    let bytes = r.to_snapshot();
    assert_eq!(bytes[0], SNAPSHOT_FORMAT);
    let back = Registry::from_snapshot(&bytes).unwrap();
    assert_eq!(back, r, "the interest index is rebuilt too");

    let mut newer = bytes.clone();
    newer[0] = 9;
    let e = Registry::from_snapshot(&newer).unwrap_err();
    assert!(e.to_string().contains("format 9"), "{e}");
    assert!(Registry::from_snapshot(&[]).is_err());
    // Cut inside the last client record (the log's clock, 2 001 ms, is the last 3 bytes).
    assert_eq!(back.clock_ms(), 2_001);
    assert!(Registry::from_snapshot(&bytes[..bytes.len() - 5]).is_err());
}

/// A snapshot written by a build before the connections' descriptions (no
/// `ClientRecord.connection`) reads as one whose clients have none; everything else is as
/// it was.
#[test]
fn a_snapshot_without_connection_descriptions_reads_as_having_none() {
    use prost::Message;
    let mut r = Registry::default();
    apply(
        &mut r,
        super::node_down_tests::with_connection(register("a", 1, 1, false, 60), "u-a"),
    );
    apply(&mut r, subscribe("a", 1, 1, "t/#", 1));
    apply(&mut r, register("b", 2, 1, true, 0));
    let bytes = r.to_snapshot();
    let mut older = pb::RegistrySnapshot::decode(&bytes[1..]).unwrap();
    assert!(older.clients[0].connection.is_some());
    for record in &mut older.clients {
        record.connection = None;
    }
    let mut old_bytes = vec![SNAPSHOT_FORMAT];
    older.encode(&mut old_bytes).unwrap();
    let back = Registry::from_snapshot(&old_bytes).unwrap();
    assert!(back.connection("a").is_none());
    assert_eq!(back.client("a"), r.client("a"));
    assert_eq!(back.client("b"), r.client("b"));
    assert_eq!(back.interest(), r.interest());
    assert_eq!(back.clock_ms(), r.clock_ms());
    // The same registry without the description: equal, down to the bytes.
    let mut without = r.clone();
    without.connections.clear();
    assert_eq!(back, without);
    assert_eq!(back.to_snapshot(), old_bytes);
}

fn command_strategy() -> impl Strategy<Value = pb::Command> {
    let client = prop::sample::select(vec!["a", "b", "c", "d"]);
    let node = 1u64..4;
    let epoch = 1u64..5;
    let filter = prop::sample::select(vec!["x", "x/+", "#", "$share/g/x"]);
    prop_oneof![
        (
            client.clone(),
            node.clone(),
            epoch.clone(),
            any::<bool>(),
            prop::sample::select(vec![0u32, 60])
        )
            .prop_map(|(c, n, e, clean, exp)| register(c, n, e, clean, exp)),
        // Registrations that keep what their events say (of builds since).
        (
            client.clone(),
            node.clone(),
            epoch.clone(),
            prop::sample::select(vec!["u1", "u2"])
        )
            .prop_map(|(c, n, e, u)| super::node_down_tests::with_connection(
                register(c, n, e, false, 60),
                u
            )),
        // Registrations with deadlines, some of which the clock has passed.
        (
            client.clone(),
            node.clone(),
            epoch.clone(),
            0u64..10_000,
            prop::sample::select(vec![0u64, 1_000, 5_000])
        )
            .prop_map(|(c, n, e, at, wait)| register_due(
                c,
                n,
                e,
                at,
                if wait == 0 { 0 } else { at + wait }
            )),
        (client.clone(), node.clone(), epoch.clone(), any::<bool>())
            .prop_map(|(c, n, e, end)| unregister(c, n, e, end)),
        (
            client.clone(),
            node.clone(),
            epoch.clone(),
            filter.clone(),
            0u32..4
        )
            .prop_map(|(c, n, e, f, q)| subscribe(c, n, e, f, q)),
        (client, node.clone(), epoch, filter).prop_map(|(c, n, e, f)| unsubscribe(c, n, e, f)),
        (node.clone(), prop::collection::vec(1u64..5, 0..4))
            .prop_map(|(n, adopters)| node_down(n, 5_000, adopters)),
        (node.clone(), 0u64..12_000, 0u64..12_000).prop_map(|(n, at, heard)| node_down_heard(
            n,
            at,
            vec![1, 2, 3],
            heard
        )),
        node.prop_map(node_up),
        Just(pb::Command { command: None }),
    ]
}

proptest! {
    /// Two machines applying the same commands end in identical states, results, change
    /// lists and snapshot bytes; the interest index always equals one rebuilt from scratch;
    /// a snapshot restores the same registry.
    #[test]
    fn apply_is_deterministic(commands in prop::collection::vec(command_strategy(), 0..120)) {
        let (mut one, mut two) = (Registry::default(), Registry::default());
        for c in &commands {
            let (mut c1, mut c2) = (Vec::new(), Vec::new());
            let r1 = one.apply(c, &mut c1);
            let r2 = two.apply(c, &mut c2);
            prop_assert_eq!(r1, r2);
            prop_assert_eq!(c1, c2);
            let mut rebuilt = one.clone();
            rebuilt.rebuild_interest();
            prop_assert_eq!(&rebuilt.interest, &one.interest);
        }
        prop_assert_eq!(one.to_snapshot(), two.to_snapshot());
        prop_assert_eq!(Registry::from_snapshot(&one.to_snapshot()).unwrap(), one);
    }
}

#[test]
fn taking_over_a_session_with_expiry_0_finds_no_session() {
    let mut r = Registry::default();
    apply(&mut r, register("c", 1, 1, false, 0));
    apply(&mut r, subscribe("c", 1, 1, "x", 0));
    let (result, _) = apply(&mut r, register("c", 2, 2, false, 60));
    let pb::command_result::Result::Registered(reg) = result else {
        panic!("{result:?}")
    };
    assert!(!reg.session_present);
    assert_eq!(reg.previous.map(|p| p.node_id), Some(1));
    assert!(r.client("c").unwrap().subscriptions.is_empty());
    assert!(r.interest().is_empty());
    let after: Vec<_> = r
        .clients_after(Some("b"))
        .map(|(id, _)| id.to_string())
        .collect();
    assert_eq!(after, ["c"]);
    assert_eq!(r.clients_after(Some("c")).count(), 0);
}

#[test]
fn a_registration_keys_its_entry_by_the_offered_string() {
    let ids = std::sync::Arc::new(ClientIds::default());
    let mut r = Registry::default();
    let mut changes = Vec::new();
    let broker_copy = ArcStr::from("c");
    let offer = ids.offer(&broker_copy);
    r.apply_sharing(&register("c", 1, 1, true, 0), &ids, &mut changes);
    let (key, _) = r.clients().next().unwrap();
    assert!(ArcStr::ptr_eq(key, &broker_copy));
    match &changes[0] {
        Change::Registered { client_id, .. } => assert!(ArcStr::ptr_eq(client_id, &broker_copy)),
        other => panic!("{other:?}"),
    }
    // A takeover by a connection elsewhere (nothing offered): the entry keeps its key.
    drop(offer);
    r.apply_sharing(&register("c", 2, 5, false, 60), &ids, &mut changes);
    let (key, entry) = r.clients().next().unwrap();
    assert!(ArcStr::ptr_eq(key, &broker_copy));
    assert_eq!(entry.owner, Owner { node: 2, epoch: 5 });
    // The same log applied without offers gives an equal registry.
    let mut plain = Registry::default();
    plain.apply(&register("c", 1, 1, true, 0), &mut Vec::new());
    plain.apply(&register("c", 2, 5, false, 60), &mut Vec::new());
    assert_eq!(plain, r);
    assert_eq!(plain.to_snapshot(), r.to_snapshot());
}
