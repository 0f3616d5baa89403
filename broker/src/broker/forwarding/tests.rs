//! Routing with other nodes' interest, against a real broker (temporary store, sessions
//! without sockets) and [`PeersDouble`] for the cluster.

use std::sync::Arc;

use skein_seam::{BrokerHandle, ForwardError, NodeId, SharedTarget};
use skein_storage::Store;
use tokio_util::sync::CancellationToken;

use super::super::tests::{message, online, sub, test_events};
use super::peers_double::PeersDouble;
use crate::broker::Broker;
use crate::codec::QoS;
use crate::config::Config;

fn node_with_peers() -> (Arc<Broker>, Arc<PeersDouble>) {
    let cluster = Arc::new(PeersDouble::new(1, &[2, 3]));
    let broker = Broker::new(
        Config::default(),
        Store::open_temporary().unwrap(),
        cluster.clone(),
        test_events(),
        CancellationToken::new(),
    )
    .unwrap();
    (broker, cluster)
}

fn target(group: &str, filter: &str) -> SharedTarget {
    SharedTarget {
        group: group.into(),
        filter: filter.into(),
    }
}

#[test]
fn a_publish_reaches_local_sessions_and_each_interested_node_once() {
    let (b, cluster) = node_with_peers();
    let here = online(&b, "here");
    b.subscribe(&here, "a/b", sub(QoS::AtLeastOnce, None, false));
    b.interest_changed("a/#", NodeId(2), 1);
    b.interest_changed("a/+", NodeId(2), 2);
    b.interest_changed("b", NodeId(3), 1);

    let out = b.route(message("a/b", QoS::AtLeastOnce, "p"));
    assert_eq!((out.matched, out.remote), (1, 1));
    assert_eq!(out.forwards.nodes().collect::<Vec<_>>(), [NodeId(2)]);
    let sent = cluster.take();
    assert_eq!(sent.len(), 1);
    let (node, p) = &sent[0];
    assert_eq!(*node, NodeId(2));
    assert_eq!((&*p.topic, p.qos, p.retain), ("a/b", 1, false));
    assert!(p.to_subscribers && p.shared.is_empty());
    assert_eq!(p.publisher.as_ref().map(|c| c.as_str()), Some("p"));

    let out = b.route(message("b", QoS::AtMostOnce, "p"));
    assert_eq!((out.matched, out.remote), (0, 1));
    assert_eq!(cluster.take()[0].0, NodeId(3));

    // Nobody anywhere: nothing forwarded.
    let out = b.route(message("c", QoS::AtLeastOnce, "p"));
    assert_eq!((out.matched, out.remote), (0, 0));
    assert!(out.forwards.is_empty() && cluster.take().is_empty());

    // Interest gone, or reset away.
    b.interest_changed("b", NodeId(3), 0);
    assert_eq!(b.route(message("b", QoS::AtMostOnce, "p")).remote, 0);
    b.interest_reset(vec![("x/#".into(), NodeId(3), 4)]);
    assert_eq!(b.route(message("a/b", QoS::AtMostOnce, "p")).remote, 0);
    assert_eq!(b.route(message("x/y", QoS::AtMostOnce, "p")).remote, 1);
}

#[test]
fn a_shared_group_gets_each_message_once_across_nodes() {
    let (b, cluster) = node_with_peers();
    let member = online(&b, "member");
    let plain = online(&b, "plain");
    b.subscribe(&member, "$share/g/t/+", sub(QoS::AtLeastOnce, None, false));
    b.subscribe(&plain, "t/1", sub(QoS::AtLeastOnce, None, false));
    // One member here, three on node 2: a quarter of the messages stay here.
    b.interest_changed("$share/g/t/+", NodeId(2), 3);
    for _ in 0..40 {
        b.route(message("t/1", QoS::AtLeastOnce, "p"));
    }
    let sent = cluster.take();
    assert_eq!(member.state().queue.len(), 10);
    assert_eq!(
        plain.state().queue.len(),
        40,
        "a plain subscriber gets every one"
    );
    assert_eq!(sent.len(), 30);
    for (node, p) in &sent {
        assert_eq!(*node, NodeId(2));
        assert!(!p.to_subscribers, "node 2 has no plain subscribers");
        assert_eq!(p.shared, [target("g", "t/+")]);
    }
    // Same group name on another filter: another group, picked on its own.
    b.interest_changed("$share/g/t/#", NodeId(3), 1);
    b.route(message("t/1", QoS::AtLeastOnce, "p"));
    let to_three: Vec<_> = cluster
        .take()
        .into_iter()
        .filter(|(n, _)| *n == NodeId(3))
        .collect();
    assert_eq!(to_three.len(), 1, "node 3 is the only member of g on t/#");
    assert_eq!(to_three[0].1.shared, [target("g", "t/#")]);
}

#[test]
fn a_retained_publish_goes_to_every_member() {
    let (b, cluster) = node_with_peers();
    b.interest_changed("r/#", NodeId(2), 1);
    let mut m = (*message("r/1", QoS::AtLeastOnce, "p")).clone();
    m.retain = true;
    let out = b.route(Arc::new(m.clone()));
    assert_eq!(out.remote, 1, "only node 2 has subscribers");
    let mut sent = cluster.take();
    sent.sort_by_key(|(n, _)| *n);
    let seen: Vec<(NodeId, bool, bool)> = sent
        .iter()
        .map(|(n, p)| (*n, p.to_subscribers, p.retain))
        .collect();
    assert_eq!(seen, [(NodeId(2), true, true), (NodeId(3), false, true)]);
    // A delete too.
    m.payload = bytes::Bytes::new();
    b.route(Arc::new(m));
    assert_eq!(cluster.take().len(), 2);
}

#[tokio::test]
async fn a_forwarded_publish_reaches_only_the_local_sessions_the_sender_chose() {
    let (b, cluster) = node_with_peers();
    let member = online(&b, "member");
    let plain = online(&b, "plain");
    b.subscribe(&member, "$share/g/t", sub(QoS::AtLeastOnce, None, false));
    b.subscribe(&plain, "t", sub(QoS::AtLeastOnce, None, false));
    // Other nodes' interest is no reason to forward again.
    b.interest_changed("t", NodeId(2), 1);
    b.interest_changed("$share/g/t", NodeId(3), 5);
    let forwarded = |to_subscribers, shared: Vec<SharedTarget>| skein_seam::ForwardedPublish {
        topic: "t".into(),
        payload: bytes::Bytes::from_static(b"x"),
        qos: 1,
        received_at_ms: crate::message::now_ms(),
        to_subscribers,
        shared,
        ..Default::default()
    };
    let matched = b
        .deliver_forwarded(forwarded(false, vec![target("g", "t")]))
        .await
        .unwrap();
    assert_eq!(matched, 1);
    assert_eq!(
        (member.state().queue.len(), plain.state().queue.len()),
        (1, 0)
    );
    let matched = b.deliver_forwarded(forwarded(true, vec![])).await.unwrap();
    assert_eq!(matched, 1);
    assert_eq!(
        (member.state().queue.len(), plain.state().queue.len()),
        (1, 1)
    );
    assert!(cluster.take().is_empty(), "never forwarded again");
}

#[test]
fn a_single_node_forwards_nothing() {
    let b = super::super::tests::broker();
    let s = online(&b, "s");
    b.subscribe(&s, "#", sub(QoS::AtLeastOnce, None, false));
    let out = b.route(message("a", QoS::AtLeastOnce, "p"));
    assert!(out.forwards.is_empty());
    assert_eq!((out.matched, out.remote), (1, 0));
}

#[tokio::test]
async fn retained_messages_fetched_from_a_member_keep_the_newer_of_each_topic() {
    let (b, _) = node_with_peers();
    let retained = |topic: &str, payload: &'static [u8], at: u64| {
        let mut m = (*message(topic, QoS::AtLeastOnce, "p")).clone();
        m.retain = true;
        m.payload = bytes::Bytes::from_static(payload);
        m.received_at_ms = at;
        m
    };
    b.route(Arc::new(retained("held/newer", b"mine", 2_000)));
    b.route(Arc::new(retained("held/older", b"mine", 1_000)));
    let offered: Vec<_> = [
        retained("held/newer", b"theirs", 1_500),
        retained("held/older", b"theirs", 1_500),
        retained("new", b"theirs", 1_500),
    ]
    .iter()
    .map(|m| super::forwarded(m, false, Vec::new()))
    .collect();
    assert_eq!(b.restore_retained(offered).await.unwrap(), 2);
    let payload = |topic: &str| b.retained.matching(topic, 0)[0].payload.clone();
    assert_eq!(&payload("held/newer")[..], b"mine");
    assert_eq!(&payload("held/older")[..], b"theirs");
    assert_eq!(&payload("new")[..], b"theirs");
    assert_eq!(
        b.store.retained_load().unwrap().len(),
        3,
        "stored on disk too"
    );
    // What this node offers another: all three, as retained publishes for nobody.
    let mut mine = b.retained_messages();
    mine.sort_by(|a, b| a.topic.cmp(&b.topic));
    let topics: Vec<&str> = mine.iter().map(|p| &*p.topic).collect();
    assert_eq!(topics, ["held/newer", "held/older", "new"]);
    assert!(mine.iter().all(|p| p.retain && !p.to_subscribers));
}

#[tokio::test]
async fn a_read_batchs_forwards_share_a_tally_and_each_publish_gets_its_own_answer() {
    let (b, cluster) = node_with_peers();
    b.interest_changed("a", NodeId(2), 1);
    b.interest_changed("b", NodeId(3), 1);
    let mut tickets = super::ForwardTickets::default();
    let mut route = |topic: &str, qos| {
        b.route_holding_wakes(message(topic, qos, "p"), None, None, Some(&mut tickets))
    };
    let accepted = route("a", QoS::AtLeastOnce);
    // QoS 0 and a publish nobody elsewhere wants take no ticket.
    let qos0 = route("a", QoS::AtMostOnce);
    let nowhere = route("c", QoS::AtLeastOnce);
    cluster.answer(
        Some(ForwardError::Refused {
            node: NodeId(3),
            detail: "disk full".into(),
        }),
        std::time::Duration::from_millis(20),
    );
    let refused = route("b", QoS::ExactlyOnce);
    assert_eq!(cluster.take().len(), 3);
    let tally = accepted.forwards.tally.clone().expect("a tally");
    assert!(refused
        .forwards
        .tally
        .as_ref()
        .is_some_and(|t| Arc::ptr_eq(t, &tally)));
    assert!(qos0.forwards.tally.is_none() && nowhere.forwards.is_empty());
    assert_eq!(tally.outstanding(), 2);
    // Settled out of order: the later publish first.
    assert!(matches!(
        refused.forwards.settle().await,
        Err(ForwardError::Refused { .. })
    ));
    assert_eq!(accepted.forwards.settle().await, Ok(()));
    assert_eq!(qos0.forwards.settle().await, Ok(()));
    assert_eq!(tally.outstanding(), 0);
}
