//! NodeDown / NodeUp: who goes offline, what ends, who adopts what, and that the marks
//! survive a snapshot.

use skein_proto::v1 as pb;

use super::node_down::pick;
use super::tests::{
    apply, interest_of, node_down, node_down_heard, node_up, register, register_due, subscribe,
    unregister,
};
use super::*;

fn marked(result: &pb::command_result::Result) -> (bool, u32, u32) {
    match result {
        pb::command_result::Result::NodeMarked(m) => (m.changed, m.adopted, m.ended),
        other => panic!("{other:?}"),
    }
}

fn down_clients(changes: &[Change]) -> Vec<&DownClient> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::NodeDownClient(d) => Some(&**d),
            _ => None,
        })
        .collect()
}

/// Node 3 holds a persistent subscriber (online), a clean client (expiry 0), and an
/// offline persistent session; node 1 holds one client of its own.
fn three_nodes() -> Registry {
    let mut r = Registry::default();
    apply(&mut r, register("sub", 3, 10, false, 3600));
    apply(&mut r, subscribe("sub", 3, 10, "t/#", 1));
    apply(&mut r, register("clean", 3, 11, true, 0));
    apply(&mut r, subscribe("clean", 3, 11, "t/#", 0));
    apply(&mut r, register("away", 3, 12, false, 60));
    apply(&mut r, subscribe("away", 3, 12, "x", 1));
    apply(&mut r, unregister("away", 3, 12, false));
    apply(&mut r, register("mine", 1, 13, true, 0));
    r
}

#[test]
fn a_down_nodes_sessions_are_adopted_or_end_and_its_interest_moves() {
    let mut r = three_nodes();
    let (result, changes) = apply(&mut r, node_down(3, 9_000, vec![1, 2, 3]));
    assert_eq!(marked(&result), (true, 2, 1));
    assert!(r.down_nodes().contains(&3));
    let down = down_clients(&changes);
    let ids: Vec<&str> = down.iter().map(|d| d.client_id.as_str()).collect();
    assert_eq!(ids, ["away", "clean", "sub"]);
    // The clean session ended; its event comes from the node the pick names.
    assert!(r.client("clean").is_none());
    assert!(down[1].adopter.is_none() && down[1].was_online);
    assert_eq!(down[1].announcer, pick(&[1, 2], "clean").unwrap());
    // The persistent ones moved to a live node, offline, under a later epoch.
    for (id, d) in [("away", down[0]), ("sub", down[2])] {
        let entry = r.client(id).unwrap();
        let adopter = pick(&[1, 2], id).unwrap();
        assert_eq!(d.adopter, Some(entry.owner));
        assert_eq!(entry.owner.node, adopter);
        assert_eq!(d.announcer, adopter);
        assert!(entry.owner.epoch > d.previous.epoch);
        assert!(!entry.is_online());
    }
    assert!(!down[0].was_online, "away was offline already");
    assert_eq!(r.client("away").unwrap().offline_since_ms(), Some(2_012));
    assert_eq!(r.client("sub").unwrap().offline_since_ms(), Some(9_000));
    assert_eq!(interest_of(&r, "t/#"), [(pick(&[1, 2], "sub").unwrap(), 1)]);
    assert_eq!(interest_of(&r, "x"), [(pick(&[1, 2], "away").unwrap(), 1)]);
    // Node 1's own client is untouched.
    assert!(r.client("mine").unwrap().is_online());
}

#[test]
fn a_node_is_marked_down_once_and_up_again_by_node_up_only() {
    let mut r = three_nodes();
    apply(&mut r, node_down(3, 9_000, vec![1, 2]));
    let (again, changes) = apply(&mut r, node_down(3, 9_500, vec![1, 2]));
    assert_eq!(marked(&again), (false, 0, 0));
    assert!(changes.is_empty());
    let (up, changes) = apply(&mut r, node_up(3));
    assert_eq!(marked(&up), (true, 0, 0));
    assert_eq!(
        changes,
        [Change::NodeMarked {
            node: 3,
            down: false,
            at_ms: 0
        }]
    );
    apply(&mut r, node_down(2, 10_000, vec![1, 2, 3]));
    assert!(r.down_nodes().contains(&2));
    // A registration by a node marked down is rejected and leaves the mark (only NodeUp
    // lifts it): its proposal came through a partition that may hold the answer back, and
    // the client's connection elsewhere must not be taken over for a CONNECT its node
    // refuses.
    apply(&mut r, register("new", 1, 19, false, 60));
    let (result, changes) = apply(&mut r, register("new", 2, 20, true, 0));
    match result {
        pb::command_result::Result::Rejected(r) => {
            assert_eq!(r.reason(), pb::RejectReason::NodeDown, "{}", r.detail)
        }
        other => panic!("a registration by a node marked down: {other:?}"),
    }
    assert!(changes.is_empty(), "{changes:?}");
    assert!(r.down_nodes().contains(&2));
    assert_eq!(r.client("new").unwrap().owner, Owner { node: 1, epoch: 19 });
    let (again, _) = apply(&mut r, node_down(2, 11_000, vec![1, 3]));
    assert_eq!(marked(&again), (false, 0, 0));
    // Marked up, it registers again.
    apply(&mut r, node_up(2));
    let (result, _) = apply(&mut r, register("new", 2, 21, true, 0));
    assert!(
        matches!(result, pb::command_result::Result::Registered(_)),
        "{result:?}"
    );
    assert_eq!(r.client("new").unwrap().owner, Owner { node: 2, epoch: 21 });
}

#[test]
fn nodes_marked_down_and_the_dead_node_itself_never_adopt() {
    let mut r = Registry::default();
    apply(&mut r, register("a", 2, 1, false, 60));
    apply(&mut r, register("b", 3, 2, false, 60));
    apply(&mut r, node_down(2, 5_000, vec![1, 2, 3]));
    // Node 2 is down: node 3's sessions can only go to node 1.
    apply(&mut r, node_down(3, 6_000, vec![3, 2, 1, 1]));
    assert_eq!(r.client("b").unwrap().owner.node, 1);
    // Node 1 had a's session from node 2's adoption (or 3, which then passed it on).
    assert_eq!(r.client("a").unwrap().owner.node, 1);
    // No candidate at all: the session stays, offline, on the down node.
    let mut lone = Registry::default();
    apply(&mut lone, register("c", 1, 1, false, 60));
    let (result, changes) = apply(&mut lone, node_down(1, 7_000, vec![1]));
    assert_eq!(marked(&result), (true, 0, 0));
    let entry = lone.client("c").unwrap();
    assert_eq!(entry.owner, Owner { node: 1, epoch: 1 });
    assert!(!entry.is_online());
    assert!(down_clients(&changes)[0].adopter.is_none());
}

#[test]
fn the_pick_is_stable_and_spreads() {
    // Fixed values: a change of the hash would split a mixed-version cluster's picks.
    assert_eq!(pick(&[], "x"), None);
    assert_eq!(pick(&[7], "anything"), Some(7));
    let picks: Vec<u64> = (0..200)
        .map(|i| pick(&[1, 2, 3], &format!("client-{i}")).unwrap())
        .collect();
    for node in [1, 2, 3] {
        let n = picks.iter().filter(|p| **p == node).count();
        assert!(n > 40, "node {node} adopts {n} of 200");
    }
    assert_eq!(pick(&[1, 2, 3], "client-0"), pick(&[1, 2, 3], "client-0"));
}

#[test]
fn marks_survive_a_snapshot() {
    let mut r = three_nodes();
    apply(&mut r, node_down(3, 9_000, vec![1, 2]));
    let bytes = r.to_snapshot();
    let restored = Registry::from_snapshot(&bytes).unwrap();
    assert_eq!(restored, r);
    assert!(restored.down_nodes().contains(&3));
    assert_eq!(restored.last_marked_down_ms(3), Some(9_000));
    // Up again: the mark leaves the snapshot too, its stamp stays (a member that missed
    // it learns from it how the connections it lost ended).
    apply(&mut r, node_up(3));
    let restored = Registry::from_snapshot(&r.to_snapshot()).unwrap();
    assert!(restored.down_nodes().is_empty());
    assert_eq!(restored.last_marked_down_ms(3), Some(9_000));
    assert_eq!(restored.last_marked_down_ms(2), None);
    // A mark while marked already keeps the first stamp; the next one replaces it.
    apply(&mut r, node_down(3, 12_000, vec![1, 2]));
    apply(&mut r, node_down(3, 13_000, vec![1, 2]));
    assert_eq!(r.last_marked_down_ms(3), Some(12_000));
}

fn with_will(mut command: pb::Command, topic: &str) -> pb::Command {
    if let Some(pb::command::Command::Register(r)) = &mut command.command {
        r.will = Some(pb::RegisteredWill {
            topic: topic.into(),
            payload: b"gone".to_vec(),
            qos: 1,
            delay_secs: 5,
            ..Default::default()
        });
    }
    command
}

#[test]
fn an_online_clients_will_goes_to_its_adopter_and_only_then() {
    let mut r = Registry::default();
    apply(&mut r, with_will(register("on", 3, 1, false, 60), "w/on"));
    apply(&mut r, with_will(register("off", 3, 2, false, 60), "w/off"));
    apply(&mut r, with_will(register("bye", 3, 3, true, 0), "w/bye"));
    // A connection that ended took its will with it (its node saw to it).
    apply(&mut r, unregister("off", 3, 2, false));
    assert!(r.will("off").is_none());
    assert_eq!(r.will("on").map(|w| w.topic.as_str()), Some("w/on"));
    // Wills travel in snapshots.
    assert_eq!(Registry::from_snapshot(&r.to_snapshot()).unwrap(), r);
    let (_, changes) = apply(&mut r, node_down(3, 9_000, vec![1, 2]));
    let wills: Vec<(&str, Option<&str>)> = down_clients(&changes)
        .iter()
        .map(|d| {
            (
                d.client_id.as_str(),
                d.will.as_ref().map(|w| w.topic.as_str()),
            )
        })
        .collect();
    assert_eq!(
        wills,
        [("bye", Some("w/bye")), ("off", None), ("on", Some("w/on"))]
    );
    // Handed out once: the registry keeps none of them.
    assert!(r.will("on").is_none() && r.will("bye").is_none());
    // A newer registration replaces the will, or drops it when it has none.
    apply(&mut r, with_will(register("x", 1, 5, true, 0), "w/x1"));
    apply(&mut r, register("x", 2, 6, true, 0));
    assert!(r.will("x").is_none());
}

pub(super) fn with_connection(mut command: pb::Command, username: &str) -> pb::Command {
    if let Some(pb::command::Command::Register(r)) = &mut command.command {
        r.connection = Some(pb::RegisteredConnection {
            username: Some(username.into()),
            peer: "10.0.0.9:5768".into(),
            sockname: "10.0.0.3:1883".into(),
            protocol_level: 5,
            websocket: false,
            keepalive: 30,
        });
    }
    command
}

/// What the announcer's event needs of a connection is kept while it is online, travels in
/// snapshots, goes with the node-down to the announcer once, and only for online clients.
#[test]
fn an_online_clients_connection_goes_to_its_announcer_and_only_then() {
    let mut r = Registry::default();
    apply(
        &mut r,
        with_connection(register("on", 3, 1, false, 60), "u-on"),
    );
    apply(
        &mut r,
        with_connection(register("off", 3, 2, false, 60), "u-off"),
    );
    apply(
        &mut r,
        with_connection(register("bye", 3, 3, true, 0), "u-bye"),
    );
    // A registration of an older build carries none.
    apply(&mut r, register("old", 3, 4, false, 60));
    apply(&mut r, unregister("off", 3, 2, false));
    assert!(r.connection("off").is_none() && r.connection("old").is_none());
    let on = r.connection("on").unwrap();
    assert_eq!(on.username.as_deref(), Some("u-on"));
    assert_eq!((on.peer.as_str(), on.protocol_level), ("10.0.0.9:5768", 5));
    assert_eq!(Registry::from_snapshot(&r.to_snapshot()).unwrap(), r);
    let (_, changes) = apply(&mut r, node_down(3, 9_000, vec![1, 2]));
    let connections: Vec<(&str, bool, Option<&str>)> = down_clients(&changes)
        .iter()
        .map(|d| {
            (
                d.client_id.as_str(),
                d.was_online,
                d.connection.as_ref().and_then(|c| c.username.as_deref()),
            )
        })
        .collect();
    assert_eq!(
        connections,
        [
            ("bye", true, Some("u-bye")),
            ("off", false, None),
            ("old", true, None),
            ("on", true, Some("u-on")),
        ]
    );
    assert!(r.connection("on").is_none() && r.connection("bye").is_none());
    // A newer registration replaces it, or drops it when it has none.
    apply(&mut r, with_connection(register("x", 1, 5, true, 0), "u-x"));
    apply(&mut r, register("x", 2, 6, true, 0));
    assert!(r.connection("x").is_none());
}

/// Node 3 was paused; on resuming it read a CONNECT that waited for it and registered the
/// client (stamped 8 500 ms) just before the leader's mark (decided at 9 000 ms, last heard
/// from node 3 at 5 000 ms, margin 1 500 ms) committed: that client stays node 3's, online,
/// with its interest, and is not announced; the others are taken as before.
#[test]
fn a_client_the_node_registered_after_it_was_last_heard_from_stays_its_own() {
    let mut r = three_nodes();
    apply(&mut r, register_due("resumed", 3, 20, 8_500, 13_500));
    apply(&mut r, subscribe("resumed", 3, 20, "r/#", 1));
    let (result, changes) = apply(&mut r, node_down_heard(3, 9_000, vec![1, 2, 3], 6_500));
    assert_eq!(marked(&result), (true, 2, 1));
    let ids: Vec<&str> = down_clients(&changes)
        .iter()
        .map(|d| d.client_id.as_str())
        .collect();
    assert_eq!(ids, ["away", "clean", "sub"]);
    let entry = r.client("resumed").unwrap();
    assert_eq!(entry.owner, Owner { node: 3, epoch: 20 });
    assert!(entry.is_online());
    assert_eq!(interest_of(&r, "r/#"), [(3, 1)]);
    // Registered exactly at the bound: taken (the bound is the last moment still counted
    // as silence).
    let mut r = three_nodes();
    apply(&mut r, register_due("resumed", 3, 20, 6_500, 11_500));
    apply(&mut r, node_down_heard(3, 9_000, vec![1, 2, 3], 6_500));
    assert_ne!(r.client("resumed").unwrap().owner.node, 3);
}
