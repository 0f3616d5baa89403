//! The cluster's control plane with real processes: client ids owned once cluster-wide
//! (a takeover across nodes, its one event), sessions found again on another node, leader
//! loss, a follower catching up, and a node without quorum refusing CONNECT.
//!
//! Publishes cross no node boundary here (the data plane is tested elsewhere): every
//! delivery checked is on the node the subscriber is connected to. Event watchers sit on
//! every node, the one that emits the event among them: events are routed like publishes.

use std::time::{Duration, Instant};

use skein_tests::{
    unique_id, Connect, Packet, Proto, Publish, RawClient, SubFilter, TestCluster, QUIET,
    RECV_TIMEOUT,
};

#[path = "events_mqtt/watcher.rs"]
#[allow(dead_code)]
mod watcher;

use serde_json::json;
use watcher::{assert_recent_ms, Watcher};

/// How long a new leader may take after the old one died (election timeout 1-2 s, on a
/// loaded machine).
const ELECTION_DEADLINE: Duration = Duration::from_secs(20);

async fn three_nodes_with_both_dialects() -> TestCluster {
    TestCluster::start_with(3, |_, b| b.env("SKEIN_EVENTS_DOLLAR_EVENT", "1")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_across_nodes_ends_the_old_connection_with_one_event_seen_on_every_node() {
    let cluster = three_nodes_with_both_dialects().await;
    let (old_node, new_node) = (cluster.node(1), cluster.node(2));
    let old_addr = old_node.mqtt_addr().to_string();
    let new_addr = new_node.mqtt_addr().to_string();
    let mut on_old = Watcher::everything(old_node).await;
    let mut on_new = Watcher::everything(new_node).await;
    // A node that takes no part in the takeover: it sees the events only because they are
    // routed to its subscriber like any publish.
    let mut on_third = Watcher::everything(cluster.node(3)).await;

    let id = unique_id("roamer");
    let mut old = RawClient::v5(old_node.mqtt_addr(), &id).await;
    let old_peer = old.local_addr().to_string();
    let started = Instant::now();
    let new = RawClient::v5(new_node.mqtt_addr(), &id).await;
    old.expect_disconnect(0x8E, RECV_TIMEOUT).await;
    eprintln!(
        "takeover across nodes: CONNECT on node 2 to DISCONNECT on node 1 in {:?}",
        started.elapsed()
    );

    let e = on_old
        .wait("$events/client_disconnected", |v| {
            v["clientid"] == id.as_str() && v["reason"] == "takeovered"
        })
        .await;
    assert_eq!(e["event"], "client.disconnected");
    assert_eq!(e["node"], old_addr.as_str());
    assert_eq!(e["node_name"], "skein-1");
    assert_eq!(e["takeover_node"], new_addr.as_str());
    let c = on_old
        .wait("$EVENT.CLOSE", |v| {
            v["clientId"] == id.as_str() && v["reason"] == "other_kicked"
        })
        .await;
    assert_eq!(c["nodeIp"], "127.0.0.1");
    assert_eq!(c["takeoverNode"], new_addr.as_str());

    // Exactly one per dialect: no second one on the old node. A watcher on the taker's
    // node gets that same event, forwarded (events are publishes routed like any other),
    // and no event of the taker's own.
    let about_id =
        |v: &serde_json::Value| v["clientid"] == id.as_str() || v["clientId"] == id.as_str();
    on_old
        .expect_none(QUIET, "$events/client_disconnected", about_id)
        .await;
    on_old.expect_none(QUIET, "$EVENT.CLOSE", about_id).await;
    let forwarded = on_new
        .wait("$events/client_disconnected", |v| {
            v["clientid"] == id.as_str()
        })
        .await;
    assert_eq!(forwarded, e, "the old node's event, as it raised it");
    let forwarded = on_new
        .wait("$EVENT.CLOSE", |v| v["clientId"] == id.as_str())
        .await;
    assert_eq!(forwarded, c);
    on_new
        .expect_none(QUIET, "$events/client_disconnected", about_id)
        .await;
    on_new.expect_none(QUIET, "$EVENT.CLOSE", about_id).await;

    // The third node: the one disconnect per dialect, checked field by field (the whole
    // object, so no field more or less), and the new connection's connected events once.
    let seen = on_third
        .wait("$events/client_disconnected", |v| {
            v["clientid"] == id.as_str()
        })
        .await;
    assert_recent_ms(&seen["disconnected_at"]);
    assert_eq!(
        seen,
        json!({
            "clientid": id,
            "username": null,
            "event": "client.disconnected",
            "reason": "takeovered",
            "peername": old_peer,
            "sockname": old_addr,
            "disconnected_at": seen["disconnected_at"],
            "node": old_addr,
            "node_name": "skein-1",
            "takeover_node": new_addr,
        })
    );
    assert_eq!(seen, e, "the old node's event, as it raised it");
    let seen = on_third
        .wait("$EVENT.CLOSE", |v| v["clientId"] == id.as_str())
        .await;
    assert_recent_ms(&seen["timestamp"]);
    assert_eq!(
        seen,
        json!({
            "protocol": "MQTT",
            "messageId": null,
            "reason": "other_kicked",
            "takeoverNode": new_addr,
            "clientId": id,
            "clientIp": "127.0.0.1",
            "nodeIp": "127.0.0.1",
            "nodeName": "skein-1",
            "timestamp": seen["timestamp"],
        })
    );
    assert_eq!(seen, c);

    // Both connections' connected events reach node 3: the old one's from node 1, the new
    // one's from node 2, each once.
    for (name, addr) in [("skein-1", &old_addr), ("skein-2", &new_addr)] {
        let connected = on_third
            .wait("$events/client_connected", |v| {
                v["clientid"] == id.as_str() && v["node_name"] == name
            })
            .await;
        assert_recent_ms(&connected["connected_at"]);
        assert_recent_ms(&connected["timestamp"]);
        assert_eq!(
            connected,
            json!({
                "clientid": id,
                "username": null,
                "event": "client.connected",
                "clean_start": true,
                "connected_at": connected["connected_at"],
                "keepalive": 60,
                "proto_ver": 5,
                "timestamp": connected["timestamp"],
                "node": addr,
                "node_name": name,
            })
        );
        let connect = on_third
            .wait("$EVENT.CONNECT", |v| {
                v["clientId"] == id.as_str() && v["nodeName"] == name
            })
            .await;
        assert_eq!(connect["version"], "MQTT_5");
        assert_eq!(connect["cleanSession"], true);
        assert_eq!(connect["clientIp"], "127.0.0.1");
    }
    on_third.read_for(QUIET).await;
    let left: Vec<&String> = on_third
        .seen
        .iter()
        .filter(|(topic, v, _)| {
            about_id(v)
                && [
                    "$events/client_connected",
                    "$events/client_disconnected",
                    "$EVENT.CONNECT",
                    "$EVENT.CLOSE",
                ]
                .contains(&topic.as_str())
        })
        .map(|(_, _, raw)| raw)
        .collect();
    assert!(left.is_empty(), "node 3 saw more than once: {left:#?}");

    // The new connection is untouched and owns the id: it subscribes (a registry command
    // only its epoch may make) and gets what is published on its node.
    let mut new = new;
    assert_eq!(new.subscribe(1, &[SubFilter::new("roam/#", 1)]).await, [1]);
    let mut publisher = RawClient::v5(new_node.mqtt_addr(), &unique_id("pub")).await;
    publisher
        .publish(&Publish::new("roam/1", 0, b"still here"))
        .await;
    assert_eq!(
        new.expect_publish(RECV_TIMEOUT).await.payload,
        b"still here"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_reconnecting_on_another_node_finds_its_subscriptions() {
    let cluster = TestCluster::start(3).await;
    let (first, second) = (cluster.node(1), cluster.node(3));
    let id = unique_id("sensor");
    let persistent = Connect::v5(&id).clean(false).session_expiry(3600);

    let (mut c, present, _) = RawClient::connect_ok(first.mqtt_addr(), &persistent).await;
    assert!(!present);
    assert_eq!(
        c.subscribe(
            1,
            &[
                SubFilter::new("plant/+/temp", 1),
                SubFilter::new("plant/alarm", 0)
            ]
        )
        .await,
        [1, 0]
    );
    c.disconnect().await;

    let (mut c, present, _) = RawClient::connect_ok(second.mqtt_addr(), &persistent).await;
    assert!(
        present,
        "Session Present=1 for a session held by another node"
    );
    let mut publisher = RawClient::v5(second.mqtt_addr(), &unique_id("pub")).await;
    publisher
        .publish(&Publish::new("plant/7/temp", 1, b"21.5"))
        .await;
    let got = c.expect_publish(RECV_TIMEOUT).await;
    assert_eq!((got.topic.as_str(), got.qos), ("plant/7/temp", 1));
    publisher
        .publish(&Publish::new("plant/alarm", 0, b"!"))
        .await;
    assert_eq!(c.expect_publish(RECV_TIMEOUT).await.topic, "plant/alarm");

    // The node that held it keeps no subscription of the session in its index.
    let listed = skein_tests::http_get(
        first.http_addr(),
        &format!("/api/v1/subscriptions?clientid={id}"),
    )
    .await
    .unwrap();
    assert_eq!(listed.0, 200);
    assert!(!listed.1.contains("plant/"), "{}", listed.1);

    // A clean start elsewhere finds nothing.
    c.disconnect().await;
    let clean = Connect::v5(&id).clean(true);
    let (_c, present, _) = RawClient::connect_ok(first.mqtt_addr(), &clean).await;
    assert!(!present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_leader_is_killed_a_new_one_is_elected_and_clients_connect_and_subscribe() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader(&cluster.ids(), RECV_TIMEOUT).await;
    cluster.kill9(leader);
    let survivors = cluster.running();
    let started = Instant::now();
    let new_leader = cluster.leader(&survivors, ELECTION_DEADLINE).await;
    assert_ne!(new_leader, leader);
    eprintln!("new leader {new_leader} after {:?}", started.elapsed());

    for id in &survivors {
        let node = cluster.node(*id);
        let client = unique_id("after");
        let (mut c, _, _) = RawClient::connect_ok(node.mqtt_addr(), &Connect::v5(&client)).await;
        assert_eq!(c.subscribe(1, &[SubFilter::new("after/#", 1)]).await, [1]);
        let mut p = RawClient::v5(node.mqtt_addr(), &unique_id("pub")).await;
        p.publish(&Publish::new("after/x", 0, b"ok")).await;
        assert_eq!(c.expect_publish(RECV_TIMEOUT).await.payload, b"ok");
    }
    // A takeover between the survivors still works.
    let (a, b) = (survivors[0], survivors[1]);
    let id = unique_id("twin");
    let mut old = RawClient::v5(cluster.node(a).mqtt_addr(), &id).await;
    let _new = RawClient::v5(cluster.node(b).mqtt_addr(), &id).await;
    old.expect_disconnect(0x8E, RECV_TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_catches_up_with_what_was_committed_while_it_was_down() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader(&cluster.ids(), RECV_TIMEOUT).await;
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    let other = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader && *id != follower)
        .unwrap();
    cluster.kill9(follower);

    // Committed by the two others while the follower is down.
    let id = unique_id("late");
    let persistent = Connect::v5(&id).clean(false).session_expiry(3600);
    let (mut c, _, _) = RawClient::connect_ok(cluster.node(other).mqtt_addr(), &persistent).await;
    assert_eq!(c.subscribe(1, &[SubFilter::new("late/#", 1)]).await, [1]);
    c.disconnect().await;
    for _ in 0..20 {
        let (c, _, _) = RawClient::connect_ok(
            cluster.node(leader).mqtt_addr(),
            &Connect::v5(&unique_id("churn")),
        )
        .await;
        c.disconnect().await;
    }

    cluster.restart(follower);
    cluster.wait_formed(3, ELECTION_DEADLINE).await;
    // Its commit index reaches the leader's.
    let target = cluster.overview(leader).await.unwrap()["commit_index"]
        .as_u64()
        .unwrap();
    let deadline = Instant::now() + ELECTION_DEADLINE;
    loop {
        let seen = cluster
            .overview(follower)
            .await
            .and_then(|v| v["commit_index"].as_u64());
        if seen.is_some_and(|s| s >= target) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "follower at {seen:?}, leader at {target}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What it applied is what it rebuilds a session from: the subscription made while it
    // was down is found there.
    let (mut c, present, _) =
        RawClient::connect_ok(cluster.node(follower).mqtt_addr(), &persistent).await;
    assert!(present);
    let mut p = RawClient::v5(cluster.node(follower).mqtt_addr(), &unique_id("pub")).await;
    p.publish(&Publish::new("late/1", 0, b"caught up")).await;
    assert_eq!(c.expect_publish(RECV_TIMEOUT).await.payload, b"caught up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_quorum_refuses_connect_as_server_unavailable_in_bounded_time() {
    let mut cluster = TestCluster::start(3).await;
    cluster.kill9(2);
    cluster.kill9(3);
    let lonely = cluster.node(1).mqtt_addr();
    // The proposal timeout (5 s) bounds the wait; the margin covers a loaded machine.
    let bound = Duration::from_secs(12);

    for (proto, expected) in [(Proto::V5, 0x88), (Proto::V311, 3)] {
        let started = Instant::now();
        let mut c = RawClient::tcp(lonely, proto).await;
        c.send(&Connect::new(proto, &unique_id("minority")).encode())
            .await;
        match c.recv(bound).await {
            Ok(Packet::ConnAck { code, .. }) => assert_eq!(code, expected, "{proto:?}"),
            other => panic!("{proto:?}: expected a refusing CONNACK, got {other:?}"),
        }
        let took = started.elapsed();
        assert!(took < bound, "{proto:?}: refused after {took:?}");
        eprintln!("{proto:?}: refused with {expected:#x} after {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_after_its_session_moved_keeps_no_subscription_of_it() {
    let mut cluster = TestCluster::start(3).await;
    let id = unique_id("mover");
    let persistent = Connect::v5(&id).clean(false).session_expiry(3600);
    let (mut c, _, _) = RawClient::connect_ok(cluster.node(1).mqtt_addr(), &persistent).await;
    assert_eq!(c.subscribe(1, &[SubFilter::new("move/#", 1)]).await, [1]);
    // Still connected when its node stops: a graceful stop drains it and exits 0.
    let status = cluster.terminate(1);
    assert!(status.success(), "SIGTERM exit: {status:?}");
    c.expect_disconnect(0x8B, RECV_TIMEOUT).await;

    // The session moves to node 2 while node 1 is down.
    let (c, present, _) = RawClient::connect_ok(cluster.node(2).mqtt_addr(), &persistent).await;
    assert!(present);
    c.disconnect().await;

    cluster.restart(1);
    cluster.wait_formed(3, ELECTION_DEADLINE).await;
    let node1 = cluster.node(1).http_addr();
    let path = format!("/api/v1/subscriptions?clientid={id}");
    let deadline = Instant::now() + ELECTION_DEADLINE;
    loop {
        let (status, body) = skein_tests::http_get(node1, &path).await.unwrap();
        assert_eq!(status, 200);
        if !body.contains("move/") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 still indexes the moved session's subscription: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Back on node 1, it is the registry's session again, subscriptions included.
    let (mut c, present, _) = RawClient::connect_ok(cluster.node(1).mqtt_addr(), &persistent).await;
    assert!(present);
    let mut p = RawClient::v5(cluster.node(1).mqtt_addr(), &unique_id("pub")).await;
    p.publish(&Publish::new("move/1", 0, b"home")).await;
    assert_eq!(c.expect_publish(RECV_TIMEOUT).await.payload, b"home");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_at_runtime_and_takes_part_in_takeovers() {
    let mut cluster = TestCluster::start(3).await;
    let joined = cluster.join(2).await;
    assert_eq!(joined, 4);
    let view = cluster.overview(4).await.unwrap();
    assert_eq!(view["node_id"], 4);
    assert_eq!(view["members"].as_array().unwrap().len(), 4);

    // It holds the registry: a session made on another node moves to it, and the node
    // that held the connection ends it.
    let id = unique_id("joiner");
    let persistent = Connect::v5(&id).clean(false).session_expiry(3600);
    let (mut c, _, _) = RawClient::connect_ok(cluster.node(1).mqtt_addr(), &persistent).await;
    assert_eq!(c.subscribe(1, &[SubFilter::new("join/#", 1)]).await, [1]);
    let (_c, present, _) = RawClient::connect_ok(cluster.node(4).mqtt_addr(), &persistent).await;
    assert!(present);
    c.expect_disconnect(0x8E, RECV_TIMEOUT).await;
}

/// How long a SUBSCRIBE may wait for a cluster that lost its quorum: the proposal timeout
/// (5 s) and a margin for a loaded machine.
const REFUSAL_BOUND: Duration = Duration::from_secs(12);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_subscribe_and_unsubscribe_are_refused_and_undone_here() {
    let mut cluster = TestCluster::start(3).await;
    let addr = cluster.node(1).mqtt_addr();
    let mut v5 = RawClient::v5(addr, &unique_id("v5")).await;
    let mut v3 = RawClient::v311(addr, &unique_id("v3")).await;
    for c in [&mut v5, &mut v3] {
        assert_eq!(c.subscribe(1, &[SubFilter::new("kept/#", 0)]).await, [0]);
    }
    // Connected while it can: without quorum no CONNECT is accepted.
    let mut p = RawClient::v5(addr, &unique_id("pub")).await;
    cluster.kill9(2);
    cluster.kill9(3);

    // SUBSCRIBE: every filter refused (0x80 in both dialects), nothing left in force here.
    for c in [&mut v5, &mut v3] {
        let proto = c.proto;
        c.send(&skein_tests::codec::subscribe(
            proto,
            2,
            &[SubFilter::new("new/#", 1)],
            &skein_tests::Props::new(),
        ))
        .await;
        let started = Instant::now();
        match c
            .recv_matching(REFUSAL_BOUND, |p| matches!(p, Packet::SubAck { .. }))
            .await
        {
            Packet::SubAck { pkid, codes, .. } => {
                assert_eq!((pkid, codes), (2, vec![0x80]), "{proto:?}");
            }
            _ => unreachable!(),
        }
        eprintln!("{proto:?}: SUBACK 0x80 after {:?}", started.elapsed());
    }
    p.publish(&Publish::new("new/1", 0, b"not for them")).await;
    v5.expect_no_publish(QUIET).await;
    v3.expect_no_publish(QUIET).await;

    // UNSUBSCRIBE: MQTT 5 is told 0x80 and keeps the subscription; MQTT 3.1.1 cannot be
    // told, its connection closes (the subscription intact for its next connection).
    v5.send(&skein_tests::codec::unsubscribe(Proto::V5, 3, &["kept/#"]))
        .await;
    match v5
        .recv_matching(REFUSAL_BOUND, |p| matches!(p, Packet::UnsubAck { .. }))
        .await
    {
        Packet::UnsubAck { pkid, codes, .. } => assert_eq!((pkid, codes), (3, vec![0x80])),
        _ => unreachable!(),
    }
    p.publish(&Publish::new("kept/1", 0, b"still subscribed"))
        .await;
    assert_eq!(
        v5.expect_publish(RECV_TIMEOUT).await.payload,
        b"still subscribed"
    );
    // The v3 client got the same publish before it unsubscribes.
    assert_eq!(
        v3.expect_publish(RECV_TIMEOUT).await.payload,
        b"still subscribed"
    );
    v3.send(&skein_tests::codec::unsubscribe(
        Proto::V311,
        3,
        &["kept/#"],
    ))
    .await;
    v3.expect_closed(REFUSAL_BOUND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connects_racing_on_two_nodes_leave_exactly_one_owner() {
    let cluster = TestCluster::start(3).await;
    let (a, b) = (cluster.node(1).mqtt_addr(), cluster.node(2).mqtt_addr());
    for trial in 0..20 {
        let id = unique_id("race");
        let connect = Connect::v5(&id);
        let (first, second) = tokio::join!(
            RawClient::try_connect_ok(a, &connect),
            RawClient::try_connect_ok(b, &connect)
        );
        let mut alive = Vec::new();
        for (node, c) in [(1, first), (2, second)] {
            // A connection may even be refused outright when it lost before its CONNACK.
            let Ok(mut c) = c else { continue };
            // The loser is told 0x8E (by its node, once the winner's registration applied).
            match c.recv(QUIET).await {
                Ok(Packet::Disconnect { reason, .. }) => {
                    assert_eq!(reason, 0x8E, "trial {trial}: node {node}")
                }
                Err(skein_tests::RecvError::Timeout) => alive.push((node, c)),
                other => panic!("trial {trial}: node {node}: {other:?}"),
            }
        }
        assert_eq!(
            alive.len(),
            1,
            "trial {trial}: survivors on nodes {:?}",
            alive.iter().map(|(n, _)| *n).collect::<Vec<_>>()
        );
        // The survivor owns the client id: a registry command of its epoch commits.
        let (node, mut survivor) = alive.pop().unwrap();
        assert_eq!(
            survivor.subscribe(1, &[SubFilter::new("race/#", 0)]).await,
            [0],
            "trial {trial}: node {node}"
        );
        survivor.disconnect().await;
    }
}
