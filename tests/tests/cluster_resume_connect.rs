//! A CONNECT that reaches a paused node (issue 14, the chaos suite's "unexpected takeover
//! kick" and its duplicates), on real processes: the node is SIGSTOPped, marked down by the
//! leader (its persistent session adopted elsewhere) while the client's CONNECT waits in
//! its socket, then resumed. The node reads the CONNECT, registers it, and the connection
//! gets the session: no 0x8E kick by its own node right after the CONNACK, every
//! acknowledged message once, none twice on the connection (not the paused node's own
//! copies of the forwards it took on resuming, not the adopter's, not a later offer).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use skein_tests::codec::puback;
use skein_tests::session_faults::{number, publish_unacked, Paused};
use skein_tests::{
    http_request, metric_sum, unique_id, Connect, Packet, Publish, RawClient, SubFilter,
    TestCluster, QUIET, RECV_TIMEOUT,
};

/// The detection time (above the default election timeout of 1 s).
const NODE_DOWN_AFTER_MS: u64 = 2000;
/// From the pause to the adoption: detection, the commit, on a loaded machine.
const MARKED_DOWN_WITHIN: Duration = Duration::from_secs(30);
/// How long the resumed node may take to answer the waiting CONNECT (it catches up with
/// the log first; an election may come in between).
const CONNACK_WITHIN: Duration = Duration::from_secs(30);
/// Until every node holds nothing queued any more (what a node kept is offered every
/// 15 s, sealed 5 s after the move), with a margin.
const SETTLED_WITHIN: Duration = Duration::from_secs(60);

/// Publishes `from..=to` at QoS 1, each acknowledged with reason 0 before the next.
async fn publish_acked(p: &mut RawClient, topic: &str, from: usize, to: usize) {
    for i in from..=to {
        let pkid = i as u16;
        p.publish(&Publish::new(topic, 1, format!("m{i}").as_bytes()).pkid(pkid))
            .await;
        let ack = p
            .recv_matching(
                RECV_TIMEOUT,
                |x| matches!(x, Packet::PubAck { pkid: id, .. } if *id == pkid),
            )
            .await;
        assert!(
            matches!(ack, Packet::PubAck { reason: 0, .. }),
            "PUBACK of m{i}: {ack:?}"
        );
    }
}

/// Waits until the node at `http` places `client_id` on a node other than `away`.
async fn wait_moved_off(http: SocketAddr, client_id: &str, away: u64) -> u64 {
    let path = format!("/api/v1/clients/{client_id}");
    let end = Instant::now() + MARKED_DOWN_WITHIN;
    loop {
        if let Ok((200, text)) = http_request(http, "GET", &path, &[], "").await {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(node) = v["node_id"].as_u64().filter(|n| *n != away) {
                return node;
            }
        }
        assert!(
            Instant::now() < end,
            "{client_id} was never adopted away from node {away}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_read_by_a_node_resumed_after_its_mark_is_neither_kicked_nor_sent_copies_twice() {
    let cluster = TestCluster::start_with(3, |_, b| {
        b.env("SKEIN_NODE_DOWN_AFTER_MS", NODE_DOWN_AFTER_MS)
    })
    .await;
    let leader = cluster.leader(&cluster.ids(), RECV_TIMEOUT).await;
    let paused_node = cluster
        .ids()
        .into_iter()
        .find(|i| *i != leader)
        .expect("a follower");
    let paused_mqtt = cluster.node(paused_node).mqtt_addr();
    // Another subscriber on the paused node: every publish is forwarded there too, so
    // forwards wait for it while it is stopped (as in any cluster with subscribers
    // everywhere) and reach it when it resumes.
    let mut anchor = RawClient::v5(paused_mqtt, &unique_id("anchor")).await;
    assert_eq!(
        anchor.subscribe(1, &[SubFilter::new("resumed/#", 0)]).await,
        [0]
    );
    // The client's persistent session, offline on the node about to be paused.
    let id = unique_id("resumed");
    let persistent = Connect::v5(&id).clean(false).session_expiry(3600);
    let (mut c, _, _) = RawClient::connect_ok(paused_mqtt, &persistent).await;
    assert_eq!(c.subscribe(1, &[SubFilter::new("resumed/#", 1)]).await, [1]);
    c.disconnect().await;
    let mut publisher = RawClient::v5(cluster.node(leader).mqtt_addr(), &unique_id("pub")).await;
    publish_acked(&mut publisher, "resumed/x", 1, 5).await;

    let mut paused = Paused::stop(cluster.node(paused_node).pid());
    // Forwarded to the paused node, which holds the session: they wait for it.
    publish_unacked(&mut publisher, "resumed/x", 6, 15).await;
    // The client connects to the paused node: the kernel takes the connection, the
    // CONNECT waits unread.
    let mut client = RawClient::tcp(paused_mqtt, persistent.proto).await;
    client.send(&persistent.encode()).await;
    // The leader marks the node down; a live node adopts the session and queues what is
    // published from now on.
    let adopter = wait_moved_off(cluster.node(leader).http_addr(), &id, paused_node).await;
    eprintln!("node {paused_node} paused and marked down; node {adopter} adopted {id}");
    publish_acked(&mut publisher, "resumed/x", 16, 25).await;

    paused.resume();
    match client.recv(CONNACK_WITHIN).await {
        Ok(Packet::ConnAck {
            code: 0,
            session_present,
            ..
        }) => assert!(session_present, "Session Present = 1"),
        other => panic!("the waiting CONNECT was answered {other:?}"),
    }
    // Every message once on this connection, the acknowledged ones at least; the
    // connection stays (no kick by its own node, nor by anyone: nothing else connects).
    let mut copies: BTreeMap<usize, usize> = BTreeMap::new();
    let acked = || (1..=5).chain(16..=25);
    let end = Instant::now() + SETTLED_WITHIN;
    while acked().any(|n| !copies.contains_key(&n)) {
        let left = end.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "acknowledged messages missing; got {copies:?}"
        );
        match client.recv(left).await {
            Ok(Packet::Publish(p)) => {
                client.send(&puback(p.pkid)).await;
                *copies.entry(number(&p)).or_default() += 1;
            }
            other => panic!("the resumed node's connection: {other:?}; got {copies:?}"),
        }
    }
    // Whatever a node kept of the session (the paused node's copies of the forwards it
    // took on resuming, the adopter's queue) is delivered, offered or gone: nothing is
    // queued anywhere any more, and no copy comes after that.
    let end = Instant::now() + SETTLED_WITHIN;
    for node in cluster.ids() {
        let http = cluster.node(node).http_addr();
        while metric_sum(http, "skein_queued_messages", &[]).await != 0.0 {
            assert!(
                Instant::now() < end,
                "node {node} still queues messages; got {copies:?}"
            );
            match client.recv(Duration::from_millis(100)).await {
                Ok(Packet::Publish(p)) => {
                    client.send(&puback(p.pkid)).await;
                    *copies.entry(number(&p)).or_default() += 1;
                }
                Ok(other) => panic!("the resumed node's connection: {other:?}; got {copies:?}"),
                Err(_) => {}
            }
        }
    }
    loop {
        match client.recv(QUIET * 3).await {
            Ok(Packet::Publish(p)) => {
                client.send(&puback(p.pkid)).await;
                *copies.entry(number(&p)).or_default() += 1;
            }
            Ok(other) => panic!("the resumed node's connection: {other:?}; got {copies:?}"),
            Err(_) => break,
        }
    }
    let twice: Vec<(&usize, &usize)> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "sent twice on one connection: {twice:?} (all: {copies:?})"
    );
    drop(anchor);
}
